//! Weft against a real Kubernetes API server (v1.20.2 with etcd; no
//! kubelet): the API server itself calls the injector through the shipped
//! MutatingWebhookConfiguration, and the controller checks real projected
//! service-account tokens with TokenReview and watches real objects.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};
use weft_testbed::kube_api::{self, KubeApi};
use weft_testbed::{Bins, require_root};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `weft-injector` process on loopback, with a serving certificate for
/// 127.0.0.1 from its own CA.
struct Injector {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    ca_pem: String,
    dir: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A folder removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- weft-injector log\n{}", self.log());
        }
    }
}

impl Injector {
    fn start(kubeconfig: &Path) -> Injector {
        let dir = tempfile_dir::Dir(std::path::PathBuf::from(format!(
            "/tmp/weft-kube-injector-{}",
            std::process::id()
        )));
        std::fs::create_dir_all(&dir.0).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(
                &key,
                &rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap(),
            )
            .unwrap();
        let file = |name: &str, contents: &str| {
            let path = dir.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        };
        let cert = file("tls.crt", &leaf.pem());
        let key = file("tls.key", &key.serialize_pem());
        let anchors = file("anchors.crt", &ca.pem());
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let bins = Bins::locate().unwrap();
        let child = Command::new(bins.path("weft-injector"))
            .args(["--listen", &addr.to_string(), "--admin", &admin.to_string()])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--trust-anchors-file")
            .arg(&anchors)
            .args(["--sidecar-mode", "auto"])
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("injector.log")).unwrap())
            .spawn()
            .unwrap();
        Injector {
            child,
            addr,
            admin,
            ca_pem: ca.pem(),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("injector.log")).unwrap_or_default()
    }

    async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        let status = out.split(' ').nth(1)?.parse().ok()?;
        Some((status, out))
    }

    /// The shipped webhook configuration, pointed at this process.
    fn webhook_configuration(&self, name: &str) -> MutatingWebhookConfiguration {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/install/40-injector.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut config = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap())
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .unwrap();
        config["metadata"]["name"] = json!(name);
        let bundle = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        for hook in config["webhooks"].as_array_mut().unwrap() {
            let path = hook["clientConfig"]["service"]["path"]
                .as_str()
                .unwrap()
                .to_string();
            hook["clientConfig"] = json!({
                "url": format!("https://{}{path}", self.addr),
                "caBundle": bundle,
            });
        }
        serde_json::from_value(config).unwrap()
    }
}

fn pod(name: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations, "labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": "weft-demo", "ports": [{"containerPort": 8080}]}]}
    }))
    .unwrap()
}

fn container_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_calls_the_injector_through_the_shipped_webhooks() {
    require_root();
    let api = KubeApi::shared();
    let client = api.client().await.unwrap();
    let injector = Injector::start(&api.kubeconfig);

    // 1.20 has no native sidecars: auto mode must pick classic.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, _)) = injector.admin_get("/ready").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "injector not ready:\n{}",
            injector.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = injector.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("injector_sidecar_mode{mode=\"classic\"} 1"),
        "{metrics}"
    );

    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let hook_name = format!("weft-injector-test-{}", std::process::id());
    hooks
        .create(
            &PostParams::default(),
            &injector.webhook_configuration(&hook_name),
        )
        .await
        .expect("the API server accepts the shipped webhook configuration");

    let meshed = "inject-on";
    let plain = "inject-off";
    kube_api::namespace(&client, meshed, &[("weft.io/inject", "enabled")])
        .await
        .unwrap();
    kube_api::namespace(&client, plain, &[]).await.unwrap();
    let pods = |ns: &str| Api::<Pod>::namespaced(client.clone(), ns);

    // The API server picks up a new webhook configuration within moments;
    // dry-run creations (webhooks without side effects are called for them)
    // tell when.
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let admitted = pods(meshed)
            .create(&dry_run, &pod("probe", json!({})))
            .await
            .unwrap();
        if container_names(&admitted)[0] == "weft-proxy" {
            break;
        }
        assert!(Instant::now() < deadline, "the webhook was never called");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A labelled namespace's pod is injected, classic mode.
    let web = pods(meshed)
        .create(&PostParams::default(), &pod("web", json!({})))
        .await
        .unwrap();
    assert_eq!(container_names(&web), ["weft-proxy", "app"]);
    let proxy = &web.spec.as_ref().unwrap().containers[0];
    assert!(proxy.lifecycle.as_ref().unwrap().post_start.is_some());
    let labels = web.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["weft.io/workload"], "web");
    assert_eq!(labels["weft.io/control-plane-ns"], "weft-system");
    assert!(
        web.spec
            .as_ref()
            .unwrap()
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == "weft-identity-token")
    );
    // Stored as admitted: reading it back gives the same.
    let stored = pods(meshed).get("web").await.unwrap();
    assert_eq!(container_names(&stored), ["weft-proxy", "app"]);

    // Opted out in a labelled namespace; plain and opted in elsewhere.
    let debug = pods(meshed)
        .create(
            &PostParams::default(),
            &pod("debug", json!({"weft.io/inject": "disabled"})),
        )
        .await
        .unwrap();
    assert_eq!(container_names(&debug), ["app"]);
    let other = pods(plain)
        .create(&PostParams::default(), &pod("other", json!({})))
        .await
        .unwrap();
    assert_eq!(container_names(&other), ["app"]);
    let opted_in = pods(plain)
        .create(
            &PostParams::default(),
            &pod("opted-in", json!({"weft.io/inject": "enabled"})),
        )
        .await
        .unwrap();
    assert_eq!(container_names(&opted_in), ["weft-proxy", "app"]);

    // A bad annotation: the pod is refused with the injector's reason.
    let error = pods(meshed)
        .create(
            &PostParams::default(),
            &pod("bad", json!({"config.weft.io/proxy-cpu-limit": "lots"})),
        )
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("denied the request"), "{message}");
    assert!(
        message.contains("config.weft.io/proxy-cpu-limit=\"lots\""),
        "{message}"
    );

    // The failure policy: with no injector, a labelled namespace refuses
    // pods (Fail) while others are not held up (Ignore).
    drop(injector);
    let started = Instant::now();
    let error = pods(meshed)
        .create(&PostParams::default(), &pod("late", json!({})))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("failed calling webhook"),
        "{error}"
    );
    let unaffected = pods(plain)
        .create(
            &PostParams::default(),
            &pod("late", json!({"weft.io/inject": "enabled"})),
        )
        .await
        .unwrap();
    assert_eq!(container_names(&unaffected), ["app"]);
    eprintln!(
        "both creations with the injector down took {:?}",
        started.elapsed()
    );

    hooks
        .delete(&hook_name, &DeleteParams::default())
        .await
        .unwrap();
}

/// A `weft-controller` on loopback next to the API server, reading the
/// API with the admin kubeconfig.
struct HostController {
    child: Child,
    grpc: SocketAddr,
    admin: SocketAddr,
    dir: tempfile_dir::Dir,
}

impl Drop for HostController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- weft-controller log\n{}", self.log());
        }
    }
}

impl HostController {
    fn start(api: &KubeApi, label: &str, discovery: &str) -> HostController {
        let dir = tempfile_dir::Dir(std::path::PathBuf::from(format!(
            "/tmp/weft-kube-controller-{label}-{}",
            std::process::id()
        )));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        let bins = Bins::locate().unwrap();
        let issuer = dir.0.join("issuer");
        weft_testbed::sh(
            &bins.path("weft-controller").to_string_lossy(),
            &["bootstrap", "--out", &issuer.to_string_lossy()],
        )
        .unwrap();
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(bins.path("weft-controller"))
            .arg("serve")
            .arg("--issuer-dir")
            .arg(&issuer)
            .args(["--listen", &grpc.to_string(), "--admin", &admin.to_string()])
            .args(["--token-source", "kubernetes", "--discovery", discovery])
            .args(["--log-level", "info,weft_controller=debug"])
            .env("KUBECONFIG", &api.kubeconfig)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("controller.log")).unwrap())
            .spawn()
            .unwrap();
        HostController {
            child,
            grpc,
            admin,
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("controller.log")).unwrap_or_default()
    }

    async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        admin_get(self.admin, path).await
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = self.admin_get("/ready").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "controller not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = self.admin_get("/metrics").await.unwrap();
        let body = body.split("\r\n\r\n").nth(1).unwrap_or_default();
        weft_testbed::metrics::Scrape::parse(body).sum(name, labels)
    }

    /// A gRPC channel that checks the controller's identity under its
    /// trust anchor, as proxies do.
    async fn channel(&self) -> tonic::transport::Channel {
        let anchors = std::fs::read(self.dir.0.join("issuer/ca.crt")).unwrap();
        let anchors = weft_proxy::tls::load_anchors(&anchors).unwrap();
        let tls = weft_proxy::tls::controller_client_config(anchors).unwrap();
        let id: weft_api::identity::SpiffeId =
            "spiffe://cluster.local/ns/weft-system/sa/weft-controller"
                .parse()
                .unwrap();
        let name = weft_proxy::tls::server_name_for(&id).unwrap();
        let addr = self.grpc;
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_uri| {
                let (tls, name) = (tls.clone(), name.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let stream = tokio_rustls::TlsConnector::from(tls)
                        .connect(name, tcp)
                        .await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap()
    }
}

async fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out))
}

/// A projected service-account token from the API server's TokenRequest,
/// as kubelet mounts it into the proxy.
async fn token_for(client: &kube::Client, ns: &str, account: &str, audience: &str) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_for_real_service_account_tokens_checked_by_token_review() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use weft_api::proto::identity::CertifyRequest;
    use weft_api::proto::identity::identity_client::IdentityClient;

    require_root();
    let api = KubeApi::shared();
    let client = api.client().await.unwrap();
    let ns = "tokens";
    kube_api::namespace(&client, ns, &[]).await.unwrap();
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    for name in ["web", "other", "gone"] {
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        accounts.create(&PostParams::default(), &sa).await.unwrap();
    }
    let controller = HostController::start(api, "tokens", "none");
    controller.wait_ready().await;
    let mut identity = IdentityClient::new(controller.channel().await);

    let web_id = format!("spiffe://cluster.local/ns/{ns}/sa/web");
    let csr = |id: &str| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
        params.serialize_request(&key).unwrap().der().to_vec()
    };
    let audience = weft_api::identity::TOKEN_AUDIENCE;
    let web_token = token_for(&client, ns, "web", audience).await;

    // The right token: a certificate for exactly that service account.
    let issued = identity
        .certify(CertifyRequest {
            identity: web_id.clone(),
            token: web_token.clone(),
            csr_der: csr(&web_id),
        })
        .await
        .expect("a real projected token is accepted")
        .into_inner();
    let (_, leaf) = x509_parser::parse_x509_certificate(&issued.leaf_der).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(
        san.value
            .general_names
            .iter()
            .any(|n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == web_id)),
        "{san:?}"
    );

    // Refusals, each with its reason.
    let gone_token = token_for(&client, ns, "gone", audience).await;
    accounts
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    let cases = [
        (
            "another service account's token",
            token_for(&client, ns, "other", audience).await,
            tonic::Code::PermissionDenied,
            "identity_mismatch",
        ),
        (
            "a token for the API server, not for Weft",
            token_for(&client, ns, "web", "https://kubernetes.default.svc").await,
            tonic::Code::Unauthenticated,
            "wrong_audience",
        ),
        (
            "a token of a deleted service account",
            gone_token,
            tonic::Code::Unauthenticated,
            "unknown_token",
        ),
        (
            "a forged token",
            format!("{}x", &web_token[..web_token.len() - 1]),
            tonic::Code::Unauthenticated,
            "unknown_token",
        ),
    ];
    for (what, token, code, _) in &cases {
        let status = identity
            .certify(CertifyRequest {
                identity: web_id.clone(),
                token: token.clone(),
                csr_der: csr(&web_id),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), *code, "{what}: {status:?}");
    }
    let issued = controller
        .metric("identity_certificates_issued_total", &[])
        .await;
    assert_eq!(issued, 1.0);
    for reason in ["identity_mismatch", "wrong_audience"] {
        assert_eq!(
            controller
                .metric("identity_certificates_refused_total", &[("reason", reason)])
                .await,
            1.0,
            "{reason}"
        );
    }
    assert_eq!(
        controller
            .metric(
                "identity_certificates_refused_total",
                &[("reason", "unknown_token")]
            )
            .await,
        2.0
    );
}
