//! Discovery and traffic policy end to end: a controller reading discovery
//! files, a client pod, and several server pods behind Services, all with
//! real proxies and mTLS between them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weft_api::policy;
use weft_testbed::cluster::{Cluster, SERVICE_PORT, Tally, load};
use weft_testbed::identity::ControllerOptions;

const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const V1_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const V2_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);

fn web() -> SocketAddr {
    SocketAddr::from((WEB_IP, SERVICE_PORT))
}

/// Retries on for everything a restarted or replaced pod can cause.
const RESILIENT: &[(&str, &str)] = &[
    (policy::RETRY_HTTP, "5xx,connect-failure"),
    (policy::RETRY_LIMIT, "3"),
];

async fn cluster(label: &str) -> Cluster {
    Cluster::new(label, ControllerOptions::default())
        .await
        .expect("cluster")
}

/// `web` with `n` servers `web-<i>`, optionally with faults per server.
async fn web_cluster(
    label: &str,
    annotations: &[(&str, &str)],
    servers: &[&[(&str, &str)]],
) -> Cluster {
    let c = cluster(label).await;
    c.service("web", WEB_IP, annotations);
    for (i, env) in servers.iter().enumerate() {
        c.add_server(&format!("web-{i}"), "web", env)
            .await
            .expect("server");
    }
    c.sync(false).await.expect("publish");
    c
}

async fn requests(c: &Cluster, path: &str, concurrency: usize, total: u64) -> Tally {
    load(
        &c.client,
        web(),
        path,
        concurrency,
        Some(total),
        Arc::new(AtomicBool::new(false)),
    )
    .await
}

/// Load in the background until the returned flag is set.
fn background_load(
    c: &Cluster,
    concurrency: usize,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Tally>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (pod, flag) = (c.client.clone(), stop.clone());
    let task = tokio::spawn(async move { load(&pod, web(), "/", concurrency, None, flag).await });
    (stop, task)
}

/// Fails with the first few failures, if there were any.
fn assert_no_failures(tally: &Tally) {
    assert!(
        tally.failed.is_empty(),
        "{} failed, first: {:?}",
        tally.failed.len(),
        &tally.failed[..tally.failed.len().min(5)]
    );
}

async fn client_metric(c: &Cluster, name: &str, labels: &[(&str, &str)]) -> f64 {
    c.client.metrics().await.expect("metrics").sum(name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_split_follows_weights_and_moves_live() {
    let c = cluster("split").await;
    c.service("web", WEB_IP, &[]);
    c.service("web-v1", V1_IP, &[]);
    c.service("web-v2", V2_IP, &[]);
    for (name, svc) in [("v1-a", "web-v1"), ("v1-b", "web-v1"), ("v2-a", "web-v2")] {
        c.add_server(name, svc, &[]).await.expect("server");
    }
    c.split("web", Some(&[("web-v1", 90), ("web-v2", 10)]));
    c.sync(false).await.expect("publish");

    let tally = requests(&c, "/", 8, 10_000).await;
    assert_no_failures(&tally);
    let v2 = tally.share("v2-");
    println!(
        "90/10 split over {} requests: v1 {:.2} %, v2 {:.2} %",
        tally.total(),
        100.0 * tally.share("v1-"),
        100.0 * v2
    );
    assert!(
        (0.07..=0.13).contains(&v2),
        "v2 share {v2} is not 10 % ± 3: {:?}",
        tally.by_server
    );
    // Both v1 pods take part.
    assert!(
        tally.by_server.get("v1-a").copied().unwrap_or(0) > 1000,
        "{:?}",
        tally.by_server
    );
    assert!(
        tally.by_server.get("v1-b").copied().unwrap_or(0) > 1000,
        "{:?}",
        tally.by_server
    );

    // Live changes under load: 50/50, then everything to v2.
    let (stop, task) = background_load(&c, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.split("web", Some(&[("web-v1", 50), ("web-v2", 50)]));
    c.sync(true).await.expect("50/50");
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.split("web", Some(&[("web-v1", 0), ("web-v2", 100)]));
    c.sync(true).await.expect("0/100");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let during = task.await.expect("load");
    assert_no_failures(&during);
    assert!(during.ok > 100, "{during:?}");

    // Once applied, the new weights hold for every new request.
    let after = requests(&c, "/", 4, 1000).await;
    assert_no_failures(&after);
    assert_eq!(after.share("v2-"), 1.0, "{:?}", after.by_server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_retries_hide_it() {
    let c = web_cluster(
        "failing",
        &[(policy::RETRY_HTTP, "5xx"), (policy::RETRY_LIMIT, "2")],
        &[&[], &[], &[("DEMO_FAIL_STATUS", "500")]],
    )
    .await;
    let tally = requests(&c, "/", 8, 5000).await;
    let success = tally.ok as f64 / tally.total() as f64;
    println!(
        "one endpoint failing: {} of {} succeeded ({:.3} %), served by {:?}",
        tally.ok,
        tally.total(),
        100.0 * success,
        tally.by_server
    );
    assert!(
        success >= 0.999,
        "success {success}: {:?}",
        &tally.failed[..tally.failed.len().min(5)]
    );
    let ejections = client_metric(
        &c,
        "circuit_breaker_transitions_total",
        &[
            ("authority", "web.demo.svc.cluster.local:80"),
            ("state", "open"),
        ],
    )
    .await;
    assert!(ejections >= 1.0, "the failing endpoint was never ejected");
    let retries = client_metric(
        &c,
        "retries_total",
        &[("authority", "web.demo.svc.cluster.local:80")],
    )
    .await;
    assert!(retries >= 1.0, "failures were never retried");
    // Ejected, the failing endpoint sees only probation requests: far
    // fewer than its third.
    let failing = c.servers().into_iter().find(|s| s.name == "web-2").unwrap();
    let failing_server_requests = failing
        .pod
        .metrics()
        .await
        .unwrap()
        .sum("request_total", &[("direction", "inbound")]);
    assert!(
        failing_server_requests < 0.05 * tally.total() as f64,
        "{failing_server_requests} requests reached the failing endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_less_traffic() {
    let c = web_cluster("slow", &[], &[&[], &[], &[("DEMO_DELAY_MS", "50")]]).await;
    let tally = requests(&c, "/", 8, 3000).await;
    assert_no_failures(&tally);
    let slow = tally.share("web-2");
    println!(
        "slow endpoint share: {:.2} % (fair share 33.3 %), {:?}",
        100.0 * slow,
        tally.by_server
    );
    assert!(slow < 0.10, "the slow endpoint got {slow} of the traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timeout_answers_504_on_time() {
    let c = web_cluster("timeout", &[(policy::TIMEOUT_REQUEST, "300ms")], &[&[]]).await;
    let fast = requests(&c, "/", 1, 10).await;
    assert_eq!(fast.ok, 10, "{:?}", fast.failed);

    let stream = c.client.connect(web()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/delay?ms=3000")
        .header(http::header::HOST, "web.demo")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let started = Instant::now();
    let resp = sender.send_request(req).await.expect("response");
    let elapsed = started.elapsed();
    println!("timed out after {elapsed:?} with {}", resp.status());
    assert_eq!(resp.status(), 504);
    let cause = resp
        .headers()
        .get(weft_proxy::http::PROXY_ERROR_HEADER)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(cause.contains("timed out after 300ms"), "{cause}");
    assert!(
        elapsed >= Duration::from_millis(290) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    let timeouts = c
        .client
        .metrics()
        .await
        .unwrap()
        .sum("response_total", &[("status_code", "504")]);
    assert!(timeouts >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_never_exceed_the_budget() {
    let fail: &[(&str, &str)] = &[("DEMO_FAIL_STATUS", "503")];
    let c = web_cluster(
        "budget",
        &[
            (policy::RETRY_HTTP, "5xx"),
            (policy::RETRY_LIMIT, "3"),
            (policy::FAILURE_ACCRUAL, "off"),
        ],
        &[fail, fail, fail],
    )
    .await;
    let started = Instant::now();
    let tally = requests(&c, "/", 8, 4000).await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(tally.ok, 0);
    let scrape = c.client.metrics().await.unwrap();
    let retries = scrape.sum(
        "retries_total",
        &[("authority", "web.demo.svc.cluster.local:80")],
    );
    let exhausted = scrape.sum(
        "retry_budget_exhausted_total",
        &[("authority", "web.demo.svc.cluster.local:80")],
    );
    let requests = tally.total() as f64;
    // 20 % of requests, plus a floor of 10 per second counted over each
    // 10 s window.
    let allowed = 0.2 * requests + 100.0 * (secs / 10.0).ceil().max(1.0);
    println!(
        "all endpoints failing: {requests} requests in {secs:.1}s, {retries} retries ({:.1} %), budget allowed {allowed:.0}, {exhausted} not retried",
        100.0 * retries / requests
    );
    assert!(
        retries <= allowed,
        "{retries} retries for {requests} requests"
    );
    assert!(
        retries >= 0.2 * requests * 0.9,
        "the budget was not used: {retries}"
    );
    assert!(exhausted > 0.0);
    // Without the budget, limit 3 would have meant 3 retries per request.
    assert!(retries < requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_under_load_fails_nothing() {
    let c = web_cluster("churn", RESILIENT, &[&[], &[], &[]]).await;
    let (stop, task) = background_load(&c, 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A rolling replacement: start the new pod, let it into the Service,
    // take the old one out, then stop it (as a Deployment rollout does).
    for i in 0..3 {
        let old = format!("web-{i}");
        let new = format!("web-new-{i}");
        c.add_server(&new, "web", &[]).await.expect("new server");
        c.sync(true).await.expect("new pod in");
        c.set_ready(&old, false);
        c.sync(true).await.expect("old pod out");
        let server = c.servers().into_iter().find(|s| s.name == old).unwrap();
        c.mesh.terminate(server.proxy).expect("stop proxy");
        c.mesh.terminate(server.app).expect("stop app");
        c.remove_server(&old);
        // Not ready, it was out of the endpoints already: the client's
        // destination does not change, so there is no update to wait for.
        c.sync(false).await.expect("old pod gone");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = task.await.expect("load");
    println!(
        "rolling replacement: {} ok, {} failed, served by {:?}",
        tally.ok,
        tally.failed.len(),
        tally.by_server
    );
    assert_no_failures(&tally);
    for i in 0..3 {
        assert!(
            tally.by_server.contains_key(&format!("web-new-{i}")),
            "{:?}",
            tally.by_server
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restart_mid_load_fails_nothing() {
    let c = web_cluster("restart", RESILIENT, &[&[], &[]]).await;
    let (stop, task) = background_load(&c, 4);
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.kill_controller().await.expect("kill");
    // Without the controller the proxy serves from what it knows.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.restart_controller().await.expect("restart");
    // Discovery works again: a third server shows up in the client's picks.
    c.add_server("web-late", "web", &[])
        .await
        .expect("late server");
    c.sync(true).await.expect("resync after the restart");
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = task.await.expect("load");
    println!(
        "controller restart: {} ok, {} failed, {:?}",
        tally.ok,
        tally.failed.len(),
        tally.by_server
    );
    assert_no_failures(&tally);
    assert!(
        tally.by_server.contains_key("web-late"),
        "{:?}",
        tally.by_server
    );
    assert!(client_metric(&c, "destination_reconnects_total", &[]).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_annotations_and_splits_are_ignored_not_fatal() {
    let c = cluster("badinput").await;
    c.service(
        "web",
        WEB_IP,
        &[
            (policy::RETRY_HTTP, "sometimes"),
            (policy::RETRY_LIMIT, "-1"),
            (policy::TIMEOUT_REQUEST, "soon"),
            (policy::FAILURE_ACCRUAL, "consecutive:zero"),
        ],
    );
    c.add_server("web-0", "web", &[]).await.expect("server");
    // A split whose weights add up to zero, one naming a service that does
    // not exist, and a document that is not Kubernetes at all in a second
    // file: none of it may stop discovery.
    c.split("web", Some(&[("web", 0), ("web-v9", 0)]));
    c.extra_documents(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: ghost, namespace: demo}\nspec: {service: ghost, backends: [{service: nobody, weight: 1}]}",
    );
    c.sync(false).await.expect("publish");
    c.mesh
        .publish("broken", "apiVersion: v1\nkind: Service\n  :: [")
        .expect("broken file");

    let tally = requests(&c, "/", 2, 200).await;
    assert_no_failures(&tally);
    assert_eq!(tally.by_server.get("web-0"), Some(&200));
    let controller = c.controller().clone();
    let scrape = c
        .mesh
        .controller_metrics(&controller)
        .await
        .expect("controller metrics");
    for reason in [
        "bad_retry_conditions",
        "bad_retry_limit",
        "bad_timeout",
        "bad_failure_accrual",
        "zero_total_weight",
    ] {
        assert!(
            scrape.sum("discovery_invalid_config_total", &[("reason", reason)]) >= 1.0,
            "{reason} not reported"
        );
    }
    // The broken file is reported (polled, so allow a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let scrape = c
            .mesh
            .controller_metrics(&controller)
            .await
            .expect("controller metrics");
        if scrape.sum("discovery_file_errors_total", &[]) >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken file was never reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And everything still routes.
    let again = requests(&c, "/", 2, 50).await;
    assert_no_failures(&again);
    let log = c.mesh.controller_log(&controller);
    assert!(log.contains("retry.weft.io/http=\"sometimes\""), "{log}");
}

/// One GET through the client pod's proxy to `web`: status, served-by and
/// `weft-proxy-error`, on a connection of its own.
async fn get_once(c: &Cluster, path: &str) -> (u16, String, String) {
    let stream = c.client.connect(web()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "web.demo")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("response");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    (
        resp.status().as_u16(),
        header("x-served-by"),
        header(weft_proxy::http::PROXY_ERROR_HEADER),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_endpoint_is_skipped_and_all_full_sheds_at_once() {
    let c = Arc::new(web_cluster("limit", &[(policy::MAX_IN_FLIGHT, "1")], &[&[], &[]]).await);
    assert_eq!(get_once(&c, "/").await.0, 200);
    // Two slow requests: the second finds the first endpoint full and
    // takes the other.
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100 * i)).await;
                get_once(&c, "/delay?ms=2000").await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = Instant::now();
    let (status, _, cause) = get_once(&c, "/").await;
    let waited = started.elapsed();
    println!("with both endpoints full: {status} after {waited:?}: {cause}");
    assert_eq!(status, 503);
    assert!(cause.ends_with("overloaded"), "{cause}");
    assert!(cause.contains("max-in-flight"), "{cause}");
    assert!(
        waited < Duration::from_millis(800),
        "not at once: {waited:?}"
    );
    let mut servers = Vec::new();
    for task in slow {
        let (status, server, cause) = task.await.unwrap();
        assert_eq!(status, 200, "{cause}");
        servers.push(server);
    }
    servers.sort();
    servers.dedup();
    assert_eq!(
        servers.len(),
        2,
        "both slow requests on one endpoint: {servers:?}"
    );
    // Room again once they are done.
    assert_eq!(get_once(&c, "/").await.0, 200);
    let shed = client_metric(
        &c,
        "requests_shed_total",
        &[("authority", "web.demo.svc.cluster.local:80")],
    )
    .await;
    assert_eq!(shed, 1.0);
}

/// PUT /upload with a body in `chunks` chunks of `size` bytes and no
/// `content-length`, as a gRPC stream sends it; the server's answer.
async fn put_chunked(c: &Cluster, chunks: usize, size: usize) -> (u16, String) {
    let stream = c.client.connect(web()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let frames = (0..chunks).map(move |_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![
            b'z';
            size
        ])))
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = http::Request::put("/upload")
        .header(http::header::HOST, "web.demo")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsized_bodies_under_the_cap_are_retried_whole() {
    let c = web_cluster(
        "replay",
        &[
            (policy::RETRY_HTTP, "5xx"),
            (policy::RETRY_LIMIT, "3"),
            (policy::FAILURE_ACCRUAL, "off"),
        ],
        &[&[("DEMO_FAIL_STATUS", "503")], &[]],
    )
    .await;
    // 3 × 16 KiB, streamed without content-length: under the 64 KiB copy.
    for _ in 0..30 {
        let (status, body) = put_chunked(&c, 3, 16 * 1024).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, format!("received {} bytes", 3 * 16 * 1024));
    }
    let retries = client_metric(
        &c,
        "retries_total",
        &[("authority", "web.demo.svc.cluster.local:80")],
    )
    .await;
    println!("30 unsized uploads, all answered by the healthy server, after {retries} retries");
    assert!(retries >= 1.0, "the failing server was never picked");
    // Over the copy's cap, an upload can be retried only if the failing
    // server answered before the proxy had read past the cap (this one
    // answers without reading, so that is a race); either way every upload
    // that succeeds arrived whole, never cut or doubled.
    let mut failed = 0;
    for _ in 0..30 {
        match put_chunked(&c, 5, 16 * 1024).await {
            (200, body) => assert_eq!(body, format!("received {} bytes", 5 * 16 * 1024)),
            // The failing server answers without reading the body, so its
            // proxy may see the upload cut off (502) before the 503.
            (503 | 502, _) => failed += 1,
            other => panic!("{other:?}"),
        }
    }
    println!("30 uploads over the cap: {failed} failed at the failing server");
}

/// Time until a banner server behind `addr` greets a client of the client
/// pod (the server speaks first).
async fn greeting_after(c: &Cluster, addr: SocketAddr) -> Duration {
    use tokio::io::AsyncBufReadExt;
    let started = Instant::now();
    let stream = c.client.connect(addr).await.expect("connect");
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let greeting = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a greeting")
        .expect("read")
        .expect("a line");
    assert!(greeting.starts_with("220 "), "{greeting}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_app_protocol_skips_detection() {
    const DB_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
    let c = cluster("appproto").await;
    let server = c.add_server("db-0", "db", &[]).await.expect("server");
    c.mesh
        .spawn_demo(&server.pod, "banner", 2525, "db-0")
        .await
        .expect("banner");
    // Port 25 declares its protocol; port 26 reaches the same server
    // without saying.
    c.extra_documents(&format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: db, namespace: demo}}
spec:
  clusterIP: {DB_IP}
  ports:
    - {{name: smtp, port: 25, targetPort: 2525, appProtocol: smtp}}
    - {{name: mail, port: 26, targetPort: 2525}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-abc
  namespace: demo
  labels: {{kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{{name: smtp, port: 2525}}, {{name: mail, port: 2525}}]
endpoints:
  - addresses: ["{}"]
    conditions: {{ready: true}}
    targetRef: {{kind: Pod, name: db-0}}"#,
        server.pod.ip
    ));
    c.sync(false).await.expect("publish");
    let declared = greeting_after(&c, SocketAddr::from((DB_IP, 25))).await;
    let undeclared = greeting_after(&c, SocketAddr::from((DB_IP, 26))).await;
    println!("greeting with appProtocol after {declared:?}, without after {undeclared:?}");
    assert!(declared < Duration::from_millis(500), "{declared:?}");
    // Without it the client's proxy waits out its 1 s detection.
    assert!(undeclared >= Duration::from_millis(900), "{undeclared:?}");
    let detected = client_metric(
        &c,
        "protocol_detect_total",
        &[("direction", "outbound"), ("protocol", "opaque_port")],
    )
    .await;
    assert_eq!(detected, 1.0);
}
