//! Day one on a real Kubernetes: a current cluster on this
//! machine (`tests/kube/node.sh`: real kubelet, containerd, runc, Debian's
//! CNI plugins, kube-proxy), Weft installed with `kubectl apply -f
//! examples/install/`, and the user's scenarios run against it as pods.
//!
//! The scenarios share one cluster, brought up and installed by the first
//! test that needs it and brought down when the test process ends. Each
//! scenario is a test of its own (`cargo test --test cluster -- split` runs
//! one alone) in a namespace of its own; the ones that disturb the whole
//! mesh (a controller restart, the CNI leaving the node, uninstalling) run
//! alone, while no other scenario runs.

use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock};
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

/// The proxy (a native sidecar among the init containers, or a classic
/// one among the containers) and its validator.
fn is_meshed(pod: &Value) -> bool {
    (has_container(pod, "initContainers", "weft-proxy")
        || has_container(pod, "containers", "weft-proxy"))
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

    // By the Service's short name, through the cluster DNS.
    let load = load_pod(node, ns)?;
    let report = node.load(ns, &load, "load", "web:80", 40, 5)?;
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
    let web = format!("web.{ns}:80");
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
    let web = format!("web.{ns}.svc.cluster.local:80");
    let grpc = "grpc:9090".to_string();

    // The shipped configuration with its relabelling untouched, and the
    // admin's credentials, for a Prometheus that runs beside the cluster
    // and watches its pods through Kubernetes service discovery.
    let shipped = std::fs::read_to_string(node.repo().join("examples/prometheus/kubernetes.yml"))?;
    let config = weft_testbed::prometheus::with_kubeconfig(&shipped, node.kubeconfig(), "5s")?;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
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

/// A Job named `name` whose pod calls `web` once, run to completion in
/// `ns`; `spec` is added to its pod spec. Returns the finished pod.
fn run_job(node: &KubeNode, ns: &str, name: &str, spec: &str) -> anyhow::Result<Value> {
    node.apply(&format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}, namespace: {ns}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      serviceAccountName: load
      {spec}
      containers:
        - name: call
          image: docker.io/weft/weft-demo:0.1.0
          imagePullPolicy: IfNotPresent
          args: ["get", "web:80", "/"]
"#
    ))?;
    let started = Instant::now();
    let pod = node.wait_for(
        &format!("the pod of Job {name} to finish"),
        Duration::from_secs(90),
        || {
            let pods = node.pods(ns, &format!("job-name={name}"))?;
            Ok(pods
                .into_iter()
                .find(|p| p["status"]["phase"] == "Succeeded" || p["status"]["phase"] == "Failed"))
        },
    )?;
    eprintln!(
        "job {ns}/{name}: pod {} after {:?}",
        pod["status"]["phase"],
        started.elapsed()
    );
    ensure!(is_meshed(&pod), "the pod of Job {name} was not injected");
    ensure!(
        pod["status"]["phase"] == "Succeeded",
        "the pod of Job {name} ended {}: {}",
        pod["status"]["phase"],
        pod["status"]["containerStatuses"]
    );
    let logs = node.kubectl(&["-n", ns, "logs", &pod_name(&pod), "-c", "call"])?;
    ensure!(
        logs.starts_with("200 hello from web"),
        "the call of Job {name}: {logs}"
    );
    node.wait_for(
        &format!("Job {name} to complete"),
        Duration::from_secs(30),
        || {
            let job = node.json(&["-n", ns, "get", "job", name])?;
            Ok((job["status"]["succeeded"] == 1).then_some(()))
        },
    )?;
    Ok(pod)
}

/// The environment variable `name` of the pod's proxy, if set.
fn proxy_env(pod: &Value, name: &str) -> Option<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|f| pod["spec"][f].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == "weft-proxy")?["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap_or_default().to_string())
}

/// Scenario 3: a Job in a meshed namespace completes, and its pod ends:
/// the proxy is a native sidecar, which the kubelet stops after the app,
/// with nothing else needed.
fn job(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-job";
    node.apply(&demo_app(node, ns, true)?)?;
    wait_demo(node, ns)?;
    let pod = run_job(node, ns, "call-web", "")?;
    ensure!(
        has_container(&pod, "initContainers", "weft-proxy"),
        "the proxy is not a native sidecar"
    );
    ensure!(
        proxy_env(&pod, "WEFT_EXIT_WITH_APP").is_none(),
        "a native sidecar was told to exit with the app"
    );
    Ok(())
}

/// Native sidecars on the real kubelet: an init container's network call
/// goes through the proxy ahead of it; on deletion, the app's last request
/// (from its preStop hook) still goes through the proxy, and the proxy
/// then stops, so the pod goes well within its grace period.
fn native_sidecars(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-native";
    node.apply(&demo_app(node, ns, true)?)?;
    wait_demo(node, ns)?;
    node.apply(&format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: caller, namespace: {ns}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: caller
  namespace: {ns}
  labels: {{app: caller}}
  annotations: {{config.weft.io/proxy-cpu-request: 10m, config.weft.io/proxy-memory-request: 16Mi}}
spec:
  serviceAccountName: caller
  terminationGracePeriodSeconds: 30
  initContainers:
    - name: fetch
      image: docker.io/weft/weft-demo:0.1.0
      imagePullPolicy: IfNotPresent
      args: ["get", "web:80", "/"]
  containers:
    - name: app
      image: docker.io/weft/weft-demo:0.1.0
      imagePullPolicy: IfNotPresent
      args: ["sink", "0.0.0.0:9000"]
      lifecycle:
        preStop: {{exec: {{command: ["/usr/local/bin/weft-demo", "get", "web:80", "/"]}}}}
"#
    ))?;
    let pod = node
        .wait_ready(ns, "app=caller", 1, Duration::from_secs(90))?
        .remove(0);
    let init_log = node.kubectl(&["-n", ns, "logs", "caller", "-c", "fetch"])?;
    ensure!(
        init_log.starts_with("200 hello from web"),
        "the init container's call: {init_log}"
    );
    // The kubelet started the app only after the proxy's startup probe.
    let statuses = |field: &str| pod["status"][field].as_array().cloned().unwrap_or_default();
    let proxy = statuses("initContainerStatuses")
        .into_iter()
        .find(|s| s["name"] == "weft-proxy")
        .context("no proxy status")?;
    let app = statuses("containerStatuses")
        .into_iter()
        .find(|s| s["name"] == "app")
        .context("no app status")?;
    ensure!(proxy["started"] == true, "proxy status: {proxy}");
    let started_at = |s: &Value| {
        s["state"]["running"]["startedAt"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    ensure!(
        !started_at(&app).is_empty() && started_at(&proxy) <= started_at(&app),
        "the app started at {} before its proxy at {}",
        started_at(&app),
        started_at(&proxy)
    );

    let from_caller = || -> anyhow::Result<f64> {
        let mut sum = 0.0;
        for pod in meshed_pods(node, ns, "app=web")? {
            sum += node.proxy_metrics(&pod)?.sum(
                "request_total",
                &[
                    ("direction", "inbound"),
                    ("tls", "true"),
                    ("client_id", &identity(ns, "caller")),
                ],
            );
        }
        Ok(sum)
    };
    let before = from_caller()?;
    ensure!(
        before >= 1.0,
        "the init container's call was not meshed ({before})"
    );
    let started = Instant::now();
    node.kubectl(&[
        "-n",
        ns,
        "delete",
        "pod",
        "caller",
        "--wait=true",
        "--timeout=60s",
    ])?;
    let took = started.elapsed();
    eprintln!("native sidecars: the caller pod went in {took:?}");
    ensure!(
        took < Duration::from_secs(25),
        "the pod took {took:?} to go: its proxy did not stop after the app"
    );
    let after = from_caller()?;
    ensure!(
        after >= before + 1.0,
        "the preStop call was not meshed ({before} before, {after} after)"
    );
    Ok(())
}

/// A second injector, run with `--sidecar-mode classic`, for namespaces
/// labelled `weft-test/sidecar-mode=classic` (as well as
/// `weft.io/inject=enabled`). Its webhook configuration sorts before the
/// shipped one, so the API server calls it first and the shipped injector
/// then finds the pod already injected. Applied again by every caller: an
/// uninstall takes it away with `weft-system`.
fn classic_injector(node: &KubeNode) -> anyhow::Result<()> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf =
        rcgen::CertificateParams::new(vec!["weft-injector-classic.weft-system.svc".to_string()])?
            .signed_by(&key, &rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key)?)?;
    let shipped = std::fs::read_to_string(node.repo().join("examples/install/40-injector.yaml"))?;
    let deployment = shipped
        .replace("weft-injector", "weft-injector-classic")
        .replace(
            "docker.io/weft/weft-injector-classic:",
            "docker.io/weft/weft-injector:",
        )
        .replace("--sidecar-mode=auto", "--sidecar-mode=classic")
        .replace("replicas: 2", "replicas: 1");
    ensure!(
        deployment.contains("--sidecar-mode=classic"),
        "40-injector.yaml no longer sets --sidecar-mode"
    );
    node.apply(&format!(
        r#"{deployment}
---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {{name: weft-injector-classic-tls, namespace: weft-system}}
data: {{tls.crt: {crt}, tls.key: {key}}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: a-weft-injector-classic-test}}
webhooks:
  - name: classic.inject.weft.io
    failurePolicy: Fail
    timeoutSeconds: 5
    admissionReviewVersions: ["v1"]
    sideEffects: None
    clientConfig:
      service: {{name: weft-injector-classic, namespace: weft-system, path: /inject, port: 443}}
      caBundle: {ca}
    namespaceSelector:
      matchLabels: {{weft.io/inject: enabled, weft-test/sidecar-mode: classic}}
    rules:
      - {{operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"], scope: Namespaced}}
"#,
        crt = b64(leaf.pem().as_bytes()),
        key = b64(key.serialize_pem().as_bytes()),
        ca = b64(ca.pem().as_bytes()),
    ))?;
    node.kubectl(&[
        "-n",
        "weft-system",
        "rollout",
        "status",
        "deploy/weft-injector-classic",
        "--timeout=120s",
    ])?;
    Ok(())
}

/// Classic sidecars on the same cluster: the proxy is the first container,
/// demo traffic is meshed, and Jobs complete because the proxy exits with
/// the app, including one with `hostPID` (no `shareProcessNamespace`).
fn classic_sidecars(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-classic";
    classic_injector(node)?;
    let app = demo_app(node, ns, true)?.replace(
        "labels: {weft.io/inject: enabled}",
        "labels: {weft.io/inject: enabled, weft-test/sidecar-mode: classic}",
    );
    node.apply(&app)?;
    let pods = wait_demo(node, ns)?;
    for pod in &pods {
        ensure!(
            has_container(pod, "containers", "weft-proxy")
                && !has_container(pod, "initContainers", "weft-proxy"),
            "{} is not a classic-mode pod",
            pod_name(pod)
        );
    }
    let load = load_pod(node, ns)?;
    let report = node.wait_for("meshed traffic", Duration::from_secs(30), || {
        let r = node.load(ns, &load, "load", "web:80", 40, 2)?;
        Ok((r.failed() == 0 && r.ok() > 0).then_some(r))
    })?;
    let client = meshed_pods(node, ns, "app=load")?;
    let outbound = node
        .proxy_metrics(client.first().context("load pod")?)?
        .sum(
            "request_total",
            &[
                ("direction", "outbound"),
                ("tls", "true"),
                ("server_id", &identity(ns, "web")),
            ],
        );
    ensure!(
        outbound >= report.ok() as f64,
        "classic: {outbound} mTLS requests counted, {} answered",
        report.ok()
    );
    let pod = run_job(node, ns, "call-web", "")?;
    ensure!(
        proxy_env(&pod, "WEFT_EXIT_WITH_APP").as_deref() == Some("true")
            && pod["spec"]["shareProcessNamespace"] == true,
        "a classic Job's proxy must exit with the app"
    );
    let pod = run_job(node, ns, "inspect-node", "hostPID: true")?;
    ensure!(
        pod["spec"]["shareProcessNamespace"].is_null(),
        "shareProcessNamespace beside hostPID"
    );
    Ok(())
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
    let target = "web-v1:80".to_string();
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
    let load = load_pod(node, client_ns)?;
    let web = format!("web.{server_ns}:80");
    let report = node.load(client_ns, &load, "load", &web, 20, 3)?;
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

/// Names, as apps use them: a StatefulSet's pods by name behind a headless
/// Service, a pod's own DNS name, the headless Service itself, and a
/// server-speaks-first TCP service by name. Every one goes through the
/// mesh with mTLS.
fn dns(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-dns";
    node.apply(&demo_app(node, ns, true)?)?;
    node.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: {ns}}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{name: http, port: 8080, protocol: TCP}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: {ns}}}
spec:
  serviceName: db
  replicas: 2
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata:
      labels: {{app: db}}
      annotations: {{config.weft.io/proxy-cpu-request: 10m, config.weft.io/proxy-memory-request: 16Mi}}
    spec:
      serviceAccountName: web
      containers:
        - name: db
          image: docker.io/weft/weft-demo:0.1.0
          imagePullPolicy: IfNotPresent
          args: ["http", "0.0.0.0:8080", "$(POD_NAME)"]
          env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 2}}
          resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}
---
# SMTP's port: opaque by default, so the client proxy does not wait for the
# client to speak.
apiVersion: v1
kind: Service
metadata: {{name: banner, namespace: {ns}}}
spec:
  selector: {{app: banner}}
  ports: [{{name: smtp, port: 25, targetPort: 2525, protocol: TCP}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: banner, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: banner}}}}
  template:
    metadata:
      labels: {{app: banner}}
      annotations: {{config.weft.io/proxy-cpu-request: 10m, config.weft.io/proxy-memory-request: 16Mi}}
    spec:
      serviceAccountName: web
      containers:
        - name: banner
          image: docker.io/weft/weft-demo:0.1.0
          imagePullPolicy: IfNotPresent
          args: ["banner", "0.0.0.0:2525", "banner"]
          resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}
"#
    ))?;
    let timeout = Duration::from_secs(120);
    let dbs = node.wait_ready(ns, "app=db", 2, timeout)?;
    node.wait_ready(ns, "app=banner", 1, timeout)?;
    let load = load_pod(node, ns)?;
    let exec = |args: &[&str]| -> anyhow::Result<String> {
        let mut all = vec![
            "-n",
            ns,
            "exec",
            &load,
            "-c",
            "load",
            "--",
            "/usr/local/bin/weft-demo",
        ];
        all.extend_from_slice(args);
        node.kubectl(&all)
    };
    // Names resolve as soon as the pods are ready; the first call may
    // still race the DNS cache's negative answer.
    let get = |target: &str| -> anyhow::Result<String> {
        node.wait_for(
            &format!("an answer from {target}"),
            Duration::from_secs(20),
            || Ok(exec(&["get", target, "/"]).ok()),
        )
    };
    let mut calls = 0.0;
    for (i, db) in dbs.iter().enumerate() {
        let name = pod_name(db);
        let ip = db["status"]["podIP"].as_str().context("db pod IP")?;
        for target in [
            format!("{name}.db:8080"),
            format!("{name}.db.{ns}.svc.cluster.local:8080"),
            format!("{}.{ns}.pod.cluster.local:8080", ip.replace('.', "-")),
        ] {
            let answer = get(&target)?;
            ensure!(
                answer.trim() == format!("200 hello from {name}"),
                "{target} (pod {i}) answered {answer:?}"
            );
            calls += 1.0;
        }
    }
    let answer = get("db:8080")?;
    ensure!(
        answer.starts_with("200 hello from db-"),
        "the headless Service answered {answer:?}"
    );
    calls += 1.0;
    let talk = node.wait_for(
        "the banner service by name",
        Duration::from_secs(20),
        || Ok(exec(&["talk", "banner:25", "hi"]).ok()),
    )?;
    ensure!(
        talk == "220 banner ready\necho: hi\n",
        "the banner service said {talk:?}"
    );

    // All of it over mTLS, from the load pod's identity.
    let mut inbound = 0.0;
    for db in node.wait_ready(ns, "app=db", 2, timeout)? {
        inbound += node.proxy_metrics(&db)?.sum(
            "request_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", &identity(ns, "load")),
            ],
        );
    }
    ensure!(
        inbound >= calls,
        "the db pods counted {inbound} mTLS requests from load; {calls} were made"
    );
    let banner = node.wait_ready(ns, "app=banner", 1, timeout)?;
    let tcp = node.proxy_metrics(&banner[0])?.sum(
        "tcp_open_total",
        &[
            ("direction", "inbound"),
            ("tls", "true"),
            ("client_id", &identity(ns, "load")),
        ],
    );
    ensure!(
        tcp >= 1.0,
        "the banner pod counted {tcp} mTLS connections from load"
    );
    Ok(())
}

/// The controllers restart; discovery resyncs and a new split applies.
fn controller_restart(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-restart";
    node.apply(&demo_app(node, ns, true)?)?;
    node.apply(&traffic_split(ns, 100, 0))?;
    wait_demo(node, ns)?;
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
    // The one scenario that calls the Service by its cluster IP.
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

/// The cluster every scenario runs on, with Weft installed.
struct Cluster {
    node: KubeNode,
    install: PathBuf,
    _work: tempfile::TempDir,
    /// Held shared by scenarios that only use the mesh, and exclusively by
    /// those that disturb it.
    mesh: RwLock<()>,
}

fn install(node: &KubeNode, install: &Path) -> anyhow::Result<()> {
    node.kubectl(&["apply", "-f", install.to_str().unwrap()])?;
    for deploy in [
        "deploy/weft-controller",
        "deploy/weft-injector",
        "ds/weft-cni",
    ] {
        node.kubectl(&[
            "-n",
            "weft-system",
            "rollout",
            "status",
            deploy,
            "--timeout=120s",
        ])
        .with_context(|| {
            format!(
                "Weft did not become ready\n{}\nkubelet:\n{}",
                node.kubectl(&["-n", "weft-system", "get", "pods", "-o", "wide"])
                    .unwrap_or_default(),
                node.component_log("kubelet")
            )
        })?;
    }
    Ok(())
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    let cluster = CLUSTER.get_or_init(|| {
        require_root();
        let up = || -> anyhow::Result<Cluster> {
            let started = Instant::now();
            let node = KubeNode::up().context("the test cluster")?;
            eprintln!("cluster up with Weft's images in {:?}", started.elapsed());
            let work = tempfile::tempdir()?;
            let folder = install_folder(node.repo(), work.path())?;
            let started = Instant::now();
            install(&node, &folder)?;
            eprintln!("Weft installed and ready in {:?}", started.elapsed());
            Ok(Cluster {
                node,
                install: folder,
                _work: work,
                mesh: RwLock::new(()),
            })
        };
        up().map_err(|e| format!("{e:#}"))
    });
    match cluster {
        Ok(c) => c,
        Err(e) => panic!("no cluster: {e}"),
    }
}

/// Runs a scenario that only uses the mesh, beside others of its kind.
fn scenario(run: fn(&KubeNode) -> anyhow::Result<()>) {
    let cluster = cluster();
    let _shared = cluster.mesh.read().unwrap_or_else(|e| e.into_inner());
    report(&cluster.node, run(&cluster.node));
}

/// Runs a scenario that disturbs the whole mesh, alone.
fn disturbing(run: impl FnOnce(&Cluster) -> anyhow::Result<()>) {
    let cluster = cluster();
    let _alone = cluster.mesh.write().unwrap_or_else(|e| e.into_inner());
    report(&cluster.node, run(cluster));
}

fn report(node: &KubeNode, result: anyhow::Result<()>) {
    if let Err(e) = result {
        let pods = node
            .kubectl(&["get", "pods", "-A", "-o", "wide"])
            .unwrap_or_default();
        panic!("{e:#}\n\npods:\n{pods}");
    }
}

/// One test per scenario: `cargo test --test cluster -- scenarios::job`.
mod scenarios {
    use super::*;

    #[test]
    fn injection() {
        scenario(super::injection);
    }

    #[test]
    fn traffic_split() {
        scenario(super::split);
    }

    #[test]
    fn job() {
        scenario(super::job);
    }

    #[test]
    fn drain() {
        scenario(super::drain);
    }

    #[test]
    fn unmeshed_client() {
        scenario(super::unmeshed_client);
    }

    #[test]
    fn native_sidecars() {
        scenario(super::native_sidecars);
    }

    #[test]
    fn classic_sidecars() {
        scenario(super::classic_sidecars);
    }

    #[test]
    fn dns() {
        scenario(super::dns);
    }

    #[test]
    fn metrics() {
        scenario(super::metrics);
    }

    #[test]
    fn controller_restart() {
        disturbing(|c| super::controller_restart(&c.node));
    }

    #[test]
    fn late_cni() {
        disturbing(|c| super::late_cni(&c.node));
    }

    /// Uninstalls, checks what is left, and installs again for the scenarios
    /// that may still run after it.
    #[test]
    fn uninstall() {
        disturbing(|c| {
            super::uninstall(&c.node, &c.install)?;
            install(&c.node, &c.install)
        });
    }
}
