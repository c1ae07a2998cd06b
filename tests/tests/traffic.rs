//! End-to-end traffic between two pods through two real proxies. Each case
//! checks the proxies' own metrics to prove the traffic crossed both.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_crosses_both_proxies() {
    let p = pair("h1keepalive", &[]).await;
    let stream = p.client.connect(p.http_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..20 {
        sender.ready().await.unwrap();
        let req = http::Request::get("/")
            .header("host", "server")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-served-by"], "server");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello from server\n");
    }
    let client = p.client.metrics().await.unwrap();
    let server = p.server.metrics().await.unwrap();
    assert_eq!(
        client.sum("request_total", &[("direction", "outbound")]),
        20.0
    );
    assert_eq!(
        server.sum("request_total", &[("direction", "inbound")]),
        20.0
    );
    assert_eq!(
        client.sum(
            "response_total",
            &[("direction", "outbound"), ("status_code", "200")]
        ),
        20.0
    );
    assert_eq!(
        server.sum(
            "response_total",
            &[("direction", "inbound"), ("status_code", "200")]
        ),
        20.0
    );
    // One app connection, kept alive for all 20 requests, and one pooled
    // connection between the proxies.
    assert_eq!(
        client.sum(
            "tcp_open_total",
            &[("direction", "outbound"), ("peer", "src")]
        ),
        1.0
    );
    assert_eq!(
        client.sum(
            "tcp_open_total",
            &[("direction", "outbound"), ("peer", "dst")]
        ),
        1.0
    );
    assert_eq!(
        server.sum(
            "tcp_open_total",
            &[("direction", "inbound"), ("peer", "src")]
        ),
        1.0
    );
    assert_eq!(
        client.sum("protocol_detect_total", &[("protocol", "http1")]),
        1.0
    );
    assert!(client.sum("response_latency_ms_count", &[("direction", "outbound")]) == 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_grpc_streaming_cross_both_proxies() {
    use weft_demo::proto::EchoRequest;
    use weft_demo::proto::echo_client::EchoClient;

    let p = pair("grpc", &[]).await;
    let addr = std::net::SocketAddr::from((p.server.ip, GRPC_PORT));
    let channel = p.client.grpc_channel(addr).await.unwrap();
    let mut client = EchoClient::new(channel);

    let reply = client
        .say(EchoRequest {
            message: "unary".into(),
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.served_by.as_str()),
        ("unary", "server")
    );

    let mut stream = client
        .repeat(EchoRequest {
            message: "tick".into(),
            count: 500,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.sequence, seen);
        seen += 1;
    }
    assert_eq!(seen, 500);

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut chat = client
        .chat(tokio_stream_from(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..10 {
        tx.send(EchoRequest {
            message: format!("m{i}"),
            count: 0,
        })
        .await
        .unwrap();
        let reply = chat.message().await.unwrap().unwrap();
        assert_eq!(
            reply.message,
            format!("m{i}"),
            "bidirectional stream echoes each message as it goes"
        );
    }
    drop(tx);
    assert!(chat.message().await.unwrap().is_none());

    let client_m = p.client.metrics().await.unwrap();
    let server_m = p.server.metrics().await.unwrap();
    assert_eq!(
        client_m.sum(
            "protocol_detect_total",
            &[("direction", "outbound"), ("protocol", "http2")]
        ),
        1.0
    );
    assert_eq!(
        server_m.sum(
            "protocol_detect_total",
            &[("direction", "inbound"), ("protocol", "http2")]
        ),
        1.0
    );
    assert_eq!(
        client_m.sum("request_total", &[("direction", "outbound")]),
        3.0
    );
    assert_eq!(
        server_m.sum("request_total", &[("direction", "inbound")]),
        3.0
    );
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_continues_as_a_stream() {
    let p = pair("websocket", &[]).await;
    let stream = p.client.connect(p.http_addr()).await.unwrap();
    let url = format!("ws://{}/ws", p.http_addr());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        let msg = format!("frame {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone()))
            .await
            .unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), msg);
    }
    ws.close(None).await.unwrap();
    let client = p.client.metrics().await.unwrap();
    let server = p.server.metrics().await.unwrap();
    assert_eq!(
        client.sum(
            "response_total",
            &[("direction", "outbound"), ("status_code", "101")]
        ),
        1.0
    );
    assert_eq!(
        server.sum(
            "response_total",
            &[("direction", "inbound"), ("status_code", "101")]
        ),
        1.0
    );
    // The frames went through as upgraded bytes, in both proxies.
    assert!(
        client.sum(
            "tcp_write_bytes_total",
            &[("direction", "outbound"), ("peer", "dst")]
        ) > 0.0
    );
}

/// Reads the banner server's greeting, then one echo exchange.
async fn banner_exchange(p: &Pair, port: u16) -> Duration {
    let started = Instant::now();
    let stream = p
        .client
        .connect(std::net::SocketAddr::from((p.server.ip, port)))
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let greeting = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(greeting, "220 server ready");
    write.write_all(b"hello\r\n").await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().unwrap(), "echo: hello");
    write.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().unwrap(), "221 bye");
    waited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_on_an_opaque_port_does_not_wait() {
    // A long detection timeout makes any wait unmistakable.
    let p = pair("ssfopaque", &[("WEFT_DETECT_TIMEOUT", "3s")]).await;
    let waited = banner_exchange(&p, BANNER_OPAQUE_PORT).await;
    assert!(
        waited < Duration::from_millis(1500),
        "greeting took {waited:?}; the opaque port must skip detection"
    );
    let client = p.client.metrics().await.unwrap();
    let server = p.server.metrics().await.unwrap();
    assert_eq!(
        client.sum(
            "protocol_detect_total",
            &[("direction", "outbound"), ("protocol", "opaque_port")]
        ),
        1.0
    );
    assert_eq!(
        server.sum(
            "protocol_detect_total",
            &[("direction", "inbound"), ("protocol", "opaque_port")]
        ),
        1.0
    );
    assert_eq!(client.sum("protocol_detect_timeout_total", &[]), 0.0);
    assert_eq!(server.sum("protocol_detect_timeout_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_on_another_port_waits_for_the_timeout() {
    let p = pair("ssfplain", &[("WEFT_DETECT_TIMEOUT", "300ms")]).await;
    let waited = banner_exchange(&p, BANNER_PLAIN_PORT).await;
    // Both proxies wait once: the client's, then the server's.
    assert!(
        waited >= Duration::from_millis(600),
        "greeting after {waited:?}"
    );
    let client = p.client.metrics().await.unwrap();
    let server = p.server.metrics().await.unwrap();
    assert_eq!(
        client.sum(
            "protocol_detect_timeout_total",
            &[("direction", "outbound")]
        ),
        1.0
    );
    assert_eq!(
        server.sum("protocol_detect_timeout_total", &[("direction", "inbound")]),
        1.0
    );
    assert!(
        client.sum(
            "tcp_read_bytes_total",
            &[("direction", "outbound"), ("peer", "dst")]
        ) >= 20.0
    );
    assert_eq!(client.sum("protocol_detect_late_client_total", &[]), 0.0);
    // Counted by port, and each proxy names the port and the fix once.
    let port = BANNER_PLAIN_PORT.to_string();
    assert_eq!(
        client.sum(
            "protocol_detect_timeout_by_port_total",
            &[("direction", "outbound"), ("port", &port)]
        ),
        1.0
    );
    banner_exchange(&p, BANNER_PLAIN_PORT).await;
    for pod in [&p.client, &p.server] {
        let log = p.mesh.log_of(pod, "proxy");
        let hints = log
            .lines()
            .filter(|l| l.contains("protocol detection timed out"))
            .collect::<Vec<_>>();
        assert_eq!(hints.len(), 1, "{log}");
        assert!(
            hints[0].contains(&format!("port {port}"))
                && hints[0].contains("config.weft.io/opaque-ports"),
            "{}",
            hints[0]
        );
    }
}

/// A pool that dials ahead, or races a dial against a connection being
/// returned, leaves a connection silent for longer than the detection
/// timeout before its first request. It is still HTTP: the proxy opens the
/// upstream and lets whoever speaks first decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_client_that_dials_ahead_is_still_served_as_http() {
    let p = pair("dialahead", &[("WEFT_DETECT_TIMEOUT", "200ms")]).await;
    let stream = p.client.connect(p.http_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        sender.ready().await.unwrap();
        let req = http::Request::get("/")
            .header("host", "server")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-served-by"], "server");
    }
    let client = p.client.metrics().await.unwrap();
    let server = p.server.metrics().await.unwrap();
    let outbound = [("direction", "outbound")];
    assert_eq!(client.sum("request_total", &outbound), 3.0);
    assert_eq!(
        server.sum("request_total", &[("direction", "inbound")]),
        3.0
    );
    assert_eq!(
        client.sum("protocol_detect_late_client_total", &outbound),
        1.0
    );
    assert_eq!(
        client.sum(
            "protocol_detect_total",
            &[("direction", "outbound"), ("protocol", "http1")]
        ),
        1.0
    );
    // Not a server-speaks-first port, so no advice to make it opaque.
    assert_eq!(client.sum("protocol_detect_timeout_total", &outbound), 0.0);
    let log = p.mesh.log_of(&p.client, "proxy");
    assert!(!log.contains("protocol detection timed out"), "{log}");
}

const HUNDRED_MIB: u64 = 100 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_bodies_stream_without_growing_proxy_memory() {
    let p = pair("bigbody", &[]).await;
    let (client_peak_before, _) = weft_testbed::memory_kib(p.client_proxy).unwrap();
    let (server_peak_before, _) = weft_testbed::memory_kib(p.server_proxy).unwrap();

    // Upload: the client streams 100 MiB in 64 KiB chunks.
    let stream = p.client.connect(p.http_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let chunks = (HUNDRED_MIB / chunk.len() as u64) as usize;
    let body = StreamBody::new(futures_util::stream::iter(
        std::iter::repeat_n(chunk, chunks)
            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c))),
    ));
    let req = http::Request::post("/upload")
        .header("host", "server")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, format!("received {HUNDRED_MIB} bytes\n"));

    // Download: 100 MiB back, counted as it arrives.
    let stream = p.client.connect(p.http_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("/download?bytes={HUNDRED_MIB}"))
        .header("host", "server")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, HUNDRED_MIB);

    let (client_peak, _) = weft_testbed::memory_kib(p.client_proxy).unwrap();
    let (server_peak, _) = weft_testbed::memory_kib(p.server_proxy).unwrap();
    eprintln!(
        "proxy peak RSS: client {client_peak_before} -> {client_peak} KiB, server {server_peak_before} -> {server_peak} KiB"
    );
    // 200 MiB went through each proxy; their peak memory may move by a few
    // buffers, never by anything near the body size.
    for (who, before, after) in [
        ("client", client_peak_before, client_peak),
        ("server", server_peak_before, server_peak),
    ] {
        assert!(
            after - before < 16 * 1024,
            "{who} proxy peak RSS grew from {before} to {after} KiB"
        );
    }
    let client = p.client.metrics().await.unwrap();
    assert!(
        client.sum(
            "tcp_write_bytes_total",
            &[("direction", "outbound"), ("peer", "dst")]
        ) >= HUNDRED_MIB as f64
    );
    assert!(
        client.sum(
            "tcp_read_bytes_total",
            &[("direction", "outbound"), ("peer", "dst")]
        ) >= HUNDRED_MIB as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_aborting_mid_stream_releases_everything() {
    let p = pair("abort", &[]).await;
    let stream = p.client.connect(p.http_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    // Promise 10 MiB, send 1 MiB, then vanish.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let req = http::Request::post("/upload")
        .header("host", "server")
        .header("content-length", (10 * 1024 * 1024).to_string())
        .body(StreamBody::new(tokio_stream_from(rx)))
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    for _ in 0..16 {
        tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 64 * 1024]))))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    pending.abort();
    conn_task.abort();
    drop(tx);

    // Every connection the abort touched is closed on both proxies.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = p.client.metrics().await.unwrap();
        let s = p.server.metrics().await.unwrap();
        let open = c.sum("tcp_open_connections", &[("direction", "outbound")])
            + s.sum("tcp_open_connections", &[("direction", "inbound")]);
        if open == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections still open after the client aborted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the proxies keep serving.
    let (status, body) = weft_testbed::http_request(&p.client, p.http_addr(), "GET", "/")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from server\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_connections_reach_their_original_destination() {
    use weft_testbed::{Mesh, MeshOptions, ProxyOptions};
    let mesh = Mesh::with_options(
        "ipv6",
        MeshOptions {
            ipv6: true,
            ..Default::default()
        },
    )
    .unwrap();
    let client = mesh.add_pod("client", None).unwrap();
    let server = mesh.add_pod("server", None).unwrap();
    let server_ip6 = server.ip6.expect("dual-stack pod has an IPv6 address");
    // `[::]` takes IPv4 too, so one app serves both families.
    mesh.spawn_demo_at(&server, "http", "[::]:8080", "server6")
        .await
        .unwrap();
    mesh.spawn_proxy(&client, ProxyOptions::default())
        .await
        .unwrap();
    mesh.spawn_proxy(&server, ProxyOptions::default())
        .await
        .unwrap();

    let v6 = std::net::SocketAddr::from((server_ip6, 8080));
    let (status, body) = weft_testbed::http_request(&client, v6, "GET", "/")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from server6\n"));
    let v4 = std::net::SocketAddr::from((server.ip, 8080));
    let (status, _) = weft_testbed::http_request(&client, v4, "GET", "/")
        .await
        .unwrap();
    assert_eq!(status, 200);

    let c = client.metrics().await.unwrap();
    let s = server.metrics().await.unwrap();
    assert_eq!(
        c.sum("request_total", &[("direction", "outbound")]),
        2.0,
        "both families went through the client proxy"
    );
    assert_eq!(
        s.sum("request_total", &[("direction", "inbound")]),
        2.0,
        "both families went through the server proxy"
    );
    // Separate upstream connections per family: the v6 one kept its address.
    assert_eq!(
        c.sum(
            "tcp_open_total",
            &[("direction", "outbound"), ("peer", "dst")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnel_continues_as_a_stream() {
    let p = pair("connect", &[]).await;
    let mut stream = p.client.connect(p.http_addr()).await.unwrap();
    stream
        .write_all(b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n")
        .await
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    // Bytes after the 200 are the tunnel: the demo server echoes them.
    let mut stream = reader.into_inner();
    stream
        .write_all(b"\x00\x01 not http at all \xff")
        .await
        .unwrap();
    let mut echoed = [0u8; 20];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut echoed)
        .await
        .unwrap();
    assert_eq!(&echoed, b"\x00\x01 not http at all \xff");
    let c = p.client.metrics().await.unwrap();
    assert_eq!(
        c.sum(
            "response_total",
            &[("direction", "outbound"), ("status_code", "200")]
        ),
        1.0
    );
    assert_eq!(
        p.server
            .metrics()
            .await
            .unwrap()
            .sum("request_total", &[("direction", "inbound")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_streams_pass_half_close_through() {
    let p = pair("halfclose", &[]).await;
    // 5432 is on the opaque list; 7000 is detected as opaque from its bytes.
    p.mesh
        .spawn_demo(&p.server, "sink", 5432, "sink")
        .await
        .unwrap();
    p.mesh
        .spawn_demo(&p.server, "sink", 7000, "sink")
        .await
        .unwrap();
    for port in [5432, 7000] {
        let stream = p
            .client
            .connect(std::net::SocketAddr::from((p.server.ip, port)))
            .await
            .unwrap();
        let (mut read, mut write) = stream.into_split();
        write.write_all(&vec![0x5a; 1 << 20]).await.unwrap();
        // Half-close: the sink answers only once it sees our FIN.
        write.shutdown().await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_string(&mut read, &mut answer),
        )
        .await
        .expect("the half-close never reached the server")
        .unwrap();
        assert_eq!(answer, "got 1048576 bytes\n", "port {port}");
    }
    let c = p.client.metrics().await.unwrap();
    assert_eq!(
        c.sum(
            "protocol_detect_total",
            &[("direction", "outbound"), ("protocol", "opaque_port")]
        ),
        1.0
    );
    assert_eq!(
        c.sum(
            "protocol_detect_total",
            &[("direction", "outbound"), ("protocol", "opaque")]
        ),
        1.0
    );
    assert_eq!(
        c.sum("protocol_detect_timeout_total", &[]),
        0.0,
        "bytes that cannot be HTTP need no wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_across_client_connections() {
    let p = pair("pooling", &[]).await;
    for _ in 0..10 {
        // A fresh app connection each time, one after the other.
        let (status, _) = weft_testbed::http_request(&p.client, p.http_addr(), "GET", "/")
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let c = p.client.metrics().await.unwrap();
    assert_eq!(
        c.sum(
            "tcp_open_total",
            &[("direction", "outbound"), ("peer", "src")]
        ),
        10.0
    );
    assert_eq!(
        c.sum(
            "tcp_open_total",
            &[("direction", "outbound"), ("peer", "dst")]
        ),
        1.0,
        "one pooled connection to the server pod carried all ten"
    );
    let s = p.server.metrics().await.unwrap();
    assert_eq!(
        s.sum(
            "tcp_open_total",
            &[("direction", "inbound"), ("peer", "src")]
        ),
        1.0
    );
    assert_eq!(s.sum("request_total", &[("direction", "inbound")]), 10.0);
}

/// Header blocks up to `WEFT_HTTP_MAX_HEADER_BYTES` (64 KiB by default)
/// cross both proxies and the mTLS HTTP/2 hop between them, both ways
/// (h2's own default, 16 KiB, broke large cookies and JWTs once meshed);
/// beyond it, each refusal names the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_header_blocks_cross_the_mesh_hop() {
    use weft_testbed::identity::ControllerOptions;
    let m = meshed_pair("bigheaders", ControllerOptions::default(), &[]).await;
    let p = &m.pair;
    let stream = p.client.connect(p.http_addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let cookie = "c".repeat(40 * 1024);
    let mut get = async |path: &str| {
        sender.ready().await.unwrap();
        let req = http::Request::get(path)
            .header("host", "server")
            .header("cookie", &cookie)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts, String::from_utf8_lossy(&body).into_owned())
    };
    let (parts, body) = get("/headers?fill=40960").await;
    assert_eq!(parts.status, 200, "{:?} {body}", parts.headers);
    assert!(body.contains("cookie 40960"), "{body}");
    assert_eq!(parts.headers["x-fill"].len(), 40960);
    // A response head over the limit, refused by the server's proxy.
    let (parts, body) = get("/headers?fill=90000").await;
    assert_eq!(parts.status, 502, "{body}");
    let reason = parts.headers["weft-proxy-error"].to_str().unwrap();
    assert!(
        reason.contains("WEFT_HTTP_MAX_HEADER_BYTES (65536)"),
        "{reason}"
    );
    // The mesh hop was HTTP/2 over mTLS.
    let server = p.server.metrics().await.unwrap();
    assert!(
        server.sum(
            "request_total",
            &[("direction", "inbound"), ("tls", "true")]
        ) >= 2.0
    );
    // A request head over the limit, refused by the client's proxy.
    let mut raw = b"GET / HTTP/1.1\r\nhost: server\r\ncookie: ".to_vec();
    raw.extend(std::iter::repeat_n(b'c', 70 * 1024));
    raw.extend(b"\r\n\r\n");
    let mut stream = p.client.connect(p.http_addr()).await.unwrap();
    stream.write_all(&raw).await.unwrap();
    let mut head = String::new();
    let mut reader = BufReader::new(stream);
    while reader.read_line(&mut head).await.unwrap() > 2 {}
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    assert!(
        head.contains("weft-proxy-error: request head exceeds WEFT_HTTP_MAX_HEADER_BYTES (65536)"),
        "{head}"
    );
}

/// HTTP/1 response trailers reach a client that asked for them
/// (`TE: trailers`), across both proxies: over the mTLS HTTP/2 hop between
/// meshed proxies, and over the HTTP/1 hop between unmeshed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_response_trailers_cross_both_proxies() {
    use weft_testbed::identity::ControllerOptions;
    let meshed = meshed_pair("trailers", ControllerOptions::default(), &[]).await;
    let plain = pair("trailersplain", &[]).await;
    for p in [&meshed.pair, &plain] {
        let stream = p.client.connect(p.http_addr()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/trailers")
            .header("host", "server")
            .header("te", "trailers")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        assert_eq!(collected.to_bytes(), "body before trailers\n");
        assert_eq!(
            trailers.as_ref().and_then(|t| t.get("x-checksum")),
            Some(&http::HeaderValue::from_static("abc123")),
            "{}: trailers {trailers:?}",
            p.mesh.id
        );
    }
}

/// Reads one response head (up to the blank line) from a raw connection.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("a response head within 5 s")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_by_the_server() {
    use weft_testbed::identity::ControllerOptions;
    let meshed = meshed_pair("expect", ControllerOptions::default(), &[]).await;
    let plain = pair("expectplain", &[]).await;
    for p in [&meshed.pair, &plain] {
        let id = &p.mesh.id;
        // A server that refuses at once is heard before the body is sent.
        let mut s = p.client.connect(p.http_addr()).await.unwrap();
        s.write_all(
            b"PUT /refuse HTTP/1.1\r\nhost: server\r\ncontent-length: 1000000\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 413"), "{id}: {head}");
        // A server that wants the body sends the 100 itself: before the
        // proxies' one-second fallback.
        let mut s = p.client.connect(p.http_addr()).await.unwrap();
        let started = Instant::now();
        s.write_all(
            b"POST /upload HTTP/1.1\r\nhost: server\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await;
        let waited = started.elapsed();
        assert!(head.starts_with("HTTP/1.1 100"), "{id}: {head}");
        assert!(
            waited < Duration::from_millis(900),
            "{id}: 100 after {waited:?}"
        );
        s.write_all(b"hello").await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{id}: {head}");
        println!("{id}: 413 before the body; 100 from the server after {waited:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lines_keep_the_server_reason_and_http10_gets_http10() {
    use weft_testbed::identity::ControllerOptions;
    let meshed = meshed_pair("reason", ControllerOptions::default(), &[]).await;
    let plain = pair("reasonplain", &[]).await;
    for p in [&meshed.pair, &plain] {
        let id = &p.mesh.id;
        let mut s = p.client.connect(p.http_addr()).await.unwrap();
        s.write_all(b"GET /reason HTTP/1.1\r\nhost: server\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(
            head.starts_with("HTTP/1.1 200 Fine Indeed\r\n"),
            "{id}: {head}"
        );
        assert!(!head.contains("weft-orig-reason"), "{id}: {head}");
        // An HTTP/1.0 client is answered in HTTP/1.0, as hyper's server
        // does for any HTTP/1.0 peer (and as such a client can parse).
        let mut s = p.client.connect(p.http_addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nhost: server\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{id}: {head}");
    }
}
