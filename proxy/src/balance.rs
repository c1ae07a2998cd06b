//! Load balancing state: per-endpoint latency and load (peak-EWMA), the
//! circuit breaker (failure accrual with ejection), and the retry budget.
//!
//! Endpoint state outlives discovery updates: an endpoint that stays in
//! the set keeps its latency estimate and failure count, so a weight change
//! or a new pod elsewhere does not reset what the proxy has learnt.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::tcp::Target;

/// How fast the latency estimate forgets: an endpoint that was slow and is
/// no longer picked drifts back to zero cost over a few of these, so it is
/// tried again.
const DECAY: Duration = Duration::from_secs(10);
/// Cost of an endpoint with requests in flight but no latency measured yet:
/// high, so a new or recovering endpoint is not flooded before it answers.
const PENDING_PENALTY_MS: f64 = 1_000.0;
/// Ejection backoff: first ejection lasts about this long, doubling (with
/// jitter) for each ejection in a row, up to `MAX_EJECTION`.
const BASE_EJECTION: Duration = Duration::from_secs(1);
const MAX_EJECTION: Duration = Duration::from_secs(60);

/// One endpoint as the balancer sees it.
#[derive(Debug)]
pub struct EndpointState {
    pub target: Target,
    /// Requests (or connections) in flight to it.
    pending: AtomicUsize,
    ewma: Mutex<PeakEwma>,
    breaker: Mutex<Breaker>,
}

#[derive(Debug)]
struct PeakEwma {
    cost_ms: f64,
    stamp: Instant,
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    /// Ejected until then.
    ejected_until: Option<Instant>,
    /// Ejections in a row; the next backoff doubles with each.
    ejections: u32,
}

/// What a failure or success did to the breaker, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerEvent {
    None,
    /// Taken out of the balancer.
    Ejected(Duration),
    /// Back after probation.
    Recovered,
}

impl EndpointState {
    pub fn new(target: Target) -> Self {
        EndpointState {
            target,
            pending: AtomicUsize::new(0),
            ewma: Mutex::new(PeakEwma {
                cost_ms: 0.0,
                stamp: Instant::now(),
            }),
            breaker: Mutex::default(),
        }
    }

    /// Load: decayed peak latency times requests in flight (plus one).
    fn load(&self, now: Instant) -> f64 {
        let pending = self.pending.load(Ordering::Relaxed) as f64;
        let ewma = self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        let cost = ewma.decayed(now);
        if cost == 0.0 && pending > 0.0 {
            return PENDING_PENALTY_MS + pending;
        }
        cost * (pending + 1.0)
    }

    /// Marks a request in flight until the guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Folds one latency sample into the estimate.
    pub fn observe(&self, rtt: Duration) {
        let now = Instant::now();
        let sample = rtt.as_secs_f64() * 1000.0;
        let mut ewma = self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        let decayed = ewma.decayed(now);
        // Peak: a slower sample takes over at once; faster ones only pull
        // the estimate down gradually.
        ewma.cost_ms = if sample > decayed {
            sample
        } else {
            let w = (-(now - ewma.stamp).as_secs_f64() / DECAY.as_secs_f64()).exp();
            decayed * w + sample * (1.0 - w)
        };
        ewma.stamp = now;
    }

    pub fn is_available(&self, now: Instant) -> bool {
        let breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        breaker.ejected_until.is_none_or(|until| now >= until)
    }

    /// Records a failure; ejects after `accrual` in a row (0: never). An
    /// endpoint on probation (back from an ejection, no success since) is
    /// ejected again at its first failure, for twice as long.
    pub fn failure(&self, accrual: u32) -> BreakerEvent {
        if accrual == 0 {
            return BreakerEvent::None;
        }
        let now = Instant::now();
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        if b.ejected_until.is_some_and(|until| now < until) {
            // A request that started before the ejection.
            return BreakerEvent::None;
        }
        b.consecutive_failures += 1;
        let on_probation = b.ejections > 0;
        if b.consecutive_failures < accrual && !on_probation {
            return BreakerEvent::None;
        }
        let backoff = BASE_EJECTION
            .saturating_mul(1 << b.ejections.min(10))
            .min(MAX_EJECTION);
        let backoff = backoff.mul_f64(rand::rng().random_range(0.5..1.5));
        b.ejected_until = Some(now + backoff);
        b.ejections += 1;
        b.consecutive_failures = 0;
        BreakerEvent::Ejected(backoff)
    }

    pub fn success(&self) -> BreakerEvent {
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        b.consecutive_failures = 0;
        if b.ejections > 0 && b.ejected_until.is_none_or(|until| Instant::now() >= until) {
            b.ejections = 0;
            b.ejected_until = None;
            return BreakerEvent::Recovered;
        }
        BreakerEvent::None
    }
}

impl PeakEwma {
    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.cost_ms * (-elapsed / DECAY.as_secs_f64()).exp()
    }
}

/// A request in flight; dropping it ends it.
#[derive(Debug)]
pub struct InFlight<'a>(&'a EndpointState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Power of two choices: of two random available endpoints, the one with
/// the lower load. `avoid` (the endpoint that just failed a request about to
/// be retried) is skipped while there is any other. When every endpoint is
/// ejected, ejections are ignored: some traffic beats none.
pub fn pick<'a, E: AsRef<EndpointState>>(
    endpoints: &'a [E],
    avoid: Option<&EndpointState>,
) -> Option<&'a E> {
    let now = Instant::now();
    let not_avoided = |e: &&E| avoid.is_none_or(|a| !std::ptr::eq(e.as_ref(), a));
    let mut candidates: Vec<&E> = endpoints
        .iter()
        .filter(not_avoided)
        .filter(|e| e.as_ref().is_available(now))
        .collect();
    if candidates.is_empty() {
        candidates = endpoints.iter().filter(not_avoided).collect();
    }
    if candidates.is_empty() {
        candidates = endpoints.iter().collect();
    }
    let mut rng = rand::rng();
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (ea, eb) = (candidates[a], candidates[b]);
            Some(if ea.as_ref().load(now) <= eb.as_ref().load(now) {
                ea
            } else {
                eb
            })
        }
    }
}

/// Picks an index with probability proportional to its weight; `None` if
/// all weights are zero.
pub fn weighted_index(weights: impl Iterator<Item = u64> + Clone) -> Option<usize> {
    let total: u64 = weights.clone().sum();
    if total == 0 {
        return None;
    }
    let mut x = rand::rng().random_range(0..total);
    for (i, w) in weights.enumerate() {
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    None
}

/// Caps retries at a share of requests over a sliding window, plus a
/// small floor so that a quiet service can still retry. Retries can then
/// add at most `ratio` to the load a failing backend sees, never multiply
/// it.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: u32,
    slots: Mutex<Slots>,
}

/// Requests and retries per second, for the last `SLOTS` seconds.
const SLOTS: usize = 10;

#[derive(Debug)]
struct Slots {
    epoch: Instant,
    /// `(second since epoch, requests, retries)`.
    slots: [(u64, u64, u64); SLOTS],
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: u32) -> Self {
        RetryBudget {
            ratio,
            min_per_sec,
            slots: Mutex::new(Slots {
                epoch: Instant::now(),
                slots: [(u64::MAX, 0, 0); SLOTS],
            }),
        }
    }

    /// Runs `f` on this second's slot with the window's totals (this
    /// second included).
    fn with_slot<T>(&self, f: impl FnOnce(&mut (u64, u64, u64), u64, u64) -> T) -> T {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let second = s.epoch.elapsed().as_secs();
        let index = (second % SLOTS as u64) as usize;
        if s.slots[index].0 != second {
            s.slots[index] = (second, 0, 0);
        }
        let (mut requests, mut retries) = (0, 0);
        for slot in &s.slots {
            if slot.0 != u64::MAX && second - slot.0 < SLOTS as u64 {
                requests += slot.1;
                retries += slot.2;
            }
        }
        f(&mut s.slots[index], requests, retries)
    }

    /// Counts an original request.
    pub fn deposit(&self) {
        self.with_slot(|slot, _, _| slot.1 += 1);
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_withdraw(&self) -> bool {
        let (ratio, floor) = (self.ratio, self.min_per_sec as f64 * SLOTS as f64);
        self.with_slot(|slot, requests, retries| {
            let allowed = ratio * requests as f64 + floor;
            if ((retries + 1) as f64) <= allowed {
                slot.2 += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests;
