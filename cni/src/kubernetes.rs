//! Kubernetes mode: which pods get redirect rules, and with which
//! exemptions. The runtime names the pod in `CNI_ARGS`; the plugin looks it
//! up with the kubeconfig the installer wrote and redirects only pods that
//! carry the proxy, adding the pod's skip annotations to the config's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use weft_api::{PROXY_CONTAINER_NAME, annotations, port_list};

use crate::config::{PortRange, RedirectConfig};
use crate::{CniError, codes};

/// The `kubernetes` object of the plugin's network config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Credentials for looking pods up (written by `weft-cni install`).
    pub kubeconfig: PathBuf,
    /// Namespaces whose pods are passed through without a lookup, so they
    /// never depend on the API server or on Weft (default `kube-system`).
    #[serde(default = "default_excluded")]
    pub exclude_namespaces: Vec<String>,
    /// How long one lookup may take, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_excluded() -> Vec<String> {
    vec!["kube-system".into()]
}

fn default_timeout_ms() -> u64 {
    5_000
}

/// The pod a CNI call is for, from `CNI_ARGS`
/// (`K8S_POD_NAMESPACE=…;K8S_POD_NAME=…;…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn from_cni_args(args: &str) -> Option<PodRef> {
        let mut namespace = None;
        let mut name = None;
        for pair in args.split(';') {
            match pair.split_once('=') {
                Some(("K8S_POD_NAMESPACE", v)) if !v.is_empty() => namespace = Some(v.to_string()),
                Some(("K8S_POD_NAME", v)) if !v.is_empty() => name = Some(v.to_string()),
                _ => {}
            }
        }
        Some(PodRef {
            namespace: namespace?,
            name: name?,
        })
    }
}

/// What to do for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The pod carries the proxy: install these rules.
    Redirect(RedirectConfig),
    /// Leave the pod's network untouched, and say why in the log.
    PassThrough(String),
}

/// Decides from the pod object: meshed pods (a `weft-proxy` container or
/// init container) are redirected with their annotations' exemptions.
pub fn verdict(pod: &Pod, base: &RedirectConfig) -> Result<Verdict, CniError> {
    let spec = pod.spec.as_ref();
    let has_proxy = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER_NAME)
    });
    if !has_proxy {
        return Ok(Verdict::PassThrough("the pod has no weft-proxy".into()));
    }
    let empty = Default::default();
    let notes = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let bad = |key: &str, e: String| {
        CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            format!("invalid pod annotation {key}"),
            e,
        )
    };
    let ranges = |key: &str| -> Result<Vec<PortRange>, CniError> {
        match notes.get(key) {
            None => Ok(Vec::new()),
            Some(v) => port_list::parse_ranges(v).map_err(|e| bad(key, e.to_string())),
        }
    };
    let mut config = base.clone();
    config
        .skip_inbound_ports
        .extend(ranges(annotations::SKIP_INBOUND_PORTS)?);
    config
        .skip_outbound_ports
        .extend(ranges(annotations::SKIP_OUTBOUND_PORTS)?);
    if let Some(v) = notes.get(annotations::SKIP_OUTBOUND_CIDRS) {
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    bad(
                        annotations::SKIP_OUTBOUND_CIDRS,
                        format!("{item:?} is not a CIDR"),
                    )
                })?;
            config.skip_outbound_cidrs.push(net.trunc());
        }
    }
    Ok(Verdict::Redirect(config))
}

/// Reads the pod from the API server. Any failure is reported as "try
/// again later": the runtime retries the sandbox, so a meshed pod never
/// starts without its rules because the API was briefly away.
pub fn lookup(config: &KubernetesConfig, pod: &PodRef) -> Result<Pod, CniError> {
    let retry = |msg: String, details: String| CniError::new(codes::TRY_AGAIN_LATER, msg, details);
    let runtime = weft_api::runtime::build("weft-cni", 1)
        .map_err(|e| CniError::io("cannot start the lookup", e.to_string()))?;
    let timeout = Duration::from_millis(config.timeout_ms);
    let path = config.kubeconfig.clone();
    let result = runtime.block_on(async {
        tokio::time::timeout(timeout, fetch(&path, pod))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer from the API server within {}ms",
                    config.timeout_ms
                ))
            })
    });
    // Ends the runtime's worker threads before the caller enters the pod's
    // network namespace.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result.map_err(|e| {
        retry(
            format!("cannot look up pod {}/{}", pod.namespace, pod.name),
            e,
        )
    })
}

async fn fetch(kubeconfig: &Path, pod: &PodRef) -> Result<Pod, String> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| format!("kubeconfig {}: {e}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .map_err(|e| format!("kubeconfig {}: {e}", kubeconfig.display()))?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    kube::Api::<Pod>::namespaced(client, &pod.namespace)
        .get(&pod.name)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: &[&str], init: &[&str], notes: &[(&str, &str)]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n",
                "annotations": notes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>()},
            "spec": {
                "containers": containers.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>(),
                "initContainers": init.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>(),
            }
        }))
        .unwrap()
    }

    #[test]
    fn cni_args_name_the_pod() {
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u";
        assert_eq!(
            PodRef::from_cni_args(args),
            Some(PodRef {
                namespace: "demo".into(),
                name: "web-1".into()
            })
        );
        assert_eq!(PodRef::from_cni_args("IgnoreUnknown=1"), None);
        assert_eq!(
            PodRef::from_cni_args("K8S_POD_NAMESPACE=;K8S_POD_NAME=x"),
            None
        );
        assert_eq!(PodRef::from_cni_args(""), None);
    }

    #[test]
    fn only_pods_with_the_proxy_are_redirected() {
        let base = RedirectConfig::default();
        assert!(matches!(
            verdict(&pod(&["app"], &[], &[]), &base).unwrap(),
            Verdict::PassThrough(_)
        ));
        // Classic mode: a container; native mode: an init container.
        for p in [
            pod(&["weft-proxy", "app"], &[], &[]),
            pod(&["app"], &["weft-validate", "weft-proxy"], &[]),
        ] {
            assert_eq!(verdict(&p, &base).unwrap(), Verdict::Redirect(base.clone()));
        }
    }

    #[test]
    fn skip_annotations_add_to_the_config() {
        let base = RedirectConfig {
            skip_outbound_ports: vec![PortRange::single(22)],
            ..Default::default()
        };
        let p = pod(
            &["weft-proxy"],
            &[],
            &[
                (annotations::SKIP_INBOUND_PORTS, "9000, 9100-9200"),
                (annotations::SKIP_OUTBOUND_PORTS, "5432"),
                (annotations::SKIP_OUTBOUND_CIDRS, "10.1.2.3/8,192.168.0.7"),
            ],
        );
        let Verdict::Redirect(c) = verdict(&p, &base).unwrap() else {
            panic!("meshed pod passed through")
        };
        assert_eq!(
            c.skip_inbound_ports,
            [
                PortRange::single(9000),
                PortRange {
                    first: 9100,
                    last: 9200
                }
            ]
        );
        assert_eq!(
            c.skip_outbound_ports,
            [PortRange::single(22), PortRange::single(5432)]
        );
        assert_eq!(
            c.skip_outbound_cidrs,
            [
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.168.0.7/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_bad_annotation_is_named() {
        let p = pod(
            &["weft-proxy"],
            &[],
            &[(annotations::SKIP_OUTBOUND_CIDRS, "10.0.0.0/8,nonsense")],
        );
        let e = verdict(&p, &RedirectConfig::default()).unwrap_err();
        assert_eq!(e.code, codes::INVALID_NETWORK_CONFIG);
        assert!(e.msg.contains("skip-outbound-cidrs"), "{e}");
        assert!(e.details.contains("nonsense"), "{e}");
    }

    #[test]
    fn the_kubernetes_object_is_checked() {
        let ok: KubernetesConfig =
            serde_json::from_value(serde_json::json!({"kubeconfig": "/etc/cni/net.d/k"})).unwrap();
        assert_eq!(ok.exclude_namespaces, ["kube-system"]);
        assert_eq!(ok.timeout_ms, 5000);
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"kubeconfig": 3}),
            serde_json::json!({"kubeconfig": "/k", "excludeNamespace": ["x"]}),
        ] {
            assert!(serde_json::from_value::<KubernetesConfig>(bad).is_err());
        }
    }
}
