//! Discovery: what proxies need to route to a destination.
//!
//! Sources (files, or the Kubernetes API) keep a [`Store`] of Services,
//! EndpointSlices, Pods and TrafficSplits up to date. A proxy subscribes to
//! an authority (`ip:port` or `host:port`). A change wakes only the
//! subscriptions whose answer it can alter (see [`interest`]); each woken
//! one recomputes its destination and pushes it when it differs from what
//! the proxy last got. Updates are whole snapshots: a proxy that
//! reconnects, or missed one, is never left with half a picture.

pub mod authz;
pub mod file;
pub mod interest;
pub mod kubernetes;
pub mod metrics;
pub mod model;
pub mod netpol;
mod objects;
pub mod policy;
pub mod resolve;
pub mod route;
pub mod service;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use interest::{Interest, Subscription, Topic};
use metrics::{Action, DiscoveryMetrics};
use model::{Invalid, Key};
pub use objects::{Kind, Object, Objects};

/// The topics a change touched.
type Touched = HashSet<Topic>;

/// The objects, and the index of who reads them.
#[derive(Debug)]
pub struct Store {
    objects: RwLock<Objects>,
    interest: Arc<Interest>,
    synced: AtomicBool,
    pub trust_domain: String,
    pub cluster_domain: String,
    metrics: Arc<DiscoveryMetrics>,
    /// Bumped when Services or routes change, or discovery syncs: what a
    /// route's status depends on.
    route_inputs: tokio::sync::watch::Sender<u64>,
    policy_inputs: tokio::sync::watch::Sender<u64>,
    authorization_defaults: std::sync::OnceLock<authz::resolve::Defaults>,
}

impl Store {
    pub fn new(
        trust_domain: &str,
        cluster_domain: &str,
        metrics: Arc<DiscoveryMetrics>,
    ) -> Arc<Self> {
        Arc::new(Store {
            objects: RwLock::default(),
            interest: Arc::default(),
            synced: AtomicBool::new(false),
            trust_domain: trust_domain.to_string(),
            cluster_domain: cluster_domain.trim_matches('.').to_string(),
            metrics,
            route_inputs: tokio::sync::watch::Sender::new(0),
            policy_inputs: tokio::sync::watch::Sender::new(0),
            authorization_defaults: std::sync::OnceLock::new(),
        })
    }

    /// A subscription, woken by the changes that concern what it last
    /// resolved (see [`Store::resolve_for`]) and by the first full
    /// listing.
    pub fn subscribe(&self) -> Subscription {
        self.interest.subscribe()
    }

    /// How many topics are watched, and by how many subscriptions.
    pub fn interest_size(&self) -> (usize, usize) {
        self.interest.size()
    }

    /// Whether the source has loaded everything once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub(crate) fn metrics(&self) -> &DiscoveryMetrics {
        &self.metrics
    }

    /// Changes whenever what route statuses depend on may have changed.
    pub fn route_inputs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.route_inputs.subscribe()
    }

    /// Bumped when anything a pod's policy depends on changes: pods,
    /// namespaces, policies, Services (authorization targets), and the
    /// first full listing.
    pub fn policy_inputs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.policy_inputs.subscribe()
    }

    /// The resolved NetworkPolicy and authorization of pod `key`.
    pub fn policy_for(&self, key: &Key) -> weft_api::proto::policy::PolicyUpdate {
        let defaults = self
            .authorization_defaults
            .get()
            .cloned()
            .unwrap_or_default();
        netpol::resolve::policy_for(&self.read(), &self.trust_domain, &defaults, key)
    }

    /// The authorization default and cluster networks the controller was
    /// started with; set once, before serving.
    pub fn set_authorization_defaults(&self, defaults: authz::resolve::Defaults) {
        if self.authorization_defaults.set(defaults).is_err() {
            tracing::warn!("authorization defaults already set; keeping the first");
        }
    }

    fn policy_inputs_changed(&self, kinds: &[Kind]) {
        if kinds.iter().any(|k| {
            matches!(
                k,
                Kind::Pod
                    | Kind::Namespace
                    | Kind::NetworkPolicy
                    | Kind::AuthorizationPolicy
                    | Kind::Service
            )
        }) {
            self.policy_inputs.send_modify(|v| *v += 1);
        }
    }

    fn route_inputs_changed(&self, kinds: &[Kind]) {
        if kinds
            .iter()
            .any(|k| matches!(k, Kind::Service | Kind::HttpRoute | Kind::GrpcRoute))
        {
            self.route_inputs.send_modify(|v| *v += 1);
        }
    }

    pub fn mark_synced(&self) {
        if !self.synced.swap(true, Ordering::AcqRel) {
            tracing::info!("discovery synced");
            self.route_inputs.send_modify(|v| *v += 1);
            self.policy_inputs.send_modify(|v| *v += 1);
            self.metrics.changes.inc();
            self.interest.wake_all(Instant::now());
        }
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, Objects> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Objects> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces one object.
    pub fn apply(&self, object: Object) {
        let kind = object.kind();
        let key = object.key().clone();
        let pod_invalid = match &object {
            Object::Pod(_, _, invalid) => invalid.clone(),
            _ => Vec::new(),
        };
        let mut touched = Touched::new();
        {
            let mut objects = self.write();
            if !objects.holds(&object) {
                let new_problems = objects.upsert(object, &mut touched);
                self.report(kind, &key, &new_problems);
                self.report(kind, &key, &pod_invalid);
                self.metrics.set_objects(kind, objects.count(kind));
            }
        }
        self.metrics.event(kind, Action::Apply);
        self.changed(&touched, kind == Kind::Split);
        self.route_inputs_changed(&[kind]);
        self.policy_inputs_changed(&[kind]);
    }

    /// Removes one object.
    pub fn delete(&self, kind: Kind, key: &Key) {
        let mut touched = Touched::new();
        {
            let mut objects = self.write();
            objects.remove(kind, key, &mut touched);
            self.metrics.set_objects(kind, objects.count(kind));
        }
        self.metrics.event(kind, Action::Delete);
        self.changed(&touched, kind == Kind::Split);
        self.route_inputs_changed(&[kind]);
        self.policy_inputs_changed(&[kind]);
    }

    /// Makes `objects` the whole set of `kinds`: what is missing from it is
    /// removed, what changed is replaced, and each concerned subscription
    /// wakes once.
    pub fn replace(&self, kinds: &[Kind], objects: Vec<Object>) {
        let mut touched = Touched::new();
        {
            let mut current = self.write();
            let wanted: HashSet<(Kind, Key)> = objects
                .iter()
                .map(|o| (o.kind(), o.key().clone()))
                .collect();
            for kind in kinds {
                for key in current.keys(*kind) {
                    if !wanted.contains(&(*kind, key.clone()))
                        && current.remove(*kind, &key, &mut touched)
                    {
                        self.metrics.event(*kind, Action::Delete);
                    }
                }
            }
            for object in objects {
                let (kind, key) = (object.kind(), object.key().clone());
                if current.holds(&object) {
                    continue;
                }
                if let Object::Pod(_, _, invalid) = &object {
                    self.report(kind, &key, invalid);
                }
                let problems = current.upsert(object, &mut touched);
                self.report(kind, &key, &problems);
                self.metrics.event(kind, Action::Apply);
            }
            for kind in kinds {
                self.metrics.set_objects(*kind, current.count(*kind));
            }
        }
        self.changed(&touched, kinds.contains(&Kind::Split));
        self.route_inputs_changed(kinds);
        self.policy_inputs_changed(kinds);
    }

    /// Wakes the subscriptions that read a touched topic; `splits` says
    /// TrafficSplits may have changed, so the exported weights are redone
    /// (pod churn leaves them alone). Called with no lock held (see
    /// [`interest`]).
    fn changed(&self, touched: &Touched, splits: bool) {
        if touched.is_empty() {
            return;
        }
        if splits {
            let objects = self.read();
            self.metrics
                .set_split_weights(objects.splits.iter().map(|((ns, name), split)| {
                    (
                        ns.as_str(),
                        name.as_str(),
                        split.apex.as_str(),
                        split.backends.as_slice(),
                    )
                }));
        }
        self.metrics.changes.inc();
        let woken = self.interest.wake(touched, Instant::now());
        self.metrics.wakeups.inc_by(woken as u64);
    }

    fn report(&self, kind: Kind, key: &Key, problems: &[Invalid]) {
        for problem in problems {
            tracing::warn!(
                object = %format!("{}/{}/{}", kind.as_str(), key.0, key.1),
                problem = %problem.detail,
                "ignoring invalid configuration"
            );
            self.metrics.invalid_config(problem.kind, &problem.reason);
        }
    }
}

#[cfg(test)]
mod tests;
