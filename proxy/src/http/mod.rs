//! HTTP building blocks that know nothing of routing: serving a client
//! connection, the logical layer every request crosses (span, metrics,
//! errors as responses), header rules, the pooled upstream connections,
//! the request sent to one endpoint (with the mesh's HTTP/1→HTTP/2
//! conversion), upgrades, bodies that replay, wait for `100 Continue` or
//! count the response, and the proxy's own error responses.

pub(crate) mod endpoint;
pub(crate) mod expect;
pub(crate) mod h2;
pub(crate) mod headers;
pub(crate) mod logical;
pub(crate) mod metered;
pub mod pool;
pub(crate) mod replay;
pub(crate) mod server;
pub(crate) mod upgrade;

pub use endpoint::{ORIG_PROTO_HEADER, REASON_HEADER};
pub use headers::strip_hop_by_hop;

/// Header added to responses the proxy itself generates, naming the cause.
pub const PROXY_ERROR_HEADER: &str = "weft-proxy-error";
