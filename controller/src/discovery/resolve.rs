//! From an authority to a destination update.

use std::cell::RefCell;
use std::net::SocketAddr;

use weft_api::identity::SpiffeId;
use weft_api::proto::destination::{
    AppProtocol, Backend, DestinationUpdate, Endpoint, ProtocolHint, RoutePolicy,
};

use super::interest::{Subscription, Topic};
use super::model::{Key, ServiceInfo, ServicePort, TargetPort};
use super::{Objects, Store, route};

/// What a proxy asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Authority {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl Authority {
    /// Parses `ip:port`, `[v6]:port` or `host:port`.
    pub fn parse(v: &str) -> Result<Self, String> {
        let v = v.trim();
        if let Ok(addr) = v.parse::<SocketAddr>() {
            return Ok(Authority::Addr(addr));
        }
        let (host, port) = v
            .rsplit_once(':')
            .ok_or_else(|| format!("{v:?} has no port; expected host:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{v:?}: bad port"))?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!("{v:?}: {host:?} is not a host name"));
        }
        Ok(Authority::Name { host, port })
    }
}

impl Store {
    /// The destination as it stands now.
    pub fn resolve(&self, authority: &Authority, context_namespace: &str) -> DestinationUpdate {
        let objects = self.read();
        self.resolver(&objects)
            .resolve(authority, context_namespace)
    }

    /// The destination as it stands now, recording what the answer read
    /// so that `subscription` wakes when that changes.
    pub fn resolve_for(
        &self,
        subscription: &Subscription,
        authority: &Authority,
        context_namespace: &str,
    ) -> DestinationUpdate {
        let objects = self.read();
        let resolver = self.resolver(&objects);
        let update = resolver.resolve(authority, context_namespace);
        let mut topics = resolver.topics.into_inner();
        topics.sort_unstable();
        topics.dedup();
        // Still under the read lock: see the `interest` module.
        self.interest.record(subscription, topics);
        update
    }

    fn resolver<'a>(&'a self, objects: &'a Objects) -> Resolver<'a> {
        Resolver {
            objects,
            trust_domain: &self.trust_domain,
            cluster_domain: &self.cluster_domain,
            topics: RefCell::default(),
        }
    }
}

/// `name`, `name.ns`, `name.ns.svc` and `name.ns.svc.<cluster domain>`
/// name a service; anything else is outside the cluster.
fn service_name(host: &str, context_namespace: &str, cluster_domain: &str) -> Option<Key> {
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [name] => Some((context_namespace.to_string(), name.to_string())),
        [name, ns] | [name, ns, "svc"] => Some((ns.to_string(), name.to_string())),
        [name, ns, "svc", rest @ ..] if rest.join(".") == cluster_domain => {
            Some((ns.to_string(), name.to_string()))
        }
        _ => None,
    }
}

struct Resolver<'a> {
    objects: &'a Objects,
    trust_domain: &'a str,
    cluster_domain: &'a str,
    /// What the answer read, whether it was there or not: an object that
    /// appears later changes the answer too.
    topics: RefCell<Vec<Topic>>,
}

impl Resolver<'_> {
    fn resolve(&self, authority: &Authority, context_namespace: &str) -> DestinationUpdate {
        match authority {
            Authority::Addr(addr) => {
                self.read(Topic::Address(addr.ip()));
                if let Some(key) = self.objects.service_by_ip.get(&addr.ip()) {
                    return self.service(key, addr.port(), context_namespace);
                }
                if let Some(key) = self.objects.pod_at(&addr.ip()) {
                    return self.pod(key, *addr);
                }
                DestinationUpdate::default()
            }
            Authority::Name { host, port } => {
                match service_name(host, context_namespace, self.cluster_domain) {
                    Some(key) => self.service(&key, *port, context_namespace),
                    None => DestinationUpdate::default(),
                }
            }
        }
    }

    fn read(&self, topic: Topic) {
        self.topics.borrow_mut().push(topic);
    }

    fn service(&self, key: &Key, port: u16, context_namespace: &str) -> DestinationUpdate {
        self.read(Topic::Service(key.clone()));
        let Some(svc) = self.objects.services.get(key) else {
            return DestinationUpdate::default();
        };
        let Some(sp) = svc.ports.iter().find(|p| p.port == port) else {
            return DestinationUpdate::default();
        };
        let backends = match self.split_for(key) {
            Some(split) => split
                .iter()
                .map(|(name, weight)| {
                    let backend_key = (key.0.clone(), name.clone());
                    self.read(Topic::Service(backend_key.clone()));
                    let endpoints = match self.objects.services.get(&backend_key) {
                        Some(b) => match backend_port(b, sp) {
                            Some(bp) => self.endpoints(&backend_key, bp),
                            None => Vec::new(),
                        },
                        // An unknown backend has no endpoints; the proxy
                        // shares its weight out among the others.
                        None => Vec::new(),
                    };
                    Backend {
                        service: format!("{}.{}", name, key.0),
                        weight: u32::try_from(*weight).unwrap_or(u32::MAX),
                        endpoints,
                    }
                })
                .collect(),
            None => vec![Backend {
                service: format!("{}.{}", key.1, key.0),
                weight: 1,
                endpoints: self.endpoints(key, sp),
            }],
        };
        let opaque = svc.opaque_ports.contains(&port)
            || (backends.iter().any(|b| !b.endpoints.is_empty())
                && backends
                    .iter()
                    .flat_map(|b| &b.endpoints)
                    .all(|e| e.hint.as_ref().is_some_and(|h| h.opaque)));
        // The opaque-ports annotations win over what the port declares.
        let protocol = if opaque {
            AppProtocol::Opaque
        } else {
            sp.protocol
        };
        let routes =
            route::table::applicable(self.objects.routes_of(key), key, port, context_namespace);
        let http_routes = (!routes.is_empty())
            .then(|| route::table::build(&routes, |target| self.route_backend(target)));
        DestinationUpdate {
            known: true,
            service: format!("{}.{}", key.1, key.0),
            policy: Some(svc.policy.clone()),
            backends,
            opaque: protocol == AppProtocol::Opaque,
            authority: format!("{}.{}.svc.{}:{port}", key.1, key.0, self.cluster_domain),
            protocol: protocol.into(),
            http_routes,
        }
    }

    /// A route's backend: the Service port it names, with its endpoints;
    /// `None` when there is no such Service or port.
    fn route_backend(&self, target: &route::BackendTarget) -> Option<Backend> {
        self.read(Topic::Service(target.service.clone()));
        let svc = self.objects.services.get(&target.service)?;
        let sp = svc.ports.iter().find(|p| p.port == target.port)?;
        Some(Backend {
            service: format!("{}.{}", target.service.1, target.service.0),
            weight: 1,
            endpoints: self.endpoints(&target.service, sp),
        })
    }

    /// The first usable split (by name) whose apex is this service.
    fn split_for(&self, key: &Key) -> Option<&Vec<(String, u64)>> {
        let names = self.objects.splits_of.get(key)?;
        names.iter().find_map(|name| {
            let split = self.objects.splits.get(&(key.0.clone(), name.clone()))?;
            (!split.backends.is_empty()).then_some(&split.backends)
        })
    }

    fn endpoints(&self, key: &Key, sp: &ServicePort) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = Vec::new();
        let Some(slices) = self.objects.slices_of.get(key) else {
            return out;
        };
        for slice_name in slices {
            let Some(slice) = self
                .objects
                .slices
                .get(&(key.0.clone(), slice_name.clone()))
            else {
                continue;
            };
            let slice_port = slice
                .ports
                .iter()
                .find(|(name, _)| *name == sp.name)
                .map(|(_, p)| *p);
            for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
                let pod = endpoint
                    .pod
                    .as_ref()
                    .and_then(|p| Some((p, self.objects.pods.get(&(key.0.clone(), p.clone()))?)));
                // Slices made by the endpoint controller always carry the
                // port; hand-written ones may not, so fall back to the
                // service's target port.
                let port = slice_port.or_else(|| match &sp.target {
                    None => Some(sp.port),
                    Some(TargetPort::Number(n)) => Some(*n),
                    Some(TargetPort::Name(name)) => {
                        pod.and_then(|(_, p)| p.named_ports.get(name).copied())
                    }
                });
                let Some(port) = port else { continue };
                for ip in &endpoint.addresses {
                    let address = SocketAddr::new(*ip, port).to_string();
                    if out.iter().any(|e| e.address == address) {
                        continue;
                    }
                    out.push(self.endpoint(address, port, &key.0, pod));
                }
            }
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        out
    }

    fn endpoint(
        &self,
        address: String,
        port: u16,
        namespace: &str,
        pod: Option<(&String, &super::model::PodInfo)>,
    ) -> Endpoint {
        let meshed = pod.filter(|(_, p)| p.meshed);
        Endpoint {
            address,
            weight: 1,
            identity: meshed
                .and_then(|(_, p)| {
                    SpiffeId::new(self.trust_domain, namespace, &p.service_account).ok()
                })
                .map(|id| id.to_string())
                .unwrap_or_default(),
            hint: Some(ProtocolHint {
                http2: meshed.is_some(),
                opaque: pod.is_some_and(|(_, p)| p.opaque_ports.contains(&port)),
                app_port: meshed
                    .is_some_and(|(_, p)| p.mesh_app_port && !p.skip_inbound_ports.contains(&port)),
            }),
            namespace: namespace.to_string(),
            pod: pod.map(|(name, _)| name.clone()).unwrap_or_default(),
            workload: pod.map(|(_, p)| p.workload.clone()).unwrap_or_default(),
        }
    }

    /// A pod addressed directly: one endpoint, itself.
    fn pod(&self, key: &Key, addr: SocketAddr) -> DestinationUpdate {
        let pod = self.objects.pods.get(key);
        let endpoint = self.endpoint(
            addr.to_string(),
            addr.port(),
            &key.0,
            pod.map(|p| (&key.1, p)),
        );
        let opaque = endpoint.hint.as_ref().is_some_and(|h| h.opaque);
        DestinationUpdate {
            known: true,
            service: String::new(),
            policy: Some(RoutePolicy {
                failure_accrual_consecutive: 0,
                max_in_flight: weft_api::policy::DEFAULT_MAX_IN_FLIGHT,
                ..Default::default()
            }),
            backends: vec![Backend {
                service: String::new(),
                weight: 1,
                endpoints: vec![endpoint],
            }],
            opaque,
            authority: String::new(),
            http_routes: None,
            protocol: if opaque {
                AppProtocol::Opaque.into()
            } else {
                AppProtocol::Detect.into()
            },
        }
    }
}

/// The backend's port for the apex port: the same number, else the same
/// name, else its only port. SMI asks backends to mirror the apex's ports.
fn backend_port<'a>(backend: &'a ServiceInfo, apex: &ServicePort) -> Option<&'a ServicePort> {
    backend
        .ports
        .iter()
        .find(|p| p.port == apex.port)
        .or_else(|| backend.ports.iter().find(|p| p.name == apex.name))
        .or_else(|| (backend.ports.len() == 1).then(|| &backend.ports[0]))
}
