//! Discovery: what proxies need to route to a destination.
//!
//! Sources (files, or the Kubernetes API) keep a [`Store`] of Services,
//! EndpointSlices, Pods and TrafficSplits up to date. A proxy subscribes to
//! an authority (`ip:port` or `host:port`); every change to the store wakes
//! its subscription, which recomputes the destination and pushes it when it
//! differs from what the proxy last got. Updates are whole snapshots: a
//! proxy that reconnects, or missed one, is never left with half a picture.

pub mod file;
pub mod kubernetes;
pub mod model;
pub mod policy;
pub mod resolve;
pub mod service;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::watch;

use crate::metrics::Metrics;
use model::{Invalid, Key, PodInfo, ServiceInfo, SliceInfo, SplitInfo};

/// The discovery objects, with the indexes resolution needs.
#[derive(Debug, Default)]
pub struct Objects {
    pub services: HashMap<Key, ServiceInfo>,
    /// Keyed by `(namespace, slice name)`.
    pub slices: HashMap<Key, SliceInfo>,
    pub pods: HashMap<Key, PodInfo>,
    /// Keyed by `(namespace, split name)`.
    pub splits: HashMap<Key, SplitInfo>,
    service_by_ip: HashMap<IpAddr, Key>,
    pod_by_ip: HashMap<IpAddr, Key>,
    /// `(namespace, service)` → its slices' names.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// `(namespace, apex service)` → names of splits naming it.
    splits_of: HashMap<Key, BTreeSet<String>>,
}

/// One object from a source.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(Key, ServiceInfo),
    Slice(Key, SliceInfo),
    Pod(Key, PodInfo, Vec<Invalid>),
    Split(Key, SplitInfo),
}

/// The kinds a source keeps, for bulk replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Service,
    Slice,
    Pod,
    Split,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Slice => "endpointslice",
            Kind::Pod => "pod",
            Kind::Split => "trafficsplit",
        }
    }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(..) => Kind::Service,
            Object::Slice(..) => Kind::Slice,
            Object::Pod(..) => Kind::Pod,
            Object::Split(..) => Kind::Split,
        }
    }

    pub fn key(&self) -> &Key {
        match self {
            Object::Service(k, _)
            | Object::Slice(k, _)
            | Object::Pod(k, _, _)
            | Object::Split(k, _) => k,
        }
    }
}

impl Objects {
    /// Inserts or replaces an object; returns the configuration problems it
    /// has that its previous version did not (to be reported once).
    fn upsert(&mut self, object: Object) -> Vec<Invalid> {
        let kind = object.kind();
        let key = object.key().clone();
        let before = self.invalid_of(kind, &key);
        self.remove(kind, &key);
        match object {
            Object::Service(key, info) => {
                for ip in &info.cluster_ips {
                    self.service_by_ip.insert(*ip, key.clone());
                }
                self.services.insert(key, info);
            }
            Object::Slice(key, info) => {
                self.slices_of
                    .entry((key.0.clone(), info.service.clone()))
                    .or_default()
                    .insert(key.1.clone());
                self.slices.insert(key, info);
            }
            Object::Pod(key, info, _) => {
                for ip in &info.ips {
                    self.pod_by_ip.insert(*ip, key.clone());
                }
                self.pods.insert(key, info);
            }
            Object::Split(key, info) => {
                self.splits_of
                    .entry((key.0.clone(), info.apex.clone()))
                    .or_default()
                    .insert(key.1.clone());
                self.splits.insert(key, info);
            }
        }
        let mut after = self.invalid_of(kind, &key);
        after.retain(|i| !before.contains(i));
        after
    }

    fn invalid_of(&self, kind: Kind, key: &Key) -> Vec<Invalid> {
        match kind {
            Kind::Service => self
                .services
                .get(key)
                .map(|s| s.invalid.clone())
                .unwrap_or_default(),
            Kind::Split => self
                .splits
                .get(key)
                .and_then(|s| s.invalid.clone())
                .into_iter()
                .collect(),
            // A pod's problems are reported when it arrives; pods are not
            // kept whole.
            Kind::Slice | Kind::Pod => Vec::new(),
        }
    }

    fn remove(&mut self, kind: Kind, key: &Key) -> bool {
        match kind {
            Kind::Service => {
                let Some(old) = self.services.remove(key) else {
                    return false;
                };
                for ip in old.cluster_ips {
                    if self.service_by_ip.get(&ip) == Some(key) {
                        self.service_by_ip.remove(&ip);
                    }
                }
            }
            Kind::Slice => {
                let Some(old) = self.slices.remove(key) else {
                    return false;
                };
                let owner = (key.0.clone(), old.service);
                if let Some(names) = self.slices_of.get_mut(&owner) {
                    names.remove(&key.1);
                    if names.is_empty() {
                        self.slices_of.remove(&owner);
                    }
                }
            }
            Kind::Pod => {
                let Some(old) = self.pods.remove(key) else {
                    return false;
                };
                for ip in old.ips {
                    if self.pod_by_ip.get(&ip) == Some(key) {
                        self.pod_by_ip.remove(&ip);
                        // Another pod may hold the address now (a replaced
                        // pod's IP reused): point the index at it.
                        if let Some((other, _)) =
                            self.pods.iter().find(|(_, p)| p.ips.contains(&ip))
                        {
                            self.pod_by_ip.insert(ip, other.clone());
                        }
                    }
                }
            }
            Kind::Split => {
                let Some(old) = self.splits.remove(key) else {
                    return false;
                };
                let apex = (key.0.clone(), old.apex);
                if let Some(names) = self.splits_of.get_mut(&apex) {
                    names.remove(&key.1);
                    if names.is_empty() {
                        self.splits_of.remove(&apex);
                    }
                }
            }
        }
        true
    }

    fn keys(&self, kind: Kind) -> Vec<Key> {
        match kind {
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::Slice => self.slices.keys().cloned().collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::Split => self.splits.keys().cloned().collect(),
        }
    }

    /// Whether `object` is exactly what is stored already.
    fn holds(&self, object: &Object) -> bool {
        match object {
            Object::Service(k, v) => self.services.get(k) == Some(v),
            Object::Slice(k, v) => self.slices.get(k) == Some(v),
            Object::Pod(k, v, _) => self.pods.get(k) == Some(v),
            Object::Split(k, v) => self.splits.get(k) == Some(v),
        }
    }

    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Service => self.services.len(),
            Kind::Slice => self.slices.len(),
            Kind::Pod => self.pods.len(),
            Kind::Split => self.splits.len(),
        }
    }
}

/// The objects, and a version that wakes subscriptions when they change.
#[derive(Debug)]
pub struct Store {
    objects: RwLock<Objects>,
    /// When the objects last changed.
    version: watch::Sender<Instant>,
    synced: AtomicBool,
    pub trust_domain: String,
    pub cluster_domain: String,
    metrics: Arc<Metrics>,
}

impl Store {
    pub fn new(trust_domain: &str, cluster_domain: &str, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Store {
            objects: RwLock::default(),
            version: watch::Sender::new(Instant::now()),
            synced: AtomicBool::new(false),
            trust_domain: trust_domain.to_string(),
            cluster_domain: cluster_domain.trim_matches('.').to_string(),
            metrics,
        })
    }

    /// Wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<Instant> {
        self.version.subscribe()
    }

    /// Whether the source has loaded everything once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn mark_synced(&self) {
        if !self.synced.swap(true, Ordering::AcqRel) {
            tracing::info!("discovery synced");
            self.bump();
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
        let changed = {
            let mut objects = self.write();
            if objects.holds(&object) {
                false
            } else {
                let new_problems = objects.upsert(object);
                self.report(kind, &key, &new_problems);
                self.report(kind, &key, &pod_invalid);
                self.metrics
                    .set_discovery_objects(kind.as_str(), objects.count(kind));
                true
            }
        };
        self.metrics.discovery_event(kind.as_str(), "apply");
        if changed {
            self.bump_with(kind == Kind::Split);
        }
    }

    /// Removes one object.
    pub fn delete(&self, kind: Kind, key: &Key) {
        let removed = {
            let mut objects = self.write();
            let removed = objects.remove(kind, key);
            self.metrics
                .set_discovery_objects(kind.as_str(), objects.count(kind));
            removed
        };
        self.metrics.discovery_event(kind.as_str(), "delete");
        if removed {
            self.bump_with(kind == Kind::Split);
        }
    }

    /// Makes `objects` the whole set of `kinds`: what is missing from it is
    /// removed, what changed is replaced, and subscriptions wake once.
    pub fn replace(&self, kinds: &[Kind], objects: Vec<Object>) {
        let mut changed = false;
        {
            let mut current = self.write();
            let wanted: std::collections::HashSet<(Kind, Key)> = objects
                .iter()
                .map(|o| (o.kind(), o.key().clone()))
                .collect();
            for kind in kinds {
                for key in current.keys(*kind) {
                    if !wanted.contains(&(*kind, key.clone())) && current.remove(*kind, &key) {
                        self.metrics.discovery_event(kind.as_str(), "delete");
                        changed = true;
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
                let problems = current.upsert(object);
                self.report(kind, &key, &problems);
                self.metrics.discovery_event(kind.as_str(), "apply");
                changed = true;
            }
            for kind in kinds {
                self.metrics
                    .set_discovery_objects(kind.as_str(), current.count(*kind));
            }
        }
        if changed {
            self.bump_with(kinds.contains(&Kind::Split));
        }
    }

    /// Wakes the subscriptions; `splits` says TrafficSplits changed, so
    /// the exported weights are redone (pod churn leaves them alone).
    fn bump_with(&self, splits: bool) {
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
        self.bump();
    }

    fn bump(&self) {
        self.metrics.discovery_changes.inc();
        self.version.send_replace(Instant::now());
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
