//! The demo workloads on the mesh on one machine, as `weft-mesh demo` and
//! the observability tests run them: namespace `demo`, a `client` pod and
//! two versions of `web`, a controller serving identity and discovery from
//! files, and a TrafficSplit sending the apex service `web` 80/20 to
//! `web-v1` and `web-v2`. Every pod runs a real proxy with an identity.

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::{Value, json};

use crate::identity::{Controller, ControllerOptions};
use crate::prometheus::{FileTarget, Prometheus};
use crate::{Mesh, Pod, ProxyOptions};

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
    pub mesh: Mesh,
}

impl Demo {
    /// Builds the node, pods, apps, controller and proxies.
    pub async fn start(label: &str, options: DemoOptions) -> anyhow::Result<Self> {
        let mesh = Mesh::new(label)?;
        let web_v1 = mesh.add_pod("web-v1", None)?;
        let web_v2 = mesh.add_pod("web-v2", None)?;
        let client = mesh.add_pod("client", None)?;
        for (pod, name) in [(&web_v1, "web-v1"), (&web_v2, "web-v2")] {
            mesh.spawn_demo(pod, "http", HTTP_TARGET_PORT, name).await?;
            mesh.spawn_demo(pod, "grpc", GRPC_PORT, name).await?;
            mesh.spawn_demo(pod, "banner", TCP_PORT, name).await?;
        }
        mesh.publish("demo", &discovery_objects(&client, &web_v1, &web_v2))?;
        let ca = mesh.make_ca("ca")?;
        let controller = mesh
            .start_controller(&ca, ControllerOptions::default())
            .await?;
        let mut proxies = Vec::new();
        for (pod, sa, workload) in [
            (&web_v1, "web", "web-v1"),
            (&web_v2, "web", "web-v2"),
            (&client, "client", "client"),
        ] {
            let mut env = mesh.identity_env(&controller, pod, NAMESPACE, sa)?;
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
            mesh,
        })
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
        let control_plane = [FileTarget {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, self.controller.options.admin_port)),
            labels: vec![
                ("component".into(), "weft-controller".into()),
                ("namespace".into(), "weft-system".into()),
                ("pod".into(), "weft-controller".into()),
            ],
        }];
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

/// Services, EndpointSlices, Pods and the TrafficSplit, as the
/// controller's file source reads them.
fn discovery_objects(client: &Pod, web_v1: &Pod, web_v2: &Pod) -> String {
    let ports = json!([
        {"name": "http", "port": HTTP_PORT, "targetPort": HTTP_TARGET_PORT},
        {"name": "grpc", "port": GRPC_PORT, "targetPort": GRPC_PORT},
        {"name": "mysql", "port": TCP_PORT, "targetPort": TCP_PORT},
    ]);
    let slice_ports = json!([
        {"name": "http", "port": HTTP_TARGET_PORT},
        {"name": "grpc", "port": GRPC_PORT},
        {"name": "mysql", "port": TCP_PORT},
    ]);
    let mut docs: Vec<Value> = Vec::new();
    for (service, ip, pods) in [
        ("web", WEB_IP, vec![web_v1, web_v2]),
        ("web-v1", WEB_V1_IP, vec![web_v1]),
        ("web-v2", WEB_V2_IP, vec![web_v2]),
    ] {
        docs.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service, "namespace": NAMESPACE},
            "spec": {"clusterIP": ip.to_string(), "ports": ports},
        }));
        docs.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{service}-1"), "namespace": NAMESPACE,
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "ports": slice_ports,
            "endpoints": pods.iter().map(|p| json!({
                "addresses": [p.ip.to_string()],
                "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": p.name},
            })).collect::<Vec<_>>(),
        }));
    }
    for (pod, sa) in [(client, "client"), (web_v1, "web"), (web_v2, "web")] {
        docs.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod.name, "namespace": NAMESPACE,
                "labels": {
                    weft_api::labels::CONTROL_PLANE_NS: "weft-system",
                    weft_api::labels::WORKLOAD: pod.name,
                },
            },
            "spec": {"serviceAccountName": sa, "containers": [{"name": "app"}]},
            "status": {"podIP": pod.ip.to_string()},
        }));
    }
    docs.push(json!({
        "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
        "metadata": {"name": "web-rollout", "namespace": NAMESPACE},
        "spec": {
            "service": "web",
            "backends": SPLIT.iter().map(|(service, weight)| json!({"service": service, "weight": weight})).collect::<Vec<_>>(),
        },
    }));
    docs.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}
