//! The real `weft-injector` binary over HTTPS: real AdmissionReview JSON
//! in, base64 JSON Patch out, bad requests refused with clear errors, and
//! the serving certificate swapped without a restart.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

const SERVER_NAME: &str = "weft-injector.weft-system.svc";

struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weft webhook test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    /// A serving certificate for the webhook's Service name; returns the
    /// PEM chain and key.
    fn serving(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(self.ca.der(), &self.ca_key).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes a file the way Kubernetes updates a Secret volume: whole, at once.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Injector {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: tempfile::TempDir,
    pki: Pki,
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("injector.log"));
            eprintln!("--- weft-injector log\n{}", log.unwrap_or_default());
        }
    }
}

impl Injector {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (cert, key) = pki.serving();
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), pki.ca.pem()).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_weft-injector"))
            .args(["--listen", &addr.to_string(), "--admin", &admin.to_string()])
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .arg("--trust-anchors-file")
            .arg(dir.path().join("ca.crt"))
            .args(["--sidecar-mode", "classic", "--reload-interval", "100ms"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("injector.log")).unwrap())
            .spawn()
            .expect("start weft-injector");
        let injector = Injector {
            child,
            addr,
            admin,
            dir,
            pki,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _, _)) = injector.request("GET", "/healthz", "", b"", false) {
                break;
            }
            assert!(Instant::now() < deadline, "weft-injector did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        injector
    }

    /// One HTTPS request; `h2` chooses HTTP/2 (as the API server does).
    /// Returns the status, body and the server's leaf certificate.
    fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
        h2: bool,
    ) -> anyhow::Result<(u16, Vec<u8>, CertificateDer<'static>)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.pki.ca.der().clone())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let req = http::Request::builder()
            .method(method)
            .uri(format!("https://{SERVER_NAME}{path}"))
            .header(http::header::HOST, SERVER_NAME);
        let req = if content_type.is_empty() {
            req
        } else {
            req.header(http::header::CONTENT_TYPE, content_type)
        };
        let req = req.body(Full::new(Bytes::copy_from_slice(body)))?;
        runtime.block_on(async {
            let tcp = tokio::net::TcpStream::connect(self.addr).await?;
            let tls = connector
                .connect(ServerName::try_from(SERVER_NAME)?, tcp)
                .await?;
            let leaf = tls.get_ref().1.peer_certificates().unwrap()[0]
                .clone()
                .into_owned();
            let resp = if h2 {
                let (mut sender, conn) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    TokioIo::new(tls),
                )
                .await?;
                tokio::spawn(conn);
                sender.send_request(req).await?
            } else {
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(conn);
                sender.send_request(req).await?
            };
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes().to_vec();
            Ok((status, body, leaf))
        })
    }

    fn review(&self, path: &str, review: &Value) -> (u16, Vec<u8>) {
        let body = serde_json::to_vec(review).unwrap();
        let (status, body, _) = self
            .request("POST", path, "application/json", &body, true)
            .unwrap();
        (status, body)
    }

    fn metrics(&self) -> String {
        let mut stream = std::net::TcpStream::connect(self.admin).unwrap();
        use std::io::{Read, Write};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

fn podinfo() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/podinfo.pod.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn injects_over_https_in_both_http_versions() {
    let injector = Injector::start();
    let pod = podinfo();
    for h2 in [true, false] {
        let body = serde_json::to_vec(&common::review_of(&pod, "demo", "uid-1")).unwrap();
        let (status, body, _) = injector
            .request("POST", "/inject", "application/json", &body, h2)
            .unwrap();
        assert_eq!(status, 200);
        let (response, patch) = common::decode_response(&body);
        assert_eq!(response["uid"], "uid-1");
        assert_eq!(response["allowed"], true);
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, &patch.expect("patch")).unwrap();
        let injected: Pod = serde_json::from_value(doc).unwrap();
        let spec = injected.spec.unwrap();
        // The injector runs in classic mode here.
        assert_eq!(spec.containers[0].name, "weft-proxy");
        assert_eq!(spec.containers[1].name, "podinfo");
        let anchors = spec.containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "WEFT_TRUST_ANCHORS")
            .and_then(|e| e.value.clone())
            .unwrap();
        assert_eq!(anchors, injector.pki.ca.pem().trim().to_string() + "\n");
    }

    // The other path: only annotated pods.
    let (status, body) = injector.review(
        "/inject-annotated",
        &common::review_of(&pod, "demo", "uid-2"),
    );
    assert_eq!(status, 200);
    let (response, patch) = common::decode_response(&body);
    assert_eq!(response["allowed"], true);
    assert!(patch.is_none());

    // A bad annotation: denied, and the message names it.
    let mut bad = pod.clone();
    bad["metadata"]["annotations"]["config.weft.io/proxy-memory-limit"] = json!("lots");
    let (status, body) = injector.review("/inject", &common::review_of(&bad, "demo", "uid-3"));
    assert_eq!(status, 200);
    let (response, patch) = common::decode_response(&body);
    assert_eq!(response["allowed"], false);
    assert!(patch.is_none());
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("config.weft.io/proxy-memory-limit=\"lots\""),
        "{message}"
    );

    assert_eq!(
        injector.metric("injector_admissions_total{outcome=\"injected\",reason=\"\"}"),
        2.0
    );
    assert_eq!(
        injector.metric("injector_admissions_total{outcome=\"skipped\",reason=\"not_requested\"}"),
        1.0
    );
    assert_eq!(
        injector.metric("injector_admissions_total{outcome=\"denied\",reason=\"bad_annotation\"}"),
        1.0
    );
    assert_eq!(
        injector.metric("injector_sidecar_mode{mode=\"classic\"}"),
        1.0
    );
}

#[test]
fn bad_requests_get_clear_errors_and_break_nothing() {
    let injector = Injector::start();
    let pod = podinfo();
    let good = common::review_of(&pod, "demo", "uid-ok");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        (
            "not JSON",
            b"{\"apiVersion\": ".to_vec(),
            "application/json",
            400,
            "body is not JSON",
        ),
        (
            "empty body",
            Vec::new(),
            "application/json",
            400,
            "body is not JSON",
        ),
        (
            "v1beta1 review",
            with(&|v| v["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            "application/json",
            400,
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            "not a review",
            with(&|v| v["kind"] = json!("ConfigMap")),
            "application/json",
            400,
            "kind AdmissionReview",
        ),
        (
            "no request",
            with(&|v| {
                v.as_object_mut().unwrap().remove("request");
            }),
            "application/json",
            400,
            "has no request",
        ),
        (
            "request is a string",
            with(&|v| v["request"] = json!("pod please")),
            "application/json",
            400,
            "malformed AdmissionReview",
        ),
        (
            "no uid",
            with(&|v| v["request"]["uid"] = json!("")),
            "application/json",
            400,
            "no uid",
        ),
        (
            "no object",
            with(&|v| v["request"]["object"] = Value::Null),
            "application/json",
            400,
            "has no object",
        ),
        (
            "object is not a pod",
            with(&|v| v["request"]["object"]["spec"]["containers"] = json!("nginx")),
            "application/json",
            400,
            "not a valid Pod",
        ),
        (
            "no namespace",
            with(&|v| {
                v["request"].as_object_mut().unwrap().remove("namespace");
                v["request"]["object"]["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("namespace");
            }),
            "application/json",
            400,
            "no namespace",
        ),
        (
            "YAML",
            b"apiVersion: v1".to_vec(),
            "application/yaml",
            415,
            "expected application/json",
        ),
        (
            "too big",
            vec![b' '; weft_injector::server::MAX_BODY + 1],
            "application/json",
            413,
            "larger than",
        ),
    ];
    for (what, body, content_type, status, message) in cases {
        let (got, text, _) = injector
            .request("POST", "/inject", content_type, &body, true)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let text = String::from_utf8_lossy(&text);
        assert_eq!(got, status, "{what}: {text}");
        assert!(text.contains(message), "{what}: {text}");
        assert!(text.starts_with("weft-injector: "), "{what}: {text}");
    }
    let bad = injector.metric("injector_bad_requests_total");
    assert!(bad >= 12.0, "{bad}");

    // Not a pod (a webhook rule too wide): let through untouched, with a warning.
    let mut deployment = good.clone();
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    deployment["request"]["resource"] =
        json!({"group": "apps", "version": "v1", "resource": "deployments"});
    let (status, body) = injector.review("/inject", &deployment);
    assert_eq!(status, 200);
    let (response, patch) = common::decode_response(&body);
    assert_eq!(response["allowed"], true);
    assert!(patch.is_none());
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("only mutates pods")
    );
    // An update: allowed untouched.
    let mut update = good.clone();
    update["request"]["operation"] = json!("UPDATE");
    let (response, patch) = common::decode_response(&injector.review("/inject", &update).1);
    assert_eq!(
        (response["allowed"].clone(), patch.is_none()),
        (json!(true), true)
    );

    // Wrong method, unknown path.
    assert_eq!(
        injector
            .request("GET", "/inject", "", b"", false)
            .unwrap()
            .0,
        405
    );
    assert_eq!(
        injector
            .request("GET", "/mutate", "", b"", false)
            .unwrap()
            .0,
        404
    );
    // A client that is not speaking TLS at all does not hurt the server.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(injector.addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }

    // After all that, it still injects.
    let (status, body) = injector.review("/inject", &good);
    assert_eq!(status, 200);
    assert!(common::decode_response(&body).1.is_some());
}

impl Injector {
    /// A TLS connection to the webhook, for writing raw HTTP.
    async fn tls(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.pki.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        connector.connect(name, tcp).await.unwrap()
    }
}

#[test]
fn floods_and_slow_clients_do_not_stop_reviews() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let injector = Injector::start();
    let good = serde_json::to_vec(&common::review_of(&podinfo(), "demo", "uid-1")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A flood of idle connections from one address (127.0.0.2): its share
    // is held, the rest closed on accept.
    let flood = runtime.block_on(async {
        let mut flood = Vec::new();
        for _ in 0..300 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
            flood.push(socket.connect(injector.addr).await.unwrap());
        }
        flood
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while injector.metric("injector_connections_refused_total") < 172.0 {
        assert!(Instant::now() < deadline, "{}", injector.metrics());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A body that never finishes, and a head that never does, while
    // reviews go on.
    let started = Instant::now();
    let (slow_body, slow_head) = std::thread::scope(|scope| {
        let reviews = scope.spawn(|| {
            for _ in 0..5 {
                let (status, _, _) = injector
                    .request("POST", "/inject", "application/json", &good, true)
                    .unwrap();
                assert_eq!(status, 200);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let slow = runtime.block_on(async {
        let mut body = injector.tls().await;
        body.write_all(
            b"POST /inject HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"kind\":",
        )
        .await
        .unwrap();
        let mut head = injector.tls().await;
        head.write_all(b"POST /inject HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let read_all = |mut stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>| async move {
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        tokio::join!(read_all(body), read_all(head))
        });
        reviews.join().unwrap();
        slow
    });
    let waited = started.elapsed();
    assert!(slow_body.starts_with("HTTP/1.1 408"), "{slow_body:?}");
    assert!(
        slow_body.contains("body not received within"),
        "{slow_body:?}"
    );
    assert!(
        waited < Duration::from_secs(20),
        "slow clients held on for {waited:?}"
    );
    // The stalled head got no request at all; its connection was closed.
    assert!(!slow_head.contains("200"), "{slow_head:?}");
    // The flood is still open, and reviews are answered.
    let (status, body, _) = injector
        .request("POST", "/inject", "application/json", &good, true)
        .unwrap();
    assert_eq!(status, 200);
    assert!(common::decode_response(&body).1.is_some());
    drop(flood);
}

#[test]
fn serving_certificate_is_reloaded_in_place() {
    let injector = Injector::start();
    let leaf = |i: &Injector| i.request("GET", "/healthz", "", b"", false).unwrap().2;
    let first = leaf(&injector);

    // A renewed certificate is served without a restart.
    let (cert, key) = injector.pki.serving();
    replace(&injector.dir.path().join("tls.key"), &key);
    replace(&injector.dir.path().join("tls.crt"), &cert);
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        let now = leaf(&injector);
        if now != first {
            break now;
        }
        assert!(Instant::now() < deadline, "new certificate not served");
        std::thread::sleep(Duration::from_millis(50));
    };
    let expected = rustls_pemfile::certs(&mut cert.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(second, expected);
    assert!(injector.metric("injector_certificate_reloads_total{result=\"success\"}") >= 1.0);

    // A broken one is refused and the good one kept.
    replace(&injector.dir.path().join("tls.crt"), "not a certificate");
    let deadline = Instant::now() + Duration::from_secs(10);
    while injector.metric("injector_certificate_reloads_total{result=\"failure\"}") < 1.0 {
        assert!(Instant::now() < deadline, "broken certificate not noticed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(leaf(&injector), second);
    let (status, _) = injector.review("/inject", &common::review_of(&podinfo(), "demo", "u"));
    assert_eq!(status, 200);
}

#[test]
fn stops_cleanly_on_sigterm() {
    let mut injector = Injector::start();
    let pid = nix::unistd::Pid::from_raw(injector.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = injector.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the injector on `dir`'s files and expects it to fail at once,
/// returning what it said.
fn failed_start(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-injector"))
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .arg("--trust-anchors-file")
        .arg(dir.join("ca.crt"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--sidecar-mode",
            "classic",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn refuses_to_start_without_a_usable_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key) = pki.serving();
    std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
    std::fs::write(dir.path().join("tls.key"), &key).unwrap();
    std::fs::write(dir.path().join("ca.crt"), pki.ca.pem()).unwrap();
    let stderr = failed_start(dir.path());
    assert!(
        stderr.contains("no certificate in the certificate file"),
        "{stderr}"
    );

    // A key that is not the certificate's.
    std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), pki.serving().1).unwrap();
    let stderr = failed_start(dir.path());
    assert!(
        stderr.contains("the key does not match the certificate"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("tls.key"), &key).unwrap();
    std::fs::write(dir.path().join("ca.crt"), "not pem").unwrap();
    let stderr = failed_start(dir.path());
    assert!(
        stderr.contains("no certificate in the trust anchors"),
        "{stderr}"
    );
}
