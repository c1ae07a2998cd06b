//! What users see in Prometheus and Grafana, checked against a real
//! Prometheus scraping the mesh on one machine while the demo workloads
//! send HTTP, gRPC and TCP through a TrafficSplit: the counts are the
//! requests sent, latency histograms hold them, every query of every
//! shipped dashboard returns data, and request spans reach an OTLP
//! receiver with each server proxy's span the child of its client proxy's.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use weft_testbed::dashboards;
use weft_testbed::demo::{self, Demo, DemoOptions};
use weft_testbed::otlp::OtlpReceiver;
use weft_testbed::prometheus::Prometheus;
use weft_testbed::{Pod, http_request};

const HTTP_REQUESTS: u64 = 100;
const GRPC_REQUESTS: u64 = 20;
const TCP_CONNECTIONS: u64 = 5;
/// Requests for `/status/503`: retried, then answered 503.
const FAILING_REQUESTS: u64 = 8;

/// A trace the "app" starts, to see the proxies continue it.
const APP_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_sees_the_mesh_as_the_dashboards_show_it() {
    weft_testbed::require_root();
    let mesh = Demo::mesh("observe").expect("mesh");
    // The receiver listens on the node before the proxies start, so their
    // exporters find it at once.
    let otlp = OtlpReceiver::start(&mesh.node(), SocketAddr::from(([0, 0, 0, 0], 4317)))
        .await
        .expect("OTLP receiver");
    let demo = Demo::on(
        mesh,
        DemoOptions {
            trace_collector: Some(format!(
                "http://{}:4317",
                weft_testbed::identity::NODE_GATEWAY
            )),
        },
    )
    .await
    .expect("demo");
    let prometheus = demo.start_prometheus().await.expect("prometheus");
    assert!(demo.admit_pod("web-v1-new").expect("admission review"));

    send_traffic(&demo).await;
    let expected = expected_counts(&demo).await;
    check_counts(&prometheus, &expected).await;
    check_alert_rules(&prometheus).await;
    // rate() needs two samples of a series in its window: wait until every
    // target, and the series the last traffic made, have been scraped
    // that often.
    for metric in [
        "up",
        "response_total",
        "response_latency_ms_bucket",
        "retry_budget_exhausted_total",
        "circuit_breaker_transitions_total",
        "injector_admissions_total",
    ] {
        prometheus
            .wait_value(
                &format!("min(count_over_time({metric}[1m]))"),
                Duration::from_secs(60),
                |v| v >= 2.0,
            )
            .await
            .expect("second scrape");
    }
    check_dashboards(&prometheus).await;
    check_traces(&otlp).await;
}

/// HTTP through the split (one request carrying the app's own
/// `traceparent`), gRPC, opaque TCP, then failing requests that are
/// retried and trip the circuit breaker.
async fn send_traffic(demo: &Demo) {
    let client = &demo.client;
    for _ in 0..HTTP_REQUESTS - 1 {
        let (status, _) = http_request(client, demo.http_addr(), "GET", "/")
            .await
            .expect("HTTP request");
        assert_eq!(status, 200);
    }
    let (status, _) = traced_request(client, demo.http_addr()).await;
    assert_eq!(status, 200);

    use weft_demo::proto::EchoRequest;
    use weft_demo::proto::echo_client::EchoClient;
    let channel = client
        .grpc_channel(demo.grpc_addr())
        .await
        .expect("gRPC channel");
    let mut grpc = EchoClient::new(channel);
    for i in 0..GRPC_REQUESTS {
        grpc.say(EchoRequest {
            message: format!("hi {i}"),
            count: 0,
        })
        .await
        .expect("gRPC Say");
    }

    // Through the split, then one to each backend's own service, so both
    // versions have closed connections to show.
    let backends =
        [demo::WEB_V1_IP, demo::WEB_V2_IP].map(|ip| SocketAddr::from((ip, demo::TCP_PORT)));
    let targets =
        std::iter::repeat_n(demo.tcp_addr(), TCP_CONNECTIONS as usize - 2).chain(backends);
    for addr in targets {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let stream = client.connect(addr).await.expect("TCP");
        let (read, mut write) = stream.into_split();
        let greeting = BufReader::new(read).lines().next_line().await.unwrap();
        assert!(greeting.is_some_and(|g| g.starts_with("220 web-v")));
        write.write_all(b"QUIT\r\n").await.unwrap();
    }

    for _ in 0..FAILING_REQUESTS {
        let (status, _) = http_request(client, demo.http_addr(), "GET", "/status/503")
            .await
            .expect("HTTP request");
        assert_eq!(status, 503);
    }
}

/// A request as an app that traces would send it.
async fn traced_request(client: &Pod, addr: SocketAddr) -> (u16, String) {
    use http_body_util::BodyExt;
    let stream = client.connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header(http::header::HOST, "web.demo")
        .header("traceparent", format!("00-{APP_TRACE_ID}-{APP_SPAN_ID}-01"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// What the proxies must report: PromQL → value.
async fn expected_counts(demo: &Demo) -> Vec<(String, f64)> {
    // Retries depend on the budget; read how many the client proxy made,
    // so that the servers' count can be checked against it.
    let client = demo.client.metrics().await.unwrap();
    let retries = client.sum("retries_total", &[]);
    assert!(retries > 0.0, "no retries of the failing requests");
    let sent = (HTTP_REQUESTS + GRPC_REQUESTS + FAILING_REQUESTS) as f64;
    let out = r#"namespace="demo",workload="client",direction="outbound""#;
    let inbound = r#"namespace="demo",workload=~"web-v.",direction="inbound""#;
    vec![
        (format!("sum(request_total{{{out}}})"), sent),
        (
            format!(
                r#"sum(request_total{{{out},tls="true",authority="web.demo.svc.cluster.local:80"}})"#
            ),
            (HTTP_REQUESTS + FAILING_REQUESTS) as f64,
        ),
        (
            format!(r#"sum(response_total{{{out},status_code="200",classification="success"}})"#),
            (HTTP_REQUESTS + GRPC_REQUESTS) as f64,
        ),
        (
            format!(r#"sum(response_total{{{out},status_code="503",classification="failure"}})"#),
            FAILING_REQUESTS as f64,
        ),
        (
            format!(
                r#"sum(response_total{{{out},grpc_status="0",authority="web.demo.svc.cluster.local:50051"}})"#
            ),
            GRPC_REQUESTS as f64,
        ),
        // Every request and retry reached a server proxy, over mTLS from
        // the client's identity.
        (
            format!(
                r#"sum(request_total{{{inbound},tls="true",client_id="spiffe://cluster.local/ns/demo/sa/client"}})"#
            ),
            sent + retries,
        ),
        // Latency buckets hold every response.
        (
            format!(r#"sum(response_latency_ms_bucket{{{out},le="+Inf"}})"#),
            sent,
        ),
        (format!("sum(response_latency_ms_count{{{out}}})"), sent),
        (
            format!(r#"sum(protocol_detect_total{{{out},protocol="opaque_port"}})"#),
            TCP_CONNECTIONS as f64,
        ),
        (
            r#"sum(retries_total{namespace="demo",pod="client",authority="web.demo.svc.cluster.local:80"})"#
                .to_string(),
            retries,
        ),
        (
            r#"sum(traffic_split_backend_weight{apex="web",backend="web-v1"})"#.into(),
            0.8,
        ),
        (r#"count(up{job="weft-proxy"} == 1)"#.into(), 3.0),
        (r#"count(up{job="weft-control-plane"} == 1)"#.into(), 2.0),
        (
            r#"sum(injector_admissions_total{outcome="injected"})"#.into(),
            1.0,
        ),
    ]
}

async fn check_counts(prometheus: &Prometheus, expected: &[(String, f64)]) {
    for (query, want) in expected {
        prometheus
            .wait_value(query, Duration::from_secs(60), |v| (v - want).abs() < 1e-9)
            .await
            .unwrap_or_else(|e| panic!("{e:#}; expected {want}"));
    }
    // Fast local requests land in the low buckets, not only in +Inf.
    let out = r#"namespace="demo",workload="client",direction="outbound""#;
    let within_1s = prometheus
        .value(&format!(
            r#"sum(response_latency_ms_bucket{{{out},le="1000.0"}})"#
        ))
        .await
        .unwrap();
    assert!(
        within_1s >= 0.9 * (HTTP_REQUESTS + GRPC_REQUESTS) as f64,
        "{within_1s}"
    );
    // The split's 80/20 shows in the backends' shares of the HTTP traffic.
    let by_backend = |backend: &str| {
        format!(
            r#"sum(request_total{{{out},authority="web.demo.svc.cluster.local:80",dst_service="{backend}",dst_workload="{backend}",dst_namespace="demo"}})"#
        )
    };
    let v1 = prometheus.value(&by_backend("web-v1")).await.unwrap();
    let v2 = prometheus.value(&by_backend("web-v2")).await.unwrap();
    let share = v1 / (v1 + v2);
    assert!((0.6..0.95).contains(&share), "web-v1 got {v1}, web-v2 {v2}");
    // The breaker opened on the backend that kept failing, and the budget
    // stopped some retries.
    for query in [
        r#"sum(circuit_breaker_transitions_total{pod="client",authority="web.demo.svc.cluster.local:80",state="open"})"#,
        r#"sum(tcp_read_bytes_total{pod="client",direction="outbound",peer="dst",tls="true"})"#,
        r#"sum(process_resident_memory_bytes{job="weft-proxy"})"#,
    ] {
        let v = prometheus.value(query).await.unwrap();
        assert!(v > 0.0, "{query} = {v}");
    }
    // Labels stay bounded: no client ports, no paths.
    let series = prometheus.query(r#"{job="weft-proxy"}"#).await.unwrap();
    let labels: HashSet<String> = series
        .iter()
        .flat_map(|s| s["metric"].as_object().unwrap().keys().cloned())
        .collect();
    let allowed: HashSet<&str> = [
        "__name__",
        "job",
        "instance",
        "namespace",
        "workload",
        "pod",
        "direction",
        "peer",
        "authority",
        "tls",
        "client_id",
        "server_id",
        "dst_namespace",
        "dst_service",
        "dst_workload",
        "dst_pod",
        "status_code",
        "grpc_status",
        "classification",
        "errno",
        "le",
        "protocol",
        "reason",
        "result",
        "state",
        "port",
        "limit",
        "issuer",
        "anchor",
    ]
    .into();
    let unexpected: Vec<&String> = labels
        .iter()
        .filter(|l| !allowed.contains(l.as_str()))
        .collect();
    assert!(unexpected.is_empty(), "undocumented labels: {unexpected:?}");
    let authorities = prometheus
        .query(r#"count by (authority) (request_total{job="weft-proxy"})"#)
        .await
        .unwrap();
    for a in &authorities {
        let authority = a["metric"]["authority"].as_str().unwrap_or_default();
        assert!(
            !authority.contains('/'),
            "a path leaked into authority: {authority}"
        );
    }
}

async fn check_dashboards(prometheus: &Prometheus) {
    let dashboards = dashboards::load_all().expect("dashboards");
    assert_eq!(dashboards.len(), 7);
    let mut failures = Vec::new();
    let mut queries = 0;
    for dashboard in &dashboards {
        dashboard
            .check_structure()
            .unwrap_or_else(|e| panic!("{e}"));
        match dashboard.evaluate(prometheus, &BTreeMap::new()).await {
            Ok(report) => {
                queries += report.queries;
                failures.extend(report.failures);
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {queries} dashboard queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{queries} dashboard queries over {} dashboards returned data",
        dashboards.len()
    );
}

async fn check_traces(otlp: &OtlpReceiver) {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    // Each request the client proxy sent has a span, and the server
    // proxy's span for it is its child, in the same trace.
    let spans = otlp
        .wait_for(Duration::from_secs(30), |spans| {
            let continued = spans
                .iter()
                .any(|s| hex(&s.trace_id) == APP_TRACE_ID && s.kind == 2);
            let clients = spans.iter().filter(|s| s.kind == 3).count();
            continued && clients as u64 >= HTTP_REQUESTS
        })
        .await
        .expect("spans");
    let client_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == 3 && s.service == "client.demo")
        .collect();
    let server_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == 2 && s.service == "web.demo")
        .collect();
    let mut linked = 0;
    for server in &server_spans {
        if let Some(parent) = client_spans
            .iter()
            .find(|c| c.span_id == server.parent_span_id)
        {
            assert_eq!(parent.trace_id, server.trace_id);
            linked += 1;
        }
    }
    assert!(
        linked as u64 >= HTTP_REQUESTS,
        "only {linked} server spans have their client proxy's span as parent"
    );
    // The app's own trace went on: the client proxy's span is the child
    // of the app's span, and the server proxy's the child of that.
    let app_client = client_spans
        .iter()
        .find(|s| hex(&s.trace_id) == APP_TRACE_ID)
        .expect("client proxy span in the app's trace");
    assert_eq!(hex(&app_client.parent_span_id), APP_SPAN_ID);
    assert_eq!(app_client.attribute("http.request.method"), Some("GET"));
    assert_eq!(
        app_client.attribute("server.address"),
        Some("web.demo.svc.cluster.local:80")
    );
    assert_eq!(
        app_client.attribute("http.response.status_code"),
        Some("200")
    );
    let app_server = server_spans
        .iter()
        .find(|s| hex(&s.trace_id) == APP_TRACE_ID)
        .expect("server proxy span in the app's trace");
    assert_eq!(app_server.parent_span_id, app_client.span_id);
    // gRPC spans carry the gRPC status.
    assert!(
        client_spans
            .iter()
            .any(|s| s.attribute("rpc.grpc.status_code") == Some("0")),
        "no gRPC span with its status"
    );
}

/// The shipped alert rules load and evaluate against what the mesh
/// exports: every rule healthy, and each expiry they watch present.
async fn check_alert_rules(prometheus: &Prometheus) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, text) = prometheus.get("/api/v1/rules").await.unwrap();
        assert_eq!(status, 200, "{text}");
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        let rules: Vec<&serde_json::Value> = answer["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(rules.len(), 6, "{text}");
        if rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rules not healthy: {text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for watched in [
        "identity_issuer_expiration_timestamp_seconds",
        "identity_trust_anchor_expiration_timestamp_seconds",
        "identity_cert_expiration_timestamp_seconds",
    ] {
        let left = prometheus
            .value(&format!("min({watched}) - time()"))
            .await
            .unwrap();
        assert!(left > 0.0, "{watched}: {left}");
    }
    // Every proxy holds a certificate from the issuer signing now.
    let current = prometheus.query("identity_issuer_info").await.unwrap();
    assert_eq!(current.len(), 1, "{current:?}");
    let retired = prometheus
        .query("identity_cert_issuer_info unless on (issuer) identity_issuer_info")
        .await
        .unwrap();
    assert!(retired.is_empty(), "{retired:?}");
    // ... and trusts the controller's whole bundle.
    let bundle = prometheus
        .query("identity_trust_anchor_bundle_info")
        .await
        .unwrap();
    assert_eq!(bundle.len(), 1, "{bundle:?}");
    let behind = prometheus
        .query(
            "count by (namespace, pod) (identity_trust_anchor_info \
             and on (anchor) identity_trust_anchor_bundle_info) \
             < scalar(count(max by (anchor) (identity_trust_anchor_bundle_info)))",
        )
        .await
        .unwrap();
    assert!(behind.is_empty(), "{behind:?}");
    let trusting = prometheus
        .query("identity_trust_anchor_info and on (anchor) identity_trust_anchor_bundle_info")
        .await
        .unwrap();
    assert!(!trusting.is_empty(), "no proxy reports its anchors");
    assert!(
        !prometheus
            .query("identity_cert_issuer_info")
            .await
            .unwrap()
            .is_empty()
    );
}
