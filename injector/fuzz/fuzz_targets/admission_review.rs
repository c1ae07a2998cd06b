//! AdmissionReviews as the API server (or anyone reaching the webhook)
//! sends them. The first byte chooses the sidecar mode and whether the rest
//! is a whole review or a Pod to wrap in a valid one, so most inputs reach
//! the mutation. Invariants: no panic; an answer is a review with the
//! request's uid; a patch always applies to the Pod it was made for, the
//! result is still a Pod, carries the proxy, and keeps every original
//! container and init container with its image and command.
#![no_main]

use base64::Engine;
use k8s_openapi::api::core::v1::{Container, Pod};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use weft_injector::inject::has_proxy;
use weft_injector::review::review;
use weft_injector::settings::{MeshSettings, SidecarMode};

const ANCHOR: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn containers(pod: &Pod) -> Vec<Container> {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut all = spec.containers;
    all.extend(spec.init_containers.unwrap_or_default());
    all
}

fuzz_target!(|input: &[u8]| {
    let Some((&choice, rest)) = input.split_first() else {
        return;
    };
    let mode = if choice & 1 == 0 {
        SidecarMode::Native
    } else {
        SidecarMode::Classic
    };
    let body = if choice & 2 == 0 {
        rest.to_vec()
    } else {
        let Ok(object) = serde_json::from_slice::<Value>(rest) else {
            return;
        };
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "fuzz",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "fuzz",
                "operation": "CREATE",
                "userInfo": {},
                "object": object,
            },
        }))
        .expect("JSON")
    };
    let settings = MeshSettings::defaults(ANCHOR.into());
    let Ok(reviewed) = review(&body, choice & 4 == 0, &settings, mode) else {
        return;
    };
    let answer: Value = serde_json::from_slice(&reviewed.body).expect("the answer is JSON");
    let request: Value = serde_json::from_slice(&body).expect("the review was JSON");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], request["request"]["uid"]);
    let Some(patch) = answer["response"]["patch"].as_str() else {
        return;
    };
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("the patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON patch");
    // The API server always sends a pod's `metadata` (Go encodes the
    // ObjectMeta struct even when empty), so a review without it is not
    // one the patch has to apply to.
    if !request["request"]["object"]["metadata"].is_object() {
        return;
    }
    let mut object = request["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("the patch applies to the pod");
    // The review's request says what the object is; the injector reads the
    // object's content, whatever its own (possibly garbled) type fields.
    let as_pod = |mut object: Value| -> Pod {
        if let Some(fields) = object.as_object_mut() {
            fields.remove("apiVersion");
            fields.remove("kind");
        }
        serde_json::from_value(object).expect("a pod")
    };
    let before = as_pod(request["request"]["object"].clone());
    let after = as_pod(object);
    assert!(has_proxy(after.spec.as_ref().expect("a spec")));
    let kept = containers(&after);
    for original in containers(&before) {
        assert!(
            kept.iter().any(|c| c.name == original.name
                && c.image == original.image
                && c.command == original.command
                && c.args == original.args),
            "container {:?} lost or changed",
            original.name
        );
    }
});
