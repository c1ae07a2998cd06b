//! NetworkPolicy enforced by the proxies, on the two-node mesh with real
//! proxies, controller and file discovery: a truth table of pods, ports
//! and policies, audit mode, a client spoofing another pod's address,
//! and the fail-closed start.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use weft_testbed::demo::{
    Demo, DemoOptions, HTTP_TARGET_PORT, NAMESPACE, TCP_PORT, discovery_objects,
};
use weft_testbed::{Pod, ProxyOptions, http_request, objects};

fn policy(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    })
}

fn namespace(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "annotations": annotations},
    })
}

/// web-v1 takes only the client, on 8080; web-v2 takes nobody; the client
/// may only reach web-v1 (by address).
fn policies(demo: &Demo) -> Vec<Value> {
    vec![
        policy(
            "web-v1-from-client",
            json!({
                "podSelector": {"matchLabels": {"app": "web-v1"}},
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                    "ports": [{"port": HTTP_TARGET_PORT}],
                }],
            }),
        ),
        policy(
            "web-v2-closed",
            json!({"podSelector": {"matchLabels": {"app": "web-v2"}}, "policyTypes": ["Ingress"]}),
        ),
        policy(
            "client-egress",
            json!({
                "podSelector": {"matchLabels": {"app": "client"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": format!("{}/32", demo.web_v1.ip)}}]}],
            }),
        ),
    ]
}

async fn http_ok(from: &Pod, to: SocketAddr) -> bool {
    matches!(http_request(from, to, "GET", "/").await, Ok((200, _)))
}

/// Whether the banner server's greeting comes back (server speaks first).
async fn banner_ok(from: &Pod, to: SocketAddr) -> bool {
    let Ok(stream) = from.connect(to).await else {
        return false;
    };
    let mut lines = BufReader::new(stream).lines();
    matches!(
        tokio::time::timeout(Duration::from_secs(3), lines.next_line()).await,
        Ok(Ok(Some(line))) if line.starts_with("220")
    )
}

async fn eventually<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

fn publish(demo: &Demo, extra: Vec<Value>) {
    let mut docs = discovery_objects(&demo.client, &demo.web_v1, &demo.web_v2);
    docs.extend(extra);
    demo.mesh.publish("demo", &objects::file(&docs)).unwrap();
}

async fn denied(pod: &Pod, direction: &str, reason: &str, mode: &str) -> f64 {
    pod.metrics().await.unwrap().sum(
        "policy_denied_total",
        &[("direction", direction), ("reason", reason), ("mode", mode)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_reach_only_what_their_policies_allow() {
    weft_testbed::require_root();
    let demo = Demo::start("netpol", DemoOptions::default()).await.unwrap();
    let (client, v1, v2) = (&demo.client, &demo.web_v1, &demo.web_v2);
    let node = demo.mesh.node();
    let at = |pod: &Pod, port| SocketAddr::from((pod.ip, port));
    assert!(
        http_ok(client, at(v2, HTTP_TARGET_PORT)).await,
        "open before any policy"
    );
    // This leaves a pooled mesh connection from web-v2's proxy to web-v1:
    // the policy below must hold for requests on it too.
    assert!(
        http_ok(v2, at(v1, HTTP_TARGET_PORT)).await,
        "open before any policy"
    );

    publish(&demo, policies(&demo));
    let applied = eventually("web-v2 to close", || async {
        !http_ok(client, at(v2, HTTP_TARGET_PORT)).await
    })
    .await;
    eprintln!("policy applied to new connections after {applied:?}");
    // Each proxy follows its own stream: web-v1's policy too.
    eventually("web-v1 to isolate", || async {
        !banner_ok(client, at(v1, TCP_PORT)).await
    })
    .await;
    assert!(applied < Duration::from_secs(2), "took {applied:?}");

    // (from, to, port, allowed), each from the rules as the API defines them.
    let table: [(&Pod, &Pod, u16, bool); 9] = [
        (client, v1, HTTP_TARGET_PORT, true),
        // Not a port web-v1's rule names.
        (client, v1, TCP_PORT, false),
        // The client's egress allows only web-v1; web-v2 also isolates.
        (client, v2, HTTP_TARGET_PORT, false),
        (client, v2, TCP_PORT, false),
        // Not the client: web-v1's rule is for app=client only.
        (v2, v1, HTTP_TARGET_PORT, false),
        // web-v2 takes nobody; web-v1 is not egress-isolated.
        (v1, v2, HTTP_TARGET_PORT, false),
        (v1, v2, TCP_PORT, false),
        // Plaintext from outside every pod: its address decides. A pod's
        // own node is always let in (kubelet's probes); another is not.
        (&node, v1, HTTP_TARGET_PORT, true),
        (&node, v2, HTTP_TARGET_PORT, false),
    ];
    let mut wrong = Vec::new();
    for (from, to, port, allowed) in table {
        let got = match port {
            TCP_PORT => banner_ok(from, at(to, port)).await,
            _ => http_ok(from, at(to, port)).await,
        };
        if got != allowed {
            wrong.push(format!(
                "{} -> {}:{port}: allowed={got}, want {allowed}",
                from.name, to.name
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(denied(v1, "inbound", "not_allowed", "enforce").await >= 2.0);
    assert!(denied(v2, "inbound", "not_allowed", "enforce").await >= 3.0);
    assert!(denied(client, "outbound", "not_allowed", "enforce").await >= 2.0);

    // Audit mode: the same policies count and log, and let traffic pass.
    let mut docs = policies(&demo);
    docs.push(namespace(json!({"policy.weft.io/mode": "audit"})));
    publish(&demo, docs);
    eventually("audit mode", || http_ok(client, at(v2, HTTP_TARGET_PORT))).await;
    assert!(banner_ok(v1, at(v2, TCP_PORT)).await);
    assert!(denied(v2, "inbound", "not_allowed", "audit").await >= 1.0);
    assert!(denied(client, "outbound", "not_allowed", "audit").await >= 1.0);

    // Policies removed: open again.
    publish(&demo, Vec::new());
    publish(&demo, vec![namespace(json!({}))]);
    eventually("policies gone", || async {
        http_ok(client, at(v2, HTTP_TARGET_PORT)).await && banner_ok(client, at(v1, TCP_PORT)).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spoofed_address_and_an_unknown_pod_are_refused() {
    weft_testbed::require_root();
    let demo = Demo::start("netspoof", DemoOptions::default())
        .await
        .unwrap();
    let v1 = &demo.web_v1;
    let at = SocketAddr::from((v1.ip, HTTP_TARGET_PORT));

    // Discovery says the intruder is a client pod (service account
    // `client`), but its proxy holds the `web` identity.
    let intruder = demo.mesh.add_pod_on(1, "intruder", None).unwrap();
    let mut docs = policies(&demo);
    docs.push(objects::meshed_pod(
        NAMESPACE,
        "intruder",
        intruder.ip,
        "client",
        "client",
    ));
    publish(&demo, docs.clone());
    let mut env = demo
        .mesh
        .identity_env(&demo.controller, &intruder, NAMESPACE, "web")
        .unwrap();
    env.push(("WEFT_POD_NAME".into(), "intruder".into()));
    demo.mesh
        .spawn_proxy(
            &intruder,
            ProxyOptions {
                env,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // web-v1 isolated (its other port refuses the client), and the client
    // let in on 8080; only then does the intruder make its first
    // connection (a decision holds for a connection's life).
    let banner = SocketAddr::from((v1.ip, TCP_PORT));
    eventually("web-v1 to be isolated", || async {
        !banner_ok(&demo.client, banner).await
    })
    .await;
    eventually("the client to be let in", || http_ok(&demo.client, at)).await;
    assert!(
        !http_ok(&intruder, at).await,
        "a spoofed address was let in"
    );
    assert!(denied(v1, "inbound", "spoof", "enforce").await >= 1.0);

    // A proxy whose pod discovery does not know yet is not ready and
    // refuses everything; once the pod is known, its policy applies.
    let late = demo.mesh.add_pod_on(0, "late", None).unwrap();
    demo.mesh
        .spawn_demo(&late, "http", HTTP_TARGET_PORT, "late")
        .await
        .unwrap();
    let mut env = demo
        .mesh
        .identity_env(&demo.controller, &late, NAMESPACE, "web")
        .unwrap();
    env.push(("WEFT_POD_NAME".into(), "late".into()));
    demo.mesh
        .spawn_proxy(
            &late,
            ProxyOptions {
                env,
                no_wait: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let late_at = SocketAddr::from((late.ip, HTTP_TARGET_PORT));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = late.admin_get("/ready").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("NetworkPolicy"), "{body}");
    let node = demo.mesh.node();
    assert!(
        !http_ok(&node, late_at).await,
        "an unknown policy let a connection in"
    );
    assert!(denied(&late, "inbound", "policy_unknown", "enforce").await >= 1.0);
    docs.push(objects::meshed_pod(
        NAMESPACE, "late", late.ip, "web", "late",
    ));
    publish(&demo, docs);
    late.wait_ready(Duration::from_secs(10)).await.unwrap();
    eventually("the late pod to open", || http_ok(&node, late_at)).await;
}
