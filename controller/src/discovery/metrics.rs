//! Discovery's metrics: the objects it holds and the changes it received,
//! the subscriptions it serves and how fast their updates go out, and the
//! configuration it ignored.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Kind;

weft_api::label_values! {
    /// What a source did to an object.
    pub enum Action {
        Apply => "apply",
        Delete => "delete",
    }
}

weft_api::label_values! {
    /// How writing a route's status went.
    pub enum StatusWrite {
        Written => "written",
        Unchanged => "unchanged",
        Failed => "failed",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StatusLabels {
    pub kind: Kind,
    pub result: StatusWrite,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EventLabels {
    pub kind: Kind,
    pub action: Action,
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

#[derive(Debug)]
pub struct DiscoveryMetrics {
    objects: Family<KindLabels, Gauge>,
    events: Family<EventLabels, Counter>,
    invalid: Family<InvalidLabels, Counter>,
    file_errors: Counter,
    refused: Counter,
    subscriptions: Gauge,
    updates: Counter,
    update_latency: Histogram,
    pub changes: Counter,
    pub wakeups: Counter,
    connected_proxies: Gauge,
    /// Open subscriptions per proxy connection.
    peers: Mutex<HashMap<SocketAddr, usize>>,
    split_weights: Family<SplitLabels, Gauge<f64, AtomicU64>>,
    route_status: Family<StatusLabels, Counter>,
}

impl DiscoveryMetrics {
    /// Registers the families under `discovery_` (and the split weights,
    /// which are named for what users apply, at the root).
    pub fn register(root: &mut Registry) -> Arc<Self> {
        let m = DiscoveryMetrics {
            objects: Family::default(),
            events: Family::default(),
            invalid: Family::default(),
            file_errors: Counter::default(),
            refused: Counter::default(),
            subscriptions: Gauge::default(),
            updates: Counter::default(),
            // Up to 30 s: a controller behind on fan-out must show how far
            // behind, not pile everything into the top bucket.
            update_latency: Histogram::new([
                0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                10000.0, 30000.0,
            ]),
            changes: Counter::default(),
            wakeups: Counter::default(),
            connected_proxies: Gauge::default(),
            peers: Mutex::default(),
            split_weights: Family::default(),
            route_status: Family::default(),
        };
        root.register(
            "traffic_split_backend_weight",
            "Share of a TrafficSplit's traffic configured for each backend (0 to 1)",
            m.split_weights.clone(),
        );
        let registry = root.sub_registry_with_prefix("discovery");
        registry.register(
            "objects",
            "Objects discovery holds, by kind",
            m.objects.clone(),
        );
        registry.register(
            "watch_events",
            "Object changes received from the source, by kind and action",
            m.events.clone(),
        );
        registry.register(
            "invalid_config",
            "Annotations, TrafficSplits, route rules and NetworkPolicy parts ignored because they are invalid, by kind and reason",
            m.invalid.clone(),
        );
        registry.register(
            "route_status_writes",
            "Route status checks against the API server, by route kind and result (written, unchanged, failed)",
            m.route_status.clone(),
        );
        registry.register(
            "file_errors",
            "Discovery files that could not be read or parsed (their previous content stays)",
            m.file_errors.clone(),
        );
        registry.register(
            "requests_refused",
            "Destination subscriptions refused for a malformed authority",
            m.refused.clone(),
        );
        registry.register(
            "subscriptions",
            "Destination subscriptions open now (proxies connected, times destinations)",
            m.subscriptions.clone(),
        );
        registry.register(
            "updates",
            "Destination updates pushed to proxies",
            m.updates.clone(),
        );
        registry.register(
            "update_latency_ms",
            "Time from the first change a subscription had not answered to its update being handed to the proxy's stream",
            m.update_latency.clone(),
        );
        registry.register(
            "changes",
            "Changes to the objects discovery serves",
            m.changes.clone(),
        );
        registry.register(
            "wakeups",
            "Subscriptions woken by changes (only those whose answer a change can alter)",
            m.wakeups.clone(),
        );
        registry.register(
            "connected_proxies",
            "Proxies with at least one destination subscription open",
            m.connected_proxies.clone(),
        );
        Arc::new(m)
    }

    pub fn set_objects(&self, kind: Kind, n: usize) {
        self.objects
            .get_or_create(&KindLabels { kind })
            .set(n as i64);
    }

    pub fn event(&self, kind: Kind, action: Action) {
        self.events
            .get_or_create(&EventLabels { kind, action })
            .inc();
    }

    pub fn invalid_config(&self, kind: &'static str, reason: &str) {
        self.invalid
            .get_or_create(&InvalidLabels {
                kind,
                reason: reason.to_string(),
            })
            .inc();
    }

    /// How many problems of `kind` and `reason` were reported.
    #[cfg(test)]
    pub fn invalid_count(&self, kind: &'static str, reason: &str) -> f64 {
        self.invalid
            .get_or_create(&InvalidLabels {
                kind,
                reason: reason.to_string(),
            })
            .get() as f64
    }

    pub fn route_status(&self, kind: Kind, result: StatusWrite) {
        self.route_status
            .get_or_create(&StatusLabels { kind, result })
            .inc();
    }

    pub fn file_error(&self) {
        self.file_errors.inc();
    }

    pub fn refused(&self) {
        self.refused.inc();
    }

    /// Counts a subscription (and its proxy as connected) until the guard
    /// is dropped.
    pub fn subscription(self: &Arc<Self>, peer: Option<SocketAddr>) -> SubscriptionGuard {
        self.subscriptions.inc();
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

    /// An update handed to a proxy's stream; `latency` from the first change
    /// it answers, when one woke it (the first answer has none).
    pub fn update(&self, latency: Option<std::time::Duration>) {
        self.updates.inc();
        if let Some(latency) = latency {
            self.update_latency.observe(latency.as_secs_f64() * 1000.0);
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
}

/// Counts a subscription, and its proxy as connected, while it lives.
#[derive(Debug)]
pub struct SubscriptionGuard {
    metrics: Arc<DiscoveryMetrics>,
    peer: Option<SocketAddr>,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.metrics.subscriptions.dec();
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
