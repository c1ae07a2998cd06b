//! What discovery keeps of each Kubernetes object: only the fields routing
//! needs, so a big cluster's pods do not sit in the controller's memory
//! whole. Both sources (files and the API server) convert into these.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_api::proto::destination::{AppProtocol, RoutePolicy};
use weft_api::split::{TrafficSplit, TrafficSplitSpec};

use super::policy;

/// `(namespace, name)`.
pub type Key = (String, String);

/// A problem with an object's configuration: reported, then ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// What it was about: `annotation` or `traffic_split`.
    pub kind: &'static str,
    pub reason: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInfo {
    pub cluster_ips: Vec<IpAddr>,
    /// The pods it selects, for AuthorizationPolicy targets; `None`
    /// for a Service whose endpoints are kept by hand.
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<ServicePort>,
    pub policy: RoutePolicy,
    pub opaque_ports: BTreeSet<u16>,
    pub invalid: Vec<Invalid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    /// A number, a name (looked up in the endpoints' ports) or nothing
    /// (same as `port`).
    pub target: Option<TargetPort>,
    /// What `appProtocol` declares.
    pub protocol: AppProtocol,
}

/// What a Service port's `appProtocol` means to the proxy: any declared
/// protocol skips detection. HTTP values are served as HTTP at once; every
/// other value (`tcp`, `mysql`, `https`, `kubernetes.io/wss`, ...) is a
/// byte stream the proxy forwards without looking, as detection could only
/// have found it opaque (or made a server-speaks-first client wait).
pub fn app_protocol(declared: Option<&str>) -> AppProtocol {
    let Some(value) = declared.map(str::trim).filter(|v| !v.is_empty()) else {
        return AppProtocol::Detect;
    };
    match value.to_ascii_lowercase().as_str() {
        "http" | "http1" | "kubernetes.io/ws" => AppProtocol::Http1,
        "kubernetes.io/h2c" | "h2c" | "http2" | "grpc" | "grpc-web" => AppProtocol::Http2,
        _ => AppProtocol::Opaque,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    /// The service this slice belongs to (`kubernetes.io/service-name`).
    pub service: String,
    /// `(name, port)`; the name matches the service port's name.
    pub ports: Vec<(String, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    /// The pod behind the endpoint, when the slice says.
    pub pod: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub ips: Vec<IpAddr>,
    pub service_account: String,
    /// The pod runs Weft's proxy, so it terminates mesh mTLS.
    pub meshed: bool,
    pub opaque_ports: BTreeSet<u16>,
    /// Its proxy takes mesh mTLS on app ports (set by the injector).
    pub mesh_app_port: bool,
    /// Ports its redirect rules leave alone: mesh traffic to them must
    /// use the inbound port.
    pub skip_inbound_ports: BTreeSet<u16>,
    pub workload: String,
    /// Named container ports, for services whose target port is a name.
    pub named_ports: BTreeMap<String, u16>,
    /// For NetworkPolicy `podSelector`s.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SplitInfo {
    /// The apex service's short name.
    pub apex: String,
    /// `(backend service, weight in thousandths)`; empty if the split is
    /// unusable (see `invalid`).
    pub backends: Vec<(String, u64)>,
    pub invalid: Option<Invalid>,
}

/// The `config.weft.io/opaque-ports` annotation; a bad value is recorded
/// in `invalid` and read as no ports.
/// A port-list annotation; a bad one is reported as `reason` and read
/// as empty.
fn port_set(
    annotations: &BTreeMap<String, String>,
    key: &str,
    reason: &str,
    invalid: &mut Vec<Invalid>,
) -> BTreeSet<u16> {
    let Some(v) = annotations.get(key) else {
        return BTreeSet::new();
    };
    weft_api::port_list::parse_set(v).unwrap_or_else(|detail| {
        invalid.push(Invalid {
            kind: "annotation",
            reason: reason.into(),
            detail: format!("{key}={v:?}: {detail}"),
        });
        BTreeSet::new()
    })
}

fn parse_ip(v: &str) -> Option<IpAddr> {
    v.parse().ok()
}

impl ServiceInfo {
    pub fn from_k8s(svc: &Service) -> Self {
        let spec = svc.spec.clone().unwrap_or_default();
        let mut cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .filter_map(|ip| parse_ip(ip))
            .collect();
        if let Some(ip) = spec.cluster_ip.as_deref().and_then(parse_ip)
            && !cluster_ips.contains(&ip)
        {
            cluster_ips.push(ip);
        }
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some(ServicePort {
                    protocol: app_protocol(p.app_protocol.as_deref()),
                    name: p.name.clone().unwrap_or_default(),
                    port: u16::try_from(p.port).ok()?,
                    target: p.target_port.as_ref().and_then(|t| match t {
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => {
                            u16::try_from(*n).ok().map(TargetPort::Number)
                        }
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => {
                            match s.parse::<u16>() {
                                Ok(n) => Some(TargetPort::Number(n)),
                                Err(_) => Some(TargetPort::Name(s.clone())),
                            }
                        }
                    }),
                })
            })
            .collect();
        let empty = BTreeMap::new();
        let annotations = svc.metadata.annotations.as_ref().unwrap_or(&empty);
        let (policy, mut invalid) = policy::from_annotations(annotations);
        let opaque_ports = port_set(
            annotations,
            weft_api::annotations::OPAQUE_PORTS,
            "bad_opaque_ports",
            &mut invalid,
        );
        ServiceInfo {
            cluster_ips,
            selector: spec.selector.clone(),
            ports,
            policy,
            opaque_ports,
            invalid,
        }
    }
}

impl SliceInfo {
    pub fn from_k8s(slice: &EndpointSlice) -> Option<Self> {
        Self::from_parts(
            &slice.metadata,
            &slice.address_type,
            slice.ports.as_deref().unwrap_or_default(),
            &slice.endpoints,
        )
    }

    /// From the fields that `discovery.k8s.io/v1` and `v1beta1` share, so
    /// either version's slices read into the same model.
    pub fn from_parts(
        metadata: &ObjectMeta,
        address_type: &str,
        ports: &[EndpointPort],
        endpoints: &[Endpoint],
    ) -> Option<Self> {
        if address_type != "IPv4" && address_type != "IPv6" {
            return None;
        }
        let service = metadata
            .labels
            .as_ref()?
            .get("kubernetes.io/service-name")?
            .clone();
        let ports = ports
            .iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        let endpoints = endpoints
            .iter()
            .map(|e| SliceEndpoint {
                addresses: e.addresses.iter().filter_map(|a| parse_ip(a)).collect(),
                // "Unknown" counts as ready, as kube-proxy treats it.
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                pod: e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone()),
            })
            .collect();
        Some(SliceInfo {
            service,
            ports,
            endpoints,
        })
    }
}

impl PodInfo {
    pub fn from_k8s(pod: &Pod) -> (Self, Vec<Invalid>) {
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|ip| parse_ip(&ip.ip))
            .collect();
        if let Some(ip) = status.pod_ip.as_deref().and_then(parse_ip)
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let has_proxy = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == weft_api::PROXY_CONTAINER_NAME);
        let meshed = has_proxy || labels.contains_key(weft_api::labels::CONTROL_PLANE_NS);
        let mut invalid = Vec::new();
        let opaque_ports = port_set(
            &annotations,
            weft_api::annotations::OPAQUE_PORTS,
            "bad_opaque_ports",
            &mut invalid,
        );
        let skip_inbound_ports = port_set(
            &annotations,
            weft_api::annotations::SKIP_INBOUND_PORTS,
            "bad_skip_inbound_ports",
            &mut invalid,
        );
        let mesh_app_port = annotations
            .get(weft_api::annotations::MESH_TRANSPORT)
            .is_some_and(|v| v == weft_api::annotations::MESH_TRANSPORT_APP_PORT);
        let named_ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        let info = PodInfo {
            ips,
            service_account: spec
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            meshed,
            opaque_ports,
            mesh_app_port,
            skip_inbound_ports,
            workload: labels
                .get(weft_api::labels::WORKLOAD)
                .cloned()
                .unwrap_or_default(),
            named_ports,
            labels,
        };
        (info, invalid)
    }
}

impl SplitInfo {
    pub fn from_split(split: &TrafficSplit) -> Self {
        Self::from_spec(&split.spec)
    }

    pub fn from_spec(split: &TrafficSplitSpec) -> Self {
        // The apex may be written as a short name or as an FQDN.
        let apex = split
            .service
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string();
        match split.weighted_backends() {
            Ok(backends) => SplitInfo {
                apex,
                backends: backends
                    .into_iter()
                    .map(|(svc, w)| (svc.split('.').next().unwrap_or_default().to_string(), w))
                    .collect(),
                invalid: None,
            },
            Err(error) => SplitInfo {
                apex,
                backends: Vec::new(),
                invalid: Some(Invalid {
                    kind: "traffic_split",
                    reason: error.reason().into(),
                    detail: error.to_string(),
                }),
            },
        }
    }
}
