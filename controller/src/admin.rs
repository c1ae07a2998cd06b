//! The controller's admin server: `/live`, `/ready`, `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::discovery::Store;
use crate::metrics::Metrics;

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, store: Arc<Store>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (metrics, store) = (metrics.clone(), store.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (metrics, store) = (metrics.clone(), store.clone());
                async move { Ok::<_, Infallible>(route(&metrics, &store, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(metrics: &Metrics, store: &Store, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => (StatusCode::OK, "live\n".to_string(), "text/plain"),
        // Serving starts only after the CA loaded; discovery must also
        // have listed everything once, or proxies would be told that
        // existing services do not exist.
        (&Method::GET, "/ready") if store.is_synced() => {
            (StatusCode::OK, "ready\n".to_string(), "text/plain")
        }
        (&Method::GET, "/ready") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "discovery not synced\n".to_string(),
            "text/plain",
        ),
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_string(),
            "text/plain",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_str(content_type).expect("static content type"),
    );
    resp
}
