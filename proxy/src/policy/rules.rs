//! A pod's NetworkPolicy as the proxy checks it: the controller's resolved
//! rules compiled for lookups by address, and the one pure function that
//! decides a connection ([`Rules::decide`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use weft_api::identity::SpiffeId;
use weft_api::ip_block::IpBlock;
use weft_api::proto::policy::{self as proto, Mode};

/// Which way a connection goes, from this pod's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Way {
    Ingress,
    Egress,
}

/// One rule, ready for lookups.
#[derive(Debug)]
struct Rule {
    /// `namespace/name#index`, for logs.
    name: Arc<str>,
    any_peer: bool,
    /// Pod address → the identity a mesh client there must have.
    pods: HashMap<IpAddr, SpiffeId>,
    blocks: Vec<IpBlock>,
    any_port: bool,
    ports: Vec<(u16, u16)>,
}

/// One direction's rules.
#[derive(Debug, Default)]
struct Side {
    isolated: bool,
    /// The isolating policies, joined: the `policy` label of denials.
    policies: Arc<str>,
    rules: Vec<Rule>,
}

/// Why a connection was refused; each is a metric label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    /// No rule allows this peer on this port.
    NotAllowed,
    /// A mesh client at a pod's address presented another identity.
    Spoof,
    /// The pod's policy has not arrived yet (fail closed).
    Unknown,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::NotAllowed => "not_allowed",
            Reason::Spoof => "spoof",
            Reason::Unknown => "policy_unknown",
        }
    }
}

/// A refusal, with what a log needs to explain it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Denial {
    pub reason: Reason,
    /// The isolating policies.
    pub policies: Arc<str>,
    /// The rule closest to allowing it (its peer or its port matched).
    pub nearest: Option<Arc<str>>,
    /// For a spoof: the identity the pod at that address has.
    pub expected: Option<Arc<str>>,
}

/// The verdict on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow,
    Deny(Denial),
}

/// A pod's compiled policy.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    pub audit: bool,
    ingress: Side,
    egress: Side,
    /// Mesh authorization, checked after NetworkPolicy lets a client in.
    pub authorization: super::authz::Authorization,
}

impl Rules {
    pub(crate) fn compile(update: &proto::PolicyUpdate) -> Self {
        Rules {
            audit: update.mode() == Mode::Audit,
            ingress: side(update.ingress.as_ref()),
            egress: side(update.egress.as_ref()),
            authorization: super::authz::Authorization::compile(update.authorization.as_ref()),
        }
    }

    /// Whether `way` traffic is restricted at all.
    pub(crate) fn isolated(&self, way: Way) -> bool {
        self.side(way).isolated
    }

    fn side(&self, way: Way) -> &Side {
        match way {
            Way::Ingress => &self.ingress,
            Way::Egress => &self.egress,
        }
    }

    /// Decides a connection with `peer` (the client inbound, the
    /// destination outbound) on `port` (this pod's app port inbound, the
    /// destination's outbound). `identity` is a mesh client's proven one.
    pub(crate) fn decide(
        &self,
        way: Way,
        peer: IpAddr,
        identity: Option<&SpiffeId>,
        port: u16,
    ) -> Decision {
        let side = self.side(way);
        if !side.isolated {
            return Decision::Allow;
        }
        let mut nearest = None;
        let mut allowed = false;
        for rule in &side.rules {
            let pod = rule.pods.get(&peer);
            // The address is a pod's; a mesh client there must be it.
            if let (Some(expected), Some(identity)) = (pod, identity)
                && identity != expected
            {
                return Decision::Deny(Denial {
                    reason: Reason::Spoof,
                    policies: side.policies.clone(),
                    nearest: Some(rule.name.clone()),
                    expected: Some(expected.to_string().into()),
                });
            }
            let peer_ok =
                rule.any_peer || pod.is_some() || rule.blocks.iter().any(|b| b.contains(peer));
            let port_ok =
                rule.any_port || rule.ports.iter().any(|(a, b)| (*a..=*b).contains(&port));
            if peer_ok && port_ok {
                allowed = true;
            } else if (peer_ok || port_ok) && nearest.is_none() {
                nearest = Some(rule.name.clone());
            }
        }
        if allowed {
            return Decision::Allow;
        }
        Decision::Deny(Denial {
            reason: Reason::NotAllowed,
            policies: side.policies.clone(),
            nearest,
            expected: None,
        })
    }
}

fn side(direction: Option<&proto::Direction>) -> Side {
    let Some(direction) = direction else {
        return Side::default();
    };
    let rules = direction
        .rules
        .iter()
        .map(|r| Rule {
            name: format!("{}#{}", r.policy, r.index).into(),
            any_peer: r.any_peer,
            pods: r
                .pods
                .iter()
                .filter_map(|p| Some((p.ip.parse().ok()?, p.identity.parse().ok()?)))
                .collect(),
            blocks: r
                .blocks
                .iter()
                .filter_map(|b| IpBlock::parse(&b.cidr, &b.except))
                .collect(),
            any_port: r.any_port,
            ports: r
                .ports
                .iter()
                .filter_map(|p| Some((u16::try_from(p.first).ok()?, u16::try_from(p.last).ok()?)))
                .collect(),
        })
        .collect();
    Side {
        isolated: direction.isolated,
        policies: direction.policies.join(",").into(),
        rules,
    }
}

#[cfg(test)]
mod tests;
