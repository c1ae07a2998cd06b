//! The admin server every Weft program runs: `GET /live`, `GET /ready`
//! and `GET /metrics` over plain HTTP/1, plus any routes a program adds
//! (the proxy's loopback-only `POST /shutdown`).
//!
//! A program says what "ready" means and what its metrics are by
//! implementing [`Admin`]; the paths, status codes, content types and the
//! accept loop are the same everywhere, so probes and scrapes behave alike
//! across the mesh.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The OpenMetrics text format, as Prometheus asks for it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A response the admin server sends.
pub type AdminResponse = Response<Full<Bytes>>;

/// Why a program should not receive work yet: the body of the 503, for
/// whoever reads a failing probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotReady(pub &'static str);

/// What one program reports through its admin server.
pub trait Admin: Send + Sync + 'static {
    /// `Ok` when the program should receive work; otherwise why not.
    fn readiness(&self) -> Result<(), NotReady>;

    /// The metrics in the OpenMetrics text format.
    fn metrics(&self) -> String;

    /// A route of the program's own, or `None` to fall through to the
    /// common ones.
    fn route(&self, _method: &Method, _path: &str, _peer: SocketAddr) -> Option<AdminResponse> {
        None
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Answers one admin request.
pub fn respond<A: Admin + ?Sized>(
    admin: &A,
    method: &Method,
    path: &str,
    peer: SocketAddr,
) -> AdminResponse {
    if let Some(resp) = admin.route(method, path, peer) {
        return resp;
    }
    match (method, path) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") => match admin.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        (&Method::GET, "/metrics") => {
            let mut resp = text(StatusCode::OK, admin.metrics());
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            resp
        }
        (_, "/live" | "/ready" | "/metrics") => {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Accepts admin connections until the task is dropped. Accept errors
/// (out of file descriptors, say) are logged and retried after a pause
/// rather than ending the server: probes must keep working.
pub async fn serve<A: Admin + ?Sized>(listener: TcpListener, admin: Arc<A>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = respond(&*admin, req.method(), req.uri().path(), peer);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::BodyExt;

    use super::*;

    struct Fake {
        ready: AtomicBool,
    }

    impl Admin for Fake {
        fn readiness(&self) -> Result<(), NotReady> {
            if self.ready.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err(NotReady("still loading"))
            }
        }
        fn metrics(&self) -> String {
            "up 1\n# EOF\n".into()
        }
        fn route(&self, method: &Method, path: &str, _peer: SocketAddr) -> Option<AdminResponse> {
            (method == Method::POST && path == "/poke").then(|| text(StatusCode::ACCEPTED, "ok\n"))
        }
    }

    async fn body(resp: AdminResponse) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn probes_metrics_and_program_routes() {
        let fake = Fake {
            ready: AtomicBool::new(false),
        };
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let get = |path: &str| respond(&fake, &Method::GET, path, peer);
        assert_eq!(get("/live").status(), StatusCode::OK);
        let not_ready = get("/ready");
        assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(not_ready).await, "not ready: still loading\n");
        fake.ready.store(true, Ordering::Relaxed);
        assert_eq!(get("/ready").status(), StatusCode::OK);
        let metrics = get("/metrics");
        assert_eq!(metrics.headers()[header::CONTENT_TYPE], OPENMETRICS);
        assert_eq!(body(metrics).await, "up 1\n# EOF\n");
        assert_eq!(get("/nope").status(), StatusCode::NOT_FOUND);
        let post = respond(&fake, &Method::POST, "/metrics", peer);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET");
        let poke = respond(&fake, &Method::POST, "/poke", peer);
        assert_eq!(poke.status(), StatusCode::ACCEPTED);
    }

    #[tokio::test]
    async fn serves_over_a_real_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Fake {
                ready: AtomicBool::new(true),
            }),
        ));
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/ready")
            .header(header::HOST, "admin")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        server.abort();
    }
}
