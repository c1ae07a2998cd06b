//! A meshed "cluster" on one node: a controller with the file discovery
//! source, a client pod, and server pods behind Services, with the
//! discovery objects (Services, EndpointSlices, Pods, a TrafficSplit)
//! written the way the Kubernetes API would hold them.
//!
//! Tests change the objects (weights, readiness, annotations) and call
//! [`Cluster::sync`], which rewrites the discovery file atomically and
//! waits until the client's proxy has received the change.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::identity::{Controller, ControllerOptions};
use crate::{Mesh, Pod, ProxyOptions, objects};

/// The namespace everything lives in.
pub const NAMESPACE: &str = "demo";
/// The service account (and so the identity) of every server pod.
pub const SERVER_ACCOUNT: &str = "web";
/// The port the server apps listen on (the Services' target port).
pub const APP_PORT: u16 = 8080;
/// The port the Services expose.
pub const SERVICE_PORT: u16 = 80;

/// A Service in discovery.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub annotations: BTreeMap<String, String>,
}

/// A server pod: its demo HTTP app and its proxy.
#[derive(Debug, Clone)]
pub struct Server {
    pub pod: Pod,
    /// The pod name, also the name the app answers with (`x-served-by`).
    pub name: String,
    /// The Service whose endpoints include it.
    pub service: String,
    /// Listed as ready in its EndpointSlice.
    pub ready: bool,
    pub proxy: u32,
    pub app: u32,
}

/// The whole discovery state the test controls.
#[derive(Debug, Default)]
struct State {
    services: Vec<ServiceSpec>,
    servers: Vec<Server>,
    /// `(apex, [(backend, weight)])`.
    split: Option<(String, Vec<(String, u32)>)>,
    /// Extra raw documents (for bad-input tests).
    extra: Vec<String>,
    /// Gateway API routes, as YAML, replaced whole by [`Cluster::routes`].
    routes: String,
}

#[derive(Debug)]
pub struct Cluster {
    pub mesh: Mesh,
    pub controller: Mutex<Controller>,
    pub client: Pod,
    pub client_proxy: u32,
    state: Mutex<State>,
}

impl Cluster {
    /// A node, a CA, a controller reading discovery files, and a client
    /// pod with its proxy (identity `demo/client`).
    pub async fn new(label: &str, options: ControllerOptions) -> anyhow::Result<Self> {
        let mesh = Mesh::new(label)?;
        let client = mesh.add_pod("client", None)?;
        let ca = mesh.make_ca("ca")?;
        mesh.discovery_dir()?;
        let controller = mesh.start_controller(&ca, options).await?;
        let env = mesh.identity_env(&controller, &client, NAMESPACE, "client")?;
        let client_proxy = mesh
            .spawn_proxy(
                &client,
                ProxyOptions {
                    env,
                    ..Default::default()
                },
            )
            .await?;
        Ok(Cluster {
            mesh,
            controller: Mutex::new(controller),
            client,
            client_proxy,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares a Service (not written until [`Cluster::sync`]).
    pub fn service(&self, name: &str, cluster_ip: Ipv4Addr, annotations: &[(&str, &str)]) {
        let spec = ServiceSpec {
            name: name.into(),
            cluster_ip,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut state = self.state();
        state.services.retain(|s| s.name != name);
        state.services.push(spec);
    }

    /// Sets (or with `None` removes) the TrafficSplit for `apex`.
    pub fn split(&self, apex: &str, backends: Option<&[(&str, u32)]>) {
        self.state().split = backends.map(|b| {
            (
                apex.to_string(),
                b.iter().map(|(s, w)| (s.to_string(), *w)).collect(),
            )
        });
    }

    /// Sets the Gateway API routes (YAML documents), replacing the last.
    pub fn routes(&self, docs: &str) {
        self.state().routes = docs.to_string();
    }

    /// A further client pod, with its proxy, whose identity (and so the
    /// namespace its proxy resolves in) is `<namespace>/client`.
    pub async fn add_client(&self, name: &str, namespace: &str) -> anyhow::Result<Pod> {
        let pod = self.mesh.add_pod(name, None)?;
        let controller = self.controller().clone();
        let env = self
            .mesh
            .identity_env(&controller, &pod, namespace, "client")?;
        self.mesh
            .spawn_proxy(
                &pod,
                ProxyOptions {
                    env,
                    ..Default::default()
                },
            )
            .await?;
        Ok(pod)
    }

    /// Adds raw YAML documents to the discovery file.
    pub fn extra_documents(&self, docs: &str) {
        self.state().extra.push(docs.to_string());
    }

    /// Starts a server pod for `service`: the demo HTTP app (with `app_env`,
    /// such as `DEMO_FAIL_STATUS`) and a proxy with identity `demo/web`.
    /// It is listed ready at the next sync.
    pub async fn add_server(
        &self,
        name: &str,
        service: &str,
        app_env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let pod = self.mesh.add_pod(name, None)?;
        let controller = self.controller().clone();
        let env = self
            .mesh
            .identity_env(&controller, &pod, NAMESPACE, SERVER_ACCOUNT)?;
        let app = self.mesh.spawn(
            &pod,
            &format!("http-{APP_PORT}"),
            &self.mesh.bins.path("weft-demo"),
            &["http", &format!("0.0.0.0:{APP_PORT}"), name],
            &crate::env(app_env),
        )?;
        crate::wait_listening(&pod, APP_PORT).await?;
        let proxy = self
            .mesh
            .spawn_proxy(
                &pod,
                ProxyOptions {
                    env,
                    ..Default::default()
                },
            )
            .await?;
        let server = Server {
            pod,
            name: name.into(),
            service: service.into(),
            ready: true,
            proxy,
            app,
        };
        self.state().servers.push(server.clone());
        Ok(server)
    }

    /// Marks a server not ready (it leaves its Service's endpoints at the
    /// next sync, but keeps running).
    pub fn set_ready(&self, name: &str, ready: bool) {
        for s in self.state().servers.iter_mut().filter(|s| s.name == name) {
            s.ready = ready;
        }
    }

    /// Forgets a server entirely (its pod object goes too).
    pub fn remove_server(&self, name: &str) {
        self.state().servers.retain(|s| s.name != name);
    }

    pub fn servers(&self) -> Vec<Server> {
        self.state().servers.clone()
    }

    pub fn controller(&self) -> std::sync::MutexGuard<'_, Controller> {
        self.controller.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The discovery documents for the current state.
    pub fn documents(&self) -> String {
        let state = self.state();
        let ports = [("http", SERVICE_PORT, APP_PORT)];
        let mut docs: Vec<Value> = Vec::new();
        for svc in &state.services {
            docs.push(objects::service(
                NAMESPACE,
                &svc.name,
                svc.cluster_ip,
                &ports,
                &json!(svc.annotations),
            ));
            let endpoints: Vec<objects::SliceEndpoint> = state
                .servers
                .iter()
                .filter(|s| s.service == svc.name)
                .map(|s| (s.name.as_str(), s.pod.ip, s.ready))
                .collect();
            docs.push(objects::endpoint_slice(
                NAMESPACE, &svc.name, &ports, &endpoints,
            ));
        }
        for s in &state.servers {
            docs.push(objects::meshed_pod(
                NAMESPACE,
                &s.name,
                s.pod.ip,
                SERVER_ACCOUNT,
                &s.service,
            ));
        }
        if let Some((apex, backends)) = &state.split {
            let backends: Vec<(&str, u32)> =
                backends.iter().map(|(s, w)| (s.as_str(), *w)).collect();
            docs.push(objects::traffic_split(
                NAMESPACE,
                &format!("{apex}-split"),
                apex,
                &backends,
            ));
        }
        // One document per object, then what the test added.
        let mut out = vec![objects::file(&docs)];
        out.extend(state.extra.iter().cloned());
        out.push(state.routes.clone());
        out.retain(|d| !d.is_empty());
        out.join("\n---\n")
    }
    /// Writes the discovery file and waits until the controller has loaded
    /// it. With `wait`, also waits until the client's proxy has received an
    /// update (only for changes to a destination the client already uses).
    pub async fn sync(&self, wait: bool) -> anyhow::Result<()> {
        let before = self.client_updates().await?;
        let changes = self.controller_changes().await?;
        self.mesh.publish("cluster", &self.documents())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.controller_changes().await? <= changes {
            if Instant::now() > deadline {
                bail!(
                    "the controller did not load the change within 10s\n{}",
                    self.mesh.controller_log(&self.controller().clone())
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !wait {
            return Ok(());
        }
        while self.client_updates().await? <= before {
            if Instant::now() > deadline {
                bail!(
                    "the client proxy got no discovery update within 10s\n{}",
                    self.mesh.log_of(&self.client, "proxy")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn controller_changes(&self) -> anyhow::Result<f64> {
        let controller = self.controller().clone();
        let scrape = self.mesh.controller_metrics(&controller).await?;
        Ok(scrape.sum("discovery_changes_total", &[]))
    }

    async fn client_updates(&self) -> anyhow::Result<f64> {
        let scrape = self.client.metrics().await?;
        Ok(scrape.sum("destination_updates_total", &[]))
    }

    /// Kills the controller (SIGKILL, as a node failure would) and returns
    /// once it is gone.
    pub async fn kill_controller(&self) -> anyhow::Result<()> {
        let pid = self.controller().pid;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        self.mesh.wait_exit(pid, Duration::from_secs(5)).await?;
        Ok(())
    }

    /// Starts the controller again with the same CA and ports.
    pub async fn restart_controller(&self) -> anyhow::Result<()> {
        let (ca, options) = {
            let c = self.controller();
            (c.ca.clone(), c.options.clone())
        };
        let controller = self
            .mesh
            .start_controller(&ca, options)
            .await
            .context("restarting the controller")?;
        *self.controller() = controller;
        Ok(())
    }
}

/// What a stream of requests saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: u64,
    /// Responses by the server that sent them (`x-served-by`).
    pub by_server: BTreeMap<String, u64>,
    /// Non-200 responses and errors, described.
    pub failed: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (k, v) in other.by_server {
            *self.by_server.entry(k).or_default() += v;
        }
        self.failed.extend(other.failed);
    }

    pub fn total(&self) -> u64 {
        self.ok + self.failed.len() as u64
    }

    /// The share of responses `prefix`-named servers sent.
    pub fn share(&self, prefix: &str) -> f64 {
        let n: u64 = self
            .by_server
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum();
        n as f64 / self.by_server.values().sum::<u64>().max(1) as f64
    }
}

/// Sends GET `path` to `addr` from `pod` over `concurrency` keep-alive
/// connections until `total` requests were sent or `stop` is set.
pub async fn load(
    pod: &Pod,
    addr: SocketAddr,
    path: &str,
    concurrency: usize,
    total: Option<u64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    use std::sync::atomic::{AtomicU64, Ordering};
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (pod, path, stop, sent) = (pod.clone(), path.to_string(), stop.clone(), sent.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let next = || {
                !stop.load(Ordering::Relaxed)
                    && total.is_none_or(|t| sent.fetch_add(1, Ordering::Relaxed) < t)
            };
            'connections: while next() {
                let stream = match pod.connect(addr).await {
                    Ok(s) => s,
                    Err(e) => {
                        tally.failed.push(format!("connect: {e}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                else {
                    tally.failed.push("client handshake".into());
                    continue;
                };
                tokio::spawn(conn);
                let mut first = true;
                loop {
                    if !first && !next() {
                        break 'connections;
                    }
                    first = false;
                    let req = http::Request::get(path.as_str())
                        .header(http::header::HOST, addr.to_string())
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .expect("request");
                    match sender.send_request(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            let server = resp
                                .headers()
                                .get("x-served-by")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("?")
                                .to_string();
                            let cause = resp
                                .headers()
                                .get(weft_proxy::http::PROXY_ERROR_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            use http_body_util::BodyExt;
                            match resp.into_body().collect().await {
                                Ok(_) if status == 200 => {
                                    tally.ok += 1;
                                    *tally.by_server.entry(server).or_default() += 1;
                                }
                                Ok(_) => tally
                                    .failed
                                    .push(format!("{status} from {server} ({cause:?})")),
                                Err(e) => tally.failed.push(format!("body: {e}")),
                            }
                        }
                        Err(e) => {
                            tally.failed.push(format!("request: {e}"));
                            continue 'connections;
                        }
                    }
                }
            }
            tally
        });
    }
    let mut tally = Tally::default();
    while let Some(t) = tasks.join_next().await {
        tally.merge(t.expect("load worker"));
    }
    tally
}
