//! A real single-node Kubernetes for the end-to-end tests
//! (`tests/kube/node.sh`), with Weft's images imported, driven the way a
//! user drives it: `kubectl`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// A running cluster of two nodes (the first in this machine's network
/// namespace). Brought down on drop, or by a watchdog when the test process
/// dies without dropping it.
#[derive(Debug)]
pub struct KubeNode {
    repo: PathBuf,
    dir: PathBuf,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    nodes: Vec<NodeFolders>,
}

/// One node of the cluster, and its CNI folders as this machine sees them.
#[derive(Debug, Clone)]
pub struct NodeFolders {
    pub name: String,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
}

impl NodeFolders {
    /// `node.sh`'s `nodes` file: `name conf-dir bin-dir` per line.
    fn parse(text: &str) -> anyhow::Result<Vec<NodeFolders>> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(
                |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                    [name, conf, bin] => Ok(NodeFolders {
                        name: name.into(),
                        cni_conf_dir: conf.into(),
                        cni_bin_dir: bin.into(),
                    }),
                    _ => bail!("bad line in the nodes file: {line:?}"),
                },
            )
            .collect()
    }
}

impl KubeNode {
    /// Builds what is missing (cached), starts the node and imports
    /// Weft's images built from this build's binaries (the test's own
    /// profile folder).
    pub fn up() -> anyhow::Result<KubeNode> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .canonicalize()?;
        let dir = PathBuf::from("/tmp/weft-node");
        let script = repo.join("tests/kube/node.sh");
        let run = |args: &[&str], owner: bool| -> anyhow::Result<String> {
            let mut cmd = Command::new("bash");
            cmd.arg(&script)
                .args(args)
                .env("WEFT_NODE", &dir)
                .stdin(Stdio::null());
            if owner {
                cmd.env("WEFT_NODE_OWNER", std::process::id().to_string());
            }
            let out = cmd.output().context("cannot run node.sh")?;
            if !out.status.success() {
                bail!(
                    "node.sh {} failed: {}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        // A node left by a run that was killed.
        run(&["down"], false)?;
        let bin_dir = run(&["build"], false)?;
        run(&["up"], std::env::var_os("WEFT_KEEP_NODE").is_none())?;
        let images = repo.join("target/weft-images");
        let out = Command::new("bash")
            .arg(repo.join("tests/kube/images.sh"))
            .arg(&images)
            .env("WEFT_BIN_DIR", crate::Bins::built_dir()?)
            .output()?;
        if !out.status.success() {
            bail!("images.sh: {}", String::from_utf8_lossy(&out.stderr));
        }
        for archive in String::from_utf8_lossy(&out.stdout).lines() {
            run(&["import", archive], false)?;
        }
        let kubectl = PathBuf::from(
            bin_dir
                .lines()
                .last()
                .context("node.sh build printed no bin dir")?,
        )
        .join("kubectl");
        let nodes = NodeFolders::parse(&std::fs::read_to_string(dir.join("nodes"))?)?;
        Ok(KubeNode {
            nodes,
            kubeconfig: dir.join("admin.kubeconfig"),
            repo,
            dir,
            kubectl,
        })
    }

    /// Imports an OCI image archive into every node's containerd.
    pub fn import(&self, archive: &Path) -> anyhow::Result<()> {
        let out = Command::new("bash")
            .arg(self.repo.join("tests/kube/node.sh"))
            .arg("import")
            .arg(archive)
            .env("WEFT_NODE", &self.dir)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "node.sh import {}: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Gives `image` a second name, `new`, on every node: "a new image
    /// tag of the same build", for rolling updates.
    pub fn tag(&self, image: &str, new: &str) -> anyhow::Result<()> {
        let out = Command::new("bash")
            .arg(self.repo.join("tests/kube/node.sh"))
            .args(["tag", image, new])
            .env("WEFT_NODE", &self.dir)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "node.sh tag {image} {new}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn repo(&self) -> &Path {
        &self.repo
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster's nodes, the first being this machine's own namespace.
    pub fn nodes(&self) -> &[NodeFolders] {
        &self.nodes
    }

    /// `kubectl ARGS`, failing with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_with_input(args, None)
    }

    /// The kubectl program and its connection arguments, for callers that
    /// run it themselves (asynchronously, say).
    pub fn kubectl_command(&self) -> Vec<String> {
        vec![
            self.kubectl.to_string_lossy().into_owned(),
            "--kubeconfig".into(),
            self.kubeconfig.to_string_lossy().into_owned(),
        ]
    }

    /// `kubectl ARGS` with `input` on stdin (`apply -f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run kubectl")?;
        if let Some(input) = input {
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&all)?)?)
    }

    pub fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.kubectl_with_input(&["apply", "-f", "-"], Some(yaml))
    }

    /// The pods of `namespace` matching `selector`.
    pub fn pods(&self, namespace: &str, selector: &str) -> anyhow::Result<Vec<Value>> {
        let list = self.json(&["-n", namespace, "get", "pods", "-l", selector])?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Calls `check` every half second until it returns `Some`, failing
    /// with the last error after `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        let mut last = String::from("not yet");
        loop {
            match check() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = format!("{e:#}"),
            }
            if started.elapsed() > timeout {
                bail!("{what}: not after {timeout:?} ({last})");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until every pod matching `selector` is Ready (and there are
    /// `count` of them, none terminating).
    pub fn wait_ready(
        &self,
        namespace: &str,
        selector: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        self.wait_for(
            &format!("{count} ready pods {selector} in {namespace}"),
            timeout,
            || {
                let pods: Vec<Value> = self
                    .pods(namespace, selector)?
                    .into_iter()
                    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                    .collect();
                let ready = pods.iter().all(|p| {
                    p["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                });
                Ok((pods.len() == count && ready).then_some(pods))
            },
        )
    }

    /// `weft-demo load` from inside a pod (its image has the demo binary),
    /// returning the per-second lines and the summary.
    pub fn load(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        target: &str,
        rate: u32,
        seconds: u32,
    ) -> anyhow::Result<LoadReport> {
        let out = self.demo(
            namespace,
            pod,
            container,
            &[
                "load",
                target,
                "--rate",
                &rate.to_string(),
                "--duration",
                &format!("{seconds}s"),
            ],
        )?;
        LoadReport::parse(&out)
    }

    /// `weft-demo ARGS...` run in `container` of `pod` (the demo image
    /// has the binary), returning what it printed.
    pub fn demo(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let mut all = vec![
            "-n",
            namespace,
            "exec",
            pod,
            "-c",
            container,
            "--",
            "/usr/local/bin/weft-demo",
        ];
        all.extend_from_slice(args);
        self.kubectl(&all)
    }

    /// A pod's proxy metrics, fetched from the node (pod IPs are routed
    /// there).
    pub fn proxy_metrics(&self, pod: &Value) -> anyhow::Result<crate::metrics::Scrape> {
        self.pod_metrics(pod, weft_api::ports::ADMIN)
    }

    /// The metrics a pod serves on `port` (a controller's admin port, say).
    pub fn pod_metrics(&self, pod: &Value, port: u16) -> anyhow::Result<crate::metrics::Scrape> {
        let ip = pod["status"]["podIP"].as_str().context("pod has no IP")?;
        let text = crate::sh(
            "curl",
            &[
                "-sf",
                "--max-time",
                "5",
                &format!("http://{ip}:{port}/metrics"),
            ],
        )?;
        Ok(crate::metrics::Scrape::parse(&text))
    }

    /// The tail of one of the node's component logs, for failure messages.
    pub fn component_log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join("log").join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        // For a look at a failure: `WEFT_KEEP_NODE=1 cargo test ...`.
        if std::env::var_os("WEFT_KEEP_NODE").is_some() {
            eprintln!(
                "node kept: KUBECONFIG={} (tests/kube/node.sh down to remove)",
                self.kubeconfig.display()
            );
            return;
        }
        let _ = Command::new("bash")
            .arg(self.repo.join("tests/kube/node.sh"))
            .arg("down")
            .env("WEFT_NODE", &self.dir)
            .stdin(Stdio::null())
            .output();
    }
}

/// The node a pod was scheduled to.
pub fn node_of(pod: &Value) -> &str {
    pod["spec"]["nodeName"].as_str().unwrap_or("")
}

/// What `weft-demo load` printed.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub seconds: Vec<Value>,
    pub summary: Value,
}

impl LoadReport {
    pub fn parse(out: &str) -> anyhow::Result<LoadReport> {
        let lines: Vec<Value> = out
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let (summary, seconds): (Vec<Value>, Vec<Value>) =
            lines.into_iter().partition(|l| l["summary"] == true);
        Ok(LoadReport {
            summary: summary.into_iter().next().context("no summary line")?,
            seconds,
        })
    }

    pub fn ok(&self) -> u64 {
        self.summary["ok"].as_u64().unwrap_or(0)
    }

    pub fn failed(&self) -> u64 {
        self.summary["failed"].as_u64().unwrap_or(0)
    }

    /// Answers from `backend` over the whole run.
    pub fn from(&self, backend: &str) -> u64 {
        self.summary["by_backend"][backend].as_u64().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_file_names_each_node_and_its_cni_folders() {
        let nodes = NodeFolders::parse(
            "vm /etc/cni/net.d /opt/cni/bin\nweft-node-2 /n2/etc-cni-net.d /n2/opt-cni-bin\n",
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].name, "weft-node-2");
        assert_eq!(nodes[1].cni_bin_dir, Path::new("/n2/opt-cni-bin"));
        assert!(NodeFolders::parse("vm /etc/cni/net.d").is_err());
    }
}
