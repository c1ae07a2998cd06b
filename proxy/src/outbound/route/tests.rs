use std::net::SocketAddr;

use weft_api::proto::destination::{
    Header, HeaderModifier, HttpFilter, HttpRetry, HttpRouteMatch, PathMatch, RequestRedirect,
    RouteRef, WeightedBackendRef, http_filter, path_match,
};

use super::*;
use crate::transport::Target;

fn backend(name: &str, port: u16) -> BackendSet {
    BackendSet {
        service: Arc::new(name.to_string()),
        weight: 1,
        endpoints: vec![Arc::new(EndpointState::new(Target::plain(
            SocketAddr::from(([10, 0, 0, 1], port)),
        )))],
        unresolved: None,
    }
}

fn prefix(rule: u32, value: &str) -> HttpRouteMatch {
    HttpRouteMatch {
        rule,
        path: Some(PathMatch {
            kind: path_match::Kind::Prefix.into(),
            value: value.into(),
        }),
        ..Default::default()
    }
}

fn rule(name: &str, backends: Vec<WeightedBackendRef>) -> HttpRouteRule {
    HttpRouteRule {
        route: Some(RouteRef {
            kind: "HTTPRoute".into(),
            namespace: "demo".into(),
            name: name.into(),
            rule: 0,
            rule_name: String::new(),
        }),
        backends,
        ..Default::default()
    }
}

fn to(index: u32, weight: u32) -> WeightedBackendRef {
    WeightedBackendRef {
        backend: Some(index),
        weight,
        unresolved: String::new(),
    }
}

fn table() -> (RouteTable, Routes) {
    let mut api = rule("api", vec![to(1, 1)]);
    api.request_timeout_ms = Some(1500);
    api.backend_request_timeout_ms = Some(500);
    api.retry = Some(HttpRetry {
        codes: vec![503],
        attempts: 3,
        backoff_ms: 10,
    });
    api.filters = vec![
        HttpFilter {
            filter: Some(http_filter::Filter::RequestHeaderModifier(HeaderModifier {
                set: vec![Header {
                    name: "x-route".into(),
                    value: "api".into(),
                }],
                ..Default::default()
            })),
        },
        HttpFilter {
            filter: Some(http_filter::Filter::ResponseHeaderModifier(
                HeaderModifier {
                    add: vec![Header {
                        name: "x-served-by".into(),
                        value: "api".into(),
                    }],
                    ..Default::default()
                },
            )),
        },
    ];
    let mut old = rule("old", Vec::new());
    old.filters = vec![HttpFilter {
        filter: Some(http_filter::Filter::RequestRedirect(RequestRedirect {
            hostname: "new.example".into(),
            ..Default::default()
        })),
    }];
    let broken = rule(
        "broken",
        vec![WeightedBackendRef {
            backend: None,
            weight: 1,
            unresolved: "InvalidKind".into(),
        }],
    );
    let wire = HttpRouteTable {
        rules: vec![rule("web", vec![to(0, 9), to(1, 1)]), api, old, broken],
        matches: vec![
            prefix(1, "/api"),
            prefix(2, "/old"),
            prefix(3, "/broken"),
            prefix(0, "/web"),
            // Refers to a rule that does not exist: left out.
            prefix(7, "/"),
        ],
        backends: Vec::new(),
    };
    let parent = Routes {
        service: Arc::new("web.demo".into()),
        ..Routes::default()
    };
    let sets = [backend("web-v1.demo", 1), backend("web-v2.demo", 2)];
    (RouteTable::build(&wire, &sets, &parent), parent)
}

fn get(path: &str) -> Request<()> {
    Request::get(path).header("host", "web").body(()).unwrap()
}

fn forward(table: &RouteTable, req: &mut Request<()>) -> Arc<RouteRule> {
    match table.route(req, 80, "web.demo") {
        Decision::Forward(rule) => rule,
        Decision::Respond(resp, _) => panic!("answered {}", resp.status()),
    }
}

#[test]
fn a_rule_brings_its_backends_and_policy() {
    let (table, _) = table();
    let mut req = get("/api/users");
    let api = forward(&table, &mut req);
    assert_eq!(&*api.name, "HTTPRoute demo/api rule 0");
    assert_eq!(
        (
            api.labels.route_kind.as_str(),
            api.labels.route_namespace.as_str(),
            api.labels.route_name.as_str()
        ),
        ("HTTPRoute", "demo", "api")
    );
    assert_eq!(req.headers()["x-route"], "api");
    let routes = &api.routes;
    assert_eq!(routes.backends.len(), 1);
    assert_eq!(routes.backends[0].service.as_str(), "web-v2.demo");
    assert_eq!(routes.policy.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(
        routes.policy.backend_timeout,
        Some(Duration::from_millis(500))
    );
    assert_eq!(routes.retry.limit, 3);
    assert_eq!(routes.retry.backoff, Duration::from_millis(10));
    assert!(routes.retry.retry_on.status(503) && !routes.retry.retry_on.status(500));
    let mut resp = Response::new(BoxBody::default());
    api.on_response(&mut resp);
    assert_eq!(resp.headers()["x-served-by"], "api");
    // Endpoint state is shared with the table's backends.
    assert_eq!(table.endpoints().count(), 3);
}

#[test]
fn weights_split_within_a_rule() {
    let (table, _) = table();
    let web = forward(&table, &mut get("/web"));
    let v2 = (0..2000)
        .filter(|_| web.routes.pick_backend().unwrap().service.as_str() == "web-v2.demo")
        .count();
    assert!((100..320).contains(&v2), "{v2} of 2000 to the 10% backend");
}

#[test]
fn redirects_and_misses_are_answered_at_once() {
    let (table, _) = table();
    match table.route(&mut get("/old/page"), 80, "web.demo") {
        Decision::Respond(resp, route) => {
            assert!(route.is_some(), "a redirect is its route's");
            assert_eq!(resp.status(), 302);
            assert_eq!(resp.headers()["location"], "http://new.example/old/page");
        }
        other => panic!("{other:?}"),
    }
    match table.route(&mut get("/elsewhere"), 80, "web.demo") {
        Decision::Respond(resp, route) => {
            assert_eq!(route, None, "a miss has no route");
            assert_eq!(resp.status(), 404);
            assert!(
                resp.headers()[crate::http::PROXY_ERROR_HEADER]
                    .to_str()
                    .unwrap()
                    .starts_with("no route of web.demo matches GET /elsewhere")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unresolved_backend_is_refused_with_its_reason() {
    let (table, _) = table();
    let broken = forward(&table, &mut get("/broken"));
    let error = broken
        .routes
        .no_endpoint(broken.routes.pick_backend().unwrap_err());
    let resp = error.into_response();
    assert_eq!(resp.status(), 500);
    assert!(
        resp.headers()[crate::http::PROXY_ERROR_HEADER]
            .to_str()
            .unwrap()
            .contains("(InvalidKind)")
    );
}
