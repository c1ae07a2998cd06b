//! Policy metrics: connections NetworkPolicy refused and requests (or
//! connections) mesh authorization refused (or, in audit mode, would
//! have), and whether the pod's policy is known.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Direction, label_values};

label_values! {
    /// Whether a denial was enforced or only audited.
    pub enum Enforcement {
        Enforce => "enforce",
        Audit => "audit",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DenialLabels {
    pub direction: Direction,
    /// The policies that isolate the pod in that direction, joined by `,`.
    pub policy: Arc<str>,
    /// `not_allowed`, `spoof` or `policy_unknown`.
    pub reason: &'static str,
    pub mode: Enforcement,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthorizationLabels {
    /// The policies that decided, joined by `,`, or `default:<value>`.
    pub policy: Arc<str>,
    /// `deny_rule`, `not_authorized` or `default`.
    pub reason: &'static str,
    /// `true` for mesh mTLS clients.
    pub tls: bool,
    pub mode: Enforcement,
}

#[derive(Debug)]
pub struct PolicyMetrics {
    pub denied: Family<DenialLabels, Counter>,
    pub authorization_denied: Family<AuthorizationLabels, Counter>,
    /// 1 once the pod's policy arrived (or when none is enforced).
    pub known: Gauge,
    pub updates: Counter,
}

impl PolicyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = PolicyMetrics {
            denied: Family::default(),
            authorization_denied: Family::default(),
            known: Gauge::default(),
            updates: Counter::default(),
        };
        registry.register(
            "policy_denied",
            "Connections NetworkPolicy refused (mode=audit: would have refused), by \
             direction, isolating policies and reason",
            m.denied.clone(),
        );
        registry.register(
            "authorization_denied",
            "Inbound requests (or non-HTTP connections) mesh authorization refused \
             (mode=audit: would have refused), by deciding policy, reason and whether the \
             client was meshed",
            m.authorization_denied.clone(),
        );
        registry.register(
            "policy_known",
            "1 once the pod's NetworkPolicy is known; until then an enforcing proxy refuses \
             every connection",
            m.known.clone(),
        );
        registry.register(
            "policy_updates",
            "Policy updates received from the controller",
            m.updates.clone(),
        );
        m
    }
}
