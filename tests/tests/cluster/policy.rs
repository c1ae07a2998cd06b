//! NetworkPolicy on the real cluster, enforced by the proxies with the
//! clients' mTLS identities, across both nodes.

use super::*;

/// `web` takes only `load` pods of its own namespace on its named `http`
/// port; a second policy adds a namespace by its name label (the union);
/// kubelet's probes keep the pods ready all along; audit mode lets the
/// refused traffic through and counts it.
pub(super) fn network_policy(node: &KubeNode) -> anyhow::Result<()> {
    let (ns, other) = ("e2e-policy", "e2e-policy-out");
    node.apply(&demo_app(node, ns, true)?)?;
    node.apply(&demo_app(node, other, true)?)?;
    wait_demo(node, ns)?;
    wait_demo(node, other)?;
    let inside = load_pod(node, ns)?;
    let outside = load_pod(node, other)?;
    let web = format!("web.{ns}:80");
    let report = node.load(other, &outside, "load", &web, 10, 2)?;
    ensure!(
        report.failed() == 0,
        "open before any policy: {}",
        report.summary
    );

    node.apply(&format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-from-load, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - from: [{{podSelector: {{matchLabels: {{app: load}}}}}}]
      ports: [{{port: http}}]
"#
    ))?;
    // Applied to new connections within a second; the load opens one per
    // request.
    std::thread::sleep(Duration::from_secs(2));
    let allowed = node.load(ns, &inside, "load", &web, 10, 3)?;
    ensure!(
        allowed.failed() == 0 && allowed.ok() > 0,
        "the allowed client: {}",
        allowed.summary
    );
    let refused = node.load(other, &outside, "load", &web, 10, 3)?;
    ensure!(
        refused.ok() == 0,
        "the other namespace got through: {}",
        refused.summary
    );
    let denials = web_denials(node, ns, &[("reason", "not_allowed"), ("mode", "enforce")])?;
    ensure!(denials >= 1.0, "no denial counted");
    // Kubelet probes the app on its pod IP from the node: still ready.
    let ready = node.wait_ready(ns, "app=web", 3, Duration::from_secs(30))?;
    ensure!(ready.len() == 3, "web pods lost readiness under policy");

    node.apply(&format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-from-out, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {other}}}}}}}]
"#
    ))?;
    std::thread::sleep(Duration::from_secs(2));
    let union = node.load(other, &outside, "load", &web, 10, 3)?;
    ensure!(
        union.failed() == 0,
        "the second policy did not add its namespace: {}",
        union.summary
    );

    node.kubectl(&["-n", ns, "delete", "networkpolicy", "web-from-out"])?;
    node.kubectl(&["annotate", "namespace", ns, "policy.weft.io/mode=audit"])?;
    std::thread::sleep(Duration::from_secs(2));
    let audited = node.load(other, &outside, "load", &web, 10, 3)?;
    ensure!(
        audited.failed() == 0,
        "audit mode refused: {}",
        audited.summary
    );
    let audits = web_denials(node, ns, &[("mode", "audit")])?;
    ensure!(
        audits >= audited.ok() as f64,
        "{audits} audited, {} let through",
        audited.ok()
    );
    node.kubectl(&["delete", "namespace", other, "--wait=false"])?;
    node.kubectl(&["delete", "namespace", ns, "--wait=false"])?;
    Ok(())
}

/// Inbound refusals the `web` pods' proxies counted, with `labels`.
fn web_denials(node: &KubeNode, ns: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    let mut labels = labels.to_vec();
    labels.push(("direction", "inbound"));
    let mut sum = 0.0;
    for pod in meshed_pods(node, ns, "app=web")? {
        sum += node
            .proxy_metrics(&pod)?
            .sum("policy_denied_total", &labels);
    }
    Ok(sum)
}

/// Weft's AuthorizationPolicy through the API server: an ALLOW policy on
/// the `web` Service lets in only the `load` service account of another
/// namespace; `web`'s own namespace's load is answered 403 and counted;
/// removing the policy opens it again.
pub(super) fn authorization(node: &KubeNode) -> anyhow::Result<()> {
    let (ns, other) = ("e2e-authz", "e2e-authz-out");
    node.apply(&demo_app(node, ns, true)?)?;
    node.apply(&demo_app(node, other, true)?)?;
    wait_demo(node, ns)?;
    wait_demo(node, other)?;
    let inside = load_pod(node, ns)?;
    let outside = load_pod(node, other)?;
    let web = format!("web.{ns}:80");
    let open = node.load(ns, &inside, "load", &web, 10, 2)?;
    ensure!(
        open.failed() == 0,
        "open before any policy: {}",
        open.summary
    );

    node.apply(&format!(
        r#"
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: web-from-out, namespace: {ns}}}
spec:
  targetRefs: [{{group: "", kind: Service, name: web}}]
  action: ALLOW
  enforcementLevel: Network
  rules:
    - sources: [{{type: ServiceAccount, serviceAccount: {{namespace: {other}, name: load}}}}]
"#
    ))?;
    std::thread::sleep(Duration::from_secs(2));
    let allowed = node.load(other, &outside, "load", &web, 10, 3)?;
    ensure!(
        allowed.failed() == 0 && allowed.ok() > 0,
        "the allowed service account: {}",
        allowed.summary
    );
    let refused = node.load(ns, &inside, "load", &web, 10, 3)?;
    ensure!(
        refused.ok() == 0 && refused.failed() > 0,
        "web's own namespace got through: {}",
        refused.summary
    );
    let mut denials = 0.0;
    for pod in meshed_pods(node, ns, "app=web")? {
        denials += node.proxy_metrics(&pod)?.sum(
            "authorization_denied_total",
            &[
                ("policy", &format!("{ns}/web-from-out")),
                ("reason", "not_authorized"),
                ("tls", "true"),
            ],
        );
    }
    ensure!(
        denials >= refused.failed() as f64,
        "{denials} refusals counted, the client saw {}",
        refused.failed()
    );
    // Kubelet's probes come from the node: still ready.
    let ready = node.wait_ready(ns, "app=web", 3, Duration::from_secs(30))?;
    ensure!(
        ready.len() == 3,
        "web pods lost readiness under authorization"
    );

    node.kubectl(&["-n", ns, "delete", "authorizationpolicy", "web-from-out"])?;
    std::thread::sleep(Duration::from_secs(2));
    let reopened = node.load(ns, &inside, "load", &web, 10, 2)?;
    ensure!(
        reopened.failed() == 0,
        "still refused after the policy went: {}",
        reopened.summary
    );
    node.kubectl(&["delete", "namespace", other, "--wait=false"])?;
    node.kubectl(&["delete", "namespace", ns, "--wait=false"])?;
    Ok(())
}
