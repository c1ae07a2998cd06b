//! The admin server: liveness, readiness, metrics and a loopback-only
//! shutdown hook (so a Job's main container can tell its sidecar to exit).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::tls::CertStore;

/// State the admin endpoints report on or act upon.
#[derive(Debug)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// True once the listeners are bound, false again while draining.
    pub ready: AtomicBool,
    /// With an identity, the proxy is ready only once it has a certificate.
    pub certs: Option<Arc<CertStore>>,
    /// Cancelled to begin a graceful shutdown.
    pub shutdown: CancellationToken,
}

/// Accepts admin connections until the process exits.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, peer, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn is_loopback(peer: SocketAddr) -> bool {
    match peer {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => {
            a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn route(state: &AdminState, peer: SocketAddr, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") => {
            let certified = state.certs.as_ref().is_none_or(|c| c.is_ready());
            if !certified {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no workload certificate yet\n",
                )
            } else if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut resp = text(StatusCode::OK, state.metrics.encode());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (&Method::POST, "/shutdown") if is_loopback(peer) => {
            tracing::info!(%peer, "shutdown requested through the admin server");
            state.shutdown.cancel();
            text(StatusCode::ACCEPTED, "shutting down\n")
        }
        (_, "/shutdown") if !is_loopback(peer) => {
            tracing::warn!(%peer, "refused shutdown request from a non-loopback address");
            text(
                StatusCode::FORBIDDEN,
                "shutdown is only accepted from localhost\n",
            )
        }
        (_, "/live" | "/ready" | "/metrics" | "/shutdown") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
