//! The thin layer between HTTP and [`crate::inject::mutate`]: reads an
//! `admission.k8s.io/v1` AdmissionReview, asks `mutate`, and writes the
//! AdmissionReview response. A body that is not a well-formed review is a
//! [`BadReview`] (HTTP 400), never a panic.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

use crate::inject::{self, Decision, NamespaceView, Skip};
use crate::settings::{MeshSettings, SidecarMode};

/// The only review version the webhook speaks (the API server has sent it
/// since Kubernetes 1.16; the webhook configuration asks for it).
pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// A request body that is not an AdmissionReview the webhook can answer.
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("body is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("expected apiVersion {API_VERSION} and kind {KIND}, got {api_version:?} {kind:?}")]
    WrongType { api_version: String, kind: String },
    #[error("malformed AdmissionReview: {0}")]
    Malformed(serde_json::Error),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request has no uid")]
    NoUid,
    #[error("AdmissionReview for a Pod has no object")]
    NoObject,
    #[error("object is not a valid Pod: {0}")]
    NotAPod(serde_json::Error),
    #[error("AdmissionReview for a Pod has no namespace")]
    NoNamespace,
}

/// What happened to one review, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(Skip),
    Denied(&'static str),
    /// Not a pod creation: answered "allowed" without looking further.
    Ignored(&'static str),
}

impl Outcome {
    /// `(outcome, reason)` label values.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Injected => ("injected", ""),
            Outcome::Skipped(skip) => ("skipped", skip.as_str()),
            Outcome::Denied(reason) => ("denied", reason),
            Outcome::Ignored(reason) => ("ignored", reason),
        }
    }
}

/// The answer to one review.
#[derive(Debug)]
pub struct Reviewed {
    /// The response AdmissionReview, as JSON.
    pub body: Vec<u8>,
    pub outcome: Outcome,
    /// `namespace/name` (or generateName) of the pod, for logs.
    pub pod: String,
}

/// Answers the review in `body`. `namespace_enabled` says which webhook
/// path the API server called (see [`NamespaceView`]).
pub fn review(
    body: &[u8],
    namespace_enabled: bool,
    settings: &MeshSettings,
    mode: SidecarMode,
) -> Result<Reviewed, BadReview> {
    let value: Value = serde_json::from_slice(body).map_err(BadReview::NotJson)?;
    let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or("");
    if field("apiVersion") != API_VERSION || field("kind") != KIND {
        return Err(BadReview::WrongType {
            api_version: field("apiVersion").into(),
            kind: field("kind").into(),
        });
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(value).map_err(BadReview::Malformed)?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| BadReview::NoRequest)?;
    if request.uid.is_empty() {
        return Err(BadReview::NoUid);
    }
    let response = AdmissionResponse::from(&request);

    let is_pod = request.kind.group.is_empty()
        && request.kind.version == "v1"
        && request.kind.kind == "Pod"
        && request.sub_resource.is_none();
    let ignored = if !is_pod {
        // A webhook configuration that sends more than pods is a mistake
        // of ours; the object is let through untouched, with a warning.
        Some((
            "not_a_pod",
            format!(
                "weft-injector only mutates pods, not {}/{} {}",
                request.kind.group, request.kind.version, request.kind.kind
            ),
        ))
    } else if !matches!(request.operation, Operation::Create) {
        Some(("not_create", String::new()))
    } else {
        None
    };
    if let Some((reason, warning)) = ignored {
        let mut response = response;
        if !warning.is_empty() {
            response.warnings = Some(vec![warning]);
        }
        return Ok(Reviewed {
            body: encode(response),
            outcome: Outcome::Ignored(reason),
            pod: request.name.clone(),
        });
    }

    let object = request.object.as_ref().ok_or(BadReview::NoObject)?;
    let pod: Pod = serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .map_err(BadReview::NotAPod)?;
    // Pods made by controllers arrive without a namespace in their
    // metadata; the request always has it.
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .filter(|n| !n.is_empty())
        .ok_or(BadReview::NoNamespace)?;
    let pod_name = format!(
        "{namespace}/{}",
        pod.metadata
            .name
            .clone()
            .or_else(|| pod.metadata.generate_name.clone())
            .unwrap_or_default()
    );
    let view = NamespaceView {
        name: &namespace,
        injection_enabled: namespace_enabled,
    };
    let (response, outcome) = match inject::mutate(&pod, view, settings, mode) {
        Ok(Decision::Inject { patch, warnings }) => {
            let mut response = response.with_patch(patch).expect("a JSON patch serializes");
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            (response, Outcome::Injected)
        }
        Ok(Decision::Skip(skip)) => (response, Outcome::Skipped(skip)),
        Err(denial) => {
            let reason = denial.reason();
            (response.deny(denial), Outcome::Denied(reason))
        }
    };
    Ok(Reviewed {
        body: encode(response),
        outcome,
        pod: pod_name,
    })
}

/// Serializes the response review. The patch goes out base64-encoded, as
/// the API's `[]byte` fields are on the wire.
fn encode(response: AdmissionResponse) -> Vec<u8> {
    let mut value = serde_json::to_value(response.into_review()).expect("a review serializes");
    if let Some(patch) = value.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = serde_json::from_value(patch.take()).expect("patch bytes");
        *patch = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    serde_json::to_vec(&value).expect("JSON serializes")
}
