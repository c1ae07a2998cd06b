//! Which subscriptions a change can concern.
//!
//! Every answer the store gives is computed from a few [`Topic`]s: the
//! Service asked for, the Services a split sends to, and the address an
//! `ip:port` authority names. A subscription records the topics its last
//! answer read; a change names the topics it touched; only subscriptions
//! that share one are woken. A pod changes the topics of the Services
//! whose slices list it (and its addresses), so a pod update wakes the
//! clients of its own Services, not the whole mesh.
//!
//! New kinds fit by naming the topics they touch: a route whose parent is
//! a Service touches that Service's topic; a policy selecting pods touches
//! the topics of the Services those pods back.
//!
//! The rule that keeps this race-free: a subscription records its topics
//! while it still holds the store's read lock for the answer it read, and a
//! writer wakes topics after it released the write lock. A change is
//! therefore either in the answer already, or finds the subscription
//! registered for it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::model::Key;

/// One thing an answer depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// A Service, `(namespace, name)`: its ports and policy, its slices,
    /// the splits naming it as apex, and the pods behind its endpoints.
    Service(Key),
    /// Whatever owns an address: the Service with that cluster IP, or the
    /// pod with that pod IP.
    Address(IpAddr),
}

/// A subscription's wake-up: a stored permit, so a change that lands
/// while the subscriber is busy is not lost, and the time of the first
/// change it has not yet answered.
#[derive(Debug, Default)]
pub struct Wake {
    notify: Notify,
    pending_since: Mutex<Option<Instant>>,
}

impl Wake {
    fn wake(&self, at: Instant) {
        let mut since = self.pending_since.lock().unwrap_or_else(|e| e.into_inner());
        since.get_or_insert(at);
        drop(since);
        self.notify.notify_one();
    }

    /// Waits for a change (returns at once if one came since the last
    /// call).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// When the oldest change not yet answered happened, clearing it:
    /// the propagation time of an update counts from there, not from the
    /// last wake-up.
    pub fn take_pending_since(&self) -> Option<Instant> {
        self.pending_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    /// Each subscription's wake-up and the topics of its last answer.
    subscriptions: HashMap<u64, (Arc<Wake>, Vec<Topic>)>,
    by_topic: HashMap<Topic, HashSet<u64>>,
}

/// The index from topics to the subscriptions that read them.
#[derive(Debug, Default)]
pub struct Interest {
    registry: Mutex<Registry>,
}

/// A registered subscription; dropping it unregisters.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    pub wake: Arc<Wake>,
    interest: Arc<Interest>,
}

impl Interest {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new subscription with no topics yet: only [`Interest::wake_all`]
    /// reaches it until it records what it read.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let wake = Arc::new(Wake::default());
        let mut registry = self.lock();
        registry.next_id += 1;
        let id = registry.next_id;
        registry
            .subscriptions
            .insert(id, (wake.clone(), Vec::new()));
        Subscription {
            id,
            wake,
            interest: self.clone(),
        }
    }

    /// Makes `topics` (sorted, without duplicates) what `subscription`
    /// depends on. Call with the store's read lock held (see the module
    /// documentation).
    pub fn record(&self, subscription: &Subscription, topics: Vec<Topic>) {
        let mut guard = self.lock();
        let registry = &mut *guard;
        let Some((_, current)) = registry.subscriptions.get_mut(&subscription.id) else {
            return;
        };
        if *current == topics {
            return;
        }
        let old = std::mem::replace(current, topics);
        let new = &registry.subscriptions[&subscription.id].1;
        for topic in old.iter().filter(|t| new.binary_search(t).is_err()) {
            if let Some(ids) = registry.by_topic.get_mut(topic) {
                ids.remove(&subscription.id);
                if ids.is_empty() {
                    registry.by_topic.remove(topic);
                }
            }
        }
        for topic in new.iter().filter(|t| old.binary_search(t).is_err()) {
            registry
                .by_topic
                .entry(topic.clone())
                .or_default()
                .insert(subscription.id);
        }
    }

    /// Wakes every subscription that depends on one of `topics`; returns
    /// how many.
    pub fn wake(&self, topics: &HashSet<Topic>, at: Instant) -> usize {
        if topics.is_empty() {
            return 0;
        }
        let wakes: Vec<Arc<Wake>> = {
            let registry = self.lock();
            let ids: HashSet<u64> = topics
                .iter()
                .filter_map(|t| registry.by_topic.get(t))
                .flatten()
                .copied()
                .collect();
            ids.iter()
                .filter_map(|id| registry.subscriptions.get(id))
                .map(|(wake, _)| wake.clone())
                .collect()
        };
        for wake in &wakes {
            wake.wake(at);
        }
        wakes.len()
    }

    /// Wakes every subscription (the first full listing, for one).
    pub fn wake_all(&self, at: Instant) {
        let wakes: Vec<Arc<Wake>> = self
            .lock()
            .subscriptions
            .values()
            .map(|(wake, _)| wake.clone())
            .collect();
        for wake in wakes {
            wake.wake(at);
        }
    }

    /// How many topics are watched, and by how many subscriptions in all
    /// (for tests and metrics).
    pub fn size(&self) -> (usize, usize) {
        let registry = self.lock();
        (registry.by_topic.len(), registry.subscriptions.len())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut guard = self.interest.lock();
        let registry = &mut *guard;
        if let Some((_, topics)) = registry.subscriptions.remove(&self.id) {
            for topic in topics {
                if let Some(ids) = registry.by_topic.get_mut(&topic) {
                    ids.remove(&self.id);
                    if ids.is_empty() {
                        registry.by_topic.remove(&topic);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> Topic {
        Topic::Service(("demo".into(), name.into()))
    }

    fn set(topics: &[Topic]) -> HashSet<Topic> {
        topics.iter().cloned().collect()
    }

    #[tokio::test]
    async fn a_change_wakes_only_the_subscriptions_that_read_its_topic() {
        let interest = Arc::new(Interest::default());
        let web = interest.subscribe();
        let api = interest.subscribe();
        interest.record(&web, vec![service("web"), service("web-v1")]);
        interest.record(&api, vec![service("api")]);
        let now = Instant::now();
        assert_eq!(interest.wake(&set(&[service("web-v1")]), now), 1);
        assert_eq!(web.wake.take_pending_since(), Some(now));
        assert_eq!(api.wake.take_pending_since(), None);
        // The permit was stored: the subscriber sees it without racing.
        web.wake.changed().await;
        assert_eq!(interest.wake(&set(&[service("other")]), now), 0);
    }

    #[test]
    fn pending_since_keeps_the_oldest_unanswered_change() {
        let interest = Arc::new(Interest::default());
        let sub = interest.subscribe();
        interest.record(&sub, vec![service("web")]);
        let first = Instant::now();
        let later = first + std::time::Duration::from_millis(5);
        interest.wake(&set(&[service("web")]), first);
        interest.wake(&set(&[service("web")]), later);
        assert_eq!(sub.wake.take_pending_since(), Some(first));
        assert_eq!(sub.wake.take_pending_since(), None);
    }

    #[test]
    fn recording_moves_a_subscription_between_topics_and_drop_forgets_it() {
        let interest = Arc::new(Interest::default());
        let sub = interest.subscribe();
        interest.record(&sub, vec![service("a"), service("b")]);
        assert_eq!(interest.size(), (2, 1));
        interest.record(&sub, vec![service("b"), service("c")]);
        let now = Instant::now();
        assert_eq!(interest.wake(&set(&[service("a")]), now), 0);
        assert_eq!(interest.wake(&set(&[service("c")]), now), 1);
        drop(sub);
        assert_eq!(interest.size(), (0, 0));
    }

    #[test]
    fn wake_all_reaches_subscriptions_without_topics() {
        let interest = Arc::new(Interest::default());
        let sub = interest.subscribe();
        let now = Instant::now();
        interest.wake_all(now);
        assert_eq!(sub.wake.take_pending_since(), Some(now));
    }
}
