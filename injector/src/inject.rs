//! The mutation itself: a pure function from a Pod, its namespace's choice
//! and the mesh settings to a JSON Patch (RFC 6902) that adds the proxy, or
//! to the reason the pod is left alone, or to a denial naming the bad
//! annotations. Nothing here does I/O, so every case is a unit test.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde_json::Value;
use weft_api::{PROXY_CONTAINER_NAME, PROXY_UID, labels, ports};

use crate::pod_config::{self, AnnotationError, InjectAnnotation};
use crate::settings::{MeshSettings, SidecarMode};

/// Name of the projected service-account token volume.
pub const TOKEN_VOLUME: &str = "weft-identity-token";
/// Where the proxy finds its token.
pub const TOKEN_DIR: &str = "/var/run/weft/identity";
/// The pod-lifetime volume where the proxy keeps the controller's latest
/// trust anchors, so that a restarted proxy container follows a rotation
/// that happened after the pod was made.
pub const ANCHORS_VOLUME: &str = "weft-trust-anchors";
pub const ANCHORS_DIR: &str = "/var/run/weft/anchors";
/// Pod annotation `kubectl logs` and `kubectl exec` read to pick a container.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// Namespaces whose pods are never injected, whatever they say.
const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// What the webhook knows about the pod's namespace. The
/// MutatingWebhookConfiguration's `namespaceSelector` decides which of the
/// webhook's paths the API server calls, so the injector needs no access
/// to Namespace objects.
#[derive(Clone, Copy, Debug)]
pub struct NamespaceView<'a> {
    pub name: &'a str,
    /// The namespace is labelled `weft.io/inject=enabled`.
    pub injection_enabled: bool,
}

/// Why a pod is left as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Neither the namespace nor the pod asked for the proxy.
    NotRequested,
    /// The pod is annotated `weft.io/inject: disabled`.
    OptedOut,
    /// The pod already has a `weft-proxy` container.
    AlreadyInjected,
    /// The pod shares the node's network; redirecting it would capture the
    /// node's traffic.
    HostNetwork,
    /// `kube-system` and its kin, or the mesh's own namespace.
    SystemNamespace,
    /// The pod runs on Windows (`spec.os.name: windows`): the proxy and its
    /// redirect rules are Linux-only, and the API server refuses a Windows
    /// pod with the proxy's Linux security settings. Left unmeshed, and
    /// counted, rather than denied, so a mixed namespace keeps working.
    Windows,
    /// The pod has no containers: not a valid pod, and nothing to patch
    /// beside. Left for the API server's validation to refuse with its own
    /// message (found by fuzzing: the patch named a container list that
    /// was not there, and the API server would have failed the request on
    /// an unappliable patch).
    NoContainers,
}

impl Skip {
    /// A short label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotRequested => "not_requested",
            Skip::OptedOut => "opted_out",
            Skip::AlreadyInjected => "already_injected",
            Skip::HostNetwork => "host_network",
            Skip::SystemNamespace => "system_namespace",
            Skip::Windows => "windows",
            Skip::NoContainers => "no_containers",
        }
    }
}

/// The outcome for one pod.
#[derive(Debug)]
pub enum Decision {
    Inject {
        patch: Patch,
        /// Things the user should know; the API server shows them to
        /// `kubectl`.
        warnings: Vec<String>,
    },
    Skip(Skip),
}

/// Why a pod is refused. The message is what `kubectl` prints.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("weft-injector: {}", join_errors(.0))]
    Annotations(Vec<AnnotationError>),
    #[error(
        "weft-injector: container {container:?} uses port {port}, which weft-proxy needs; \
         move it or annotate the pod weft.io/inject: disabled"
    )]
    PortConflict { container: String, port: i32 },
    #[error("weft-injector: the pod already has a volume named {0:?}, which weft-proxy needs")]
    VolumeConflict(&'static str),
}

impl Denial {
    /// A short label value for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::Annotations(_) => "bad_annotation",
            Denial::PortConflict { .. } => "port_conflict",
            Denial::VolumeConflict(_) => "volume_conflict",
        }
    }
}

fn join_errors(errors: &[AnnotationError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Decides what to do with `pod` and builds the patch.
pub fn mutate(
    pod: &Pod,
    namespace: NamespaceView<'_>,
    settings: &MeshSettings,
    mode: SidecarMode,
) -> Result<Decision, Denial> {
    let empty_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty_spec);
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);

    if spec.containers.is_empty() {
        return Ok(Decision::Skip(Skip::NoContainers));
    }
    if spec.host_network == Some(true) {
        return Ok(Decision::Skip(Skip::HostNetwork));
    }
    if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        return Ok(Decision::Skip(Skip::Windows));
    }
    if SYSTEM_NAMESPACES.contains(&namespace.name)
        || namespace.name == settings.control_plane_namespace
    {
        return Ok(Decision::Skip(Skip::SystemNamespace));
    }
    if has_proxy(spec) {
        return Ok(Decision::Skip(Skip::AlreadyInjected));
    }
    // A bad `weft.io/inject` is reported together with every other bad
    // annotation, so one failed apply shows every mistake.
    let config = match pod_config::inject_annotation(annotations) {
        Ok(Some(InjectAnnotation::Disabled)) => return Ok(Decision::Skip(Skip::OptedOut)),
        Ok(Some(InjectAnnotation::Enabled)) => pod_config::proxy_config(annotations, settings),
        Ok(None) if namespace.injection_enabled => pod_config::proxy_config(annotations, settings),
        Ok(None) => return Ok(Decision::Skip(Skip::NotRequested)),
        Err(bad) => {
            let mut errors = vec![bad];
            errors.extend(
                pod_config::proxy_config(annotations, settings)
                    .err()
                    .into_iter()
                    .flatten(),
            );
            return Err(Denial::Annotations(errors));
        }
    }
    .map_err(Denial::Annotations)?;
    let config =
        pod_config::fit_pod_resources(config, spec, annotations).map_err(Denial::Annotations)?;
    check_conflicts(spec)?;

    let mut ops = Vec::new();
    let add = |ops: &mut Vec<PatchOperation>, path: &[&str], value: Value| {
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(path.iter().copied()),
            value,
        }));
    };

    // Labels for Prometheus relabelling; a workload label the user set
    // on purpose is kept.
    let pod_labels = pod.metadata.labels.as_ref();
    let mut new_labels = vec![(
        labels::CONTROL_PLANE_NS,
        settings.control_plane_namespace.clone(),
    )];
    if !pod_labels.is_some_and(|l| l.contains_key(labels::WORKLOAD)) {
        new_labels.push((labels::WORKLOAD, workload_name(pod)));
    }
    add_to_map(&mut ops, "labels", pod_labels.is_some(), new_labels);

    // Tells other proxies (through discovery) that this one takes mesh
    // mTLS on the app's own ports.
    let mut new_annotations = vec![(
        weft_api::annotations::MESH_TRANSPORT,
        weft_api::annotations::MESH_TRANSPORT_APP_PORT.to_string(),
    )];
    let mut warnings = Vec::new();
    if mode == SidecarMode::Classic {
        // The proxy becomes the first container; without this, `kubectl
        // logs` and `kubectl exec` would pick it instead of the app.
        if !annotations.contains_key(DEFAULT_CONTAINER_ANNOTATION)
            && let Some(app) = spec.containers.first()
        {
            new_annotations.push((DEFAULT_CONTAINER_ANNOTATION, app.name.clone()));
        }
        for init in spec.init_containers.iter().flatten() {
            warnings.push(format!(
                "init container {:?} runs before weft-proxy (classic sidecar mode): its outbound \
                 TCP is refused unless it runs as UID {PROXY_UID} or its ports are in {}",
                init.name,
                weft_api::annotations::SKIP_OUTBOUND_PORTS
            ));
        }
    }
    add_to_map(
        &mut ops,
        "annotations",
        pod.metadata.annotations.is_some(),
        new_annotations,
    );
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let uid = c
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or_else(|| spec.security_context.as_ref().and_then(|s| s.run_as_user));
        if uid == Some(i64::from(PROXY_UID)) {
            warnings.push(format!(
                "container {:?} runs as UID {PROXY_UID}, the proxy's: its traffic bypasses the mesh",
                c.name
            ));
        }
    }

    let volumes = [to_value(token_volume(settings)), to_value(anchors_volume())];
    match &spec.volumes {
        Some(_) => {
            for volume in volumes {
                add(&mut ops, &["spec", "volumes", "-"], volume);
            }
        }
        None => add(&mut ops, &["spec", "volumes"], Value::Array(volumes.into())),
    }

    // The validator goes first of all, so nothing in the pod runs before
    // its redirect rules are proven; in native mode the proxy comes next,
    // so the remaining init containers already have the mesh.
    // A Job's pod completes only when every container has exited. Native
    // sidecars are stopped by the kubelet; a classic one watches the app's
    // processes (in a shared process namespace) and exits after them.
    let runs_to_completion = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Job");
    let exit_with_app = mode == SidecarMode::Classic && runs_to_completion;
    // With `hostPID` the proxy already sees the app's processes, and the
    // API server refuses `shareProcessNamespace` beside it.
    if exit_with_app && spec.host_pid != Some(true) {
        if spec.share_process_namespace == Some(false) {
            warnings.push(
                "shareProcessNamespace is false: the proxy cannot see this Job's app finish, \
                 so the pod will not complete"
                    .to_string(),
            );
        } else {
            add(
                &mut ops,
                &["spec", "shareProcessNamespace"],
                Value::Bool(true),
            );
        }
    }
    let proxy = to_value(proxy_container(settings, &config, mode, exit_with_app));
    let mut init_front = vec![to_value(validator_container(settings, &config))];
    match mode {
        SidecarMode::Native => init_front.push(proxy),
        SidecarMode::Classic => add(&mut ops, &["spec", "containers", "0"], proxy),
    }
    match &spec.init_containers {
        Some(_) => {
            for (index, container) in init_front.into_iter().enumerate() {
                let index = index.to_string();
                add(&mut ops, &["spec", "initContainers", &index], container);
            }
        }
        None => add(
            &mut ops,
            &["spec", "initContainers"],
            Value::Array(init_front),
        ),
    }
    Ok(Decision::Inject {
        patch: Patch(ops),
        warnings,
    })
}

/// True when a container or init container is already the proxy.
pub fn has_proxy(spec: &PodSpec) -> bool {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER_NAME)
}

fn check_conflicts(spec: &PodSpec) -> Result<(), Denial> {
    let reserved = [ports::OUTBOUND, ports::INBOUND, ports::ADMIN].map(i32::from);
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for p in c.ports.iter().flatten() {
            if reserved.contains(&p.container_port) {
                return Err(Denial::PortConflict {
                    container: c.name.clone(),
                    port: p.container_port,
                });
            }
        }
    }
    for ours in [TOKEN_VOLUME, ANCHORS_VOLUME] {
        if spec.volumes.iter().flatten().any(|v| v.name == ours) {
            return Err(Denial::VolumeConflict(ours));
        }
    }
    Ok(())
}

/// Adds entries to `metadata.labels` or `metadata.annotations`: one `add`
/// per key when the map exists (keys escaped, `/` as `~1`), else the whole
/// map at once.
fn add_to_map(
    ops: &mut Vec<PatchOperation>,
    field: &str,
    exists: bool,
    entries: Vec<(&str, String)>,
) {
    if exists {
        for (key, value) in entries {
            ops.push(PatchOperation::Add(AddOperation {
                path: PointerBuf::from_tokens(["metadata", field, key]),
                value: Value::String(value),
            }));
        }
    } else {
        // Sorted by key, so the patch is the same whether serde_json keeps
        // insertion order (its `preserve_order` feature, which another
        // crate in the build may turn on) or not.
        let mut entries = entries;
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let map: serde_json::Map<String, Value> = entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", field]),
            value: Value::Object(map),
        }));
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("Kubernetes types serialize")
}

/// The owning workload's name: the Deployment behind a ReplicaSet (its
/// name less the pod-template hash), else the owner itself (StatefulSet,
/// DaemonSet, Job), else the pod's own name. Cut to a valid label value.
pub fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .or_else(|| meta.owner_references.iter().flatten().next());
    let name = match owner {
        Some(o) if o.kind == "ReplicaSet" => {
            let hash = meta
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|h| o.name.strip_suffix(h.as_str())) {
                Some(deployment) if deployment.ends_with('-') => {
                    deployment.trim_end_matches('-').to_string()
                }
                _ => o.name.clone(),
            }
        }
        Some(o) => o.name.clone(),
        None => meta
            .name
            .clone()
            .or_else(|| {
                meta.generate_name
                    .as_ref()
                    .map(|g| g.trim_end_matches('-').to_string())
            })
            .unwrap_or_default(),
    };
    label_value(&name)
}

/// Names are DNS subdomains (up to 253 characters); label values stop at
/// 63 and must end with an alphanumeric character.
fn label_value(name: &str) -> String {
    let cut: String = name.chars().take(63).collect();
    cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

mod containers;
#[cfg(test)]
mod tests;

use containers::{anchors_volume, proxy_container, token_volume, validator_container};
