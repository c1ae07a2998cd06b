//! AuthorizationPolicy: reading, validation and per-pod resolution, from
//! YAML as the file source reads it.

use std::path::Path;
use std::sync::Arc;

use weft_api::proto::policy::{
    self as proto, Authorization, AuthorizationRule, DefaultAuthorization, PortRange,
};

use crate::discovery::Store;
use crate::discovery::file::parse;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, annotations: {policy.weft.io/default: authenticated}}
---
apiVersion: v1
kind: Namespace
metadata: {name: lab, annotations: {policy.weft.io/default: allow-all-please}}
---
apiVersion: v1
kind: Pod
metadata: {name: orders-1, namespace: shop, labels: {app: orders, tier: back}}
spec:
  serviceAccountName: orders
  containers: [{name: app, ports: [{name: http, containerPort: 8080}, {name: admin, containerPort: 9090}]}]
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  serviceAccountName: web
  containers: [{name: app}]
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: lab, labels: {app: probe}}
spec:
  containers: [{name: app}]
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  selector: {app: orders}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-readers, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: orders}]
  action: ALLOW
  enforcementLevel: Application
  rules:
    - sources:
        - {type: ServiceAccount, serviceAccount: {name: web}}
        - {type: ServiceAccount, serviceAccount: {namespace: lab, name: "*"}}
        - {type: SPIFFE, spiffe: "spiffe://partner.example/ns/x/sa/y"}
      http:
        - {methods: [GET], path: {type: PathPrefix, value: /orders/}}
        - grpc: {service: shop.Orders, method: Get}
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Pod, selector: {matchLabels: {tier: back}}}]
  action: DENY
  enforcementLevel: Network
  rules:
    - networkAttributes: {ports: [9090]}
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec:
  targetRefs:
    - {kind: Pod, selector: {matchLabels: {app: web}}}
    - {kind: Deployment, name: web}
  action: ALLOW
  enforcementLevel: Network
  rules:
    - sources: [{type: Group, spiffe: "x"}]
    - sources: [{type: SPIFFE, spiffe: "spiffe://cluster.local/ns/shop/sa/orders"}]
      http: [{methods: [GET]}]
    - sources: [{type: ServiceAccount, serviceAccount: {name: orders}}]
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: lab}
spec:
  targetRefs: [{kind: Pod, selector: {}}]
  action: Allow
  enforcementLevel: Network
  rules: [{}]
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

fn authorization(store: &Store, ns: &str, pod: &str) -> Authorization {
    store
        .policy_for(&(ns.into(), pod.into()))
        .authorization
        .expect("a known pod has its authorization")
}

fn port(p: u32) -> PortRange {
    PortRange { first: p, last: p }
}

fn invalid(store: &Store, reason: &str) -> f64 {
    store
        .metrics()
        .invalid_count("authorization_policy", reason)
}

#[test]
fn a_service_target_covers_the_pods_it_selects_on_the_ports_it_routes_to() {
    let store = store();
    let orders = authorization(&store, "shop", "orders-1");
    assert_eq!(
        orders.default,
        DefaultAuthorization::DefaultAuthenticated as i32
    );
    let names: Vec<&str> = orders.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["shop/no-admin", "shop/orders-readers"]);
    let readers = &orders.policies[1];
    assert!(!readers.deny);
    assert!(!readers.any_port);
    // targetPort `http` is this pod's 8080: the policy says nothing of 9090.
    assert_eq!(readers.ports, [port(8080)]);
    assert_eq!(
        readers.rules,
        [AuthorizationRule {
            index: 0,
            any_source: false,
            identities: vec![
                "spiffe://cluster.local/ns/shop/sa/web".into(),
                "spiffe://partner.example/ns/x/sa/y".into(),
            ],
            identity_prefixes: vec!["spiffe://cluster.local/ns/lab/sa/".into()],
            any_port: true,
            ports: vec![],
            http: vec![
                proto::HttpMatch {
                    methods: vec!["GET".into()],
                    // Prefixes are whole segments: the trailing `/` is not
                    // part of the match.
                    path: Some(proto::PathMatch {
                        kind: Some(proto::path_match::Kind::Prefix("/orders".into())),
                    }),
                    grpc: None,
                },
                proto::HttpMatch {
                    methods: vec![],
                    path: None,
                    grpc: Some(proto::GrpcMatch {
                        service: "shop.Orders".into(),
                        method: "Get".into(),
                    }),
                },
            ],
        }]
    );
    let no_admin = &orders.policies[0];
    assert!(no_admin.deny && no_admin.any_port);
    assert!(no_admin.rules[0].any_source);
    assert_eq!(no_admin.rules[0].ports, [port(9090)]);
    assert!(!orders.cluster_networks.is_empty());
}

#[test]
fn a_broken_allow_rule_allows_nothing_and_a_bad_target_targets_nothing() {
    let store = store();
    let web = authorization(&store, "shop", "web-1");
    let names: Vec<&str> = web.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["shop/broken"],
        "not the Service's policy: it selects no web pod"
    );
    let rules = &web.policies[0].rules;
    // An unknown source type; HTTP matches at the Network level: both
    // match nobody. The third rule stands.
    for broken in &rules[..2] {
        assert!(!broken.any_source && broken.identities.is_empty());
        assert!(broken.identity_prefixes.is_empty());
    }
    assert_eq!(
        rules[2].identities,
        ["spiffe://cluster.local/ns/shop/sa/orders"]
    );
    assert_eq!(invalid(&store, "bad_source"), 1.0);
    assert_eq!(invalid(&store, "http_needs_application"), 1.0);
    assert_eq!(invalid(&store, "bad_target"), 1.0);
}

#[test]
fn an_unknown_action_or_default_fails_closed() {
    let store = store();
    let probe = authorization(&store, "lab", "probe");
    // `allow-all-please` is no default: read as deny, and reported.
    assert_eq!(probe.default, DefaultAuthorization::DefaultDeny as i32);
    // `Allow` is no action: the policy denies everything it targets.
    let typo = &probe.policies[0];
    assert!(typo.deny && typo.any_port);
    assert_eq!(typo.rules.len(), 1);
    assert!(typo.rules[0].any_source && typo.rules[0].any_port);
    assert!(typo.rules[0].http.is_empty());
    assert_eq!(invalid(&store, "bad_action"), 1.0);
    assert_eq!(
        store
            .metrics()
            .invalid_count("annotation", "bad_authorization_default"),
        1.0
    );
}

#[test]
fn policy_streams_follow_services_and_policies() {
    let store = store();
    let mut inputs = store.policy_inputs();
    inputs.borrow_and_update();
    let yaml = r#"
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: orders}]
  action: ALLOW
  enforcementLevel: Network
  rules: [{sources: [{type: ServiceAccount, serviceAccount: {name: web}}]}]
"#;
    for object in parse(Path::new("more.yaml"), yaml).unwrap() {
        store.apply(object);
    }
    assert!(inputs.has_changed().unwrap());
    let orders = authorization(&store, "shop", "orders-1");
    assert!(orders.policies.iter().any(|p| p.name == "shop/web-only"));
}
