// Generates the JobControl gRPC client from the workers' proto (worker/proto/control.proto)
// with a pure-Rust protobuf compiler (protox), so no `protoc` is needed. Client only: the
// workers serve it.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../worker/proto/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../worker/proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
