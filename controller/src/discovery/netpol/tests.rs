//! NetworkPolicy resolution, from YAML as the file source reads it.

use std::path::Path;
use std::sync::Arc;

use weft_api::proto::policy::{Direction, IpBlock, Mode, PodPeer, PolicyUpdate, PortRange, Rule};

use crate::discovery::Store;
use crate::discovery::file::parse;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {team: b}, annotations: {policy.weft.io/mode: audit}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  serviceAccountName: web
  containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: prod, labels: {app: api}}
spec:
  serviceAccountName: api
  containers: [{name: app}]
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec:
  containers: [{name: app, ports: [{name: pg, containerPort: 5432}]}]
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: dev, labels: {app: tool}}
spec:
  containers: [{name: app, ports: [{name: pg, containerPort: 15432}]}]
status: {podIP: 10.0.1.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allow, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: api}}}]
      ports: [{port: http}, {port: 9000, endPort: 9010}, {port: 53, protocol: UDP}]
    - from:
        - namespaceSelector: {matchLabels: {team: b}}
        - namespaceSelector: {matchLabels: {team: b}}
          podSelector: {matchLabels: {app: nothing}}
    - from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.2.0/24]}}]
      ports: [{port: nosuchport}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {}}]
      ports: [{port: pg}]
    - to: [{ipBlock: {cidr: 10.1.0.0/16}, podSelector: {}}]
    - ports: [{port: 443}]
"#;

fn store() -> Arc<Store> {
    let metrics = crate::metrics::Metrics::new();
    let store = Store::new("cluster.local", "cluster.local", metrics.discovery.clone());
    for object in parse(Path::new("cluster.yaml"), CLUSTER).unwrap() {
        store.apply(object);
    }
    store.mark_synced();
    store
}

fn policy(store: &Store, ns: &str, pod: &str) -> PolicyUpdate {
    store.policy_for(&(ns.into(), pod.into()))
}

fn peer(ip: &str, ns: &str, sa: &str, name: &str) -> PodPeer {
    PodPeer {
        ip: ip.into(),
        identity: format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"),
        name: format!("{ns}/{name}"),
    }
}

fn range(first: u32, last: u32) -> PortRange {
    PortRange { first, last }
}

#[test]
fn ingress_rules_resolve_selectors_and_named_ports_of_the_pod() {
    let web = policy(&store(), "prod", "web");
    assert!(web.known);
    assert_eq!(web.mode(), Mode::Enforce);
    let ingress = web.ingress.unwrap();
    assert!(ingress.isolated);
    assert_eq!(ingress.policies, ["prod/deny-all", "prod/web-allow"]);
    let rule = |index: u32| ingress.rules.iter().find(|r| r.index == index).unwrap();
    // Named port `http` is web's 8080; UDP allows no TCP port.
    assert_eq!(
        rule(0),
        &Rule {
            policy: "prod/web-allow".into(),
            index: 0,
            any_peer: false,
            pods: vec![peer("10.0.0.2", "prod", "api", "api")],
            blocks: vec![],
            any_port: false,
            ports: vec![range(8080, 8080), range(9000, 9010)],
        }
    );
    // A namespace selector alone: every pod there; with a pod selector
    // too: only pods matching both (none here).
    assert_eq!(rule(1).pods, [peer("10.0.1.1", "dev", "default", "tool")]);
    assert!(rule(1).any_port);
    // A port name web does not have allows nothing, never everything.
    assert_eq!(
        rule(2).blocks,
        [IpBlock {
            cidr: "10.1.0.0/16".into(),
            except: vec!["10.1.2.0/24".into()],
        }]
    );
    assert!(!rule(2).any_port && rule(2).ports.is_empty());
    assert_eq!(web.egress.unwrap(), Direction::default());
}

#[test]
fn egress_named_ports_are_each_destination_pods_own() {
    let api = policy(&store(), "prod", "api");
    let ingress = api.ingress.unwrap();
    assert!(
        ingress.isolated && ingress.rules.is_empty(),
        "deny-all isolates it"
    );
    let egress = api.egress.unwrap();
    assert!(egress.isolated);
    assert_eq!(egress.policies, ["prod/api-egress"]);
    let pg: Vec<(&[PodPeer], &[PortRange])> = egress
        .rules
        .iter()
        .filter(|r| r.index == 0)
        .map(|r| (&r.pods[..], &r.ports[..]))
        .collect();
    // `pg` is 5432 on db and 15432 on tool: one rule per number.
    assert_eq!(
        pg,
        [
            (
                &[peer("10.0.0.3", "prod", "default", "db")][..],
                &[range(5432, 5432)][..]
            ),
            (
                &[peer("10.0.1.1", "dev", "default", "tool")][..],
                &[range(15432, 15432)][..]
            ),
        ]
    );
    // ipBlock with a selector is invalid and matches nothing.
    let mixed = egress.rules.iter().find(|r| r.index == 1).unwrap();
    assert!(!mixed.any_peer && mixed.pods.is_empty() && mixed.blocks.is_empty());
    let any = egress.rules.iter().find(|r| r.index == 2).unwrap();
    assert!(any.any_peer && !any.any_port);
    assert_eq!(any.ports, [range(443, 443)]);
}

#[test]
fn unpoliced_pods_and_unknown_pods() {
    let store = store();
    let tool = policy(&store, "dev", "tool");
    assert!(tool.known);
    assert_eq!(tool.mode(), Mode::Audit);
    assert!(!tool.ingress.unwrap().isolated && !tool.egress.unwrap().isolated);
    assert_eq!(policy(&store, "prod", "gone"), PolicyUpdate::default());
}

#[test]
fn a_policy_change_is_signalled_and_resolved_again() {
    let store = store();
    let mut inputs = store.policy_inputs();
    inputs.borrow_and_update();
    let objects = parse(
        Path::new("more.yaml"),
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dev-lockdown, namespace: dev}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [tool, other]}]}
  policyTypes: [Ingress, Egress]
"#,
    )
    .unwrap();
    for object in objects {
        store.apply(object);
    }
    assert!(inputs.has_changed().unwrap());
    let tool = policy(&store, "dev", "tool");
    assert!(tool.ingress.unwrap().isolated && tool.egress.unwrap().isolated);
}

#[test]
fn unreadable_parts_are_reported() {
    use super::NetworkPolicyInfo;
    let spec = serde_json::from_value(serde_json::json!({
        "podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
        "policyTypes": ["Ingress", "Sideways"],
        "ingress": [{
            "from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}, {}],
            "ports": [{"port": "http", "endPort": 90}, {"port": 100, "endPort": 90}, {"port": 1, "protocol": "ICMP"}],
        }],
    }))
    .unwrap();
    let info = NetworkPolicyInfo::from_spec(spec);
    let mut reasons: Vec<&str> = info.invalid.iter().map(|i| i.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "bad_cidr",
            "bad_peer",
            "bad_policy_type",
            "bad_port",
            "bad_port",
            "bad_protocol",
            "bad_selector"
        ]
    );
}
