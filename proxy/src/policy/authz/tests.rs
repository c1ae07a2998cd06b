//! The authorization decision as a truth table: no sockets, no root.

use http::Method;
use weft_api::identity::SpiffeId;
use weft_api::proto::policy::{self as proto, DefaultAuthorization, PortRange};

use super::*;

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

fn port(p: u32) -> PortRange {
    PortRange { first: p, last: p }
}

fn rule(
    identities: &[&str],
    prefixes: &[&str],
    http: Vec<proto::HttpMatch>,
) -> proto::AuthorizationRule {
    proto::AuthorizationRule {
        index: 0,
        any_source: identities.is_empty() && prefixes.is_empty(),
        identities: identities.iter().map(|s| s.to_string()).collect(),
        identity_prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
        any_port: true,
        ports: vec![],
        http,
    }
}

fn get(path: proto::path_match::Kind) -> proto::HttpMatch {
    proto::HttpMatch {
        methods: vec!["GET".into()],
        path: Some(proto::PathMatch { kind: Some(path) }),
        grpc: None,
    }
}

fn grpc(service: &str, method: &str) -> proto::HttpMatch {
    proto::HttpMatch {
        methods: vec![],
        path: None,
        grpc: Some(proto::GrpcMatch {
            service: service.into(),
            method: method.into(),
        }),
    }
}

fn policy(
    name: &str,
    deny: bool,
    ports: Option<Vec<PortRange>>,
    rules: Vec<proto::AuthorizationRule>,
) -> proto::AuthorizationPolicy {
    proto::AuthorizationPolicy {
        name: name.into(),
        deny,
        any_port: ports.is_none(),
        ports: ports.unwrap_or_default(),
        rules,
    }
}

fn authz(
    default: DefaultAuthorization,
    policies: Vec<proto::AuthorizationPolicy>,
) -> Authorization {
    Authorization::compile(Some(&proto::Authorization {
        default: default as i32,
        cluster_networks: vec!["10.0.0.0/8".into()],
        policies,
    }))
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

/// The shop's orders: web may GET under /orders and call shop.Orders/Get;
/// anyone in `ops` may do anything; nobody may reach /orders/admin; the
/// policies cover port 8080 only.
fn orders() -> Authorization {
    authz(
        DefaultAuthorization::DefaultDeny,
        vec![
            policy(
                "shop/readers",
                false,
                Some(vec![port(8080)]),
                vec![
                    rule(
                        &[WEB],
                        &[],
                        vec![
                            get(proto::path_match::Kind::Prefix("/orders".into())),
                            grpc("shop.Orders", "Get"),
                        ],
                    ),
                    rule(&[], &["spiffe://cluster.local/ns/ops/sa/"], vec![]),
                ],
            ),
            policy(
                "shop/no-admin",
                true,
                Some(vec![port(8080)]),
                vec![rule(
                    &[],
                    &[],
                    vec![proto::HttpMatch {
                        methods: vec![],
                        path: Some(proto::PathMatch {
                            kind: Some(proto::path_match::Kind::Prefix("/orders/admin".into())),
                        }),
                        grpc: None,
                    }],
                )],
            ),
        ],
    )
}

fn request<'a>(method: &'a Method, path: &'a str) -> Subject<'a> {
    Subject::Request { method, path }
}

fn client(identity: Option<&SpiffeId>) -> Client<'_> {
    Client {
        ip: "10.1.2.3".parse().unwrap(),
        identity,
    }
}

fn allowed(a: &Authorization, who: Option<&SpiffeId>, port: u16, subject: Subject<'_>) -> bool {
    a.decide(client(who), port, subject) == Verdict::Allow
}

#[test]
fn methods_paths_and_grpc_services_decide_per_request() {
    let a = orders();
    let web = id("shop", "web");
    let (get_m, post) = (Method::GET, Method::POST);
    let table = [
        (&get_m, "/orders", true),
        (&get_m, "/orders/42?full=1", true),
        (&get_m, "/ordersx", false),
        (&post, "/orders/42", false),
        (&get_m, "/", false),
        (&post, "/shop.Orders/Get", true),
        (&post, "/shop.Orders/Delete", false),
        // Dot segments do not reach around a prefix.
        (&get_m, "/orders/../admin", false),
        (&get_m, "/orders/%2e%2e/admin", false),
        (&get_m, "//orders/1", true),
    ];
    for (method, path, expected) in table {
        assert_eq!(
            allowed(&a, Some(&web), 8080, request(method, path)),
            expected,
            "{method} {path}"
        );
    }
}

#[test]
fn deny_beats_allow_and_an_unreadable_path_is_denied() {
    let a = orders();
    let ops = id("ops", "oncall");
    assert!(allowed(
        &a,
        Some(&ops),
        8080,
        request(&Method::DELETE, "/orders/1")
    ));
    assert_eq!(
        a.decide(
            client(Some(&ops)),
            8080,
            request(&Method::GET, "/orders/admin/users")
        ),
        Verdict::Deny {
            reason: AuthzReason::Denied,
            policy: "shop/no-admin".into()
        }
    );
    // Through `.` segments and encoded dots alike.
    assert!(!allowed(
        &a,
        Some(&ops),
        8080,
        request(&Method::GET, "/orders/./admin")
    ));
    assert!(!allowed(
        &a,
        Some(&ops),
        8080,
        request(&Method::GET, "/x/%2E%2E/orders/admin")
    ));
    // An encoded slash has no safe reading: the DENY path matches it.
    assert!(!allowed(
        &a,
        Some(&ops),
        8080,
        request(&Method::GET, "/orders%2Fadmin")
    ));
}

#[test]
fn ports_outside_every_policy_fall_to_the_default() {
    let a = orders();
    let web = id("shop", "web");
    // 9090 is covered by nothing: the namespace default (deny) decides.
    assert_eq!(
        a.decide(client(Some(&web)), 9090, request(&Method::GET, "/orders")),
        Verdict::Deny {
            reason: AuthzReason::Default,
            policy: "default:deny".into()
        }
    );
    // On 8080 an unlisted identity is refused by the ALLOW policy.
    assert_eq!(
        a.decide(
            client(Some(&id("shop", "cart"))),
            8080,
            request(&Method::GET, "/orders")
        ),
        Verdict::Deny {
            reason: AuthzReason::NotAuthorized,
            policy: "shop/readers".into()
        }
    );
    // Plaintext matches no identity.
    assert!(!allowed(&a, None, 8080, request(&Method::GET, "/orders")));
}

#[test]
fn http_rules_on_a_connection_match_only_in_deny_policies() {
    let a = orders();
    // web's rule has HTTP matches: a TCP connection cannot be checked
    // against them, so it is not allowed...
    assert!(!allowed(
        &a,
        Some(&id("shop", "web")),
        8080,
        Subject::Connection
    ));
    // ...and the DENY rule with a path matches every connection on 8080.
    assert_eq!(
        a.decide(client(Some(&id("ops", "x"))), 8080, Subject::Connection),
        Verdict::Deny {
            reason: AuthzReason::Denied,
            policy: "shop/no-admin".into()
        }
    );
}

#[test]
fn defaults() {
    let mesh = id("a", "b");
    let outside = Client {
        ip: "192.0.2.1".parse().unwrap(),
        identity: None,
    };
    let inside = client(None);
    let cases = [
        (DefaultAuthorization::DefaultAll, [true, true, true]),
        (
            DefaultAuthorization::DefaultAuthenticated,
            [true, false, false],
        ),
        (DefaultAuthorization::DefaultCluster, [true, true, false]),
        (DefaultAuthorization::DefaultDeny, [false, false, false]),
    ];
    for (default, [meshed, in_cluster, beyond]) in cases {
        let a = authz(default, vec![]);
        assert_eq!(
            allowed(&a, Some(&mesh), 80, Subject::Connection),
            meshed,
            "{default:?}"
        );
        let decide = |c| a.decide(c, 80, Subject::Connection) == Verdict::Allow;
        assert_eq!(decide(inside), in_cluster, "{default:?}");
        assert_eq!(decide(outside), beyond, "{default:?}");
    }
    assert!(Authorization::default().is_open());
    assert!(!authz(DefaultAuthorization::DefaultAuthenticated, vec![]).is_open());
}

#[test]
fn an_allow_policy_without_rules_allows_nothing_in_its_scope() {
    let a = authz(
        DefaultAuthorization::DefaultAll,
        vec![policy("ns/lockdown", false, None, vec![])],
    );
    assert!(!allowed(&a, Some(&id("a", "b")), 80, Subject::Connection));
}

#[test]
fn paths_normalize_as_an_app_reads_them() {
    for (raw, normal) in [
        ("/", Some("/")),
        ("", Some("/")),
        ("/a//b/", Some("/a/b/")),
        ("/a/./b/../c", Some("/a/c")),
        ("/a/%2e/b", Some("/a/b")),
        ("/..", None),
        ("/a%2fb", None),
        ("/a\\b", None),
        ("/a?x=/../..", Some("/a")),
    ] {
        assert_eq!(normalize(raw).as_deref(), normal, "{raw:?}");
    }
}
