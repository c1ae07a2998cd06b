//! The injector's Prometheus metrics. Every label takes a value from a
//! fixed set: no pod or namespace names.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::review::Outcome;
use crate::settings::SidecarMode;

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub outcome: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub admissions: Family<AdmissionLabels, Counter>,
    pub bad_requests: Counter,
    pub connections_refused: Counter,
    pub latency: Histogram,
    pub cert_reloads: Family<ResultLabels, Counter>,
    pub cert_expiry: Gauge,
    pub sidecar_mode: Family<ModeLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let m = Metrics {
            admissions: Family::default(),
            bad_requests: Counter::default(),
            connections_refused: Counter::default(),
            latency: Histogram::new([0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 100.0]),
            cert_reloads: Family::default(),
            cert_expiry: Gauge::default(),
            sidecar_mode: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "injector_admissions",
            "Pod admission reviews answered, by outcome (injected, skipped, denied, ignored) and reason",
            m.admissions.clone(),
        );
        registry.register(
            "injector_bad_requests",
            "Requests refused with 400 and the like: not an AdmissionReview the webhook can answer",
            m.bad_requests.clone(),
        );
        registry.register(
            "injector_connections_refused",
            "Connections closed on accept: 1024 were open, or 128 from the same address",
            m.connections_refused.clone(),
        );
        registry.register(
            "injector_review_duration_ms",
            "Time to answer one admission review, in milliseconds",
            m.latency.clone(),
        );
        registry.register(
            "injector_certificate_reloads",
            "Serving certificate and trust anchor reloads after their files changed, by result",
            m.cert_reloads.clone(),
        );
        registry.register(
            "injector_certificate_expiration_timestamp_seconds",
            "When the serving certificate in use expires (Unix time)",
            m.cert_expiry.clone(),
        );
        registry.register(
            "injector_sidecar_mode",
            "1 for the sidecar mode pods are injected with now (native or classic)",
            m.sidecar_mode.clone(),
        );
        registry.register_collector(Box::new(weft_api::process::ProcessCollector));
        Arc::new(Metrics { registry, ..m })
    }

    pub fn admission(&self, outcome: Outcome, elapsed: std::time::Duration) {
        let (outcome, reason) = outcome.labels();
        self.admissions
            .get_or_create(&AdmissionLabels { outcome, reason })
            .inc();
        self.latency.observe(elapsed.as_secs_f64() * 1000.0);
    }

    /// Counts a reload of the certificate or trust anchor files.
    pub fn cert_reload(&self, result: &'static str) {
        self.cert_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn set_mode(&self, mode: SidecarMode) {
        for m in [SidecarMode::Native, SidecarMode::Classic] {
            self.sidecar_mode
                .get_or_create(&ModeLabels { mode: m.as_str() })
                .set(i64::from(m == mode));
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}
