//! Kubernetes objects as the controller's file discovery source reads them
//! (and as the API would hold them): JSON is YAML, one document each.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// A Service port: name, port, target port.
pub type ServicePort<'a> = (&'a str, u16, u16);

/// One endpoint of a slice: the pod's name, its IP, and whether it is ready.
pub type SliceEndpoint<'a> = (&'a str, Ipv4Addr, bool);

pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: Ipv4Addr,
    ports: &[ServicePort],
    annotations: &Value,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "clusterIP": cluster_ip.to_string(),
            "ports": ports.iter().map(|(n, port, target)| json!({"name": n, "port": port, "targetPort": target})).collect::<Vec<_>>(),
            "selector": {"app": name},
        },
    })
}

/// The service's slice; its ports are the services' target ports.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    ports: &[ServicePort],
    endpoints: &[SliceEndpoint],
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-slice"),
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": ports.iter().map(|(n, _, target)| json!({"name": n, "port": target, "protocol": "TCP"})).collect::<Vec<_>>(),
        "endpoints": endpoints.iter().map(|(pod, ip, ready)| json!({
            "addresses": [ip.to_string()],
            "conditions": {"ready": ready},
            "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace},
        })).collect::<Vec<_>>(),
    })
}

/// A meshed pod (it carries the proxy), labelled `app` and
/// `weft.io/workload` with `workload`.
pub fn meshed_pod(
    namespace: &str,
    name: &str,
    ip: Ipv4Addr,
    service_account: &str,
    workload: &str,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app": workload,
                weft_api::labels::CONTROL_PLANE_NS: weft_api::controller::NAMESPACE,
                weft_api::labels::WORKLOAD: workload,
            },
            "annotations": {
                weft_api::annotations::MESH_TRANSPORT: weft_api::annotations::MESH_TRANSPORT_APP_PORT,
            },
        },
        "spec": {
            "serviceAccountName": service_account,
            "containers": [{"name": "app"}, {"name": weft_api::PROXY_CONTAINER_NAME}],
        },
        "status": {"podIP": ip.to_string()},
    })
}

pub fn traffic_split(namespace: &str, name: &str, apex: &str, backends: &[(&str, u32)]) -> Value {
    json!({
        "apiVersion": "split.smi-spec.io/v1alpha2",
        "kind": "TrafficSplit",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "service": apex,
            "backends": backends.iter().map(|(s, w)| json!({"service": s, "weight": w})).collect::<Vec<_>>(),
        },
    })
}

/// The documents of one discovery file.
pub fn file(docs: &[Value]) -> String {
    docs.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}
