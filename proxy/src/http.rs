//! HTTP proxying: serve the client's HTTP/1 or HTTP/2 connection with hyper
//! and forward each request to the upstream over pooled connections.
//!
//! Bodies are streamed both ways (hyper's `Incoming` is passed straight to
//! the upstream, and the upstream's straight back), so memory does not grow
//! with body size. Upgrades (WebSocket) and CONNECT get a dedicated upstream
//! connection and become opaque byte streams once both sides agree.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::detect::Protocol;
use crate::discovery::{Destination, NoEndpoint, Routes};
use crate::io::PrefixedIo;
use crate::metrics::{
    Direction, DirectionLabels, Metrics, PeerLabels, RequestLabels, ResponseLabels,
};
use crate::outbound::error::Error as OutboundError;
use crate::outbound::retry::Served;
use crate::pool::{BoxBody, BoxError, Pool, UpstreamError, Version};
use crate::tcp::{Connector, Target};
use crate::trace::{RequestSpan, Tracer};

pub(crate) mod expect;
pub(crate) mod headers;
pub(crate) mod replay;
pub use headers::strip_hop_by_hop;
use headers::{error_response, header_list_size, proxy_error, wants_upgrade};

/// Header added to responses the proxy itself generates, naming the cause.
pub const PROXY_ERROR_HEADER: &str = "weft-proxy-error";

/// What every HTTP connection of one direction shares.
#[derive(Debug)]
pub struct HttpContext {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub pool: Arc<Pool>,
    pub direction: Direction,
    /// Set when an OTLP collector is configured; `None` costs nothing.
    pub tracer: Option<Arc<Tracer>>,
    /// This direction's error counter, resolved once instead of per request.
    http_errors: Counter,
}

impl HttpContext {
    pub fn new(config: Arc<Config>, connector: Connector, tracer: Option<Arc<Tracer>>) -> Self {
        let metrics = connector.metrics.clone();
        let direction = connector.direction;
        let labels = DirectionLabels {
            direction: direction.as_str(),
        };
        let http_errors = metrics.http_errors.get_or_create(&labels).clone();
        HttpContext {
            pool: Pool::new(
                connector,
                config.http_idle_timeout,
                config.http_max_header_bytes,
            ),
            http_errors,
            config,
            metrics,
            direction,
            tracer,
        }
    }
}

/// Where a connection's requests go.
#[derive(Clone, Debug)]
pub enum Route {
    /// One address: the original destination, or the app on loopback.
    Fixed(Arc<Target>),
    /// A destination from discovery, balanced per request.
    Balanced(Arc<Destination>),
}

/// Serves one detected HTTP connection until it ends or the proxy drains.
/// `buf` holds the bytes protocol detection already read; `remote` labels
/// the requests' metrics with the hop they crossed (for a balanced route,
/// each request's endpoint says instead).
pub async fn serve<I>(
    ctx: Arc<HttpContext>,
    mut io: I,
    mut buf: BytesMut,
    protocol: Protocol,
    route: Route,
    remote: PeerLabels,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let version = if protocol == Protocol::Http2 {
        Version::Http2
    } else {
        Version::Http1
    };
    if version == Version::Http1 && !read_first_head(&ctx, &mut io, &mut buf, &remote).await {
        return;
    }
    let io = TokioIo::new(PrefixedIo::new(buf, io));
    let forwarder = Forwarder {
        ctx: ctx.clone(),
        route,
        version,
        remote,
    };
    let service = hyper::service::service_fn(move |req| forwarder.clone().call(req));
    let result = match version {
        Version::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                // hyper's header timer also runs while a keep-alive
                // connection idles, so it is the idle timeout here; the
                // first request's head is bounded by `read_first_head`.
                .header_read_timeout(ctx.config.http_idle_timeout)
                .max_buf_size(ctx.config.http_max_header_bytes);
            let conn = builder.serve_connection(io, service).with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        Version::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(crate::pool::header_list_limit(
                    ctx.config.http_max_header_bytes,
                ))
                .serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(error) = result {
        if error.is_parse() || error.is_parse_too_large() || error.is_timeout() {
            ctx.http_errors.inc();
        }
        tracing::debug!(direction = %ctx.direction, %error, "HTTP connection ended with an error");
    }
}

/// Reads until the first request's head is complete. A client that stalls
/// mid-head gets 408 and the connection is closed; one whose head is too
/// large gets 431 naming the limit. (hyper answers a later request's
/// oversized head on a kept-alive connection with a bare 431.)
async fn read_first_head<I>(
    ctx: &HttpContext,
    io: &mut I,
    buf: &mut BytesMut,
    remote: &PeerLabels,
) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + ctx.config.http_header_timeout;
    while !contains(buf, b"\r\n\r\n") && buf.len() < ctx.config.http_max_header_bytes {
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return false,
            Err(_) => {
                refuse_head(
                    ctx,
                    io,
                    remote,
                    StatusCode::REQUEST_TIMEOUT,
                    "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                )
                .await;
                return false;
            }
        }
    }
    if !contains(buf, b"\r\n\r\n") && buf.len() >= ctx.config.http_max_header_bytes {
        let reason = format!(
            "request head exceeds WEFT_HTTP_MAX_HEADER_BYTES ({})",
            ctx.config.http_max_header_bytes
        );
        let answer = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\n{PROXY_ERROR_HEADER}: {reason}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{reason}\n",
            reason.len() + 1
        );
        refuse_head(
            ctx,
            io,
            remote,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &answer,
        )
        .await;
        return false;
    }
    true
}

/// Answers a first request head the proxy refuses, counts it, and closes.
async fn refuse_head<I>(
    ctx: &HttpContext,
    io: &mut I,
    remote: &PeerLabels,
    status: StatusCode,
    answer: &str,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    ctx.http_errors.inc();
    ResponseMeter {
        metrics: ctx.metrics.clone(),
        labels: ResponseLabels {
            direction: ctx.direction.as_str(),
            authority: ctx.metrics.authorities.label(None),
            remote: remote.clone(),
            status_code: status.as_u16(),
            grpc_status: None,
            classification: "success",
        },
        latency_ms: None,
        span: None,
    }
    .finish(None, false);
    let _ = io.write_all(answer.as_bytes()).await;
    let _ = io.shutdown().await;
    // Closing with the rest of the head unread would reset the connection,
    // and the reset can destroy the answer before the client reads it; so
    // the rest is read and dropped for a moment first.
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Counts a response once it is over: at once for plain HTTP, or when a
/// gRPC body ends (its status is in the trailers) or a traced response's
/// body ends (the span covers the whole exchange).
#[derive(Debug)]
struct ResponseMeter {
    metrics: Arc<Metrics>,
    labels: ResponseLabels,
    /// Time to response headers.
    latency_ms: Option<f64>,
    span: Option<RequestSpan>,
}

impl ResponseMeter {
    /// `broken`: the body failed midway.
    fn finish(mut self, grpc_status: Option<u16>, broken: bool) {
        self.labels.grpc_status = grpc_status;
        if broken || grpc_status.is_some_and(|code| code != 0) {
            self.labels.classification = "failure";
        }
        self.metrics.response.get_or_create(&self.labels).inc();
        if let Some(ms) = self.latency_ms {
            self.metrics
                .response_latency_ms
                .get_or_create(&self.labels)
                .observe(ms);
        }
        if let Some(span) = self.span.take() {
            span.end(
                self.labels.status_code,
                grpc_status,
                self.labels.classification == "failure",
            );
        }
    }
}

/// A response body that reports to its meter when it ends, fails or is
/// dropped by the client.
struct MeteredBody {
    inner: BoxBody,
    meter: Option<ResponseMeter>,
}

impl MeteredBody {
    fn finish(&mut self, grpc_status: Option<u16>, broken: bool) {
        if let Some(meter) = self.meter.take() {
            meter.finish(grpc_status, broken);
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(grpc_status(trailers), false);
                }
            }
            std::task::Poll::Ready(Some(Err(_))) => this.finish(None, true),
            std::task::Poll::Ready(None) => this.finish(None, false),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.finish(None, false);
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The request's authority: the URI's (HTTP/2, absolute form), else Host.
fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
}

#[derive(Clone, Debug)]
struct Forwarder {
    ctx: Arc<HttpContext>,
    route: Route,
    /// The client's HTTP version on this connection.
    version: Version,
    /// The hop a fixed route's requests cross.
    remote: PeerLabels,
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
        if size <= crate::pool::header_list_limit(limit) as usize {
            return response;
        }
        tracing::info!(direction = %self.ctx.direction, size, limit, "response headers over the limit");
        proxy_error(
            StatusCode::BAD_GATEWAY,
            format!("response headers of {size} bytes exceed WEFT_HTTP_MAX_HEADER_BYTES ({limit})"),
        )
    }

    async fn call(self, req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
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
            .unwrap_or_else(|| ctx.metrics.authorities.label(request_authority(&req)));
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
                direction: ctx.direction.as_str(),
                authority,
                remote,
                status_code: status.as_u16(),
                grpc_status: None,
                classification: if status.is_server_error() {
                    "failure"
                } else {
                    "success"
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
        send(&self.ctx, target, req).await
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
        let sender = EndpointSender(self.ctx.clone());
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
            .request
            .get_or_create(&RequestLabels {
                direction: self.ctx.direction.as_str(),
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

/// Sends one request to one target: hop-by-hop fields go, and HTTP/1
/// between two proxies travels as HTTP/2 (see [`ORIG_PROTO_HEADER`]),
/// except a request that expects `100 Continue`, whose body waits for the
/// server's 100 (see [`expect`]). The request's version is the client's.
async fn send(
    ctx: &HttpContext,
    target: &Target,
    mut req: Request<BoxBody>,
) -> Result<Response<BoxBody>, UpstreamError> {
    strip_hop_by_hop(req.headers_mut(), false);
    let downstream = if req.version() == http::Version::HTTP_2 {
        Version::Http2
    } else {
        Version::Http1
    };
    let expect = downstream == Version::Http1 && expect::expects_continue(req.headers());
    // Whether this hop turns HTTP/1 into mesh HTTP/2, or back.
    let (mut to_mesh, mut from_mesh) = (false, false);
    let version = match (ctx.direction, downstream) {
        (Direction::Outbound, Version::Http1) if target.mesh.is_some() && !expect => {
            to_mesh_h2(&mut req, target);
            to_mesh = true;
            Version::Http2
        }
        (Direction::Inbound, Version::Http2) if req.headers().contains_key(ORIG_PROTO_HEADER) => {
            from_mesh_h2(&mut req);
            from_mesh = true;
            Version::Http1
        }
        (_, Version::Http2) => {
            // HTTP/2 carries the authority in the URI; keep Host out.
            req.headers_mut().remove(HOST);
            Version::Http2
        }
        (_, Version::Http1) => Version::Http1,
    };
    let (req, gate) = match expect && version == Version::Http1 {
        true => {
            let (req, gate) = expect::gate(req, expect::CONTINUE_WAIT);
            (req, Some(gate))
        }
        false => (req, None),
    };
    let sent = ctx.pool.send(target, version, req).await;
    if let Some(gate) = gate {
        // A final answer without a 100: the client's body is not wanted.
        gate.close();
    }
    let mut resp = sent?;
    strip_hop_by_hop(resp.headers_mut(), false);
    if from_mesh {
        carry_reason(&mut resp);
    } else if to_mesh {
        restore_reason(&mut resp);
    }
    Ok(resp)
}

/// Carries an HTTP/1 server's own reason phrase across the mesh's HTTP/2
/// hop, which has none: the client's proxy puts it back.
pub const REASON_HEADER: &str = "weft-orig-reason";

fn carry_reason(resp: &mut Response<BoxBody>) {
    let reason = resp.extensions().get::<hyper::ext::ReasonPhrase>();
    if let Some(value) = reason.and_then(|r| HeaderValue::from_bytes(r.as_bytes()).ok()) {
        resp.headers_mut().insert(REASON_HEADER, value);
    }
}

fn restore_reason(resp: &mut Response<BoxBody>) {
    if let Some(value) = resp.headers_mut().remove(REASON_HEADER)
        && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(value.as_bytes())
    {
        resp.extensions_mut().insert(reason);
    }
}

/// The bottom of the outbound stack: one request to one endpoint over the
/// pool.
#[derive(Clone, Debug)]
struct EndpointSender(Arc<HttpContext>);

impl tower::Service<(Target, Request<BoxBody>)> for EndpointSender {
    type Response = Response<BoxBody>;
    type Error = UpstreamError;
    type Future = crate::outbound::EndpointFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), UpstreamError>> {
        // The pool dials on demand: there is nothing to wait for.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, (target, req): (Target, Request<BoxBody>)) -> Self::Future {
        let ctx = self.0.clone();
        Box::pin(async move { send(&ctx, &target, req).await })
    }
}

/// Marks an HTTP/1 request that crosses the mesh as HTTP/2, so the
/// receiving proxy hands it to its app as HTTP/1 again.
pub const ORIG_PROTO_HEADER: &str = "weft-orig-proto";

/// Turns an app's HTTP/1 request into one for a mesh HTTP/2 connection:
/// the authority moves from Host into the URI.
fn to_mesh_h2(req: &mut Request<BoxBody>, target: &Target) {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| target.addr.to_string());
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let orig = if req.version() == http::Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    if let Ok(uri) = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
    {
        *req.uri_mut() = uri;
        req.headers_mut().remove(HOST);
    }
    req.headers_mut()
        .insert(ORIG_PROTO_HEADER, HeaderValue::from_static(orig));
    *req.version_mut() = http::Version::HTTP_2;
}

/// The receiving side of [`to_mesh_h2`]: back to an origin-form HTTP/1.1
/// request with Host.
fn from_mesh_h2(req: &mut Request<BoxBody>) {
    req.headers_mut().remove(ORIG_PROTO_HEADER);
    if let Some(authority) = req.uri().authority().cloned()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(HOST, host);
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_11;
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

#[cfg(test)]
mod tests {
    use http::header::{CONNECTION, TE, UPGRADE};
    use http_body_util::Full;

    use super::*;

    #[test]
    fn header_lists_are_sized_as_http2_counts_them() {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("abc"));
        h.append("cookie", HeaderValue::from_static("de"));
        assert_eq!(header_list_size(&h), (6 + 3 + 32) + (6 + 2 + 32));
        // The allowance covers the configured head plus field overhead.
        assert!(crate::pool::header_list_limit(65536) as usize > 65536);
        assert_eq!(crate::pool::header_list_limit(usize::MAX), u32::MAX);
    }

    #[test]
    fn strips_hop_by_hop_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(TE, HeaderValue::from_static("gzip"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-end-to-end", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-end-to-end"));
    }

    #[test]
    fn keeps_te_trailers_and_upgrade_when_upgrading() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade, x-private"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(TE).unwrap(), "trailers");
        assert!(!h.contains_key("x-private"));
    }

    #[test]
    fn http1_crosses_the_mesh_as_http2_and_back() {
        let target = Target::plain("10.0.0.1:8080".parse().unwrap());
        let mut req = Request::get("/path?q=1")
            .header(HOST, "web.demo:80")
            .header("x-app", "kept")
            .body(Full::new(Bytes::new()).map_err(BoxError::from).boxed())
            .unwrap();
        to_mesh_h2(&mut req, &target);
        assert_eq!(req.uri(), "http://web.demo:80/path?q=1");
        assert!(!req.headers().contains_key(HOST));
        assert_eq!(req.headers()[ORIG_PROTO_HEADER], "HTTP/1.1");
        assert_eq!(req.version(), http::Version::HTTP_2);
        from_mesh_h2(&mut req);
        assert_eq!(req.uri(), "/path?q=1");
        assert_eq!(req.headers()[HOST], "web.demo:80");
        assert_eq!(req.headers()["x-app"], "kept");
        assert!(!req.headers().contains_key(ORIG_PROTO_HEADER));
        assert_eq!(req.version(), http::Version::HTTP_11);
        // No Host at all (HTTP/1.0): the dialled address stands in.
        let mut req = Request::get("/")
            .version(http::Version::HTTP_10)
            .body(Full::new(Bytes::new()).map_err(BoxError::from).boxed())
            .unwrap();
        to_mesh_h2(&mut req, &target);
        assert_eq!(req.uri(), "http://10.0.0.1:8080/");
        assert_eq!(req.headers()[ORIG_PROTO_HEADER], "HTTP/1.0");
    }

    #[test]
    fn recognises_upgrade_requests() {
        let req = Request::builder()
            .header(CONNECTION, "keep-alive, Upgrade")
            .header(UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(wants_upgrade(&req));
        let req = Request::builder()
            .header(UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(!wants_upgrade(&req));
    }
}
