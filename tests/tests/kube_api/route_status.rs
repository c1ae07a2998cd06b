//! The controller writes the status of routes whose parent is a Service,
//! through the real API server's status subresource.

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
            &Patch::Merge(
                &json!({"spec": {"rules": [{"backendRefs": [{"name": "web-v2", "port": 80}]}]}}),
            ),
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
