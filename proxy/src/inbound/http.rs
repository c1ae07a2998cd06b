//! Inbound HTTP: every request goes to the app in this pod on loopback,
//! counted under the client it came from (a mesh identity, or plaintext
//! from an unmeshed client). On a mesh connection, NetworkPolicy is
//! checked again for each request: the client proxy pools its mesh
//! connections, so a request may be a new connection of its app's that
//! the policy of now must judge. Then mesh authorization decides the
//! request by its client, method and path: a refusal is answered here,
//! 403 (or gRPC `PERMISSION_DENIED`) with `weft-proxy-error`.

use std::net::SocketAddr;
use std::sync::Arc;

use weft_api::identity::SpiffeId;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::http::PROXY_ERROR_HEADER;
use crate::http::endpoint::send;
use crate::http::headers::proxy_error;
use crate::http::logical::Exchange;
use crate::http::pool::{BoxBody, BoxError, Version};
use crate::http::server::HttpContext;
use crate::http::upgrade;
use crate::metrics::PeerLabels;
use crate::policy::authz::{self, Subject};
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
    pub caller: Caller,
    pub policy: Arc<Policy>,
}

/// Who an inbound connection comes from.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// Its metric labels: the peer proxy's identity, or plain.
    pub labels: PeerLabels,
    pub peer: SocketAddr,
    /// Its proven identity, on a mesh connection.
    pub identity: Option<Arc<SpiffeId>>,
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
        let port = self.app.addr.port();
        if let Some(identity) = &self.caller.identity
            && !self
                .policy
                .allows(Way::Ingress, self.caller.peer, Some(identity), port)
        {
            return Err(Refused);
        }
        let exchange = Exchange::begin(&self.ctx, self.version, &mut req, None);
        exchange.count(self.caller.labels.clone());
        let subject = Subject::Request {
            method: req.method(),
            path: req.uri().path(),
        };
        if let Err(refused) = self.policy.authorizes(
            self.caller.peer,
            self.caller.identity.as_deref(),
            port,
            subject,
        ) {
            return Ok(exchange.respond(Ok(forbidden(&req, &refused)), self.caller.labels));
        }
        let result = match upgrade::is_tunnel(&req) {
            Some(upgrade) => upgrade::forward(&self.ctx.pool, req, upgrade, &self.app).await,
            None => {
                let req = req.map(|body| body.map_err(BoxError::from).boxed());
                send(&self.ctx.pool, self.ctx.direction, &self.app, req).await
            }
        };
        Ok(exchange.respond(result, self.caller.labels))
    }
}

/// The answer to a request authorization refuses: 403, or for gRPC a
/// trailers-only `PERMISSION_DENIED`, which is what gRPC clients read.
fn forbidden<B>(req: &Request<B>, refused: &authz::Refused) -> Response<BoxBody> {
    let reason = refused.to_string();
    if !crate::http::metered::is_grpc(req.headers()) {
        return proxy_error(StatusCode::FORBIDDEN, reason);
    }
    let mut resp = Response::new(http_body_util::Empty::new().map_err(BoxError::from).boxed());
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static(PERMISSION_DENIED));
    if let Ok(value) = HeaderValue::from_str(&reason) {
        // Printable ASCII needs no percent-encoding in grpc-message.
        headers.insert("grpc-message", value.clone());
        headers.insert(PROXY_ERROR_HEADER, value);
    }
    resp
}

/// gRPC's status code 7.
const PERMISSION_DENIED: &str = "7";
