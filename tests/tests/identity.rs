//! Workload identity and mTLS, end to end: a real controller on the node,
//! real proxies in pods, certificates issued from file-source tokens.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use weft_testbed::identity::{ControllerOptions, identity_env_with_token, spiffe_id};
use weft_testbed::{ProxyOptions, http_request};

fn short_lived() -> ControllerOptions {
    ControllerOptions {
        cert_lifetime: "15s".into(),
        ..Default::default()
    }
}

/// Polls `check` until it returns true or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_traffic_is_encrypted_on_the_wire() {
    use weft_demo::proto::EchoRequest;
    use weft_demo::proto::echo_client::EchoClient;

    let m = meshed_pair("wire", ControllerOptions::default(), &[]).await;
    let p = &m.pair;
    let node = p.mesh.node();
    let pcap = p.mesh.dir.join("bridge.pcap");
    let tcpdump = p
        .mesh
        .spawn(
            &node,
            "tcpdump",
            Path::new("/usr/bin/tcpdump"),
            &[
                "-Z",
                "root",
                "-i",
                "weft0",
                "-U",
                "-s",
                "0",
                "-w",
                &pcap.to_string_lossy(),
                "tcp",
            ],
            &[],
        )
        .unwrap();
    eventually(Duration::from_secs(10), "tcpdump to start", || async {
        p.mesh.log_of(&node, "tcpdump").contains("listening on")
    })
    .await;

    const SECRET: &str = "weft-secret-marker-7f3a9c";
    const CONTROL: &str = "weft-plain-control-5e21d0";
    // HTTP/1, through both proxies.
    let (status, _) = http_request(&p.client, p.http_addr(), "GET", &format!("/?m={SECRET}"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    // gRPC (HTTP/2).
    let grpc = SocketAddr::from((p.server.ip, GRPC_PORT));
    let channel = p.client.grpc_channel(grpc).await.unwrap();
    let reply = EchoClient::new(channel)
        .say(EchoRequest {
            message: SECRET.into(),
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, SECRET);
    // Opaque TCP on a server-speaks-first port.
    {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let stream = p
            .client
            .connect(SocketAddr::from((p.server.ip, BANNER_OPAQUE_PORT)))
            .await
            .unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        assert_eq!(
            lines.next_line().await.unwrap().unwrap(),
            "220 server ready"
        );
        write
            .write_all(format!("{SECRET}\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            lines.next_line().await.unwrap().unwrap(),
            format!("echo: {SECRET}")
        );
    }
    // Control: an unmeshed client (the node) talks plaintext to the server,
    // which permissive mode accepts; its marker must show in the capture,
    // proving the capture sees this traffic at all.
    let (status, _) = http_request(&node, p.http_addr(), "GET", &format!("/?m={CONTROL}"))
        .await
        .unwrap();
    assert_eq!(status, 200);

    tokio::time::sleep(Duration::from_millis(3000)).await;
    eprintln!(
        "{}",
        std::fs::read_to_string(format!("/proc/{tcpdump}/status")).unwrap_or_default()
    );
    p.mesh.terminate(tcpdump).unwrap();
    p.mesh
        .wait_exit(tcpdump, Duration::from_secs(10))
        .await
        .unwrap();
    let captured = std::fs::read(&pcap).unwrap();
    let contains = |needle: &str| {
        captured
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    assert!(
        contains(CONTROL),
        "the capture missed the plaintext control request"
    );
    assert!(
        !contains(SECRET),
        "the marker crossed the bridge in clear text"
    );
    // Mesh traffic keeps the app's port on the wire (NetworkPolicy ports
    // keep their meaning), and every such stream is TLS from its first byte.
    let streams = weft_testbed::wire::tcp_streams(&pcap).unwrap();
    let meshed: Vec<_> = streams
        .iter()
        .filter(|s| s.from.ip() == p.client.ip && s.to.ip() == p.server.ip)
        .collect();
    let ports: std::collections::BTreeSet<u16> = meshed.iter().map(|s| s.to.port()).collect();
    assert_eq!(
        ports,
        [HTTP_PORT, BANNER_OPAQUE_PORT, GRPC_PORT].into(),
        "mesh connections go to the ports the app dialled"
    );
    for stream in meshed.iter().filter(|s| s.from_start) {
        weft_testbed::wire::tls_records(&stream.bytes)
            .unwrap_or_else(|e| panic!("{} -> {} is not TLS: {e}", stream.from, stream.to));
    }
    // Both proxies label the traffic with TLS and the peer's identity.
    let server = p.server.metrics().await.unwrap();
    let client = p.client.metrics().await.unwrap();
    let (cid, sid) = (client_id(), server_id());
    assert!(
        server.sum(
            "request_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", &cid)
            ]
        ) >= 2.0
    );
    assert!(
        server.sum(
            "tcp_open_total",
            &[
                ("direction", "inbound"),
                ("peer", "src"),
                ("tls", "true"),
                ("client_id", &cid)
            ]
        ) >= 3.0
    );
    assert!(
        client.sum(
            "response_total",
            &[
                ("direction", "outbound"),
                ("tls", "true"),
                ("server_id", &sid),
                ("status_code", "200")
            ]
        ) >= 2.0
    );
    assert!(
        client.sum(
            "tcp_open_total",
            &[
                ("direction", "outbound"),
                ("peer", "dst"),
                ("tls", "true"),
                ("server_id", &sid)
            ]
        ) >= 3.0
    );
    // The control request was plaintext and is labelled so.
    assert!(
        server.sum(
            "request_total",
            &[("direction", "inbound"), ("tls", "false")]
        ) >= 1.0
    );
    assert!(client.sum("identity_cert_expiration_timestamp_seconds", &[]) > 1.0e9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_under_load_without_failures() {
    let m = meshed_pair("renew", short_lived(), &[]).await;
    let p = &m.pair;
    let first_expiry = p
        .client
        .metrics()
        .await
        .unwrap()
        .sum("identity_cert_expiration_timestamp_seconds", &[]);
    let stats = run_load(p, Duration::from_secs(40)).await;
    assert!(
        stats.failed.is_empty(),
        "{} failures: {:?}",
        stats.failed.len(),
        &stats.failed[..stats.failed.len().min(10)]
    );
    assert!(stats.ok > 200, "only {} exchanges", stats.ok);
    for pod in [&p.client, &p.server] {
        let metrics = pod.metrics().await.unwrap();
        let refreshed = metrics.sum("identity_cert_refresh_total", &[("result", "success")]);
        // The first certificate plus at least three renewals.
        assert!(refreshed >= 4.0, "{}: {refreshed} certificates", pod.name);
    }
    let last_expiry = p
        .client
        .metrics()
        .await
        .unwrap()
        .sum("identity_cert_expiration_timestamp_seconds", &[]);
    // The load outlived the first certificate, so handshakes late in the
    // run used renewed ones.
    assert!(
        last_expiry >= first_expiry + 25.0,
        "{first_expiry} -> {last_expiry}"
    );
    let issued = p
        .mesh
        .controller_metrics(&m.controller)
        .await
        .unwrap()
        .sum("identity_certificates_issued_total", &[]);
    assert!(issued >= 8.0, "controller issued {issued}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_rotation_under_load_fails_nothing() {
    let m = meshed_pair("rotate", short_lived(), &[]).await;
    let p = &m.pair;
    let mesh = &p.mesh;
    let rotate = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        mesh.rotate_issuer(&m.controller.ca).unwrap();
    };
    let (stats, ()) = tokio::join!(run_load(p, Duration::from_secs(35)), rotate);
    assert!(
        stats.failed.is_empty(),
        "{} failures: {:?}",
        stats.failed.len(),
        &stats.failed[..stats.failed.len().min(10)]
    );
    assert!(stats.ok > 200, "only {} exchanges", stats.ok);
    let metrics = mesh.controller_metrics(&m.controller).await.unwrap();
    assert_eq!(
        metrics.sum("identity_issuer_reloads_total", &[("result", "success")]),
        1.0
    );
    // Both proxies renewed from the new issuer after the reload.
    let log = mesh.controller_log(&m.controller);
    let after = &log[log.find("issuer reloaded").expect("no reload logged")..];
    for id in [client_id(), server_id()] {
        assert!(
            after
                .lines()
                .any(|l| l.contains("certificate issued") && l.contains(&id)),
            "{id} got no certificate from the new issuer:\n{after}"
        );
    }
}

/// The README's three steps, under load: add the new anchor, wait until
/// every proxy trusts it; switch the issuer, wait until every proxy holds
/// a certificate from it; retire the old anchor, wait until no proxy
/// trusts it. New connections (new handshakes) run all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_anchor_rotation_under_load_fails_nothing() {
    let m = meshed_pair("anchors", short_lived(), &[]).await;
    let p = &m.pair;
    let mesh = &p.mesh;
    let ca = &m.controller.ca;
    let pods = [&p.client, &p.server];
    let anchors_of = |pod: &weft_testbed::Pod| {
        let pod = pod.clone();
        async move {
            let metrics = pod.metrics().await.unwrap();
            (
                metrics.label_values("identity_trust_anchor_info", "anchor"),
                metrics.label_values("identity_cert_issuer_info", "issuer"),
            )
        }
    };
    let (old_anchors, _) = anchors_of(&p.client).await;
    assert_eq!(old_anchors.len(), 1, "{old_anchors:?}");
    let load_time = Duration::from_secs(70);
    let started = Instant::now();
    let rotate = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        mesh.rotate_anchor(ca, "add").unwrap();
        eventually(
            Duration::from_secs(30),
            "every proxy trusting both anchors",
            || async {
                let mut all = true;
                for pod in pods {
                    all &= anchors_of(pod).await.0.len() == 2;
                }
                all
            },
        )
        .await;
        let both = anchors_of(&p.client).await.0;
        mesh.rotate_anchor(ca, "issuer").unwrap();
        let new_issuer = || async {
            let metrics = mesh.controller_metrics(&m.controller).await.unwrap();
            metrics.label_values("identity_issuer_info", "issuer")
        };
        eventually(
            Duration::from_secs(30),
            "every proxy on the new issuer",
            || async {
                let issuer = new_issuer().await;
                let mut all = true;
                for pod in pods {
                    all &= anchors_of(pod).await.1 == issuer;
                }
                all && issuer.len() == 1
            },
        )
        .await;
        mesh.rotate_anchor(ca, "retire").unwrap();
        let new_anchor: Vec<String> = both
            .into_iter()
            .filter(|a| !old_anchors.contains(a))
            .collect();
        eventually(
            Duration::from_secs(30),
            "no proxy trusting the old anchor",
            || async {
                let mut all = true;
                for pod in pods {
                    all &= anchors_of(pod).await.0 == new_anchor;
                }
                all
            },
        )
        .await;
        // Handshakes with the new anchor alone, for a while.
        tokio::time::sleep(Duration::from_secs(3)).await;
        started.elapsed()
    };
    let (stats, rotated_in) = tokio::join!(run_load(p, load_time), rotate);
    assert!(
        rotated_in < load_time,
        "the rotation outlasted the load ({rotated_in:?})"
    );
    assert!(
        stats.failed.is_empty(),
        "{} failures: {:?}",
        stats.failed.len(),
        &stats.failed[..stats.failed.len().min(10)]
    );
    assert!(stats.ok > 300, "only {} exchanges", stats.ok);
    let log = mesh.controller_log(&m.controller);
    assert!(log.contains("trust anchors reloaded"), "{log}");

    // A proxy restarted in place (as the kubelet restarts a container)
    // has only the old anchor in its environment, which no longer
    // verifies the controller; the bundle it kept in its cache does.
    let (kept, _) = anchors_of(&p.client).await;
    mesh.terminate(p.client_proxy).unwrap();
    mesh.wait_exit(p.client_proxy, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        m.client_env
            .iter()
            .any(|(k, v)| k == "WEFT_TRUST_ANCHORS" && !v.is_empty()),
        "the client proxy has its first bundle inline"
    );
    mesh.spawn_proxy(
        &p.client,
        ProxyOptions {
            env: m.client_env.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("the restarted proxy gets a certificate");
    assert_eq!(anchors_of(&p.client).await.0, kept);
    let stats = run_load(p, Duration::from_secs(2)).await;
    assert!(stats.failed.is_empty() && stats.ok > 0, "{stats:?}");
    for pod in pods {
        let metrics = pod.metrics().await.unwrap();
        assert_eq!(
            metrics.sum("mtls_refused_total", &[("reason", "tls_handshake")]),
            0.0,
            "{}: {}",
            pod.name,
            metrics.series("mtls_refused_total", &[])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_and_requests_that_cannot_prove_their_identity_are_refused() {
    let m = meshed_pair("refused", ControllerOptions::default(), &[]).await;
    let p = &m.pair;
    let mesh = &p.mesh;

    // A proxy whose certificate comes from another mesh's anchor, claiming
    // the very same identity as the real client.
    let foreign_ca = mesh.make_ca("foreign").unwrap();
    let foreign = mesh
        .start_controller(
            &foreign_ca,
            ControllerOptions {
                grpc_port: 8087,
                admin_port: 9997,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let intruder = mesh.add_pod("intruder", None).unwrap();
    let mut env = mesh
        .identity_env(&foreign, &intruder, NAMESPACE, "client")
        .unwrap();
    env.push((
        "WEFT_MESH_ENDPOINTS".into(),
        format!("{}={}", p.server.ip, server_id()),
    ));
    mesh.spawn_proxy(
        &intruder,
        ProxyOptions {
            env,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (status, body) = http_request(&intruder, p.http_addr(), "GET", "/")
        .await
        .unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("mTLS"), "{body}");
    assert!(
        weft_testbed::identity::NODE_GATEWAY.is_private(),
        "sanity: the controller is on the node bridge"
    );
    eventually(
        Duration::from_secs(5),
        "the server to count the refusal",
        || async {
            p.server.metrics().await.unwrap().sum(
                "mtls_refused_total",
                &[("direction", "inbound"), ("reason", "tls_handshake")],
            ) >= 1.0
        },
    )
    .await;
    // The real client still gets through.
    let (status, _) = http_request(&p.client, p.http_addr(), "GET", "/")
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Proxies that present the wrong token never get a certificate and
    // never become ready.
    let cases = [
        // (pod, token's service account, identity asked for, token flags, reason)
        ("impostor", "client", "server", vec![], "identity_mismatch"),
        (
            "stale",
            "client",
            "client",
            vec!["--expired"],
            "expired_token",
        ),
        (
            "wrongaud",
            "client",
            "client",
            vec!["--audience", "kubernetes"],
            "wrong_audience",
        ),
    ];
    for (name, token_sa, asked_sa, flags, reason) in &cases {
        let pod = mesh.add_pod(name, None).unwrap();
        let token = mesh
            .mint_token(
                &m.controller.ca,
                &format!("{name}-token"),
                NAMESPACE,
                token_sa,
                flags,
            )
            .unwrap();
        let env = identity_env_with_token(&m.controller, &spiffe_id(NAMESPACE, asked_sa), &token)
            .unwrap();
        mesh.spawn_proxy(
            &pod,
            ProxyOptions {
                env,
                no_wait: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        eventually(Duration::from_secs(10), reason, || async {
            mesh.controller_metrics(&m.controller)
                .await
                .unwrap()
                .sum("identity_certificates_refused_total", &[("reason", reason)])
                >= 1.0
        })
        .await;
        let (status, body) = pod.admin_get("/ready").await.unwrap();
        assert_eq!(status, 503, "{name}: {body}");
        assert!(body.contains("no workload certificate"), "{body}");
        // The controller counts a refusal before the proxy has logged it.
        eventually(Duration::from_secs(5), name, || async {
            mesh.log_of(&pod, "proxy")
                .contains("certificate request failed")
        })
        .await;
    }
    assert!(
        mesh.controller_log(&m.controller)
            .contains("identity_mismatch")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_refuses_garbage_and_mismatched_csrs() {
    use weft_api::proto::identity::CertifyRequest;
    use weft_api::proto::identity::identity_client::IdentityClient;

    let m = meshed_pair("csr", ControllerOptions::default(), &[]).await;
    let mesh = &m.pair.mesh;
    let node = mesh.node();
    let anchors =
        weft_proxy::tls::load_anchors(&std::fs::read(m.controller.ca.anchors()).unwrap()).unwrap();
    let tls = weft_proxy::tls::controller_client_config(anchors).unwrap();
    let controller_id: weft_api::identity::SpiffeId =
        spiffe_id("weft-system", "weft-controller").parse().unwrap();
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
    let mut client = IdentityClient::new(channel);
    let token = std::fs::read_to_string(
        mesh.mint_token(&m.controller.ca, "csr-token", NAMESPACE, "client", &[])
            .unwrap(),
    )
    .unwrap();
    let csr = |sans: &[&str]| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| rcgen::SanType::URI((*s).try_into().unwrap()))
            .collect();
        params.serialize_request(&key).unwrap().der().to_vec()
    };
    let mut ask = async |identity: String, token: &str, csr_der: Vec<u8>| {
        client
            .certify(CertifyRequest {
                identity,
                token: token.into(),
                csr_der,
            })
            .await
    };
    let ok = ask(client_id(), &token, csr(&[&client_id()]))
        .await
        .unwrap();
    assert!(!ok.into_inner().leaf_der.is_empty());
    let cases = [
        (
            client_id(),
            token.clone(),
            b"garbage".to_vec(),
            tonic::Code::InvalidArgument,
        ),
        (
            client_id(),
            token.clone(),
            csr(&[&server_id()]),
            tonic::Code::InvalidArgument,
        ),
        (
            server_id(),
            token.clone(),
            csr(&[&server_id()]),
            tonic::Code::PermissionDenied,
        ),
        (
            "not-an-id".into(),
            token.clone(),
            csr(&[&client_id()]),
            tonic::Code::InvalidArgument,
        ),
        (
            client_id(),
            "garbage".into(),
            csr(&[&client_id()]),
            tonic::Code::Unauthenticated,
        ),
    ];
    for (identity, token, csr_der, code) in cases {
        let status = ask(identity.clone(), &token, csr_der).await.unwrap_err();
        assert_eq!(status.code(), code, "{identity}: {status:?}");
        assert!(!status.message().is_empty());
    }
    let metrics = mesh.controller_metrics(&m.controller).await.unwrap();
    for reason in [
        "malformed_csr",
        "csr_san_mismatch",
        "identity_mismatch",
        "malformed_identity",
        "malformed_token",
    ] {
        assert_eq!(
            metrics.sum("identity_certificates_refused_total", &[("reason", reason)]),
            1.0,
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_wait_for_a_late_controller_and_outlive_a_lost_one() {
    let mesh = weft_testbed::Mesh::new("ctldown").unwrap();
    let client = mesh.add_pod("client", None).unwrap();
    let server = mesh.add_pod("server", None).unwrap();
    mesh.spawn_demo(&server, "http", HTTP_PORT, "server")
        .await
        .unwrap();
    mesh.spawn_demo(&server, "banner", BANNER_OPAQUE_PORT, "server")
        .await
        .unwrap();
    let ca = mesh.make_ca("ca").unwrap();
    // The controller's address, before the controller exists.
    let planned = weft_testbed::identity::Controller {
        pid: 0,
        ca: ca.clone(),
        options: ControllerOptions::default(),
    };
    for (pod, sa) in [(&client, "client"), (&server, "server")] {
        let token = mesh
            .mint_token(&ca, &format!("{sa}-token"), NAMESPACE, sa, &[])
            .unwrap();
        let mut env = identity_env_with_token(&planned, &spiffe_id(NAMESPACE, sa), &token).unwrap();
        // Discovery knows no pods here: each side pins the other.
        let (peer, id) = match sa {
            "client" => (&server, server_id()),
            _ => (&client, client_id()),
        };
        env.push(("WEFT_MESH_ENDPOINTS".into(), format!("{}={id}", peer.ip)));
        mesh.spawn_proxy(
            pod,
            ProxyOptions {
                env,
                no_wait: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    // Without a controller the proxies run but are not ready.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for pod in [&client, &server] {
        let (status, body) = pod.admin_get("/ready").await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(
            pod.metrics()
                .await
                .unwrap()
                .sum("identity_cert_refresh_total", &[("result", "failure")])
                >= 1.0
        );
    }
    let controller = mesh
        .start_controller(&ca, ControllerOptions::default())
        .await
        .unwrap();
    for pod in [&client, &server] {
        pod.wait_ready(Duration::from_secs(20)).await.unwrap();
    }
    let pair = Pair {
        mesh,
        client,
        server,
        client_proxy: 0,
        server_proxy: 0,
    };
    let (status, _) = http_request(&pair.client, pair.http_addr(), "GET", "/")
        .await
        .unwrap();
    assert_eq!(status, 200);

    // The controller goes away; traffic, new mTLS connections included,
    // keeps flowing on the current certificates.
    pair.mesh.terminate(controller.pid).unwrap();
    pair.mesh
        .wait_exit(controller.pid, Duration::from_secs(10))
        .await
        .unwrap();
    let stats = run_load(&pair, Duration::from_secs(5)).await;
    assert!(
        stats.failed.is_empty(),
        "{:?}",
        &stats.failed[..stats.failed.len().min(10)]
    );
    assert!(stats.ok > 50, "only {} exchanges", stats.ok);
    for pod in [&pair.client, &pair.server] {
        assert_eq!(pod.admin_get("/ready").await.unwrap().0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_refuses_plaintext_and_permissive_accepts_it() {
    let strict = meshed_pair(
        "strict",
        ControllerOptions::default(),
        &[("WEFT_INBOUND_MTLS", "strict")],
    )
    .await;
    let p = &strict.pair;
    let node = p.mesh.node();
    // Meshed clients get through.
    let (status, _) = http_request(&p.client, p.http_addr(), "GET", "/")
        .await
        .unwrap();
    assert_eq!(status, 200);
    banner_once(
        &p.client,
        SocketAddr::from((p.server.ip, BANNER_OPAQUE_PORT)),
    )
    .await
    .unwrap();
    // An unmeshed client (the node) is cut off, whatever it speaks.
    assert!(
        http_request(&node, p.http_addr(), "GET", "/")
            .await
            .is_err()
    );
    assert!(
        banner_once(&node, SocketAddr::from((p.server.ip, BANNER_OPAQUE_PORT)))
            .await
            .is_err()
    );
    let refused = p.server.metrics().await.unwrap().sum(
        "mtls_refused_total",
        &[("direction", "inbound"), ("reason", "plaintext")],
    );
    assert!(refused >= 2.0, "{refused}");

    // Permissive (the default) accepts the same unmeshed client.
    let permissive = meshed_pair("permissive", ControllerOptions::default(), &[]).await;
    let p = &permissive.pair;
    let node = p.mesh.node();
    let (status, _) = http_request(&node, p.http_addr(), "GET", "/")
        .await
        .unwrap();
    assert_eq!(status, 200);
    banner_once(&node, SocketAddr::from((p.server.ip, BANNER_OPAQUE_PORT)))
        .await
        .unwrap();
}

/// A controller without its issuer says so and exits, naming the file and
/// the cause once (it used to print the cause twice).
#[test]
fn a_controller_without_an_issuer_names_the_missing_file_once() {
    let bins = weft_testbed::Bins::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-issuer");
    let out = std::process::Command::new(bins.path("weft-controller"))
        .args(["serve", "--issuer-dir", &missing.to_string_lossy()])
        .env("WEFT_TOKEN_SOURCE", "file:/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let file = missing.join("ca.crt");
    assert!(
        stderr.contains(&format!("cannot read {}", file.display())),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}
