//! Demo workloads for the mesh on one machine and the end-to-end tests:
//! an HTTP/1 + h2c server (echo, streaming upload and download, WebSocket,
//! delays and chosen status codes), a gRPC service with unary and streaming
//! calls, and a TCP service where the server speaks first, as SMTP, MySQL
//! or PostgreSQL do. None of them knows about the mesh.

pub mod banner;
pub mod grpc;
pub mod http;
pub mod load;
pub mod probe;

/// Generated gRPC code for `proto/demo.proto`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod proto {
    tonic::include_proto!("weft.demo");
}
