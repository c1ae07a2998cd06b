//! Inbound HTTP: every request goes to the app in this pod on loopback,
//! counted under the client it came from (a mesh identity, or plaintext
//! from an unmeshed client). Authorization will be a step of this stack.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::http::endpoint::send;
use crate::http::logical::Exchange;
use crate::http::pool::{BoxBody, BoxError, Version};
use crate::http::server::HttpContext;
use crate::http::upgrade;
use crate::metrics::PeerLabels;
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
}

impl LocalApp {
    pub(crate) async fn call(
        self,
        mut req: Request<Incoming>,
    ) -> Result<Response<BoxBody>, Infallible> {
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
