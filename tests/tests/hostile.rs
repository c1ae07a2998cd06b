//! Hostile clients at a server pod's proxy: thousands of idle connections,
//! a slowloris on request heads, a client that never reads its response,
//! and more requests at once than the proxy takes; and at the controller,
//! an endless stream of garbage certificate requests. Each time a
//! well-behaved client keeps being served and memory stays flat.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

/// The memory limit the injector gives the proxy container.
const POD_LIMIT_KIB: u64 = 256 * 1024;

/// Runs `attack` while the client pod sends a request every 20 ms through
/// both proxies; every one of them must succeed. Returns how many did.
async fn while_served<F: std::future::Future<Output = ()>>(p: &Pair, attack: F) -> u32 {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU32::new(0));
    let (client, addr) = (p.client.clone(), p.http_addr());
    let good = tokio::spawn({
        let (stop, served) = (stop.clone(), served.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, _) = weft_testbed::http_request(&client, addr, "GET", "/")
                    .await
                    .expect("the well-behaved client's request failed");
                assert_eq!(status, 200);
                served.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    attack.await;
    stop.store(true, Ordering::Relaxed);
    good.await.unwrap();
    let served = served.load(Ordering::Relaxed);
    assert!(served > 0, "the well-behaved client was not served");
    served
}

/// Opens `n` connections from the node (an unmeshed client) to `addr`.
fn open_from_node(p: &Pair, addr: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    p.mesh.node().enter(|| {
        (0..n)
            .map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap())
            .collect()
    })
}

/// Waits for a metric sum to reach `want`.
async fn wait_for_sum(pod: &weft_testbed::Pod, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = pod.metrics().await.unwrap().sum(name, labels);
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} stayed at {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    weft_testbed::memory_kib(pid).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_from_one_client_leave_others_served() {
    // The defaults: 1000 connections per client address.
    let p = pair("idleflood", &[]).await;
    let before = rss_kib(p.server_proxy);
    let mut held = Vec::new();
    let served = while_served(&p, async {
        let addr = p.http_addr();
        held = open_from_node(&p, addr, 3000);
        wait_for_sum(
            &p.server,
            "tcp_limit_refused_total",
            &[("direction", "inbound"), ("limit", "client")],
            2000.0,
        )
        .await;
        // Past the detection timeout the proxy opens each silent
        // connection's upstream and waits for a first speaker.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    })
    .await;
    let m = p.server.metrics().await.unwrap();
    assert_eq!(
        m.sum(
            "tcp_limit_refused_total",
            &[("direction", "inbound"), ("limit", "client")]
        ),
        2000.0
    );
    assert_eq!(m.sum("tcp_limit_refused_total", &[("limit", "proxy")]), 0.0);
    let held_rss = rss_kib(p.server_proxy);
    eprintln!(
        "idle flood: 1000 held, 2000 refused; server proxy RSS {before} KiB -> {held_rss} KiB \
         ({:.1} KiB per held connection); {served} requests served meanwhile",
        held_rss.saturating_sub(before) as f64 / 1000.0
    );
    // A waiting connection holds little (later stages are boxed), so the
    // default WEFT_MAX_CONNECTIONS fits the pod's limit many times over.
    assert!(
        held_rss < before + 16 * 1024,
        "1000 idle connections took {} KiB",
        held_rss - before
    );
    // Closing them gives the slots back.
    drop(held);
    let node = p.mesh.node();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match weft_testbed::http_request(&node, p.http_addr(), "GET", "/").await {
            Ok((200, _)) => break,
            other => assert!(
                Instant::now() < deadline,
                "the node stays refused: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_refuses_past_its_connection_limit_and_recovers() {
    let p = pair("connlimit", &[("WEFT_MAX_CONNECTIONS", "50")]).await;
    let held = open_from_node(&p, p.http_addr(), 80);
    wait_for_sum(
        &p.server,
        "tcp_limit_refused_total",
        &[("direction", "inbound"), ("limit", "proxy")],
        30.0,
    )
    .await;
    // The listener is full: the client pod is refused too, with a metric
    // and a log line naming the limit.
    assert!(
        weft_testbed::http_request(&p.client, p.http_addr(), "GET", "/")
            .await
            .map_or(true, |(status, _)| status != 200)
    );
    let log = p.mesh.log_of(&p.server, "proxy");
    assert!(log.contains("WEFT_MAX_CONNECTIONS"), "{log}");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    while weft_testbed::http_request(&p.client, p.http_addr(), "GET", "/")
        .await
        .map_or(true, |(status, _)| status != 200)
    {
        assert!(Instant::now() < deadline, "the listener never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_on_request_heads_is_cut_off() {
    let p = pair("slowloris", &[("WEFT_HTTP_HEADER_TIMEOUT", "2s")]).await;
    let before = rss_kib(p.server_proxy);
    let addr = p.http_addr();
    while_served(&p, async {
        // 300 connections, each sending a header byte every 200 ms: no head
        // ever completes.
        let mut streams = Vec::new();
        for std_stream in open_from_node(&p, addr, 300) {
            std_stream.set_nonblocking(true).unwrap();
            streams.push(tokio::net::TcpStream::from_std(std_stream).unwrap());
        }
        let started = Instant::now();
        let tricklers = streams.into_iter().map(|mut stream| {
            tokio::spawn(async move {
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .unwrap();
                let mut out = Vec::new();
                loop {
                    tokio::select! {
                        read = stream.read_to_end(&mut out) => {
                            let _ = read;
                            return String::from_utf8_lossy(&out).into_owned();
                        }
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            if stream.write_all(b"X").await.is_err() {
                                let _ = stream.read_to_end(&mut out).await;
                                return String::from_utf8_lossy(&out).into_owned();
                            }
                        }
                    }
                }
            })
        });
        let answers = futures_util::future::join_all(tricklers).await;
        let elapsed = started.elapsed();
        for answer in answers {
            let answer = answer.unwrap();
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        }
        assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    })
    .await;
    let m = p.server.metrics().await.unwrap();
    assert_eq!(
        m.sum(
            "response_total",
            &[("direction", "inbound"), ("status_code", "408")]
        ),
        300.0
    );
    assert!(rss_kib(p.server_proxy) < POD_LIMIT_KIB.min(before + 64 * 1024));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_response_holds_no_memory() {
    let p = pair("noread", &[]).await;
    let before = rss_kib(p.server_proxy);
    let addr = p.http_addr();
    let mut stuck = Vec::new();
    while_served(&p, async {
        // Ten clients each ask for 200 MiB and read none of it.
        for std_stream in open_from_node(&p, addr, 10) {
            std_stream.set_nonblocking(true).unwrap();
            let mut stream = tokio::net::TcpStream::from_std(std_stream).unwrap();
            let head = format!(
                "GET /download?bytes={} HTTP/1.1\r\nHost: server\r\n\r\n",
                200 * 1024 * 1024
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stuck.push(stream);
        }
        // Long enough for every buffer on the way to fill.
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    let during = rss_kib(p.server_proxy);
    eprintln!("never-reading clients: server proxy RSS {before} KiB -> {during} KiB");
    // Backpressure holds the download at the socket buffers: nowhere near
    // 2 GiB, nor the pod's limit.
    assert!(
        during < before + 32 * 1024,
        "RSS grew from {before} to {during} KiB"
    );
    // The stuck clients still get their bytes once they read.
    let mut first = stuck.swap_remove(0);
    let mut chunk = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), first.read(&mut chunk))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_in_flight_limit_are_shed_with_503() {
    let p = pair("shed", &[("WEFT_MAX_REQUESTS_IN_FLIGHT", "5")]).await;
    let node = p.mesh.node();
    let addr = p.http_addr();
    // 20 slow requests at once from the node, straight to the server proxy.
    let requests = (0..20).map(|_| {
        let node = node.clone();
        tokio::spawn(async move {
            let stream = node.connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = http::Request::get("/delay?ms=1500")
                .header("host", "server")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let reason = resp
                .headers()
                .get("weft-proxy-error")
                .map(|v| v.to_str().unwrap().to_string());
            (resp.status().as_u16(), reason)
        })
    });
    let answers: Vec<_> = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let shed = answers.iter().filter(|(s, _)| *s == 503).count();
    assert_eq!(ok + shed, 20, "{answers:?}");
    assert!(ok >= 5 && shed >= 10, "{answers:?}");
    for (_, reason) in answers.iter().filter(|(s, _)| *s == 503) {
        assert_eq!(
            reason.as_deref(),
            Some("overloaded: 5 requests in flight"),
            "{answers:?}"
        );
    }
    let m = p.server.metrics().await.unwrap();
    assert_eq!(
        m.sum("http_load_shed_total", &[("direction", "inbound")]),
        shed as f64
    );
    eprintln!(
        "{}",
        p.mesh
            .log_of(&p.server, "proxy")
            .lines()
            .take(2)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Once they are answered, requests are taken again.
    let (status, _) = weft_testbed::http_request(&node, addr, "GET", "/")
        .await
        .unwrap();
    assert_eq!(status, 200);
}

/// A gRPC identity client for the controller, from the node.
async fn identity_client(
    m: &MeshedPair,
) -> weft_api::proto::identity::identity_client::IdentityClient<tonic::transport::Channel> {
    let node = m.pair.mesh.node();
    let anchors =
        weft_proxy::tls::load_anchors(&std::fs::read(m.controller.ca.anchors()).unwrap()).unwrap();
    let tls = weft_proxy::tls::controller_client_config(anchors).unwrap();
    let controller_id: weft_api::identity::SpiffeId =
        weft_testbed::identity::spiffe_id("weft-system", "weft-controller")
            .parse()
            .unwrap();
    let name = weft_proxy::tls::server_name_for(&controller_id).unwrap();
    let addr = m.controller.addr();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_uri| {
            let (node, tls, name) = (node.clone(), tls.clone(), name.clone());
            async move {
                let tcp = node.connect(addr).await.map_err(std::io::Error::other)?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    weft_api::proto::identity::identity_client::IdentityClient::new(channel)
}

fn csr_for(identity: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_stream_of_garbage_csrs_leaves_the_controller_serving() {
    use weft_api::proto::identity::CertifyRequest;
    let m = meshed_pair(
        "csrflood",
        weft_testbed::identity::ControllerOptions::default(),
        &[],
    )
    .await;
    let mesh = &m.pair.mesh;
    let token = std::fs::read_to_string(
        mesh.mint_token(&m.controller.ca, "flood-token", NAMESPACE, "client", &[])
            .unwrap(),
    )
    .unwrap();
    let before = rss_kib(m.controller.pid);
    let stop = Arc::new(AtomicBool::new(false));
    // Four clients, each sending garbage as fast as the controller answers:
    // a CSR of random bytes, a token of random bytes, an oversized message.
    let flooders: Vec<_> = (0..4)
        .map(|i| {
            let (stop, token) = (stop.clone(), token.clone());
            let m = &m;
            let client = identity_client(m);
            async move {
                let mut client = client.await;
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let garbage: Vec<u8> = (0..512).map(|b| (b * 31 + sent) as u8).collect();
                    let request = match (sent + i) % 3 {
                        0 => CertifyRequest {
                            identity: client_id(),
                            token: token.clone(),
                            csr_der: garbage,
                        },
                        1 => CertifyRequest {
                            identity: client_id(),
                            token: String::from_utf8_lossy(&garbage).into_owned(),
                            csr_der: csr_for(&client_id()),
                        },
                        _ => CertifyRequest {
                            identity: client_id(),
                            token: token.clone(),
                            csr_der: vec![0x30; 100 * 1024],
                        },
                    };
                    let refused = client.certify(request).await.unwrap_err();
                    assert_ne!(refused.code(), tonic::Code::Ok);
                    sent += 1;
                }
                sent
            }
        })
        .collect();
    let good = async {
        // Meanwhile a real request is answered, again and again.
        let mut client = identity_client(&m).await;
        let mut slowest = Duration::ZERO;
        for _ in 0..20 {
            let started = Instant::now();
            let issued = client
                .certify(CertifyRequest {
                    identity: client_id(),
                    token: token.clone(),
                    csr_der: csr_for(&client_id()),
                })
                .await
                .expect("a good request during the flood");
            assert!(!issued.into_inner().leaf_der.is_empty());
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop.store(true, Ordering::Relaxed);
        slowest
    };
    let (sent, slowest) = tokio::join!(futures_util::future::join_all(flooders), good);
    let sent: u32 = sent.into_iter().sum();
    let after = rss_kib(m.controller.pid);
    let metrics = mesh.controller_metrics(&m.controller).await.unwrap();
    let refused = metrics.sum("identity_certificates_refused_total", &[]);
    let log = mesh.controller_log(&m.controller);
    let logged = log.matches("certificate request refused").count();
    eprintln!(
        "garbage CSRs: {sent} sent, {refused} refused; slowest good request {slowest:?}; \
         controller RSS {before} KiB -> {after} KiB; {logged} refusals logged"
    );
    // Oversized messages are refused by tonic before the service sees them.
    assert!(refused >= f64::from(sent) * 0.6, "{refused} of {sent}");
    assert!(sent > 100, "the flood sent only {sent}");
    assert!(after < before + 32 * 1024, "RSS {before} -> {after} KiB");
    // Ten per 10 s window, however many were refused.
    assert!(logged <= 20, "{logged} refusal lines");
}
