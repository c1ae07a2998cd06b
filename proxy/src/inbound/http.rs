//! Inbound HTTP: every request goes to the app in this pod on loopback,
//! counted under the client it came from (a mesh identity, or plaintext
//! from an unmeshed client). On a mesh connection, NetworkPolicy is
//! checked again for each request: the client proxy pools its mesh
//! connections, so a request may be a new connection of its app's that
//! the policy of now must judge. Authorization will be a step of this
//! stack.

use std::net::SocketAddr;
use std::sync::Arc;

use weft_api::identity::SpiffeId;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::http::endpoint::send;
use crate::http::logical::Exchange;
use crate::http::pool::{BoxBody, BoxError, Version};
use crate::http::server::HttpContext;
use crate::http::upgrade;
use crate::metrics::PeerLabels;
use crate::policy::{Policy, Way};
use crate::transport::Target;

/// The inbound service of one client connection.
#[derive(Clone, Debug)]
pub(crate) struct LocalApp {
    pub ctx: Arc<HttpContext>,
    /// The app's port on loopback.
    pub app: Arc<Target>,
    /// The client's HTTP version on this connection.
    pub version: Version,
    /// Who the requests come from: the peer proxy's identity, or plain.
    pub client: PeerLabels,
    /// On a mesh connection: the client's address and identity, for
    /// NetworkPolicy on each request.
    pub mesh_client: Option<Arc<(SocketAddr, SpiffeId)>>,
    pub policy: Arc<Policy>,
}

/// A request NetworkPolicy refuses: the connection is closed (HTTP/1) or
/// the stream reset (HTTP/2), as a refused connection would be.
#[derive(Debug, thiserror::Error)]
#[error("NetworkPolicy refuses this client")]
pub(crate) struct Refused;

impl LocalApp {
    pub(crate) async fn call(
        self,
        mut req: Request<Incoming>,
    ) -> Result<Response<BoxBody>, Refused> {
        if let Some(client) = &self.mesh_client {
            let (peer, identity) = &**client;
            if !self
                .policy
                .allows(Way::Ingress, *peer, Some(identity), self.app.addr.port())
            {
                return Err(Refused);
            }
        }
        let exchange = Exchange::begin(&self.ctx, self.version, &mut req, None);
        exchange.count(self.client.clone());
        let result = match upgrade::is_tunnel(&req) {
            Some(upgrade) => upgrade::forward(&self.ctx.pool, req, upgrade, &self.app).await,
            None => {
                let req = req.map(|body| body.map_err(BoxError::from).boxed());
                send(&self.ctx.pool, self.ctx.direction, &self.app, req).await
            }
        };
        Ok(exchange.respond(result, self.client))
    }
}
