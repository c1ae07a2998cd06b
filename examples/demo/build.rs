//! Generates the demo gRPC service from `proto/demo.proto` (needs `protoc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(&["proto/demo.proto"], &["proto"])?;
    Ok(())
}
