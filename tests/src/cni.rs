//! Runs a conflist the way a container runtime does (libcni's rules): each
//! plugin gets its own config with the list's `cniVersion` and `name`, the
//! previous plugin's result as `prevResult`, and the CNI_* environment; DEL
//! runs the list in reverse with the cached ADD result. Plugins run inside
//! the node's namespace, so the bridge is made there.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// What a failed plugin printed.
#[derive(Debug, Clone)]
pub struct PluginOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl PluginOutput {
    /// The stdout as JSON (a result or an error object).
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("plugin stdout is not JSON: {:?}", self.stdout))
    }
}

#[derive(Debug, Clone)]
pub struct CniRunner {
    pub conflist: Value,
    pub path: Vec<PathBuf>,
    pub node_netns: String,
}

impl CniRunner {
    fn find(&self, plugin_type: &str) -> anyhow::Result<PathBuf> {
        self.path
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| p.is_file())
            .with_context(|| format!("CNI plugin {plugin_type} not found in {:?} (is containernetworking-plugins installed?)", self.path))
    }

    fn cni_path(&self) -> String {
        self.path
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The config one plugin receives.
    pub fn plugin_config(
        &self,
        plugin: &Value,
        overrides: Option<&Value>,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        conf["name"] = self.conflist["name"].clone();
        if conf["type"] == "weft-cni"
            && let (Some(o), Some(obj)) =
                (overrides.and_then(Value::as_object), conf.as_object_mut())
        {
            for (k, v) in o {
                obj.insert(k.clone(), v.clone());
            }
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    /// Runs one plugin binary with `command` and `stdin`, inside the node.
    pub fn exec(
        &self,
        plugin_type: &str,
        command: &str,
        container_id: &str,
        netns: &str,
        ifname: &str,
        stdin: &Value,
    ) -> anyhow::Result<PluginOutput> {
        self.exec_with_args(
            plugin_type,
            command,
            (container_id, netns, ifname),
            "IgnoreUnknown=1",
            stdin,
        )
    }

    /// [`Self::exec`] with the runtime's `CNI_ARGS` (a Kubernetes runtime
    /// names the pod there).
    pub fn exec_with_args(
        &self,
        plugin_type: &str,
        command: &str,
        (container_id, netns, ifname): (&str, &str, &str),
        cni_args: &str,
        stdin: &Value,
    ) -> anyhow::Result<PluginOutput> {
        let bin = self.find(plugin_type)?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_netns])
            .arg(&bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", cni_args)
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        child
            .stdin
            .take()
            .context("no stdin")?
            .write_all(&serde_json::to_vec(stdin)?)?;
        let out = child.wait_with_output()?;
        Ok(PluginOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// ADD through the whole list; returns the final result.
    pub fn add(
        &self,
        container_id: &str,
        netns: &str,
        ifname: &str,
        overrides: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let plugin_type = plugin["type"].as_str().unwrap_or_default().to_string();
            let conf = self.plugin_config(&plugin, overrides, prev.as_ref());
            let out = self.exec(&plugin_type, "ADD", container_id, netns, ifname, &conf)?;
            if !out.success {
                bail!(
                    "{plugin_type} ADD failed: {} {}",
                    out.stdout.trim(),
                    out.stderr.trim()
                );
            }
            prev = Some(out.json()?);
        }
        prev.context("empty conflist")
    }

    /// Each plugin's type and config, fed the cached ADD result (CHECK, DEL).
    fn configs_with_result(
        &self,
        overrides: Option<&Value>,
        result: &Value,
    ) -> Vec<(String, Value)> {
        self.plugins()
            .iter()
            .map(|plugin| {
                let plugin_type = plugin["type"].as_str().unwrap_or_default().to_string();
                (
                    plugin_type,
                    self.plugin_config(plugin, overrides, Some(result)),
                )
            })
            .collect()
    }

    /// CHECK through the whole list with the cached result.
    pub fn check(
        &self,
        container_id: &str,
        netns: &str,
        ifname: &str,
        overrides: Option<&Value>,
        result: &Value,
    ) -> anyhow::Result<()> {
        for (plugin_type, conf) in self.configs_with_result(overrides, result) {
            let out = self.exec(&plugin_type, "CHECK", container_id, netns, ifname, &conf)?;
            if !out.success {
                bail!(
                    "{plugin_type} CHECK failed: {} {}",
                    out.stdout.trim(),
                    out.stderr.trim()
                );
            }
        }
        Ok(())
    }

    /// DEL through the list in reverse, with the cached result.
    pub fn del(
        &self,
        container_id: &str,
        netns: &str,
        ifname: &str,
        overrides: Option<&Value>,
        result: &Value,
    ) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        for (plugin_type, conf) in self
            .configs_with_result(overrides, result)
            .into_iter()
            .rev()
        {
            match self.exec(&plugin_type, "DEL", container_id, netns, ifname, &conf) {
                Ok(out) if out.success => {}
                Ok(out) => failures.push(format!(
                    "{plugin_type}: {} {}",
                    out.stdout.trim(),
                    out.stderr.trim()
                )),
                Err(e) => failures.push(format!("{plugin_type}: {e:#}")),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("DEL failed: {}", failures.join("; "))
        }
    }
}

/// A minimal standalone config for calling `weft-cni` directly.
pub fn weft_conf(version: &str, prev: Option<&Value>, extra: Value) -> Value {
    let mut conf = json!({ "cniVersion": version, "name": "weft-test", "type": "weft-cni" });
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    if let (Some(obj), Some(extra)) = (conf.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    conf
}
