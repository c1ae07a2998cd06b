//! How many connections the proxy holds for its clients: per listener
//! direction, and inbound per client address, so that one client holding
//! thousands of idle or slow connections cannot use up what other clients
//! need. (Requests in flight are bounded in the HTTP stack, with tower's
//! concurrency limit and load shedding: `crate::http::server`.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::limits::{Limit, RefusedLabels};
use crate::metrics::{Direction, Metrics};

/// Open connections of one listener direction.
#[derive(Debug)]
pub struct ConnectionLimits {
    direction: Direction,
    max_total: usize,
    /// `None` outbound: every connection there comes from the pod's app.
    max_per_client: Option<usize>,
    open: Mutex<Open>,
    metrics: Arc<Metrics>,
    /// When a refusal was last logged, in ms since `started`.
    last_log_ms: AtomicU64,
    started: Instant,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// One admitted connection; its slot is freed when dropped.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    client: IpAddr,
}

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
            max_total,
            max_per_client,
            open: Mutex::default(),
            metrics,
            last_log_ms: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Takes a slot for a connection from `client`, or says which limit is
    /// full (counted and, now and then, logged).
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admitted, Limit> {
        let refused = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let from_client = open.by_client.get(&client).copied().unwrap_or(0);
            if open.total >= self.max_total {
                Some(Limit::Proxy)
            } else if self.max_per_client.is_some_and(|max| from_client >= max) {
                Some(Limit::Client)
            } else {
                open.total += 1;
                if self.max_per_client.is_some() {
                    *open.by_client.entry(client).or_default() += 1;
                }
                None
            }
        };
        match refused {
            None => Ok(Admitted {
                limits: self.clone(),
                client,
            }),
            Some(limit) => {
                self.refused(client, limit);
                Err(limit)
            }
        }
    }

    fn refused(&self, client: IpAddr, limit: Limit) {
        let direction = self.direction;
        self.metrics
            .limits
            .connections_refused
            .get_or_create(&RefusedLabels { direction, limit })
            .inc();
        let now = self.started.elapsed().as_millis() as u64 + LOG_EVERY.as_millis() as u64;
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
            Limit::Proxy => (self.max_total, "WEFT_MAX_CONNECTIONS"),
            Limit::Client => (
                self.max_per_client.unwrap_or(0),
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

    fn release(&self, client: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if self.max_per_client.is_some()
            && let Some(n) = open.by_client.get_mut(&client)
        {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&client);
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.release(self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_take_every_slot() {
        let metrics = Metrics::new();
        let limits = ConnectionLimits::new(Direction::Inbound, 3, Some(2), metrics.clone());
        let greedy: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let first = limits.admit(greedy).unwrap();
        let _second = limits.admit(greedy).unwrap();
        assert_eq!(limits.admit(greedy).unwrap_err(), Limit::Client);
        let _third = limits.admit(other).unwrap();
        assert_eq!(limits.admit(other).unwrap_err(), Limit::Proxy);
        drop(first);
        assert!(limits.admit(greedy).is_ok());
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

    #[test]
    fn slots_come_back_and_no_client_is_remembered() {
        let limits = ConnectionLimits::new(Direction::Outbound, 2, None, Metrics::new());
        let app: IpAddr = [127, 0, 0, 1].into();
        for _ in 0..10 {
            let a = limits.admit(app).unwrap();
            let b = limits.admit(app).unwrap();
            assert!(limits.admit(app).is_err());
            drop((a, b));
        }
        let open = limits.open.lock().unwrap();
        assert_eq!(open.total, 0);
        assert!(open.by_client.is_empty());
    }
}
