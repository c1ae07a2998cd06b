//! The file source: Services, EndpointSlices, Pods, TrafficSplits,
//! Gateway API routes (HTTPRoute, GRPCRoute), AuthorizationPolicies, Namespaces and
//! NetworkPolicies as
//! Kubernetes YAML (or JSON) on disk, reloaded when the files change.
//!
//! A path may be one file or a folder (its `*.yaml`, `*.yml` and `*.json`
//! files, not recursive; hidden files skipped). Files may hold several
//! documents and `v1 List`s. A file that does not parse is reported and its
//! previous content stays in effect, so a half-written edit never empties
//! discovery; a removed file's objects go away.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use serde_json::Value;
use weft_api::split::TrafficSplit;

use super::authz::AuthorizationPolicyInfo;
use super::authz::crd::AuthorizationPolicy;
use super::model::{PodInfo, ServiceInfo, SliceInfo, SplitInfo};
use super::netpol::{NamespaceInfo, NetworkPolicyInfo};
use super::route::gateway::{GrpcRoute, HttpRoute};
use super::{Kind, Object, Store, route};

const ALL_KINDS: &[Kind] = &[
    Kind::Service,
    Kind::Slice,
    Kind::Pod,
    Kind::Split,
    Kind::HttpRoute,
    Kind::GrpcRoute,
    Kind::Namespace,
    Kind::NetworkPolicy,
    Kind::AuthorizationPolicy,
];

/// Why a file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {doc}: {reason}")]
    Parse {
        path: PathBuf,
        doc: usize,
        reason: String,
    },
}

/// Parses every object in one file's text.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Object>, FileError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let parse_error = |reason: String| FileError::Parse {
            path: path.to_path_buf(),
            doc: i + 1,
            reason,
        };
        let value = Value::deserialize(doc).map_err(|e| parse_error(e.to_string()))?;
        convert(value, &mut out).map_err(parse_error)?;
    }
    Ok(out)
}

/// Converts one Kubernetes object (or `List`) into discovery objects.
/// Kinds discovery does not use are skipped.
pub fn convert(mut value: Value, out: &mut Vec<Object>) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = match (
        api_version.as_str(),
        value["kind"].as_str().unwrap_or_default(),
    ) {
        ("v1", "List") => {
            let items = match value.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) => items,
                _ => return Err("List without items".into()),
            };
            for item in items {
                convert(item, out)?;
            }
            return Ok(());
        }
        ("v1", "Service") => Kind::Service,
        ("v1", "Pod") => Kind::Pod,
        ("discovery.k8s.io/v1" | "discovery.k8s.io/v1beta1", "EndpointSlice") => Kind::Slice,
        (v, "TrafficSplit") if v.starts_with(weft_api::split::GROUP) => Kind::Split,
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => Kind::HttpRoute,
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => Kind::GrpcRoute,
        ("v1", "Namespace") => Kind::Namespace,
        ("networking.k8s.io/v1", "NetworkPolicy") => Kind::NetworkPolicy,
        ("policy.weft.io/v1alpha1", "AuthorizationPolicy") => Kind::AuthorizationPolicy,
        (_, kind) => {
            tracing::debug!(%api_version, %kind, "not a discovery object; skipped");
            return Ok(());
        }
    };
    out.extend(object_of(kind, value)?);
    Ok(())
}

/// Converts one document known to be of `kind`.
fn object_of(kind: Kind, value: Value) -> Result<Option<Object>, String> {
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        return Err(format!("{} without metadata.name", kind.as_str()));
    }
    let namespace = value["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let bad = |e: serde_json::Error| format!("{} {name:?}: {e}", kind.as_str());
    let key = (namespace, name.clone());
    Ok(match kind {
        Kind::Service => {
            let svc: Service = serde_json::from_value(value).map_err(bad)?;
            Some(Object::Service(key, ServiceInfo::from_k8s(&svc)))
        }
        Kind::Pod => {
            let pod: Pod = serde_json::from_value(value).map_err(bad)?;
            let (info, invalid) = PodInfo::from_k8s(&pod);
            Some(Object::Pod(key, info, invalid))
        }
        Kind::Slice => {
            let slice = endpoint_slice(value).map_err(bad)?;
            SliceInfo::from_k8s(&slice).map(|info| Object::Slice(key, info))
        }
        Kind::Split => {
            let split: TrafficSplit = serde_json::from_value(value).map_err(bad)?;
            Some(Object::Split(key, SplitInfo::from_split(&split)))
        }
        Kind::HttpRoute => {
            let route: HttpRoute = serde_json::from_value(value).map_err(bad)?;
            let info = route::convert::http_route(&key.0, &route);
            Some(Object::Route(key, info))
        }
        Kind::GrpcRoute => {
            let route: GrpcRoute = serde_json::from_value(value).map_err(bad)?;
            let info = route::convert::grpc_route(&key.0, &route);
            Some(Object::Route(key, info))
        }
        Kind::Namespace => {
            let namespace: Namespace = serde_json::from_value(value).map_err(bad)?;
            let info = NamespaceInfo::from_k8s(&namespace);
            Some(Object::Namespace((String::new(), name), info))
        }
        Kind::NetworkPolicy => {
            let policy: NetworkPolicy = serde_json::from_value(value).map_err(bad)?;
            Some(Object::NetworkPolicy(
                key,
                NetworkPolicyInfo::from_k8s(&policy),
            ))
        }
        Kind::AuthorizationPolicy => {
            let policy: AuthorizationPolicy = serde_json::from_value(value).map_err(bad)?;
            let info = AuthorizationPolicyInfo::from_crd(&key.0, &policy);
            Some(Object::AuthorizationPolicy(key, info))
        }
    })
}

/// Reads an EndpointSlice of either served version. v1beta1 has the same
/// fields discovery uses (plus `topology`, ignored), so it is read as v1
/// once its `apiVersion` no longer says otherwise.
fn endpoint_slice(mut value: Value) -> Result<EndpointSlice, serde_json::Error> {
    if let Some(map) = value.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    serde_json::from_value(value)
}

fn list(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// What was last read from each file.
#[derive(Debug, Default)]
pub struct FileState {
    files: BTreeMap<PathBuf, (String, Vec<Object>)>,
}

impl FileState {
    /// Rereads `path`; returns whether any object changed. Errors are
    /// reported and leave the affected file's last good content in place.
    pub fn reload(&mut self, path: &Path, store: &Store) -> bool {
        let files = match list(path) {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot list discovery files; keeping what was loaded");
                store.metrics.file_error();
                return false;
            }
        };
        let mut changed = false;
        let before = self.files.len();
        self.files.retain(|p, _| files.contains(p));
        changed |= self.files.len() != before;
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                // Removed between listing and reading: gone next round.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    let error = FileError::Read { path: file, source };
                    tracing::warn!(%error, "keeping the file's previous content");
                    store.metrics.file_error();
                    continue;
                }
            };
            if self.files.get(&file).is_some_and(|(old, _)| *old == text) {
                continue;
            }
            match parse(&file, &text) {
                Ok(objects) => {
                    tracing::info!(file = %file.display(), objects = objects.len(), "loaded discovery file");
                    self.files.insert(file, (text, objects));
                    changed = true;
                }
                Err(error) => {
                    tracing::warn!(%error, "keeping the file's previous content");
                    store.metrics.file_error();
                    // Remember the bad text so the error is reported once,
                    // not on every poll, but keep the old objects.
                    let old = self.files.remove(&file).map(|(_, o)| o).unwrap_or_default();
                    self.files.insert(file, (text, old));
                }
            }
        }
        if changed {
            let objects = self.files.values().flat_map(|(_, o)| o.clone()).collect();
            store.replace(ALL_KINDS, objects);
        }
        changed
    }
}

/// Loads `path` now, then polls it for changes.
pub async fn run(path: PathBuf, store: Arc<Store>, interval: Duration) {
    let mut state = FileState::default();
    state.reload(&path, &store);
    store.mark_synced();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.reload(&path, &store);
    }
}
