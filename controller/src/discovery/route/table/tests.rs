use std::path::Path;

use weft_api::proto::destination::Endpoint;

use super::*;
use crate::discovery::Object;
use crate::discovery::file::parse;

fn routes(yaml: &str) -> Vec<(Key, RouteInfo)> {
    parse(Path::new("routes.yaml"), yaml)
        .unwrap()
        .into_iter()
        .filter_map(|o| match o {
            Object::Route(k, r) => Some((k, r)),
            _ => None,
        })
        .collect()
}

fn web() -> Key {
    ("demo".into(), "web".into())
}

fn names(chosen: &[Applicable<'_>]) -> Vec<String> {
    chosen
        .iter()
        .map(|a| format!("{}/{}", a.key.0, a.key.1))
        .collect()
}

const PRODUCER_AND_CONSUMER: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: producer, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web-v1, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: client}
spec:
  parentRefs: [{kind: Service, name: web, namespace: demo}]
  rules: [{backendRefs: [{name: web-v2, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other-port, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web, port: 8080}]
  rules: [{backendRefs: [{name: web-v1, port: 8080}]}]
"#;

#[test]
fn a_consumer_route_replaces_the_producers_for_its_namespace_only() {
    let all = routes(PRODUCER_AND_CONSUMER);
    let attached = || all.iter().map(|(k, r)| (k, r));
    assert_eq!(
        names(&applicable(attached(), &web(), 80, "client")),
        ["client/consumer"]
    );
    assert_eq!(
        names(&applicable(attached(), &web(), 80, "demo")),
        ["demo/producer"]
    );
    assert_eq!(
        names(&applicable(attached(), &web(), 80, "third")),
        ["demo/producer"]
    );
    assert_eq!(
        names(&applicable(attached(), &web(), 8080, "third")),
        ["demo/other-port"]
    );
    // The consumer's route has no port, so it covers 8080 too.
    assert_eq!(
        names(&applicable(attached(), &web(), 8080, "client")),
        ["client/consumer"]
    );
}

#[test]
fn matches_are_ordered_by_precedence_and_backends_shared() {
    let all = routes(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b, namespace: demo, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - matches:
    - path: {value: /}
    - path: {value: /api/v1}
    - path: {type: Exact, value: /api}
    - path: {value: /api}
      method: GET
    - path: {value: /api}
      headers: [{name: a, value: "1"}, {name: b, value: "2"}]
    - path: {type: RegularExpression, value: "/x.*"}
    backendRefs: [{name: web-v1, port: 80}, {name: gone, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a, namespace: demo, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - matches: [{path: {value: /api}}]
    backendRefs: [{name: web-v1, port: 80}]
"#,
    );
    let chosen = applicable(all.iter().map(|(k, r)| (k, r)), &web(), 80, "demo");
    let mut resolved = Vec::new();
    let table = build(&chosen, |t| {
        resolved.push(t.service.1.clone());
        (t.service.1 != "gone").then(|| Backend {
            service: format!("{}.{}", t.service.1, t.service.0),
            weight: 1,
            endpoints: vec![Endpoint::default()],
        })
    });
    let order: Vec<String> = table
        .matches
        .iter()
        .map(|m| {
            let p = m.path.as_ref().unwrap();
            let route = table.rules[m.rule as usize].route.as_ref().unwrap();
            format!(
                "{}:{:?}:{}:{}{}",
                route.name,
                p.kind(),
                p.value,
                m.method,
                m.headers.len()
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            "b:Exact:/api:0",
            "b:Regex:/x.*:0",
            "b:Prefix:/api/v1:0",
            "b:Prefix:/api:GET0",
            "b:Prefix:/api:2",
            // Equal matches: the older route first.
            "a:Prefix:/api:0",
            "b:Prefix:/:0",
        ]
    );
    assert_eq!(
        table.backends.len(),
        1,
        "web-v1 is one backend for both routes"
    );
    assert_eq!(resolved, ["web-v1", "gone"], "each target resolved once");
    let b_rule = table
        .rules
        .iter()
        .find(|r| r.route.as_ref().unwrap().name == "b")
        .unwrap();
    assert_eq!(b_rule.backends[1].backend, None);
    assert_eq!(b_rule.backends[1].unresolved, "BackendNotFound");
}
