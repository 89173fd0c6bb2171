// Generates the gRPC exchange code from proto/exchange.proto with a pure-Rust protobuf
// compiler (protox), so a fresh machine needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/exchange.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".streamjob.exchange.v1.Frame.batch")
        .compile_fds(fds)?;
    Ok(())
}
