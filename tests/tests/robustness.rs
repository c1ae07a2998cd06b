//! Malformed and hostile HTTP, and graceful shutdown. The proxy answers bad
//! requests with the right status and keeps serving everyone else.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

/// Sends raw bytes through the client pod's proxy and returns the response
/// head's status line.
async fn raw_exchange(p: &Pair, bytes: &[u8], then_wait: bool) -> String {
    let mut stream = p.client.connect(p.http_addr()).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    if !then_wait {
        let _ = stream.shutdown().await;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut out))
        .await
        .expect("proxy never answered")
        .ok();
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A well-behaved client keeps getting answers while `f` misbehaves.
async fn while_others_are_served<F: std::future::Future<Output = ()>>(p: &Pair, f: F) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (client, addr, flag) = (p.client.clone(), p.http_addr(), stop.clone());
    let good = tokio::spawn(async move {
        let mut served = 0;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let (status, _) = weft_testbed::http_request(&client, addr, "GET", "/")
                .await
                .unwrap();
            assert_eq!(status, 200);
            served += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        served
    });
    f.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = good.await.unwrap();
    assert!(served > 0, "the well-behaved client was not served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_request_line_gets_400() {
    let p = pair("badline", &[]).await;
    while_others_are_served(&p, async {
        let status = raw_exchange(&p, b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n", true).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{status:?}");
        let status = raw_exchange(&p, b"GET / HTTP/9.7\r\nHost: x\r\n\r\n", true).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{status:?}");
        let status = raw_exchange(&p, b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n", true).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{status:?}");
    })
    .await;
    let m = p.client.metrics().await.unwrap();
    assert!(m.sum("http_error_total", &[("direction", "outbound")]) >= 3.0);
    // Nothing malformed reached the server side.
    assert_eq!(
        p.server
            .metrics()
            .await
            .unwrap()
            .sum("http_error_total", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let p = pair("bigheaders", &[("WEFT_HTTP_MAX_HEADER_BYTES", "16384")]).await;
    while_others_are_served(&p, async {
        let mut req = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 64 * 1024));
        req.extend(b"\r\n\r\n");
        let status = raw_exchange(&p, &req, true).await;
        assert!(status.starts_with("HTTP/1.1 431"), "{status:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stalling_mid_headers_gets_408() {
    let p = pair("stall", &[("WEFT_HTTP_HEADER_TIMEOUT", "1s")]).await;
    while_others_are_served(&p, async {
        let started = Instant::now();
        let status = raw_exchange(&p, b"GET / HTTP/1.1\r\nHost: x\r\nX-Half", true).await;
        assert!(status.starts_with("HTTP/1.1 408"), "{status:?}");
        assert!(started.elapsed() >= Duration::from_secs(1));
    })
    .await;
    let m = p.client.metrics().await.unwrap();
    assert_eq!(
        m.sum(
            "response_total",
            &[("direction", "outbound"), ("status_code", "408")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let p = pair("drain", &[("WEFT_SHUTDOWN_GRACE", "10s")]).await;
    let (client, addr) = (p.client.clone(), p.http_addr());
    let in_flight = tokio::spawn(async move {
        weft_testbed::http_request(&client, addr, "GET", "/delay?ms=1500").await
    });
    // Signal only once the request is in flight through both proxies.
    let deadline = Instant::now() + Duration::from_secs(10);
    while p
        .server
        .metrics()
        .await
        .unwrap()
        .sum("request_total", &[("direction", "inbound")])
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the request never reached the server proxy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.mesh.terminate(p.client_proxy).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: not ready any more, and no new connections are taken.
    let (status, _) = p.client.admin_get("/ready").await.unwrap();
    assert_eq!(status, 503);
    let refused = weft_testbed::http_request(&p.client, p.http_addr(), "GET", "/").await;
    assert!(
        refused.is_err(),
        "a draining proxy accepted a new connection: {refused:?}"
    );

    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "delayed hello from server\n")
    );
    let exit = p
        .mesh
        .wait_exit(p.client_proxy, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(exit.success(), "proxy exited with {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_endpoint_is_loopback_only() {
    let p = pair("shutdown", &[]).await;
    // From the client pod, over the network: refused.
    let admin = std::net::SocketAddr::from((p.server.ip, weft_api::ports::ADMIN));
    let (status, _) = weft_testbed::http_request(&p.client, admin, "POST", "/shutdown")
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, _) = weft_testbed::http_request(&p.server, p.server.admin_addr(), "GET", "/live")
        .await
        .unwrap();
    assert_eq!(status, 200);
    // From inside the pod: accepted, and the proxy exits cleanly.
    let (status, _) =
        weft_testbed::http_request(&p.server, p.server.admin_addr(), "POST", "/shutdown")
            .await
            .unwrap();
    assert_eq!(status, 202);
    let exit = p
        .mesh
        .wait_exit(p.server_proxy, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(exit.success(), "proxy exited with {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_64_with_a_clear_message() {
    let bins = weft_testbed::Bins::locate().unwrap();
    let out = std::process::Command::new(bins.path("weft-proxy"))
        .env("WEFT_DETECT_TIMEOUT", "fast")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WEFT_DETECT_TIMEOUT") && stderr.contains("fast"),
        "{stderr}"
    );
}

#[test]
fn the_proxy_explains_itself_and_refuses_unknown_commands() {
    let bins = weft_testbed::Bins::locate().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(bins.path("weft-proxy"))
            .args(args)
            .output()
            .unwrap()
    };
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for var in weft_api::proxy_env::ALL {
        assert!(text.contains(var.name), "--help does not list {}", var.name);
    }
    assert!(text.contains("[default: 1s]"), "{text}");
    let version = run(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    let unknown = run(&["frob"]);
    assert_eq!(unknown.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("frob"));
    let bad = run(&["validate", "--timeout"]);
    assert_eq!(bad.status.code(), Some(64));
}
