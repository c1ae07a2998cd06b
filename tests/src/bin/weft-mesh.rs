//! `weft-mesh`: the mesh on one machine.
//!
//! - `weft-mesh demo [--keep] [--prometheus]`: builds a node with a client
//!   pod and two versions of a web workload behind a TrafficSplit, sends
//!   HTTP/1.1, gRPC, WebSocket and server-speaks-first TCP traffic through
//!   the split, and shows the proxies' metrics proving they carried it.
//!   `--keep` leaves it running (with steady traffic) until Ctrl-C;
//!   `--prometheus` also starts Prometheus on the node, reachable at
//!   `127.0.0.1:9090`.
//! - `weft-mesh bench [--duration SECS]`: wrk through two Weft proxies,
//!   directly, and through an HAProxy pair, in the same run.
//!
//! Everything it creates is removed on exit, on failure and on Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use weft_testbed::identity::spiffe_id;
use weft_testbed::{Mesh, Pod, ProxyOptions, http_request, nodes, sh};

/// The mesh on one machine: network namespaces as nodes and pods, wired
/// by Debian's CNI plugins and weft-cni, with real proxies and a real
/// controller. Needs root.
#[derive(Debug, clap::Parser)]
#[command(name = "weft-mesh", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Builds two nodes with a client pod and two versions of a web
    /// workload behind a TrafficSplit, sends HTTP/1.1, gRPC, WebSocket and
    /// server-speaks-first TCP through it, and shows the metrics (the
    /// default).
    ///
    /// Example: weft-mesh demo --keep --prometheus
    Demo {
        /// Leave it running, with steady traffic, until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Also start Prometheus on the node, at 127.0.0.1:9090.
        #[arg(long)]
        prometheus: bool,
    },
    /// wrk through two Weft proxies, directly, and through an HAProxy
    /// pair, in the same run; then bulk downloads over HTTP/1.1 and h2c.
    ///
    /// Example: weft-mesh bench --duration 30
    Bench {
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Only the bulk downloads (no wrk runs).
        #[arg(long)]
        bulk_only: bool,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = <Cli as clap::Parser>::parse();
    let run = async {
        match cli.command.unwrap_or(Command::Demo {
            keep: false,
            prometheus: false,
        }) {
            Command::Demo { keep, prometheus } => demo(keep, prometheus).await,
            Command::Bench {
                duration,
                bulk_only,
            } => bench(Duration::from_secs(duration), bulk_only).await,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = run => result,
        _ = tokio::signal::ctrl_c() => { eprintln!("\ninterrupted; cleaning up"); Ok(()) }
        _ = term.recv() => { eprintln!("terminated; cleaning up"); Ok(()) }
    }
}

fn heading(text: &str) {
    println!("\n== {text} ==");
}

async fn demo(keep: bool, prometheus: bool) -> anyhow::Result<()> {
    use weft_testbed::demo::{self, Demo, DemoOptions};
    heading("mesh on one machine");
    let d = Demo::start("demo", DemoOptions::default()).await?;
    let mesh = &d.mesh;
    let second = mesh.second.as_ref().context("the demo has two nodes")?;
    for (index, netns) in [(0u8, &mesh.node_netns), (1, &second.netns)] {
        println!(
            "node{index} netns {netns} (bridge weft0 {}, pods {}, underlay {}, no route out)",
            nodes::gateway(index),
            nodes::pod_subnet(index),
            nodes::underlay_address(index),
        );
    }
    println!(
        "      each node routes the other's pod subnet via its underlay address (host-gw, no NAT)"
    );
    for (pod, workload, _) in &d.proxies {
        let node = if pod.ip.octets()[2] == 0 { 0 } else { 1 };
        println!(
            "pod   {:<7} node{node} netns {}  ip {}  workload {workload}",
            pod.name, pod.netns, pod.ip
        );
    }
    println!(
        "ctl   weft-controller on the node at {}: certificates, and discovery from files",
        d.controller.addr()
    );
    println!(
        "svc   web {} (apex), web-v1 {}, web-v2 {}: HTTP :{} -> :{}, gRPC :{}, server-speaks-first TCP :{}",
        demo::WEB_IP,
        demo::WEB_V1_IP,
        demo::WEB_V2_IP,
        demo::HTTP_PORT,
        demo::HTTP_TARGET_PORT,
        demo::GRPC_PORT,
        demo::TCP_PORT
    );
    println!(
        "split TrafficSplit web-rollout: web -> {}",
        demo::SPLIT
            .iter()
            .map(|(s, w)| format!("{s} {w}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "ids   client proxy is {}, web proxies are {}; each got its certificate from the controller",
        spiffe_id("demo", "client"),
        spiffe_id("demo", "web")
    );
    heading("redirect rules weft-cni installed in the client pod");
    print!(
        "{}",
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &d.client.netns,
                "nft",
                "list",
                "table",
                "inet",
                "weft"
            ]
        )?
    );

    heading("traffic from client to the web service (the apps know nothing of the proxies)");
    let client = &d.client;
    let http = d.http_addr();
    let (mut ok, mut v1, mut v2) = (0, 0, 0);
    for _ in 0..10 {
        let (status, body) = http_request(client, http, "GET", "/").await?;
        if status == 200 {
            ok += 1;
            match body.as_str() {
                "hello from web-v1\n" => v1 += 1,
                "hello from web-v2\n" => v2 += 1,
                _ => {}
            }
        }
    }
    println!(
        "HTTP/1.1   GET http://{http}/  x10: {ok}/10 answered 200 (web-v1 {v1}, web-v2 {v2}; the split is 80/20)"
    );
    let grpc = grpc_demo(client, d.grpc_addr()).await?;
    println!("gRPC/HTTP2 Say + Repeat(5): {grpc}");
    let ws = websocket_demo(client, http).await?;
    println!("WebSocket  /ws echo: {ws}");
    let banner = banner_demo(client, d.tcp_addr()).await?;
    println!(
        "TCP        :{} (opaque, server speaks first): {banner}",
        demo::TCP_PORT
    );

    println!("by name, through the mesh's CoreDNS (search demo.svc.cluster.local):");
    for name in ["web", "web.demo", "web.demo.svc.cluster.local"] {
        let answer = d.client_app(&["get", &format!("{name}:{}", demo::HTTP_PORT), "/"])?;
        println!("  GET http://{name}/ -> {}", answer.trim());
    }
    let talk = d.client_app(&["talk", &format!("web:{}", demo::TCP_PORT), "hi"])?;
    println!(
        "  TCP web:{} -> {}",
        demo::TCP_PORT,
        talk.trim().replace('\n', " | ")
    );

    heading("what the proxies counted (tls=\"true\": mutual TLS between the proxies)");
    let m = client.metrics().await?;
    let outbound = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("direction", "outbound"), ("tls", "true")];
        labels.extend_from_slice(extra);
        m.sum(name, &labels) + 0.0
    };
    println!("client proxy (outbound):");
    for backend in ["web-v1", "web-v2"] {
        println!(
            "  request_total{{direction=\"outbound\",authority=\"web.demo.svc.cluster.local:80\",tls=\"true\",dst_service=\"{backend}\"}} {}",
            outbound(
                "request_total",
                &[
                    ("authority", "web.demo.svc.cluster.local:80"),
                    ("dst_service", backend)
                ]
            )
        );
    }
    println!(
        "  request_total{{direction=\"outbound\",tls=\"true\",server_id=\"{}\"}} {}",
        spiffe_id("demo", "web"),
        outbound("request_total", &[("server_id", &spiffe_id("demo", "web"))])
    );
    println!(
        "  response_total{{direction=\"outbound\",tls=\"true\",grpc_status=\"0\"}} {}",
        outbound("response_total", &[("grpc_status", "0")])
    );
    println!(
        "  tcp_open_total{{direction=\"outbound\",peer=\"dst\",tls=\"true\",dst_service=\"web-v1\"}} {}",
        outbound(
            "tcp_open_total",
            &[("peer", "dst"), ("dst_service", "web-v1")]
        )
    );
    for protocol in ["http1", "http2", "opaque_port"] {
        println!(
            "  protocol_detect_total{{direction=\"outbound\",protocol=\"{protocol}\"}} {}",
            m.sum(
                "protocol_detect_total",
                &[("direction", "outbound"), ("protocol", protocol)]
            ) + 0.0
        );
    }
    let client_id = spiffe_id("demo", "client");
    let mut inbound = 0.0;
    for pod in [&d.web_v1, &d.web_v2] {
        inbound += pod.metrics().await?.sum(
            "request_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", &client_id),
            ],
        );
    }
    println!(
        "web proxies (inbound): request_total{{direction=\"inbound\",tls=\"true\",client_id=\"{client_id}\"}} {inbound}"
    );
    println!(
        "\nfull metrics: ip netns exec {} curl -s localhost:6191/metrics",
        client.netns
    );
    heading("what crossed the underlay between the nodes (tcpdump on node0's end)");
    let underlay = d.underlay_report().await?;
    for stream in underlay.streams.iter().take(6) {
        println!(
            "  {} -> {}  {} bytes, {}",
            stream.from,
            stream.to,
            stream.bytes.len(),
            match weft_testbed::wire::tls_records(&stream.bytes) {
                Ok(n) => format!("{n} TLS records"),
                Err(e) => format!("NOT TLS: {e}"),
            }
        );
    }
    let not_tls = underlay.not_tls();
    if underlay.streams.is_empty() || !not_tls.is_empty() {
        bail!(
            "the underlay carried {} pod-to-pod streams, not TLS: {not_tls:?}",
            underlay.streams.len()
        );
    }
    println!(
        "underlay: {} TCP streams between pods, {} bytes, all TLS from their first byte",
        underlay.streams.len(),
        underlay.bytes()
    );
    if ok != 10 || !grpc.starts_with("ok") || !ws.starts_with("ok") || !banner.starts_with("ok") {
        bail!("some traffic failed; logs are in {}", mesh.dir.display());
    }
    let _prometheus = if prometheus {
        let p = d.start_prometheus().await?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", demo::PROMETHEUS_ADDR.port()))
            .await
            .context("127.0.0.1:9090 is taken; is another Prometheus running?")?;
        tokio::spawn(forward_into(listener, mesh.node(), demo::PROMETHEUS_ADDR));
        heading("Prometheus");
        println!(
            "Prometheus (built from its Go module) runs on node0 with examples/prometheus/local.yml, scraping the three proxies and the controller every 5 s"
        );
        println!("open http://127.0.0.1:9090 (forwarded into the node)");
        println!(
            "Grafana: add a Prometheus data source with URL http://127.0.0.1:9090, then import examples/grafana/*.json"
        );
        Some(p)
    } else {
        None
    };
    if keep {
        // Steady traffic, so that rates and dashboards have something to show.
        tokio::spawn(background_load(d.client.clone(), http, d.grpc_addr()));
        println!(
            "\nrunning; try: ip netns exec {} curl -s http://{http}/ ; Ctrl-C to tear down",
            client.netns
        );
        std::future::pending::<()>().await;
    }
    heading("tearing down (namespaces, bridge, processes)");
    Ok(())
}

/// A few HTTP and gRPC requests a second from the client pod.
async fn background_load(client: Pod, http: SocketAddr, grpc: SocketAddr) {
    loop {
        for _ in 0..4 {
            let _ = http_request(&client, http, "GET", "/").await;
        }
        let _ = grpc_demo(&client, grpc).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Forwards connections from a host listener to `addr` inside `netns`.
async fn forward_into(listener: tokio::net::TcpListener, netns: Pod, addr: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let netns = netns.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = netns.connect(addr).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

async fn grpc_demo(client: &Pod, addr: SocketAddr) -> anyhow::Result<String> {
    use weft_demo::proto::EchoRequest;
    use weft_demo::proto::echo_client::EchoClient;
    let channel = client.grpc_channel(addr).await?;
    let mut grpc = EchoClient::new(channel);
    let reply = grpc
        .say(EchoRequest {
            message: "hi".into(),
            count: 0,
        })
        .await?
        .into_inner();
    let mut stream = grpc
        .repeat(EchoRequest {
            message: "tick".into(),
            count: 5,
        })
        .await?
        .into_inner();
    let mut n = 0;
    while stream.message().await?.is_some() {
        n += 1;
    }
    Ok(format!(
        "ok, reply from {:?}, {n} streamed replies",
        reply.served_by
    ))
}

async fn websocket_demo(client: &Pod, addr: SocketAddr) -> anyhow::Result<String> {
    use futures_util::{SinkExt, StreamExt};
    let stream = client.connect(addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream).await?;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        "hello over websocket",
    ))
    .await?;
    let echoed = ws.next().await.context("no echo")??;
    ws.close(None).await.ok();
    Ok(format!("ok, echoed {:?}", echoed.into_text()?.as_str()))
}

async fn banner_demo(client: &Pod, addr: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let started = std::time::Instant::now();
    let stream = client.connect(addr).await?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let greeting = lines.next_line().await?.context("no greeting")?;
    let waited = started.elapsed();
    write.write_all(b"QUIT\r\n").await?;
    Ok(format!(
        "ok, greeting {greeting:?} after {} ms",
        waited.as_millis()
    ))
}

/// One wrk run's figures.
#[derive(Debug, Default, Clone)]
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn parse_latency_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => num / 1000.0,
        "ms" => num,
        "s" => num * 1000.0,
        "m" => num * 60_000.0,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> anyhow::Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in out.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => r.rps = v.parse()?,
            (Some("50.000%" | "50%"), Some(v)) => r.p50_ms = parse_latency_ms(v).context("p50")?,
            (Some("99.000%" | "99%"), Some(v)) => r.p99_ms = parse_latency_ms(v).context("p99")?,
            (Some("Non-2xx"), _) | (Some("Socket"), _) => {
                r.errors += line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    if r.rps == 0.0 {
        bail!("wrk printed no result:\n{out}");
    }
    Ok(r)
}

async fn wrk(
    mesh: &Mesh,
    client: &Pod,
    url: &str,
    connections: u32,
    duration: Duration,
    label: &str,
) -> anyhow::Result<WrkResult> {
    let log_label = format!("wrk-{label}-{connections}");
    let args = [
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{}s", duration.as_secs()),
        "--latency",
        url,
    ];
    let pid = mesh.spawn_as(
        client,
        &log_label,
        None,
        Some(1),
        std::path::Path::new("/usr/bin/wrk"),
        &args,
        &[],
    )?;
    mesh.wait_exit(pid, duration + Duration::from_secs(30))
        .await?;
    parse_wrk(&mesh.log_of(client, &log_label))
}

/// Downloads `bytes` from the demo app's `/download` with curl, over
/// HTTP/1.1 or h2c (prior knowledge); returns MiB/s.
async fn bulk(
    mesh: &Mesh,
    client: &Pod,
    base: &str,
    h2c: bool,
    bytes: u64,
    label: &str,
) -> anyhow::Result<f64> {
    let log_label = format!("curl-{label}-{}", if h2c { "h2c" } else { "http1" });
    let url = format!("{base}download?bytes={bytes}");
    let protocol = if h2c {
        "--http2-prior-knowledge"
    } else {
        "--http1.1"
    };
    let args = [
        "-sS",
        protocol,
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{speed_download}\n",
        &url,
    ];
    let pid = mesh.spawn_as(
        client,
        &log_label,
        None,
        Some(1),
        std::path::Path::new("/usr/bin/curl"),
        &args,
        &[],
    )?;
    mesh.wait_exit(pid, Duration::from_secs(120)).await?;
    let log = mesh.log_of(client, &log_label);
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let mut fields = last.split_whitespace();
    let size: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let speed: f64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    if size != bytes {
        bail!("{label}: curl got {size} of {bytes} bytes:\n{log}");
    }
    Ok(speed / (1024.0 * 1024.0))
}

/// The cluster IP of the benchmark's load-balanced service.
const LB_SERVICE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 50);

/// Discovery objects for the service `lb` in namespace `bench`: port 80 to
/// the demo app's 8080 on each of `pods`, all meshed as `bench/server`.
fn lb_service(pods: &[&Pod]) -> String {
    use weft_testbed::objects;
    let ports = [("http", 80, 8080)];
    let endpoints: Vec<objects::SliceEndpoint> =
        pods.iter().map(|p| (p.name.as_str(), p.ip, true)).collect();
    let mut docs = vec![
        objects::service("bench", "lb", LB_SERVICE_IP, &ports, &json!({})),
        objects::endpoint_slice("bench", "lb", &ports, &endpoints),
    ];
    for p in pods {
        docs.push(objects::meshed_pod("bench", &p.name, p.ip, "server", "lb"));
    }
    objects::file(&docs)
}

async fn bench(duration: Duration, bulk_only: bool) -> anyhow::Result<()> {
    if !std::path::Path::new("/usr/bin/wrk").exists()
        || !std::path::Path::new("/usr/sbin/haproxy").exists()
    {
        bail!("the benchmark needs wrk and haproxy (apt-get install wrk haproxy)");
    }
    let mesh = Mesh::new("bench")?;
    // Port 8080 goes through both Weft proxies; 8081 is the direct path
    // (skipped by both pods' rules); 8082 is the HAProxy pair's hop and
    // 8083 the HAProxy mTLS pair's.
    let skips =
        json!({ "skipOutboundPorts": [8081, 8082, 8083], "skipInboundPorts": [8081, 8082, 8083] });
    let client = mesh.add_pod("client", Some(skips.clone()))?;
    let server = mesh.add_pod("server", Some(skips.clone()))?;
    // A second pair of pods whose proxies have identities and mTLS.
    let mclient = mesh.add_pod("mclient", Some(skips.clone()))?;
    let mserver = mesh.add_pod("mserver", Some(skips.clone()))?;
    // Two more meshed servers: with mserver, the three endpoints of the
    // load-balanced service `lb` (cluster IP below), found by discovery.
    let lb1 = mesh.add_pod("lb1", Some(skips.clone()))?;
    let lb2 = mesh.add_pod("lb2", Some(skips))?;
    for (pod, port) in [
        (&server, 8080),
        (&server, 8081),
        (&mserver, 8080),
        (&mserver, 8081),
        (&lb1, 8080),
        (&lb2, 8080),
    ] {
        let pid = mesh.spawn_demo(pod, "http", port, "server").await?;
        sh("taskset", &["-pc", "1", &pid.to_string()])?;
    }
    let base_env = [("WEFT_PROXY_CORES", "1"), ("WEFT_LOG_LEVEL", "warn")];
    let options = ProxyOptions {
        env: weft_testbed::env(&base_env),
        cpu: Some(0),
        ..Default::default()
    };
    let client_proxy = mesh.spawn_proxy(&client, options.clone()).await?;
    let server_proxy = mesh.spawn_proxy(&server, options).await?;

    let ca = mesh.make_ca("ca")?;
    mesh.publish("bench", &lb_service(&[&mserver, &lb1, &lb2]))?;
    mesh.publish("bench", &lb_service(&[&mserver, &lb1, &lb2]))?;
    let controller = mesh
        .start_controller(&ca, weft_testbed::identity::ControllerOptions::default())
        .await?;
    sh("taskset", &["-pc", "1", &controller.pid.to_string()])?;
    let mut mclient_env = mesh.identity_env(&controller, &mclient, "bench", "client")?;
    mclient_env.push((
        "WEFT_MESH_ENDPOINTS".into(),
        format!("{}={}", mserver.ip, spiffe_id("bench", "server")),
    ));
    mclient_env.extend(weft_testbed::env(&base_env));
    let mut mserver_env = mesh.identity_env(&controller, &mserver, "bench", "server")?;
    mserver_env.extend(weft_testbed::env(&base_env));
    let mclient_proxy = mesh
        .spawn_proxy(
            &mclient,
            ProxyOptions {
                env: mclient_env,
                cpu: Some(0),
                ..Default::default()
            },
        )
        .await?;
    let mserver_proxy = mesh
        .spawn_proxy(
            &mserver,
            ProxyOptions {
                env: mserver_env,
                cpu: Some(0),
                ..Default::default()
            },
        )
        .await?;

    let mut lb_proxies = Vec::new();
    for pod in [&lb1, &lb2] {
        let mut env = mesh.identity_env(&controller, pod, "bench", "server")?;
        env.extend(weft_testbed::env(&base_env));
        let pid = mesh
            .spawn_proxy(
                pod,
                ProxyOptions {
                    env,
                    cpu: Some(0),
                    ..Default::default()
                },
            )
            .await?;
        lb_proxies.push((format!("weft lb server proxy {}", pod.name), pid));
    }

    let haproxy_cfg = |listen: &str, upstream: &str| {
        format!(
            "global\n  maxconn 4096\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\nfrontend f\n  bind {listen}\n  default_backend b\nbackend b\n  server s1 {upstream}\n"
        )
    };
    // The HAProxy mTLS pair gets certificates from the same issuer as Weft
    // and verifies the peer's chain to the same anchor.
    let anchors = ca.anchors().to_string_lossy().into_owned();
    let mut pems = Vec::new();
    for (sa, file) in [
        ("ha-client", "haproxy-client.pem"),
        ("ha-server", "haproxy-server.pem"),
    ] {
        let out = mesh.dir.join(file);
        sh(
            &mesh.bins.path("weft-controller").to_string_lossy(),
            &[
                "issue",
                "--dir",
                &ca.dir.to_string_lossy(),
                "--identity",
                &spiffe_id("bench", sa),
                "--out",
                &out.to_string_lossy(),
            ],
        )?;
        pems.push(out.to_string_lossy().into_owned());
    }
    let configs = [
        (
            &client,
            "haproxy",
            haproxy_cfg("127.0.0.1:9000", &format!("{}:8082", server.ip)),
        ),
        (
            &server,
            "haproxy",
            haproxy_cfg("0.0.0.0:8082", "127.0.0.1:8081"),
        ),
        (
            &mclient,
            "haproxy-mtls",
            haproxy_cfg(
                "127.0.0.1:9001",
                &format!(
                    "{}:8083 ssl crt {} ca-file {anchors} verify required",
                    mserver.ip, pems[0]
                ),
            ),
        ),
        (
            &mserver,
            "haproxy-mtls",
            haproxy_cfg(
                &format!(
                    "0.0.0.0:8083 ssl crt {} ca-file {anchors} verify required",
                    pems[1]
                ),
                "127.0.0.1:8081",
            ),
        ),
    ];
    let haproxy = std::path::Path::new("/usr/sbin/haproxy");
    let mut haproxies = Vec::new();
    for (pod, label, cfg) in configs {
        let path = mesh.dir.join(format!("{}-{label}.cfg", pod.name));
        std::fs::write(&path, cfg)?;
        let pid = mesh.spawn_as(
            pod,
            label,
            None,
            Some(0),
            haproxy,
            &["-db", "-f", &path.to_string_lossy()],
            &[],
        )?;
        haproxies.push((format!("{label} {}", pod.name), pid));
    }
    weft_testbed::wait_listening(&client, 9000).await?;
    weft_testbed::wait_listening(&server, 8082).await?;
    weft_testbed::wait_listening(&mclient, 9001).await?;
    weft_testbed::wait_listening(&mserver, 8083).await?;

    let paths = [
        ("direct", &client, format!("http://{}:8081/", server.ip)),
        ("weft", &client, format!("http://{}:8080/", server.ip)),
        ("haproxy", &client, "http://127.0.0.1:9000/".to_string()),
        (
            "weft-mtls",
            &mclient,
            format!("http://{}:8080/", mserver.ip),
        ),
        ("ha-mtls", &mclient, "http://127.0.0.1:9001/".to_string()),
        ("weft-lb3", &mclient, format!("http://{LB_SERVICE_IP}:80/")),
    ];
    println!(
        "wrk on CPU 1 with the server app; each pair of proxies on CPU 0; {}s per run",
        duration.as_secs()
    );
    println!(
        "{:<10} {:>5} {:>12} {:>10} {:>10} {:>8}",
        "path", "conns", "req/s", "p50 ms", "p99 ms", "errors"
    );
    let mut table = Vec::new();
    for connections in [1, 50].into_iter().filter(|_| !bulk_only) {
        for (label, pod, url) in &paths {
            // Warm pools and caches so every path starts alike.
            wrk(
                &mesh,
                pod,
                url,
                connections,
                Duration::from_secs(1),
                &format!("{label}-warm"),
            )
            .await?;
            let r = wrk(&mesh, pod, url, connections, duration, label).await?;
            println!(
                "{label:<10} {connections:>5} {:>12.0} {:>10.3} {:>10.3} {:>8}",
                r.rps, r.p50_ms, r.p99_ms, r.errors
            );
            table.push((*label, connections, r));
        }
    }
    println!("\nratios to direct (same run):");
    for connections in [1, 50].into_iter().filter(|_| !bulk_only) {
        let get = |l: &str| {
            table
                .iter()
                .find(|(label, c, _)| *label == l && *c == connections)
                .map(|(_, _, r)| r.clone())
                .unwrap_or_default()
        };
        let direct = get("direct");
        for label in ["weft", "haproxy", "weft-mtls", "ha-mtls", "weft-lb3"] {
            let r = get(label);
            println!(
                "  {label:<10} c={connections:<3} throughput {:.2}x  p50 +{:.3} ms  p99 +{:.3} ms",
                r.rps / direct.rps,
                r.p50_ms - direct.p50_ms,
                r.p99_ms - direct.p99_ms
            );
        }
        let (mtls, ha_http, ha_mtls) = (get("weft-mtls"), get("haproxy"), get("ha-mtls"));
        println!(
            "  weft-mtls vs haproxy (plain HTTP) c={connections}: {:.2}x req/s; vs ha-mtls: {:.2}x req/s, added p50 {:.3} ms vs {:.3} ms",
            mtls.rps / ha_http.rps,
            mtls.rps / ha_mtls.rps,
            mtls.p50_ms - direct.p50_ms,
            ha_mtls.p50_ms - direct.p50_ms
        );
    }
    // Bulk downloads: one stream, HTTP/1.1 against h2c, median of three.
    // 512 MiB, less for short (smoke) runs.
    let bulk_bytes: u64 = (duration.as_secs().clamp(1, 8) * 64) << 20;
    println!(
        "\nbulk download of {} MiB with curl (median of 3, MiB/s):",
        bulk_bytes >> 20
    );
    println!("{:<10} {:>10} {:>10}", "path", "http/1.1", "h2c");
    let mut direct_bulk = (0.0, 0.0);
    for (label, pod, url) in paths
        .iter()
        .filter(|(l, _, _)| ["direct", "weft", "weft-mtls"].contains(l))
    {
        let mut speeds = [0.0f64; 2];
        for (i, h2c) in [false, true].into_iter().enumerate() {
            let mut runs = Vec::new();
            for _ in 0..3 {
                runs.push(bulk(&mesh, pod, url, h2c, bulk_bytes, label).await?);
            }
            runs.sort_by(f64::total_cmp);
            speeds[i] = runs[1];
        }
        if *label == "direct" {
            direct_bulk = (speeds[0], speeds[1]);
        }
        println!(
            "{label:<10} {:>10.0} {:>10.0}   ({:.2}x / {:.2}x of direct)",
            speeds[0],
            speeds[1],
            speeds[0] / direct_bulk.0,
            speeds[1] / direct_bulk.1
        );
    }

    let opened = client.metrics().await?.sum(
        "tcp_open_total",
        &[("direction", "outbound"), ("peer", "dst")],
    );
    let requests = client
        .metrics()
        .await?
        .sum("request_total", &[("direction", "outbound")]);
    println!("\nweft client proxy opened {opened} upstream connections for {requests} requests");
    println!("\npeak RSS (VmHWM):");
    let mut processes = vec![
        ("weft client proxy".to_string(), client_proxy),
        ("weft server proxy".to_string(), server_proxy),
        ("weft mTLS client proxy".to_string(), mclient_proxy),
        ("weft mTLS server proxy".to_string(), mserver_proxy),
    ];
    processes.extend(lb_proxies);
    processes.extend(haproxies);
    for (who, pid) in processes {
        let (peak, now) = weft_testbed::memory_kib(pid)?;
        println!(
            "  {who:<24} {:>7.1} MiB peak, {:>7.1} MiB now",
            peak as f64 / 1024.0,
            now as f64 / 1024.0
        );
    }
    Ok(())
}
