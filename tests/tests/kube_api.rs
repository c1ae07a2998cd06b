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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, _)) = injector.admin_get("/ready").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "injector not ready:\n{}",
            injector.process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

mod discovery {
    //! The controller's Kubernetes source: objects made through the API
    //! reach a proxy's Destination stream, as do their updates and
    //! deletions, and a restarted controller serves the same state.

    use std::time::{Duration, Instant};

    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{
        Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
        PostParams,
    };
    use serde::Deserialize;
    use serde_json::{Value, json};
    use tonic::Streaming;
    use weft_api::proto::destination::destination_client::DestinationClient;
    use weft_api::proto::destination::{DestinationUpdate, GetDestination};
    use weft_testbed::kube_api::{self, KubeApi};
    use weft_testbed::require_root;

    use super::HostController;

    const NS: &str = "disco";

    fn dynamic(
        client: &kube::Client,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        Api::namespaced_with(client.clone(), NS, &ApiResource::from_gvk(&gvk))
    }

    async fn create(api: &Api<DynamicObject>, value: Value) {
        let object: DynamicObject = serde_json::from_value(value).unwrap();
        api.create(&PostParams::default(), &object).await.unwrap();
    }

    async fn service(client: &kube::Client, name: &str, ip: &str, annotations: Value) {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), NS)
            .create(&PostParams::default(), &svc)
            .await
            .unwrap();
    }

    /// A `discovery.k8s.io/v1` EndpointSlice, as current clusters serve them.
    fn slice(service: &str, endpoints: &[(&str, &str, bool)]) -> Value {
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|(ip, pod, ready)| {
                json!({
                    "addresses": [ip],
                    "conditions": {"ready": ready},
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}
                })
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-slice"), "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        })
    }

    fn meshed_pod(name: &str, account: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"weft.io/control-plane-ns": "weft-system"}},
            "spec": {
                "serviceAccountName": account,
                "containers": [{"name": "weft-proxy", "image": "weft-proxy"}, {"name": "app", "image": "app"}]
            }
        })
    }

    async fn next_matching(
        stream: &mut Streaming<DestinationUpdate>,
        what: &str,
        accept: impl Fn(&DestinationUpdate) -> bool,
    ) -> DestinationUpdate {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Ok(Ok(Some(update))) if accept(&update) => return update,
                Ok(Ok(Some(update))) => last = Some(update),
                Ok(other) => panic!("{what}: stream ended: {other:?}"),
                Err(_) => panic!("{what}: no matching update in 20 s; last: {last:#?}"),
            }
        }
    }

    fn endpoints(update: &DestinationUpdate) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = update
            .backends
            .iter()
            .flat_map(|b| {
                b.endpoints
                    .iter()
                    .map(|e| (e.address.clone(), e.identity.clone()))
            })
            .collect();
        out.sort();
        out
    }

    fn weights(update: &DestinationUpdate) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = update
            .backends
            .iter()
            .map(|b| (b.service.clone(), b.weight))
            .collect();
        out.sort();
        out
    }

    async fn subscribe(
        controller: &HostController,
        authority: &str,
    ) -> Streaming<DestinationUpdate> {
        DestinationClient::new(controller.channel().await)
            .get(GetDestination {
                authority: authority.into(),
                context_namespace: NS.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_made_through_the_api_reach_the_proxies() {
        require_root();
        let api = KubeApi::shared();
        let client = api.client().await.unwrap();
        kube_api::namespace(&client, NS, &[]).await.unwrap();
        kube_api::service_account(&client, NS, "web").await.unwrap();

        // The shipped CRD, as `kubectl apply -f examples/install/` makes it.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/install/10-crds.yaml");
        let crd: CustomResourceDefinition =
            serde_yaml_ng::Deserializer::from_str(&std::fs::read_to_string(path).unwrap())
                .map(|d| serde_json::from_value(Value::deserialize(d).unwrap()).unwrap())
                .next()
                .unwrap();
        let crds = Api::<CustomResourceDefinition>::all(client.clone());
        crds.create(&PostParams::default(), &crd).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let c = crds.get("trafficsplits.split.smi-spec.io").await.unwrap();
            let established = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            assert!(Instant::now() < deadline, "CRD not established");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        service(
            &client,
            "web",
            "10.96.1.10",
            json!({"retry.weft.io/http": "5xx", "timeout.weft.io/request": "2s"}),
        )
        .await;
        service(&client, "web-v1", "10.96.1.11", json!({})).await;
        service(&client, "web-v2", "10.96.1.12", json!({})).await;
        let slices = dynamic(&client, "discovery.k8s.io", "v1", "EndpointSlice");
        let pods = dynamic(&client, "", "v1", "Pod");
        for (pod, account) in [
            ("web-1", "web"),
            ("web-2", "web"),
            ("v1-1", "web"),
            ("v2-1", "web"),
        ] {
            create(&pods, meshed_pod(pod, account)).await;
        }
        create(
            &slices,
            slice(
                "web",
                &[("10.42.0.11", "web-1", true), ("10.42.0.12", "web-2", true)],
            ),
        )
        .await;
        create(&slices, slice("web-v1", &[("10.42.0.21", "v1-1", true)])).await;
        create(&slices, slice("web-v2", &[("10.42.0.31", "v2-1", true)])).await;

        let kubeconfig = api.controller_kubeconfig(&client).await.unwrap();
        let mut controller = HostController::start(&kubeconfig, "discovery", "kubernetes");
        controller.wait_ready().await;
        let web_id = format!("spiffe://cluster.local/ns/{NS}/sa/web");

        // By name and by cluster IP.
        let mut by_name = subscribe(&controller, "web.disco.svc.cluster.local:80").await;
        let first = next_matching(&mut by_name, "initial state", |u| u.known).await;
        assert_eq!(
            endpoints(&first),
            vec![
                ("10.42.0.11:8080".into(), web_id.clone()),
                ("10.42.0.12:8080".into(), web_id.clone())
            ]
        );
        let policy = first.policy.clone().unwrap();
        assert_eq!(policy.retry_on, vec!["5xx".to_string()]);
        assert_eq!(policy.timeout_ms, 2000);
        let mut by_ip = subscribe(&controller, "10.96.1.10:80").await;
        let same = next_matching(&mut by_ip, "by cluster IP", |u| u.known).await;
        assert_eq!(endpoints(&same), endpoints(&first));

        // A new endpoint, then one that stops being ready.
        create(&pods, meshed_pod("web-3", "web")).await;
        let update = json!({"endpoints": [
            {"addresses": ["10.42.0.11"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "web-1", "namespace": NS}},
            {"addresses": ["10.42.0.12"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "web-2", "namespace": NS}},
            {"addresses": ["10.42.0.13"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "web-3", "namespace": NS}}
        ]});
        slices
            .patch("web-slice", &PatchParams::default(), &Patch::Merge(&update))
            .await
            .unwrap();
        let moved = next_matching(&mut by_name, "slice update", |u| {
            endpoints(u).iter().any(|(a, _)| a == "10.42.0.13:8080")
        })
        .await;
        assert_eq!(
            endpoints(&moved),
            vec![
                ("10.42.0.11:8080".into(), web_id.clone()),
                ("10.42.0.13:8080".into(), web_id.clone())
            ]
        );

        // A TrafficSplit applied through the API, then changed.
        let splits = dynamic(&client, "split.smi-spec.io", "v1alpha4", "TrafficSplit");
        create(&splits, json!({
            "apiVersion": "split.smi-spec.io/v1alpha4",
            "kind": "TrafficSplit",
            "metadata": {"name": "web-split"},
            "spec": {"service": "web", "backends": [{"service": "web-v1", "weight": 90}, {"service": "web-v2", "weight": 10}]}
        }))
        .await;
        let split = next_matching(&mut by_name, "split", |u| u.backends.len() == 2).await;
        // Weights arrive scaled to a common base; their ratio is what counts.
        let w = weights(&split);
        let names: Vec<&str> = w.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, ["web-v1.disco", "web-v2.disco"]);
        assert_eq!(w[0].1, 9 * w[1].1, "{w:?}");
        let change = json!({"spec": {"backends": [{"service": "web-v1", "weight": 0}, {"service": "web-v2", "weight": 100}]}});
        splits
            .patch("web-split", &PatchParams::default(), &Patch::Merge(&change))
            .await
            .unwrap();
        let moved = next_matching(&mut by_name, "split change", |u| {
            weights(u)
                .iter()
                .all(|(s, w)| (*w == 0) == (s == "web-v1.disco"))
        })
        .await;
        // The zero-weight backend stays listed but gets no traffic.
        let zero: Vec<_> = moved
            .backends
            .iter()
            .filter(|b| b.weight == 0)
            .map(|b| b.service.as_str())
            .collect();
        assert_eq!(zero, ["web-v1.disco"]);
        let live: Vec<_> = moved
            .backends
            .iter()
            .filter(|b| b.weight > 0)
            .flat_map(|b| b.endpoints.iter().map(|e| e.address.as_str()))
            .collect();
        assert_eq!(live, ["10.42.0.31:8080"]);

        // A restarted controller lists everything again and serves the same.
        drop(by_ip);
        controller.process.restart();
        controller.wait_ready().await;
        let mut again = subscribe(&controller, "web.disco.svc.cluster.local:80").await;
        let resynced = next_matching(&mut again, "after restart", |u| u.known).await;
        assert_eq!(weights(&resynced), weights(&moved));
        assert_eq!(endpoints(&resynced), endpoints(&moved));

        // Deletions: the split goes (back to the apex's own endpoints), then the Service.
        splits
            .delete("web-split", &DeleteParams::default())
            .await
            .unwrap();
        let unsplit = next_matching(&mut again, "split deleted", |u| {
            u.backends.len() == 1 && u.known
        })
        .await;
        assert_eq!(endpoints(&unsplit).len(), 2);
        Api::<Service>::namespaced(client.clone(), NS)
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        next_matching(&mut again, "service deleted", |u| !u.known).await;
        let events = controller
            .metric(
                "discovery_watch_events_total",
                &[("kind", "trafficsplit"), ("action", "delete")],
            )
            .await;
        assert_eq!(events, 1.0);
    }
}

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

/// The controller writes the status of routes whose parent is a Service,
/// through the real API server's status subresource.
mod route_status {
    use std::time::{Duration, Instant};

    use k8s_openapi::api::core::v1::Service;
    use kube::api::{
        Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
    };
    use serde_json::{Value, json};
    use weft_testbed::kube_api::{self, KubeApi};
    use weft_testbed::require_root;

    use super::HostController;

    const NS: &str = "routing";

    fn routes(client: &kube::Client) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
        Api::namespaced_with(client.clone(), NS, &ApiResource::from_gvk(&gvk))
    }

    async fn service(client: &kube::Client, name: &str) {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), NS)
            .create(&PostParams::default(), &svc)
            .await
            .unwrap();
    }

    async fn route(client: &kube::Client, name: &str, spec: Value) {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name},
            "spec": spec
        }))
        .unwrap();
        routes(client)
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
    }

    /// The route's `status.parents`, once `accept` takes them.
    async fn parents_when(
        client: &kube::Client,
        name: &str,
        what: &str,
        accept: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let route = routes(client).get_status(name).await.unwrap();
            let parents = route.data["status"]["parents"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if accept(&parents) {
                return parents;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {what}: status is {parents:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn weft(parents: &[Value]) -> Option<&Value> {
        parents
            .iter()
            .find(|p| p["controllerName"] == "weft.io/mesh")
    }

    /// `(status, reason)` of condition `kind` in Weft's entry.
    fn condition(parents: &[Value], kind: &str) -> Option<(String, String)> {
        weft(parents)?["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
    }

    fn pair(status: &str, reason: &str) -> Option<(String, String)> {
        Some((status.into(), reason.into()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn route_status_says_what_weft_accepted_and_why_not() {
        require_root();
        let api = KubeApi::shared();
        let client = api.client().await.unwrap();
        api.gateway_api_crds(&client).await.unwrap();
        kube_api::namespace(&client, NS, &[]).await.unwrap();
        service(&client, "web").await;
        service(&client, "web-v1").await;

        // A canary whose second backend does not exist yet, and which a
        // Gateway's controller also reports on.
        let parent = json!({"group": "", "kind": "Service", "name": "web", "port": 80});
        route(
            &client,
            "canary",
            json!({"parentRefs": [parent, {"name": "edge"}], "rules": [{"backendRefs": [
                {"name": "web-v1", "port": 80, "weight": 90},
                {"name": "web-v2", "port": 80, "weight": 10}
            ]}]}),
        )
        .await;
        let foreign = json!({
            "parentRef": {"name": "edge"},
            "controllerName": "example.com/gateway",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]
        });
        routes(&client)
            .patch_status(
                "canary",
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"parents": [foreign]}})),
            )
            .await
            .unwrap();
        // Every rule invalid; and a parent that does not exist.
        route(
            &client,
            "broken",
            json!({"parentRefs": [parent], "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "("}}],
                "backendRefs": [{"name": "web-v1", "port": 80}]}]}),
        )
        .await;
        route(
            &client,
            "orphan",
            json!({"parentRefs": [{"group": "", "kind": "Service", "name": "nowhere"}],
                "rules": [{"backendRefs": [{"name": "web-v1", "port": 80}]}]}),
        )
        .await;

        let kubeconfig = api.controller_kubeconfig(&client).await.unwrap();
        let mut controller = HostController::start(&kubeconfig, "route-status", "kubernetes");
        controller.wait_ready().await;

        let canary = parents_when(&client, "canary", "written", |p| weft(p).is_some()).await;
        assert_eq!(condition(&canary, "Accepted"), pair("True", "Accepted"));
        assert_eq!(
            condition(&canary, "ResolvedRefs"),
            pair("False", "BackendNotFound")
        );
        let ours = weft(&canary).unwrap();
        assert_eq!(ours["parentRef"], parent, "the reference is echoed");
        assert!(
            ours["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["observedGeneration"] == 1),
            "{ours:#}"
        );
        let kept = canary
            .iter()
            .find(|p| p["controllerName"] == "example.com/gateway");
        assert_eq!(
            kept.map(|p| &p["conditions"]),
            Some(&foreign["conditions"]),
            "the Gateway's entry is kept: {canary:#?}"
        );
        let broken = parents_when(&client, "broken", "written", |p| weft(p).is_some()).await;
        assert_eq!(
            condition(&broken, "Accepted"),
            pair("False", "UnsupportedValue")
        );
        let orphan = parents_when(&client, "orphan", "written", |p| weft(p).is_some()).await;
        assert_eq!(
            condition(&orphan, "Accepted"),
            pair("False", "NoMatchingParent")
        );

        // The missing backend appears: ResolvedRefs turns True, Accepted
        // keeps its transition time.
        let accepted_since = |parents: &[Value]| {
            weft(parents).unwrap()["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Accepted")
                .unwrap()["lastTransitionTime"]
                .clone()
        };
        let before = accepted_since(&canary);
        service(&client, "web-v2").await;
        let resolved = parents_when(&client, "canary", "backend created", |p| {
            condition(p, "ResolvedRefs") == pair("True", "ResolvedRefs")
        })
        .await;
        assert_eq!(accepted_since(&resolved), before);

        // A new generation is observed.
        routes(&client)
            .patch(
                "canary",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"rules": [{"backendRefs": [{"name": "web-v2", "port": 80}]}]}})),
            )
            .await
            .unwrap();
        parents_when(&client, "canary", "generation 2", |p| {
            weft(p).is_some_and(|ours| ours["conditions"][0]["observedGeneration"] == 2)
        })
        .await;
        // A later route with the same matches for the same Service: it
        // is accepted, and says which of its rules never match and why.
        route(
            &client,
            "copycat",
            json!({"parentRefs": [parent], "rules": [{"backendRefs": [{"name": "web-v1", "port": 80}]}]}),
        )
        .await;
        let copycat = parents_when(&client, "copycat", "written", |p| weft(p).is_some()).await;
        let message = weft(&copycat).unwrap()["conditions"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            message.contains("rule 0 never matches: route routing/canary"),
            "{message}"
        );
        let conflicts = controller
            .metric(
                "discovery_invalid_config_total",
                &[("kind", "route"), ("reason", "conflicting_match")],
            )
            .await;
        assert_eq!(conflicts, 1.0);
        // An unknown parent (orphan) and an unknown backend (canary, at
        // first) were counted when they appeared.
        for reason in ["NoMatchingParent", "BackendNotFound"] {
            let counted = controller
                .metric(
                    "discovery_invalid_config_total",
                    &[("kind", "route"), ("reason", reason)],
                )
                .await;
            assert_eq!(counted, 1.0, "{reason}");
        }
        let written = controller
            .metric(
                "discovery_route_status_writes_total",
                &[("result", "written")],
            )
            .await;
        assert!(written >= 5.0, "{written}");

        // A restarted controller finds its entries in place and writes
        // nothing.
        controller.process.restart();
        controller.wait_ready().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let unchanged = controller
                .metric(
                    "discovery_route_status_writes_total",
                    &[("result", "unchanged")],
                )
                .await;
            if unchanged >= 4.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not checked after the restart:\n{}",
                controller.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let rewritten = controller
            .metric(
                "discovery_route_status_writes_total",
                &[("result", "written")],
            )
            .await;
        assert_eq!(rewritten, 0.0, "{}", controller.log());
    }
}
