//! What the cargo-fuzz targets in `proxy/fuzz/` call (feature `fuzzing`):
//! the crate's own parsers and conversions, reached without their
//! sockets. Nothing here is used by the proxy itself.

use std::net::SocketAddr;

use http::Request;

use crate::http::pool::BoxBody;
use crate::transport::Target;

pub use crate::http::endpoint::from_mesh_h2;
pub use crate::http::h2::{client as h2_client, server as h2_server};
pub use crate::inbound::hello::{First, Hello, client_hello, read_first};

/// An app's HTTP/1 request turned into one for a mesh HTTP/2 connection to
/// `target`, as the outbound proxy sends it.
pub fn to_mesh_h2(req: &mut Request<BoxBody>, target: SocketAddr) {
    crate::http::endpoint::to_mesh_h2(req, &Target::plain(target));
}
