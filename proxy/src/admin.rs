//! What the proxy's admin server (served by [`weft_api::admin`]) reports:
//! ready once it has a certificate and its listeners, plus a loopback-only
//! `POST /shutdown` (so a Job's main container can tell its sidecar to
//! exit).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;
use weft_api::admin::{Admin, AdminResponse, text};

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
    /// An enforcing proxy is ready only once the pod's policy arrived.
    pub policy: Arc<crate::policy::Policy>,
    /// Cancelled to begin a graceful shutdown.
    pub shutdown: CancellationToken,
}

impl Admin for AdminState {
    fn readiness(&self) -> Result<(), weft_api::admin::NotReady> {
        if !self.certs.as_ref().is_none_or(|c| c.is_ready()) {
            Err(weft_api::admin::NotReady("no workload certificate yet"))
        } else if !self.policy.is_ready() {
            Err(weft_api::admin::NotReady(
                "the pod's NetworkPolicy has not arrived yet",
            ))
        } else if !self.ready.load(Ordering::Acquire) {
            Err(weft_api::admin::NotReady(
                "listeners not bound yet, or draining",
            ))
        } else {
            Ok(())
        }
    }

    fn metrics(&self) -> String {
        self.metrics.encode()
    }

    fn route(&self, method: &Method, path: &str, peer: SocketAddr) -> Option<AdminResponse> {
        if path != "/shutdown" {
            return None;
        }
        Some(if !is_loopback(peer) {
            tracing::warn!(%peer, "refused shutdown request from a non-loopback address");
            text(
                StatusCode::FORBIDDEN,
                "shutdown is only accepted from localhost\n",
            )
        } else if method == Method::POST {
            tracing::info!(%peer, "shutdown requested through the admin server");
            self.shutdown.cancel();
            text(StatusCode::ACCEPTED, "shutting down\n")
        } else {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        })
    }
}

fn is_loopback(peer: SocketAddr) -> bool {
    match peer {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => {
            a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}
