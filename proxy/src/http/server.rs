//! Serving one client HTTP connection: hyper's HTTP/1 or HTTP/2 server,
//! the first request head bounded in time and size, and each request
//! handed to the direction's service (`crate::inbound::http::LocalApp` or
//! `crate::outbound::http::Outbound`).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;

use super::PROXY_ERROR_HEADER;
use super::metered::ResponseMeter;
use super::pool::{BoxBody, BoxError, Pool, Version};
use crate::config::Config;
use crate::detect::Protocol;
use crate::io::PrefixedIo;
use crate::metrics::http::{Classification, ResponseLabels};
use crate::metrics::{Direction, DirectionLabels, Metrics, PeerLabels};
use crate::trace::Tracer;
use crate::transport::Connector;

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
    pub(crate) http_errors: Counter,
    /// Requests awaiting their response, over all of this direction's
    /// connections (`WEFT_MAX_REQUESTS_IN_FLIGHT`).
    in_flight: Arc<Semaphore>,
    requests_shed: Counter,
}

impl HttpContext {
    pub fn new(config: Arc<Config>, connector: Connector, tracer: Option<Arc<Tracer>>) -> Self {
        let metrics = connector.metrics.clone();
        let direction = connector.direction;
        let labels = DirectionLabels { direction };
        let http_errors = metrics.http.errors.get_or_create(&labels).clone();
        let requests_shed = metrics.limits.requests_shed.get_or_create(&labels).clone();
        HttpContext {
            in_flight: Arc::new(Semaphore::new(config.max_requests_in_flight)),
            requests_shed,
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

/// The HTTP version a detected protocol speaks.
pub(crate) fn version_of(protocol: Protocol) -> Version {
    if protocol == Protocol::Http2 {
        Version::Http2
    } else {
        Version::Http1
    }
}

/// Serves one detected HTTP connection with `service` until it ends or the
/// proxy drains. `buf` holds the bytes protocol detection already read;
/// `remote` labels a refused first request head with the hop it came on.
pub(crate) async fn serve<I, S>(
    ctx: Arc<HttpContext>,
    mut io: I,
    mut buf: BytesMut,
    version: Version,
    remote: PeerLabels,
    service: S,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<BoxBody>> + Clone + Send + 'static,
    // An error closes the connection (HTTP/1) or resets the stream
    // (HTTP/2): what the inbound stack does to a request policy refuses.
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    if version == Version::Http1 && !read_first_head(&ctx, &mut io, &mut buf, &remote).await {
        return;
    }
    // Over the limit a request is answered 503 at once rather than queued:
    // a queue would hold what the limit is there to bound, and the client
    // (or the client proxy's retry budget) can try another endpoint.
    let overloaded =
        answer_overloaded(ctx.requests_shed.clone(), ctx.config.max_requests_in_flight);
    let service = tower::ServiceBuilder::new()
        .map_result(overloaded)
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(
            ctx.in_flight.clone(),
        ))
        .service(service);
    let service = hyper_util::service::TowerToHyperService::new(service);
    let io = TokioIo::new(PrefixedIo::new(buf, io));
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
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            super::h2::server(&mut builder, ctx.config.http_max_header_bytes);
            let conn = builder.serve_connection(io, service);
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

/// Turns load shedding's error into the 503 the client gets.
fn answer_overloaded(
    shed: Counter,
    limit: usize,
) -> impl Fn(Result<Response<BoxBody>, BoxError>) -> Result<Response<BoxBody>, BoxError> + Clone {
    move |result| match result {
        Err(error) if error.is::<tower::load_shed::error::Overloaded>() => {
            shed.inc();
            let reason = format!("overloaded: {limit} requests in flight");
            Ok(super::headers::proxy_error(
                StatusCode::SERVICE_UNAVAILABLE,
                reason,
            ))
        }
        other => other,
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
            direction: ctx.direction,
            authority: ctx.metrics.http.authorities.label(None),
            remote: remote.clone(),
            route: Default::default(),
            status_code: status.as_u16(),
            grpc_status: None,
            classification: Classification::Success,
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
