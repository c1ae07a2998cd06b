//! Shared by the injector's integration tests.

#![allow(dead_code)]

use base64::Engine as _;
use serde_json::{Value, json};
use weft_injector::settings::MeshSettings;

/// Settings as an installation would have them; the anchor is a fixed
/// placeholder (the injector passes it on without reading it).
pub fn settings() -> MeshSettings {
    MeshSettings {
        proxy_image: "docker.io/weft/weft-proxy:0.1.0".into(),
        image_pull_policy: Some("IfNotPresent".into()),
        ..MeshSettings::defaults(
            "-----BEGIN CERTIFICATE-----\nANCHOR\n-----END CERTIFICATE-----\n".into(),
        )
    }
}

/// An AdmissionReview as the API server sends it for a pod creation.
pub fn review_of(pod: &Value, namespace: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "b3b6c1a0-0000-4000-8000-000000000001",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// The response part of a review answer, with its patch decoded (if any).
pub fn decode_response(body: &[u8]) -> (Value, Option<json_patch::Patch>) {
    let review: Value = serde_json::from_slice(body).expect("answer is JSON");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = review["response"].clone();
    let patch = response["patch"].as_str().map(|b64| {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("patch is base64");
        serde_json::from_slice(&bytes).expect("patch is an RFC 6902 document")
    });
    (response, patch)
}
