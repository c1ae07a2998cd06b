//! Outbound HTTP from the app: a request to an address discovery does not
//! know goes to that address as sent; one to a discovered destination goes
//! through the balanced stack of [`crate::outbound`]; an upgrade holds one
//! endpoint for good.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::BytesMut;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::discovery::{Destination, Routes};
use crate::http::endpoint::{EndpointSender, send};
use crate::http::headers::error_response;
use crate::http::logical::Exchange;
use crate::http::pool::{BoxBody, BoxError, UpstreamError, Version};
use crate::http::server::HttpContext;
use crate::http::upgrade;
use crate::metrics::PeerLabels;
use crate::outbound::error::Error as OutboundError;
use crate::outbound::mirror::{self, Mirror};
use crate::outbound::retry::Served;
use crate::outbound::route::Decision;
use crate::transport::Target;

/// Where an outbound connection's requests go.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    /// One address: a pinned mesh peer, or an address discovery does not
    /// serve (no controller configured).
    Fixed(Arc<Target>),
    /// A destination from discovery, balanced per request.
    Balanced(Arc<Destination>),
}

/// The outbound service of one app connection.
#[derive(Clone, Debug)]
pub(crate) struct Outbound {
    pub ctx: Arc<HttpContext>,
    pub route: Route,
    /// The app's HTTP version on this connection.
    pub version: Version,
}

impl Outbound {
    pub(crate) async fn call(
        self,
        mut req: Request<Incoming>,
    ) -> Result<Response<BoxBody>, Infallible> {
        let routes = match &self.route {
            Route::Balanced(dest) => dest.routes(),
            Route::Fixed(_) => None,
        };
        let authority = routes.as_ref().and_then(|r| r.authority.clone());
        let mut exchange = Exchange::begin(&self.ctx, self.version, &mut req, authority);
        // With Gateway API routes, the rule comes first: it may answer at
        // once, and its backends and policy replace the Service's.
        let (routes, rule) = match (routes, &self.route) {
            (Some(service), Route::Balanced(dest)) if service.http.is_some() => {
                let table = service.http.as_ref().expect("checked above");
                match table.route(&mut req, dest.addr.port(), &service.service) {
                    Decision::Forward(rule) => {
                        exchange.matched(&rule.labels);
                        (Some(rule.routes.clone()), Some(rule))
                    }
                    Decision::Respond(resp, route) => {
                        if let Some(route) = &route {
                            exchange.matched(route);
                        }
                        exchange.count(PeerLabels::plain());
                        return Ok(exchange.respond(Ok(resp), PeerLabels::plain()));
                    }
                }
            }
            (routes, _) => (routes, None),
        };
        let (result, remote) = match (upgrade::is_tunnel(&req), &self.route) {
            (Some(upgrade), _) => self.tunnel(&exchange, req, upgrade, routes).await,
            (None, Route::Fixed(target)) => {
                let remote = target.peer_labels();
                exchange.count(remote.clone());
                (self.forward_to(target, req).await, remote)
            }
            (None, Route::Balanced(dest)) => {
                let mirrors = rule
                    .as_ref()
                    .map(|r| r.mirrors.as_slice())
                    .unwrap_or_default();
                let (response, remote) = self.balanced(&exchange, req, dest, routes, mirrors).await;
                (Ok(response), remote)
            }
        };
        let result = match (result, rule) {
            (Ok(mut resp), Some(rule)) => {
                rule.on_response(&mut resp);
                Ok(resp)
            }
            (result, _) => result,
        };
        Ok(exchange.respond(result, remote))
    }

    /// An upgrade or CONNECT: one target for good, so it is picked per
    /// connection, and counted under that hop.
    async fn tunnel(
        &self,
        exchange: &Exchange,
        req: Request<Incoming>,
        upgrade: bool,
        routes: Option<Arc<Routes>>,
    ) -> (Result<Response<BoxBody>, UpstreamError>, PeerLabels) {
        let target = match &self.route {
            Route::Fixed(target) => target.clone(),
            Route::Balanced(dest) => match routes {
                Some(routes) => match routes.pick_for_connection(None) {
                    Ok(endpoint) => Arc::new(endpoint.target.clone()),
                    Err(why) => {
                        exchange.count(PeerLabels::plain());
                        return (
                            Ok(routes.no_endpoint(why).into_response()),
                            PeerLabels::plain(),
                        );
                    }
                },
                // Gone from discovery since the connection started.
                None => Arc::new(Target::plain(dest.addr)),
            },
        };
        let remote = target.peer_labels();
        exchange.count(remote.clone());
        let result = upgrade::forward(&self.ctx.pool, req, upgrade, &target).await;
        (result, remote)
    }

    async fn forward_to(
        &self,
        target: &Target,
        req: Request<Incoming>,
    ) -> Result<Response<BoxBody>, UpstreamError> {
        let req = req.map(|body| body.map_err(BoxError::from).boxed());
        send(&self.ctx.pool, self.ctx.direction, target, req).await
    }

    /// Per-request balancing with the destination's policy, through the
    /// outbound stack (see [`crate::outbound`]).
    async fn balanced(
        &self,
        exchange: &Exchange,
        req: Request<Incoming>,
        dest: &Arc<Destination>,
        routes: Option<Arc<Routes>>,
        mirrors: &[Arc<Mirror>],
    ) -> (Response<BoxBody>, PeerLabels) {
        let Some(routes) = routes else {
            // Not (or no longer) in discovery: forward to the original
            // address, as for an unknown destination.
            exchange.count(PeerLabels::plain());
            let target = Target::plain(dest.addr);
            let resp = self.forward_to(&target, req).await;
            return (
                resp.unwrap_or_else(|e| error_response(&e)),
                PeerLabels::plain(),
            );
        };
        // The first endpoint is chosen now, so the request is counted on
        // arrival under the hop it takes.
        let first = match routes.pick_endpoint(None) {
            Ok(first) => first,
            Err(why) => {
                exchange.count(PeerLabels::plain());
                return (routes.no_endpoint(why).into_response(), PeerLabels::plain());
            }
        };
        let first_remote = first.target.peer_labels();
        exchange.count(first_remote.clone());
        let req = req.map(|body| body.map_err(BoxError::from).boxed());
        let sender = EndpointSender {
            pool: self.ctx.pool.clone(),
            direction: self.ctx.direction,
        };
        let req = match mirrors {
            [] => req,
            mirrors => mirror::start(mirrors, req, &sender),
        };
        let outcome =
            crate::outbound::send(routes.clone(), dest.budget.clone(), first, sender, req).await;
        match outcome {
            Ok(resp) => {
                let remote = match resp.extensions().get::<Served>() {
                    Some(Served(endpoint)) => endpoint.target.peer_labels(),
                    None => first_remote,
                };
                (resp, remote)
            }
            Err(error) => {
                let remote = match &error {
                    OutboundError::Upstream { endpoint, .. } => endpoint.target.peer_labels(),
                    _ => first_remote,
                };
                tracing::info!(service = %routes.service, %error, "request failed");
                (error.into_response(), remote)
            }
        }
    }
}

/// Serves an outbound HTTP connection from the app along `route`.
pub(crate) async fn serve<I>(
    ctx: Arc<HttpContext>,
    io: I,
    buf: BytesMut,
    version: Version,
    route: Route,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A fixed route's hop is the connection's; a balanced one's is each
    // request's endpoint (a refused first head has none yet).
    let remote = match &route {
        Route::Fixed(target) => target.peer_labels(),
        Route::Balanced(_) => PeerLabels::plain(),
    };
    let outbound = Outbound {
        ctx: ctx.clone(),
        route,
        version,
    };
    let service = tower::service_fn(move |req| outbound.clone().call(req));
    crate::http::server::serve(ctx, io, buf, version, remote, service, shutdown).await
}
