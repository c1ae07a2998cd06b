//! Apps calling Services and pods by their cluster DNS names.

use super::*;

/// Names, as apps use them: a StatefulSet's pods by name behind a headless
/// Service, a pod's own DNS name, the headless Service itself, and a
/// server-speaks-first TCP service by name. Every one goes through the
/// mesh with mTLS.
pub(super) fn dns(node: &KubeNode) -> anyhow::Result<()> {
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
"#
    ))?;
    node.apply(&banner_app(ns, Some("web")))?;
    let timeout = Duration::from_secs(120);
    let dbs = node.wait_ready(ns, "app=db", 2, timeout)?;
    node.wait_ready(ns, "app=banner", 1, timeout)?;
    let load = load_pod(node, ns)?;
    let exec = |args: &[&str]| node.demo(ns, &load, "load", args);
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
