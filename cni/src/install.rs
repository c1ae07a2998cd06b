//! `weft-cni install`: the node installer the `weft-cni` DaemonSet runs.
//!
//! It copies the plugin into the node's CNI bin directory, writes the
//! kubeconfig the plugin looks pods up with, and appends `weft-cni` to the
//! node's primary CNI config list once that exists. It keeps all three
//! right for as long as it runs (the primary CNI may rewrite its config at
//! any time; the service-account token rotates), and undoes them when it is
//! stopped, which is how uninstalling Weft removes the plugin from every
//! node.
//!
//! It also repairs pods that started before the chain was in place: their
//! `weft-validate` init container finds no redirect rules and fails with
//! [`weft_api::VALIDATION_FAILED_EXIT`]; the installer deletes them so their
//! controllers make new ones, which get the rules.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

/// The plugin's `type`, and its file name in the bin directory.
pub const PLUGIN_TYPE: &str = "weft-cni";
/// The kubeconfig's file name in the CNI config directory. Runtimes only
/// read `.conf`, `.conflist` and `.json` files there, so it is ignored as
/// a network config.
pub const KUBECONFIG_NAME: &str = "weft-cni.kubeconfig";

#[derive(Clone, Debug)]
pub struct Installer {
    /// The node's CNI config directory, as mounted in the installer.
    pub conf_dir: PathBuf,
    /// The same directory as the node sees it (written into the config).
    pub host_conf_dir: PathBuf,
    /// The node's CNI bin directory, as mounted in the installer.
    pub bin_dir: PathBuf,
    /// The plugin binary to install (normally this program).
    pub plugin_binary: PathBuf,
    /// Where the pod's service-account token and CA are mounted.
    pub service_account_dir: PathBuf,
    /// The API server as the node reaches it (`https://host:port`).
    pub api_server: String,
    pub exclude_namespaces: Vec<String>,
    /// The node this installer runs on; pods on it are repaired.
    pub node_name: Option<String>,
}

/// What one pass found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The node has no primary CNI config yet.
    WaitingForPrimary,
    /// The chain is in place; `changed` says whether this pass wrote it.
    Chained { config: PathBuf, changed: bool },
}

impl Installer {
    fn kubeconfig_path(&self) -> PathBuf {
        self.conf_dir.join(KUBECONFIG_NAME)
    }

    /// The entry appended to the primary list.
    pub fn plugin_entry(&self) -> Value {
        json!({
            "type": PLUGIN_TYPE,
            "kubernetes": {
                "kubeconfig": self.host_conf_dir.join(KUBECONFIG_NAME),
                "excludeNamespaces": self.exclude_namespaces,
            }
        })
    }

    /// One idempotent pass: binary, kubeconfig, chain.
    pub fn install_once(&self) -> anyhow::Result<Pass> {
        copy_if_changed(&self.plugin_binary, &self.bin_dir.join(PLUGIN_TYPE))?;
        write_if_changed(&self.kubeconfig_path(), &self.kubeconfig()?, 0o600)?;
        let Some(primary) = primary_config(&self.conf_dir)? else {
            return Ok(Pass::WaitingForPrimary);
        };
        let text = std::fs::read(&primary)
            .with_context(|| format!("cannot read {}", primary.display()))?;
        let doc: Value = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not JSON", primary.display()))?;
        let chained = chain(doc.clone(), self.plugin_entry())
            .with_context(|| format!("cannot chain into {}", primary.display()))?;
        let is_list = primary.extension().is_some_and(|e| e == "conflist");
        if is_list && chained == doc {
            return Ok(Pass::Chained {
                config: primary,
                changed: false,
            });
        }
        // A single-plugin `.conf` becomes a `.conflist` of the same name;
        // the runtime picks the first file by name, so it stays the primary.
        let target = primary.with_extension("conflist");
        let mut body = serde_json::to_vec_pretty(&chained)?;
        body.push(b'\n');
        write_if_changed(&target, &body, 0o644)?;
        if target != primary {
            std::fs::remove_file(&primary)
                .with_context(|| format!("cannot remove {}", primary.display()))?;
        }
        Ok(Pass::Chained {
            config: target,
            changed: true,
        })
    }

    /// Takes the plugin out of every config list, then removes the
    /// kubeconfig and the binary.
    pub fn uninstall(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut cleaned = Vec::new();
        for path in config_files(&self.conf_dir)? {
            let Ok(text) = std::fs::read(&path) else {
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<Value>(&text) else {
                continue;
            };
            if let Some(doc) = unchain(doc) {
                let mut body = serde_json::to_vec_pretty(&doc)?;
                body.push(b'\n');
                write_if_changed(&path, &body, 0o644)?;
                cleaned.push(path);
            }
        }
        for file in [self.kubeconfig_path(), self.bin_dir.join(PLUGIN_TYPE)] {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", file.display()));
                }
            }
        }
        Ok(cleaned)
    }

    /// Whether the node is fully set up (the readiness check).
    pub fn is_installed(&self) -> anyhow::Result<bool> {
        if !self.bin_dir.join(PLUGIN_TYPE).exists() || !self.kubeconfig_path().exists() {
            return Ok(false);
        }
        let Some(primary) = primary_config(&self.conf_dir)? else {
            return Ok(false);
        };
        let doc: Value = serde_json::from_slice(&std::fs::read(&primary)?)?;
        Ok(has_plugin(&doc))
    }

    fn kubeconfig(&self) -> anyhow::Result<Vec<u8>> {
        let token = std::fs::read_to_string(self.service_account_dir.join("token"))
            .context("cannot read the service-account token")?;
        let ca = std::fs::read(self.service_account_dir.join("ca.crt"))
            .context("cannot read the service-account CA")?;
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": self.api_server,
                "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca),
            }}],
            "users": [{"name": "weft-cni", "user": {"token": token.trim()}}],
            "contexts": [{"name": "weft-cni", "context": {"cluster": "local", "user": "weft-cni"}}],
            "current-context": "weft-cni",
        });
        let mut body = serde_json::to_vec_pretty(&doc)?;
        body.push(b'\n');
        Ok(body)
    }

    /// Deletes pods on this node whose validator found no redirect rules.
    /// Returns their names.
    pub async fn repair(&self, client: &kube::Client) -> anyhow::Result<Vec<String>> {
        let Some(node) = &self.node_name else {
            return Ok(Vec::new());
        };
        let pods = kube::Api::<Pod>::all(client.clone());
        let params = kube::api::ListParams::default()
            .fields(&format!("spec.nodeName={node}"))
            .labels(weft_api::labels::CONTROL_PLANE_NS);
        let mut repaired = Vec::new();
        for pod in pods.list(&params).await?.items {
            if !validation_failed(&pod) || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
                continue;
            };
            kube::Api::<Pod>::namespaced(client.clone(), ns)
                .delete(name, &Default::default())
                .await?;
            repaired.push(format!("{ns}/{name}"));
        }
        Ok(repaired)
    }
}

/// Whether the pod's validator exited with the "no redirect rules" code.
pub fn validation_failed(pod: &Pod) -> bool {
    let exit = i32::from(weft_api::VALIDATION_FAILED_EXIT);
    pod.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|s| s.name == weft_api::VALIDATOR_CONTAINER_NAME)
        .flat_map(|s| [s.state.as_ref(), s.last_state.as_ref()])
        .flatten()
        .any(|state| {
            state
                .terminated
                .as_ref()
                .is_some_and(|t| t.exit_code == exit)
        })
}

/// Network config files in the order runtimes read them.
fn config_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e == "conf" || e == "conflist" || e == "json")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The node's primary config: the first file by name, which is the one
/// containerd and CRI-O use.
pub fn primary_config(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    Ok(config_files(dir)?.into_iter().next())
}

fn has_plugin(doc: &Value) -> bool {
    doc.get("plugins")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|p| p["type"] == PLUGIN_TYPE))
}

/// The config with `entry` as its last plugin, exactly once. A single
/// plugin config is turned into a list.
pub fn chain(doc: Value, entry: Value) -> anyhow::Result<Value> {
    let Value::Object(mut doc) = doc else {
        anyhow::bail!("the config is not a JSON object");
    };
    let mut plugins = match doc.remove("plugins") {
        Some(Value::Array(plugins)) => plugins,
        Some(_) => anyhow::bail!("\"plugins\" is not a list"),
        None => {
            // A `.conf`: the object itself is the one plugin; cniVersion
            // and name move up to the list.
            if !doc.contains_key("type") {
                anyhow::bail!("the config has neither \"plugins\" nor \"type\"");
            }
            let mut list = serde_json::Map::new();
            for key in ["cniVersion", "name"] {
                if let Some(v) = doc.get(key) {
                    list.insert(key.into(), v.clone());
                }
            }
            let plugin = Value::Object(std::mem::take(&mut doc));
            doc = list;
            vec![plugin]
        }
    };
    plugins.retain(|p| p["type"] != PLUGIN_TYPE);
    plugins.push(entry);
    doc.insert("plugins".into(), Value::Array(plugins));
    Ok(Value::Object(doc))
}

/// The config without the plugin, or `None` when it had none.
pub fn unchain(mut doc: Value) -> Option<Value> {
    if !has_plugin(&doc) {
        return None;
    }
    doc.get_mut("plugins")
        .and_then(Value::as_array_mut)?
        .retain(|p| p["type"] != PLUGIN_TYPE);
    Some(doc)
}

/// Copies the plugin binary (streamed: the installer's memory limit is
/// smaller than some binaries) unless the node already has these bytes.
fn copy_if_changed(from: &Path, to: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let same = (|| -> std::io::Result<bool> {
        let (a, b) = (std::fs::File::open(from)?, std::fs::File::open(to)?);
        if a.metadata()?.len() != b.metadata()?.len() {
            return Ok(false);
        }
        let (mut a, mut b) = (std::io::BufReader::new(a), std::io::BufReader::new(b));
        let (mut x, mut y) = ([0u8; 64 * 1024], [0u8; 64 * 1024]);
        loop {
            let n = a.read(&mut x)?;
            if n == 0 {
                return Ok(true);
            }
            b.read_exact(&mut y[..n])?;
            if x[..n] != y[..n] {
                return Ok(false);
            }
        }
    })()
    .unwrap_or(false);
    if same {
        return Ok(false);
    }
    let dir = to.parent().context("no parent directory")?;
    let tmp = dir.join(format!(".{PLUGIN_TYPE}.weft-tmp"));
    std::fs::copy(from, &tmp)
        .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("cannot replace {}", to.display()))?;
    Ok(true)
}

/// Writes through a temporary file and a rename, so the runtime never reads
/// half a file; skips the write when the contents are already right.
fn write_if_changed(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(false);
    }
    let dir = path.parent().context("no parent directory")?;
    let name = path.file_name().context("no file name")?.to_string_lossy();
    // A dot-name the runtime ignores while it is being written.
    let tmp = dir.join(format!(".{name}.weft-tmp"));
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(true)
}

/// Runs until SIGTERM or SIGINT, then uninstalls.
pub async fn run(installer: Installer, interval: Duration) -> anyhow::Result<()> {
    let stop = weft_api::runtime::stop_signal()?;
    tokio::pin!(stop);
    let client = match installer.node_name {
        Some(_) => Some(kube::Client::try_default().await.context(
            "cannot reach the API server to repair pods (unset NODE_NAME to skip repairs)",
        )?),
        None => None,
    };
    let mut last: Option<Pass> = None;
    loop {
        match installer.install_once() {
            Ok(pass) => {
                match &pass {
                    Pass::WaitingForPrimary if last.as_ref() != Some(&pass) => tracing::info!(
                        dir = %installer.conf_dir.display(),
                        "waiting for the node's primary CNI config"
                    ),
                    Pass::Chained {
                        config,
                        changed: true,
                    } => tracing::info!(config = %config.display(), "weft-cni chained"),
                    _ => {}
                }
                if matches!(pass, Pass::Chained { .. })
                    && let Some(client) = &client
                {
                    match installer.repair(client).await {
                        Ok(pods) => {
                            for pod in pods {
                                tracing::info!(%pod, "deleted a pod that started without redirect rules")
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot repair pods"),
                    }
                }
                last = Some(pass);
            }
            Err(e) => tracing::warn!(
                error = weft_api::error_chain(e.as_ref()),
                "install pass failed"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut stop => break,
        }
    }
    let cleaned = installer.uninstall()?;
    tracing::info!(configs = ?cleaned, "weft-cni removed from the node");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Value {
        json!({"type": PLUGIN_TYPE, "kubernetes": {"kubeconfig": "/etc/cni/net.d/weft-cni.kubeconfig"}})
    }

    #[test]
    fn chaining_appends_once_and_keeps_the_rest() {
        let primary = json!({"cniVersion": "0.4.0", "name": "net", "plugins": [
            {"type": "bridge", "bridge": "br0"}, {"type": "portmap"}]});
        let once = chain(primary.clone(), entry()).unwrap();
        assert_eq!(once["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(once["plugins"][2], entry());
        assert_eq!(once["plugins"][0], primary["plugins"][0]);
        let twice = chain(once.clone(), entry()).unwrap();
        assert_eq!(twice, once);
        // An old entry (different settings) is replaced, and moved last.
        let mut stale = primary.clone();
        stale["plugins"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"type": PLUGIN_TYPE}));
        assert_eq!(chain(stale, entry()).unwrap(), once);
        assert_eq!(unchain(once).unwrap(), primary);
        assert_eq!(unchain(primary), None);
    }

    #[test]
    fn a_single_plugin_config_becomes_a_list() {
        let conf = json!({"cniVersion": "0.3.1", "name": "net", "type": "bridge", "bridge": "br0"});
        let list = chain(conf.clone(), entry()).unwrap();
        assert_eq!(list["cniVersion"], "0.3.1");
        assert_eq!(list["name"], "net");
        assert_eq!(list["plugins"][0], conf);
        assert_eq!(list["plugins"][1], entry());
    }

    #[test]
    fn configs_that_are_not_networks_are_refused() {
        for bad in [json!([1]), json!({"plugins": 3}), json!({"name": "x"})] {
            assert!(chain(bad, entry()).is_err());
        }
    }
}

#[cfg(test)]
mod node_tests {
    use super::*;

    /// A node's folders and a pod's service-account mount, in a temp dir.
    fn node() -> (tempfile::TempDir, Installer) {
        let root = tempfile::tempdir().unwrap();
        let p = |s: &str| root.path().join(s);
        for d in ["net.d", "bin", "sa"] {
            std::fs::create_dir_all(p(d)).unwrap();
        }
        std::fs::write(p("sa/token"), "token-1\n").unwrap();
        std::fs::write(p("sa/ca.crt"), "CA").unwrap();
        std::fs::write(p("plugin"), vec![7u8; 300_000]).unwrap();
        let installer = Installer {
            conf_dir: p("net.d"),
            host_conf_dir: "/etc/cni/net.d".into(),
            bin_dir: p("bin"),
            plugin_binary: p("plugin"),
            service_account_dir: p("sa"),
            api_server: "https://10.96.0.1:443".into(),
            exclude_namespaces: vec!["kube-system".into()],
            node_name: None,
        };
        (root, installer)
    }

    #[test]
    fn waits_for_the_primary_then_chains_and_keeps_it_chained() {
        let (_root, installer) = node();
        assert_eq!(installer.install_once().unwrap(), Pass::WaitingForPrimary);
        // Binary and kubeconfig are in place while waiting.
        assert_eq!(
            std::fs::read(installer.bin_dir.join(PLUGIN_TYPE)).unwrap(),
            vec![7u8; 300_000]
        );
        let kubeconfig: Value = serde_json::from_slice(
            &std::fs::read(installer.conf_dir.join(KUBECONFIG_NAME)).unwrap(),
        )
        .unwrap();
        assert_eq!(kubeconfig["users"][0]["user"]["token"], "token-1");
        assert_eq!(
            kubeconfig["clusters"][0]["cluster"]["server"],
            "https://10.96.0.1:443"
        );
        assert!(!installer.is_installed().unwrap());

        let primary = installer.conf_dir.join("10-bridge.conflist");
        let original =
            json!({"cniVersion": "0.4.0", "name": "net", "plugins": [{"type": "bridge"}]});
        std::fs::write(&primary, original.to_string()).unwrap();
        assert_eq!(
            installer.install_once().unwrap(),
            Pass::Chained {
                config: primary.clone(),
                changed: true
            }
        );
        assert!(installer.is_installed().unwrap());
        assert_eq!(
            installer.install_once().unwrap(),
            Pass::Chained {
                config: primary.clone(),
                changed: false
            }
        );

        // The primary CNI rewrites its config: the next pass chains again.
        std::fs::write(&primary, original.to_string()).unwrap();
        assert!(!installer.is_installed().unwrap());
        assert!(matches!(
            installer.install_once().unwrap(),
            Pass::Chained { changed: true, .. }
        ));
        // A rotated token reaches the kubeconfig.
        std::fs::write(installer.service_account_dir.join("token"), "token-2").unwrap();
        installer.install_once().unwrap();
        let kubeconfig = std::fs::read_to_string(installer.conf_dir.join(KUBECONFIG_NAME)).unwrap();
        assert!(kubeconfig.contains("token-2"));

        // Uninstall leaves the primary as it was, and nothing of ours.
        assert_eq!(
            installer.uninstall().unwrap(),
            std::slice::from_ref(&primary)
        );
        let left: Value = serde_json::from_slice(&std::fs::read(&primary).unwrap()).unwrap();
        assert_eq!(left, original);
        assert!(!installer.bin_dir.join(PLUGIN_TYPE).exists());
        assert!(!installer.conf_dir.join(KUBECONFIG_NAME).exists());
        // Nothing left behind by the atomic writes either.
        let names: Vec<_> = std::fs::read_dir(&installer.conf_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["10-bridge.conflist"]);
    }

    #[test]
    fn a_single_plugin_conf_becomes_the_primary_list() {
        let (_root, installer) = node();
        let conf = installer.conf_dir.join("10-flannel.conf");
        std::fs::write(
            &conf,
            r#"{"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel"}"#,
        )
        .unwrap();
        let pass = installer.install_once().unwrap();
        let list = installer.conf_dir.join("10-flannel.conflist");
        assert_eq!(
            pass,
            Pass::Chained {
                config: list.clone(),
                changed: true
            }
        );
        assert!(!conf.exists());
        let doc: Value = serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
        assert_eq!(doc["plugins"][0]["type"], "flannel");
        assert_eq!(doc["plugins"][1]["type"], PLUGIN_TYPE);
    }

    #[test]
    fn a_broken_primary_is_reported_not_overwritten() {
        let (_root, installer) = node();
        let primary = installer.conf_dir.join("10-x.conflist");
        std::fs::write(&primary, "{ not json").unwrap();
        let e = installer.install_once().unwrap_err();
        assert!(format!("{e:#}").contains("10-x.conflist"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&primary).unwrap(), "{ not json");
    }
}
