//! What every connection accepted on one listener shares: the
//! configuration, metrics, the direction's HTTP context, and (by direction)
//! discovery and pinned peers or the mesh server's TLS.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::discovery::Resolver;
use crate::http::server::HttpContext;
use crate::limits::ConnectionLimits;
use crate::mesh::Endpoints;
use crate::metrics::{Direction, Metrics};
use crate::policy::Policy;

/// Everything a connection handler needs.
#[derive(Debug)]
pub(crate) struct Listener {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub http: Arc<HttpContext>,
    pub direction: Direction,
    pub shutdown: CancellationToken,
    /// Destinations pinned as meshed (outbound).
    pub endpoints: Arc<Endpoints>,
    /// Discovery, when a controller is configured: destinations outbound;
    /// inbound, whether a client is a meshed pod.
    pub resolver: Option<Arc<Resolver>>,
    /// Terminates mesh mTLS (inbound), when the proxy has an identity.
    pub mesh_server: Option<Arc<rustls::ServerConfig>>,
    /// The pod's NetworkPolicy (ingress is checked here; egress in the
    /// outbound connector).
    pub policy: Arc<Policy>,
    /// Connections this direction holds, in all and per client.
    pub limits: Arc<ConnectionLimits>,
}
