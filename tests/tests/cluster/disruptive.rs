//! Scenarios that disturb the whole mesh and run alone: a controller
//! restart, the CNI plugin leaving the node, uninstalling.

use super::mesh::traffic_split;
use super::*;

/// The controllers restart; discovery resyncs and a new split applies.
pub(super) fn controller_restart(node: &KubeNode) -> anyhow::Result<()> {
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

/// A node's primary CNI config (`tests/kube/node.sh` writes it).
fn primary_cni_config(folders: &NodeFolders) -> PathBuf {
    folders.cni_conf_dir.join("10-weft-node.conflist")
}

/// Whether `weft-cni` is chained on `folders`' node.
fn chained_on(folders: &NodeFolders) -> anyhow::Result<bool> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(primary_cni_config(folders))?)?;
    Ok(doc["plugins"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["type"] == "weft-cni")))
}

/// Whether `weft-cni` is chained on every node (`Some(false)`: on none).
pub(super) fn chained(node: &KubeNode) -> anyhow::Result<Option<bool>> {
    let states = node
        .nodes()
        .iter()
        .map(chained_on)
        .collect::<anyhow::Result<Vec<bool>>>()?;
    Ok(if states.iter().all(|s| *s) {
        Some(true)
    } else if states.iter().all(|s| !s) {
        Some(false)
    } else {
        None
    })
}

/// The race CNI plugins are known for: a meshed pod that starts before the
/// plugin is on its node. It must never run its app; once the installer is
/// back, the pod is replaced by one with rules. And a primary CNI that
/// rewrites its config does not lose the chain.
pub(super) fn late_cni(node: &KubeNode) -> anyhow::Result<()> {
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
        "the plugin to leave every node",
        Duration::from_secs(60),
        || Ok((chained(node)? == Some(false)).then_some(())),
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

    // The primary CNI of the second node (in a mount namespace of its own)
    // rewrites its config without us.
    let second = node.nodes().last().context("no nodes")?;
    let config = primary_cni_config(second);
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&config)?)?;
    doc["plugins"]
        .as_array_mut()
        .context("plugins")?
        .retain(|p| p["type"] != "weft-cni");
    std::fs::write(&config, serde_json::to_string_pretty(&doc)?)?;
    let started = Instant::now();
    node.wait_for("the chain to be restored", Duration::from_secs(20), || {
        Ok(chained_on(second)?.then_some(()))
    })?;
    eprintln!(
        "late cni: chain restored on {} {:?} after a rewrite",
        second.name,
        started.elapsed()
    );
    Ok(())
}

/// `kubectl delete -f` of the install folder removes Weft, including the
/// plugin from the node's CNI config.
pub(super) fn uninstall(node: &KubeNode, install: &Path) -> anyhow::Result<()> {
    node.kubectl(&[
        "delete",
        "-f",
        install.to_str().unwrap(),
        "--wait=true",
        "--timeout=120s",
    ])?;
    node.wait_for(
        "the CNI installer to clean up every node",
        Duration::from_secs(30),
        || {
            for folders in node.nodes() {
                let conf = std::fs::read_to_string(primary_cni_config(folders))?;
                if conf.contains("weft-cni")
                    || folders.cni_bin_dir.join("weft-cni").exists()
                    || folders.cni_conf_dir.join("weft-cni.kubeconfig").exists()
                {
                    return Ok(None);
                }
            }
            Ok(Some(()))
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
