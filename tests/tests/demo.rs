//! README command 1 (`weft-mesh demo`): it shows traffic through both
//! proxies, across two nodes, and it leaves nothing behind, whether it ends
//! by itself or by Ctrl-C. And what its underlay check proves.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn weft_mesh() -> Command {
    weft_testbed::require_root();
    let mut dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("weft-mesh");
    assert!(
        bin.is_file(),
        "{} missing: build the binaries first",
        bin.display()
    );
    Command::new(bin)
}

fn leftovers(pid: u32) -> Vec<String> {
    let list = weft_testbed::sh("ip", &["netns", "list"]).unwrap();
    let prefix = format!("weft-{pid}-");
    list.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn demo_shows_traffic_and_cleans_up() {
    let out = weft_mesh().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("10/10 answered 200"), "{stdout}");
    // The apps call names too, resolved by the mesh's CoreDNS.
    for name in ["web", "web.demo", "web.demo.svc.cluster.local"] {
        assert!(
            stdout.contains(&format!("GET http://{name}/ -> 200 hello from web-v")),
            "{name}: {stdout}"
        );
    }
    assert!(stdout.contains("TCP web:3306 -> 220 web-v"), "{stdout}");
    // All of it crossed the split as mTLS between the workload identities.
    assert!(
        stdout.contains(
            "request_total{direction=\"outbound\",tls=\"true\",server_id=\"spiffe://cluster.local/ns/demo/sa/web\"} 16"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "request_total{direction=\"inbound\",tls=\"true\",client_id=\"spiffe://cluster.local/ns/demo/sa/client\"} 16"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("response_total{direction=\"outbound\",tls=\"true\",grpc_status=\"0\"} 2"),
        "{stdout}"
    );
    assert!(stdout.contains("redirect to :6140"), "{stdout}");
    // The client runs on the other node from web-v1: that traffic crossed
    // the underlay, as TLS only.
    assert!(
        stdout.contains("pod   client  node1") && stdout.contains("pod   web-v1  node0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("TCP streams between pods")
            && stdout.contains("all TLS from their first byte"),
        "{stdout}"
    );
}

/// The underlay check sees plaintext when there is some: a request that
/// bypasses the client's proxy (sent as the proxy's UID, which the redirect
/// rules let through) is flagged, while the meshed streams beside it pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_underlay_check_catches_plaintext_between_nodes() {
    use weft_testbed::demo::{Demo, DemoOptions};
    weft_testbed::require_root();
    let demo = Demo::start("underlay", DemoOptions::default())
        .await
        .unwrap();
    for _ in 0..4 {
        let (status, _) = weft_testbed::http_request(&demo.client, demo.http_addr(), "GET", "/")
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let target = format!("http://{}:8080/", demo.web_v1.ip);
    let bypass = demo
        .mesh
        .spawn_as(
            &demo.client,
            "bypass",
            Some(weft_api::PROXY_UID),
            None,
            std::path::Path::new("/usr/bin/curl"),
            &["-s", "--max-time", "5", &target],
            &[],
        )
        .unwrap();
    let _ = demo.mesh.wait_exit(bypass, Duration::from_secs(10)).await;
    let report = demo.underlay_report().await.unwrap();
    let not_tls = report.not_tls();
    let plaintext_to_app = format!("{}:8080", demo.web_v1.ip);
    assert!(
        not_tls.iter().any(|s| s.contains(&plaintext_to_app)),
        "the bypassing request was not flagged: {not_tls:?}"
    );
    assert!(
        not_tls.iter().all(|s| s.contains(":8080")),
        "meshed streams flagged: {not_tls:?}"
    );
    // Meshed streams go to the app's port too, as TLS from the first byte.
    let meshed = report
        .streams
        .iter()
        .filter(|s| s.to.port() == weft_testbed::demo::HTTP_TARGET_PORT)
        .filter(|s| s.from_start && weft_testbed::wire::tls_records(&s.bytes).is_ok())
        .count();
    assert!(
        meshed >= 1,
        "no meshed stream crossed: {:?}",
        report.streams
    );
}

/// A rolling upgrade mixes proxies: one injected before app-port mesh
/// (its pod lacks the injector's `weft.io/mesh-transport` annotation) is
/// reached on its inbound port with the mesh header, a current one on the
/// app's port, and every request succeeds either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_from_before_app_port_mesh_is_reached_at_its_inbound_port() {
    use weft_testbed::demo::{Demo, DemoOptions, HTTP_TARGET_PORT, discovery_objects};
    weft_testbed::require_root();
    let demo = Demo::start("mixed", DemoOptions::default()).await.unwrap();
    let mut docs = discovery_objects(&demo.client, &demo.web_v1, &demo.web_v2);
    for doc in &mut docs {
        // web-v1 is on the other node, so its traffic crosses the underlay.
        if doc["kind"] == "Pod" && doc["metadata"]["name"] == demo.web_v1.name.as_str() {
            doc["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("annotations");
        }
    }
    demo.mesh
        .publish("demo", &weft_testbed::objects::file(&docs))
        .unwrap();
    // Requests to the pods' own addresses pick each one for sure.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        for pod in [&demo.web_v1, &demo.web_v2] {
            let addr = std::net::SocketAddr::from((pod.ip, HTTP_TARGET_PORT));
            let (status, _) = weft_testbed::http_request(&demo.client, addr, "GET", "/")
                .await
                .unwrap();
            assert_eq!(status, 200, "to {addr}");
        }
        if std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = demo.underlay_report().await.unwrap();
    let tls_to = |ip: std::net::Ipv4Addr, port: u16| {
        report
            .streams
            .iter()
            .filter(|s| s.to == std::net::SocketAddr::from((ip, port)))
            .filter(|s| s.from_start && weft_testbed::wire::tls_records(&s.bytes).is_ok())
            .count()
    };
    assert!(
        tls_to(demo.web_v1.ip, weft_api::ports::INBOUND) >= 1,
        "no mesh stream to the older proxy's inbound port: {:?}",
        report.streams
    );
    assert_eq!(report.not_tls(), Vec::<String>::new());
}

#[test]
fn demo_cleans_up_on_ctrl_c() {
    let mut child = weft_mesh()
        .args(["demo", "--keep"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines
            .next()
            .expect("demo ended before it was running")
            .unwrap();
        if line.starts_with("running;") {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    assert!(
        !leftovers(pid).is_empty(),
        "the running demo has namespaces"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "namespaces left after Ctrl-C"
    );
    let procs =
        weft_testbed::sh("pgrep", &["-f", &format!("weft-mesh-{pid}-")]).unwrap_or_default();
    assert!(procs.trim().is_empty(), "processes left: {procs}");
}
