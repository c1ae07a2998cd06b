//! The `weft-cni` plugin against real `prevResult`s from Debian's bridge
//! plugin, in real network namespaces: every command, bad input, and the
//! exemptions (UDP, skip ports and CIDRs, the proxy's UID).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use serde_json::{Value, json};
use weft_testbed::cni::weft_conf;
use weft_testbed::{Mesh, Pod, ProxyOptions, sh};

use common::HTTP_PORT;

/// Deletes a namespace the test made by hand.
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.0]);
    }
}

/// A bare pod netns wired by the bridge plugin alone, so the test can call
/// `weft-cni` itself with the bridge's real result.
fn bridged_pod(mesh: &Mesh, name: &str) -> (String, Value, NetnsGuard) {
    let netns = format!("weft-{}-{name}", mesh.id);
    sh("ip", &["netns", "add", &netns]).unwrap();
    let guard = NetnsGuard(netns.clone());
    let path = format!("/var/run/netns/{netns}");
    let bridge = mesh.cni.conflist["plugins"][0].clone();
    let conf = mesh.cni.plugin_config(&bridge, None, None);
    let out = mesh
        .cni
        .exec("bridge", "ADD", name, &path, "eth0", &conf)
        .unwrap();
    assert!(out.success, "bridge ADD: {}", out.stderr);
    (path, out.json().unwrap(), guard)
}

fn weft(mesh: &Mesh, command: &str, netns: &str, conf: &Value) -> weft_testbed::cni::PluginOutput {
    mesh.cni
        .exec("weft-cni", command, "c1", netns, "eth0", conf)
        .unwrap()
}

/// The items of the pod's whole nftables ruleset, as `nft -j` lists them.
fn ruleset(netns_path: &str) -> Vec<Value> {
    let name = netns_path.rsplit('/').next().unwrap();
    let out = sh(
        "ip",
        &["netns", "exec", name, "nft", "-j", "list", "ruleset"],
    )
    .unwrap();
    let doc: Value = serde_json::from_str(&out).unwrap();
    doc["nftables"].as_array().unwrap().clone()
}

fn weft_tables(netns_path: &str) -> usize {
    ruleset(netns_path)
        .iter()
        .filter(|i| i["table"]["name"] == "weft")
        .count()
}

fn rule_count(netns_path: &str) -> usize {
    ruleset(netns_path)
        .iter()
        .filter(|i| i.get("rule").is_some())
        .count()
}

#[test]
fn version_lists_both_spec_versions() {
    let mesh = Mesh::new("cniversion").unwrap();
    let out = weft(&mesh, "VERSION", "", &json!({"cniVersion": "1.1.0"}));
    assert!(out.success);
    let v = out.json().unwrap();
    let versions: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
            .iter()
            .all(|v| versions.contains(v)),
        "{v}"
    );
}

#[test]
fn add_check_del_round_trip_on_a_real_bridge_result() {
    let mesh = Mesh::new("cniroundtrip").unwrap();
    let (netns, prev, _guard) = bridged_pod(&mesh, "rt");
    // 0.4.0 is what many nodes' primary configs still say.
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let conf = weft_conf(version, Some(&prev), json!({}));
        let out = weft(&mesh, "ADD", &netns, &conf);
        assert!(out.success, "ADD {version}: {} {}", out.stdout, out.stderr);
        let mut expected = prev.clone();
        expected["cniVersion"] = json!(version);
        assert_eq!(
            out.json().unwrap(),
            expected,
            "ADD must return prevResult unchanged"
        );
        assert!(!out.stderr.is_empty(), "logs go to stderr");

        // ADD twice leaves one set of rules.
        let rules = rule_count(&netns);
        assert!(weft(&mesh, "ADD", &netns, &conf).success);
        assert_eq!(weft_tables(&netns), 1);
        assert_eq!(rule_count(&netns), rules);

        let check = weft(&mesh, "CHECK", &netns, &conf);
        assert!(check.success, "CHECK {version}: {}", check.stdout);
        assert!(check.stdout.is_empty());

        // CHECK notices tampering, with the plugin's own error code.
        sh(
            "ip",
            &[
                "netns",
                "exec",
                netns.rsplit('/').next().unwrap(),
                "nft",
                "flush",
                "chain",
                "inet",
                "weft",
                "outbound",
            ],
        )
        .unwrap();
        let check = weft(&mesh, "CHECK", &netns, &conf);
        assert!(!check.success);
        let err = check.json().unwrap();
        assert_eq!(err["code"], 100, "{err}");
        assert!(
            err["details"].as_str().unwrap().contains("outbound"),
            "{err}"
        );

        let del = weft(&mesh, "DEL", &netns, &conf);
        assert!(del.success, "DEL: {}", del.stdout);
        assert_eq!(weft_tables(&netns), 0);
        assert!(
            weft(&mesh, "DEL", &netns, &conf).success,
            "DEL twice succeeds"
        );
        assert!(
            !weft(&mesh, "CHECK", &netns, &conf).success,
            "CHECK after DEL fails"
        );
    }
    // DEL when the netns is already gone.
    let conf = weft_conf("1.0.0", Some(&prev), json!({}));
    let bridge = mesh
        .cni
        .plugin_config(&mesh.cni.conflist["plugins"][0], None, Some(&prev));
    assert!(
        mesh.cni
            .exec("bridge", "DEL", "rt", &netns, "eth0", &bridge)
            .unwrap()
            .success
    );
    sh("ip", &["netns", "del", netns.rsplit('/').next().unwrap()]).unwrap();
    let del = weft(&mesh, "DEL", &netns, &conf);
    assert!(del.success, "DEL of a vanished netns: {}", del.stdout);
    let del = mesh
        .cni
        .exec("weft-cni", "DEL", "c1", "", "eth0", &conf)
        .unwrap();
    assert!(del.success, "DEL with no CNI_NETNS: {}", del.stdout);
}

#[test]
fn whole_chain_check_passes_for_a_pod() {
    let mesh = Mesh::new("cnichain").unwrap();
    let pod = mesh.add_pod("p", None).unwrap();
    mesh.check_pod(&pod).unwrap();
}

#[test]
fn status_and_gc() {
    let mesh = Mesh::new("cnistatus").unwrap();
    let status = weft(&mesh, "STATUS", "", &weft_conf("1.1.0", None, json!({})));
    assert!(
        status.success && status.stdout.is_empty(),
        "{} {}",
        status.stdout,
        status.stderr
    );
    let gc = weft(
        &mesh,
        "GC",
        "",
        &weft_conf(
            "1.1.0",
            None,
            json!({"cni.dev/valid-attachments": [{"containerID": "x", "ifname": "eth0"}]}),
        ),
    );
    assert!(gc.success, "{}", gc.stdout);
    let old = weft(&mesh, "STATUS", "", &weft_conf("1.0.0", None, json!({})));
    assert_eq!(old.json().unwrap()["code"], 1);
}

#[test]
fn bad_input_gets_the_right_cni_error() {
    let mesh = Mesh::new("cnibad").unwrap();
    let (netns, prev, _guard) = bridged_pod(&mesh, "bad");
    let good = weft_conf("1.0.0", Some(&prev), json!({}));
    let with = |extra: Value| weft_conf("1.0.0", Some(&prev), extra);
    let mut no_version = good.clone();
    no_version.as_object_mut().unwrap().remove("cniVersion");
    let cases: Vec<(&str, Value, &str, &str, u32)> = vec![
        (
            "not json",
            Value::String("{not json".into()),
            "ADD",
            &netns,
            6,
        ),
        ("no cniVersion", no_version, "ADD", &netns, 7),
        (
            "old cniVersion",
            weft_conf("0.2.0", Some(&prev), json!({})),
            "ADD",
            &netns,
            1,
        ),
        (
            "wrong type",
            with(json!({"type": "bridge"})),
            "ADD",
            &netns,
            7,
        ),
        (
            "no prevResult",
            weft_conf("1.0.0", None, json!({})),
            "ADD",
            &netns,
            7,
        ),
        (
            "prevResult not an object",
            with(json!({"prevResult": [1, 2]})),
            "ADD",
            &netns,
            7,
        ),
        (
            "bad skip port",
            with(json!({"skipInboundPorts": ["ssh"]})),
            "ADD",
            &netns,
            7,
        ),
        (
            "port out of range",
            with(json!({"skipOutboundPorts": [70000]})),
            "ADD",
            &netns,
            7,
        ),
        (
            "backwards range",
            with(json!({"skipOutboundPorts": ["9000-8000"]})),
            "ADD",
            &netns,
            7,
        ),
        (
            "bad cidr",
            with(json!({"skipOutboundCidrs": ["10.0.0.0/33"]})),
            "ADD",
            &netns,
            7,
        ),
        (
            "bad kubernetes object",
            with(json!({"kubernetes": {"kubeconfig": 3}})),
            "ADD",
            &netns,
            7,
        ),
        (
            "missing netns",
            good.clone(),
            "ADD",
            "/var/run/netns/weft-does-not-exist",
            3,
        ),
        ("no netns variable", good.clone(), "ADD", "", 4),
        ("unknown command", good.clone(), "FROB", &netns, 4),
    ];
    for (what, conf, command, ns, code) in cases {
        // A raw string is sent as-is (for the not-JSON case).
        let out = if let Value::String(raw) = &conf {
            run_raw(&mesh, command, ns, raw.as_bytes())
        } else {
            weft(&mesh, command, ns, &conf)
        };
        assert!(!out.success, "{what}: must fail");
        let err: Value = out.json().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(err["code"], code, "{what}: {err}");
        assert!(
            err["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {err}"
        );
        assert!(err["details"].is_string(), "{what}: {err}");
        assert!(err["cniVersion"].is_string(), "{what}: {err}");
        assert_eq!(
            out.stdout.trim().lines().count(),
            1,
            "{what}: stdout holds only the error object"
        );
    }
    assert_eq!(weft_tables(&netns), 0, "failed ADDs leave no rules behind");
}

fn run_raw(
    mesh: &Mesh,
    command: &str,
    netns: &str,
    stdin: &[u8],
) -> weft_testbed::cni::PluginOutput {
    use std::io::Write;
    let mut child = std::process::Command::new(mesh.bins.path("weft-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    weft_testbed::cni::PluginOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn counts(client: &Pod, server: &Pod) -> (f64, f64) {
    let c = client
        .metrics()
        .await
        .unwrap()
        .sum("request_total", &[("direction", "outbound")]);
    let s = server
        .metrics()
        .await
        .unwrap()
        .sum("request_total", &[("direction", "inbound")]);
    (c, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_is_never_redirected() {
    let mesh = Mesh::new("cniudp").unwrap();
    let client = mesh.add_pod("client", None).unwrap();
    let server = mesh.add_pod("server", None).unwrap();
    mesh.spawn_proxy(&client, ProxyOptions::default())
        .await
        .unwrap();
    mesh.spawn_proxy(&server, ProxyOptions::default())
        .await
        .unwrap();
    let server_sock = server.enter(|| UdpSocket::bind("0.0.0.0:5353")).unwrap();
    let client_sock = client.enter(|| UdpSocket::bind("0.0.0.0:0")).unwrap();
    server_sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client_sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client_sock
        .send_to(b"ping", SocketAddr::from((server.ip, 5353)))
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = server_sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(
        from.ip(),
        client.ip,
        "the datagram arrived straight from the client pod"
    );
    server_sock.send_to(b"pong", from).unwrap();
    let (n, from) = client_sock.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"pong"[..], std::net::IpAddr::V4(server.ip))
    );
    for pod in [&client, &server] {
        assert_eq!(
            pod.metrics().await.unwrap().sum("tcp_open_total", &[]),
            0.0,
            "no TCP reached the {} proxy",
            pod.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_ports_cidrs_and_the_proxy_uid_are_honoured() {
    let mesh = Mesh::new("cniskip").unwrap();
    let client = mesh
        .add_pod("client", Some(json!({"skipOutboundPorts": [8081]})))
        .unwrap();
    let server = mesh
        .add_pod("server", Some(json!({"skipInboundPorts": ["8082-8083"]})))
        .unwrap();
    let cidr_client = mesh
        .add_pod(
            "cidrclient",
            Some(json!({"skipOutboundCidrs": [format!("{}/32", server.ip)]})),
        )
        .unwrap();
    for port in [HTTP_PORT, 8081, 8082] {
        mesh.spawn_demo(&server, "http", port, "server")
            .await
            .unwrap();
    }
    for pod in [&client, &server, &cidr_client] {
        mesh.spawn_proxy(pod, ProxyOptions::default())
            .await
            .unwrap();
    }
    let get = |pod: &Pod, port: u16| {
        let pod = pod.clone();
        let addr = SocketAddr::from((server.ip, port));
        async move {
            let (status, _) = weft_testbed::http_request(&pod, addr, "GET", "/")
                .await
                .unwrap();
            assert_eq!(status, 200);
        }
    };

    // Skipped outbound port: only the server's proxy sees it.
    let before = counts(&client, &server).await;
    get(&client, 8081).await;
    assert_eq!(
        counts(&client, &server).await,
        (before.0, before.1 + 1.0),
        "skip-outbound port 8081"
    );

    // Skipped inbound port: only the client's proxy sees it.
    let before = counts(&client, &server).await;
    get(&client, 8082).await;
    assert_eq!(
        counts(&client, &server).await,
        (before.0 + 1.0, before.1),
        "skip-inbound port 8082"
    );

    // Normal port: both.
    let before = counts(&client, &server).await;
    get(&client, HTTP_PORT).await;
    assert_eq!(
        counts(&client, &server).await,
        (before.0 + 1.0, before.1 + 1.0),
        "port 8080"
    );

    // Skipped CIDR: the cidr client's proxy is bypassed.
    let before_cidr = cidr_client
        .metrics()
        .await
        .unwrap()
        .sum("request_total", &[]);
    let before = counts(&client, &server).await;
    get(&cidr_client, HTTP_PORT).await;
    assert_eq!(
        cidr_client
            .metrics()
            .await
            .unwrap()
            .sum("request_total", &[]),
        before_cidr,
        "skip-outbound CIDR"
    );
    assert_eq!(counts(&client, &server).await.1, before.1 + 1.0);

    // A process running as the proxy's UID is never redirected.
    let before = counts(&client, &server).await;
    let target = format!("{}:{HTTP_PORT}", server.ip);
    let pid = mesh
        .spawn_as(
            &client,
            "uid2103",
            Some(weft_api::PROXY_UID),
            None,
            &mesh.bins.path("weft-demo"),
            &["get", &target, "/"],
            &[],
        )
        .unwrap();
    let status = mesh.wait_exit(pid, Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{}", mesh.log_of(&client, "uid2103"));
    assert!(
        mesh.log_of(&client, "uid2103")
            .contains("200 hello from server")
    );
    assert_eq!(
        counts(&client, &server).await,
        (before.0, before.1 + 1.0),
        "UID 2103"
    );

    // The admin port is not redirected inbound: a scrape from another pod
    // reaches the admin server, not the inbound listener.
    let before = server
        .metrics()
        .await
        .unwrap()
        .sum("tcp_open_total", &[("direction", "inbound")]);
    let (status, _) = weft_testbed::http_request(
        &cidr_client,
        SocketAddr::from((server.ip, 6191)),
        "GET",
        "/live",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        server
            .metrics()
            .await
            .unwrap()
            .sum("tcp_open_total", &[("direction", "inbound")]),
        before
    );
}

#[test]
fn kubernetes_mode_retries_while_the_api_is_away_and_passes_other_pods_through() {
    let mesh = Mesh::new("cnik8s").unwrap();
    let (netns, prev, _guard) = bridged_pod(&mesh, "k8s");
    // An API server that is not there: loopback of the node, closed port.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("weft-cni.kubeconfig");
    std::fs::write(
        &kubeconfig,
        r#"{"apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": true}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x"}"#,
    )
    .unwrap();
    let conf = weft_conf(
        "0.4.0",
        Some(&prev),
        json!({"kubernetes": {"kubeconfig": kubeconfig, "timeoutMs": 2000}}),
    );
    let add = |args: &str| {
        mesh.cni
            .exec_with_args("weft-cni", "ADD", ("c1", &netns, "eth0"), args, &conf)
            .unwrap()
    };

    // A pod it cannot look up: "try again later", and no rules yet.
    let out = add("IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1");
    assert!(!out.success);
    let err = out.json().unwrap();
    assert_eq!(err["code"], 11, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("demo/web-1"), "{err}");
    assert_eq!(weft_tables(&netns), 0);

    // kube-system is never looked up, and a call that names no pod is not
    // a Kubernetes pod: both pass through untouched.
    for args in [
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1",
        "IgnoreUnknown=1",
    ] {
        let out = add(args);
        assert!(out.success, "{args}: {} {}", out.stdout, out.stderr);
        let mut expected = prev.clone();
        expected["cniVersion"] = json!("0.4.0");
        assert_eq!(out.json().unwrap(), expected);
        assert!(out.stderr.contains("passing through"), "{}", out.stderr);
        assert_eq!(weft_tables(&netns), 0, "{args}");
    }
}
