//! HTTP proxying: serve the client's HTTP/1 or HTTP/2 connection with hyper
//! and forward each request to the upstream over pooled connections.
//!
//! Bodies are streamed both ways (hyper's `Incoming` is passed straight to
//! the upstream, and the upstream's straight back), so memory does not grow
//! with body size. Upgrades (WebSocket) and CONNECT get a dedicated upstream
//! connection and become opaque byte streams once both sides agree.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::detect::Protocol;
use crate::io::PrefixedIo;
use crate::metrics::{
    Direction, DirectionLabels, Metrics, RequestLabels, ResponseLabels, TlsLabels,
};
use crate::pool::{BoxBody, BoxError, Pool, UpstreamError, Version};
use crate::tcp::{ConnectError, Connector, Target};

/// Header added to responses the proxy itself generates, naming the cause.
pub const PROXY_ERROR_HEADER: &str = "weft-proxy-error";

/// What every HTTP connection of one direction shares.
#[derive(Debug)]
pub struct HttpContext {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub pool: Arc<Pool>,
    pub direction: Direction,
    /// This direction's error counter, resolved once instead of per request.
    http_errors: Counter,
}

impl HttpContext {
    pub fn new(config: Arc<Config>, connector: Connector) -> Self {
        let metrics = connector.metrics.clone();
        let direction = connector.direction;
        let labels = DirectionLabels {
            direction: direction.as_str(),
        };
        let http_errors = metrics.http_errors.get_or_create(&labels).clone();
        HttpContext {
            pool: Pool::new(connector, config.http_idle_timeout),
            http_errors,
            config,
            metrics,
            direction,
        }
    }
}

/// Serves one detected HTTP connection until it ends or the proxy drains.
/// `buf` holds the bytes protocol detection already read; `tls` labels
/// the requests' metrics with the mesh hop they crossed.
pub async fn serve<I>(
    ctx: Arc<HttpContext>,
    mut io: I,
    mut buf: BytesMut,
    protocol: Protocol,
    target: Target,
    tls: TlsLabels,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let version = if protocol == Protocol::Http2 {
        Version::Http2
    } else {
        Version::Http1
    };
    if version == Version::Http1 && !read_first_head(&ctx, &mut io, &mut buf, &tls).await {
        return;
    }
    let io = TokioIo::new(PrefixedIo::new(buf, io));
    let requests = ctx
        .metrics
        .request
        .get_or_create(&RequestLabels {
            direction: ctx.direction.as_str(),
            tls: tls.clone(),
        })
        .clone();
    let forwarder = Forwarder {
        ctx: ctx.clone(),
        target: Arc::new(target),
        version,
        tls: Arc::new(tls),
        requests,
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
/// large is left to hyper, which answers 431.
async fn read_first_head<I>(
    ctx: &HttpContext,
    io: &mut I,
    buf: &mut BytesMut,
    tls: &TlsLabels,
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
                ctx.http_errors.inc();
                record_response(ctx, tls, StatusCode::REQUEST_TIMEOUT, None);
                let _ = io
                    .write_all(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                    .await;
                let _ = io.shutdown().await;
                return false;
            }
        }
    }
    true
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn record_response(
    ctx: &HttpContext,
    tls: &TlsLabels,
    status: StatusCode,
    started: Option<Instant>,
) {
    let labels = ResponseLabels {
        direction: ctx.direction.as_str(),
        tls: tls.clone(),
        status_code: status.as_u16(),
        classification: if status.is_server_error() {
            "failure"
        } else {
            "success"
        },
    };
    ctx.metrics.response.get_or_create(&labels).inc();
    if let Some(started) = started {
        ctx.metrics
            .response_latency_ms
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64() * 1000.0);
    }
}

#[derive(Clone, Debug)]
struct Forwarder {
    ctx: Arc<HttpContext>,
    target: Arc<Target>,
    version: Version,
    tls: Arc<TlsLabels>,
    /// This connection's request counter, resolved once.
    requests: Counter,
}

impl Forwarder {
    async fn call(self, req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
        let started = Instant::now();
        let ctx = &self.ctx;
        self.requests.inc();
        let upgrade = wants_upgrade(&req);
        let result = if upgrade || req.method() == Method::CONNECT {
            self.forward_upgrade(req, upgrade).await
        } else {
            self.forward(req).await
        };
        let response = result.unwrap_or_else(|error| {
            tracing::info!(direction = %ctx.direction, target = %self.target.addr, %error, "upstream request failed");
            error_response(&error)
        });
        record_response(ctx, &self.tls, response.status(), Some(started));
        Ok(response)
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<Response<BoxBody>, UpstreamError> {
        strip_hop_by_hop(req.headers_mut(), false);
        if self.version == Version::Http2 {
            // HTTP/2 carries the authority in the URI; keep Host out of it.
            req.headers_mut().remove(HOST);
        }
        let req = req.map(|body| body.map_err(BoxError::from).boxed());
        let mut resp = self.ctx.pool.send(&self.target, self.version, req).await?;
        strip_hop_by_hop(resp.headers_mut(), false);
        Ok(resp)
    }

    /// WebSocket-style upgrades and CONNECT: forward the request on a fresh
    /// HTTP/1 connection and, if the upstream agrees, splice the two
    /// upgraded streams together.
    async fn forward_upgrade(
        &self,
        mut req: Request<Incoming>,
        upgrade: bool,
    ) -> Result<Response<BoxBody>, UpstreamError> {
        let is_connect = req.method() == Method::CONNECT;
        let downstream = hyper::upgrade::on(&mut req);
        strip_hop_by_hop(req.headers_mut(), upgrade);
        let addr = self.target.addr;
        let (io, guard) = self
            .ctx
            .pool
            .connector
            .connect(&self.target, weft_api::mesh::Protocol::Http1)
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

fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() <= http::Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and every
/// field it names, plus the well-known ones that never cross a proxy.
/// For an upgrade, `Connection: upgrade` and `Upgrade` are kept, because the
/// upgrade has to reach the upstream.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == UPGRADE) {
            headers.remove(&name);
        }
    }
    headers.remove(CONNECTION);
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    headers.remove(TRANSFER_ENCODING);
    // `TE: trailers` is end-to-end meaningful (gRPC needs it); any other TE
    // value is about this hop's transfer coding.
    if headers
        .get(TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(TE);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

fn error_response(error: &UpstreamError) -> Response<BoxBody> {
    let status = match error {
        UpstreamError::Connect(ConnectError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let reason = error.to_string();
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("{reason}\n")))
            .map_err(BoxError::from)
            .boxed(),
    );
    *resp.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(&reason) {
        resp.headers_mut().insert(PROXY_ERROR_HEADER, value);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

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
