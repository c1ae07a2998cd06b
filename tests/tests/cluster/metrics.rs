//! Upstream Prometheus, through Kubernetes service discovery, sees the mesh
//! as the dashboards show it.

use super::*;

/// Scenario 6: Prometheus with the shipped scrape configuration finds every
/// injected proxy (and the control plane) among the cluster's pods, labels
/// each with its namespace, workload and pod, and the workload dashboard
/// has data for each demo workload.
pub(super) fn metrics(node: &KubeNode) -> anyhow::Result<()> {
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
