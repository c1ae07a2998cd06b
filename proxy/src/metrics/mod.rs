//! The proxy's Prometheus metrics, owned per subsystem: connections
//! ([`tcp`]), protocol detection ([`detect`]), HTTP ([`http`]), mesh
//! identity and mTLS ([`identity`]), discovery ([`discovery`]) and the
//! routes' resilience ([`routes`]). Each registers its own families under
//! its own sub-registry.
//!
//! Names follow the ones existing mesh dashboards already query
//! (`request_total`, `response_total`, `response_latency_ms`, `tcp_*`), so
//! dashboards carry over. Labels only take bounded values: fixed sets are
//! enums ([`label_values!`]); the open ones are the peer's workload
//! identity (one value per service account), discovery's names for the
//! destination, and authorities (capped, see [`http::Authorities`]); never
//! paths or ports of clients.

pub mod detect;
pub mod discovery;
pub mod http;
pub mod identity;
pub mod limits;
pub mod peer;
pub mod policy;
pub mod routes;
pub mod tcp;

use std::sync::Arc;

use prometheus_client::registry::Registry;

pub use peer::{Dst, DstLabels, PeerLabels};

pub(crate) use weft_api::label_values;

label_values! {
    /// Which listener a connection or request came through.
    pub enum Direction {
        Inbound => "inbound",
        Outbound => "outbound",
    }
}

/// Labels of families counted per listener only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

/// A plain sub-registry: the subsystem's families keep their own names.
fn sub(registry: &mut Registry) -> &mut Registry {
    registry.sub_registry_with_labels(std::iter::empty())
}

/// Every metric the proxy exports, by subsystem.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub tcp: tcp::TcpMetrics,
    pub detect: detect::DetectMetrics,
    pub http: http::HttpMetrics,
    pub identity: identity::IdentityMetrics,
    pub discovery: discovery::DiscoveryMetrics,
    pub routes: routes::RouteMetrics,
    pub policy: policy::PolicyMetrics,
    pub limits: limits::LimitMetrics,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let metrics = Metrics {
            tcp: tcp::TcpMetrics::register(sub(&mut registry)),
            detect: detect::DetectMetrics::register(sub(&mut registry)),
            http: http::HttpMetrics::register(sub(&mut registry)),
            identity: identity::IdentityMetrics::register(sub(&mut registry)),
            discovery: discovery::DiscoveryMetrics::register(sub(&mut registry)),
            routes: routes::RouteMetrics::register(sub(&mut registry)),
            policy: policy::PolicyMetrics::register(sub(&mut registry)),
            limits: limits::LimitMetrics::register(sub(&mut registry)),
            registry: Registry::default(),
        };
        registry.register_collector(Box::new(weft_api::process::ProcessCollector));
        Arc::new(Metrics {
            registry,
            ..metrics
        })
    }

    /// Renders the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_series_start_at_zero() {
        let text = Metrics::new().encode();
        for series in [
            r#"protocol_detect_timeout_total{direction="inbound"} 0"#,
            r#"protocol_detect_total{direction="outbound",protocol="opaque_port"} 0"#,
            r#"mtls_refused_total{direction="inbound",reason="no_identity"} 0"#,
            r#"identity_cert_refresh_total{result="failure"} 0"#,
            r#"destination_lookups_total{result="timeout"} 0"#,
            r#"http_error_total{direction="outbound"} 0"#,
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}
