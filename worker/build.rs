// Generates the gRPC code (exchange, coordination, control; health comes from tonic-health) with a pure-Rust protobuf
// compiler (protox), so a fresh machine needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/exchange.proto",
        "proto/coordination.proto",
        "proto/control.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".streamjob.exchange.v1.Frame.batch")
        .compile_fds(fds)?;
    Ok(())
}
