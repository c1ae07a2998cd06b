//! Gateway API routes end to end: HTTPRoutes in the controller's discovery
//! files, real proxies with mTLS between them, and the demo server saying
//! what it received (`x-seen-*`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use weft_testbed::Pod;
use weft_testbed::cluster::{Cluster, SERVICE_PORT, load};
use weft_testbed::identity::ControllerOptions;

const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const V1_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const V2_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);

fn web() -> SocketAddr {
    SocketAddr::from((WEB_IP, SERVICE_PORT))
}

/// `web` (served by `web-0`), `web-v1` (`v1-a`) and `web-v2` (`v2-a`),
/// each server's app with `env`.
async fn versions(label: &str, v1_env: &[(&str, &str)]) -> Cluster {
    versions_annotated(label, &[], v1_env).await
}

/// [`versions`], with `web_annotations` on the `web` Service.
async fn versions_annotated(
    label: &str,
    web_annotations: &[(&str, &str)],
    v1_env: &[(&str, &str)],
) -> Cluster {
    let c = Cluster::new(label, ControllerOptions::default())
        .await
        .expect("cluster");
    c.service("web", WEB_IP, web_annotations);
    c.service("web-v1", V1_IP, &[]);
    c.service("web-v2", V2_IP, &[]);
    c.add_server("web-0", "web", &[]).await.expect("web-0");
    c.add_server("v1-a", "web-v1", v1_env).await.expect("v1-a");
    c.add_server("v2-a", "web-v2", &[]).await.expect("v2-a");
    c
}

/// A response as a test looks at it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    took: Duration,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    fn served_by(&self) -> &str {
        self.header("x-served-by")
    }
}

/// One request from `pod` to `web`, on a connection of its own.
async fn send(pod: &Pod, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let started = Instant::now();
    let stream = pod.connect(web()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "web.demo");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("response");
    Answer {
        status: resp.status().as_u16(),
        headers: resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect(),
        took: started.elapsed(),
    }
}

async fn get(c: &Cluster, path: &str) -> Answer {
    send(&c.client, "GET", path, &[]).await
}

/// Polls until `check` holds for a GET of `path` (a route reaches the
/// proxy a moment after the controller loaded it).
async fn eventually(c: &Cluster, path: &str, check: impl Fn(&Answer) -> bool) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(c, path).await;
        if check(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "GET {path}: still {answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const MATCHES_AND_FILTERS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /app}, headers: [{name: x-canary, value: "yes"}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: canary}], remove: [x-secret]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-canary-route, value: "1"}]}
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /app}}]
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /query}, queryParams: [{name: v, value: "2"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /query}, method: POST}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /query}}]
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/items/[0-9]+"}}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: rewritten.demo, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: new.demo, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: web-v1, port: 80, weight: 3}, {name: web-v2, port: 80, weight: 1}]
  - matches: [{path: {type: PathPrefix, value: /ghost}}]
    backendRefs: [{name: nobody, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /zero}}]
    backendRefs: [{name: web-v1, port: 80, weight: 0}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_match_filter_split_and_update_live() {
    let c = versions("routes", &[]).await;
    c.sync(false).await.expect("publish");
    // Without a route, the Service's own pods answer.
    assert_eq!(get(&c, "/").await.served_by(), "web-0");

    c.routes(MATCHES_AND_FILTERS);
    c.sync(true).await.expect("routes");
    eventually(&c, "/exact", |a| a.served_by() == "v2-a").await;

    // Precedence: an exact path, a header over the same prefix without.
    assert_eq!(get(&c, "/exact/not").await.status, 404);
    let canary = send(
        &c.client,
        "GET",
        "/app/page",
        &[("x-canary", "yes"), ("x-secret", "s3")],
    )
    .await;
    assert_eq!(canary.served_by(), "v2-a", "{canary:?}");
    assert_eq!(canary.header("x-seen-x-route"), "canary");
    assert_eq!(canary.header("x-seen-x-secret"), "", "removed");
    assert_eq!(canary.header("x-canary-route"), "1");
    assert_eq!(get(&c, "/app/page").await.served_by(), "v1-a");
    // Query parameters, then the method, then the bare prefix.
    assert_eq!(get(&c, "/query?v=2").await.served_by(), "v2-a");
    assert_eq!(
        send(&c.client, "POST", "/query", &[]).await.served_by(),
        "v2-a"
    );
    assert_eq!(get(&c, "/query?v=3").await.served_by(), "v1-a");
    // A regular expression matches the whole path.
    assert_eq!(get(&c, "/items/42").await.served_by(), "v2-a");
    assert_eq!(get(&c, "/items/42/x").await.status, 404);

    // Rewrite: the server sees the new path and host.
    let rewritten = get(&c, "/v1/users?page=2").await;
    assert_eq!(rewritten.served_by(), "v1-a");
    assert_eq!(rewritten.header("x-seen-path"), "/v2/users?page=2");
    assert_eq!(rewritten.header("x-seen-host"), "rewritten.demo");

    // Redirect: answered by the proxy, no backend.
    let moved = get(&c, "/old/page?x=1").await;
    assert_eq!(moved.status, 301);
    assert_eq!(moved.header("location"), "http://new.demo/new/page?x=1");
    assert_eq!(moved.served_by(), "");

    // A miss is 404 from the proxy, saying so; an unresolved backend or
    // no weight, 500.
    let miss = get(&c, "/nowhere").await;
    assert_eq!(miss.status, 404);
    assert!(
        miss.header("weft-proxy-error")
            .starts_with("no route of web.demo"),
        "{miss:?}"
    );
    let ghost = get(&c, "/ghost").await;
    assert_eq!(ghost.status, 500);
    assert!(
        ghost.header("weft-proxy-error").contains("BackendNotFound"),
        "{ghost:?}"
    );
    assert_eq!(get(&c, "/zero").await.status, 500);

    // Weights within a rule.
    let tally = load(
        &c.client,
        web(),
        "/split",
        4,
        Some(2000),
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    assert!(
        tally.failed.is_empty(),
        "{:?}",
        &tally.failed[..5.min(tally.failed.len())]
    );
    let v2 = tally.share("v2-");
    println!(
        "3:1 route split over {} requests: v2 {:.1} %",
        tally.total(),
        100.0 * v2
    );
    assert!(
        (0.19..=0.31).contains(&v2),
        "v2 share {v2}: {:?}",
        tally.by_server
    );

    // Live: the route changes, then goes; the Service answers again.
    c.routes(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules: [{backendRefs: [{name: web-v2, port: 80}]}]
"#,
    );
    c.sync(true).await.expect("changed route");
    eventually(&c, "/nowhere", |a| a.served_by() == "v2-a").await;
    c.routes("");
    c.sync(true).await.expect("route removed");
    eventually(&c, "/", |a| a.served_by() == "web-0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_route_wins_for_its_namespace_only() {
    let c = versions("consumer", &[]).await;
    let other = c.add_client("client-other", "other").await.expect("client");
    c.routes(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: producer, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules: [{backendRefs: [{name: web-v1, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: other}
spec:
  parentRefs: [{kind: Service, name: web, namespace: demo}]
  rules:
  - backendRefs: [{name: web-v2, namespace: demo, port: 80}]
"#,
    );
    c.sync(false).await.expect("publish");
    eventually(&c, "/", |a| a.served_by() == "v1-a").await;
    // The consumer route names a backend in another namespace, which needs
    // a ReferenceGrant: refused with 500, and the producer's route does not
    // apply to this namespace any more.
    let answer = send(&other, "GET", "/", &[]).await;
    assert_eq!(answer.status, 500, "{answer:?}");
    assert!(
        answer
            .header("weft-proxy-error")
            .contains("RefNotPermitted")
    );

    // A consumer route to a Service of its own namespace's choosing in the
    // producer's namespace without a cross-namespace backend: `web`'s own.
    c.routes(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: producer, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules: [{backendRefs: [{name: web-v1, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: other}
spec:
  parentRefs: [{kind: Service, name: web, namespace: demo}]
  rules:
  - matches: [{path: {value: /only-here}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: consumer.other}
"#,
    );
    c.sync(false).await.expect("publish");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = send(&other, "GET", "/only-here", &[]).await;
        if answer.status == 302 {
            assert_eq!(answer.header("location"), "http://consumer.other/only-here");
            break;
        }
        assert!(Instant::now() < deadline, "{answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only the consumer's rules apply to its namespace: `/` matches none.
    assert_eq!(send(&other, "GET", "/", &[]).await.status, 404);
    // The producer's namespace still gets the producer's route.
    assert_eq!(get(&c, "/only-here").await.served_by(), "v1-a");

    // Each client's request metrics name the route that applied to it.
    let producer = c.client.metrics().await.expect("metrics");
    let consumer = other.metrics().await.expect("metrics");
    let by_route = |scrape: &weft_testbed::metrics::Scrape, ns: &str, name: &str, status: &str| {
        scrape.sum(
            "response_total",
            &[
                ("direction", "outbound"),
                ("route_kind", if ns.is_empty() { "" } else { "HTTPRoute" }),
                ("route_namespace", ns),
                ("route_name", name),
                ("status_code", status),
            ],
        )
    };
    assert!(by_route(&producer, "demo", "producer", "200") >= 1.0);
    assert_eq!(by_route(&producer, "other", "consumer", "302"), 0.0);
    assert!(by_route(&consumer, "other", "consumer", "302") >= 1.0);
    // A request no rule matched has no route.
    assert!(by_route(&consumer, "", "", "404") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeouts_and_retries_work_through_the_route() {
    // v1 fails every request with 503; v2 is healthy.
    let c = versions("route-policy", &[("DEMO_FAIL_STATUS", "503")]).await;
    c.routes(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - matches: [{path: {value: /delay}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {value: /retried}}]
    retry: {codes: [503], attempts: 3}
    backendRefs: [{name: web-v1, port: 80}, {name: web-v2, port: 80}]
  - matches: [{path: {value: /not-retried}}]
    backendRefs: [{name: web-v1, port: 80}]
"#,
    );
    c.sync(false).await.expect("publish");
    eventually(&c, "/not-retried", |a| a.status == 503).await;

    let slow = get(&c, "/delay?ms=3000").await;
    assert_eq!(slow.status, 504, "{slow:?}");
    assert!(
        slow.header("weft-proxy-error")
            .contains("timed out after 300ms")
    );
    assert!(
        slow.took < Duration::from_millis(2000),
        "took {:?}",
        slow.took
    );
    assert_eq!(get(&c, "/delay?ms=10").await.status, 200);

    // Half of the requests land on the failing backend first; the retry
    // takes them to the other.
    let mut served = BTreeMap::<String, u32>::new();
    for _ in 0..40 {
        let answer = get(&c, "/retried").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        *served.entry(answer.served_by().to_string()).or_default() += 1;
    }
    assert_eq!(served.get("v2-a"), Some(&40), "{served:?}");
    let retries = c
        .client
        .metrics()
        .await
        .expect("metrics")
        .sum("retries_total", &[]);
    assert!(retries >= 5.0, "{retries} retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_routes_are_counted_and_the_rest_keeps_working() {
    let c = versions("bad-routes", &[]).await;
    c.routes(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/(unclosed"}}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {value: /zero}}]
    backendRefs: [{name: web-v2, port: 80, weight: 0}]
  - matches: [{path: {value: /gone}}]
    backendRefs: [{name: nobody, port: 80}]
  - backendRefs: [{name: web-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-nothing, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: ghost}]
  rules: [{backendRefs: [{name: web-v1, port: 80}]}]
"#,
    );
    c.sync(false).await.expect("publish");
    // The bad rule is dropped; the others work.
    eventually(&c, "/(unclosed", |a| a.served_by() == "v1-a").await;
    assert_eq!(get(&c, "/zero").await.status, 500);
    assert_eq!(get(&c, "/gone").await.status, 500);
    let controller = c.controller().clone();
    let scrape = c
        .mesh
        .controller_metrics(&controller)
        .await
        .expect("controller metrics");
    for reason in ["invalid_regex", "zero_total_weight"] {
        assert!(
            scrape.sum(
                "discovery_invalid_config_total",
                &[("kind", "route"), ("reason", reason)]
            ) >= 1.0,
            "{reason} not counted"
        );
    }
    assert!(
        scrape.sum("discovery_objects", &[("kind", "httproute")]) == 2.0,
        "both routes held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_a_copy_and_the_request_is_unaffected() {
    let c = versions("mirror", &[]).await;
    c.sync(false).await.expect("publish");
    // The client subscribes to `web` with its first request.
    assert_eq!(get(&c, "/").await.served_by(), "web-0");
    c.routes(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules:
  - matches: [{path: {value: /mirrored}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: web-v2, port: 80}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: nowhere, port: 80}}}
    backendRefs: [{name: web-v1, port: 80}]
  - backendRefs: [{name: web-v1, port: 80}]
"#,
    );
    c.sync(true).await.expect("routes");
    eventually(&c, "/", |a| a.served_by() == "v1-a").await;
    let v2 = c
        .servers()
        .into_iter()
        .find(|s| s.name == "v2-a")
        .expect("v2-a")
        .pod;
    let seen_by_v2 = || async {
        v2.metrics()
            .await
            .expect("metrics")
            .sum("request_total", &[("direction", "inbound")])
    };
    let before = seen_by_v2().await;
    // Every mirrored request is answered by its own backend; a mirror to a
    // Service that does not exist costs nothing.
    for _ in 0..20 {
        let answer = get(&c, "/mirrored/page").await;
        assert_eq!(
            (answer.status, answer.served_by()),
            (200, "v1-a"),
            "{answer:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen_by_v2().await < before + 20.0 {
        assert!(
            Instant::now() < deadline,
            "web-v2 saw {} mirrored requests of 20",
            seen_by_v2().await - before
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Requests of the other rule are not mirrored.
    for _ in 0..10 {
        assert_eq!(get(&c, "/other").await.served_by(), "v1-a");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen_by_v2().await, before + 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_wins_over_a_split_and_the_annotations_stay_the_defaults() {
    let c = versions_annotated("over-split", &[("timeout.weft.io/request", "300ms")], &[]).await;
    c.split("web", Some(&[("web-v2", 100)]));
    c.sync(false).await.expect("publish");
    eventually(&c, "/", |a| a.served_by() == "v2-a").await;

    // A route for the same Service replaces the split for HTTP.
    c.routes(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: web}]
  rules: [{backendRefs: [{name: web-v1, port: 80}]}]
"#,
    );
    c.sync(true).await.expect("route");
    eventually(&c, "/", |a| a.served_by() == "v1-a").await;
    for _ in 0..10 {
        assert_eq!(get(&c, "/").await.served_by(), "v1-a");
    }
    // The rule sets no timeout: the Service's annotation applies.
    let slow = get(&c, "/delay?ms=2000").await;
    assert_eq!(slow.status, 504, "{slow:?}");
    assert!(slow.took < Duration::from_millis(1500), "{:?}", slow.took);

    // The route removed, the split applies again.
    c.routes("");
    c.sync(true).await.expect("no route");
    eventually(&c, "/", |a| a.served_by() == "v2-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_match_service_method_and_headers() {
    use weft_demo::proto::EchoRequest;
    use weft_demo::proto::echo_client::EchoClient;
    use weft_testbed::objects;

    const GRPC: u16 = 50051;
    let echo_ip = Ipv4Addr::new(10, 96, 0, 20);
    let c = versions("grpc-routes", &[]).await;
    let servers = c.servers();
    for s in servers.iter().filter(|s| s.name != "web-0") {
        c.mesh
            .spawn_demo(&s.pod, "grpc", GRPC, &s.name)
            .await
            .expect("grpc app");
    }
    let pod_ip = |name: &str| servers.iter().find(|s| s.name == name).unwrap().pod.ip;
    // `echo` (both pods), `echo-v1` and `echo-v2`, on a gRPC port.
    let port = [("grpc", GRPC, GRPC)];
    let mut docs = Vec::new();
    for (name, ip, pods) in [
        ("echo", echo_ip, vec!["v1-a", "v2-a"]),
        ("echo-v1", Ipv4Addr::new(10, 96, 0, 21), vec!["v1-a"]),
        ("echo-v2", Ipv4Addr::new(10, 96, 0, 22), vec!["v2-a"]),
    ] {
        docs.push(objects::service(
            "demo",
            name,
            ip,
            &port,
            &serde_json::json!({}),
        ));
        let endpoints: Vec<objects::SliceEndpoint> =
            pods.iter().map(|p| (*p, pod_ip(p), true)).collect();
        docs.push(objects::endpoint_slice("demo", name, &port, &endpoints));
    }
    c.extra_documents(&objects::file(&docs));
    c.routes(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 50051}]
  rules:
  - matches: [{method: {service: weft.demo.Echo, method: Repeat}}]
    backendRefs: [{name: echo-v2, port: 50051}]
  - matches: [{method: {service: weft.demo.Echo}, headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: echo-v2, port: 50051}]
  - matches: [{method: {service: weft.demo.Echo}}]
    backendRefs: [{name: echo-v1, port: 50051}]
"#,
    );
    c.sync(false).await.expect("publish");
    let channel = c
        .client
        .grpc_channel(SocketAddr::from((echo_ip, GRPC)))
        .await
        .expect("channel");
    let mut client = EchoClient::new(channel);
    let request = |message: &str| EchoRequest {
        message: message.into(),
        count: 3,
    };
    // The route reaches the client's proxy a moment after the controller.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut replies = client
            .repeat(request("r"))
            .await
            .expect("repeat")
            .into_inner();
        let first = replies.message().await.expect("reply").expect("one");
        if first.served_by == "v2-a" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Repeat still served by {first:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The exact method goes to v2, every other method of the service to v1.
    for _ in 0..10 {
        let mut replies = client.repeat(request("r")).await.unwrap().into_inner();
        while let Some(reply) = replies.message().await.unwrap() {
            assert_eq!(reply.served_by, "v2-a");
        }
        let said = client.say(request("s")).await.unwrap().into_inner();
        assert_eq!(said.served_by, "v1-a");
    }
    // Of two matches of the same service, the one with a header wins.
    let mut canary = tonic::Request::new(request("c"));
    canary
        .metadata_mut()
        .insert("x-canary", "yes".parse().unwrap());
    let said = client.say(canary).await.unwrap().into_inner();
    assert_eq!(said.served_by, "v2-a");
}
