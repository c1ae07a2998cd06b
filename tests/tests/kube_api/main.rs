//! Weft against a real Kubernetes API server (the version tests/kube/go
//! pins, with etcd; no
//! kubelet): the API server itself calls the injector through the shipped
//! MutatingWebhookConfiguration, and the controller checks real projected
//! service-account tokens with TokenReview and watches real objects.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use weft_testbed::kube_api::{self, KubeApi};
use weft_testbed::{Bins, require_root};

#[path = "../kube_common/mod.rs"]
mod kube_common;
use kube_common::{HostProcess, Injector, admin_get, args, free_port};

fn pod(name: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations, "labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": "weft-demo", "ports": [{"containerPort": 8080}]}]}
    }))
    .unwrap()
}

/// Init containers, then containers, by name.
fn container_names(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| c.name.clone())
        .collect()
}

/// What a native-mode injection makes of a one-container pod.
const NATIVE: [&str; 3] = ["weft-validate", "weft-proxy", "app"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_calls_the_injector_through_the_shipped_webhooks() {
    require_root();
    let api = KubeApi::shared();
    let client = api.client().await.unwrap();
    let injector = Injector::start(&api.kubeconfig);

    // A current cluster has native sidecars: auto mode must pick them.
    injector.wait_ready().await;
    let (_, metrics) = injector.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("injector_sidecar_mode{mode=\"native\"} 1"),
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
        if container_names(&admitted).contains(&"weft-proxy".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "the webhook was never called");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A labelled namespace's pod is injected, native mode: the proxy is
    // an init container that keeps running, held ready by a startup probe.
    let web = pods(meshed)
        .create(&PostParams::default(), &pod("web", json!({})))
        .await
        .unwrap();
    assert_eq!(container_names(&web), NATIVE);
    let proxy = &web.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert!(proxy.startup_probe.is_some());
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
    assert_eq!(container_names(&stored), NATIVE);

    // Opted out in a labelled namespace; plain and opted in elsewhere.
    let admitted = async |ns: &str, name: &str, annotations: Value| {
        let created = pods(ns)
            .create(&PostParams::default(), &pod(name, annotations))
            .await
            .unwrap();
        container_names(&created)
    };
    let opt_out = json!({"weft.io/inject": "disabled"});
    let opt_in = json!({"weft.io/inject": "enabled"});
    assert_eq!(admitted(meshed, "debug", opt_out).await, ["app"]);
    assert_eq!(admitted(plain, "other", json!({})).await, ["app"]);
    assert_eq!(admitted(plain, "opted-in", opt_in).await, NATIVE);

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

/// A `weft-controller` next to the API server, with an issuer of its own.
struct HostController {
    process: HostProcess,
    grpc: SocketAddr,
    admin: SocketAddr,
}

impl HostController {
    /// Starts a controller that talks to the API as `kubeconfig` says.
    fn start(kubeconfig: &Path, label: &str, discovery: &str) -> HostController {
        let dir = HostProcess::folder("controller", label);
        let bin = Bins::locate().unwrap().path("weft-controller");
        let issuer = dir.join("issuer");
        weft_testbed::sh(
            &bin.to_string_lossy(),
            &["bootstrap", "--out", &issuer.to_string_lossy()],
        )
        .unwrap();
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let command = args(&[
            &bin,
            &"serve",
            &"--issuer-dir",
            &issuer,
            &"--listen",
            &grpc.to_string(),
            &"--admin",
            &admin.to_string(),
            &"--token-source",
            &"kubernetes",
            &"--discovery",
            &discovery,
            &"--log-level",
            &"info,weft_controller=debug",
        ]);
        HostController {
            process: HostProcess::spawn("weft-controller", dir, command, kubeconfig),
            grpc,
            admin,
        }
    }

    fn log(&self) -> String {
        self.process.log()
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
        let anchors = std::fs::read(self.process.dir.join("issuer/ca.crt")).unwrap();
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

/// The token with its subject rewritten and the signature kept: what an
/// attacker holding one token could try. (Flipping the signature's last
/// character is no test: its low bits are padding that decoders ignore.)
fn forge(token: &str, from: &str, to: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT");
    let claims = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    assert!(claims.contains(from), "{claims}");
    let forged = b64.encode(claims.replace(from, to));
    format!("{}.{forged}.{}", parts[0], parts[2])
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
    // The controller runs as its own service account, with only the
    // shipped RBAC.
    let kubeconfig = api.controller_kubeconfig(&client).await.unwrap();
    let controller = HostController::start(&kubeconfig, "tokens", "none");
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
    let cases = [
        (
            "another service account's token",
            token_for(&client, ns, "other", audience).await,
            tonic::Code::PermissionDenied,
        ),
        (
            "a token for the API server, not for Weft",
            token_for(&client, ns, "web", "https://kubernetes.default.svc").await,
            tonic::Code::Unauthenticated,
        ),
        (
            "not a token at all (refused before any TokenReview)",
            "not.a-jwt".to_string(),
            tonic::Code::Unauthenticated,
        ),
        (
            "a token whose claims were rewritten",
            forge(
                &web_token,
                "system:serviceaccount:tokens:web",
                "system:serviceaccount:tokens:admin",
            ),
            tonic::Code::Unauthenticated,
        ),
    ];
    for (what, token, code) in &cases {
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
    let refused = |reason: &'static str| {
        let controller = &controller;
        async move {
            controller
                .metric("identity_certificates_refused_total", &[("reason", reason)])
                .await
        }
    };
    assert_eq!(
        controller
            .metric("identity_certificates_issued_total", &[])
            .await,
        1.0
    );
    assert_eq!(refused("identity_mismatch").await, 1.0);
    assert_eq!(refused("wrong_audience").await, 1.0);
    assert_eq!(refused("unknown_token").await, 1.0);
    assert_eq!(refused("malformed_token").await, 1.0);

    // A deleted service account's token stops working as soon as the API
    // server's own cache has seen the deletion.
    let gone_id = format!("spiffe://cluster.local/ns/{ns}/sa/gone");
    let gone_token = token_for(&client, ns, "gone", audience).await;
    accounts
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let result = identity
            .certify(CertifyRequest {
                identity: gone_id.clone(),
                token: gone_token.clone(),
                csr_der: csr(&gone_id),
            })
            .await;
        match result {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
                break;
            }
            Ok(_) => assert!(
                started.elapsed() < Duration::from_secs(15),
                "a deleted service account's token still works after 15 s"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "deleted account's token refused after {:?}",
        started.elapsed()
    );
}

mod discovery;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_manifests_are_accepted_and_rbac_is_least_privilege() {
    use k8s_openapi::api::core::v1::Secret;
    require_root();
    let api = KubeApi::shared();
    let client = api.client().await.unwrap();
    let install = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/install");
    let mut files: Vec<_> = std::fs::read_dir(&install)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("05-secrets.yaml"))
        .collect();
    // The generated part, as the documented command makes it.
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets = secrets_dir.path().join("05-secrets.yaml");
    let status = std::process::Command::new(Bins::locate().unwrap().path("weft-controller"))
        .arg("install-secrets")
        .arg("--pki")
        .arg(secrets_dir.path().join("pki"))
        .arg("--out")
        .arg(&secrets)
        .status()
        .unwrap();
    assert!(status.success());
    files.push(secrets);
    files.sort_by_key(|p| p.file_name().unwrap().to_owned());
    // The Gateway API CRDs, applied first as the README says.
    let gateway_api: Vec<_> = std::fs::read_dir(install.join("gateway-api"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.splice(0..0, gateway_api);
    // The namespace for real (namespaced objects need it even in a dry
    // run), then everything as `kubectl apply --dry-run=server` would.
    kube_api::create_all(
        &client,
        &kube_api::manifest(&install.join("00-namespace.yaml")).unwrap(),
        false,
    )
    .await
    .unwrap();
    let mut accepted = Vec::new();
    for file in &files {
        let docs = kube_api::manifest(file).unwrap();
        let names = kube_api::create_all(&client, &docs, true)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
        accepted.extend(names);
    }
    for expected in [
        "Namespace/weft-system",
        "CustomResourceDefinition/trafficsplits.split.smi-spec.io",
        "CustomResourceDefinition/httproutes.gateway.networking.k8s.io",
        "CustomResourceDefinition/grpcroutes.gateway.networking.k8s.io",
        "CustomResourceDefinition/referencegrants.gateway.networking.k8s.io",
        "ClusterRole/weft-controller",
        "ClusterRoleBinding/weft-controller",
        "ServiceAccount/weft-controller",
        "Deployment/weft-injector",
        "Service/weft-injector",
        "MutatingWebhookConfiguration/weft-injector",
        "Deployment/weft-controller",
        "Service/weft-controller",
        "DaemonSet/weft-cni",
        "ClusterRole/weft-cni",
        "Secret/weft-identity-issuer",
        "Secret/weft-injector-tls",
        "ConfigMap/weft-trust-anchors",
    ] {
        assert!(
            accepted.iter().any(|a| a == expected),
            "{expected} not in {accepted:?}"
        );
    }

    // The controller's account reads what discovery needs and nothing more.
    let kubeconfig = api.controller_kubeconfig(&client).await.unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let as_controller = kube::Client::try_from(config).unwrap();
    Api::<Pod>::all(as_controller.clone())
        .list(&Default::default())
        .await
        .expect("the controller may list pods");
    for (what, result) in [
        (
            "read secrets",
            Api::<Secret>::all(as_controller.clone())
                .list(&Default::default())
                .await
                .map(|_| ()),
        ),
        (
            "create pods",
            Api::<Pod>::namespaced(as_controller.clone(), "weft-system")
                .create(&PostParams::default(), &pod("nope", json!({})))
                .await
                .map(|_| ()),
        ),
    ] {
        match result {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{what}: {e:?}"),
            other => panic!("the controller may {what}: {other:?}"),
        }
    }
}

mod route_status;
