//! How many connections the proxy holds for its clients: per listener
//! direction, and inbound per client address, so that one client holding
//! thousands of idle or slow connections cannot use up what other clients
//! need. (Requests in flight are bounded in the HTTP stack, with tower's
//! concurrency limit and load shedding: `crate::http::server`.)

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weft_api::slots::{Full, Slot, Slots};

use crate::metrics::limits::{Limit, RefusedLabels};
use crate::metrics::{Direction, Metrics};

/// Open connections of one listener direction.
#[derive(Debug)]
pub struct ConnectionLimits {
    direction: Direction,
    /// Per client only inbound: outbound every connection comes from the
    /// pod's app.
    slots: Arc<Slots>,
    metrics: Arc<Metrics>,
    /// When a refusal was last logged, in ms since `started`.
    last_log_ms: AtomicU64,
    started: Instant,
}

/// One admitted connection; its slot is freed when dropped.
pub type Admitted = Slot;

/// Refusals are logged at most this often; the metric counts them all.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl ConnectionLimits {
    pub fn new(
        direction: Direction,
        max_total: usize,
        max_per_client: Option<usize>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            direction,
            slots: Slots::new(max_total, max_per_client),
            metrics,
            last_log_ms: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Takes a slot for a connection from `client`, or says which limit is
    /// full (counted and, now and then, logged).
    pub fn admit(&self, client: IpAddr) -> Result<Admitted, Limit> {
        self.slots.take(client).map_err(|full| {
            let limit = match full {
                Full::Total => Limit::Proxy,
                Full::Client => Limit::Client,
            };
            self.refused(client, limit);
            limit
        })
    }

    fn refused(&self, client: IpAddr, limit: Limit) {
        let direction = self.direction;
        self.metrics
            .limits
            .connections_refused
            .get_or_create(&RefusedLabels { direction, limit })
            .inc();
        // Offset by one period, so that the first refusal is logged.
        let now = (self.started.elapsed() + LOG_EVERY).as_millis() as u64;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < LOG_EVERY.as_millis() as u64
            || self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (max, what) = match limit {
            Limit::Proxy => (self.slots.max_total(), "WEFT_MAX_CONNECTIONS"),
            Limit::Client => (
                self.slots.max_per_client().unwrap_or(0),
                "WEFT_MAX_CONNECTIONS_PER_CLIENT",
            ),
        };
        tracing::warn!(
            %direction,
            %client,
            limit = limit.as_str(),
            max,
            "refusing connections: {max} are open ({what}); counted in tcp_limit_refused_total"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_limit() {
        let metrics = Metrics::new();
        let limits = ConnectionLimits::new(Direction::Inbound, 3, Some(2), metrics.clone());
        let greedy: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let _held = [limits.admit(greedy).unwrap(), limits.admit(greedy).unwrap()];
        assert_eq!(limits.admit(greedy).unwrap_err(), Limit::Client);
        let _third = limits.admit(other).unwrap();
        assert_eq!(limits.admit(other).unwrap_err(), Limit::Proxy);
        let refused = |limit| {
            metrics
                .limits
                .connections_refused
                .get_or_create(&RefusedLabels {
                    direction: Direction::Inbound,
                    limit,
                })
                .get()
        };
        assert_eq!((refused(Limit::Client), refused(Limit::Proxy)), (1, 1));
    }
}
