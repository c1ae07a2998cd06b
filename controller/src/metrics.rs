//! The controller's Prometheus metrics.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub issued: Counter,
    pub refused: Family<ReasonLabels, Counter>,
    pub issuer_expiry: Gauge,
    pub issuer_reloads: Family<ResultLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let m = Metrics {
            issued: Counter::default(),
            refused: Family::default(),
            issuer_expiry: Gauge::default(),
            issuer_reloads: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "identity_certificates_issued",
            "Workload certificates signed",
            m.issued.clone(),
        );
        registry.register(
            "identity_certificates_refused",
            "Certificate requests refused, by reason",
            m.refused.clone(),
        );
        registry.register(
            "identity_issuer_expiration_timestamp_seconds",
            "When the issuer certificate in use expires (Unix time)",
            m.issuer_expiry.clone(),
        );
        registry.register(
            "identity_issuer_reloads",
            "Issuer reloads after its files changed, by result",
            m.issuer_reloads.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn issuer_reload(&self, result: &'static str) {
        self.issuer_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn set_issuer_expiry(&self, t: SystemTime) {
        let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        self.issuer_expiry.set(secs as i64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}
