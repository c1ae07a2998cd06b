//! The logical layer of each request: its span, request and response
//! metrics and the header limit, then a fixed target, a WebSocket or
//! CONNECT upgrade, or the outbound stack for a discovered destination.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::HOST;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{HttpContext, Route};
use crate::discovery::{Destination, NoEndpoint, Routes};
use crate::http::endpoint::{EndpointSender, send};
use crate::http::headers::{
    error_response, header_list_size, proxy_error, strip_hop_by_hop, wants_upgrade,
};
use crate::http::metered::{MeteredBody, ResponseMeter, grpc_status, is_grpc};
use crate::http::pool::{BoxBody, BoxError, UpstreamError, Version};
use crate::metrics::PeerLabels;
use crate::metrics::http::{Classification, RequestLabels, ResponseLabels};
use crate::outbound::error::Error as OutboundError;
use crate::outbound::retry::Served;
use crate::transport::Target;

/// The request's authority: the URI's (HTTP/2, absolute form), else Host.
fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
}

#[derive(Clone, Debug)]
pub(super) struct Forwarder {
    pub ctx: Arc<HttpContext>,
    pub route: Route,
    /// The client's HTTP version on this connection.
    pub version: Version,
    /// The hop a fixed route's requests cross.
    pub remote: PeerLabels,
}

impl Forwarder {
    /// An HTTP/2 peer refuses a header list over its limit with a bare
    /// stream error, so a response over ours is refused here, saying why.
    /// (HTTP/1 downstreams have no such limit from us.)
    fn within_header_limit(&self, response: Response<BoxBody>) -> Response<BoxBody> {
        if self.version != Version::Http2 {
            return response;
        }
        let size = header_list_size(response.headers());
        let limit = self.ctx.config.http_max_header_bytes;
        if size <= crate::http::h2::header_list_limit(limit) as usize {
            return response;
        }
        tracing::info!(direction = %self.ctx.direction, size, limit, "response headers over the limit");
        proxy_error(
            StatusCode::BAD_GATEWAY,
            format!("response headers of {size} bytes exceed WEFT_HTTP_MAX_HEADER_BYTES ({limit})"),
        )
    }

    pub(super) async fn call(
        self,
        req: Request<Incoming>,
    ) -> Result<Response<BoxBody>, Infallible> {
        let started = Instant::now();
        let ctx = &self.ctx;
        let mut req = req;
        let routes = match &self.route {
            Route::Balanced(dest) => dest.routes(),
            Route::Fixed(_) => None,
        };
        let authority = routes
            .as_ref()
            .and_then(|r| r.authority.clone())
            .unwrap_or_else(|| ctx.metrics.http.authorities.label(request_authority(&req)));
        let span = ctx
            .tracer
            .as_ref()
            .map(|tracer| tracer.start(&mut req, ctx.direction, &authority));
        let upgrade = wants_upgrade(&req);
        let (response, remote) = if upgrade || req.method() == Method::CONNECT {
            let target = self.pick_target();
            // A fixed route's hop is the connection's; a balanced one's is
            // the endpoint picked.
            let remote = match (&self.route, &target) {
                (Route::Fixed(_), _) => self.remote.clone(),
                (Route::Balanced(_), Some(t)) => t.peer_labels(),
                (Route::Balanced(_), None) => PeerLabels::plain(),
            };
            self.count_request(&authority, remote.clone());
            let response = match (target, &self.route) {
                (Some(target), _) => self.forward_upgrade(req, upgrade, &target).await,
                (None, Route::Balanced(dest)) => Ok(no_endpoints(dest)),
                (None, Route::Fixed(target)) => Ok(proxy_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no route to {}", target.addr),
                )),
            };
            (response, remote)
        } else {
            match &self.route {
                Route::Fixed(target) => {
                    self.count_request(&authority, self.remote.clone());
                    (self.forward_fixed(req, target).await, self.remote.clone())
                }
                Route::Balanced(dest) => {
                    let (response, remote) = self
                        .forward_balanced(req, dest, routes.clone(), &authority)
                        .await;
                    (Ok(response), remote)
                }
            }
        };
        let response = response.unwrap_or_else(|error| {
            tracing::info!(direction = %ctx.direction, %error, "upstream request failed");
            error_response(&error)
        });
        let response = self.within_header_limit(response);
        let status = response.status();
        let trailers_only = grpc_status(response.headers());
        let streams_grpc = trailers_only.is_none() && is_grpc(response.headers());
        let meter = ResponseMeter {
            metrics: ctx.metrics.clone(),
            labels: ResponseLabels {
                direction: ctx.direction,
                authority,
                remote,
                status_code: status.as_u16(),
                grpc_status: None,
                classification: if status.is_server_error() {
                    Classification::Failure
                } else {
                    Classification::Success
                },
            },
            latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
            span,
        };
        if !streams_grpc && meter.span.is_none() {
            meter.finish(trailers_only, false);
            return Ok(response);
        }
        Ok(response.map(|inner| {
            MeteredBody {
                inner,
                meter: Some(meter),
            }
            .boxed()
        }))
    }

    /// The one target for a request that cannot be balanced per request
    /// (upgrades hold their connection for good).
    fn pick_target(&self) -> Option<Arc<Target>> {
        match &self.route {
            Route::Fixed(target) => Some(target.clone()),
            Route::Balanced(dest) => {
                match dest.routes() {
                    Some(routes) => routes
                        .pick_for_connection(None)
                        .ok()
                        .map(|e| Arc::new(e.target.clone())),
                    // Gone from discovery since the connection started.
                    None => Some(Arc::new(Target::plain(dest.addr))),
                }
            }
        }
    }

    async fn forward_fixed(
        &self,
        req: Request<Incoming>,
        target: &Target,
    ) -> Result<Response<BoxBody>, UpstreamError> {
        let req = req.map(|body| body.map_err(BoxError::from).boxed());
        self.send(target, req).await
    }

    async fn send(
        &self,
        target: &Target,
        req: Request<BoxBody>,
    ) -> Result<Response<BoxBody>, UpstreamError> {
        send(&self.ctx.pool, self.ctx.direction, target, req).await
    }

    /// Per-request balancing with the destination's policy, through the
    /// outbound stack (see [`crate::outbound`]).
    async fn forward_balanced(
        &self,
        req: Request<Incoming>,
        dest: &Arc<Destination>,
        routes: Option<Arc<Routes>>,
        authority: &Arc<String>,
    ) -> (Response<BoxBody>, PeerLabels) {
        let Some(routes) = routes else {
            // Not (or no longer) in discovery: forward to the original
            // address, as for an unknown destination.
            self.count_request(authority, PeerLabels::plain());
            let target = Target::plain(dest.addr);
            let resp = self.forward_fixed(req, &target).await;
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
                self.count_request(authority, PeerLabels::plain());
                return (routes.no_endpoint(why).into_response(), PeerLabels::plain());
            }
        };
        let first_remote = first.target.peer_labels();
        self.count_request(authority, first_remote.clone());
        let req = req.map(|body| body.map_err(BoxError::from).boxed());
        let sender = EndpointSender {
            pool: self.ctx.pool.clone(),
            direction: self.ctx.direction,
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

    fn count_request(&self, authority: &Arc<String>, remote: PeerLabels) {
        self.ctx
            .metrics
            .http
            .request
            .get_or_create(&RequestLabels {
                direction: self.ctx.direction,
                authority: authority.clone(),
                remote,
            })
            .inc();
    }

    /// WebSocket-style upgrades and CONNECT: forward the request on a fresh
    /// HTTP/1 connection and, if the upstream agrees, splice the two
    /// upgraded streams together.
    async fn forward_upgrade(
        &self,
        mut req: Request<Incoming>,
        upgrade: bool,
        target: &Target,
    ) -> Result<Response<BoxBody>, UpstreamError> {
        let is_connect = req.method() == Method::CONNECT;
        let downstream = hyper::upgrade::on(&mut req);
        strip_hop_by_hop(req.headers_mut(), upgrade);
        let addr = target.addr;
        let (io, guard) = self
            .ctx
            .pool
            .connector
            .connect(target, weft_api::mesh::Protocol::Http1)
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%addr, %error, "upstream upgrade connection ended");
            }
        });
        let req = req.map(|body| body.map_err(BoxError::from).boxed());
        let mut resp = sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Request { addr, source })?;
        let switched = if is_connect {
            resp.status().is_success()
        } else {
            resp.status() == StatusCode::SWITCHING_PROTOCOLS
        };
        if switched {
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let mut guard = guard;
                let (downstream, upstream) = tokio::join!(downstream, upstream);
                match (downstream, upstream) {
                    (Ok(d), Ok(u)) => {
                        let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                        if let Err(error) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                            guard.set_error(&error);
                        }
                    }
                    (d, u) => {
                        tracing::debug!(downstream = ?d.err(), upstream = ?u.err(), "upgrade did not complete")
                    }
                }
            });
        } else {
            strip_hop_by_hop(resp.headers_mut(), false);
        }
        Ok(resp.map(|body| body.map_err(BoxError::from).boxed()))
    }
}

fn no_endpoints(dest: &Destination) -> Response<BoxBody> {
    if let Some(routes) = dest.routes() {
        return routes.no_endpoint(NoEndpoint::None).into_response();
    }
    proxy_error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("no ready endpoints for {}", dest.addr),
    )
}
