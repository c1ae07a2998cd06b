//! Shared setup for the end-to-end tests: a client pod and a server pod,
//! each with a real proxy, the server running the demo workloads.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_testbed::identity::{Controller, ControllerOptions, spiffe_id};
use weft_testbed::{Mesh, Pod, ProxyOptions};

pub const HTTP_PORT: u16 = 8080;
pub const GRPC_PORT: u16 = 50051;
/// MySQL's port: on the proxy's default opaque list.
pub const BANNER_OPAQUE_PORT: u16 = 3306;
/// Not on any list: detection has to time out.
pub const BANNER_PLAIN_PORT: u16 = 2525;

pub struct Pair {
    pub mesh: Mesh,
    pub client: Pod,
    pub server: Pod,
    pub client_proxy: u32,
    pub server_proxy: u32,
}

impl Pair {
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from((self.server.ip, HTTP_PORT))
    }
}

/// Builds the pair; `proxy_env` goes to both proxies.
pub async fn pair(label: &str, proxy_env: &[(&str, &str)]) -> Pair {
    let mesh = Mesh::new(label).expect("mesh");
    let client = mesh.add_pod("client", None).expect("client pod");
    let server = mesh.add_pod("server", None).expect("server pod");
    start_server_apps(&mesh, &server).await;
    let options = ProxyOptions {
        env: weft_testbed::env(proxy_env),
        ..Default::default()
    };
    let client_proxy = mesh
        .spawn_proxy(&client, options.clone())
        .await
        .expect("client proxy");
    let server_proxy = mesh
        .spawn_proxy(&server, options)
        .await
        .expect("server proxy");
    Pair {
        mesh,
        client,
        server,
        client_proxy,
        server_proxy,
    }
}

/// A meshed pair with identities: a controller on the node, the client
/// running as `demo/client`, the server as `demo/server`, and the client
/// proxy told that the server pod is meshed.
pub struct MeshedPair {
    pub pair: Pair,
    pub controller: Controller,
    /// What the client proxy was started with (to start it again).
    pub client_env: Vec<(String, String)>,
}

pub const NAMESPACE: &str = "demo";

pub fn client_id() -> String {
    spiffe_id(NAMESPACE, "client")
}

pub fn server_id() -> String {
    spiffe_id(NAMESPACE, "server")
}

/// Builds a meshed pair. `server_env` goes to the server proxy only.
pub async fn meshed_pair(
    label: &str,
    controller: ControllerOptions,
    server_env: &[(&str, &str)],
) -> MeshedPair {
    let mesh = Mesh::new(label).expect("mesh");
    let client = mesh.add_pod("client", None).expect("client pod");
    let server = mesh.add_pod("server", None).expect("server pod");
    let ca = mesh.make_ca("ca").expect("CA");
    let controller = mesh
        .start_controller(&ca, controller)
        .await
        .expect("controller");
    start_server_apps(&mesh, &server).await;
    let mut client_env = mesh
        .identity_env(&controller, &client, NAMESPACE, "client")
        .expect("client identity");
    client_env.push((
        "WEFT_MESH_ENDPOINTS".into(),
        format!("{}={}", server.ip, server_id()),
    ));
    let mut env = mesh
        .identity_env(&controller, &server, NAMESPACE, "server")
        .expect("server identity");
    // Without pods in discovery, the server knows its meshed client this
    // way (it waits for its ClientHello on server-speaks-first ports).
    env.push((
        "WEFT_MESH_ENDPOINTS".into(),
        format!("{}={}", client.ip, client_id()),
    ));
    env.extend(weft_testbed::env(server_env));
    let client_proxy = mesh
        .spawn_proxy(
            &client,
            ProxyOptions {
                env: client_env.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("client proxy");
    let server_proxy = mesh
        .spawn_proxy(
            &server,
            ProxyOptions {
                env,
                ..Default::default()
            },
        )
        .await
        .expect("server proxy");
    MeshedPair {
        pair: Pair {
            mesh,
            client,
            server,
            client_proxy,
            server_proxy,
        },
        controller,
        client_env,
    }
}

async fn start_server_apps(mesh: &Mesh, server: &Pod) {
    mesh.spawn_demo(server, "http", HTTP_PORT, "server")
        .await
        .expect("http app");
    mesh.spawn_demo(server, "grpc", GRPC_PORT, "server")
        .await
        .expect("grpc app");
    mesh.spawn_demo(server, "banner", BANNER_OPAQUE_PORT, "server")
        .await
        .expect("banner app");
    mesh.spawn_demo(server, "banner", BANNER_PLAIN_PORT, "server")
        .await
        .expect("banner app");
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub ok: u64,
    pub failed: Vec<String>,
}

impl LoadStats {
    fn merge(&mut self, other: LoadStats) {
        self.ok += other.ok;
        self.failed.extend(other.failed);
    }
}

/// Continuous traffic from the client pod to the server pod until
/// `duration` has passed: HTTP/1 keep-alive workers (50 requests per
/// connection) and banner workers that open a new connection, and so a new
/// mTLS handshake, for every exchange.
pub async fn run_load(p: &Pair, duration: Duration) -> LoadStats {
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (pod, addr) = (p.client.clone(), p.http_addr());
        tasks.spawn(async move { http_worker(pod, addr, deadline).await });
    }
    for _ in 0..2 {
        let pod = p.client.clone();
        let addr = SocketAddr::from((p.server.ip, BANNER_OPAQUE_PORT));
        tasks.spawn(async move { banner_worker(pod, addr, deadline).await });
    }
    let mut stats = LoadStats::default();
    while let Some(result) = tasks.join_next().await {
        stats.merge(result.expect("load worker panicked"));
    }
    stats
}

async fn http_worker(pod: Pod, addr: SocketAddr, deadline: Instant) -> LoadStats {
    use http_body_util::BodyExt;
    let mut stats = LoadStats::default();
    while Instant::now() < deadline {
        let stream = match pod.connect(addr).await {
            Ok(stream) => stream,
            Err(error) => {
                stats.failed.push(format!("connect: {error}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
        else {
            stats.failed.push("client handshake".into());
            continue;
        };
        tokio::spawn(conn);
        for _ in 0..50 {
            if Instant::now() >= deadline {
                break;
            }
            let req = http::Request::builder()
                .uri("/")
                .header(http::header::HOST, addr.to_string())
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            match sender.send_request(req).await {
                Ok(resp) if resp.status() == 200 => match resp.into_body().collect().await {
                    Ok(_) => stats.ok += 1,
                    Err(error) => stats.failed.push(format!("body: {error}")),
                },
                Ok(resp) => {
                    stats.failed.push(format!(
                        "status {} ({:?})",
                        resp.status(),
                        resp.headers().get("weft-proxy-error")
                    ));
                }
                Err(error) => {
                    stats.failed.push(format!("request: {error}"));
                    break;
                }
            }
        }
    }
    stats
}

async fn banner_worker(pod: Pod, addr: SocketAddr, deadline: Instant) -> LoadStats {
    let mut stats = LoadStats::default();
    while Instant::now() < deadline {
        match banner_once(&pod, addr).await {
            Ok(()) => stats.ok += 1,
            Err(error) => stats.failed.push(format!("banner: {error:#}")),
        }
    }
    stats
}

/// Greeting, one echo and QUIT over a fresh connection.
pub async fn banner_once(pod: &Pod, addr: SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = pod.connect(addr).await?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut next = async || -> anyhow::Result<String> {
        tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await??
            .ok_or_else(|| anyhow::anyhow!("connection closed"))
    };
    anyhow::ensure!(next().await? == "220 server ready", "bad greeting");
    write.write_all(b"hello\r\n").await?;
    anyhow::ensure!(next().await? == "echo: hello", "bad echo");
    write.write_all(b"QUIT\r\n").await?;
    anyhow::ensure!(next().await? == "221 bye", "bad goodbye");
    Ok(())
}
