//! Meshing a namespace, splitting traffic, draining a server, unmeshed
//! clients.

use super::*;

/// Scenario 1: label a namespace, restart its pods, and they are meshed.
pub(super) fn injection(node: &KubeNode) -> anyhow::Result<()> {
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
    let client = meshed_pods(node, ns, "app=load")?;
    let client = client.first().context("load pod")?.clone();
    // A first connection waits for discovery at most WEFT_DISCOVERY_WAIT
    // and then goes to the original address in plaintext, by design; on a
    // busy machine the controller can be that slow right after the pods
    // were replaced. The mTLS count below is about the mesh once it knows
    // `web`, so the client proxy asks first.
    node.wait_for(
        "discovery's answer for web",
        Duration::from_secs(30),
        || {
            node.load(ns, &load, "load", "web:80", 5, 1)?;
            let known = node
                .proxy_metrics(&client)?
                .sum("destination_lookups_total", &[("result", "known")]);
            Ok((known > 0.0).then_some(()))
        },
    )?;
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
    let client = &client;
    let scrape = node.proxy_metrics(client)?;
    let outbound = scrape.sum(
        "request_total",
        &[
            ("direction", "outbound"),
            ("tls", "true"),
            ("server_id", &identity(ns, "web")),
        ],
    );
    ensure!(
        outbound >= report.ok() as f64,
        "client proxy counted {outbound} mTLS requests to web, load got {} answers \
         ({} outbound in plaintext; lookups: {} known, {} timed out); outbound series:\n{}{}{}",
        report.ok(),
        scrape.sum(
            "request_total",
            &[("direction", "outbound"), ("tls", "false")]
        ),
        scrape.sum("destination_lookups_total", &[("result", "known")]),
        scrape.sum("destination_lookups_total", &[("result", "timeout")]),
        scrape.series("request_total", &[("direction", "outbound")]),
        scrape.series("tcp_open_total", &[("direction", "outbound")]),
        scrape.series("protocol_detect_total", &[("direction", "outbound")]),
    );
    let mut inbound = 0.0;
    let mut across_nodes = 0.0;
    for pod in meshed_pods(node, ns, "app=web")? {
        let counted = node.proxy_metrics(&pod)?.sum(
            "request_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", &identity(ns, "load")),
            ],
        );
        inbound += counted;
        if node_of(&pod) != node_of(client) {
            across_nodes += counted;
        }
    }
    ensure!(
        inbound >= report.ok() as f64,
        "servers counted {inbound} mTLS requests from load"
    );

    // web-v1's replicas spread over both nodes, so some of that crossed
    // the underlay between them.
    let nodes: std::collections::BTreeSet<&str> = pods.iter().map(node_of).collect();
    eprintln!("injection: pods on {nodes:?}, {across_nodes} mTLS requests across nodes");
    ensure!(
        nodes.len() == node.nodes().len(),
        "the demo's pods are not on every node: {nodes:?}"
    );
    ensure!(across_nodes > 0.0, "no request crossed nodes");
    Ok(())
}

pub(super) fn traffic_split(ns: &str, v1: u32, v2: u32) -> String {
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
pub(super) fn split(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-split";
    node.apply(&demo_app(node, ns, true)?)?;
    let pods = wait_demo(node, ns)?;
    ensure!(pods.iter().all(is_meshed), "not all pods meshed");
    let web = format!("web.{ns}:80");
    let load = load_pod(node, ns)?;

    node.apply(&traffic_split(ns, 90, 10))?;
    // Until the proxy has the split, the apex balances 2:1 by endpoints;
    // until web-v2's endpoint answers steadily (a pod just started, say),
    // its share goes to web-v1 (two runs measured 0.965 and 0.969 after
    // only a first answer from web-v2). Both must show at about their
    // weights before the share is measured.
    node.wait_for("the 90/10 split in effect", Duration::from_secs(60), || {
        let r = node.load(ns, &load, "load", &web, 50, 2)?;
        let v2 = r.from("web-v2");
        Ok((v2 * 100 >= r.ok() * 5 && v2 * 100 <= r.ok() * 20).then_some(()))
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

/// Scenario 4: deleting a server pod under load fails nothing the
/// retries do not cover.
pub(super) fn drain(node: &KubeNode) -> anyhow::Result<()> {
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
    // The load paces itself at 50 a second; on a busy machine it falls
    // behind (477 of 600 in one CI run), so the floor only shows that
    // answers kept coming, not a rate.
    ensure!(report.ok() >= 300, "too few answers: {}", report.summary);
    let answering_seconds = report
        .seconds
        .iter()
        .filter(|s| s["ok"].as_u64().unwrap_or(0) > 0)
        .count();
    ensure!(
        answering_seconds >= 10,
        "answers stopped around the deletion: {:?}",
        report.seconds
    );
    Ok(())
}

/// Scenario 5: an unmeshed client reaches a meshed server (permissive).
pub(super) fn unmeshed_client(node: &KubeNode) -> anyhow::Result<()> {
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
