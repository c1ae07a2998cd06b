//! The mesh on one machine, for the demo, the end-to-end tests and the
//! benchmark.
//!
//! A [`Mesh`] is one node, or two ([`nodes`]): network namespaces with no
//! route out of the machine. Each [`Pod`] is a network namespace on one, wired by Debian's
//! real `bridge` and `host-local` CNI plugins with `weft-cni` chained after
//! them, run exactly as a container runtime runs a conflist (CNI_*
//! environment, each plugin fed the previous result, DEL in reverse order).
//! Processes run inside pods through `ip netns exec`; the proxy runs as UID
//! 2103. Everything is torn down on drop, and namespaces left by a process
//! that died are swept at the next start.

pub mod cluster;
pub mod cni;
pub mod dashboards;
pub mod demo;
pub mod identity;
pub mod kube_api;
pub mod metrics;
pub mod node;
pub mod nodes;
pub mod objects;
pub mod otlp;
pub mod prometheus;
pub mod wire;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub use crate::cni::CniRunner;

/// Prefix of every network namespace this crate makes.
pub const NETNS_PREFIX: &str = "weft-";
/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// Fails loudly when the test cannot do what it needs to: tests that need
/// root never skip themselves.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test builds network namespaces and must run as root (see README: the test command)"
    );
}

/// Runs a command to completion, failing with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The built Weft binaries, copied to a world-readable folder so the proxy
/// can run as its unprivileged user whatever the checkout's permissions.
#[derive(Debug, Clone)]
pub struct Bins {
    pub dir: PathBuf,
}

impl Bins {
    /// Finds the binaries next to the running executable (`target/<profile>`,
    /// or its parent for test executables in `deps/`), or in `WEFT_BIN_DIR`.
    pub fn locate() -> anyhow::Result<Self> {
        static COPIED: Mutex<Option<PathBuf>> = Mutex::new(None);
        let mut copied = COPIED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = copied.as_ref() {
            return Ok(Bins { dir: dir.clone() });
        }
        let source = Self::built_dir()?;
        let dir = PathBuf::from(format!("/tmp/weft-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        for name in [
            "weft-proxy",
            "weft-cni",
            "weft-demo",
            "weft-controller",
            "weft-injector",
        ] {
            let from = source.join(name);
            if !from.is_file() {
                bail!(
                    "{} is missing: build the workspace binaries first (cargo build --profile ci --bins, or --release)",
                    from.display()
                );
            }
            let to = dir.join(name);
            std::fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
        }
        sh("chmod", &["-R", "a+rX", &dir.to_string_lossy()])?;
        *copied = Some(dir.clone());
        Ok(Bins { dir })
    }

    /// Where cargo put the binaries of this build: `WEFT_BIN_DIR`, or the
    /// running executable's profile folder (`target/<profile>`, also for test
    /// executables in its `deps/`).
    pub fn built_dir() -> anyhow::Result<PathBuf> {
        if let Some(dir) = std::env::var_os("WEFT_BIN_DIR") {
            return Ok(PathBuf::from(dir));
        }
        let exe = std::env::current_exe()?;
        let mut dir = exe
            .parent()
            .context("executable has no folder")?
            .to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        Ok(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Deletes namespaces and binary copies left behind by earlier runs whose
/// process is gone (killed before it could clean up).
pub fn sweep_stale() {
    let alive =
        |pid: Option<i32>| pid.is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists());
    if let Ok(entries) = std::fs::read_dir("/tmp") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("weft-bin-")
                && !alive(pid.parse().ok())
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let Ok(list) = sh("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = sh("ip", &["netns", "del", name]);
            let _ = std::fs::remove_dir_all(etc_netns(name));
        }
    }
}

/// A program built from its Go module by `tests/kube/gobuild.sh NAME`
/// (`coredns`, `prometheus`): minutes the first time on a machine, then
/// cached outside the clone.
pub fn go_program(name: &str) -> anyhow::Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kube/gobuild.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(name)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!("{} {name} failed", script.display());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Where `ip netns exec` finds files it binds over `/etc` for the
/// processes it starts in `netns` (`resolv.conf`, say).
pub fn etc_netns(netns: &str) -> PathBuf {
    Path::new("/etc/netns").join(netns)
}

/// Options for a pod's `weft-cni` entry (merged into the conflist's).
pub type CniOverrides = Value;

/// A pod on the node.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Set on dual-stack meshes.
    pub ip6: Option<std::net::Ipv6Addr>,
}

impl Pod {
    pub fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.netns)
    }

    /// Runs `f` on a thread inside this pod's network namespace. Sockets it
    /// makes stay in the pod after the thread ends.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.netns_path(), f)
    }

    /// Opens a TCP connection from inside the pod, as the pod's app would.
    pub async fn connect(&self, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
        let path = self.netns_path();
        let stream = tokio::task::spawn_blocking(move || {
            in_netns(&path, || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            })
        })
        .await??;
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        Ok(tokio::net::TcpStream::from_std(stream)?)
    }

    /// A gRPC channel from inside the pod, as the pod's app would open it.
    pub async fn grpc_channel(
        &self,
        addr: SocketAddr,
    ) -> anyhow::Result<tonic::transport::Channel> {
        let pod = self.clone();
        Ok(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect_with_connector(tower::service_fn(move |_| {
                    let pod = pod.clone();
                    async move { pod.connect(addr).await.map(hyper_util::rt::TokioIo::new) }
                }))
                .await?,
        )
    }

    /// The proxy's admin address as seen from inside the pod.
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, weft_api::ports::ADMIN))
    }

    /// Scrapes this pod's proxy.
    pub async fn metrics(&self) -> anyhow::Result<metrics::Scrape> {
        let (status, body) = self.admin_get("/metrics").await?;
        if status != 200 {
            bail!("metrics answered {status}");
        }
        Ok(metrics::Scrape::parse(&body))
    }

    /// A GET to the proxy's admin server, from inside the pod.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_request(self, self.admin_addr(), "GET", path).await
    }

    /// Waits until the pod's proxy says it is ready.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.admin_get("/ready").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("proxy in pod {} not ready after {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One HTTP/1.1 request from inside `pod`, returning status and body.
pub async fn http_request(
    pod: &Pod,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let stream = pod.connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Runs `f` on a fresh thread that has joined the network namespace at `path`.
pub fn in_netns<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(path)
                    .unwrap_or_else(|e| panic!("cannot open netns {path}: {e}"));
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("cannot enter netns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A process started in a pod, killed when the mesh is dropped.
#[derive(Debug)]
struct Proc {
    label: String,
    child: Child,
    log: PathBuf,
}

/// How to start a proxy.
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// Extra `WEFT_*` variables.
    pub env: Vec<(String, String)>,
    /// CPU to pin the proxy to (`taskset`), for benchmarks.
    pub cpu: Option<usize>,
    /// Return as soon as the process runs instead of waiting for `/ready`.
    pub no_wait: bool,
}

/// How to build a mesh.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeshOptions {
    /// Give pods an IPv6 address too (dual stack; one node only).
    pub ipv6: bool,
    /// A second node, joined to the first by an underlay link.
    pub two_nodes: bool,
}

/// The second node of a two-node mesh.
#[derive(Debug)]
pub struct SecondNode {
    pub netns: String,
    pub cni: CniRunner,
}

static NEXT_MESH: AtomicU32 = AtomicU32::new(0);

/// A node and its pods. Dropping it removes every namespace, bridge, file
/// and process it made.
#[derive(Debug)]
pub struct Mesh {
    pub id: String,
    pub node_netns: String,
    pub dir: PathBuf,
    pub bins: Bins,
    pub cni: CniRunner,
    /// Set on two-node meshes; `node_netns` and `cni` are the first's.
    pub second: Option<SecondNode>,
    ipv6: bool,
    pods: Mutex<Vec<(Pod, Value)>>,
    procs: Mutex<Vec<Proc>>,
}

impl Mesh {
    /// Makes an IPv4 node named after `label` (a test name, say).
    pub fn new(label: &str) -> anyhow::Result<Self> {
        Self::with_options(label, MeshOptions::default())
    }

    /// Makes a node with the given options.
    pub fn with_options(label: &str, options: MeshOptions) -> anyhow::Result<Self> {
        require_root();
        sweep_stale();
        let bins = Bins::locate()?;
        let n = NEXT_MESH.fetch_add(1, Ordering::Relaxed);
        let short: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let id = format!("{}-{n}-{short}", std::process::id());
        if options.ipv6 && options.two_nodes {
            bail!("a two-node mesh is IPv4 only");
        }
        let node_netns = format!("{NETNS_PREFIX}{id}-node");
        let dir = std::env::temp_dir().join(format!("weft-mesh-{id}"));
        std::fs::create_dir_all(&dir)?;
        let runner = |index: u8, netns: &str| -> anyhow::Result<CniRunner> {
            let suffix = if index == 0 {
                String::new()
            } else {
                format!("-node{index}")
            };
            let conflist = nodes::conflist(
                index,
                options.ipv6,
                &dir.join(format!("ipam{suffix}")),
                &dir.join(format!("weft-cni{suffix}.log")),
            );
            std::fs::write(
                dir.join(format!("10-weft-mesh{suffix}.conflist")),
                serde_json::to_vec_pretty(&conflist)?,
            )?;
            Ok(CniRunner {
                conflist,
                path: vec![PathBuf::from(SYSTEM_CNI_DIR), bins.dir.clone()],
                node_netns: netns.to_string(),
            })
        };
        nodes::add_netns(&node_netns, options.ipv6)?;
        let cni = runner(0, &node_netns)?;
        let second = if options.two_nodes {
            let netns = format!("{NETNS_PREFIX}{id}-node1");
            nodes::add_netns(&netns, false)?;
            nodes::join(&node_netns, &netns)?;
            let cni = runner(1, &netns)?;
            Some(SecondNode { netns, cni })
        } else {
            None
        };
        Ok(Mesh {
            second,
            ipv6: options.ipv6,
            id,
            node_netns,
            dir,
            bins,
            cni,
            pods: Mutex::default(),
            procs: Mutex::default(),
        })
    }

    /// Adds a pod through the conflist, with optional `weft-cni` options.
    pub fn add_pod(&self, name: &str, weft_cni: Option<CniOverrides>) -> anyhow::Result<Pod> {
        self.add_pod_on(0, name, weft_cni)
    }

    /// The CNI runner of node `index` (0 or, on two-node meshes, 1).
    fn runner(&self, index: u64) -> anyhow::Result<&CniRunner> {
        match (index, &self.second) {
            (0, _) => Ok(&self.cni),
            (1, Some(second)) => Ok(&second.cni),
            _ => bail!("this mesh has no node {index}"),
        }
    }

    /// Adds a pod on node `index` (0, or 1 on a two-node mesh).
    pub fn add_pod_on(
        &self,
        index: u64,
        name: &str,
        weft_cni: Option<CniOverrides>,
    ) -> anyhow::Result<Pod> {
        let runner = self.runner(index)?;
        let netns = format!("{NETNS_PREFIX}{}-{name}", self.id);
        nodes::add_netns(&netns, self.ipv6)?;
        let container_id = format!("{}-{}", self.id, name);
        let path = format!("/var/run/netns/{netns}");
        let result = runner
            .add(&container_id, &path, "eth0", weft_cni.as_ref())
            .with_context(|| format!("CNI ADD for pod {name}"))?;
        let addresses: Vec<std::net::IpAddr> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        let ip = addresses
            .iter()
            .find_map(|a| match a {
                std::net::IpAddr::V4(v4) => Some(*v4),
                _ => None,
            })
            .with_context(|| format!("no IPv4 address in CNI result {result}"))?;
        let ip6 = addresses.iter().find_map(|a| match a {
            std::net::IpAddr::V6(v6) => Some(*v6),
            _ => None,
        });
        let pod = Pod {
            name: name.to_string(),
            netns,
            ip,
            ip6,
        };
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).push((
            pod.clone(),
            json!({"result": result, "cni": weft_cni, "node": index}),
        ));
        Ok(pod)
    }

    /// Runs CHECK for a pod through the whole conflist.
    pub fn check_pod(&self, pod: &Pod) -> anyhow::Result<()> {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        let (_, state) = pods
            .iter()
            .find(|(p, _)| p.name == pod.name)
            .context("unknown pod")?;
        let overrides = state["cni"].as_object().map(|o| Value::Object(o.clone()));
        self.runner(state["node"].as_u64().unwrap_or(0))?.check(
            &format!("{}-{}", self.id, pod.name),
            &pod.netns_path(),
            "eth0",
            overrides.as_ref(),
            &state["result"],
        )
    }

    /// Starts `program args` inside `pod` as root, logging to the mesh folder.
    pub fn spawn(
        &self,
        pod: &Pod,
        label: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<u32> {
        self.spawn_as(pod, label, None, None, program, args, env)
    }

    /// Starts a process in `pod`, optionally as `uid` and pinned to `cpu`.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_as(
        &self,
        pod: &Pod,
        label: &str,
        uid: Option<u32>,
        cpu: Option<usize>,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<u32> {
        let log = self.dir.join(format!("{}-{label}.log", pod.name));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.netns]);
        if let Some(cpu) = cpu {
            cmd.args(["taskset", "-c", &cpu.to_string()]);
        }
        if let Some(uid) = uid {
            cmd.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--",
            ]);
        }
        cmd.arg(program).args(args);
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {label} in {}", pod.name))?;
        let pid = child.id();
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Proc {
                label: format!("{}/{label}", pod.name),
                child,
                log,
            });
        Ok(pid)
    }

    /// Starts a demo workload in `pod` and waits until it accepts connections.
    pub async fn spawn_demo(
        &self,
        pod: &Pod,
        kind: &str,
        port: u16,
        name: &str,
    ) -> anyhow::Result<u32> {
        self.spawn_demo_at(pod, kind, &format!("0.0.0.0:{port}"), name)
            .await
    }

    /// Like [`Mesh::spawn_demo`], on any listen address (`[::]:8080`, say).
    pub async fn spawn_demo_at(
        &self,
        pod: &Pod,
        kind: &str,
        listen: &str,
        name: &str,
    ) -> anyhow::Result<u32> {
        let port: u16 = listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("listen address needs a port")?;
        let pid = self.spawn(
            pod,
            &format!("{kind}-{port}"),
            &self.bins.path("weft-demo"),
            &[kind, listen, name],
            &[],
        )?;
        wait_listening(pod, port).await?;
        Ok(pid)
    }

    /// Starts the pod's proxy as UID 2103 and waits until it is ready.
    pub async fn spawn_proxy(&self, pod: &Pod, options: ProxyOptions) -> anyhow::Result<u32> {
        let mut env = vec![(
            "WEFT_LOG_LEVEL".to_string(),
            "info,weft_proxy=debug".to_string(),
        )];
        env.extend(options.env);
        let pid = self.spawn_as(
            pod,
            "proxy",
            Some(weft_api::PROXY_UID),
            options.cpu,
            &self.bins.path("weft-proxy"),
            &[],
            &env,
        )?;
        if !options.no_wait {
            pod.wait_ready(Duration::from_secs(10)).await?;
        }
        // `ip netns exec` execs in place (and so do taskset/setpriv), so
        // this pid is the proxy's own.
        Ok(pid)
    }

    /// Sends SIGTERM to a process started in a pod.
    pub fn terminate(&self, pid: u32) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(())
    }

    /// Waits for a process started in a pod to exit, returning its status.
    pub async fn wait_exit(
        &self,
        pid: u32,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(p) = procs.iter_mut().find(|p| p.child.id() == pid)
                    && let Some(status) = p.child.try_wait()?
                {
                    return Ok(status);
                }
            }
            if Instant::now() > deadline {
                bail!("process {pid} still running after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The folder the controller's file discovery source reads.
    pub fn discovery_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("discovery");
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Writes `<name>.yaml` into the discovery folder atomically, so the
    /// controller never reads half a file.
    pub fn publish(&self, name: &str, yaml: &str) -> anyhow::Result<()> {
        let dir = self.discovery_dir()?;
        let tmp = dir.join(format!(".{name}.yaml.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, dir.join(format!("{name}.yaml")))?;
        Ok(())
    }

    /// The tail of a process's log, for failure messages.
    pub fn log_of(&self, pod: &Pod, label: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}-{label}.log", pod.name)))
            .unwrap_or_default()
    }

    fn teardown(&mut self) {
        let panicking = std::thread::panicking();
        for proc in self
            .procs
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
            if panicking {
                let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- last lines of {} ---", proc.label);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        let pods = std::mem::take(self.pods.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (pod, state) in pods.into_iter().rev() {
            let _ = std::fs::remove_dir_all(etc_netns(&pod.netns));
            let overrides = state["cni"].as_object().map(|o| Value::Object(o.clone()));
            let Ok(runner) = self.runner(state["node"].as_u64().unwrap_or(0)) else {
                continue;
            };
            if let Err(error) = runner.del(
                &format!("{}-{}", self.id, pod.name),
                &pod.netns_path(),
                "eth0",
                overrides.as_ref(),
                &state["result"],
            ) {
                eprintln!("CNI DEL for pod {} failed: {error:#}", pod.name);
            }
            let _ = sh("ip", &["netns", "del", &pod.netns]);
        }
        if let Some(second) = &self.second {
            let _ = sh("ip", &["netns", "del", &second.netns]);
        }
        let _ = sh("ip", &["netns", "del", &self.node_netns]);
        if !panicking {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("mesh files kept in {}", self.dir.display());
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl Mesh {
    /// Gives every process later started in `pod` this `resolv.conf`, as a
    /// kubelet gives each pod its own.
    pub fn set_resolv_conf(&self, pod: &Pod, text: &str) -> anyhow::Result<()> {
        let dir = etc_netns(&pod.netns);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("resolv.conf"), text)?;
        Ok(())
    }
}

/// Waits until something listens on `port` inside `pod`.
pub async fn wait_listening(pod: &Pod, port: u16) -> anyhow::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pod.connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} in pod {}", pod.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Peak and current resident memory of a process, in KiB.
pub fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} missing in /proc/{pid}/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// Environment for a proxy, from pairs.
pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
