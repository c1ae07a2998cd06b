//! The HTTPS webhook server and the plain admin server around
//! [`crate::review::review`].
//!
//! Webhook paths (HTTPS):
//! - `POST /inject`: called for pods of namespaces labelled
//!   `weft.io/inject=enabled`; pods are injected unless they opt out.
//! - `POST /inject-annotated`: called for pods of other namespaces; only pods
//!   annotated `weft.io/inject: enabled` are injected.
//! - `GET /healthz`.
//!
//! Admin (plain HTTP, [`weft_api::admin`]): `/live`, `/ready`, `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use weft_api::slots::Slots;

use crate::metrics::Metrics;
use crate::review::{self, Outcome};
use crate::settings::{MeshSettings, SidecarMode};
use crate::tls::ServingCert;

/// Webhook path for pods of namespaces labelled `weft.io/inject=enabled`.
pub const PATH_NAMESPACE_ENABLED: &str = "/inject";
/// Webhook path for pods of other namespaces (only annotated pods).
pub const PATH_ANNOTATED_ONLY: &str = "/inject-annotated";

/// Largest AdmissionReview accepted. The API server stores objects of up
/// to 1.5 MiB; a review carries the object and a little more.
pub const MAX_BODY: usize = 4 << 20;
/// A client must finish its TLS handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's head, and then its body, must arrive within this time. The
/// API server gives a webhook at most 30 s (`timeoutSeconds`, 10 by
/// default), so a slower client is not the API server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once, and from one client address. The API
/// servers need a few each; past these a flood is closed on accept rather
/// than using up memory and descriptors, and one flooding address leaves
/// the API servers their share.
pub const MAX_CONNECTIONS: usize = 1024;
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 128;

/// Everything a review needs, shared by all connections.
#[derive(Debug)]
pub struct Webhook {
    pub settings: ArcSwap<MeshSettings>,
    pub mode: ArcSwap<SidecarMode>,
    pub metrics: Arc<Metrics>,
    /// Set once the sidecar mode is decided (immediately unless `auto`).
    pub ready: AtomicBool,
}

impl Webhook {
    pub fn new(settings: MeshSettings, mode: SidecarMode, metrics: Arc<Metrics>) -> Arc<Self> {
        metrics.set_mode(mode);
        Arc::new(Webhook {
            settings: ArcSwap::from_pointee(settings),
            mode: ArcSwap::from_pointee(mode),
            metrics,
            ready: AtomicBool::new(false),
        })
    }

    pub fn set_mode(&self, mode: SidecarMode) {
        if **self.mode.load() != mode {
            tracing::info!(mode = mode.as_str(), "sidecar mode");
        }
        self.mode.store(Arc::new(mode));
        self.metrics.set_mode(mode);
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let namespace_enabled = match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
            (&Method::POST, PATH_NAMESPACE_ENABLED) => true,
            (&Method::POST, PATH_ANNOTATED_ONLY) => false,
            (_, PATH_NAMESPACE_ENABLED | PATH_ANNOTATED_ONLY | "/healthz") => {
                return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            }
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        if !content_type.starts_with("application/json") {
            self.metrics.bad_requests.inc();
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("weft-injector: expected application/json, got {content_type}\n"),
            );
        }
        let body = Limited::new(req.into_body(), MAX_BODY).collect();
        let body = match tokio::time::timeout(REQUEST_TIMEOUT, body).await {
            Ok(Ok(body)) => body.to_bytes(),
            Err(_) => {
                self.metrics.bad_requests.inc();
                return text(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!("weft-injector: body not received within {REQUEST_TIMEOUT:?}\n"),
                );
            }
            Ok(Err(error)) => {
                self.metrics.bad_requests.inc();
                return if error.is::<http_body_util::LengthLimitError>() {
                    text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("weft-injector: body larger than {MAX_BODY} bytes\n"),
                    )
                } else {
                    text(
                        StatusCode::BAD_REQUEST,
                        &format!("weft-injector: cannot read body: {error}\n"),
                    )
                };
            }
        };
        let started = Instant::now();
        let settings = self.settings.load();
        let mode = **self.mode.load();
        match review::review(&body, namespace_enabled, &settings, mode) {
            Ok(reviewed) => {
                self.metrics.admission(reviewed.outcome, started.elapsed());
                let (outcome, reason) = reviewed.outcome.labels();
                match reviewed.outcome {
                    Outcome::Denied(_) => {
                        tracing::warn!(pod = %reviewed.pod, outcome, reason, "admission")
                    }
                    _ => {
                        tracing::info!(pod = %reviewed.pod, outcome, reason, mode = mode.as_str(), "admission")
                    }
                }
                let mut resp = Response::new(Full::new(Bytes::from(reviewed.body)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                resp
            }
            Err(error) => {
                self.metrics.bad_requests.inc();
                tracing::warn!(%error, "bad admission review");
                text(
                    StatusCode::BAD_REQUEST,
                    &format!("weft-injector: {error}\n"),
                )
            }
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    weft_api::admin::text(status, body.to_string())
}

/// Serves the webhook until `shutdown` resolves, then lets open
/// connections finish for up to `grace`.
pub async fn serve_webhook(
    listener: TcpListener,
    cert: Arc<ServingCert>,
    webhook: Arc<Webhook>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(Arc::new(cert.server_config()));
    let graceful = GracefulShutdown::new();
    let slots = Slots::new(MAX_CONNECTIONS, Some(MAX_CONNECTIONS_PER_CLIENT));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match slots.take(client.ip()) {
            Ok(slot) => slot,
            Err(full) => {
                webhook.metrics.connections_refused.inc();
                tracing::debug!(%client, ?full, "too many connections; closing a new one");
                continue;
            }
        };
        let (acceptor, webhook) = (acceptor.clone(), webhook.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let peer = Some(client);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(?peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(?peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(webhook.handle(req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(error) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(?peer, %error, "connection ended");
            }
        });
    }
    tracing::info!("shutting down: no new connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period");
    }
}

/// What the admin server ([`weft_api::admin`]) reports: ready once the
/// sidecar mode is decided.
impl weft_api::admin::Admin for Webhook {
    fn readiness(&self) -> Result<(), weft_api::admin::NotReady> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(weft_api::admin::NotReady("sidecar mode not decided"))
        }
    }

    fn metrics(&self) -> String {
        self.metrics.encode()
    }
}
