//! Discovery from YAML, resolution, and pushed updates.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use weft_api::proto::destination::destination_server::Destination;
use weft_api::proto::destination::{DestinationUpdate, GetDestination};

use super::file::{FileState, parse};
use super::resolve::Authority;
use super::service::DestinationService;
use super::{Object, Store};
use crate::metrics::Metrics;

/// A small namespace: `web` (apex) split between `web-v1` and `web-v2`, a
/// meshed and an unmeshed pod, a v1beta1 slice as a 1.20 server writes it.
const DEMO: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
  annotations:
    retry.weft.io/http: 5xx
    timeout.weft.io/request: 2s
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: demo}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: demo}
spec:
  clusterIP: 10.96.0.12
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v1-abc
  namespace: demo
  labels: {kubernetes.io/service-name: web-v1}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.42.0.5]
    conditions: {ready: true}
    targetRef: {kind: Pod, name: web-v1-0}
  - addresses: [10.42.0.9]
    conditions: {ready: false}
    targetRef: {kind: Pod, name: web-v1-9}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: web-v2-xyz
  namespace: demo
  labels: {kubernetes.io/service-name: web-v2}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.42.0.6]
    conditions: {ready: true}
    topology: {kubernetes.io/hostname: node-1}
    targetRef: {kind: Pod, name: web-v2-0}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-v1-0
  namespace: demo
  labels: {weft.io/control-plane-ns: weft-system, weft.io/workload: web-v1}
spec:
  serviceAccountName: web
  containers: [{name: app}, {name: weft-proxy}]
status: {podIP: 10.42.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: web-v2-0, namespace: demo}
spec:
  containers: [{name: app}]
status: {podIP: 10.42.0.6}
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: web-split, namespace: demo}
spec:
  service: web
  backends:
    - {service: web-v1, weight: 90}
    - {service: web-v2, weight: 10}
"#;

fn store() -> Arc<Store> {
    store_with(Metrics::new())
}

/// The demo namespace, loaded and synced, counting into `metrics`.
fn store_with(metrics: Arc<Metrics>) -> Arc<Store> {
    let store = Store::new("cluster.local", "cluster.local", metrics.discovery.clone());
    store.replace(
        &[
            super::Kind::Service,
            super::Kind::Slice,
            super::Kind::Pod,
            super::Kind::Split,
        ],
        parse(Path::new("demo.yaml"), DEMO).unwrap(),
    );
    store.mark_synced();
    store
}

fn resolve(store: &Store, authority: &str) -> DestinationUpdate {
    store.resolve(&Authority::parse(authority).unwrap(), "demo")
}

/// `(backend, weight, [(address, identity)])`.
type Summary = Vec<(String, u32, Vec<(String, String)>)>;

fn summary(update: &DestinationUpdate) -> Summary {
    update
        .backends
        .iter()
        .map(|b| {
            (
                b.service.clone(),
                b.weight,
                b.endpoints
                    .iter()
                    .map(|e| (e.address.clone(), e.identity.clone()))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn a_split_apex_resolves_to_its_weighted_backends() {
    let store = store();
    let update = resolve(&store, "10.96.0.10:80");
    assert!(update.known);
    assert_eq!(update.service, "web.demo");
    // The metric label: canonical, whatever name or address was dialled.
    assert_eq!(update.authority, "web.demo.svc.cluster.local:80");
    assert_eq!(
        summary(&update),
        vec![
            (
                "web-v1.demo".into(),
                90_000,
                vec![(
                    "10.42.0.5:8080".into(),
                    "spiffe://cluster.local/ns/demo/sa/web".into()
                )]
            ),
            (
                "web-v2.demo".into(),
                10_000,
                // Not meshed: no identity, so the proxy connects in plain.
                vec![("10.42.0.6:8080".into(), String::new())]
            ),
        ]
    );
    let policy = update.policy.unwrap();
    assert_eq!(policy.retry_on, vec!["5xx"]);
    assert_eq!(policy.timeout_ms, 2000);
    let v1 = &update.backends[0].endpoints[0];
    assert!(v1.hint.unwrap().http2);
    assert_eq!(
        (v1.pod.as_str(), v1.workload.as_str()),
        ("web-v1-0", "web-v1")
    );
}

#[test]
fn names_resolve_like_cluster_dns() {
    let store = store();
    let by_ip = resolve(&store, "10.96.0.11:80");
    for name in [
        "web-v1:80",
        "web-v1.demo:80",
        "web-v1.demo.svc:80",
        "web-v1.demo.svc.cluster.local:80",
        "WEB-V1.demo.svc.cluster.local.:80",
    ] {
        assert_eq!(resolve(&store, name), by_ip, "{name}");
    }
    for unknown in [
        "web-v1.demo.svc.example.org:80",
        "example.com:443",
        "web-v1:81",
        "10.96.0.11:81",
        "10.1.2.3:80",
    ] {
        assert!(!resolve(&store, unknown).known, "{unknown}");
    }
    for bad in ["web-v1", "web v1:80", "web-v1:0", ":80", "web-v1:http"] {
        assert!(Authority::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_pod_address_resolves_to_that_pod() {
    let store = store();
    let update = resolve(&store, "10.42.0.5:8080");
    assert!(update.known);
    assert_eq!(update.authority, "");
    assert_eq!(
        summary(&update),
        vec![(
            String::new(),
            1,
            vec![(
                "10.42.0.5:8080".into(),
                "spiffe://cluster.local/ns/demo/sa/web".into()
            )]
        )]
    );
}

#[test]
fn unusable_splits_are_reported_and_ignored() {
    let metrics = Metrics::new();
    let store = Store::new("cluster.local", "cluster.local", metrics.discovery.clone());
    let zero = DEMO
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 0");
    store.replace(&[super::Kind::Split], parse(Path::new("x"), &zero).unwrap());
    store.replace(
        &[super::Kind::Service, super::Kind::Slice, super::Kind::Pod],
        parse(Path::new("x"), DEMO)
            .unwrap()
            .into_iter()
            .filter(|o| !matches!(o, Object::Split(..)))
            .collect(),
    );
    // Zero total weight: the apex routes to its own endpoints (none here).
    let update = resolve(&store, "10.96.0.10:80");
    assert_eq!(summary(&update), vec![("web.demo".into(), 1, vec![])]);
    assert!(
        metrics.encode().contains(
            r#"discovery_invalid_config_total{kind="traffic_split",reason="zero_total_weight"} 1"#
        ),
        "{}",
        metrics.encode()
    );
    // A backend that names no service contributes no endpoints.
    let unknown = DEMO.replace("service: web-v2, weight: 10", "service: nope, weight: 10");
    store.replace(
        &[super::Kind::Split],
        parse(Path::new("x"), &unknown).unwrap(),
    );
    let update = resolve(&store, "10.96.0.10:80");
    assert_eq!(update.backends[1].service, "nope.demo");
    assert!(update.backends[1].endpoints.is_empty());
}

#[test]
fn bad_annotations_never_break_discovery() {
    let metrics = Metrics::new();
    let store = Store::new("cluster.local", "cluster.local", metrics.discovery.clone());
    let bad = DEMO
        .replace("retry.weft.io/http: 5xx", "retry.weft.io/http: sometimes")
        .replace(
            "timeout.weft.io/request: 2s",
            "timeout.weft.io/request: soon",
        );
    store.replace(
        &[
            super::Kind::Service,
            super::Kind::Slice,
            super::Kind::Pod,
            super::Kind::Split,
        ],
        parse(Path::new("x"), &bad).unwrap(),
    );
    let update = resolve(&store, "10.96.0.10:80");
    assert_eq!(update.backends.len(), 2, "the split still works");
    let policy = update.policy.unwrap();
    assert!(policy.retry_on.is_empty());
    assert_eq!(policy.timeout_ms, 0);
    let text = metrics.encode();
    assert!(
        text.contains(r#"reason="bad_retry_conditions"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"reason="bad_timeout"} 1"#), "{text}");
}

#[test]
fn malformed_documents_are_errors_with_their_place() {
    for (text, wants) in [
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: 7}\n",
            "document 1",
        ),
        (
            "---\n---\napiVersion: v1\nkind: Pod\nmetadata: {}\n",
            "without metadata.name",
        ),
        (
            "apiVersion: v1\nkind: Service\n  bad: [indent\n",
            "document 1",
        ),
        (
            "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: s}\nspec: {}\n",
            "missing field `service`",
        ),
    ] {
        let error = parse(Path::new("f.yaml"), text).unwrap_err().to_string();
        assert!(error.contains("f.yaml") && error.contains(wants), "{error}");
    }
    // Other kinds are skipped, not errors.
    assert!(
        parse(
            Path::new("f"),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
        )
        .unwrap()
        .is_empty()
    );
}

#[test]
fn a_broken_file_keeps_its_last_good_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.yaml");
    let metrics = Metrics::new();
    let store = Store::new("cluster.local", "cluster.local", metrics.discovery.clone());
    let mut state = FileState::default();
    std::fs::write(&path, DEMO).unwrap();
    assert!(state.reload(dir.path(), &store));
    let good = resolve(&store, "10.96.0.10:80");
    assert!(good.known);
    std::fs::write(&path, "apiVersion: v1\nkind: Service\n  : [\n").unwrap();
    assert!(!state.reload(dir.path(), &store));
    assert_eq!(resolve(&store, "10.96.0.10:80"), good);
    assert!(metrics.encode().contains("discovery_file_errors_total 1"));
    // Reported once, not on every poll.
    state.reload(dir.path(), &store);
    assert!(metrics.encode().contains("discovery_file_errors_total 1"));
    std::fs::remove_file(&path).unwrap();
    assert!(state.reload(dir.path(), &store));
    assert!(!resolve(&store, "10.96.0.10:80").known);
}

#[tokio::test]
async fn changes_are_pushed_to_subscribers() {
    let store = store();
    let service = DestinationService {
        store: store.clone(),
        metrics: Metrics::new(),
    };
    let mut stream = service
        .get(tonic::Request::new(GetDestination {
            authority: "web.demo.svc.cluster.local:80".into(),
            context_namespace: "other".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let next = async |stream: &mut <DestinationService as Destination>::GetStream| {
        tokio::time::timeout(Duration::from_secs(2), stream.next())
            .await
            .expect("an update")
            .unwrap()
            .unwrap()
    };
    let first = next(&mut stream).await;
    assert_eq!(first.backends[0].weight, 90_000);
    // An unrelated change sends nothing.
    let unrelated = parse(
        Path::new("x"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: demo}\nspec: {clusterIP: 10.96.0.99, ports: [{port: 1}]}\n",
    )
    .unwrap();
    store.apply(unrelated[0].clone());
    // Moving the weights does.
    let moved = DEMO
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 100");
    for object in parse(Path::new("x"), &moved).unwrap() {
        store.apply(object);
    }
    let second = next(&mut stream).await;
    assert_eq!(
        (second.backends[0].weight, second.backends[1].weight),
        (0, 100_000)
    );
    // Deleting the split sends the apex's own endpoints.
    store.delete(super::Kind::Split, &("demo".into(), "web-split".into()));
    let third = next(&mut stream).await;
    assert_eq!(third.backends.len(), 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .is_err(),
        "nothing else changed"
    );

    let refused = service
        .get(tonic::Request::new(GetDestination {
            authority: "no port".into(),
            context_namespace: String::new(),
        }))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}

#[test]
fn a_declared_app_protocol_skips_detection() {
    use weft_api::proto::destination::AppProtocol;
    let store = Store::new(
        "cluster.local",
        "cluster.local",
        Metrics::new().discovery.clone(),
    );
    let docs = r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec:
  clusterIP: 10.96.0.20
  ports:
    - {name: sql, port: 3307, appProtocol: mysql}
    - {name: web, port: 80, appProtocol: http}
    - {name: grpc, port: 81, appProtocol: kubernetes.io/h2c}
    - {name: raw, port: 82, appProtocol: tcp}
    - {name: plain, port: 83}
"#;
    store.replace(
        &[super::Kind::Service],
        parse(Path::new("db.yaml"), docs).unwrap(),
    );
    store.mark_synced();
    let protocol = |port: u16| {
        let update = resolve(&store, &format!("10.96.0.20:{port}"));
        (update.protocol(), update.opaque)
    };
    assert_eq!(protocol(3307), (AppProtocol::Opaque, true));
    assert_eq!(protocol(80), (AppProtocol::Http1, false));
    assert_eq!(protocol(81), (AppProtocol::Http2, false));
    assert_eq!(protocol(82), (AppProtocol::Opaque, true));
    assert_eq!(protocol(83), (AppProtocol::Detect, false));
    for (declared, meant) in [
        (None, AppProtocol::Detect),
        (Some(" "), AppProtocol::Detect),
        (Some("HTTP"), AppProtocol::Http1),
        (Some("kubernetes.io/ws"), AppProtocol::Http1),
        (Some("grpc"), AppProtocol::Http2),
        (Some("https"), AppProtocol::Opaque),
        (Some("kubernetes.io/wss"), AppProtocol::Opaque),
        (Some("postgresql"), AppProtocol::Opaque),
    ] {
        assert_eq!(super::model::app_protocol(declared), meant, "{declared:?}");
    }
}

/// One document as a store object.
fn object(yaml: &str) -> Object {
    let mut objects = parse(Path::new("change.yaml"), yaml).unwrap();
    assert_eq!(objects.len(), 1);
    objects.remove(0)
}

#[test]
fn a_change_wakes_only_the_subscriptions_whose_answer_it_can_alter() {
    let store = store();
    let watch = |authority: &str| {
        let subscription = store.subscribe();
        let update =
            store.resolve_for(&subscription, &Authority::parse(authority).unwrap(), "demo");
        // The first full listing woke everyone; start from a clean slate.
        subscription.wake.take_pending_since();
        (subscription, update)
    };
    let woken = |s: &super::interest::Subscription| s.wake.take_pending_since().is_some();
    let (apex, first) = watch("web:80");
    let (backend, _) = watch("web-v2.demo.svc.cluster.local:80");
    let (pod, _) = watch("10.42.0.6:8080");
    let (later_name, unknown) = watch("later:80");
    let (later_addr, _) = watch("10.96.0.77:80");
    let (other, _) = watch("web-v1:80");
    assert!(!unknown.known);
    assert_eq!(first.backends[1].endpoints[0].identity, "");

    // web-v2's pod joins the mesh: its Services' clients and its own
    // address change; nobody else's answer can.
    store.apply(object(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-v2-0, namespace: demo, labels: {weft.io/control-plane-ns: weft-system}}\nspec: {serviceAccountName: v2, containers: [{name: app}]}\nstatus: {podIP: 10.42.0.6}\n",
    ));
    assert_eq!(
        [&apex, &backend, &pod, &later_name, &later_addr, &other].map(woken),
        [true, true, true, false, false, false]
    );
    let update = store.resolve_for(&apex, &Authority::parse("web:80").unwrap(), "demo");
    assert_eq!(
        update.backends[1].endpoints[0].identity,
        "spiffe://cluster.local/ns/demo/sa/v2"
    );

    // A Service that did not exist yet: those who asked for its name or
    // its address wake.
    store.apply(object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: later, namespace: demo}\nspec: {clusterIP: 10.96.0.77, ports: [{port: 80}]}\n",
    ));
    assert_eq!(
        [&apex, &backend, &pod, &later_name, &later_addr, &other].map(woken),
        [false, false, false, true, true, false]
    );

    // The split moves: only the apex's clients.
    store.delete(super::Kind::Split, &("demo".into(), "web-split".into()));
    assert_eq!(
        [&apex, &backend, &pod, &later_name, &later_addr, &other].map(woken),
        [true, false, false, false, false, false]
    );

    // A slice of web-v1 changes: web-v1's clients. The apex no longer
    // splits, so it does not read web-v1 any more once it looked again.
    let _ = store.resolve_for(&apex, &Authority::parse("web:80").unwrap(), "demo");
    store.delete(super::Kind::Slice, &("demo".into(), "web-v1-abc".into()));
    assert_eq!(
        [&apex, &backend, &pod, &later_name, &later_addr, &other].map(woken),
        [false, false, false, false, false, true]
    );

    // Dropped subscriptions leave nothing behind in the index.
    drop((apex, backend, pod, later_name, later_addr, other));
    assert_eq!(store.interest_size(), (0, 0));
}

#[test]
fn a_reused_pod_address_answers_for_the_pod_still_holding_it() {
    let store = store();
    let pod = |name: &str, account: &str| {
        object(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {{weft.io/control-plane-ns: weft-system}}}}\nspec: {{serviceAccountName: {account}, containers: [{{name: app}}]}}\nstatus: {{podIP: 10.42.0.50}}\n"
        ))
    };
    let identity = |store: &Store| {
        resolve(store, "10.42.0.50:80").backends[0].endpoints[0]
            .identity
            .clone()
    };
    store.apply(pod("old", "old-sa"));
    store.apply(pod("new", "new-sa"));
    assert_eq!(identity(&store), "spiffe://cluster.local/ns/demo/sa/new-sa");
    store.delete(super::Kind::Pod, &("demo".into(), "new".into()));
    assert_eq!(identity(&store), "spiffe://cluster.local/ns/demo/sa/old-sa");
    store.delete(super::Kind::Pod, &("demo".into(), "old".into()));
    assert!(!resolve(&store, "10.42.0.50:80").known);
}

#[tokio::test]
async fn the_update_latency_counts_from_the_first_unanswered_change() {
    let metrics = Metrics::new();
    let store = store_with(metrics.clone());
    let service = DestinationService {
        store: store.clone(),
        metrics: metrics.clone(),
    };
    let mut stream = service
        .get(tonic::Request::new(GetDestination {
            authority: "web-v1.demo:80".into(),
            context_namespace: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(2), stream.next()).await;
    assert!(first.unwrap().unwrap().is_ok());
    // A change: the update it causes is timed from the change.
    store.delete(super::Kind::Slice, &("demo".into(), "web-v1-abc".into()));
    let second = tokio::time::timeout(Duration::from_secs(2), stream.next()).await;
    assert!(
        second.unwrap().unwrap().unwrap().backends[0]
            .endpoints
            .is_empty()
    );
    let text = metrics.encode();
    let count = text
        .lines()
        .find(|l| l.starts_with("discovery_update_latency_ms_count"))
        .unwrap();
    assert!(count.ends_with(" 1"), "{count}");
    let wakeups = text
        .lines()
        .find(|l| l.starts_with("discovery_wakeups_total"))
        .unwrap();
    // The slice's deletion woke this one subscription.
    assert!(wakeups.ends_with(" 1"), "{wakeups}");
}
