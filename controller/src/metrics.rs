//! The controller's Prometheus registry. Each subsystem owns its families
//! and registers them under its own prefix: the identity service's in
//! [`crate::ca::metrics`], discovery's in [`crate::discovery::metrics`].

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::ca::metrics::IdentityMetrics;
use crate::discovery::metrics::DiscoveryMetrics;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub identity: Arc<IdentityMetrics>,
    pub discovery: Arc<DiscoveryMetrics>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let identity = IdentityMetrics::register(&mut registry);
        let discovery = DiscoveryMetrics::register(&mut registry);
        registry.register_collector(Box::new(weft_api::process::ProcessCollector));
        Arc::new(Metrics {
            registry,
            identity,
            discovery,
        })
    }

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

    /// The exported names are a contract with dashboards, alerts and the
    /// README's table: moving a family between subsystems must not rename it.
    #[test]
    fn exports_the_documented_families() {
        let metrics = Metrics::new();
        // Families with labels show once they have a series.
        let discovery = &metrics.discovery;
        discovery.set_objects(crate::discovery::Kind::Pod, 1);
        discovery.event(
            crate::discovery::Kind::Pod,
            crate::discovery::metrics::Action::Apply,
        );
        discovery.invalid_config("trafficsplit", "no backends");
        discovery.route_status(
            crate::discovery::Kind::HttpRoute,
            crate::discovery::metrics::StatusWrite::Written,
        );
        let backends = [("web-v1".to_string(), 1)];
        discovery.set_split_weights(std::iter::once(("ns", "split", "web", &backends[..])));
        metrics
            .identity
            .set_issuer(b"an issuer", std::time::SystemTime::UNIX_EPOCH);
        let text = metrics.encode();
        let mut families: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter(|name| !name.starts_with("process_"))
            .collect();
        families.sort_unstable();
        assert_eq!(
            families,
            [
                "discovery_changes",
                "discovery_connected_proxies",
                "discovery_file_errors",
                "discovery_invalid_config",
                "discovery_objects",
                "discovery_requests_refused",
                "discovery_route_status_writes",
                "discovery_subscriptions",
                "discovery_update_latency_ms",
                "discovery_updates",
                "discovery_wakeups",
                "discovery_watch_events",
                "identity_certificates_issued",
                "identity_certificates_refused",
                "identity_issuer_expiration_timestamp_seconds",
                "identity_issuer_info",
                "identity_issuer_reloads",
                "identity_trust_anchor_expiration_timestamp_seconds",
                "traffic_split_backend_weight",
            ]
        );
        assert!(text.contains("identity_issuer_reloads_total{result=\"failure\"} 0"));
        assert!(
            text.contains("identity_certificates_refused_total{reason=\"identity_mismatch\"} 0")
        );
    }
}
