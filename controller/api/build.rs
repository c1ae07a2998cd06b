//! Generates the proxy–controller gRPC protocol from `proto/` (needs `protoc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/weft/identity/v1/identity.proto",
            "proto/weft/destination/v1/destination.proto",
            "proto/weft/policy/v1/policy.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
