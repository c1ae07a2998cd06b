//! One pod's mesh authorization, resolved: the AuthorizationPolicies that
//! target it (directly, or through a Service that selects it, narrowed to
//! the ports that Service routes to), with service accounts turned into
//! SPIFFE IDs, and the default for ports no ALLOW policy covers.

use kube::core::SelectorExt;
use weft_api::identity::SpiffeId;
use weft_api::proto::policy::{self as proto, DefaultAuthorization, PortRange};

use super::{AuthorizationPolicyInfo, RuleInfo, Source, Target};
use crate::discovery::Objects;
use crate::discovery::model::{Key, PodInfo, ServiceInfo, TargetPort};

/// What the controller was started with.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// For namespaces without `policy.weft.io/default`.
    pub authorization: DefaultAuthorization,
    /// The cluster's pod and node networks, for the `cluster` default.
    pub cluster_networks: Vec<ipnet::IpNet>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            authorization: DefaultAuthorization::DefaultAll,
            cluster_networks: default_cluster_networks(),
        }
    }
}

/// The private ranges, as Linkerd's `clusterNetworks` default: where a
/// cluster's pods and nodes almost always are.
pub fn default_cluster_networks() -> Vec<ipnet::IpNet> {
    [
        "10.0.0.0/8",
        "100.64.0.0/10",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fd00::/8",
    ]
    .iter()
    .map(|n| n.parse().expect("a valid CIDR"))
    .collect()
}

/// The authorization of pod `key` in its proxy.
pub fn authorization_for(
    objects: &Objects,
    trust_domain: &str,
    defaults: &Defaults,
    key: &Key,
    pod: &PodInfo,
) -> proto::Authorization {
    let default = objects
        .namespaces
        .get(&key.0)
        .and_then(|n| n.authorization)
        .unwrap_or(defaults.authorization);
    let mut targeting: Vec<(&Key, &AuthorizationPolicyInfo)> = objects
        .authorization_policies
        .iter()
        .filter(|((ns, _), _)| *ns == key.0)
        .collect();
    targeting.sort_by(|a, b| a.0.cmp(b.0));
    let policies = targeting
        .into_iter()
        .filter_map(|(policy_key, policy)| {
            let scope = scope(objects, key, pod, policy)?;
            Some(proto::AuthorizationPolicy {
                name: format!("{}/{}", policy_key.0, policy_key.1),
                deny: policy.deny,
                any_port: scope.is_none(),
                ports: scope.unwrap_or_default(),
                rules: policy
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(index, rule)| proto_rule(trust_domain, index, rule))
                    .collect(),
            })
        })
        .collect();
    proto::Authorization {
        default: default as i32,
        cluster_networks: defaults
            .cluster_networks
            .iter()
            .map(|n| n.to_string())
            .collect(),
        policies,
    }
}

/// The pod's ports a policy covers: `None` for all of them (a Pod
/// target), `Some` for those its target Services route to, and no answer
/// when it does not target the pod.
fn scope(
    objects: &Objects,
    key: &Key,
    pod: &PodInfo,
    policy: &AuthorizationPolicyInfo,
) -> Option<Option<Vec<PortRange>>> {
    let mut ports: Vec<u16> = Vec::new();
    let mut targeted = false;
    for target in &policy.targets {
        match target {
            Target::Pods(selector) => {
                if super::super::netpol::selector(selector).is_some_and(|s| s.matches(&pod.labels))
                {
                    return Some(None);
                }
            }
            Target::Service(name) => {
                let Some(service) = objects.services.get(&(key.0.clone(), name.clone())) else {
                    continue;
                };
                if !selects(service, pod) {
                    continue;
                }
                targeted = true;
                ports.extend(service.ports.iter().filter_map(|p| match &p.target {
                    None => Some(p.port),
                    Some(TargetPort::Number(n)) => Some(*n),
                    Some(TargetPort::Name(name)) => pod.named_ports.get(name).copied(),
                }));
            }
        }
    }
    if !targeted {
        return None;
    }
    ports.sort_unstable();
    ports.dedup();
    Some(Some(
        ports
            .into_iter()
            .map(|p| PortRange {
                first: p.into(),
                last: p.into(),
            })
            .collect(),
    ))
}

/// Whether a Service selects the pod. A Service without a selector
/// (endpoints kept by hand) selects no pod: its policy would otherwise
/// depend on every endpoint change.
fn selects(service: &ServiceInfo, pod: &PodInfo) -> bool {
    service.selector.as_ref().is_some_and(|selector| {
        !selector.is_empty() && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
    })
}

fn proto_rule(trust_domain: &str, index: usize, rule: &RuleInfo) -> proto::AuthorizationRule {
    let mut identities = Vec::new();
    let mut identity_prefixes = Vec::new();
    for source in rule.sources.iter().flatten() {
        match source {
            Source::Spiffe(id) => identities.push(id.clone()),
            Source::ServiceAccount { namespace, name } => {
                // A name no SPIFFE ID can hold matches nobody.
                if let Ok(id) = SpiffeId::new(trust_domain, namespace, name) {
                    identities.push(id.to_string());
                }
            }
            Source::Namespace(namespace) => {
                identity_prefixes.push(format!("spiffe://{trust_domain}/ns/{namespace}/sa/"))
            }
        }
    }
    proto::AuthorizationRule {
        index: index as u32,
        any_source: rule.sources.is_none(),
        identities,
        identity_prefixes,
        any_port: rule.ports.is_empty(),
        ports: rule
            .ports
            .iter()
            .map(|&p| PortRange {
                first: p.into(),
                last: p.into(),
            })
            .collect(),
        http: rule.http.clone(),
    }
}
