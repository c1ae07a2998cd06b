//! Kubernetes NetworkPolicy, for the proxies to enforce: the model of
//! policies and namespaces the store keeps ([`NetworkPolicyInfo`],
//! [`NamespaceInfo`]), the resolution of one pod's policy into addresses,
//! identities and port numbers ([`resolve`]), and the gRPC service that
//! streams it ([`service`]).
//!
//! Policies are kept as written (the API's own spec type) with what is
//! wrong in them; selectors are matched when a pod's policy is resolved.
//! A part that cannot be read (a selector with an unknown operator, a
//! peer that mixes `ipBlock` with selectors, a bad CIDR, `endPort` on a
//! named port) matches nothing, so it can only ever allow less.

pub mod resolve;
pub mod service;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Selector;

use super::model::Invalid;
use weft_api::proto::policy::Mode;

/// The label the API server sets on every namespace: its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespace's labels (for `namespaceSelector`) and policy mode.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceInfo {
    pub labels: BTreeMap<String, String>,
    pub mode: Mode,
    /// `policy.weft.io/default`, when set.
    pub authorization: Option<weft_api::proto::policy::DefaultAuthorization>,
    pub invalid: Vec<Invalid>,
}

impl NamespaceInfo {
    /// A namespace the store has no object for: only its name label, as
    /// the API server would give it, and the default mode.
    pub fn implied(name: &str) -> Self {
        NamespaceInfo {
            labels: [(NAMESPACE_NAME_LABEL.to_string(), name.to_string())].into(),
            mode: Mode::Enforce,
            authorization: None,
            invalid: Vec::new(),
        }
    }

    pub fn from_k8s(namespace: &Namespace) -> Self {
        let name = namespace.metadata.name.clone().unwrap_or_default();
        let mut labels = namespace.metadata.labels.clone().unwrap_or_default();
        // Older clusters and files may lack it; selectors by name need it.
        labels
            .entry(NAMESPACE_NAME_LABEL.to_string())
            .or_insert(name);
        let mut invalid = Vec::new();
        let annotations = namespace.metadata.annotations.clone().unwrap_or_default();
        let key = weft_api::policy_annotations::MODE;
        let mode = match annotations.get(key).map(String::as_str) {
            None | Some("enforce") => Mode::Enforce,
            Some("audit") => Mode::Audit,
            Some(other) => {
                // Enforcing is the safe reading of a typo.
                invalid.push(Invalid {
                    kind: "annotation",
                    reason: "bad_policy_mode".into(),
                    detail: format!("{key}={other:?}: expected enforce or audit; enforcing"),
                });
                Mode::Enforce
            }
        };
        let authorization = crate::discovery::authz::default_from_annotation(
            annotations
                .get(weft_api::policy_annotations::DEFAULT)
                .map(String::as_str),
            &mut invalid,
        );
        NamespaceInfo {
            labels,
            mode,
            authorization,
            invalid,
        }
    }
}

/// One NetworkPolicy as written, with its `policyTypes` settled and the
/// problems found in it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkPolicyInfo {
    pub spec: NetworkPolicySpec,
    pub ingress: bool,
    pub egress: bool,
    pub invalid: Vec<Invalid>,
}

fn invalid(reason: &str, detail: String) -> Invalid {
    Invalid {
        kind: "network_policy",
        reason: reason.into(),
        detail,
    }
}

/// A selector as kube-rs matches it; `None` when it cannot be read.
pub(crate) fn selector(selector: &LabelSelector) -> Option<Selector> {
    Selector::try_from(selector.clone()).ok()
}

/// The pods of its namespace a policy selects (unset: all of them).
pub(crate) fn pod_selector(spec: &NetworkPolicySpec) -> Option<Selector> {
    match &spec.pod_selector {
        Some(s) => selector(s),
        None => Some(Selector::default()),
    }
}

impl NetworkPolicyInfo {
    pub fn from_k8s(policy: &NetworkPolicy) -> Self {
        Self::from_spec(policy.spec.clone().unwrap_or_default())
    }

    pub fn from_spec(spec: NetworkPolicySpec) -> Self {
        let mut problems = Vec::new();
        // The API server's defaulting: Ingress always, Egress when the
        // policy has egress rules.
        let (ingress, egress) = match &spec.policy_types {
            Some(types) => {
                for t in types {
                    if t != "Ingress" && t != "Egress" {
                        problems.push(invalid(
                            "bad_policy_type",
                            format!("policyTypes has {t:?}; expected Ingress or Egress"),
                        ));
                    }
                }
                (
                    types.iter().any(|t| t == "Ingress"),
                    types.iter().any(|t| t == "Egress"),
                )
            }
            None => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
        };
        if pod_selector(&spec).is_none() {
            problems.push(invalid(
                "bad_selector",
                "podSelector cannot be read; the policy selects no pod".into(),
            ));
        }
        let peers = spec
            .ingress
            .iter()
            .flatten()
            .map(|r| ("ingress", r.from.as_deref(), r.ports.as_deref()))
            .chain(
                spec.egress
                    .iter()
                    .flatten()
                    .map(|r| ("egress", r.to.as_deref(), r.ports.as_deref())),
            );
        for (direction, peers, ports) in peers {
            for peer in peers.unwrap_or_default() {
                let selectors = [&peer.pod_selector, &peer.namespace_selector];
                if let Some(block) = &peer.ip_block {
                    if selectors.iter().any(|s| s.is_some()) {
                        problems.push(invalid(
                            "bad_peer",
                            format!(
                                "an {direction} peer has ipBlock and a selector; it matches nothing"
                            ),
                        ));
                    }
                    let cidrs = std::iter::once(&block.cidr).chain(block.except.iter().flatten());
                    for cidr in cidrs {
                        if cidr.parse::<ipnet::IpNet>().is_err() {
                            problems.push(invalid(
                                "bad_cidr",
                                format!("{direction} ipBlock {cidr:?} is no CIDR; the peer matches nothing"),
                            ));
                        }
                    }
                } else if selectors.iter().all(|s| s.is_none()) {
                    problems.push(invalid(
                        "bad_peer",
                        format!("an {direction} peer names nothing; it matches nothing"),
                    ));
                }
                for s in selectors.into_iter().flatten() {
                    if selector(s).is_none() {
                        problems.push(invalid(
                            "bad_selector",
                            format!(
                                "an {direction} peer's selector cannot be read; it matches nothing"
                            ),
                        ));
                    }
                }
            }
            for port in ports.unwrap_or_default() {
                use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
                match (&port.port, port.end_port) {
                    (Some(IntOrString::String(name)), Some(_)) => problems.push(invalid(
                        "bad_port",
                        format!("{direction} port {name:?} has endPort, which needs a number; it matches nothing"),
                    )),
                    (Some(IntOrString::Int(first)), Some(last)) if last < *first => {
                        problems.push(invalid(
                            "bad_port",
                            format!("{direction} endPort {last} is below port {first}; it matches nothing"),
                        ))
                    }
                    (Some(IntOrString::Int(p)), _) if !(1..=65535).contains(p) => {
                        problems.push(invalid(
                            "bad_port",
                            format!("{direction} port {p} is out of range; it matches nothing"),
                        ))
                    }
                    _ => {}
                }
                if let Some(protocol) = &port.protocol
                    && !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP")
                {
                    problems.push(invalid(
                        "bad_protocol",
                        format!("{direction} port protocol {protocol:?}; it matches nothing"),
                    ));
                }
            }
        }
        NetworkPolicyInfo {
            spec,
            ingress,
            egress,
            invalid: problems,
        }
    }
}

#[cfg(test)]
mod tests;
