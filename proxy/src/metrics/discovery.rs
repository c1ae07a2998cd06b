//! Discovery client metrics: first lookups, updates and reconnects.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::label_values;

label_values! {
    /// How the first lookup of a destination ended.
    pub enum Lookup {
        Known => "known",
        Unknown => "unknown",
        /// No answer within the lookup timeout; routed as unknown.
        Timeout => "timeout",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LookupLabels {
    pub result: Lookup,
}

#[derive(Debug)]
pub struct DiscoveryMetrics {
    pub lookups: Family<LookupLabels, Counter>,
    pub updates: Counter,
    pub reconnects: Counter,
}

impl DiscoveryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = DiscoveryMetrics {
            lookups: Family::default(),
            updates: Counter::default(),
            reconnects: Counter::default(),
        };
        registry.register(
            "destination_lookups",
            "First lookups of a destination in discovery, by result (known, unknown, timeout)",
            m.lookups.clone(),
        );
        registry.register(
            "destination_updates",
            "Destination updates received from the controller",
            m.updates.clone(),
        );
        registry.register(
            "destination_reconnects",
            "Discovery streams lost and retried (the last known state keeps serving)",
            m.reconnects.clone(),
        );
        for &result in Lookup::ALL {
            let _ = m.lookups.get_or_create(&LookupLabels { result });
        }
        m
    }

    pub fn looked_up(&self, result: Lookup) {
        self.lookups.get_or_create(&LookupLabels { result }).inc();
    }
}
