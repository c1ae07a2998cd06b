//! A pod spec written by the injector really runs: the proxy container's
//! environment (downward-API fields and `$(VAR)` references resolved as
//! kubelet does, the projected token mounted) starts a real weft-proxy that
//! gets its certificate, the classic mode's `postStart` hook holds until
//! that proxy is ready, and two injected pods talk mTLS with the
//! identities of their service accounts. (The real API server and kubelet
//! run the same specs in the Kubernetes tests.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod as K8sPod};
use serde_json::{Value, json};
use weft_injector::inject::{self, ANCHORS_DIR, Decision, NamespaceView, TOKEN_DIR};
use weft_injector::settings::{MeshSettings, SidecarMode};
use weft_testbed::identity::{CaDir, ControllerOptions};
use weft_testbed::{Mesh, Pod, http_request, require_root};

const NAMESPACE: &str = "demo";
const APP_PORT: u16 = 8080;

fn settings(controller: SocketAddr, ca: &CaDir) -> MeshSettings {
    MeshSettings {
        controller_addr: controller.to_string(),
        log_level: "info".into(),
        ready_timeout_seconds: 30,
        ..MeshSettings::defaults(std::fs::read_to_string(ca.anchors()).unwrap())
    }
}

/// The pod as a Deployment would create it, after the injector's patch.
fn injected_pod(name: &str, service_account: &str, settings: &MeshSettings) -> Value {
    let mut doc = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "weft-demo", "ports": [{"containerPort": APP_PORT}]}]
        }
    });
    let pod: K8sPod = serde_json::from_value(doc.clone()).unwrap();
    let view = NamespaceView {
        name: NAMESPACE,
        injection_enabled: true,
    };
    let Decision::Inject { patch, .. } =
        inject::mutate(&pod, view, settings, SidecarMode::Classic).unwrap()
    else {
        panic!("{name} not injected")
    };
    json_patch::patch(&mut doc, &patch).unwrap();
    doc
}

/// The environment kubelet gives a container: downward-API fields filled
/// in, then `$(NAME)` replaced by variables defined earlier in the list.
fn kubelet_env(container: &Container, pod: &K8sPod) -> Vec<(String, String)> {
    let mut resolved: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => expand(v, &resolved),
            (None, Some(from)) => {
                let path = &from.field_ref.as_ref().expect("only fieldRef").field_path;
                match path.as_str() {
                    "metadata.namespace" => pod.metadata.namespace.clone().unwrap(),
                    "metadata.name" => pod.metadata.name.clone().unwrap(),
                    "status.hostIP" => weft_testbed::identity::NODE_GATEWAY.to_string(),
                    "spec.serviceAccountName" => pod
                        .spec
                        .as_ref()
                        .unwrap()
                        .service_account_name
                        .clone()
                        .unwrap(),
                    other => panic!("field {other} not simulated"),
                }
            }
            (None, None) => String::new(),
        };
        resolved.push((var.name.clone(), value));
    }
    resolved
}

fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = value.to_string();
    for (name, v) in defined {
        out = out.replace(&format!("$({name})"), v);
    }
    out
}

struct Started {
    hook_waited: Duration,
}

/// Runs the injected proxy container of `doc` in `pod`: its `postStart`
/// command first (it must wait), then the proxy itself.
async fn run_injected(mesh: &Mesh, pod: &Pod, doc: &Value, token: &Path) -> Started {
    let k8s: K8sPod = serde_json::from_value(doc.clone()).unwrap();
    let spec = k8s.spec.as_ref().unwrap();
    let proxy = spec.containers[0].clone();
    assert_eq!(proxy.name, weft_api::PROXY_CONTAINER_NAME);
    let mut env = kubelet_env(&proxy, &k8s);
    // The projected token volume, "mounted" where the spec says, and the
    // anchors' emptyDir as a folder of the pod's own.
    let mounts = proxy.volume_mounts.as_ref().unwrap();
    assert_eq!(mounts[0].mount_path, TOKEN_DIR);
    assert_eq!(mounts[1].mount_path, ANCHORS_DIR);
    let anchors_dir = mesh.dir.join(format!("{}-anchors-volume", pod.name));
    std::fs::create_dir_all(&anchors_dir).unwrap();
    nix::unistd::chown(
        &anchors_dir,
        Some(nix::unistd::Uid::from_raw(weft_api::PROXY_UID)),
        None,
    )
    .unwrap();
    for (name, value) in &mut env {
        if name == "WEFT_IDENTITY_TOKEN_FILE" {
            assert_eq!(*value, format!("{TOKEN_DIR}/token"));
            *value = token.to_string_lossy().into_owned();
        }
        if name == "WEFT_TRUST_ANCHORS_CACHE" {
            let file = value
                .strip_prefix(ANCHORS_DIR)
                .expect("in the anchors volume");
            *value = format!("{}{file}", anchors_dir.display());
        }
    }
    let hook = proxy
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("postStart exec hook");
    let binary: PathBuf = mesh.bins.path("weft-proxy");
    assert!(hook[0].ends_with("/weft-proxy"), "{hook:?}");
    let args: Vec<&str> = hook[1..].iter().map(String::as_str).collect();
    let started = Instant::now();
    let hook_pid = mesh
        .spawn_as(
            pod,
            "post-start",
            Some(weft_api::PROXY_UID),
            None,
            &binary,
            &args,
            &env,
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        mesh.wait_exit(hook_pid, Duration::from_millis(1))
            .await
            .is_err(),
        "the hook returned before any proxy ran: {}",
        mesh.log_of(pod, "post-start")
    );
    mesh.spawn_as(
        pod,
        "proxy",
        Some(weft_api::PROXY_UID),
        None,
        &binary,
        &[],
        &env,
    )
    .unwrap();
    let status = mesh
        .wait_exit(hook_pid, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        status.success(),
        "postStart hook failed: {}\nproxy: {}",
        mesh.log_of(pod, "post-start"),
        mesh.log_of(pod, "proxy")
    );
    assert!(mesh.log_of(pod, "post-start").contains("ready after"));
    // Ready means it holds a certificate for the pod's service account,
    // and the bundle that came with it is kept for a restart.
    assert_eq!(pod.admin_get("/ready").await.unwrap().0, 200);
    let kept = std::fs::read_to_string(anchors_dir.join("ca.crt")).unwrap();
    let inline = env.iter().find(|(k, _)| k == "WEFT_TRUST_ANCHORS").unwrap();
    assert_eq!(kept.trim(), inline.1.trim(), "the cache holds the bundle");
    Started {
        hook_waited: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_pod_spec_runs_a_meshed_proxy() {
    require_root();
    let mesh = Mesh::new("inject").unwrap();
    let ca = mesh.make_ca("ca").unwrap();
    let controller = mesh
        .start_controller(&ca, ControllerOptions::default())
        .await
        .unwrap();
    let settings = settings(controller.addr(), &ca);
    let server = mesh.add_pod("web", None).unwrap();
    let client = mesh.add_pod("load", None).unwrap();

    let mut docs = BTreeMap::new();
    for (pod, account) in [(&server, "web"), (&client, "load")] {
        let mut doc = injected_pod(&pod.name, account, &settings);
        let token = mesh
            .mint_token(&ca, &format!("{}-token", pod.name), NAMESPACE, account, &[])
            .unwrap();
        // What the API server would report, for the controller's
        // discovery, before the containers start: the proxy is ready only
        // once it has its pod's policy.
        doc["status"] = json!({"podIP": pod.ip.to_string(), "phase": "Running"});
        docs.insert(pod.name.clone(), doc.clone());
        let objects: Vec<String> = docs.values().map(|d| d.to_string()).collect();
        mesh.publish("pods.yaml", &objects.join("\n---\n")).unwrap();
        let started = run_injected(&mesh, pod, &doc, &token).await;
        eprintln!(
            "{}: postStart hook returned after {:?}",
            pod.name, started.hook_waited
        );
    }

    mesh.spawn_demo(&server, "http", APP_PORT, "web")
        .await
        .unwrap();
    let target = SocketAddr::from((server.ip, APP_PORT));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = http_request(&client, target, "GET", "/").await.unwrap();
        assert_eq!(status, 200);
        let scrape = server.metrics().await.unwrap();
        let meshed = scrape.sum(
            "request_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", "spiffe://cluster.local/ns/demo/sa/load"),
            ],
        );
        if meshed >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no mTLS request from the injected client seen by the injected server: {scrape:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The client proxy saw the server's identity.
    let scrape = client.metrics().await.unwrap();
    assert!(
        scrape.sum(
            "request_total",
            &[
                ("direction", "outbound"),
                ("tls", "true"),
                ("server_id", "spiffe://cluster.local/ns/demo/sa/web"),
            ],
        ) >= 1.0
    );
}
