//! The README's trust-anchor rotation on the cluster, as an operator runs
//! it: each step of `weft-controller rotate-anchor` in the PKI folder,
//! `install-secrets` again, `kubectl apply` of the manifest; the mounted
//! Secret and ConfigMap reach the controller and the injector, and every
//! certificate carries the new bundle to the proxies. A load runs through
//! the mesh all along, and a workload rolls at the end, so new pods (and
//! new handshakes) meet the finished rotation.

use super::*;

/// A meshed pod's name, the anchors its proxy trusts, and its
/// certificate's issuer (fingerprints).
type Trust = (String, Vec<String>, Vec<String>);

/// What the proxies of `ns` trust, one entry per meshed pod.
fn trust_of(node: &KubeNode, ns: &str) -> anyhow::Result<Vec<Trust>> {
    let mut out = Vec::new();
    for pod in meshed_pods(node, ns, "app")? {
        let metrics = node.proxy_metrics(&pod)?;
        out.push((
            pod_name(&pod),
            metrics.label_values("identity_trust_anchor_info", "anchor"),
            metrics.label_values("identity_cert_issuer_info", "issuer"),
        ));
    }
    ensure!(!out.is_empty(), "no meshed pods in {ns}");
    Ok(out)
}

/// The anchors each running controller replica sends and the issuer it
/// signs with. Replicas reload their mounted Secret each on its own
/// schedule: a step is done only once all of them have it, or a proxy
/// renewing from a late one would step back.
fn controllers(node: &KubeNode) -> anyhow::Result<Vec<(Vec<String>, Vec<String>)>> {
    let mut out = Vec::new();
    for pod in node.pods("weft-system", "app.kubernetes.io/name=weft-controller")? {
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let metrics = node.pod_metrics(&pod, weft_api::controller::ADMIN_PORT)?;
        out.push((
            metrics.label_values("identity_trust_anchor_bundle_info", "anchor"),
            metrics.label_values("identity_issuer_info", "issuer"),
        ));
    }
    ensure!(out.len() == 2, "{} controllers", out.len());
    Ok(out)
}

/// Runs one step and applies the manifest it changes.
fn step(node: &KubeNode, install: &Path, pki: &Path, step: &str) -> anyhow::Result<()> {
    let controller = Bins::locate()?.path("weft-controller");
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new(&controller)
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "weft-controller {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let pki = pki.to_str().context("pki path")?;
    run(&["rotate-anchor", "--dir", pki, "--step", step])?;
    let manifest = install.join("05-secrets.yaml");
    let manifest = manifest.to_str().context("manifest path")?;
    run(&["install-secrets", "--pki", pki, "--out", manifest])?;
    node.kubectl(&["apply", "-f", manifest])?;
    Ok(())
}

/// The anchors inlined in a pod's proxy environment by the injector.
fn inline_anchors(pod: &Value) -> String {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|f| pod["spec"][*f].as_array().cloned().unwrap_or_default())
        .filter(|c| c["name"] == "weft-proxy")
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .find(|e| e["name"] == "WEFT_TRUST_ANCHORS")
        .and_then(|e| e["value"].as_str().map(String::from))
        .unwrap_or_default()
}

pub(super) fn anchor_rotation(node: &KubeNode, install: &Path) -> anyhow::Result<()> {
    let ns = "e2e-anchors";
    let pki = install.parent().context("install folder")?.join("pki");
    let lifetime = |value: &str| {
        node.kubectl(&[
            "-n",
            "weft-system",
            "set",
            "env",
            "deploy/weft-controller",
            value,
        ])?;
        node.kubectl(&[
            "-n",
            "weft-system",
            "rollout",
            "status",
            "deploy/weft-controller",
            "--timeout=120s",
        ])
    };
    // Renewals every 36–45 s, so that each step reaches every proxy in
    // under a minute.
    lifetime("WEFT_CERT_LIFETIME=60s")?;
    let result = (|| {
        node.apply(&demo_app(node, ns, true)?)?;
        wait_demo(node, ns)?;
        let before = trust_of(node, ns)?;
        let old_anchor = before[0].1.clone();
        ensure!(old_anchor.len() == 1, "{before:?}");
        let old_pod = &node.pods(ns, "app=web,version=v1")?[0];
        let old_inline = inline_anchors(old_pod);
        ensure!(old_inline.matches("BEGIN CERTIFICATE").count() == 1);

        let load = load_pod(node, ns)?;
        let started = Instant::now();
        let ok = under_load(node, ns, &load, || {
            let minute = Duration::from_secs(120);
            step(node, install, &pki, "add")?;
            eprintln!("anchor rotation: step add at {:?}", started.elapsed());
            let both = node.wait_for("every controller sending both anchors", minute, || {
                let now = controllers(node)?;
                Ok(now
                    .iter()
                    .all(|(a, _)| a.len() == 2 && a.contains(&old_anchor[0]))
                    .then(|| now[0].0.clone()))
            })?;
            node.wait_for("every proxy trusting both anchors", minute, || {
                let now = trust_of(node, ns)?;
                Ok(now.iter().all(|(_, a, _)| *a == both).then_some(()))
            })?;
            let old_issuer = trust_of(node, ns)?[0].2.clone();
            step(node, install, &pki, "issuer")?;
            eprintln!("anchor rotation: step issuer at {:?}", started.elapsed());
            node.wait_for("every controller on the new issuer", minute, || {
                let now = controllers(node)?;
                Ok(now.iter().all(|(_, i)| *i != old_issuer).then_some(()))
            })?;
            node.wait_for("every proxy on the new issuer", minute, || {
                let now = trust_of(node, ns)?;
                Ok(now
                    .iter()
                    .all(|(_, _, i)| i.len() == 1 && *i != old_issuer)
                    .then_some(()))
            })?;
            step(node, install, &pki, "retire")?;
            eprintln!("anchor rotation: step retire at {:?}", started.elapsed());
            let new_anchor: Vec<String> =
                both.into_iter().filter(|a| *a != old_anchor[0]).collect();
            node.wait_for(
                "every controller sending the new anchor alone",
                minute,
                || {
                    let now = controllers(node)?;
                    Ok(now.iter().all(|(a, _)| *a == new_anchor).then_some(()))
                },
            )?;
            node.wait_for("no proxy trusting the old anchor", minute, || {
                let now = trust_of(node, ns)?;
                Ok(now.iter().all(|(_, a, _)| *a == new_anchor).then_some(()))
            })?;
            // New pods, injected with the new bundle, meet the others.
            // What the injector writes into new pods, asked with
            // server-side dry runs (several: any replica may answer).
            let probe = format!(
                r#"{{"apiVersion": "v1", "kind": "Pod",
                    "metadata": {{"name": "anchor-probe", "namespace": "{ns}"}},
                    "spec": {{"containers": [{{"name": "app", "image": "docker.io/weft/weft-demo:0.1.0"}}]}}}}"#
            );
            node.wait_for("the injector's bundle to follow", minute, || {
                for _ in 0..5 {
                    let out = node.kubectl_with_input(
                        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
                        Some(&probe),
                    )?;
                    let inline = inline_anchors(&serde_json::from_str(&out)?);
                    if inline.matches("BEGIN CERTIFICATE").count() != 1 || inline == old_inline {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            })?;
            eprintln!("anchor rotation: web-v1 rolls at {:?}", started.elapsed());
            node.kubectl(&["-n", ns, "rollout", "restart", "deploy/web-v1"])?;
            node.kubectl(&[
                "-n",
                ns,
                "rollout",
                "status",
                "deploy/web-v1",
                "--timeout=120s",
            ])?;
            let fresh = node.wait_ready(ns, "app=web,version=v1", 2, minute)?;
            for pod in &fresh {
                let inline = inline_anchors(pod);
                ensure!(
                    inline.matches("BEGIN CERTIFICATE").count() == 1 && inline != old_inline,
                    "{} was injected with the old bundle",
                    pod_name(pod)
                );
            }
            // Traffic to the new pods for a while.
            std::thread::sleep(Duration::from_secs(10));
            Ok(())
        })?;
        eprintln!("anchor rotation: {ok} requests answered, none failed");
        ensure!(ok > 1000, "only {ok} requests");
        Ok(())
    })();
    // Back to the default lifetime for the scenarios that follow.
    lifetime("WEFT_CERT_LIFETIME-")?;
    result
}
