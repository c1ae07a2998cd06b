//! The install manifest and the injector agree: the webhook paths are the
//! ones the server answers, the namespace selectors send each kind of
//! namespace to the right path, the ports line up, and the files the
//! Deployment points at are the ones its volumes provide. (The real API
//! server accepting them is checked in the Kubernetes tests.)

use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use serde::Deserialize;
use weft_injector::server::{PATH_ANNOTATED_ONLY, PATH_NAMESPACE_ENABLED};

fn documents() -> Vec<serde_json::Value> {
    let install = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/install");
    ["40-injector.yaml", "templates/webhook.yaml"]
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(install.join(file)).unwrap();
            serde_yaml_ng::Deserializer::from_str(&text)
                .map(|d| serde_json::Value::deserialize(d).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn find<T: serde::de::DeserializeOwned>(kind: &str) -> T {
    let doc = documents()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"));
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

fn selector(w: &MutatingWebhook) -> Vec<(String, String, Vec<String>)> {
    w.namespace_selector
        .as_ref()
        .and_then(|s| s.match_expressions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.key, e.operator, e.values.unwrap_or_default()))
        .collect()
}

#[test]
fn webhooks_match_the_server() {
    let config: MutatingWebhookConfiguration = find("MutatingWebhookConfiguration");
    let hooks = config.webhooks.unwrap();
    assert_eq!(hooks.len(), 2);
    for w in &hooks {
        assert_eq!(w.admission_review_versions, vec!["v1".to_string()]);
        assert_eq!(w.side_effects, "None");
        assert!(
            w.failure_policy.is_some(),
            "{}: failure policy must be explicit",
            w.name
        );
        let rules = w.rules.as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].operations.as_deref(),
            Some(&["CREATE".to_string()][..])
        );
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["pods".to_string()][..])
        );
        let service = w.client_config.service.as_ref().unwrap();
        assert_eq!(service.name, "weft-injector");
        assert_eq!(service.namespace, weft_api::controller::NAMESPACE);
    }
    let path = |w: &MutatingWebhook| {
        w.client_config
            .service
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    let by_namespace = hooks
        .iter()
        .find(|w| path(w) == PATH_NAMESPACE_ENABLED)
        .unwrap();
    let by_annotation = hooks
        .iter()
        .find(|w| path(w) == PATH_ANNOTATED_ONLY)
        .unwrap();
    let enabled = (
        "weft.io/inject".to_string(),
        "In".to_string(),
        vec!["enabled".to_string()],
    );
    assert_eq!(selector(by_namespace), vec![enabled]);
    assert!(selector(by_annotation).contains(&(
        "weft.io/inject".to_string(),
        "NotIn".to_string(),
        vec!["enabled".to_string()]
    )));
    // An outage must never block namespaces that did not ask for the mesh.
    assert_eq!(by_annotation.failure_policy.as_deref(), Some("Ignore"));
}

#[test]
fn deployment_and_service_line_up() {
    let deployment: Deployment = find("Deployment");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let ports = container.ports.as_ref().unwrap();
    let webhook = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("webhook"))
        .unwrap();
    assert_eq!(
        webhook.container_port,
        i32::from(weft_injector::WEBHOOK_PORT)
    );
    let admin = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("admin-http"))
        .unwrap();
    assert_eq!(admin.container_port, i32::from(weft_injector::ADMIN_PORT));

    // Every file the arguments name lies under a mounted volume.
    let mounts = container.volume_mounts.as_ref().unwrap();
    let args = container.args.as_ref().unwrap();
    for flag in ["--tls-cert=", "--tls-key=", "--trust-anchors-file="] {
        let file = args.iter().find_map(|a| a.strip_prefix(flag)).unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| file.starts_with(&format!("{}/", m.mount_path))),
            "{flag}{file} is not on a volume"
        );
    }
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));

    let service: Service = find("Service");
    let port = &service.spec.unwrap().ports.unwrap()[0];
    assert_eq!(port.port, 443);
    let config: MutatingWebhookConfiguration = find("MutatingWebhookConfiguration");
    for w in config.webhooks.unwrap() {
        assert_eq!(w.client_config.service.unwrap().port, Some(port.port));
    }
}
