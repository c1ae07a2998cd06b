//! Kubernetes pod discovery for a Prometheus that has none.
//!
//! Debian builds Prometheus without `kubernetes_sd_configs` ("Kubernetes
//! support has been completely removed", its NEWS says), and upstream
//! builds cannot be fetched on these machines. To still run the shipped
//! scrape configuration's relabelling against a real cluster, this module
//! lists the real pods and hands them to Prometheus's HTTP service
//! discovery as the `role: pod` discovery would: one target per container
//! port (or per container without ports) with the same `__meta_kubernetes_*`
//! labels. [`http_sd_config`] rewrites a scrape configuration to use it,
//! leaving every `relabel_configs` as shipped.

use serde_json::{Map, Value, json};

/// Prometheus's label-name sanitising: anything but `[a-zA-Z0-9_]` → `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The targets `role: pod` would give for `pods` (a `kubectl get pods -o
/// json` list's items), restricted to `namespaces` if not empty.
pub fn pod_targets(pods: &[Value], namespaces: &[String]) -> Value {
    let mut groups = Vec::new();
    for pod in pods {
        let meta = &pod["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or_default();
        if !namespaces.is_empty() && !namespaces.iter().any(|n| n == namespace) {
            continue;
        }
        let Some(ip) = pod["status"]["podIP"].as_str() else {
            continue;
        };
        let mut labels = Map::new();
        let mut set = |k: String, v: &str| {
            labels.insert(k, Value::String(v.to_string()));
        };
        set("__meta_kubernetes_namespace".into(), namespace);
        set(
            "__meta_kubernetes_pod_name".into(),
            meta["name"].as_str().unwrap_or_default(),
        );
        set("__meta_kubernetes_pod_ip".into(), ip);
        set(
            "__meta_kubernetes_pod_uid".into(),
            meta["uid"].as_str().unwrap_or_default(),
        );
        set(
            "__meta_kubernetes_pod_node_name".into(),
            pod["spec"]["nodeName"].as_str().unwrap_or_default(),
        );
        set(
            "__meta_kubernetes_pod_host_ip".into(),
            pod["status"]["hostIP"].as_str().unwrap_or_default(),
        );
        set(
            "__meta_kubernetes_pod_phase".into(),
            pod["status"]["phase"].as_str().unwrap_or_default(),
        );
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        set(
            "__meta_kubernetes_pod_ready".into(),
            if ready { "true" } else { "false" },
        );
        for (kind, field) in [("label", "labels"), ("annotation", "annotations")] {
            for (k, v) in meta[field].as_object().into_iter().flatten() {
                let name = sanitize(k);
                set(
                    format!("__meta_kubernetes_pod_{kind}_{name}"),
                    v.as_str().unwrap_or_default(),
                );
                set(
                    format!("__meta_kubernetes_pod_{kind}present_{name}"),
                    "true",
                );
            }
        }
        if let Some(owner) = meta["ownerReferences"]
            .as_array()
            .and_then(|o| o.iter().find(|r| r["controller"] == true))
        {
            set(
                "__meta_kubernetes_pod_controller_kind".into(),
                owner["kind"].as_str().unwrap_or_default(),
            );
            set(
                "__meta_kubernetes_pod_controller_name".into(),
                owner["name"].as_str().unwrap_or_default(),
            );
        }
        for (field, init) in [("containers", "false"), ("initContainers", "true")] {
            for container in pod["spec"][field].as_array().into_iter().flatten() {
                let mut c = labels.clone();
                let mut put = |k: &str, v: &str| {
                    c.insert(k.to_string(), Value::String(v.to_string()));
                };
                put(
                    "__meta_kubernetes_pod_container_name",
                    container["name"].as_str().unwrap_or_default(),
                );
                put(
                    "__meta_kubernetes_pod_container_image",
                    container["image"].as_str().unwrap_or_default(),
                );
                put("__meta_kubernetes_pod_container_init", init);
                let ports = container["ports"].as_array().cloned().unwrap_or_default();
                if ports.is_empty() {
                    groups.push(json!({"targets": [ip], "labels": c}));
                    continue;
                }
                for port in ports {
                    let number = port["containerPort"]
                        .as_u64()
                        .unwrap_or_default()
                        .to_string();
                    let mut p = c.clone();
                    for (k, v) in [
                        (
                            "__meta_kubernetes_pod_container_port_name",
                            port["name"].as_str().unwrap_or_default(),
                        ),
                        (
                            "__meta_kubernetes_pod_container_port_number",
                            number.as_str(),
                        ),
                        (
                            "__meta_kubernetes_pod_container_port_protocol",
                            port["protocol"].as_str().unwrap_or("TCP"),
                        ),
                    ] {
                        p.insert(k.to_string(), Value::String(v.to_string()));
                    }
                    groups.push(json!({"targets": [format!("{ip}:{number}")], "labels": p}));
                }
            }
        }
    }
    Value::Array(groups)
}

/// A job's name and the namespaces its discovery is limited to (empty:
/// all).
pub type JobNamespaces = (String, Vec<String>);

/// Rewrites a scrape configuration's `kubernetes_sd_configs` (`role: pod`)
/// into `http_sd_configs` at `url?job=<job>`, keeping everything else.
/// Returns the YAML and, per job, the namespaces its discovery was limited
/// to.
pub fn http_sd_config(
    config: &str,
    url: &str,
    scrape_interval: &str,
) -> anyhow::Result<(String, Vec<JobNamespaces>)> {
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(config)?;
    doc["global"]["scrape_interval"] = scrape_interval.into();
    let mut jobs = Vec::new();
    let configs = doc["scrape_configs"]
        .as_sequence_mut()
        .ok_or_else(|| anyhow::anyhow!("no scrape_configs"))?;
    for job in configs {
        let Some(sd) = job
            .as_mapping_mut()
            .and_then(|m| m.remove("kubernetes_sd_configs"))
        else {
            continue;
        };
        let name = job["job_name"].as_str().unwrap_or_default().to_string();
        let mut namespaces = Vec::new();
        for entry in sd.as_sequence().into_iter().flatten() {
            anyhow::ensure!(entry["role"] == "pod", "{name}: only role pod is emulated");
            for ns in entry["namespaces"]["names"]
                .as_sequence()
                .into_iter()
                .flatten()
            {
                namespaces.push(ns.as_str().unwrap_or_default().to_string());
            }
        }
        job["http_sd_configs"] = serde_yaml_ng::to_value(vec![json!({
            "url": format!("{url}?job={name}"),
            "refresh_interval": "5s",
        })])?;
        jobs.push((name, namespaces));
    }
    Ok((serde_yaml_ng::to_string(&doc)?, jobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_becomes_one_target_per_container_port() {
        let pod = json!({
            "metadata": {
                "name": "web-1", "namespace": "demo", "uid": "u1",
                "labels": {"weft.io/workload": "web", "app": "web"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-abc", "controller": true}],
            },
            "spec": {
                "nodeName": "vm",
                "initContainers": [{"name": "weft-validate", "image": "proxy"}],
                "containers": [
                    {"name": "weft-proxy", "image": "proxy", "ports": [{"name": "weft-admin", "containerPort": 6191}]},
                    {"name": "app", "image": "app", "ports": [{"name": "http", "containerPort": 8080}]},
                ],
            },
            "status": {"podIP": "10.244.0.9", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        });
        let targets = pod_targets(std::slice::from_ref(&pod), &[]);
        let targets = targets.as_array().unwrap();
        assert_eq!(targets.len(), 3);
        let admin = targets
            .iter()
            .find(|t| t["targets"][0] == "10.244.0.9:6191")
            .unwrap();
        let l = &admin["labels"];
        assert_eq!(l["__meta_kubernetes_pod_container_name"], "weft-proxy");
        assert_eq!(l["__meta_kubernetes_pod_container_port_name"], "weft-admin");
        assert_eq!(l["__meta_kubernetes_pod_label_weft_io_workload"], "web");
        assert_eq!(
            l["__meta_kubernetes_pod_labelpresent_weft_io_workload"],
            "true"
        );
        assert_eq!(l["__meta_kubernetes_pod_controller_kind"], "ReplicaSet");
        assert_eq!(l["__meta_kubernetes_pod_ready"], "true");
        // A container without ports is a target on the bare pod IP.
        assert!(targets.iter().any(|t| t["targets"][0] == "10.244.0.9"
            && t["labels"]["__meta_kubernetes_pod_container_init"] == "true"));
        assert_eq!(pod_targets(&[pod], &["other".into()]), json!([]));
    }

    #[test]
    fn the_shipped_config_keeps_its_relabelling() {
        let shipped = include_str!("../../examples/prometheus/kubernetes.yml");
        let (config, jobs) = http_sd_config(shipped, "http://127.0.0.1:1/targets", "5s").unwrap();
        assert_eq!(
            jobs,
            vec![
                ("weft-proxy".to_string(), vec![]),
                (
                    "weft-control-plane".to_string(),
                    vec!["weft-system".to_string()]
                ),
            ]
        );
        assert!(!config.contains("kubernetes_sd_configs"));
        assert!(config.contains("http://127.0.0.1:1/targets?job=weft-proxy"));
        assert!(config.contains("regex: weft-proxy;weft-admin"));
        assert!(config.contains("__meta_kubernetes_pod_label_weft_io_workload"));
    }
}
