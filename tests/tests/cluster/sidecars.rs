//! Jobs, native sidecars on the real kubelet, and classic sidecars beside
//! them.

use super::*;

/// A Job named `name` whose pod calls `web` once, run to completion in
/// `ns`; `spec` is added to its pod spec. Returns the finished pod.
pub(super) fn run_job(node: &KubeNode, ns: &str, name: &str, spec: &str) -> anyhow::Result<Value> {
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
    let logs = node.kubectl(&["-n", ns, "logs", &pod_name(&pod), "-c", "call"])?;
    if pod["status"]["phase"] != "Succeeded" {
        let proxy = node
            .kubectl(&["-n", ns, "logs", &pod_name(&pod), "-c", "weft-proxy"])
            .unwrap_or_default();
        anyhow::bail!(
            "the pod of Job {name} ended {}: {}\n\ncall's log:\n{logs}\nthe proxy's log:\n{proxy}",
            pod["status"]["phase"],
            pod["status"]["containerStatuses"]
        );
    }
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
pub(super) fn proxy_env(pod: &Value, name: &str) -> Option<String> {
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
pub(super) fn job(node: &KubeNode) -> anyhow::Result<()> {
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
pub(super) fn native_sidecars(node: &KubeNode) -> anyhow::Result<()> {
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
pub(super) fn classic_injector(node: &KubeNode) -> anyhow::Result<()> {
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
pub(super) fn classic_sidecars(node: &KubeNode) -> anyhow::Result<()> {
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
    let outbound = mtls_requests(
        node,
        ns,
        "app=load",
        "outbound",
        ("server_id", &identity(ns, "web")),
    )?;
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
