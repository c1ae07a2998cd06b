//! Discovery: what proxies need to route to a destination.
//!
//! Sources (files, or the Kubernetes API) keep a [`Store`] of Services,
//! EndpointSlices, Pods and TrafficSplits up to date. A proxy subscribes to
//! an authority (`ip:port` or `host:port`). A change wakes only the
//! subscriptions whose answer it can alter (see [`interest`]); each woken
//! one recomputes its destination and pushes it when it differs from what
//! the proxy last got. Updates are whole snapshots: a proxy that
//! reconnects, or missed one, is never left with half a picture.

pub mod file;
pub mod interest;
pub mod kubernetes;
pub mod metrics;
pub mod model;
pub mod netpol;
pub mod policy;
pub mod resolve;
pub mod route;
pub mod service;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use interest::{Interest, Subscription, Topic};
use metrics::{Action, DiscoveryMetrics};
use model::{Invalid, Key, PodInfo, ServiceInfo, SliceInfo, SplitInfo};
use netpol::{NamespaceInfo, NetworkPolicyInfo};
use route::{RouteInfo, RouteKind};

/// The topics a change touched.
type Touched = HashSet<Topic>;

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
    /// The pods holding each address: a replaced pod's IP can be reused
    /// before the old pod is gone, and the one updated last wins. Removing a pod then touches only its own addresses.
    pod_by_ip: HashMap<IpAddr, Vec<Key>>,
    /// `(namespace, service)` → its slices' names.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// `(namespace, pod)` → the slices listing it, so a pod's change
    /// reaches the Services it backs without a scan.
    slices_of_pod: HashMap<Key, BTreeSet<String>>,
    /// `(namespace, apex service)` → names of splits naming it.
    splits_of: HashMap<Key, BTreeSet<String>>,
    /// Keyed by `(namespace, route name)`.
    pub http_routes: HashMap<Key, RouteInfo>,
    pub grpc_routes: HashMap<Key, RouteInfo>,
    /// `(namespace, parent service)` → the routes naming it as a parent.
    routes_of: HashMap<Key, HashSet<(RouteKind, Key)>>,
    /// By name; a namespace without an object has only its name label.
    pub namespaces: HashMap<String, NamespaceInfo>,
    /// Keyed by `(namespace, policy name)`.
    pub network_policies: HashMap<Key, NetworkPolicyInfo>,
}

/// One object from a source.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(Key, ServiceInfo),
    Slice(Key, SliceInfo),
    Pod(Key, PodInfo, Vec<Invalid>),
    Split(Key, SplitInfo),
    Route(Key, RouteInfo),
    /// Keyed by `("", name)`.
    Namespace(Key, NamespaceInfo),
    NetworkPolicy(Key, NetworkPolicyInfo),
}

weft_api::label_values! {
    /// The kinds a source keeps, for bulk replacement (and the `kind` label
    /// of discovery's metrics).
    pub enum Kind {
        Service => "service",
        Slice => "endpointslice",
        Pod => "pod",
        Split => "trafficsplit",
        HttpRoute => "httproute",
        GrpcRoute => "grpcroute",
        Namespace => "namespace",
        NetworkPolicy => "networkpolicy",
    }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(..) => Kind::Service,
            Object::Slice(..) => Kind::Slice,
            Object::Pod(..) => Kind::Pod,
            Object::Split(..) => Kind::Split,
            Object::Route(_, route) => Kind::of_route(route.kind),
            Object::Namespace(..) => Kind::Namespace,
            Object::NetworkPolicy(..) => Kind::NetworkPolicy,
        }
    }

    pub fn key(&self) -> &Key {
        match self {
            Object::Service(k, _)
            | Object::Slice(k, _)
            | Object::Pod(k, _, _)
            | Object::Split(k, _)
            | Object::Route(k, _)
            | Object::Namespace(k, _)
            | Object::NetworkPolicy(k, _) => k,
        }
    }
}

impl Kind {
    pub(crate) fn of_route(kind: RouteKind) -> Self {
        match kind {
            RouteKind::Http => Kind::HttpRoute,
            RouteKind::Grpc => Kind::GrpcRoute,
        }
    }

    fn route_kind(self) -> Option<RouteKind> {
        match self {
            Kind::HttpRoute => Some(RouteKind::Http),
            Kind::GrpcRoute => Some(RouteKind::Grpc),
            _ => None,
        }
    }
}

impl Objects {
    fn routes(&self, kind: RouteKind) -> &HashMap<Key, RouteInfo> {
        match kind {
            RouteKind::Http => &self.http_routes,
            RouteKind::Grpc => &self.grpc_routes,
        }
    }

    fn routes_mut(&mut self, kind: RouteKind) -> &mut HashMap<Key, RouteInfo> {
        match kind {
            RouteKind::Http => &mut self.http_routes,
            RouteKind::Grpc => &mut self.grpc_routes,
        }
    }

    /// The routes naming `service` as a parent.
    pub fn routes_of<'a>(
        &'a self,
        service: &Key,
    ) -> impl Iterator<Item = (&'a Key, &'a RouteInfo)> {
        self.routes_of
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|(kind, key)| self.routes(*kind).get_key_value(key))
    }

    /// Inserts or replaces an object, adding the topics it touched to
    /// `touched`; returns the configuration problems it has that its
    /// previous version did not (to be reported once).
    fn upsert(&mut self, object: Object, touched: &mut Touched) -> Vec<Invalid> {
        let kind = object.kind();
        let key = object.key().clone();
        let before = self.invalid_of(kind, &key);
        self.remove(kind, &key, touched);
        match object {
            Object::Service(key, info) => {
                for ip in &info.cluster_ips {
                    self.service_by_ip.insert(*ip, key.clone());
                    touched.insert(Topic::Address(*ip));
                }
                touched.insert(Topic::Service(key.clone()));
                self.services.insert(key, info);
            }
            Object::Slice(key, info) => {
                let owner = (key.0.clone(), info.service.clone());
                self.slices_of
                    .entry(owner.clone())
                    .or_default()
                    .insert(key.1.clone());
                for pod in info.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
                    self.slices_of_pod
                        .entry((key.0.clone(), pod.clone()))
                        .or_default()
                        .insert(key.1.clone());
                }
                touched.insert(Topic::Service(owner));
                self.slices.insert(key, info);
            }
            Object::Pod(key, info, _) => {
                for ip in &info.ips {
                    self.pod_by_ip.entry(*ip).or_default().push(key.clone());
                }
                self.touch_pod(&key, &info, touched);
                self.pods.insert(key, info);
            }
            Object::Split(key, info) => {
                let apex = (key.0.clone(), info.apex.clone());
                self.splits_of
                    .entry(apex.clone())
                    .or_default()
                    .insert(key.1.clone());
                touched.insert(Topic::Service(apex));
                self.splits.insert(key, info);
            }
            Object::Route(key, info) => {
                for parent in &info.parents {
                    self.routes_of
                        .entry(parent.service.clone())
                        .or_default()
                        .insert((info.kind, key.clone()));
                    touched.insert(Topic::Service(parent.service.clone()));
                }
                self.routes_mut(info.kind).insert(key, info);
            }
            // Destinations do not depend on these; policy streams follow
            // their own signal (`Store::policy_inputs`).
            Object::Namespace(key, info) => {
                self.namespaces.insert(key.1, info);
            }
            Object::NetworkPolicy(key, info) => {
                self.network_policies.insert(key, info);
            }
        }
        let mut after = self.invalid_of(kind, &key);
        after.retain(|i| !before.contains(i));
        after
    }

    /// What a pod's change can alter: answers for its addresses, and for
    /// the Services whose slices list it.
    fn touch_pod(&self, key: &Key, pod: &PodInfo, touched: &mut Touched) {
        touched.extend(pod.ips.iter().map(|ip| Topic::Address(*ip)));
        for slice in self.slices_of_pod.get(key).into_iter().flatten() {
            if let Some(info) = self.slices.get(&(key.0.clone(), slice.clone())) {
                touched.insert(Topic::Service((key.0.clone(), info.service.clone())));
            }
        }
    }

    /// The pod that answers for an address.
    fn pod_at(&self, ip: &IpAddr) -> Option<&Key> {
        self.pod_by_ip.get(ip).and_then(|keys| keys.last())
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
            Kind::HttpRoute | Kind::GrpcRoute => kind
                .route_kind()
                .and_then(|k| self.routes(k).get(key))
                .map(|r| r.invalid.clone())
                .unwrap_or_default(),
            Kind::Namespace => self
                .namespaces
                .get(&key.1)
                .map(|n| n.invalid.clone())
                .unwrap_or_default(),
            Kind::NetworkPolicy => self
                .network_policies
                .get(key)
                .map(|p| p.invalid.clone())
                .unwrap_or_default(),
            // A pod's problems are reported when it arrives; pods are not
            // kept whole.
            Kind::Slice | Kind::Pod => Vec::new(),
        }
    }

    fn remove(&mut self, kind: Kind, key: &Key, touched: &mut Touched) -> bool {
        match kind {
            Kind::Service => {
                let Some(old) = self.services.remove(key) else {
                    return false;
                };
                for ip in old.cluster_ips {
                    if self.service_by_ip.get(&ip) == Some(key) {
                        self.service_by_ip.remove(&ip);
                    }
                    touched.insert(Topic::Address(ip));
                }
                touched.insert(Topic::Service(key.clone()));
            }
            Kind::Slice => {
                let Some(old) = self.slices.remove(key) else {
                    return false;
                };
                for pod in old.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
                    let pod_key = (key.0.clone(), pod.clone());
                    if let Some(names) = self.slices_of_pod.get_mut(&pod_key) {
                        names.remove(&key.1);
                        if names.is_empty() {
                            self.slices_of_pod.remove(&pod_key);
                        }
                    }
                }
                let owner = (key.0.clone(), old.service);
                if let Some(names) = self.slices_of.get_mut(&owner) {
                    names.remove(&key.1);
                    if names.is_empty() {
                        self.slices_of.remove(&owner);
                    }
                }
                touched.insert(Topic::Service(owner));
            }
            Kind::Pod => {
                let Some(old) = self.pods.remove(key) else {
                    return false;
                };
                for ip in &old.ips {
                    if let Some(keys) = self.pod_by_ip.get_mut(ip) {
                        keys.retain(|k| k != key);
                        if keys.is_empty() {
                            self.pod_by_ip.remove(ip);
                        }
                    }
                }
                self.touch_pod(key, &old, touched);
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
                touched.insert(Topic::Service(apex));
            }
            Kind::HttpRoute | Kind::GrpcRoute => {
                let Some(route_kind) = kind.route_kind() else {
                    return false;
                };
                let Some(old) = self.routes_mut(route_kind).remove(key) else {
                    return false;
                };
                for parent in old.parents {
                    if let Some(routes) = self.routes_of.get_mut(&parent.service) {
                        routes.remove(&(route_kind, key.clone()));
                        if routes.is_empty() {
                            self.routes_of.remove(&parent.service);
                        }
                    }
                    touched.insert(Topic::Service(parent.service));
                }
            }
            Kind::Namespace => return self.namespaces.remove(&key.1).is_some(),
            Kind::NetworkPolicy => return self.network_policies.remove(key).is_some(),
        }
        true
    }

    fn keys(&self, kind: Kind) -> Vec<Key> {
        match kind {
            Kind::Service => self.services.keys().cloned().collect(),
            Kind::Slice => self.slices.keys().cloned().collect(),
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::Split => self.splits.keys().cloned().collect(),
            Kind::HttpRoute => self.http_routes.keys().cloned().collect(),
            Kind::GrpcRoute => self.grpc_routes.keys().cloned().collect(),
            Kind::Namespace => self
                .namespaces
                .keys()
                .map(|n| (String::new(), n.clone()))
                .collect(),
            Kind::NetworkPolicy => self.network_policies.keys().cloned().collect(),
        }
    }

    /// Whether `object` is exactly what is stored already.
    fn holds(&self, object: &Object) -> bool {
        match object {
            Object::Service(k, v) => self.services.get(k) == Some(v),
            Object::Slice(k, v) => self.slices.get(k) == Some(v),
            Object::Pod(k, v, _) => self.pods.get(k) == Some(v),
            Object::Split(k, v) => self.splits.get(k) == Some(v),
            Object::Route(k, v) => self.routes(v.kind).get(k) == Some(v),
            Object::Namespace(k, v) => self.namespaces.get(&k.1) == Some(v),
            Object::NetworkPolicy(k, v) => self.network_policies.get(k) == Some(v),
        }
    }

    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Service => self.services.len(),
            Kind::Slice => self.slices.len(),
            Kind::Pod => self.pods.len(),
            Kind::Split => self.splits.len(),
            Kind::HttpRoute => self.http_routes.len(),
            Kind::GrpcRoute => self.grpc_routes.len(),
            Kind::Namespace => self.namespaces.len(),
            Kind::NetworkPolicy => self.network_policies.len(),
        }
    }
}

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

    /// Bumped when anything a pod's NetworkPolicy depends on changes:
    /// pods, namespaces, policies, and the first full listing.
    pub fn policy_inputs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.policy_inputs.subscribe()
    }

    /// The resolved NetworkPolicy of pod `key`.
    pub fn policy_for(&self, key: &Key) -> weft_api::proto::policy::PolicyUpdate {
        netpol::resolve::policy_for(&self.read(), &self.trust_domain, key)
    }

    fn policy_inputs_changed(&self, kinds: &[Kind]) {
        if kinds
            .iter()
            .any(|k| matches!(k, Kind::Pod | Kind::Namespace | Kind::NetworkPolicy))
        {
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
