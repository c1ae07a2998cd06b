//! Upgrading every part of Weft, and the workloads, under load: each
//! rolling update in turn while `weft-demo load` calls `web` through the
//! mesh, with no failed request at the client app. The images are the
//! same build under a new tag (`0.1.0-next`), as a release would be.

use super::*;

const NEXT: &str = "0.1.0-next";

/// `kubectl rollout status` of a workload, with a bound.
fn rolled(node: &KubeNode, ns: &str, workload: &str) -> anyhow::Result<()> {
    node.kubectl(&["-n", ns, "rollout", "status", workload, "--timeout=180s"])?;
    Ok(())
}

/// The proxy image of a pod.
fn proxy_image(pod: &Value) -> String {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|f| pod["spec"][*f].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == "weft-proxy")
        .and_then(|c| c["image"].as_str().map(String::from))
        .unwrap_or_default()
}

pub(super) fn upgrades(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-upgrades";
    node.apply(&demo_app(node, ns, true)?)?;
    wait_demo(node, ns)?;
    for image in ["weft-controller", "weft-injector", "weft-cni", "weft-proxy"] {
        node.tag(
            &format!("docker.io/weft/{image}:0.1.0"),
            &format!("docker.io/weft/{image}:{NEXT}"),
        )?;
    }
    let system = "weft-system";
    let load = load_pod(node, ns)?;
    let mut took = Vec::new();
    let ok = under_load(node, ns, &load, || {
        let mut timed = |what: &str, run: &mut dyn FnMut() -> anyhow::Result<()>| {
            let started = Instant::now();
            run().with_context(|| what.to_string())?;
            took.push(format!("{what} {:.0?}", started.elapsed()));
            anyhow::Ok(())
        };
        timed("controller", &mut || {
            node.kubectl(&[
                "-n",
                system,
                "set",
                "image",
                "deploy/weft-controller",
                &format!("controller=docker.io/weft/weft-controller:{NEXT}"),
            ])?;
            rolled(node, system, "deploy/weft-controller")
        })?;
        timed("injector", &mut || {
            node.kubectl(&[
                "-n",
                system,
                "set",
                "image",
                "deploy/weft-injector",
                &format!("injector=docker.io/weft/weft-injector:{NEXT}"),
            ])?;
            rolled(node, system, "deploy/weft-injector")
        })?;
        timed("CNI DaemonSet", &mut || {
            node.kubectl(&[
                "-n",
                system,
                "set",
                "image",
                "ds/weft-cni",
                &format!("install=docker.io/weft/weft-cni:{NEXT}"),
            ])?;
            rolled(node, system, "ds/weft-cni")
        })?;
        timed("server workload", &mut || {
            node.kubectl(&["-n", ns, "rollout", "restart", "deploy/web-v1"])?;
            rolled(node, ns, "deploy/web-v1")
        })?;
        // A new proxy version: the injector is told, then workloads roll.
        timed("proxy version", &mut || {
            let deploy = node.json(&["-n", system, "get", "deploy/weft-injector"])?;
            let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .context("injector args")?;
            let index = args
                .iter()
                .position(|a| a.as_str().is_some_and(|a| a.starts_with("--proxy-image=")))
                .context("no --proxy-image")?;
            let patch = format!(
                r#"[{{"op": "replace", "path": "/spec/template/spec/containers/0/args/{index}",
                     "value": "--proxy-image=docker.io/weft/weft-proxy:{NEXT}"}}]"#
            );
            node.kubectl(&[
                "-n",
                system,
                "patch",
                "deploy/weft-injector",
                "--type",
                "json",
                "-p",
                &patch,
            ])?;
            rolled(node, system, "deploy/weft-injector")?;
            for workload in ["deploy/web-v1", "deploy/web-v2"] {
                node.kubectl(&["-n", ns, "rollout", "restart", workload])?;
                rolled(node, ns, workload)?;
            }
            for pod in meshed_pods(node, ns, "app=web")? {
                ensure!(
                    proxy_image(&pod).ends_with(NEXT),
                    "{} runs proxy {}",
                    pod_name(&pod),
                    proxy_image(&pod)
                );
            }
            Ok(())
        })?;
        // Traffic through the new proxies for a while.
        std::thread::sleep(Duration::from_secs(10));
        Ok(())
    })?;
    eprintln!(
        "upgrades: {ok} requests answered, none failed ({})",
        took.join(", ")
    );
    ensure!(ok > 500, "only {ok} requests");

    // The client side: the load workload itself rolls, to the new proxy;
    // the new client's first requests succeed.
    node.kubectl(&["-n", ns, "rollout", "restart", "deploy/load"])?;
    rolled(node, ns, "deploy/load")?;
    let load = load_pod(node, ns)?;
    let pod = &node.pods(ns, "app=load")?;
    ensure!(
        pod.iter().all(
            |p| proxy_image(p).ends_with(NEXT) || !p["metadata"]["deletionTimestamp"].is_null()
        )
    );
    let first = node.load(ns, &load, "load", "web:80", 20, 5)?;
    ensure!(
        first.failed() == 0 && first.ok() > 50,
        "the rolled client: {}",
        first.summary
    );
    Ok(())
}
