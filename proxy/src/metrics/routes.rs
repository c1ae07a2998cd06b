//! Per-route resilience metrics: retries and their budget, shedding, and
//! the breaker's transitions. Handles are resolved once per route (see
//! `RetryRules` in discovery), not per request.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::label_values;

label_values! {
    /// A breaker transition.
    pub enum BreakerState {
        /// Ejected after consecutive failures.
        Open => "open",
        /// Back in the balancer.
        Closed => "closed",
    }
}

/// A route: the canonical authority of the service it serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub authority: Arc<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BreakerLabels {
    pub authority: Arc<String>,
    pub state: BreakerState,
}

#[derive(Debug)]
pub struct RouteMetrics {
    pub retries: Family<RouteLabels, Counter>,
    pub retry_budget_exhausted: Family<RouteLabels, Counter>,
    pub requests_shed: Family<RouteLabels, Counter>,
    pub breaker_transitions: Family<BreakerLabels, Counter>,
}

impl RouteMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = RouteMetrics {
            retries: Family::default(),
            retry_budget_exhausted: Family::default(),
            requests_shed: Family::default(),
            breaker_transitions: Family::default(),
        };
        registry.register(
            "retries",
            "HTTP requests sent again after a retryable failure",
            m.retries.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retryable failures not retried because the retry budget was spent",
            m.retry_budget_exhausted.clone(),
        );
        registry.register(
            "requests_shed",
            "HTTP requests answered 503 at once because every endpoint had \
             balancer.weft.io/max-in-flight requests in flight",
            m.requests_shed.clone(),
        );
        registry.register(
            "circuit_breaker_transitions",
            "Endpoints ejected (open) after consecutive failures, or readmitted (closed)",
            m.breaker_transitions.clone(),
        );
        m
    }

    /// Starts a service's route metrics at zero, so that "no retries yet"
    /// shows as zero.
    pub fn known(&self, route: &RouteLabels) {
        if route.authority.is_empty() {
            return;
        }
        let _ = self.retries.get_or_create(route);
        let _ = self.retry_budget_exhausted.get_or_create(route);
        let _ = self.requests_shed.get_or_create(route);
        for &state in BreakerState::ALL {
            let _ = self.breaker_counter(route, state);
        }
    }

    /// The counter of a route's breaker transitions to `state`.
    pub fn breaker_counter(&self, route: &RouteLabels, state: BreakerState) -> Counter {
        self.breaker_transitions
            .get_or_create(&BreakerLabels {
                authority: route.authority.clone(),
                state,
            })
            .clone()
    }
}
