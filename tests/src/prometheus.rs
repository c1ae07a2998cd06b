//! A real Prometheus for the tests and the mesh on one machine: upstream's,
//! built from its Go module with Kubernetes service discovery
//! (`tests/kube/gobuild.sh prometheus`, cached outside the clone), started
//! with a shipped configuration and queried through its HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::Pod;

/// The Prometheus binary, built on first use (minutes cold, then cached).
pub fn binary() -> anyhow::Result<PathBuf> {
    static BINARY: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| crate::go_program("prometheus").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The shipped Kubernetes scrape configuration with credentials for a
/// Prometheus that runs outside the cluster: every `kubernetes_sd_configs`
/// entry gets `kubeconfig_file`, and nothing else changes but the global
/// scrape interval (shorter, so a test sees rates within seconds).
pub fn with_kubeconfig(
    config: &str,
    kubeconfig: &Path,
    scrape_interval: &str,
) -> anyhow::Result<String> {
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(config)?;
    doc["global"]["scrape_interval"] = scrape_interval.into();
    let jobs = doc["scrape_configs"]
        .as_sequence_mut()
        .context("no scrape_configs")?;
    let mut found = 0;
    for job in jobs {
        for entry in job["kubernetes_sd_configs"]
            .as_sequence_mut()
            .into_iter()
            .flatten()
        {
            entry["kubeconfig_file"] = kubeconfig.to_string_lossy().as_ref().into();
            found += 1;
        }
    }
    anyhow::ensure!(found > 0, "no kubernetes_sd_configs in the configuration");
    Ok(serde_yaml_ng::to_string(&doc)?)
}

/// One scrape target for file service discovery, with its labels.
#[derive(Debug, Clone)]
pub struct FileTarget {
    pub address: SocketAddr,
    pub labels: Vec<(String, String)>,
}

/// The shipped alert rules.
pub const ALERT_RULES: &str = include_str!("../../examples/prometheus/alerts.yml");

/// A running Prometheus; killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    /// Where it runs: a pod or node's network namespace, or the host's.
    netns: Option<Pod>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `netns` (the host's if `None`) listening on
    /// `addr`, with `config` written to `dir/prometheus.yml`; `dir` also
    /// holds its data and log.
    pub async fn start(
        netns: Option<&Pod>,
        addr: SocketAddr,
        dir: &Path,
        config: &str,
    ) -> anyhow::Result<Self> {
        let bin = binary()?;
        std::fs::create_dir_all(dir.join("data"))?;
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        // The shipped configurations load the shipped rules beside them.
        std::fs::write(dir.join("alerts.yml"), ALERT_RULES)?;
        let log = dir.join("prometheus.log");
        let file = std::fs::File::create(&log)?;
        let mut cmd = match netns {
            Some(pod) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &pod.netns]).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd.spawn().context("starting prometheus")?;
        let mut prometheus = Prometheus {
            child,
            netns: netns.cloned(),
            addr,
            dir: dir.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = prometheus.get("/-/ready").await {
                return Ok(prometheus);
            }
            if let Some(status) = prometheus.child.try_wait()? {
                bail!("prometheus exited ({status}):\n{}", prometheus.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus not ready after 30 s:\n{}",
                    prometheus.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes a file service discovery target list (`targets/<job>.json`).
    pub fn write_targets(dir: &Path, job: &str, targets: &[FileTarget]) -> anyhow::Result<()> {
        let groups: Vec<Value> = targets
            .iter()
            .map(|t| {
                serde_json::json!({
                    "targets": [t.address.to_string()],
                    "labels": t
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect::<serde_json::Map<String, Value>>(),
                })
            })
            .collect();
        let targets_dir = dir.join("targets");
        std::fs::create_dir_all(&targets_dir)?;
        let tmp = targets_dir.join(format!(".{job}.json.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&groups)?)?;
        std::fs::rename(&tmp, targets_dir.join(format!("{job}.json")))?;
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    async fn connect(&self) -> anyhow::Result<tokio::net::TcpStream> {
        match &self.netns {
            Some(pod) => pod.connect(self.addr).await,
            None => Ok(tokio::net::TcpStream::connect(self.addr).await?),
        }
    }

    async fn request(&self, req: http::Request<String>) -> anyhow::Result<(u16, String)> {
        use http_body_util::BodyExt;
        let stream = self.connect().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(req.map(|b| http_body_util::Full::new(bytes::Bytes::from(b))))
            .await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A GET on Prometheus's HTTP server.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let req = http::Request::get(path)
            .header(http::header::HOST, self.addr.to_string())
            .body(String::new())?;
        self.request(req).await
    }

    /// An API call with form parameters; the `data` of a successful answer.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<Value> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let req = http::Request::post(path)
            .header(http::header::HOST, self.addr.to_string())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)?;
        let (status, text) = self.request(req).await?;
        let answer: Value = serde_json::from_str(&text)
            .with_context(|| format!("{path} answered {status}: {text}"))?;
        if answer["status"] != "success" {
            bail!(
                "{path} {params:?}: {} {}",
                answer["errorType"],
                answer["error"]
            );
        }
        Ok(answer["data"].clone())
    }

    /// An instant query's result vector (or matrix, or scalar as one item).
    pub async fn query(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api("/api/v1/query", &[("query", query)]).await?;
        Ok(match &data["result"] {
            Value::Array(items) => items.clone(),
            Value::Null => Vec::new(),
            other => vec![other.clone()],
        })
    }

    /// The value of a query that yields one sample (summed if several).
    pub async fn value(&self, query: &str) -> anyhow::Result<f64> {
        let items = self.query(query).await?;
        if items.is_empty() {
            bail!("{query}: no data");
        }
        items
            .iter()
            .map(|item| {
                item["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .with_context(|| format!("{query}: no value in {item}"))
            })
            .sum()
    }

    /// Waits until `query`'s value satisfies `ok`, returning the last value.
    pub async fn wait_value(
        &self,
        query: &str,
        timeout: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.value(query).await;
            match &value {
                Ok(v) if ok(*v) => return Ok(*v),
                _ if Instant::now() > deadline => {
                    bail!("{query}: still {value:?} after {timeout:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// The scrape targets Prometheus has, active ones only.
    pub async fn active_targets(&self) -> anyhow::Result<Vec<Value>> {
        let (status, body) = self.get("/api/v1/targets?state=active").await?;
        if status != 200 {
            bail!("targets answered {status}: {body}");
        }
        let answer: Value = serde_json::from_str(&body)?;
        Ok(answer["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_all_that_changes() {
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/prometheus/kubernetes.yml"),
        )
        .unwrap();
        let config = with_kubeconfig(&shipped, Path::new("/k/admin.kubeconfig"), "5s").unwrap();
        let mut got: serde_yaml_ng::Value = serde_yaml_ng::from_str(&config).unwrap();
        let mut want: serde_yaml_ng::Value = serde_yaml_ng::from_str(&shipped).unwrap();
        assert_eq!(got["global"]["scrape_interval"], "5s");
        for job in got["scrape_configs"].as_sequence_mut().unwrap() {
            for sd in job["kubernetes_sd_configs"].as_sequence_mut().unwrap() {
                let sd = sd.as_mapping_mut().unwrap();
                assert_eq!(sd.remove("kubeconfig_file").unwrap(), "/k/admin.kubeconfig");
            }
        }
        got["global"]["scrape_interval"] = want["global"]["scrape_interval"].clone();
        assert_eq!(got, std::mem::take(&mut want));
    }
}
