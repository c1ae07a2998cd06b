//! The controller's Kubernetes source: objects made through the API
//! reach a proxy's Destination stream, as do their updates and
//! deletions, and a restarted controller serves the same state.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
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

fn dynamic(client: &kube::Client, group: &str, version: &str, kind: &str) -> Api<DynamicObject> {
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

async fn subscribe(controller: &HostController, authority: &str) -> Streaming<DestinationUpdate> {
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
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/install/10-crds.yaml");
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
