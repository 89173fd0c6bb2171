// Generates the JobControl gRPC code from the workers' proto (worker/proto/control.proto)
// with a pure-Rust protobuf compiler (protox), so no `protoc` is needed. The operator is the
// client; the server half only serves the fake worker 0 of operator/tests/control.rs.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../worker/proto/control.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../worker/proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
