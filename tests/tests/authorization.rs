//! Mesh authorization (Weft's AuthorizationPolicy) enforced by the server
//! proxies, on the two-node mesh with real proxies, controller and file
//! discovery: per-identity, per-method and per-path rules, DENY over
//! ALLOW, 403 and gRPC `PERMISSION_DENIED`, a namespace default that
//! refuses plaintext, audit mode, and a policy flipped under load.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use weft_demo::proto::EchoRequest;
use weft_demo::proto::echo_client::EchoClient;
use weft_testbed::demo::{
    Demo, DemoOptions, GRPC_PORT, HTTP_TARGET_PORT, NAMESPACE, TCP_PORT, discovery_objects,
};
use weft_testbed::{Pod, http_request, objects};

fn authorization_policy(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "policy.weft.io/v1alpha1",
        "kind": "AuthorizationPolicy",
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

fn client_sa() -> Value {
    json!({"type": "ServiceAccount", "serviceAccount": {"name": "client"}})
}

/// web-v1: the client may GET under /public and call Echo/Say; nobody may
/// reach /public/secret. The namespace default lets only mesh clients in
/// elsewhere (web-v2).
fn policies(mode: Option<&str>) -> Vec<Value> {
    let mut annotations = json!({"policy.weft.io/default": "authenticated"});
    if let Some(mode) = mode {
        annotations["policy.weft.io/mode"] = json!(mode);
    }
    vec![
        namespace(annotations),
        authorization_policy(
            "web-v1-readers",
            json!({
                "targetRefs": [{"group": "", "kind": "Pod", "selector": {"matchLabels": {"app": "web-v1"}}}],
                "action": "ALLOW",
                "enforcementLevel": "Application",
                "rules": [{
                    "sources": [client_sa()],
                    "http": [
                        {"methods": ["GET"], "path": {"type": "PathPrefix", "value": "/public"}},
                        {"grpc": {"service": "weft.demo.Echo", "method": "Say"}},
                    ],
                }],
            }),
        ),
        authorization_policy(
            "no-secrets",
            json!({
                "targetRefs": [{"kind": "Pod", "selector": {"matchLabels": {"app": "web-v1"}}}],
                "action": "DENY",
                "enforcementLevel": "Application",
                "rules": [{"http": [{"path": {"type": "PathPrefix", "value": "/public/secret"}}]}],
            }),
        ),
    ]
}

fn publish(demo: &Demo, extra: Vec<Value>) {
    let mut docs = discovery_objects(&demo.client, &demo.web_v1, &demo.web_v2);
    docs.extend(extra);
    demo.mesh.publish("demo", &objects::file(&docs)).unwrap();
}

async fn status(from: &Pod, to: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_request(from, to, method, path)
        .await
        .unwrap_or((0, String::new()))
}

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

async fn eventually<F, Fut>(what: &str, mut check: F)
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
}

async fn denied(pod: &Pod, reason: &str, mode: &str) -> f64 {
    pod.metrics().await.unwrap().sum(
        "authorization_denied_total",
        &[("reason", reason), ("mode", mode)],
    )
}

async fn grpc_code(from: &Pod, to: SocketAddr, repeat: bool) -> tonic::Code {
    let channel = from.grpc_channel(to).await.unwrap();
    let mut echo = EchoClient::new(channel);
    let request = EchoRequest {
        message: "hi".into(),
        count: 1,
    };
    let result = match repeat {
        false => echo.say(request).await.map(|_| ()),
        true => echo.repeat(request).await.map(|_| ()),
    };
    match result {
        Ok(()) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_are_authorized_by_identity_method_and_path() {
    weft_testbed::require_root();
    let demo = Demo::start("authz", DemoOptions::default()).await.unwrap();
    let (client, v1, v2) = (&demo.client, &demo.web_v1, &demo.web_v2);
    let node = demo.mesh.node();
    let v1_http = SocketAddr::from((v1.ip, HTTP_TARGET_PORT));
    let v2_http = SocketAddr::from((v2.ip, HTTP_TARGET_PORT));
    assert_eq!(
        status(client, v1_http, "POST", "/x").await.0,
        200,
        "open before any policy"
    );

    publish(&demo, policies(None));
    eventually("the policies to apply", || async {
        status(client, v1_http, "POST", "/x").await.0 == 403
    })
    .await;
    eventually("web-v2's default to apply", || async {
        status(&node, v2_http, "GET", "/").await.0 == 403
    })
    .await;

    // (from, method, path, status, what the refusal names)
    let table: [(&Pod, &str, &str, u16, &str); 8] = [
        (client, "GET", "/public", 200, ""),
        (client, "GET", "/public/page?x=1", 200, ""),
        (
            client,
            "POST",
            "/public/page",
            403,
            "not_authorized: demo/web-v1-readers",
        ),
        (client, "GET", "/publicity", 403, "not_authorized"),
        (client, "GET", "/public/../admin", 403, "not_authorized"),
        (
            client,
            "GET",
            "/public/secret/key",
            403,
            "deny_rule: demo/no-secrets",
        ),
        // Another service account, meshed: not the client.
        (v2, "GET", "/public", 403, "not_authorized"),
        // web-v1's own node (kubelet probes) is always let in.
        (&node, "GET", "/", 200, ""),
    ];
    let mut wrong = Vec::new();
    for (from, method, path, want, names) in table {
        let (got, body) = status(from, v1_http, method, path).await;
        if got != want || !body.contains(names) {
            wrong.push(format!(
                "{} {method} {path}: {got} {body:?}, want {want} naming {names:?}",
                from.name
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // gRPC: Say is allowed, Repeat answers PERMISSION_DENIED.
    let v1_grpc = SocketAddr::from((v1.ip, GRPC_PORT));
    assert_eq!(grpc_code(client, v1_grpc, false).await, tonic::Code::Ok);
    assert_eq!(
        grpc_code(client, v1_grpc, true).await,
        tonic::Code::PermissionDenied
    );
    // Opaque TCP cannot be checked against HTTP rules: refused.
    assert!(!banner_ok(client, SocketAddr::from((v1.ip, TCP_PORT))).await);
    // web-v2 has no policy: the `authenticated` default lets mesh clients
    // in and refuses plaintext from another node.
    assert_eq!(status(client, v2_http, "DELETE", "/").await.0, 200);
    let (code, body) = status(&node, v2_http, "GET", "/").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("default: default:authenticated"), "{body}");

    assert!(denied(v1, "not_authorized", "enforce").await >= 5.0);
    assert!(denied(v1, "deny_rule", "enforce").await >= 1.0);
    assert!(denied(v2, "default", "enforce").await >= 1.0);

    // Audit mode: counted, logged, let through.
    publish(&demo, policies(Some("audit")));
    eventually("audit mode", || async {
        status(client, v1_http, "POST", "/public/page").await.0 == 200
    })
    .await;
    assert!(denied(v1, "not_authorized", "audit").await >= 1.0);
    assert_eq!(grpc_code(client, v1_grpc, true).await, tonic::Code::Ok);

    // A policy that cannot be read keeps what it guards closed.
    let broken = authorization_policy(
        "typo",
        json!({
            "targetRefs": [{"kind": "Pod", "selector": {"matchLabels": {"app": "web-v2"}}}],
            "action": "Allow",
            "enforcementLevel": "Network",
            "rules": [{}],
        }),
    );
    publish(&demo, vec![namespace(json!({})), broken]);
    eventually("the broken policy to close web-v2", || async {
        status(client, v2_http, "GET", "/").await.0 == 403
    })
    .await;
    assert_eq!(status(client, v1_http, "POST", "/x").await.0, 200);
}

/// A DENY flipped on and off while requests run: the client sees 200s,
/// then only 403s, then 200s again, never interleaved; the server proxy
/// counts exactly the 403s it sent; and the refusing window lasts as long
/// as the policy did, give or take discovery's propagation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_flipped_under_load_refuses_exactly_while_it_holds() {
    weft_testbed::require_root();
    let demo = Demo::start("authzflip", DemoOptions::default())
        .await
        .unwrap();
    let (client, v1) = (demo.client.clone(), &demo.web_v1);
    let v1_http = SocketAddr::from((v1.ip, HTTP_TARGET_PORT));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (code, _) = status(&client, v1_http, "GET", "/").await;
                seen.push((Instant::now(), code));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deny = authorization_policy(
        "flip",
        json!({
            "targetRefs": [{"kind": "Pod", "selector": {"matchLabels": {"app": "web-v1"}}}],
            "action": "DENY",
            "enforcementLevel": "Network",
            "rules": [{"sources": [client_sa()]}],
        }),
    );
    let on = Instant::now();
    publish(&demo, vec![deny]);
    let hold = Duration::from_secs(3);
    tokio::time::sleep(hold).await;
    let off = Instant::now();
    publish(&demo, vec![]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.await.unwrap();

    let other: Vec<_> = seen
        .iter()
        .filter(|(_, c)| *c != 200 && *c != 403)
        .collect();
    assert!(
        other.is_empty(),
        "answers other than 200 and 403: {other:?}"
    );
    let refused: Vec<Instant> = seen
        .iter()
        .filter(|(_, c)| *c == 403)
        .map(|(t, _)| *t)
        .collect();
    let (Some(first), Some(last)) = (refused.first(), refused.last()) else {
        panic!("no request was refused in {} requests", seen.len());
    };
    let inside = seen.iter().filter(|(t, _)| t >= first && t <= last);
    let allowed_inside = inside.filter(|(_, c)| *c == 200).count();
    assert_eq!(allowed_inside, 0, "200s between the first and last 403");
    let before = seen.iter().filter(|(t, _)| t < first).count();
    let after = seen.iter().filter(|(t, _)| t > last).count();
    let started = first.duration_since(on);
    let ended = last.duration_since(off);
    let window = last.duration_since(*first);
    eprintln!(
        "flip: {} requests: {before} allowed, {} refused ({window:?}, from {started:?} after the \
         policy to {ended:?} after its removal), {after} allowed",
        seen.len(),
        refused.len()
    );
    assert!(
        before > 0 && after > 0,
        "the load did not run on both sides"
    );
    assert!(
        started < Duration::from_secs(2),
        "took {started:?} to refuse"
    );
    assert!(
        ended < Duration::from_secs(2),
        "took {ended:?} to allow again"
    );
    assert!(
        window + Duration::from_secs(2) > hold,
        "refused for {window:?} of a {hold:?} policy"
    );
    let counted = denied(v1, "deny_rule", "enforce").await;
    assert_eq!(
        counted,
        refused.len() as f64,
        "the server counted {counted} refusals, the client saw {}",
        refused.len()
    );
}
