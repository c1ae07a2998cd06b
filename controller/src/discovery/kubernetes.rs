//! The Kubernetes source: kube-rs watchers over Services, EndpointSlices,
//! Pods and TrafficSplits, feeding the store as objects change.
//!
//! EndpointSlices are read in whichever version the API server serves
//! (`discovery.k8s.io/v1` on current clusters, `v1beta1` on 1.20), and
//! TrafficSplits in the newest SMI version installed. A cluster without the
//! TrafficSplit CRD works without splits, and picks them up once the CRD
//! appears.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::Serialize;

use super::{Kind, Object, Store};

/// How often to look again for an API group that is not installed.
const GROUP_RETRY: Duration = Duration::from_secs(30);

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

/// Starts one watcher per kind.
pub fn spawn(client: Client, store: Arc<Store>) {
    let gate = Arc::new(SyncGate {
        store: store.clone(),
        pending: AtomicUsize::new(4),
    });
    let listed = || Listed(Some(gate.clone()));
    let config = watcher::Config::default;
    {
        let (store, mut listed) = (store.clone(), listed());
        let api: Api<k8s_openapi::api::core::v1::Service> = Api::all(client.clone());
        tokio::spawn(async move {
            run(
                Kind::Service,
                watcher::watcher(api, config()),
                &store,
                &mut listed,
            )
            .await
        });
    }
    {
        let (store, mut listed) = (store.clone(), listed());
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client.clone());
        tokio::spawn(async move {
            run(
                Kind::Pod,
                watcher::watcher(api, config()),
                &store,
                &mut listed,
            )
            .await
        });
    }
    for (kind, group, resource_kind) in [
        (Kind::Slice, "discovery.k8s.io", "EndpointSlice"),
        (Kind::Split, weft_api::split::GROUP, weft_api::split::KIND),
    ] {
        let (client, store, mut listed) = (client.clone(), store.clone(), listed());
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
                        // Without the CRD there are simply no splits: do
                        // not hold readiness for it.
                        if kind == Kind::Split {
                            listed.done();
                        }
                        tokio::time::sleep(GROUP_RETRY).await;
                    }
                }
            };
            tracing::info!(kind = %resource_kind, version = %resource.version, "watching");
            let api: Api<DynamicObject> = Api::all_with(client, &resource);
            run(kind, watcher::watcher(api, config()), &store, &mut listed).await
        });
    }
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
    K: Serialize,
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
                if let (Some(list), Some(object)) = (listing.as_mut(), convert(kind, &object)) {
                    list.push(object);
                }
            }
            Ok(Event::InitDone) => {
                let objects = listing.take().unwrap_or_default();
                tracing::info!(kind = kind.as_str(), count = objects.len(), "listed");
                store.replace(&[kind], objects);
                listed.done();
            }
            Ok(Event::Apply(object)) => {
                if let Some(object) = convert(kind, &object) {
                    store.apply(object);
                }
            }
            Ok(Event::Delete(object)) => {
                let value = serde_json::to_value(&object).unwrap_or_default();
                let meta = &value["metadata"];
                if let Some(name) = meta["name"].as_str() {
                    let ns = meta["namespace"].as_str().unwrap_or("default");
                    store.delete(kind, &(ns.to_string(), name.to_string()));
                }
            }
        }
    }
}

fn convert<K: Serialize>(kind: Kind, object: &K) -> Option<Object> {
    let value = match serde_json::to_value(object) {
        Ok(value) => value,
        Err(error) => {
            tracing::warn!(kind = kind.as_str(), %error, "cannot read object");
            return None;
        }
    };
    match super::file::object_of(kind, value) {
        Ok(object) => object,
        Err(error) => {
            tracing::warn!(kind = kind.as_str(), %error, "ignoring object");
            None
        }
    }
}
