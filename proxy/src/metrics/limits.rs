//! What the proxy's limits turned away: connections over a listener's or
//! one client's share, and requests over the in-flight limit.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{Direction, DirectionLabels, label_values};

label_values! {
    /// Which limit a connection met.
    pub enum Limit {
        /// The listener's connections, all clients together.
        Proxy => "proxy",
        /// One client address's connections.
        Client => "client",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedLabels {
    pub direction: Direction,
    pub limit: Limit,
}

#[derive(Debug)]
pub struct LimitMetrics {
    pub connections_refused: Family<RefusedLabels, Counter>,
    pub requests_shed: Family<DirectionLabels, Counter>,
}

impl LimitMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = LimitMetrics {
            connections_refused: Family::default(),
            requests_shed: Family::default(),
        };
        registry.register(
            "tcp_limit_refused",
            "Connections closed on accept: the listener's or the client's limit was reached",
            m.connections_refused.clone(),
        );
        registry.register(
            "http_load_shed",
            "Requests answered 503 at once: the direction's requests in flight were at the limit",
            m.requests_shed.clone(),
        );
        // Present from the start, for dashboards and alerts.
        for &direction in Direction::ALL {
            let _ = m
                .requests_shed
                .get_or_create(&DirectionLabels { direction });
            for &limit in Limit::ALL {
                let _ = m
                    .connections_refused
                    .get_or_create(&RefusedLabels { direction, limit });
            }
        }
        m
    }
}
