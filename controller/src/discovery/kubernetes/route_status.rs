//! Writes the status of the routes whose parent is a Service: Weft's
//! entries in `status.parents`, as [`route::status`] computes them.
//!
//! One task for all routes. It waits until what a status depends on
//! changes (Services and routes; see [`Store::route_inputs`]), lets a
//! burst settle, and recomputes every route's entries from the store. A
//! route is written only when its entries differ from what was last
//! written, and the API server's copy is read first, so a restarted
//! controller that finds its entries in place writes nothing. The patch
//! carries the `resourceVersion` it was computed from: another
//! controller's concurrent write to the same list makes it a conflict,
//! which is read and merged again, never overwritten. Failures are
//! retried on the next change or after [`RETRY`].
//!
//! [`route::status`]: crate::discovery::route::status

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use crate::discovery::metrics::StatusWrite;
use crate::discovery::model::Key;
use crate::discovery::route::RouteKind;
use crate::discovery::route::gateway::{GrpcRoute, HttpRoute, WithRouteStatus};
use crate::discovery::route::status::{self, Desired};
use crate::discovery::{Kind, Store};

/// How long a burst of changes may take to land before statuses are
/// computed from it.
const SETTLE: Duration = Duration::from_millis(200);
/// When to try failed writes again if nothing else changes.
const RETRY: Duration = Duration::from_secs(5);
/// Conflicts in a row before a write waits for the next round.
const CONFLICTS: usize = 3;

type RouteId = (RouteKind, Key);

/// Runs for as long as the controller does.
pub async fn run(client: Client, store: Arc<Store>) {
    let mut inputs = store.route_inputs();
    let mut written: HashMap<RouteId, Desired> = HashMap::new();
    let mut failed = false;
    loop {
        if failed {
            // A change or the retry timer, whichever comes first.
            let _ = tokio::time::timeout(RETRY, inputs.changed()).await;
        } else if inputs.changed().await.is_err() {
            return;
        }
        if !store.is_synced() {
            continue;
        }
        tokio::time::sleep(SETTLE).await;
        inputs.borrow_and_update();
        let wanted = wanted(&store);
        written.retain(|id, _| wanted.contains_key(id));
        failed = false;
        for (id, desired) in wanted {
            if written.get(&id) == Some(&desired) {
                continue;
            }
            let kind = Kind::of_route(id.0);
            match write(&client, &id, &desired).await {
                Ok(result) => {
                    store.metrics().route_status(kind, result);
                    let before = written.get(&id);
                    if desired.shadowed > before.map_or(0, |d| d.shadowed) {
                        store.metrics().invalid_config("route", "conflicting_match");
                    }
                    for reason in newly_unresolved(before, &desired) {
                        store.metrics().invalid_config("route", reason);
                    }
                    written.insert(id, desired);
                }
                Err(error) => {
                    store.metrics().route_status(kind, StatusWrite::Failed);
                    tracing::warn!(route = %format!("{}/{}/{}", id.0.as_str(), id.1.0, id.1.1), %error, "could not write the route's status; retrying");
                    failed = true;
                }
            }
        }
    }
}

/// Reasons only the store's other objects reveal (a parent or backend
/// Service that does not exist), in `now`'s conditions but not in
/// `before`'s: counted once when they appear. What the route itself gets
/// wrong was counted when it was read.
fn newly_unresolved(before: Option<&Desired>, now: &Desired) -> Vec<&'static str> {
    let reasons = |d: &Desired| -> Vec<&'static str> {
        d.parents
            .iter()
            .flat_map(|p| &p.conditions)
            .filter(|c| !c.status && matches!(c.reason, "NoMatchingParent" | "BackendNotFound"))
            .map(|c| c.reason)
            .collect()
    };
    let old = before.map(reasons).unwrap_or_default();
    let mut new = reasons(now);
    new.retain(|r| !old.contains(r));
    new.sort_unstable();
    new.dedup();
    new
}

/// Every route's entries, from one read of the store.
fn wanted(store: &Store) -> HashMap<RouteId, Desired> {
    let objects = store.read();
    let http = objects
        .http_routes
        .iter()
        .map(|(k, r)| (RouteKind::Http, k, r));
    let grpc = objects
        .grpc_routes
        .iter()
        .map(|(k, r)| (RouteKind::Grpc, k, r));
    let all: Vec<_> = http.chain(grpc).collect();
    // Routes by (their namespace, a parent Service): the peers whose
    // matches can conflict, since they apply to the same clients.
    let mut groups: HashMap<(&str, &Key), Vec<status::Peer<'_>>> = HashMap::new();
    for (_, key, route) in &all {
        for parent in &route.parents {
            groups
                .entry((key.0.as_str(), &parent.service))
                .or_default()
                .push((key, route));
        }
    }
    all.iter()
        .map(|(kind, key, route)| {
            let peers: Vec<status::Peer<'_>> = route
                .parents
                .iter()
                .flat_map(|p| &groups[&(key.0.as_str(), &p.service)])
                .filter(|(k, _)| k != key)
                .copied()
                .collect();
            let desired = status::desired(key, route, &objects.services, &peers);
            ((*kind, (*key).clone()), desired)
        })
        .collect()
}

async fn write(
    client: &Client,
    (kind, key): &RouteId,
    desired: &Desired,
) -> Result<StatusWrite, kube::Error> {
    match kind {
        RouteKind::Http => write_kind::<HttpRoute>(client, key, desired).await,
        RouteKind::Grpc => write_kind::<GrpcRoute>(client, key, desired).await,
    }
}

async fn write_kind<K>(
    client: &Client,
    (namespace, name): &Key,
    desired: &Desired,
) -> Result<StatusWrite, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + WithRouteStatus
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut conflicts = 0;
    loop {
        let current = match api.get_status(name).await {
            Ok(current) => current,
            // Deleted meanwhile: nothing to say.
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(StatusWrite::Unchanged),
            Err(e) => return Err(e),
        };
        if status::up_to_date(current.route_status(), desired) {
            return Ok(StatusWrite::Unchanged);
        }
        let now = Time(k8s_openapi::chrono::Utc::now());
        let body = serde_json::json!({
            "metadata": {"resourceVersion": current.meta().resource_version},
            "status": status::merged(current.route_status(), desired, &now),
        });
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => return Ok(StatusWrite::Written),
            Err(kube::Error::Api(e)) if e.code == 409 && conflicts < CONFLICTS => conflicts += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(StatusWrite::Unchanged),
            Err(e) => return Err(e),
        }
    }
}
