//! The controller's Prometheus metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EventLabels {
    pub kind: &'static str,
    pub action: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct InvalidLabels {
    pub kind: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SplitLabels {
    /// The split's namespace (its apex's and backends'); not `namespace`,
    /// which scrape configurations give the controller pod itself.
    pub dst_namespace: String,
    pub split: String,
    pub apex: String,
    pub backend: String,
}

/// Counts a subscription, and its proxy as connected, while it lives.
#[derive(Debug)]
pub struct SubscriptionGuard {
    metrics: Arc<Metrics>,
    peer: Option<SocketAddr>,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.metrics.discovery_subscriptions.dec();
        if let Some(peer) = self.peer {
            let mut peers = self.metrics.peers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = peers.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    peers.remove(&peer);
                }
            }
            self.metrics.connected_proxies.set(peers.len() as i64);
        }
    }
}

/// Refusals the identity service makes before the token and CSR checks.
pub const REQUEST_REFUSAL_REASONS: [&str; 2] = ["malformed_identity", "identity_mismatch"];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub issued: Counter,
    pub refused: Family<ReasonLabels, Counter>,
    pub issuer_expiry: Gauge,
    pub issuer_reloads: Family<ResultLabels, Counter>,
    pub discovery_objects: Family<KindLabels, Gauge>,
    pub discovery_events: Family<EventLabels, Counter>,
    pub discovery_invalid: Family<InvalidLabels, Counter>,
    pub discovery_file_errors: Counter,
    pub discovery_refused: Counter,
    pub discovery_subscriptions: Gauge,
    pub discovery_updates: Counter,
    pub discovery_update_latency: Histogram,
    pub discovery_changes: Counter,
    pub discovery_wakeups: Counter,
    pub connected_proxies: Gauge,
    /// Open subscriptions per proxy connection.
    peers: Mutex<HashMap<SocketAddr, usize>>,
    pub split_weights: Family<SplitLabels, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let m = Metrics {
            issued: Counter::default(),
            refused: Family::default(),
            issuer_expiry: Gauge::default(),
            issuer_reloads: Family::default(),
            discovery_objects: Family::default(),
            discovery_events: Family::default(),
            discovery_invalid: Family::default(),
            discovery_file_errors: Counter::default(),
            discovery_refused: Counter::default(),
            discovery_subscriptions: Gauge::default(),
            discovery_updates: Counter::default(),
            // Up to 30 s: a controller behind on fan-out must show how far
            // behind, not pile everything into the top bucket.
            discovery_update_latency: Histogram::new([
                0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                10000.0, 30000.0,
            ]),
            discovery_changes: Counter::default(),
            discovery_wakeups: Counter::default(),
            connected_proxies: Gauge::default(),
            peers: Mutex::default(),
            split_weights: Family::default(),
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
        registry.register(
            "discovery_objects",
            "Objects discovery holds, by kind",
            m.discovery_objects.clone(),
        );
        registry.register(
            "discovery_watch_events",
            "Object changes received from the source, by kind and action",
            m.discovery_events.clone(),
        );
        registry.register(
            "discovery_invalid_config",
            "Annotations and TrafficSplits ignored because they are invalid, by reason",
            m.discovery_invalid.clone(),
        );
        registry.register(
            "discovery_file_errors",
            "Discovery files that could not be read or parsed (their previous content stays)",
            m.discovery_file_errors.clone(),
        );
        registry.register(
            "discovery_requests_refused",
            "Destination subscriptions refused for a malformed authority",
            m.discovery_refused.clone(),
        );
        registry.register(
            "discovery_subscriptions",
            "Destination subscriptions open now (proxies connected, times destinations)",
            m.discovery_subscriptions.clone(),
        );
        registry.register(
            "discovery_updates",
            "Destination updates pushed to proxies",
            m.discovery_updates.clone(),
        );
        registry.register(
            "discovery_update_latency_ms",
            "Time from the first change a subscription had not answered to its update being handed to the proxy's stream",
            m.discovery_update_latency.clone(),
        );
        registry.register(
            "discovery_changes",
            "Changes to the objects discovery serves",
            m.discovery_changes.clone(),
        );
        registry.register(
            "discovery_wakeups",
            "Subscriptions woken by changes (only those whose answer a change can alter)",
            m.discovery_wakeups.clone(),
        );
        registry.register(
            "discovery_connected_proxies",
            "Proxies with at least one destination subscription open",
            m.connected_proxies.clone(),
        );
        registry.register(
            "traffic_split_backend_weight",
            "Share of a TrafficSplit's traffic configured for each backend (0 to 1)",
            m.split_weights.clone(),
        );
        registry.register_collector(Box::new(weft_api::process::ProcessCollector));
        // Known label values start at zero, so dashboards show "none yet"
        // rather than "no data".
        for reason in REQUEST_REFUSAL_REASONS {
            let _ = m.refused.get_or_create(&ReasonLabels { reason });
        }
        for result in ["success", "failure"] {
            let _ = m.issuer_reloads.get_or_create(&ResultLabels { result });
        }
        Arc::new(Metrics { registry, ..m })
    }

    /// Starts the refusal reasons another part knows at zero (the CA's and
    /// the token checker's), so that dashboards show "none yet".
    pub fn known_refusals(&self, reasons: &[&'static str]) {
        for &reason in reasons {
            let _ = self.refused.get_or_create(&ReasonLabels { reason });
        }
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

    pub fn set_discovery_objects(&self, kind: &'static str, n: usize) {
        self.discovery_objects
            .get_or_create(&KindLabels { kind })
            .set(n as i64);
    }

    pub fn discovery_event(&self, kind: &'static str, action: &'static str) {
        self.discovery_events
            .get_or_create(&EventLabels { kind, action })
            .inc();
    }

    pub fn invalid_config(&self, kind: &'static str, reason: &str) {
        self.discovery_invalid
            .get_or_create(&InvalidLabels {
                kind,
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn discovery_file_error(&self) {
        self.discovery_file_errors.inc();
    }

    pub fn discovery_refused(&self) {
        self.discovery_refused.inc();
    }

    pub fn discovery_subscription(self: &Arc<Self>, peer: Option<SocketAddr>) -> SubscriptionGuard {
        self.discovery_subscriptions.inc();
        if let Some(peer) = peer {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            *peers.entry(peer).or_default() += 1;
            self.connected_proxies.set(peers.len() as i64);
        }
        SubscriptionGuard {
            metrics: self.clone(),
            peer,
        }
    }

    /// Replaces the exported split weights with `splits`:
    /// `(namespace, split, apex, [(backend, weight)])`.
    pub fn set_split_weights<'a>(
        &self,
        splits: impl Iterator<Item = (&'a str, &'a str, &'a str, &'a [(String, u64)])>,
    ) {
        self.split_weights.clear();
        for (namespace, split, apex, backends) in splits {
            let total: u64 = backends.iter().map(|(_, w)| w).sum();
            for (backend, weight) in backends {
                let share = if total == 0 {
                    0.0
                } else {
                    *weight as f64 / total as f64
                };
                self.split_weights
                    .get_or_create(&SplitLabels {
                        dst_namespace: namespace.to_string(),
                        split: split.to_string(),
                        apex: apex.to_string(),
                        backend: backend.clone(),
                    })
                    .set(share);
            }
        }
    }

    pub fn discovery_update(&self, latency: std::time::Duration) {
        self.discovery_updates.inc();
        self.discovery_update_latency
            .observe(latency.as_secs_f64() * 1000.0);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}
