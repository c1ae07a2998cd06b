//! The demo workloads on the mesh on one machine, as `weft-mesh demo` and
//! the observability tests run them: two nodes, namespace `demo`, a
//! `client` pod and two versions of `web`, a controller serving identity and
//! discovery from files, and a TrafficSplit sending the apex service `web`
//! 80/20 to `web-v1` and `web-v2`. Every pod runs a real proxy with an
//! identity. `web-v1` runs on the first node, the client and `web-v2` on the
//! second, so traffic crosses the underlay between them, where a capture
//! shows what the wire carries.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use serde_json::{Value, json};

use crate::identity::{Controller, ControllerOptions, NODE_GATEWAY};
use crate::prometheus::{FileTarget, Prometheus};
use crate::wire::{Capture, Stream};
use crate::{Mesh, MeshOptions, Pod, ProxyOptions, nodes, objects};

pub const NAMESPACE: &str = "demo";
/// Cluster IPs of the apex service and its two backends.
pub const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const WEB_V1_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
pub const WEB_V2_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
/// Service ports: HTTP 80 (to the app's 8080), gRPC 50051, and 3306, a
/// server-speaks-first TCP port on the proxy's default opaque list.
pub const HTTP_PORT: u16 = 80;
pub const HTTP_TARGET_PORT: u16 = 8080;
pub const GRPC_PORT: u16 = 50051;
pub const TCP_PORT: u16 = 3306;
/// The split's weights.
pub const SPLIT: [(&str, u32); 2] = [("web-v1", 80), ("web-v2", 20)];
/// Where Prometheus listens inside the node.
pub const PROMETHEUS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

/// The shipped Prometheus configuration for the mesh on one machine.
pub const LOCAL_PROMETHEUS_CONFIG: &str = include_str!("../../examples/prometheus/local.yml");

#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// OTLP collector for every proxy (`WEFT_TRACE_COLLECTOR`).
    pub trace_collector: Option<String>,
}

/// The running demo; dropping it tears everything down.
#[derive(Debug)]
pub struct Demo {
    pub client: Pod,
    pub web_v1: Pod,
    pub web_v2: Pod,
    pub controller: Controller,
    /// `(pod, workload, proxy pid)`.
    pub proxies: Vec<(Pod, &'static str, u32)>,
    /// Every TCP packet on the underlay between the nodes, from before the
    /// proxies start.
    pub underlay: Capture,
    pub mesh: Mesh,
}

/// The TCP streams between pods that crossed the underlay.
#[derive(Debug)]
pub struct UnderlayReport {
    pub streams: Vec<Stream>,
}

impl UnderlayReport {
    pub fn bytes(&self) -> usize {
        self.streams.iter().map(|s| s.bytes.len()).sum()
    }

    /// The streams that are not TLS records from their first byte, with
    /// why.
    pub fn not_tls(&self) -> Vec<String> {
        self.streams
            .iter()
            .filter_map(|s| {
                let why = if !s.from_start {
                    Err("began before the capture".to_string())
                } else {
                    crate::wire::tls_records(&s.bytes)
                };
                why.err().map(|e| format!("{} -> {}: {e}", s.from, s.to))
            })
            .collect()
    }
}

impl Demo {
    /// Builds the nodes, pods, apps, controller and proxies.
    pub async fn start(label: &str, options: DemoOptions) -> anyhow::Result<Self> {
        Self::on(Self::mesh(label)?, options).await
    }

    /// The two-node mesh the demo runs on, for callers that run something
    /// there first.
    pub fn mesh(label: &str) -> anyhow::Result<Mesh> {
        Mesh::with_options(
            label,
            MeshOptions {
                two_nodes: true,
                ..Default::default()
            },
        )
    }

    /// The same on a mesh from [`Demo::mesh`].
    pub async fn on(mesh: Mesh, options: DemoOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(mesh.second.is_some(), "the demo runs on two nodes");
        let web_v1 = mesh.add_pod_on(0, "web-v1", None)?;
        let web_v2 = mesh.add_pod_on(1, "web-v2", None)?;
        let client = mesh.add_pod_on(1, "client", None)?;
        for (pod, name) in [(&web_v1, "web-v1"), (&web_v2, "web-v2")] {
            mesh.spawn_demo(pod, "http", HTTP_TARGET_PORT, name).await?;
            mesh.spawn_demo(pod, "grpc", GRPC_PORT, name).await?;
            mesh.spawn_demo(pod, "banner", TCP_PORT, name).await?;
        }
        let docs = discovery_objects(&client, &web_v1, &web_v2);
        mesh.publish("demo", &objects::file(&docs))?;
        start_dns(&mesh, &docs, &[&client, &web_v1, &web_v2])?;
        let ca = mesh.make_ca("ca")?;
        let controller = mesh
            .start_controller(&ca, ControllerOptions::default())
            .await?;
        start_injector(&mesh, &ca.anchors(), controller.addr())?;
        let underlay = Capture::start(&mesh, &mesh.node(), nodes::UNDERLAY_LINK).await?;
        let mut proxies = Vec::new();
        for (pod, sa, workload, node) in [
            (&web_v1, "web", "web-v1", 0),
            (&web_v2, "web", "web-v2", 1),
            (&client, "client", "client", 1),
        ] {
            let mut env = mesh.identity_env(&controller, pod, NAMESPACE, sa)?;
            // As the injector does: the proxy enforces its pod's policy,
            // which always lets its node in.
            env.push(("WEFT_POD_NAME".into(), pod.name.clone()));
            env.push(("WEFT_HOST_IP".into(), nodes::gateway(node).to_string()));
            if let Some(collector) = &options.trace_collector {
                env.push(("WEFT_TRACE_COLLECTOR".into(), collector.clone()));
            }
            let pid = mesh
                .spawn_proxy(
                    pod,
                    ProxyOptions {
                        env,
                        ..Default::default()
                    },
                )
                .await?;
            proxies.push((pod.clone(), workload, pid));
        }
        Ok(Demo {
            client,
            web_v1,
            web_v2,
            controller,
            proxies,
            underlay,
            mesh,
        })
    }

    /// Stops the underlay capture and returns the streams in it between
    /// pods (not those of the nodes themselves: the proxies' calls to the
    /// controller, Prometheus scraping them).
    pub async fn underlay_report(&self) -> anyhow::Result<UnderlayReport> {
        let pod_ips: Vec<std::net::IpAddr> = [&self.client, &self.web_v1, &self.web_v2]
            .iter()
            .map(|p| p.ip.into())
            .collect();
        let all = self.underlay.finish(&self.mesh).await?;
        let streams = all
            .into_iter()
            .filter(|s| pod_ips.contains(&s.from.ip()) && pod_ips.contains(&s.to.ip()))
            .collect();
        Ok(UnderlayReport { streams })
    }

    /// Starts Prometheus on the node with the shipped local configuration,
    /// targets written for every proxy and the controller.
    pub async fn start_prometheus(&self) -> anyhow::Result<Prometheus> {
        let dir = self.mesh.dir.join("prometheus");
        let proxies: Vec<FileTarget> = self
            .proxies
            .iter()
            .map(|(pod, workload, _)| FileTarget {
                address: SocketAddr::from((pod.ip, weft_api::ports::ADMIN)),
                labels: vec![
                    ("namespace".into(), NAMESPACE.into()),
                    ("workload".into(), workload.to_string()),
                    ("pod".into(), pod.name.clone()),
                ],
            })
            .collect();
        let control_plane = [
            (self.controller.options.admin_port, "weft-controller"),
            (INJECTOR_ADMIN_PORT, "weft-injector"),
        ]
        .map(|(port, component)| FileTarget {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            labels: vec![
                ("component".into(), component.into()),
                ("namespace".into(), "weft-system".into()),
                ("pod".into(), component.into()),
            ],
        });
        Prometheus::write_targets(&dir, "weft-proxy", &proxies)?;
        Prometheus::write_targets(&dir, "weft-control-plane", &control_plane)?;
        Prometheus::start(
            Some(&self.mesh.node()),
            PROMETHEUS_ADDR,
            &dir,
            LOCAL_PROMETHEUS_CONFIG,
        )
        .await
    }

    /// Runs `weft-demo ARGS` in the client pod, as its app would, and
    /// returns what it printed: names resolve through the mesh's DNS.
    pub fn client_app(&self, args: &[&str]) -> anyhow::Result<String> {
        let program = self.mesh.bins.path("weft-demo");
        let mut all = vec!["netns", "exec", &self.client.netns];
        let program = program.to_string_lossy();
        all.push(&program);
        all.extend_from_slice(args);
        crate::sh("ip", &all)
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from((WEB_IP, HTTP_PORT))
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::from((WEB_IP, GRPC_PORT))
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        SocketAddr::from((WEB_IP, TCP_PORT))
    }
}

/// The injector's ports on the node (webhook, admin).
pub const INJECTOR_PORT: u16 = 8443;
pub const INJECTOR_ADMIN_PORT: u16 = 9995;

/// Runs `weft-injector` on the node with a serving certificate for
/// 127.0.0.1 from its own CA (`injector-ca.crt` in the mesh folder), as
/// the API server would call it.
fn start_injector(mesh: &Mesh, anchors: &Path, controller: SocketAddr) -> anyhow::Result<()> {
    let dir = mesh.dir.join("injector");
    std::fs::create_dir_all(&dir)?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weft demo webhook CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut leaf_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    // Subject and issuer must differ, or clients take the leaf for a
    // self-signed certificate.
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weft-injector");
    let leaf = leaf_params.signed_by(&key, &rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key)?)?;
    std::fs::write(dir.join("tls.crt"), leaf.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    let arg = |name: &str| dir.join(name).to_string_lossy().into_owned();
    mesh.spawn(
        &mesh.node(),
        "injector",
        &mesh.bins.path("weft-injector"),
        &[
            "--listen",
            &format!("127.0.0.1:{INJECTOR_PORT}"),
            "--admin",
            &format!("127.0.0.1:{INJECTOR_ADMIN_PORT}"),
            "--tls-cert",
            &arg("tls.crt"),
            "--tls-key",
            &arg("tls.key"),
            "--trust-anchors-file",
            &anchors.to_string_lossy(),
            "--controller-addr",
            &controller.to_string(),
            "--sidecar-mode",
            "classic",
        ],
        &[],
    )?;
    Ok(())
}

impl Demo {
    /// Sends the injector an AdmissionReview for a new pod in the demo
    /// namespace, as the API server does when a Deployment scales up, and
    /// returns whether it answered with a patch.
    pub fn admit_pod(&self, name: &str) -> anyhow::Result<bool> {
        let dir = self.mesh.dir.join("injector");
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": format!("demo-{name}"),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": NAMESPACE,
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "web"}},
                    "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "weft-demo"}]},
                },
            },
        });
        let body = dir.join(format!("review-{name}.json"));
        std::fs::write(&body, review.to_string())?;
        let answer = crate::sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.mesh.node_netns,
                "curl",
                "-sS",
                "--fail",
                "--retry",
                "20",
                "--retry-connrefused",
                "--retry-delay",
                "0",
                "--cacert",
                &dir.join("ca.crt").to_string_lossy(),
                "-H",
                "content-type: application/json",
                "--data-binary",
                &format!("@{}", body.display()),
                &format!("https://127.0.0.1:{INJECTOR_PORT}/inject"),
            ],
        )?;
        let answer: Value = serde_json::from_str(&answer)?;
        Ok(answer["response"]["allowed"] == true && answer["response"]["patch"].is_string())
    }
}

/// Services, EndpointSlices, Pods and the TrafficSplit, as the
/// controller's file source reads them.
pub fn discovery_objects(client: &Pod, web_v1: &Pod, web_v2: &Pod) -> Vec<Value> {
    let ports = [
        ("http", HTTP_PORT, HTTP_TARGET_PORT),
        ("grpc", GRPC_PORT, GRPC_PORT),
        ("mysql", TCP_PORT, TCP_PORT),
    ];
    let mut docs: Vec<Value> = Vec::new();
    for (service, ip, pods) in [
        ("web", WEB_IP, vec![web_v1, web_v2]),
        ("web-v1", WEB_V1_IP, vec![web_v1]),
        ("web-v2", WEB_V2_IP, vec![web_v2]),
    ] {
        // The apex retries failed idempotent requests (twice at most).
        let annotations = if service == "web" {
            json!({"retry.weft.io/http": "5xx"})
        } else {
            json!({})
        };
        docs.push(objects::service(
            NAMESPACE,
            service,
            ip,
            &ports,
            &annotations,
        ));
        let endpoints: Vec<objects::SliceEndpoint> =
            pods.iter().map(|p| (p.name.as_str(), p.ip, true)).collect();
        docs.push(objects::endpoint_slice(
            NAMESPACE, service, &ports, &endpoints,
        ));
    }
    for (pod, sa) in [(client, "client"), (web_v1, "web"), (web_v2, "web")] {
        docs.push(objects::meshed_pod(
            NAMESPACE, &pod.name, pod.ip, sa, &pod.name,
        ));
    }
    docs.push(objects::traffic_split(
        NAMESPACE,
        "web-rollout",
        "web",
        &SPLIT,
    ));
    docs
}

/// The cluster DNS names of `docs`, in hosts-file form: each Service's
/// `name.ns.svc.cluster.local` and each pod's `a-b-c-d.ns.pod.cluster.local`,
/// as CoreDNS's `kubernetes` plugin would answer them.
pub fn dns_hosts(docs: &[Value]) -> String {
    let mut lines = Vec::new();
    for doc in docs {
        let meta = &doc["metadata"];
        let (Some(name), Some(ns)) = (meta["name"].as_str(), meta["namespace"].as_str()) else {
            continue;
        };
        match doc["kind"].as_str() {
            Some("Service") => {
                if let Some(ip) = doc["spec"]["clusterIP"].as_str() {
                    lines.push(format!("{ip} {name}.{ns}.svc.{CLUSTER_DOMAIN}"));
                }
            }
            Some("Pod") => {
                if let Some(ip) = doc["status"]["podIP"].as_str() {
                    let dashed = ip.replace('.', "-");
                    lines.push(format!("{ip} {dashed}.{ns}.pod.{CLUSTER_DOMAIN}"));
                }
            }
            _ => {}
        }
    }
    lines.push(String::new());
    lines.join("\n")
}

pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// CoreDNS on the node, answering the cluster's names from the same
/// objects discovery serves, and a kubelet-style `resolv.conf` in every
/// pod, so apps call `web`, `web.demo` or `web.demo.svc.cluster.local`.
fn start_dns(mesh: &Mesh, docs: &[Value], pods: &[&Pod]) -> anyhow::Result<()> {
    let coredns = crate::go_program("coredns")?;
    let dir = mesh.dir.join("dns");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("hosts"), dns_hosts(docs))?;
    std::fs::write(
        dir.join("Corefile"),
        format!(
            "{CLUSTER_DOMAIN}:53 {{\n    errors\n    hosts {} {CLUSTER_DOMAIN} {{\n        ttl 5\n        reload 1s\n    }}\n}}\n",
            dir.join("hosts").display()
        ),
    )?;
    mesh.spawn(
        &mesh.node(),
        "coredns",
        &coredns,
        &["-conf", &dir.join("Corefile").to_string_lossy()],
        &[],
    )?;
    for pod in pods {
        mesh.set_resolv_conf(
            pod,
            &format!(
                "nameserver {NODE_GATEWAY}\nsearch {NAMESPACE}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\noptions ndots:5\n"
            ),
        )?;
    }
    Ok(())
}
