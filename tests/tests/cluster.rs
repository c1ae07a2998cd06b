//! Day one on a real Kubernetes: a single-node v1.20 cluster on this
//! machine (`tests/kube/node.sh`: real kubelet, containerd, runc, Debian's
//! CNI plugins, kube-proxy), Weft installed with `kubectl apply -f
//! examples/install/`, and the user's scenarios run against it as pods.
//!
//! One test owns the node: it installs, runs the independent scenarios in
//! parallel (a namespace each), then the ones that disturb the whole mesh
//! (a controller restart, uninstalling), and reports every failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::Value;
use weft_testbed::node::KubeNode;
use weft_testbed::{Bins, require_root};

const TRUST_DOMAIN: &str = "cluster.local";

fn identity(ns: &str, sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

/// The demo app (`examples/demo/k8s/demo.yaml`) in namespace `ns`,
/// labelled for injection or not.
fn demo_app(node: &KubeNode, ns: &str, meshed: bool) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(node.repo().join("examples/demo/k8s/demo.yaml"))?;
    let mut text = text.replace("namespace: demo", &format!("namespace: {ns}"));
    text = text.replace(
        "kind: Namespace\nmetadata:\n  name: demo",
        &format!(
            "kind: Namespace\nmetadata:\n  name: {ns}{}",
            if meshed {
                "\n  labels: {weft.io/inject: enabled}"
            } else {
                ""
            }
        ),
    );
    Ok(text)
}

fn has_container(pod: &Value, field: &str, name: &str) -> bool {
    pod["spec"][field]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["name"] == name))
}

fn is_meshed(pod: &Value) -> bool {
    has_container(pod, "containers", "weft-proxy")
        && has_container(pod, "initContainers", "weft-validate")
}

/// The meshed, running pods of `selector` (pods on their way out may
/// already have lost their network).
fn meshed_pods(node: &KubeNode, ns: &str, selector: &str) -> anyhow::Result<Vec<Value>> {
    Ok(node
        .pods(ns, selector)?
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && is_meshed(p))
        .collect())
}

fn pod_name(pod: &Value) -> String {
    pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn cluster_ip(node: &KubeNode, ns: &str, service: &str) -> anyhow::Result<String> {
    let svc = node.json(&["-n", ns, "get", "service", service])?;
    Ok(svc["spec"]["clusterIP"]
        .as_str()
        .context("no cluster IP")?
        .to_string())
}

/// The demo's five pods: web-v1 ×2, web-v2, grpc, load.
fn wait_demo(node: &KubeNode, ns: &str) -> anyhow::Result<Vec<Value>> {
    let timeout = Duration::from_secs(120);
    node.wait_ready(ns, "app=web,version=v1", 2, timeout)?;
    node.wait_ready(ns, "app=web,version=v2", 1, timeout)?;
    node.wait_ready(ns, "app=grpc", 1, timeout)?;
    node.wait_ready(ns, "app=load", 1, timeout)?;
    Ok(node
        .pods(ns, "app")?
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect())
}

fn load_pod(node: &KubeNode, ns: &str) -> anyhow::Result<String> {
    Ok(pod_name(
        node.wait_ready(ns, "app=load", 1, Duration::from_secs(60))?
            .first()
            .context("no load pod")?,
    ))
}

/// Scenario 1: label a namespace, restart its pods, and they are meshed.
fn injection(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-inject";
    node.apply(&demo_app(node, ns, false)?)?;
    let before = wait_demo(node, ns)?;
    ensure!(
        before.iter().all(|p| !is_meshed(p)),
        "pods of an unlabelled namespace were injected"
    );

    node.kubectl(&["label", "namespace", ns, "weft.io/inject=enabled"])?;
    node.kubectl(&["-n", ns, "delete", "pods", "--all", "--wait=false"])?;
    let started = Instant::now();
    let pods = wait_demo(node, ns)?;
    eprintln!(
        "injection: {} pods back, meshed, in {:?}",
        pods.len(),
        started.elapsed()
    );
    for pod in &pods {
        ensure!(is_meshed(pod), "{} has no proxy", pod_name(pod));
    }

    // An annotated opt-out in the labelled namespace stays unmeshed.
    node.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: opted-out
  namespace: {ns}
  annotations: {{weft.io/inject: disabled}}
spec:
  automountServiceAccountToken: false
  containers:
    - {{name: app, image: docker.io/weft/weft-demo:0.1.0, imagePullPolicy: IfNotPresent, args: ["sink", "0.0.0.0:9000"]}}
"#
    ))?;
    let opted_out = node.json(&["-n", ns, "get", "pod", "opted-out"])?;
    ensure!(!is_meshed(&opted_out), "the opted-out pod was injected");

    let web = cluster_ip(node, ns, "web")?;
    let load = load_pod(node, ns)?;
    let report = node.load(ns, &load, "load", &format!("{web}:80"), 40, 5)?;
    eprintln!("injection: load {}", report.summary);
    ensure!(report.failed() == 0, "failed requests: {}", report.summary);
    // The balancer favours the faster endpoints, so the split between the
    // versions is not fixed; every answer comes from one of them.
    ensure!(
        report.from("web-v1") + report.from("web-v2") == report.ok(),
        "answers from elsewhere: {}",
        report.summary
    );

    // mTLS both ways, with the service accounts' identities.
    let client = meshed_pods(node, ns, "app=load")?;
    let client = client.first().context("load pod")?;
    let outbound = node.proxy_metrics(client)?.sum(
        "request_total",
        &[
            ("direction", "outbound"),
            ("tls", "true"),
            ("server_id", &identity(ns, "web")),
        ],
    );
    ensure!(
        outbound >= report.ok() as f64,
        "client proxy counted {outbound} mTLS requests to web, load got {} answers",
        report.ok()
    );
    let mut inbound = 0.0;
    for pod in meshed_pods(node, ns, "app=web")? {
        inbound += node.proxy_metrics(&pod)?.sum(
            "request_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", &identity(ns, "load")),
            ],
        );
    }
    ensure!(
        inbound >= report.ok() as f64,
        "servers counted {inbound} mTLS requests from load"
    );
    Ok(())
}

fn traffic_split(ns: &str, v1: u32, v2: u32) -> String {
    format!(
        r#"
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {{name: web-split, namespace: {ns}}}
spec:
  service: web
  backends:
    - {{service: web-v1, weight: {v1}}}
    - {{service: web-v2, weight: {v2}}}
"#
    )
}

/// Scenario 2: a TrafficSplit shifts traffic, and a change moves it within
/// seconds without a failed request.
fn split(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-split";
    node.apply(&demo_app(node, ns, true)?)?;
    let pods = wait_demo(node, ns)?;
    ensure!(pods.iter().all(is_meshed), "not all pods meshed");
    let web = format!("{}:80", cluster_ip(node, ns, "web")?);
    let load = load_pod(node, ns)?;

    node.apply(&traffic_split(ns, 90, 10))?;
    // Until the proxy has the split, the apex balances 2:1 by endpoints.
    node.wait_for("the 90/10 split in effect", Duration::from_secs(30), || {
        let r = node.load(ns, &load, "load", &web, 50, 2)?;
        Ok((r.from("web-v2") * 100 <= r.ok() * 20).then_some(()))
    })?;
    let report = node.load(ns, &load, "load", &web, 100, 6)?;
    let share = report.from("web-v1") as f64 / report.ok() as f64;
    eprintln!("split 90/10: web-v1 share {share:.3} ({})", report.summary);
    ensure!(report.failed() == 0, "failed requests: {}", report.summary);
    ensure!(
        (share - 0.90).abs() <= 0.04,
        "web-v1 got {share:.3} of the traffic, configured 0.90"
    );

    // 0/100 under load: all traffic moves, nothing fails.
    let report = std::thread::scope(|s| {
        let running = s.spawn(|| node.load(ns, &load, "load", &web, 50, 15));
        std::thread::sleep(Duration::from_secs(4));
        node.apply(&traffic_split(ns, 0, 100))?;
        running.join().expect("load thread")
    })?;
    ensure!(
        report.failed() == 0,
        "failed requests while shifting: {}",
        report.summary
    );
    // The seconds after which no request reached web-v1 again.
    let last_v1 = report
        .seconds
        .iter()
        .rposition(|s| s["by_backend"]["web-v1"].as_u64().unwrap_or(0) > 0)
        .context("web-v1 never answered before the shift")?;
    eprintln!(
        "split 0/100: applied at second 4, last web-v1 answer in second {last_v1} ({})",
        report.summary
    );
    ensure!(
        last_v1 <= 4 + 5,
        "traffic still reached web-v1 in second {last_v1}, 5+ s after 0/100"
    );
    ensure!(report.seconds.len() >= 12, "the load stopped early");
    Ok(())
}

/// Scenario 6: Prometheus with the shipped scrape configuration finds every
/// injected proxy (and the control plane) among the cluster's pods, labels
/// each with its namespace, workload and pod, and the workload dashboard
/// has data for each demo workload.
fn metrics(node: &KubeNode) -> anyhow::Result<()> {
    use weft_testbed::dashboards::{self, Dashboard};
    use weft_testbed::prometheus::Prometheus;
    let ns = "e2e-metrics";
    node.apply(&demo_app(node, ns, true)?)?;
    let pods = wait_demo(node, ns)?;
    ensure!(pods.iter().all(is_meshed), "not all pods meshed");
    let load = load_pod(node, ns)?;
    let web = format!("{}:80", cluster_ip(node, ns, "web")?);
    let grpc = format!("{}:9090", cluster_ip(node, ns, "grpc")?);

    // The shipped configuration with its relabelling untouched. Debian's
    // Prometheus has no Kubernetes discovery, so the pods come from the
    // API server through `pod_sd` (the `role: pod` targets and meta
    // labels), served to Prometheus's HTTP discovery.
    let shipped = std::fs::read_to_string(node.repo().join("examples/prometheus/kubernetes.yml"))?;
    let sd = std::net::TcpListener::bind("127.0.0.1:0")?;
    let sd_url = format!("http://{}/targets", sd.local_addr()?);
    let (config, jobs) = weft_testbed::pod_sd::http_sd_config(&shipped, &sd_url, "5s")?;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let kubectl = node.kubectl_command();
    runtime.spawn(serve_pod_targets(sd, kubectl, jobs));
    let prometheus = runtime.block_on(Prometheus::start(
        None,
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        dir.path(),
        &config,
    ))?;
    // Traffic for every workload: HTTP to web (both versions), gRPC
    // to grpc, both from the load pod.
    std::thread::scope(|s| -> anyhow::Result<()> {
        let http = s.spawn(|| node.load(ns, &load, "load", &web, 20, 45));
        let grpc = s.spawn(|| {
            node.kubectl(&[
                "-n",
                ns,
                "exec",
                &load,
                "-c",
                "load",
                "--",
                "/usr/local/bin/weft-demo",
                "load",
                &grpc,
                "--grpc",
                "--rate",
                "10",
                "--duration",
                "45s",
            ])
        });
        let expected: std::collections::BTreeSet<(String, String)> = pods
            .iter()
            .map(|p| {
                let workload = p["metadata"]["labels"]["weft.io/workload"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                (pod_name(p), workload)
            })
            .collect();
        let checked = runtime.block_on(async {
                // Every injected proxy of the namespace, up, with its labels.
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let targets = prometheus.active_targets().await?;
                    let found: std::collections::BTreeSet<(String, String)> = targets
                        .iter()
                        .filter(|t| {
                            t["labels"]["job"] == "weft-proxy"
                                && t["labels"]["namespace"] == ns
                                && t["health"] == "up"
                        })
                        .map(|t| {
                            let l = &t["labels"];
                            (
                                l["pod"].as_str().unwrap_or_default().to_string(),
                                l["workload"].as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect();
                    let control_plane = targets
                        .iter()
                        .filter(|t| t["labels"]["job"] == "weft-control-plane" && t["health"] == "up")
                        .count();
                    if found == expected && control_plane == 4 {
                        eprintln!(
                            "metrics: Prometheus found {} proxies in {ns} and {control_plane} control-plane pods",
                            found.len()
                        );
                        break;
                    }
                    if Instant::now() > deadline {
                        anyhow::bail!(
                            "Prometheus found {found:?} and {control_plane} control-plane pods; expected {expected:?} and 4"
                        );
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // The workload dashboard, for each demo workload, once
                // the traffic has been scraped a few times.
                let dashboard = Dashboard::named(&dashboards::load_all()?, "weft-workload.json")?;
                let deadline = Instant::now() + Duration::from_secs(40);
                loop {
                    let mut failures = Vec::new();
                    for workload in ["web-v1", "web-v2", "grpc", "load"] {
                        let fixed = std::collections::BTreeMap::from([
                            ("namespace".to_string(), ns.to_string()),
                            ("workload".to_string(), workload.to_string()),
                        ]);
                        match dashboard.evaluate(&prometheus, &fixed).await {
                            Ok(report) => failures.extend(report.failures),
                            Err(e) => failures.push(e),
                        }
                    }
                    if failures.is_empty() {
                        eprintln!("metrics: every workload dashboard query has data for web-v1, web-v2, grpc and load");
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        anyhow::bail!("workload dashboard:\n{}", failures.join("\n"));
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            });
        let http = http.join().expect("load thread")?;
        let grpc = grpc.join().expect("grpc load thread")?;
        checked?;
        ensure!(http.failed() == 0, "HTTP load failed: {}", http.summary);
        ensure!(
            grpc.contains("\"summary\":true") && grpc.contains("\"failed\":0"),
            "gRPC load: {grpc}"
        );
        Ok(())
    })
}

/// Prometheus's HTTP discovery endpoint: `GET /targets?job=J` lists the
/// cluster's pods (through `kubectl`) as `role: pod` targets, limited to
/// the namespaces job J's discovery names.
async fn serve_pod_targets(
    listener: std::net::TcpListener,
    kubectl: Vec<String>,
    jobs: Vec<weft_testbed::pod_sd::JobNamespaces>,
) {
    use http_body_util::Full;
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let (kubectl, jobs) = (std::sync::Arc::new(kubectl), std::sync::Arc::new(jobs));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (kubectl, jobs) = (kubectl.clone(), jobs.clone());
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (kubectl, jobs) = (kubectl.clone(), jobs.clone());
                async move {
                    let job = req
                        .uri()
                        .query()
                        .and_then(|q| q.strip_prefix("job="))
                        .unwrap_or_default()
                        .to_string();
                    let namespaces = jobs
                        .iter()
                        .find(|(name, _)| *name == job)
                        .map(|(_, ns)| ns.clone())
                        .unwrap_or_default();
                    let listed = tokio::process::Command::new(&kubectl[0])
                        .args(&kubectl[1..])
                        .args(["get", "pods", "-A", "-o", "json"])
                        .output()
                        .await;
                    let body = match listed {
                        Ok(out) if out.status.success() => {
                            let list: Value =
                                serde_json::from_slice(&out.stdout).unwrap_or_default();
                            let pods = list["items"].as_array().cloned().unwrap_or_default();
                            weft_testbed::pod_sd::pod_targets(&pods, &namespaces).to_string()
                        }
                        // Prometheus keeps the last good list on an error.
                        _ => {
                            return Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(503)
                                    .body(Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            );
                        }
                    };
                    Ok(http::Response::builder()
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(bytes::Bytes::from(body)))
                        .unwrap())
                }
            });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Scenario 3: a Job in a meshed namespace completes, and its pod ends.
fn job(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-job";
    node.apply(&demo_app(node, ns, true)?)?;
    wait_demo(node, ns)?;
    let web = cluster_ip(node, ns, "web")?;
    node.apply(&format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: call-web, namespace: {ns}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      serviceAccountName: load
      containers:
        - name: call
          image: docker.io/weft/weft-demo:0.1.0
          imagePullPolicy: IfNotPresent
          args: ["get", "{web}:80", "/"]
"#
    ))?;
    let started = Instant::now();
    let pod = node.wait_for("the Job's pod to finish", Duration::from_secs(90), || {
        let pods = node.pods(ns, "job-name=call-web")?;
        Ok(pods
            .into_iter()
            .find(|p| p["status"]["phase"] == "Succeeded" || p["status"]["phase"] == "Failed"))
    })?;
    eprintln!(
        "job: pod {} after {:?}",
        pod["status"]["phase"],
        started.elapsed()
    );
    ensure!(is_meshed(&pod), "the Job's pod was not injected");
    ensure!(
        pod["status"]["phase"] == "Succeeded",
        "the Job's pod ended {}: {}",
        pod["status"]["phase"],
        pod["status"]["containerStatuses"]
    );
    let logs = node.kubectl(&["-n", ns, "logs", &pod_name(&pod), "-c", "call"])?;
    ensure!(
        logs.starts_with("200 hello from web"),
        "the Job's call: {logs}"
    );
    node.wait_for("the Job to complete", Duration::from_secs(30), || {
        let job = node.json(&["-n", ns, "get", "job", "call-web"])?;
        Ok((job["status"]["succeeded"] == 1).then_some(()))
    })
}

/// Scenario 4: deleting a server pod under load fails nothing the
/// retries do not cover.
fn drain(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-drain";
    node.apply(&demo_app(node, ns, true)?)?;
    wait_demo(node, ns)?;
    node.kubectl(&[
        "-n",
        ns,
        "annotate",
        "service",
        "web-v1",
        "retry.weft.io/http=gateway-error,connect-failure",
    ])?;
    let target = format!("{}:80", cluster_ip(node, ns, "web-v1")?);
    let load = load_pod(node, ns)?;
    let victim = pod_name(
        node.pods(ns, "app=web,version=v1")?
            .first()
            .context("no web-v1 pod")?,
    );
    let report = std::thread::scope(|s| {
        let running = s.spawn(|| node.load(ns, &load, "load", &target, 50, 12));
        std::thread::sleep(Duration::from_secs(4));
        node.kubectl(&["-n", ns, "delete", "pod", &victim, "--wait=false"])?;
        running.join().expect("load thread")
    })?;
    eprintln!("drain: deleted {victim} at second 4: {}", report.summary);
    ensure!(report.failed() == 0, "failed requests: {}", report.summary);
    ensure!(report.ok() >= 500, "too few answers: {}", report.summary);
    Ok(())
}

/// Scenario 5: an unmeshed client reaches a meshed server (permissive).
fn unmeshed_client(node: &KubeNode) -> anyhow::Result<()> {
    let (server_ns, client_ns) = ("e2e-permissive", "e2e-plain");
    node.apply(&demo_app(node, server_ns, true)?)?;
    node.apply(&demo_app(node, client_ns, false)?)?;
    let servers = wait_demo(node, server_ns)?;
    ensure!(servers.iter().all(is_meshed), "servers not meshed");
    let clients = wait_demo(node, client_ns)?;
    ensure!(!clients.iter().any(is_meshed), "client meshed");
    let web = cluster_ip(node, server_ns, "web")?;
    let load = load_pod(node, client_ns)?;
    let report = node.load(client_ns, &load, "load", &format!("{web}:80"), 20, 3)?;
    eprintln!("unmeshed client: {}", report.summary);
    ensure!(
        report.failed() == 0 && report.ok() > 0,
        "{}",
        report.summary
    );
    let mut plaintext = 0.0;
    for pod in meshed_pods(node, server_ns, "app=web")? {
        plaintext += node.proxy_metrics(&pod)?.sum(
            "request_total",
            &[("direction", "inbound"), ("tls", "false")],
        );
    }
    ensure!(
        plaintext >= report.ok() as f64,
        "the servers' proxies saw {plaintext} plaintext requests, the client got {} answers",
        report.ok()
    );
    Ok(())
}

/// The controllers restart; discovery resyncs and a new split applies.
fn controller_restart(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-split";
    node.kubectl(&[
        "-n",
        "weft-system",
        "delete",
        "pods",
        "-l",
        "app.kubernetes.io/name=weft-controller",
    ])?;
    node.wait_ready(
        "weft-system",
        "app.kubernetes.io/name=weft-controller",
        2,
        Duration::from_secs(90),
    )?;
    node.apply(&traffic_split(ns, 50, 50))?;
    let web = format!("{}:80", cluster_ip(node, ns, "web")?);
    let load = load_pod(node, ns)?;
    node.wait_for(
        "the 50/50 split after a controller restart",
        Duration::from_secs(30),
        || {
            let r = node.load(ns, &load, "load", &web, 50, 2)?;
            ensure!(r.failed() == 0, "failed requests: {}", r.summary);
            Ok((r.from("web-v1") > 10 && r.from("web-v2") > 10).then_some(()))
        },
    )
}

const PRIMARY_CNI_CONFIG: &str = "/etc/cni/net.d/10-weft-node.conflist";

fn chained() -> anyhow::Result<bool> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(PRIMARY_CNI_CONFIG)?)?;
    Ok(doc["plugins"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["type"] == "weft-cni")))
}

/// The race CNI plugins are known for: a meshed pod that starts before the
/// plugin is on its node. It must never run its app; once the installer is
/// back, the pod is replaced by one with rules. And a primary CNI that
/// rewrites its config does not lose the chain.
fn late_cni(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-late";
    // Taking the installer off the node removes the plugin from it.
    node.kubectl(&[
        "-n",
        "weft-system",
        "patch",
        "daemonset",
        "weft-cni",
        "-p",
        r#"{"spec":{"template":{"spec":{"nodeSelector":{"weft.io/no-such-node":"x"}}}}}"#,
    ])?;
    node.wait_for(
        "the plugin to leave the node",
        Duration::from_secs(60),
        || Ok((!chained()?).then_some(())),
    )?;
    node.apply(&format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {{weft.io/inject: enabled}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: early, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: early}}}}
  template:
    metadata:
      labels: {{app: early}}
      annotations: {{config.weft.io/proxy-cpu-request: 10m}}
    spec:
      automountServiceAccountToken: false
      containers:
        - name: web
          image: docker.io/weft/weft-demo:0.1.0
          imagePullPolicy: IfNotPresent
          args: ["http", "0.0.0.0:8080", "early"]
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
"#
    ))?;
    let validator_failed = |pod: &Value| {
        pod["status"]["initContainerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"] == "weft-validate")
            .any(|s| {
                s["state"]["terminated"]["exitCode"] == 95
                    || s["lastState"]["terminated"]["exitCode"] == 95
            })
    };
    let stuck = node.wait_for(
        "the validator to stop a pod without rules",
        Duration::from_secs(60),
        || {
            Ok(node
                .pods(ns, "app=early")?
                .into_iter()
                .find(|p| validator_failed(p)))
        },
    )?;
    let app_started = stuck["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| !s["state"]["running"].is_null() || !s["lastState"]["terminated"].is_null());
    ensure!(
        !app_started,
        "a container ran in a pod without redirect rules"
    );
    let log = node.kubectl(&["-n", ns, "logs", &pod_name(&stuck), "-c", "weft-validate"])?;
    eprintln!("late cni: {} stopped: {}", pod_name(&stuck), log.trim());
    ensure!(log.contains("no redirect rules"), "validator said: {log}");

    // The installer returns: it chains, and replaces the stuck pod.
    node.kubectl(&[
        "-n",
        "weft-system",
        "patch",
        "daemonset",
        "weft-cni",
        "--type",
        "json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/template/spec/nodeSelector"}]"#,
    ])?;
    let started = Instant::now();
    let replaced = node.wait_ready(ns, "app=early", 1, Duration::from_secs(90))?;
    ensure!(
        pod_name(&replaced[0]) != pod_name(&stuck) && is_meshed(&replaced[0]),
        "the stuck pod was not replaced by a meshed one"
    );
    eprintln!(
        "late cni: replaced by {} and ready {:?} after the installer returned",
        pod_name(&replaced[0]),
        started.elapsed()
    );

    // The primary CNI rewrites its config without us.
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(PRIMARY_CNI_CONFIG)?)?;
    doc["plugins"]
        .as_array_mut()
        .context("plugins")?
        .retain(|p| p["type"] != "weft-cni");
    std::fs::write(PRIMARY_CNI_CONFIG, serde_json::to_string_pretty(&doc)?)?;
    let started = Instant::now();
    node.wait_for("the chain to be restored", Duration::from_secs(20), || {
        Ok(chained()?.then_some(()))
    })?;
    eprintln!(
        "late cni: chain restored {:?} after a rewrite",
        started.elapsed()
    );
    Ok(())
}

/// `kubectl delete -f` of the install folder removes Weft, including the
/// plugin from the node's CNI config.
fn uninstall(node: &KubeNode, install: &Path) -> anyhow::Result<()> {
    node.kubectl(&[
        "delete",
        "-f",
        install.to_str().unwrap(),
        "--wait=true",
        "--timeout=120s",
    ])?;
    node.wait_for(
        "the CNI installer to clean up",
        Duration::from_secs(30),
        || {
            let conf = std::fs::read_to_string("/etc/cni/net.d/10-weft-node.conflist")?;
            Ok((!conf.contains("weft-cni")
                && !Path::new("/opt/cni/bin/weft-cni").exists()
                && !Path::new("/etc/cni/net.d/weft-cni.kubeconfig").exists())
            .then_some(()))
        },
    )?;
    for (kind, name) in [
        ("mutatingwebhookconfiguration", "weft-injector"),
        ("crd", "trafficsplits.split.smi-spec.io"),
        ("clusterrole", "weft-controller"),
        ("clusterrole", "weft-cni"),
        ("namespace", "weft-system"),
    ] {
        node.wait_for(
            &format!("{kind}/{name} to be gone"),
            Duration::from_secs(60),
            || {
                Ok(node
                    .kubectl(&["get", kind, name, "--ignore-not-found", "-o", "name"])?
                    .trim()
                    .is_empty()
                    .then_some(()))
            },
        )?;
    }
    // New pods of a labelled namespace are left alone now.
    node.apply(&demo_app(node, "e2e-after", true)?)?;
    let pods = wait_demo(node, "e2e-after")?;
    ensure!(
        !pods.iter().any(is_meshed),
        "a pod was injected after uninstall"
    );
    Ok(())
}

/// The install folder as a user has it after `weft-controller
/// install-secrets`.
fn install_folder(repo: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let folder = out.join("install");
    std::fs::create_dir_all(&folder)?;
    for entry in std::fs::read_dir(repo.join("examples/install"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") && !path.ends_with("05-secrets.yaml") {
            std::fs::copy(&path, folder.join(path.file_name().unwrap()))?;
        }
    }
    let status = std::process::Command::new(Bins::locate()?.path("weft-controller"))
        .arg("install-secrets")
        .arg("--pki")
        .arg(out.join("pki"))
        .arg("--out")
        .arg(folder.join("05-secrets.yaml"))
        .status()?;
    ensure!(status.success(), "install-secrets failed");
    Ok(folder)
}

#[test]
fn day_one_on_a_real_cluster() {
    require_root();
    let started = Instant::now();
    let node = KubeNode::up().expect("the single-node cluster");
    eprintln!("node up with Weft's images in {:?}", started.elapsed());
    let work = tempfile::tempdir().unwrap();
    let install = install_folder(node.repo(), work.path()).unwrap();

    let started = Instant::now();
    node.kubectl(&["apply", "-f", install.to_str().unwrap()])
        .unwrap();
    let ready = (|| -> anyhow::Result<()> {
        for deploy in ["weft-controller", "weft-injector"] {
            node.kubectl(&[
                "-n",
                "weft-system",
                "rollout",
                "status",
                &format!("deploy/{deploy}"),
                "--timeout=120s",
            ])?;
        }
        node.kubectl(&[
            "-n",
            "weft-system",
            "rollout",
            "status",
            "ds/weft-cni",
            "--timeout=120s",
        ])?;
        Ok(())
    })();
    if let Err(e) = ready {
        panic!(
            "Weft did not become ready: {e:#}\n{}\nkubelet:\n{}",
            node.kubectl(&["-n", "weft-system", "get", "pods", "-o", "wide"])
                .unwrap_or_default(),
            node.component_log("kubelet")
        );
    }
    eprintln!("Weft installed and ready in {:?}", started.elapsed());

    type Scenario = fn(&KubeNode) -> anyhow::Result<()>;
    let parallel: [(&str, Scenario); 6] = [
        ("injection", injection),
        ("traffic split", split),
        ("job", job),
        ("drain", drain),
        ("unmeshed client", unmeshed_client),
        ("metrics", metrics),
    ];
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        let running: Vec<_> = parallel
            .iter()
            .map(|(name, scenario)| {
                let node = &node;
                (
                    name,
                    s.spawn(move || {
                        let started = Instant::now();
                        let result = scenario(node);
                        (result, started.elapsed())
                    }),
                )
            })
            .collect();
        for (name, handle) in running {
            let (result, took) = handle.join().expect("scenario thread");
            match result {
                Ok(()) => eprintln!("PASS {name} ({took:?})"),
                Err(e) => {
                    eprintln!("FAIL {name} ({took:?}): {e:#}");
                    failures.push(format!("{name}: {e:#}"));
                }
            }
        }
    });
    // One at a time: each disturbs the whole mesh.
    type Sequential<'a> = Box<dyn Fn() -> anyhow::Result<()> + 'a>;
    let sequential: [(&str, Sequential); 3] = [
        ("controller restart", Box::new(|| controller_restart(&node))),
        ("late cni", Box::new(|| late_cni(&node))),
        ("uninstall", Box::new(|| uninstall(&node, &install))),
    ];
    for (name, scenario) in sequential {
        let result = scenario();
        match result {
            Ok(()) => eprintln!("PASS {name}"),
            Err(e) => {
                eprintln!("FAIL {name}: {e:#}");
                failures.push(format!("{name}: {e:#}"));
            }
        }
    }
    if !failures.is_empty() {
        let pods = node
            .kubectl(&["get", "pods", "-A", "-o", "wide"])
            .unwrap_or_default();
        panic!("{}\n\npods:\n{pods}", failures.join("\n"));
    }
}
