//! A real Kubernetes API server (v1.20.2 and etcd, from
//! `tests/kube/apiserver.sh`) shared by the tests of one test binary. It is
//! started on first use and stopped by a watchdog when the test process
//! ends, however it ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// The running API server.
#[derive(Debug)]
pub struct KubeApi {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kube/apiserver.sh")
}

impl KubeApi {
    /// The API server of this test process, started on first call.
    pub fn shared() -> &'static KubeApi {
        static API: OnceLock<KubeApi> = OnceLock::new();
        API.get_or_init(|| Self::start().unwrap_or_else(|e| panic!("{e:#}")))
    }

    fn start() -> anyhow::Result<KubeApi> {
        crate::require_root();
        let dir = PathBuf::from(format!("/tmp/weft-kube-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(script())
            .arg("start")
            .arg(&dir)
            .arg(std::process::id().to_string())
            .output()
            .context("cannot run tests/kube/apiserver.sh")?;
        if !out.status.success() {
            bail!(
                "tests/kube/apiserver.sh start failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(KubeApi {
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
        })
    }

    /// A client with cluster-admin rights.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The API server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default()
    }
}

/// Creates a namespace with `labels` and a `default` service account that
/// does not mount a token. (With no controller-manager, nothing else makes
/// the account, and 1.20's admission would wait for a token Secret.)
pub async fn namespace(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("create namespace {name}"))?;
    service_account(client, name, "default").await
}

/// Creates a service account that does not mount a token by itself.
pub async fn service_account(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::{Api, PostParams};
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "automountServiceAccountToken": false
    }))?;
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &sa)
        .await
        .with_context(|| format!("create service account {namespace}/{name}"))?;
    Ok(())
}
