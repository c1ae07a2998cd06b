//! A real Kubernetes API server (the version `tests/kube/go` pins, and etcd, from
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
/// the account, and the ServiceAccount admission plugin would refuse pods
/// that name a missing one.)
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

/// The documents of a YAML manifest file, in order.
pub fn manifest(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).map_err(anyhow::Error::from))
        .filter(|doc| !matches!(doc, Ok(serde_json::Value::Null)))
        .collect()
}

/// Creates every object of `docs` as `kubectl create` would, or only asks
/// the server to validate it (`dry_run`, as `kubectl apply --dry-run=server`).
/// Objects that already exist are left as they are. Returns `kind/name`s.
pub async fn create_all(
    client: &kube::Client,
    docs: &[serde_json::Value],
    dry_run: bool,
) -> anyhow::Result<Vec<String>> {
    use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
    use kube::discovery::{Scope, pinned_kind};
    let mut done = Vec::new();
    for doc in docs {
        let object: DynamicObject = serde_json::from_value(doc.clone())?;
        let types = object
            .types
            .clone()
            .context("object without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (resource, caps) = pinned_kind(client, &gvk)
            .await
            .with_context(|| format!("the server does not serve {types:?}"))?;
        let name = format!(
            "{}/{}",
            types.kind,
            object.metadata.name.clone().unwrap_or_default()
        );
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                object.metadata.namespace.as_deref().unwrap_or("default"),
                &resource,
            ),
        };
        let result = if dry_run {
            // Server-side apply, dry run: validated whether or not the
            // object exists, as `kubectl apply --dry-run=server` does.
            let params = PatchParams::apply("weft-tests").force().dry_run();
            let object_name = object.metadata.name.clone().unwrap_or_default();
            api.patch(&object_name, &params, &Patch::Apply(&object))
                .await
                .map(|_| ())
        } else {
            match api.create(&PostParams::default(), &object).await {
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                other => other.map(|_| ()),
            }
        };
        result.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        done.push(name);
    }
    Ok(done)
}

impl KubeApi {
    /// A kubeconfig that authenticates as service account `namespace/name`
    /// with a token from TokenRequest, as a pod running as it would.
    pub async fn kubeconfig_for(
        &self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        use kube::api::{Api, PostParams};
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec!["https://kubernetes.default.svc".into()],
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let token = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await?
            .status
            .context("no token")?
            .token;
        let admin = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let server = admin.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone())
            .context("no server in the admin kubeconfig")?;
        // One file per call: tests running side by side each get their own.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("{namespace}-{name}-{n}.kubeconfig"));
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "weft-test", "cluster": {"server": server, "insecure-skip-tls-verify": true}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "weft-test", "context": {"cluster": "weft-test", "user": name}}],
            "current-context": "weft-test"
        });
        std::fs::write(&path, serde_json::to_vec(&config)?)?;
        Ok(path)
    }

    /// Installs the Gateway API CRDs of `examples/install/gateway-api/`
    /// (once per server) and waits until they are served.
    pub async fn gateway_api_crds(&self, client: &kube::Client) -> anyhow::Result<()> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        use kube::api::Api;
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/install/gateway-api");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&folder)? {
            let docs = manifest(&entry?.path())?;
            for name in create_all(client, &docs, false).await? {
                names.push(
                    name.trim_start_matches("CustomResourceDefinition/")
                        .to_string(),
                );
            }
        }
        let crds = Api::<CustomResourceDefinition>::all(client.clone());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        for name in names {
            loop {
                let established = crds
                    .get(&name)
                    .await?
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "{name} not established"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Installs `examples/install/00-namespace.yaml` and `20-rbac.yaml` (once
    /// per server; later calls find them there) and returns a kubeconfig
    /// for the controller's own service account.
    pub async fn controller_kubeconfig(&self, client: &kube::Client) -> anyhow::Result<PathBuf> {
        let install = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/install");
        for file in ["00-namespace.yaml", "20-rbac.yaml"] {
            create_all(client, &manifest(&install.join(file))?, false).await?;
        }
        self.kubeconfig_for(client, "weft-system", "weft-controller")
            .await
    }
}
