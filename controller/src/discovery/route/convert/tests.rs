use std::path::Path;

use weft_api::proto::destination::{http_filter, path_match};

use super::*;
use crate::discovery::Object;
use crate::discovery::file::parse;

fn route_of(yaml: &str) -> RouteInfo {
    match parse(Path::new("routes.yaml"), yaml).unwrap().pop() {
        Some(Object::Route(_, info)) => info,
        other => panic!("not a route: {other:?}"),
    }
}

const CANARY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo, generation: 3}
spec:
  parentRefs:
  - {group: "", kind: Service, name: web, port: 80}
  - {name: some-gateway}
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api}
      headers: [{name: X-Canary, value: "yes"}]
      queryParams: [{name: v, type: RegularExpression, value: "[0-9]+"}]
      method: POST
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Route, value: canary}], remove: [X-Drop]}
    backendRefs:
    - {name: web-v2, port: 80, weight: 90}
    - {name: web-v1, port: 80}
    - {name: elsewhere, namespace: other, port: 80}
    timeouts: {request: 1m30s, backendRequest: 500ms}
    retry: {codes: [503], attempts: 3, backoff: 10ms}
  - backendRefs: [{name: web-v1, port: 80}]
"#;

#[test]
fn an_http_route_converts_with_its_matches_filters_and_policy() {
    let route = route_of(CANARY);
    assert_eq!(route.kind, RouteKind::Http);
    assert_eq!(route.generation, 3);
    assert_eq!(
        route.parents,
        vec![Parent {
            service: ("demo".into(), "web".into()),
            port: Some(80),
            reference: ParentRef {
                group: Some(String::new()),
                kind: Some("Service".into()),
                name: "web".into(),
                port: Some(80),
                ..Default::default()
            },
        }],
        "only the Service parent is Weft's"
    );
    assert_eq!((route.rules.len(), route.rules_total), (2, 2));
    let rule = &route.rules[0];
    let m = &rule.matches[0];
    assert_eq!(m.path.as_ref().unwrap().kind(), path_match::Kind::Prefix);
    assert_eq!(m.method, "POST");
    assert!(m.query_params[0].regex && !m.headers[0].regex);
    assert!(matches!(
        &rule.filters[0],
        HttpFilter { filter: Some(http_filter::Filter::RequestHeaderModifier(h)) }
            if h.set[0].name == "x-route" && h.remove == ["x-drop"]
    ));
    assert_eq!(rule.backends[0].weight, 90);
    assert_eq!(rule.backends[1].weight, 1, "weight defaults to 1");
    assert_eq!(rule.backends[2].target, Err(Unresolved::RefNotPermitted));
    assert_eq!(rule.request_timeout_ms, Some(90_000));
    assert_eq!(rule.backend_request_timeout_ms, Some(500));
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(
        (retry.codes.as_slice(), retry.attempts, retry.backoff_ms),
        (&[503][..], 3, 10)
    );
    // A rule without matches matches everything.
    let all = &route.rules[1].matches[0];
    assert_eq!(all.path.as_ref().unwrap().value, "/");
    assert_eq!(route.invalid.len(), 1, "{:?}", route.invalid);
    assert_eq!(route.invalid[0].reason, "RefNotPermitted");
}

#[test]
fn a_bad_rule_is_dropped_and_the_rest_kept() {
    let route = route_of(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/(unclosed"}}]
    backendRefs: [{name: a, port: 80}]
  - filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]
    backendRefs: [{name: a, port: 80}]
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, percent: -1}}]
    backendRefs: [{name: a, port: 80}]
  - timeouts: {request: 1s, backendRequest: 2s}
    backendRefs: [{name: a, port: 80}]
  - timeouts: {request: soon}
  - backendRefs: [{name: a, port: 80}, {name: b}, {kind: Pod, name: c, port: 1}]
  - backendRefs: [{name: a, port: 80, weight: 0}]
  - matches: [{path: {type: FromTheFuture, value: /x}}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{headers: [{type: PathPrefix, name: x, value: y}]}]
    backendRefs: [{name: a, port: 80}]
  - filters: [{type: URLRewrite, urlRewrite: {path: {type: Sideways}}}]
    backendRefs: [{name: a, port: 80}]
"#,
    );
    let reasons: Vec<&str> = route.invalid.iter().map(|i| i.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "invalid_regex",
            "unsupported_filter",
            "unsupported_filter",
            "bad_timeout",
            "bad_timeout",
            "UnsupportedValue",
            "InvalidKind",
            "zero_total_weight",
            "unsupported_match",
            "unsupported_match",
            "unsupported_filter",
        ]
    );
    assert_eq!(route.rules.len(), 2);
    assert_eq!(route.rules[0].index, 5, "the rule keeps its index");
}

#[test]
fn grpc_methods_become_paths() {
    let route = route_of(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: echo, port: 9000}]
  rules:
  - matches:
    - method: {service: echo.Echo, method: Say}
    - method: {service: echo.Echo}
    - method: {method: Say}
    - method: {type: RegularExpression, service: "echo\\..*", method: "S.*"}
      headers: [{name: x-v, value: "2"}]
    backendRefs: [{name: echo-v2, port: 9000}]
"#,
    );
    assert_eq!(route.kind, RouteKind::Grpc);
    let paths: Vec<(path_match::Kind, &str)> = route.rules[0]
        .matches
        .iter()
        .map(|m| {
            let p = m.path.as_ref().unwrap();
            (p.kind(), p.value.as_str())
        })
        .collect();
    assert_eq!(
        paths,
        [
            (path_match::Kind::Exact, "/echo.Echo/Say"),
            (path_match::Kind::Prefix, "/echo.Echo"),
            (path_match::Kind::Regex, "/[^/]+/Say"),
            (path_match::Kind::Regex, "/echo\\..*/S.*"),
        ]
    );
    assert_eq!(route.rules[0].matches[3].headers[0].name, "x-v");
    assert_eq!(
        route.rules[0].backends[0].target.as_ref().unwrap().port,
        9000
    );
}

#[test]
fn gateway_durations() {
    assert_eq!(gateway_duration("1h30m"), Some(5_400_000));
    assert_eq!(gateway_duration("500ms"), Some(500));
    assert_eq!(gateway_duration("0s"), Some(0));
    assert_eq!(gateway_duration("1s500ms"), Some(1_500));
    for bad in ["", "1", "1.5s", "1d", "s", "123456s", "1h1m1s1ms1h", "-1s"] {
        assert_eq!(gateway_duration(bad), None, "{bad}");
    }
}

#[test]
fn a_consumer_route_may_send_on_to_its_parent_only() {
    let route = route_of(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: add-header, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: demo}]
  rules:
  - backendRefs:
    - {name: web, namespace: demo, port: 80}
    - {name: web-v2, namespace: demo, port: 80}
"#,
    );
    let targets: Vec<_> = route.rules[0]
        .backends
        .iter()
        .map(|b| b.target.clone())
        .collect();
    assert_eq!(
        targets,
        [
            Ok(BackendTarget {
                service: ("demo".into(), "web".into()),
                port: 80
            }),
            Err(Unresolved::RefNotPermitted)
        ]
    );
}

#[test]
fn request_mirrors_convert_with_their_share_and_target() {
    let route = route_of(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, percent: 25}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, fraction: {numerator: 1, denominator: 3}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: far, namespace: other, port: 80}}}
    backendRefs: [{name: web-v1, port: 80}]
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, percent: 101}}]
"#,
    );
    let shares: Vec<u32> = route.rules[0]
        .filters
        .iter()
        .filter_map(|f| match &f.filter {
            Some(http_filter::Filter::RequestMirror(m)) => Some(m.per_million),
            _ => None,
        })
        .collect();
    assert_eq!(shares, [250_000, 333_333, 1_000_000]);
    assert_eq!(
        route.rules[0].mirrors[0].as_ref().unwrap().service.1,
        "shadow"
    );
    assert_eq!(route.rules[0].mirrors[2], Err(Unresolved::RefNotPermitted));
    assert_eq!(route.rules.len(), 1, "a percent over 100 drops the rule");
    assert!(
        route
            .invalid
            .iter()
            .any(|p| p.reason == "unsupported_filter")
    );
}
