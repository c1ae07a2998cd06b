//! The objects discovery keeps ([`Objects`]), with the indexes that say
//! which subscriptions a change touches, and the kinds of them ([`Kind`],
//! [`Object`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use super::authz::AuthorizationPolicyInfo;
use super::interest::Topic;
use super::model::{Invalid, Key, PodInfo, ServiceInfo, SliceInfo, SplitInfo};
use super::netpol::{NamespaceInfo, NetworkPolicyInfo};
use super::route::{RouteInfo, RouteKind};

use super::Touched;

/// The discovery objects, with the indexes resolution needs.
#[derive(Debug, Default)]
pub struct Objects {
    pub services: HashMap<Key, ServiceInfo>,
    /// Keyed by `(namespace, slice name)`.
    pub slices: HashMap<Key, SliceInfo>,
    pub pods: HashMap<Key, PodInfo>,
    /// Keyed by `(namespace, split name)`.
    pub splits: HashMap<Key, SplitInfo>,
    pub(super) service_by_ip: HashMap<IpAddr, Key>,
    /// The pods holding each address: a replaced pod's IP can be reused
    /// before the old pod is gone, and the one updated last wins. Removing a pod then touches only its own addresses.
    pub(super) pod_by_ip: HashMap<IpAddr, Vec<Key>>,
    /// `(namespace, service)` → its slices' names.
    pub(super) slices_of: HashMap<Key, BTreeSet<String>>,
    /// `(namespace, pod)` → the slices listing it, so a pod's change
    /// reaches the Services it backs without a scan.
    pub(super) slices_of_pod: HashMap<Key, BTreeSet<String>>,
    /// `(namespace, apex service)` → names of splits naming it.
    pub(super) splits_of: HashMap<Key, BTreeSet<String>>,
    /// Keyed by `(namespace, route name)`.
    pub http_routes: HashMap<Key, RouteInfo>,
    pub grpc_routes: HashMap<Key, RouteInfo>,
    /// `(namespace, parent service)` → the routes naming it as a parent.
    pub(super) routes_of: HashMap<Key, HashSet<(RouteKind, Key)>>,
    /// By name; a namespace without an object has only its name label.
    pub namespaces: HashMap<String, NamespaceInfo>,
    /// Keyed by `(namespace, policy name)`.
    pub network_policies: HashMap<Key, NetworkPolicyInfo>,
    /// Keyed by `(namespace, policy name)`.
    pub authorization_policies: HashMap<Key, AuthorizationPolicyInfo>,
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
    AuthorizationPolicy(Key, AuthorizationPolicyInfo),
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
        AuthorizationPolicy => "authorizationpolicy",
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
            Object::AuthorizationPolicy(..) => Kind::AuthorizationPolicy,
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
            | Object::NetworkPolicy(k, _)
            | Object::AuthorizationPolicy(k, _) => k,
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

    pub(super) fn route_kind(self) -> Option<RouteKind> {
        match self {
            Kind::HttpRoute => Some(RouteKind::Http),
            Kind::GrpcRoute => Some(RouteKind::Grpc),
            _ => None,
        }
    }
}

impl Objects {
    pub(super) fn routes(&self, kind: RouteKind) -> &HashMap<Key, RouteInfo> {
        match kind {
            RouteKind::Http => &self.http_routes,
            RouteKind::Grpc => &self.grpc_routes,
        }
    }

    pub(super) fn routes_mut(&mut self, kind: RouteKind) -> &mut HashMap<Key, RouteInfo> {
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
    pub(super) fn upsert(&mut self, object: Object, touched: &mut Touched) -> Vec<Invalid> {
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
            Object::AuthorizationPolicy(key, info) => {
                self.authorization_policies.insert(key, info);
            }
        }
        let mut after = self.invalid_of(kind, &key);
        after.retain(|i| !before.contains(i));
        after
    }

    /// What a pod's change can alter: answers for its addresses, and for
    /// the Services whose slices list it.
    pub(super) fn touch_pod(&self, key: &Key, pod: &PodInfo, touched: &mut Touched) {
        touched.extend(pod.ips.iter().map(|ip| Topic::Address(*ip)));
        for slice in self.slices_of_pod.get(key).into_iter().flatten() {
            if let Some(info) = self.slices.get(&(key.0.clone(), slice.clone())) {
                touched.insert(Topic::Service((key.0.clone(), info.service.clone())));
            }
        }
    }

    /// The pod that answers for an address.
    pub(super) fn pod_at(&self, ip: &IpAddr) -> Option<&Key> {
        self.pod_by_ip.get(ip).and_then(|keys| keys.last())
    }

    pub(super) fn invalid_of(&self, kind: Kind, key: &Key) -> Vec<Invalid> {
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
            Kind::AuthorizationPolicy => self
                .authorization_policies
                .get(key)
                .map(|p| p.invalid.clone())
                .unwrap_or_default(),
            // A pod's problems are reported when it arrives; pods are not
            // kept whole.
            Kind::Slice | Kind::Pod => Vec::new(),
        }
    }

    pub(super) fn remove(&mut self, kind: Kind, key: &Key, touched: &mut Touched) -> bool {
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
            Kind::AuthorizationPolicy => {
                return self.authorization_policies.remove(key).is_some();
            }
        }
        true
    }

    pub(super) fn keys(&self, kind: Kind) -> Vec<Key> {
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
            Kind::AuthorizationPolicy => self.authorization_policies.keys().cloned().collect(),
        }
    }

    /// Whether `object` is exactly what is stored already.
    pub(super) fn holds(&self, object: &Object) -> bool {
        match object {
            Object::Service(k, v) => self.services.get(k) == Some(v),
            Object::Slice(k, v) => self.slices.get(k) == Some(v),
            Object::Pod(k, v, _) => self.pods.get(k) == Some(v),
            Object::Split(k, v) => self.splits.get(k) == Some(v),
            Object::Route(k, v) => self.routes(v.kind).get(k) == Some(v),
            Object::Namespace(k, v) => self.namespaces.get(&k.1) == Some(v),
            Object::NetworkPolicy(k, v) => self.network_policies.get(k) == Some(v),
            Object::AuthorizationPolicy(k, v) => self.authorization_policies.get(k) == Some(v),
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
            Kind::AuthorizationPolicy => self.authorization_policies.len(),
        }
    }
}
