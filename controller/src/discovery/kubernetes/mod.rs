//! The Kubernetes source: kube-rs watchers over Services, EndpointSlices,
//! Pods, Namespaces, NetworkPolicies, TrafficSplits and Gateway API routes
//! (HTTPRoute, GRPCRoute, as Weft's own types of them), feeding the store
//! as objects change.
//!
//! Objects are read straight from the API server's JSON into typed structs
//! and converted into the store's model, with no second encoding:
//! Services and Pods as k8s-openapi types; EndpointSlices and TrafficSplits,
//! whose served version is only known at run time, as [`Served`] (the
//! fields discovery uses, which every served version shares).
//! EndpointSlices are read in whichever version the API server serves
//! (`discovery.k8s.io/v1` on current clusters, `v1beta1` on 1.20), and
//! TrafficSplits in the newest SMI version installed. A cluster without the
//! TrafficSplit CRD works without splits, and picks them up once the CRD
//! appears. [`route_status`] writes the routes' status back.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::DynamicResourceScope;
use kube::discovery::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use weft_api::split::TrafficSplitSpec;

use super::authz::AuthorizationPolicyInfo;
use super::authz::crd::AuthorizationPolicy;
use super::model::{Key, PodInfo, ServiceInfo, SliceInfo, SplitInfo};
use super::netpol::{NamespaceInfo, NetworkPolicyInfo};
use super::route::gateway::{GrpcRoute, HttpRoute};
use super::{Kind, Object, Store, route};

mod route_status;

/// How often to look again for an API group that is not installed.
const GROUP_RETRY: Duration = Duration::from_secs(30);

/// An object of a kind whose version is chosen at run time: its metadata
/// and the body fields discovery reads, which all its served versions
/// share (fields a version adds, such as v1beta1's `topology`, are
/// skipped while decoding).
#[derive(Debug, Clone, Deserialize)]
struct Served<Body> {
    metadata: ObjectMeta,
    #[serde(flatten)]
    body: Body,
}

/// What discovery reads of an EndpointSlice, v1 or v1beta1.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SliceBody {
    address_type: String,
    // Optional, not defaulted: the API server writes an empty list as
    // `null` (a slice whose Service has no pods yet).
    endpoints: Option<Vec<Endpoint>>,
    ports: Option<Vec<EndpointPort>>,
}

/// What discovery reads of a TrafficSplit, any SMI version.
#[derive(Debug, Clone, Deserialize)]
struct SplitBody {
    spec: TrafficSplitSpec,
}

impl<Body> Resource for Served<Body> {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.kind)
    }
    fn group(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.group)
    }
    fn version(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.version)
    }
    fn api_version(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.api_version)
    }
    fn plural(resource: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&resource.plural)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A watched object that becomes one discovery object (or none, for a
/// slice of an address type discovery does not route).
trait Discovered: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static {
    fn discovered(&self, key: Key) -> Option<Object>;
}

impl Discovered for Service {
    fn discovered(&self, key: Key) -> Option<Object> {
        Some(Object::Service(key, ServiceInfo::from_k8s(self)))
    }
}

impl Discovered for Pod {
    fn discovered(&self, key: Key) -> Option<Object> {
        let (info, invalid) = PodInfo::from_k8s(self);
        Some(Object::Pod(key, info, invalid))
    }
}

impl Discovered for Namespace {
    fn discovered(&self, key: Key) -> Option<Object> {
        // Cluster-scoped: keyed by name alone.
        Some(Object::Namespace(
            (String::new(), key.1),
            NamespaceInfo::from_k8s(self),
        ))
    }
}

impl Discovered for NetworkPolicy {
    fn discovered(&self, key: Key) -> Option<Object> {
        Some(Object::NetworkPolicy(
            key,
            NetworkPolicyInfo::from_k8s(self),
        ))
    }
}

impl Discovered for Served<SliceBody> {
    fn discovered(&self, key: Key) -> Option<Object> {
        let body = &self.body;
        SliceInfo::from_parts(
            &self.metadata,
            &body.address_type,
            body.ports.as_deref().unwrap_or_default(),
            body.endpoints.as_deref().unwrap_or_default(),
        )
        .map(|info| Object::Slice(key, info))
    }
}

impl Discovered for HttpRoute {
    fn discovered(&self, key: Key) -> Option<Object> {
        let info = route::convert::http_route(&key.0, self);
        Some(Object::Route(key, info))
    }
}

impl Discovered for GrpcRoute {
    fn discovered(&self, key: Key) -> Option<Object> {
        let info = route::convert::grpc_route(&key.0, self);
        Some(Object::Route(key, info))
    }
}

impl Discovered for AuthorizationPolicy {
    fn discovered(&self, key: Key) -> Option<Object> {
        let info = AuthorizationPolicyInfo::from_crd(&key.0, self);
        Some(Object::AuthorizationPolicy(key, info))
    }
}

impl Discovered for Served<SplitBody> {
    fn discovered(&self, key: Key) -> Option<Object> {
        Some(Object::Split(key, SplitInfo::from_spec(&self.body.spec)))
    }
}

/// The store key of a watched object. Objects without a namespace are
/// read as in `default`, as the file source does.
fn key_of<K: Resource>(object: &K) -> Key {
    (
        object.namespace().unwrap_or_else(|| "default".into()),
        object.name_any(),
    )
}

/// Marks the store synced once every watcher has listed its kind once.
#[derive(Debug)]
struct SyncGate {
    store: Arc<Store>,
    pending: AtomicUsize,
}

/// One watcher's share of the gate; counts only the first time.
#[derive(Debug)]
struct Listed(Option<Arc<SyncGate>>);

impl Listed {
    fn done(&mut self) {
        if let Some(gate) = self.0.take()
            && gate.pending.fetch_sub(1, Ordering::AcqRel) == 1
        {
            gate.store.mark_synced();
        }
    }
}

/// Starts one watcher per kind, and the route status writer.
pub fn spawn(client: Client, store: Arc<Store>) {
    let gate = Arc::new(SyncGate {
        store: store.clone(),
        pending: AtomicUsize::new(9),
    });
    let listed = || Listed(Some(gate.clone()));
    spawn_typed::<Service>(Kind::Service, client.clone(), store.clone(), listed());
    spawn_typed::<Pod>(Kind::Pod, client.clone(), store.clone(), listed());
    spawn_typed::<Namespace>(Kind::Namespace, client.clone(), store.clone(), listed());
    spawn_typed::<NetworkPolicy>(Kind::NetworkPolicy, client.clone(), store.clone(), listed());
    spawn_served::<SliceBody>(
        Kind::Slice,
        ("discovery.k8s.io", "EndpointSlice"),
        client.clone(),
        store.clone(),
        listed(),
    );
    spawn_served::<SplitBody>(
        Kind::Split,
        (weft_api::split::GROUP, weft_api::split::KIND),
        client.clone(),
        store.clone(),
        listed(),
    );
    spawn_optional::<HttpRoute>(Kind::HttpRoute, client.clone(), store.clone(), listed());
    spawn_optional::<GrpcRoute>(Kind::GrpcRoute, client.clone(), store.clone(), listed());
    spawn_optional::<AuthorizationPolicy>(
        Kind::AuthorizationPolicy,
        client.clone(),
        store.clone(),
        listed(),
    );
    tokio::spawn(route_status::run(client, store));
}

/// Watches a built-in kind, cluster-wide.
fn spawn_typed<K>(kind: Kind, client: Client, store: Arc<Store>, mut listed: Listed)
where
    K: Discovered + Resource<DynamicType = ()>,
{
    let api: Api<K> = Api::all(client);
    tokio::spawn(async move {
        run(
            kind,
            watcher::watcher(api, watcher::Config::default()),
            &store,
            &mut listed,
        )
        .await
    });
}

/// Watches a kind of an optional CRD (Gateway API routes in `v1`, Weft's
/// AuthorizationPolicy) in the version Weft reads, once the cluster serves
/// it. A cluster without the CRD works without those objects (readiness
/// does not wait for them) and picks them up once the CRD appears.
fn spawn_optional<K>(kind: Kind, client: Client, store: Arc<Store>, mut listed: Listed)
where
    K: Discovered + Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    tokio::spawn(async move {
        let resource_kind = K::kind(&()).into_owned();
        let mut reported = false;
        loop {
            match find(&client, &K::group(&()), &resource_kind).await {
                Ok(resource) if resource.version == K::version(&()) => break,
                Ok(resource) => {
                    if !reported {
                        tracing::warn!(kind = %resource_kind, served = %resource.version, wanted = %K::version(&()), "CRD version not served; install the CRDs of examples/install/");
                    }
                }
                Err(error) => {
                    if !reported {
                        tracing::info!(kind = %resource_kind, %error, "CRD not installed; none of its objects until it is");
                    }
                }
            }
            reported = true;
            listed.done();
            tokio::time::sleep(GROUP_RETRY).await;
        }
        tracing::info!(kind = %resource_kind, "watching");
        let api: Api<K> = Api::all(client);
        run(
            kind,
            watcher::watcher(api, watcher::Config::default()),
            &store,
            &mut listed,
        )
        .await
    });
}

/// Watches a kind in the version the server prefers, once the server
/// serves it.
fn spawn_served<Body>(
    kind: Kind,
    (group, resource_kind): (&'static str, &'static str),
    client: Client,
    store: Arc<Store>,
    mut listed: Listed,
) where
    Served<Body>: Discovered + Resource<DynamicType = ApiResource>,
{
    tokio::spawn(async move {
        let mut reported = false;
        let resource = loop {
            match find(&client, group, resource_kind).await {
                Ok(resource) => break resource,
                Err(error) => {
                    if !reported {
                        tracing::warn!(%group, kind = %resource_kind, %error, "API group not served; retrying");
                    }
                    reported = true;
                    // Without the CRD there are simply no splits: do not
                    // hold readiness for it.
                    if kind == Kind::Split {
                        listed.done();
                    }
                    tokio::time::sleep(GROUP_RETRY).await;
                }
            }
        };
        tracing::info!(kind = %resource_kind, version = %resource.version, "watching");
        let api: Api<Served<Body>> = Api::all_with(client, &resource);
        run(
            kind,
            watcher::watcher(api, watcher::Config::default()),
            &store,
            &mut listed,
        )
        .await
    });
}

/// The served version of `kind` in `group` the server prefers.
async fn find(client: &Client, group: &str, kind: &str) -> anyhow::Result<ApiResource> {
    let group = kube::discovery::group(client, group).await?;
    let (resource, _) = group
        .recommended_kind(kind)
        .ok_or_else(|| anyhow::anyhow!("the group serves no {kind}"))?;
    Ok(resource)
}

/// Feeds one watch stream into the store, for as long as the controller
/// runs. Errors are retried with kube-rs's backoff; the store keeps what it
/// had meanwhile.
async fn run<K, S>(kind: Kind, stream: S, store: &Store, listed: &mut Listed)
where
    K: Discovered,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let stream = stream.default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut listing: Option<Vec<Object>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Err(error) => {
                tracing::warn!(kind = kind.as_str(), %error, "watch failed; retrying");
            }
            Ok(Event::Init) => listing = Some(Vec::new()),
            Ok(Event::InitApply(object)) => {
                if let (Some(list), Some(object)) =
                    (listing.as_mut(), object.discovered(key_of(&object)))
                {
                    list.push(object);
                }
            }
            Ok(Event::InitDone) => {
                let objects = listing.take().unwrap_or_default();
                tracing::info!(kind = kind.as_str(), count = objects.len(), "listed");
                store.replace(&[kind], objects);
                listed.done();
            }
            Ok(Event::Apply(object)) => match object.discovered(key_of(&object)) {
                Some(object) => store.apply(object),
                // A slice that became unroutable (its address type, or its
                // service label gone) takes its endpoints with it.
                None => store.delete(kind, &key_of(&object)),
            },
            Ok(Event::Delete(object)) => store.delete(kind, &key_of(&object)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The watcher's typed decoding gives the same objects as the file
    /// source reading the same documents.
    fn same_as_file<K: Discovered>(json: &str) -> Object {
        let watched: K = serde_json::from_str(json).expect("decodes");
        let object = watched.discovered(key_of(&watched)).expect("an object");
        let from_file = super::super::file::parse(Path::new("x.json"), json).unwrap();
        assert_eq!(from_file, vec![object.clone()]);
        object
    }

    #[test]
    fn watched_objects_decode_straight_into_the_model() {
        let slice = same_as_file::<Served<SliceBody>>(
            r#"{"apiVersion":"discovery.k8s.io/v1beta1","kind":"EndpointSlice",
                "metadata":{"name":"web-abc","namespace":"demo","labels":{"kubernetes.io/service-name":"web"}},
                "addressType":"IPv4","ports":[{"name":"http","port":8080,"protocol":"TCP"}],
                "endpoints":[{"addresses":["10.42.0.5"],"conditions":{"ready":true},
                  "topology":{"kubernetes.io/hostname":"node-1"},"targetRef":{"kind":"Pod","name":"web-0"}}]}"#,
        );
        let Object::Slice(key, info) = slice else {
            panic!("{slice:?}")
        };
        assert_eq!(key, ("demo".to_string(), "web-abc".to_string()));
        assert_eq!(
            (info.service.as_str(), info.endpoints[0].pod.as_deref()),
            ("web", Some("web-0"))
        );
        same_as_file::<Served<SliceBody>>(
            r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
                "metadata":{"name":"web-def","namespace":"demo","labels":{"kubernetes.io/service-name":"web"}},
                "addressType":"IPv6","endpoints":[{"addresses":["fd00::5"]}]}"#,
        );
        // A Service without pods: the API server sends `null` lists.
        let empty = same_as_file::<Served<SliceBody>>(
            r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
                "metadata":{"name":"web-ghi","namespace":"demo","labels":{"kubernetes.io/service-name":"web"}},
                "addressType":"IPv4","endpoints":null,"ports":null}"#,
        );
        assert!(matches!(empty, Object::Slice(_, info) if info.endpoints.is_empty()));
        let split = same_as_file::<Served<SplitBody>>(
            r#"{"apiVersion":"split.smi-spec.io/v1alpha1","kind":"TrafficSplit",
                "metadata":{"name":"web-split","namespace":"demo"},
                "spec":{"service":"web.demo.svc.cluster.local","backends":[
                  {"service":"web-v1","weight":"900m"},{"service":"web-v2","weight":"100m"}]}}"#,
        );
        let Object::Split(_, info) = split else {
            panic!("{split:?}")
        };
        assert_eq!((info.apex.as_str(), info.backends.len()), ("web", 2));
        same_as_file::<Service>(
            r#"{"apiVersion":"v1","kind":"Service",
                "metadata":{"name":"web","namespace":"demo","annotations":{"retry.weft.io/http":"5xx"}},
                "spec":{"clusterIP":"10.96.0.10","ports":[{"name":"http","port":80,"targetPort":"http","appProtocol":"http"}]}}"#,
        );
        same_as_file::<Pod>(
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-0","namespace":"demo"},
                "spec":{"serviceAccountName":"web","containers":[{"name":"app","ports":[{"name":"http","containerPort":8080}]},{"name":"weft-proxy"}]},
                "status":{"podIP":"10.42.0.5","podIPs":[{"ip":"10.42.0.5"},{"ip":"fd00::5"}]}}"#,
        );
    }

    #[test]
    fn watched_routes_decode_as_the_file_source_reads_them() {
        let route = same_as_file::<HttpRoute>(
            r#"{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute",
                "metadata":{"name":"web","namespace":"demo","generation":2,"creationTimestamp":"2026-12-01T10:00:00Z"},
                "spec":{"parentRefs":[{"group":"","kind":"Service","name":"web","port":80}],
                  "rules":[{"matches":[{"path":{"type":"PathPrefix","value":"/api"}}],
                    "backendRefs":[{"name":"web-v2","port":80,"weight":10}]}]}}"#,
        );
        let Object::Route(_, info) = route else {
            panic!("{route:?}")
        };
        assert_eq!((info.generation, info.rules.len()), (2, 1));
        assert_eq!(info.created, "2026-12-01T10:00:00Z");
        same_as_file::<GrpcRoute>(
            r#"{"apiVersion":"gateway.networking.k8s.io/v1","kind":"GRPCRoute",
                "metadata":{"name":"echo","namespace":"demo"},
                "spec":{"parentRefs":[{"kind":"Service","name":"echo"}],
                  "rules":[{"matches":[{"method":{"service":"echo.Echo"}}],
                    "backendRefs":[{"name":"echo-v2","port":9000}]}]}}"#,
        );
    }

    #[test]
    fn a_slice_without_a_routable_address_type_is_no_object() {
        let fqdn: Served<SliceBody> = serde_json::from_str(
            r#"{"metadata":{"name":"x","namespace":"demo","labels":{"kubernetes.io/service-name":"web"}},
                "addressType":"FQDN","endpoints":[{"addresses":["example.test"]}]}"#,
        )
        .unwrap();
        assert_eq!(fqdn.discovered(key_of(&fqdn)), None);
    }
}
