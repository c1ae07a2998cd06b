//! One pod's NetworkPolicy, resolved: which policies isolate it in each
//! direction, and each of their rules as the pods (addresses and
//! identities), CIDRs and TCP port numbers it allows. This is the
//! API reference's semantics with every selector already applied, so the
//! proxy only compares addresses, identities and ports.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::SelectorExt;
use weft_api::identity::SpiffeId;
use weft_api::ip_block::IpBlock;
use weft_api::proto::policy::{self as proto, Direction, PodPeer, PolicyUpdate, PortRange, Rule};

use super::{NamespaceInfo, NetworkPolicyInfo, pod_selector, selector};
use crate::discovery::Objects;
use crate::discovery::model::{Key, PodInfo};

/// The policy of pod `key`, as the proxy in it enforces it.
pub fn policy_for(
    objects: &Objects,
    trust_domain: &str,
    defaults: &crate::discovery::authz::resolve::Defaults,
    key: &Key,
) -> PolicyUpdate {
    let Some(pod) = objects.pods.get(key) else {
        return PolicyUpdate::default();
    };
    let authorization = crate::discovery::authz::resolve::authorization_for(
        objects,
        trust_domain,
        defaults,
        key,
        pod,
    );
    let resolver = Resolver {
        objects,
        trust_domain,
        namespaces: HashMap::new(),
    };
    PolicyUpdate {
        authorization: Some(authorization),
        ..resolver.resolve(key, pod)
    }
}

struct Resolver<'a> {
    objects: &'a Objects,
    trust_domain: &'a str,
    /// Namespaces without an object, as the API server would label them.
    namespaces: HashMap<&'a str, NamespaceInfo>,
}

/// A rule's peers before ports are applied.
#[derive(Default)]
struct Peers<'a> {
    any: bool,
    pods: Vec<(&'a Key, &'a PodInfo)>,
    blocks: Vec<proto::IpBlock>,
}

impl<'a> Resolver<'a> {
    fn resolve(mut self, key: &'a Key, pod: &'a PodInfo) -> PolicyUpdate {
        let mode = self.namespace(&key.0).mode;
        let mut ingress = Direction::default();
        let mut egress = Direction::default();
        let mut policies: Vec<(&Key, &NetworkPolicyInfo)> = self
            .objects
            .network_policies
            .iter()
            .filter(|((ns, _), _)| *ns == key.0)
            .filter(|(_, p)| pod_selector(&p.spec).is_some_and(|s| s.matches(&pod.labels)))
            .collect();
        policies.sort_by(|a, b| a.0.cmp(b.0));
        for (policy_key, policy) in policies {
            let name = format!("{}/{}", policy_key.0, policy_key.1);
            if policy.ingress {
                ingress.isolated = true;
                ingress.policies.push(name.clone());
                for (index, rule) in policy.spec.ingress.iter().flatten().enumerate() {
                    let peers = self.peers(&key.0, rule.from.as_deref());
                    let ports = rule.ports.as_deref().unwrap_or_default();
                    ingress.rules.push(Rule {
                        policy: name.clone(),
                        index: index as u32,
                        any_peer: peers.any,
                        pods: self.pod_peers(&peers.pods),
                        blocks: peers.blocks,
                        any_port: ports.is_empty(),
                        ports: ports
                            .iter()
                            .flat_map(|p| port_range(p, Some(pod)))
                            .collect(),
                    });
                }
            }
            if policy.egress {
                egress.isolated = true;
                egress.policies.push(name.clone());
                for (index, rule) in policy.spec.egress.iter().flatten().enumerate() {
                    let peers = self.peers(&key.0, rule.to.as_deref());
                    let ports = rule.ports.as_deref().unwrap_or_default();
                    self.egress_rules(&mut egress.rules, &name, index as u32, peers, ports);
                }
            }
        }
        PolicyUpdate {
            known: true,
            mode: mode as i32,
            ingress: Some(ingress),
            egress: Some(egress),
            authorization: None,
        }
    }

    /// Egress ports that are names mean each destination pod's own port
    /// of that name, so those rules are split by the number it resolves
    /// to; an address outside every pod has no named ports.
    fn egress_rules(
        &self,
        rules: &mut Vec<Rule>,
        policy: &str,
        index: u32,
        peers: Peers<'a>,
        ports: &[NetworkPolicyPort],
    ) {
        let rule = |any_peer, pods, blocks, any_port, ports| Rule {
            policy: policy.to_string(),
            index,
            any_peer,
            pods,
            blocks,
            any_port,
            ports,
        };
        let (named, numbered): (Vec<_>, Vec<_>) = ports
            .iter()
            .partition(|p| matches!(p.port, Some(IntOrString::String(_))));
        if ports.is_empty() || !numbered.is_empty() {
            let ranges = numbered.iter().flat_map(|p| port_range(p, None)).collect();
            rules.push(rule(
                peers.any,
                self.pod_peers(&peers.pods),
                peers.blocks.clone(),
                ports.is_empty(),
                ranges,
            ));
        }
        if named.is_empty() {
            return;
        }
        // The pods a named port can reach: those the peers name, or every
        // pod (or every pod in a block) when the peers are that wide.
        let candidates: Vec<(&Key, &PodInfo)> = if peers.any {
            self.objects.pods.iter().collect()
        } else {
            let mut pods = peers.pods.clone();
            let blocks: Vec<IpBlock> = peers
                .blocks
                .iter()
                .filter_map(|b| IpBlock::parse(&b.cidr, &b.except))
                .collect();
            pods.extend(self.objects.pods.iter().filter(|(_, p)| {
                p.ips
                    .iter()
                    .any(|ip| blocks.iter().any(|b| b.contains(*ip)))
            }));
            pods.sort_by(|a, b| a.0.cmp(b.0));
            pods.dedup_by(|a, b| a.0 == b.0);
            pods
        };
        for port in named {
            let mut by_number: BTreeMap<u16, Vec<(&Key, &PodInfo)>> = BTreeMap::new();
            for (key, pod) in &candidates {
                if let Some(range) = port_range(port, Some(pod)) {
                    by_number
                        .entry(range.first as u16)
                        .or_default()
                        .push((key, pod));
                }
            }
            for (number, pods) in by_number {
                let range = PortRange {
                    first: u32::from(number),
                    last: u32::from(number),
                };
                rules.push(rule(
                    false,
                    self.pod_peers(&pods),
                    Vec::new(),
                    false,
                    vec![range],
                ));
            }
        }
    }

    fn namespace(&mut self, name: &'a str) -> &NamespaceInfo {
        match self.objects.namespaces.get(name) {
            Some(info) => info,
            None => self
                .namespaces
                .entry(name)
                .or_insert_with(|| NamespaceInfo::implied(name)),
        }
    }

    /// What a rule's `from` or `to` names; `None` or empty means anyone.
    fn peers(&mut self, policy_ns: &'a str, peers: Option<&'a [NetworkPolicyPeer]>) -> Peers<'a> {
        let peers = peers.unwrap_or_default();
        if peers.is_empty() {
            return Peers {
                any: true,
                ..Default::default()
            };
        }
        let mut out = Peers::default();
        for peer in peers {
            let has_selector = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
            if let Some(block) = &peer.ip_block {
                let except = block.except.clone().unwrap_or_default();
                if !has_selector && IpBlock::parse(&block.cidr, &except).is_some() {
                    out.blocks.push(proto::IpBlock {
                        cidr: block.cidr.clone(),
                        except,
                    });
                }
                continue;
            }
            if !has_selector {
                continue;
            }
            let pods = match &peer.pod_selector {
                Some(s) => selector(s),
                None => Some(kube::core::Selector::default()),
            };
            let namespaces = peer.namespace_selector.as_ref().map(selector);
            let (Some(pods), Some(namespaces)) =
                (pods, namespaces.unwrap_or(Some(Default::default())))
            else {
                continue;
            };
            let everywhere = peer.namespace_selector.is_some();
            let objects = self.objects;
            for (key, pod) in &objects.pods {
                let in_scope = if everywhere {
                    namespaces.matches(&self.namespace(&key.0).labels)
                } else {
                    key.0 == policy_ns
                };
                if in_scope && pods.matches(&pod.labels) {
                    out.pods.push((key, pod));
                }
            }
        }
        out.pods.sort_by(|a, b| a.0.cmp(b.0));
        out.pods.dedup_by(|a, b| a.0 == b.0);
        out
    }

    fn pod_peers(&self, pods: &[(&Key, &PodInfo)]) -> Vec<PodPeer> {
        pods.iter()
            .flat_map(|(key, pod)| {
                let identity = SpiffeId::new(self.trust_domain, &key.0, &pod.service_account)
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                let name = format!("{}/{}", key.0, key.1);
                pod.ips.iter().map(move |ip| PodPeer {
                    ip: ip.to_string(),
                    identity: identity.clone(),
                    name: name.clone(),
                })
            })
            .collect()
    }
}

/// The TCP ports one `ports` entry allows; a name is looked up in `pod`
/// (none given: names match nothing). Other protocols, and entries that
/// cannot be read, allow no TCP port.
fn port_range(port: &NetworkPolicyPort, pod: Option<&PodInfo>) -> Option<PortRange> {
    if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
        return None;
    }
    let (first, last) = match (&port.port, port.end_port) {
        (None, _) => (1, 65535),
        (Some(IntOrString::Int(first)), end) => {
            let last = end.unwrap_or(*first);
            if !(1..=65535).contains(first) || !(*first..=65535).contains(&last) {
                return None;
            }
            (*first as u32, last as u32)
        }
        (Some(IntOrString::String(_)), Some(_)) => return None,
        (Some(IntOrString::String(name)), None) => {
            let number = *pod?.named_ports.get(name)?;
            (u32::from(number), u32::from(number))
        }
    };
    Some(PortRange { first, last })
}
