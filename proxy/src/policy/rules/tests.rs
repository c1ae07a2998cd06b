use weft_api::proto::policy::{Direction, IpBlock, PodPeer, PolicyUpdate, PortRange, Rule};

use super::*;

const WEB: &str = "spiffe://cluster.local/ns/prod/sa/web";
const API: &str = "spiffe://cluster.local/ns/prod/sa/api";

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn rule(index: u32) -> Rule {
    Rule {
        policy: "prod/p".into(),
        index,
        ..Default::default()
    }
}

fn ports(list: &[(u32, u32)]) -> Vec<PortRange> {
    list.iter()
        .map(|&(first, last)| PortRange { first, last })
        .collect()
}

/// Ingress: api pods on 8080 and 9000-9010; 10.1/16 less 10.1.2/24 on
/// any port; a rule for another protocol only (no TCP port).
fn rules() -> Rules {
    let ingress = Direction {
        isolated: true,
        policies: vec!["prod/deny".into(), "prod/p".into()],
        rules: vec![
            Rule {
                pods: vec![PodPeer {
                    ip: "10.0.0.2".into(),
                    identity: API.into(),
                    name: "prod/api".into(),
                }],
                ports: ports(&[(8080, 8080), (9000, 9010)]),
                ..rule(0)
            },
            Rule {
                blocks: vec![IpBlock {
                    cidr: "10.1.0.0/16".into(),
                    except: vec!["10.1.2.0/24".into()],
                }],
                any_port: true,
                ..rule(1)
            },
            Rule {
                any_peer: true,
                ..rule(2)
            },
        ],
    };
    Rules::compile(&PolicyUpdate {
        known: true,
        ingress: Some(ingress),
        ..Default::default()
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_rule_needs_both_its_peer_and_its_port() {
    let r = rules();
    let api = id(API);
    for (peer, identity, port, allowed) in [
        ("10.0.0.2", Some(&api), 8080, true),
        ("10.0.0.2", None, 9005, true),
        ("10.0.0.2", Some(&api), 9011, false),
        ("10.0.0.3", None, 8080, false),
        ("10.1.0.7", None, 1, true),
        ("10.1.2.7", None, 8080, false),
        // The last rule is for UDP only: it allows no TCP port.
        ("192.0.2.1", None, 53, false),
    ] {
        let decision = r.decide(Way::Ingress, ip(peer), identity, port);
        assert_eq!(
            decision == Decision::Allow,
            allowed,
            "{peer}:{port} -> {decision:?}"
        );
    }
}

#[test]
fn a_mesh_client_must_be_the_pod_at_its_address() {
    let r = rules();
    let Decision::Deny(denial) = r.decide(Way::Ingress, ip("10.0.0.2"), Some(&id(WEB)), 8080)
    else {
        panic!("a spoof was let in");
    };
    assert_eq!(denial.reason, Reason::Spoof);
    assert_eq!(denial.expected.as_deref(), Some(API));
    // Plaintext from that address is judged by the address, as a CNI does.
    assert_eq!(
        r.decide(Way::Ingress, ip("10.0.0.2"), None, 8080),
        Decision::Allow
    );
}

#[test]
fn a_denial_names_the_policies_and_the_nearest_rule() {
    let Decision::Deny(denial) = rules().decide(Way::Ingress, ip("10.0.0.2"), None, 22) else {
        panic!("allowed");
    };
    assert_eq!(denial.reason, Reason::NotAllowed);
    assert_eq!(&*denial.policies, "prod/deny,prod/p");
    assert_eq!(denial.nearest.as_deref(), Some("prod/p#0"));
}

#[test]
fn an_unisolated_direction_allows_everything_and_isolation_without_rules_nothing() {
    let r = rules();
    assert!(!r.isolated(Way::Egress));
    assert_eq!(
        r.decide(Way::Egress, ip("203.0.113.9"), None, 443),
        Decision::Allow
    );
    let closed = Rules::compile(&PolicyUpdate {
        known: true,
        egress: Some(Direction {
            isolated: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    assert!(matches!(
        closed.decide(Way::Egress, ip("10.0.0.1"), None, 53),
        Decision::Deny(_)
    ));
}

#[test]
fn a_block_with_an_unreadable_except_matches_nothing() {
    let r = Rules::compile(&PolicyUpdate {
        known: true,
        ingress: Some(Direction {
            isolated: true,
            rules: vec![Rule {
                blocks: vec![IpBlock {
                    cidr: "10.0.0.0/8".into(),
                    except: vec!["10.9.0.0/99".into()],
                }],
                any_port: true,
                ..rule(0)
            }],
            ..Default::default()
        }),
        ..Default::default()
    });
    assert!(matches!(
        r.decide(Way::Ingress, ip("10.9.0.1"), None, 80),
        Decision::Deny(_)
    ));
}
