//! Plaintext never on the cluster's wire: while meshed pods send a marker
//! over HTTP, gRPC and a server-speaks-first TCP protocol, tcpdump on each
//! node's pod bridge and on the underlay between the nodes sees it
//! nowhere, and every connection between two of those pods is TLS records
//! from its first byte. A control request from the node, plaintext on
//! purpose, is seen: the capture would catch a leak.

use std::process::{Child, Command, Stdio};

use weft_testbed::wire::{Stream, tcp_streams, tls_records};

use super::*;

/// tcpdump on one interface of one node, writing to a file.
struct Capture {
    child: Child,
    path: PathBuf,
    log: PathBuf,
}

impl Capture {
    fn start(dir: &Path, netns: Option<&str>, interface: &str) -> anyhow::Result<Capture> {
        let path = dir.join(format!("{interface}.pcap"));
        let log = dir.join(format!("{interface}.log"));
        let mut command = match netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, "tcpdump"]);
                c
            }
            None => Command::new("tcpdump"),
        };
        let child = command
            .args([
                "-Z",
                "root",
                "--immediate-mode",
                "-U",
                "-s",
                "0",
                "-i",
                interface,
                "-w",
            ])
            .arg(&path)
            .arg("tcp")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let capture = Capture { child, path, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&capture.log)?.contains("listening on") {
            ensure!(
                Instant::now() < deadline,
                "tcpdump on {interface}: {}",
                std::fs::read_to_string(&capture.log)?
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(capture)
    }

    /// SIGTERM (tcpdump flushes), then the streams it saw.
    fn finish(mut self) -> anyhow::Result<Vec<Stream>> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        self.child.wait()?;
        tcp_streams(&self.path)
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

pub(super) fn plaintext_never_on_the_wire(node: &KubeNode) -> anyhow::Result<()> {
    let ns = "e2e-wire";
    node.apply(&demo_app(node, ns, true)?)?;
    node.apply(&banner_app(ns, None))?;
    wait_demo(node, ns)?;
    node.wait_ready(ns, "app=banner", 1, Duration::from_secs(120))?;
    let pods: Vec<Value> = node
        .pods(ns, "app")?
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let ips: Vec<String> = pods
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str().map(String::from))
        .collect();
    let load = load_pod(node, ns)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let meshed_marker = format!("weft-secret-{stamp}");
    let control_marker = format!("weft-plain-{stamp}");

    let dir = tempfile::tempdir()?;
    // Node 1 is this machine's network namespace, node 2 `weftnode2`
    // (tests/kube/node.sh).
    let captures = [
        Capture::start(dir.path(), None, "weftbr0")?,
        Capture::start(dir.path(), None, "weftul2")?,
        Capture::start(dir.path(), Some("weftnode2"), "weftbr1")?,
    ];
    let exec = |args: &[&str]| node.demo(ns, &load, "load", args);
    let path = format!("/{meshed_marker}");
    let traffic = (|| -> anyhow::Result<()> {
        for (target, grpc) in [("web:80", false), ("grpc:9090", true)] {
            let mut args = vec![
                "load",
                target,
                "--path",
                &path,
                "--rate",
                "20",
                "--duration",
                "3s",
            ];
            if grpc {
                args.push("--grpc");
            }
            let report = weft_testbed::node::LoadReport::parse(&exec(&args)?)?;
            ensure!(
                report.failed() == 0 && report.ok() >= 40,
                "{target}: {}",
                report.summary
            );
        }
        for _ in 0..5 {
            let answer = exec(&["talk", "banner:25", &meshed_marker])?;
            ensure!(answer.contains(&meshed_marker), "banner: {answer}");
        }
        // The control: plaintext from the node straight to a pod.
        let web = pods
            .iter()
            .find(|p| p["metadata"]["labels"]["app"] == "web")
            .and_then(|p| p["status"]["podIP"].as_str())
            .context("no web pod")?;
        weft_testbed::sh(
            "curl",
            &[
                "-sf",
                "--max-time",
                "5",
                &format!("http://{web}:8080/{control_marker}"),
            ],
        )?;
        Ok(())
    })();
    let mut streams = Vec::new();
    for capture in captures {
        streams.extend(capture.finish()?);
    }
    traffic?;

    let leaks: Vec<String> = streams
        .iter()
        .filter(|s| contains(&s.bytes, &meshed_marker))
        .map(|s| format!("{} -> {}", s.from, s.to))
        .collect();
    ensure!(leaks.is_empty(), "the marker in plaintext: {leaks:?}");
    ensure!(
        streams.iter().any(|s| contains(&s.bytes, &control_marker)),
        "the capture missed the plaintext control request"
    );
    let ours = |addr: &std::net::SocketAddr| ips.contains(&addr.ip().to_string());
    let mut tls = 0;
    for s in streams
        .iter()
        .filter(|s| ours(&s.from) && ours(&s.to) && s.from_start && !s.bytes.is_empty())
    {
        tls_records(&s.bytes).map_err(|e| anyhow::anyhow!("{} -> {}: {e}", s.from, s.to))?;
        tls += 1;
    }
    let crossing = streams
        .iter()
        .filter(|s| ours(&s.from) && ours(&s.to))
        .map(|s| (s.from.ip(), s.to.ip()))
        .filter(|(a, b)| {
            a.to_string().starts_with("10.244.0.") != b.to_string().starts_with("10.244.0.")
        })
        .count();
    eprintln!(
        "wire: {} streams captured, {tls} between the namespace's pods all TLS ({crossing} crossing nodes), no marker",
        streams.len()
    );
    ensure!(tls >= 6, "only {tls} pod-to-pod streams captured");
    Ok(())
}
