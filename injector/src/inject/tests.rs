use serde_json::json;

use weft_api::VALIDATOR_CONTAINER_NAME;

use super::*;

fn settings() -> MeshSettings {
    MeshSettings {
        log_level: "info".into(),
        ..MeshSettings::defaults(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        )
    }
}

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn app_pod(annotations: serde_json::Value) -> Pod {
    pod(json!({
        "metadata": {"name": "web-1", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    }))
}

const ENABLED: NamespaceView<'static> = NamespaceView {
    name: "demo",
    injection_enabled: true,
};
const NOT_ENABLED: NamespaceView<'static> = NamespaceView {
    name: "demo",
    injection_enabled: false,
};

fn decide(pod: &Pod, ns: NamespaceView<'_>) -> Result<Decision, Denial> {
    mutate(pod, ns, &settings(), SidecarMode::Native)
}

fn skip_of(pod: &Pod, ns: NamespaceView<'_>) -> Option<Skip> {
    match decide(pod, ns).unwrap() {
        Decision::Skip(s) => Some(s),
        Decision::Inject { .. } => None,
    }
}

/// Applies the patch and returns the proxy container as JSON.
fn injected(pod: &Pod, mode: SidecarMode) -> (serde_json::Value, Vec<String>) {
    let Decision::Inject { patch, warnings } = mutate(pod, ENABLED, &settings(), mode).unwrap()
    else {
        panic!("not injected")
    };
    let mut doc = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    (doc, warnings)
}

fn proxy_env(doc: &serde_json::Value, name: &str) -> Option<String> {
    let proxy = doc["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .chain(doc["spec"]["containers"].as_array())
        .flatten()
        .find(|c| c["name"] == PROXY_CONTAINER_NAME)?;
    proxy["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(String::from))
}

#[test]
fn who_is_left_alone() {
    let plain = app_pod(json!({}));
    assert_eq!(skip_of(&plain, NOT_ENABLED), Some(Skip::NotRequested));
    assert_eq!(skip_of(&plain, ENABLED), None);

    let opted_in = app_pod(json!({"weft.io/inject": "enabled"}));
    assert_eq!(skip_of(&opted_in, NOT_ENABLED), None);
    let opted_out = app_pod(json!({"weft.io/inject": "disabled"}));
    assert_eq!(skip_of(&opted_out, ENABLED), Some(Skip::OptedOut));

    let host = pod(json!({
        "metadata": {"annotations": {"weft.io/inject": "enabled"}},
        "spec": {"hostNetwork": true, "containers": [{"name": "agent"}]}
    }));
    assert_eq!(skip_of(&host, ENABLED), Some(Skip::HostNetwork));

    let windows = pod(json!({
        "spec": {"os": {"name": "windows"}, "containers": [{"name": "iis"}]}
    }));
    assert_eq!(skip_of(&windows, ENABLED), Some(Skip::Windows));
    // No containers (a misspelled field, found by fuzzing): nothing to
    // patch; the API server's validation refuses it.
    let empty = pod(json!({
        "metadata": {"annotations": {"weft.io/inject": "enabled"}},
        "spec": {"contai@ners": [{"name": "app"}]}
    }));
    assert_eq!(skip_of(&empty, ENABLED), Some(Skip::NoContainers));
    let linux = pod(json!({
        "spec": {"os": {"name": "linux"}, "containers": [{"name": "app"}]}
    }));
    assert_eq!(skip_of(&linux, ENABLED), None);

    for ns in ["kube-system", "weft-system"] {
        let view = NamespaceView {
            name: ns,
            injection_enabled: true,
        };
        assert_eq!(
            skip_of(&opted_in, view),
            Some(Skip::SystemNamespace),
            "{ns}"
        );
    }

    for field in ["containers", "initContainers"] {
        let mut v = json!({"spec": {"containers": [{"name": "app"}]}});
        let list = v["spec"]
            .as_object_mut()
            .unwrap()
            .entry(field)
            .or_insert(json!([]));
        list.as_array_mut()
            .unwrap()
            .push(json!({"name": "weft-proxy"}));
        assert_eq!(
            skip_of(&pod(v), ENABLED),
            Some(Skip::AlreadyInjected),
            "{field}"
        );
    }
}

#[test]
fn a_bad_inject_annotation_is_refused_not_ignored() {
    let error = decide(&app_pod(json!({"weft.io/inject": "yes"})), NOT_ENABLED).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("weft.io/inject=\"yes\""), "{message}");
    assert!(message.contains("enabled or disabled"), "{message}");

    // Named together with every other bad annotation, in one message.
    let error = decide(
        &app_pod(json!({
            "weft.io/inject": "yes",
            "config.weft.io/proxy-memory-limit": "lots",
            "config.weft.io/skip-inbound-ports": "ssh"
        })),
        ENABLED,
    )
    .unwrap_err();
    let message = error.to_string();
    for name in [
        "weft.io/inject=",
        "config.weft.io/proxy-memory-limit=",
        "config.weft.io/skip-inbound-ports=",
    ] {
        assert!(message.contains(name), "{name}: {message}");
    }
}

#[test]
fn every_bad_annotation_is_named() {
    let cases = [
        ("config.weft.io/skip-inbound-ports", "ssh"),
        ("config.weft.io/skip-outbound-ports", "8080-80"),
        ("config.weft.io/skip-outbound-cidrs", "10.0.0.0"),
        ("config.weft.io/opaque-ports", "0"),
        ("config.weft.io/proxy-cpu-request", "lots"),
        ("config.weft.io/proxy-cpu-limit", "-1"),
        ("config.weft.io/proxy-memory-request", "10mb"),
        ("config.weft.io/proxy-memory-limit", "0"),
        ("config.weft.io/proxy-log-level", "[[["),
        ("config.weft.io/inbound-mtls", "sometimes"),
    ];
    for (annotation, value) in cases {
        let error = decide(&app_pod(json!({annotation: value})), ENABLED).unwrap_err();
        assert_eq!(error.reason(), "bad_annotation");
        let message = error.to_string();
        assert!(
            message.contains(&format!("{annotation}={value:?}")),
            "{annotation}: {message}"
        );
    }
    // All mistakes at once.
    let all: serde_json::Map<_, _> = cases
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let Err(Denial::Annotations(errors)) = decide(&app_pod(json!(all)), ENABLED) else {
        panic!("not denied")
    };
    assert_eq!(errors.len(), cases.len());
}

#[test]
fn requests_and_limits_agree() {
    let error = decide(
        &app_pod(json!({
            "config.weft.io/proxy-memory-request": "1Gi",
            "config.weft.io/proxy-memory-limit": "512Mi",
        })),
        ENABLED,
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("more than config.weft.io/proxy-memory-limit"),
        "{error}"
    );

    let resources = |annotations| {
        let (doc, _) = injected(&app_pod(annotations), SidecarMode::Native);
        doc["spec"]["initContainers"][1]["resources"].clone()
    };
    // A small limit pulls the default request down with it.
    let r = resources(json!({"config.weft.io/proxy-memory-limit": "16Mi"}));
    assert_eq!(r["requests"]["memory"], "16Mi");
    assert_eq!(r["limits"]["memory"], "16Mi");
    // A big request pushes the default limit up.
    let r = resources(json!({"config.weft.io/proxy-memory-request": "1Gi"}));
    assert_eq!(r["limits"]["memory"], "1Gi");
    // Defaults: no CPU limit.
    let r = resources(json!({}));
    assert_eq!(r["requests"]["cpu"], "100m");
    assert_eq!(r["requests"]["memory"], "32Mi");
    assert_eq!(r["limits"]["memory"], "256Mi");
    assert!(r["limits"].get("cpu").is_none());
}

#[test]
fn worker_threads_follow_the_cpu() {
    for (annotations, cores) in [
        (json!({}), "1"),
        (json!({"config.weft.io/proxy-cpu-limit": "1500m"}), "2"),
        (json!({"config.weft.io/proxy-cpu-request": "3"}), "3"),
        (json!({"config.weft.io/proxy-cpu-limit": "200"}), "16"),
    ] {
        let (doc, _) = injected(&app_pod(annotations.clone()), SidecarMode::Native);
        assert_eq!(
            proxy_env(&doc, "WEFT_PROXY_CORES").unwrap(),
            cores,
            "{annotations}"
        );
    }
}

#[test]
fn opaque_ports_add_to_the_defaults() {
    let (doc, _) = injected(
        &app_pod(json!({"config.weft.io/opaque-ports": "7000-7001"})),
        SidecarMode::Native,
    );
    let ports = proxy_env(&doc, "WEFT_OPAQUE_PORTS").unwrap();
    assert!(ports.contains("5432"), "{ports}");
    assert!(ports.contains("7000,7001"), "{ports}");
    let (doc, _) = injected(&app_pod(json!({})), SidecarMode::Native);
    assert_eq!(proxy_env(&doc, "WEFT_OPAQUE_PORTS"), None);
}

#[test]
fn workload_names() {
    let named = |v| workload_name(&pod(v));
    assert_eq!(
        named(json!({"metadata": {
            "generateName": "web-7d9f8c6b5-",
            "labels": {"pod-template-hash": "7d9f8c6b5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5", "uid": "1", "controller": true}]
        }})),
        "web"
    );
    for kind in ["StatefulSet", "DaemonSet", "Job"] {
        assert_eq!(
            named(json!({"metadata": {"name": "db-0", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": kind, "name": "db", "uid": "1", "controller": true}
            ]}})),
            "db"
        );
    }
    assert_eq!(
        named(json!({"metadata": {"generateName": "worker-"}})),
        "worker"
    );
    assert_eq!(named(json!({"metadata": {"name": "solo"}})), "solo");
    let long = format!("{}-x", "a".repeat(62));
    assert_eq!(named(json!({"metadata": {"name": long}})), "a".repeat(62));
}

#[test]
fn conflicts_are_refused_with_a_hint() {
    let p = pod(json!({"spec": {"containers": [
        {"name": "app", "ports": [{"containerPort": 6143}]}
    ]}}));
    let error = decide(&p, ENABLED).unwrap_err();
    assert_eq!(error.reason(), "port_conflict");
    assert!(
        error.to_string().contains("\"app\" uses port 6143"),
        "{error}"
    );
    for ours in [TOKEN_VOLUME, ANCHORS_VOLUME] {
        let p = pod(json!({"spec": {"containers": [{"name": "app"}],
            "volumes": [{"name": ours, "emptyDir": {}}]}}));
        assert_eq!(
            decide(&p, ENABLED).unwrap_err(),
            Denial::VolumeConflict(ours)
        );
    }
}

#[test]
fn warns_about_what_bypasses_the_mesh() {
    let p = pod(json!({"spec": {
        "securityContext": {"runAsUser": 2103},
        "initContainers": [{"name": "migrate"}],
        "containers": [{"name": "app"}]
    }}));
    let (_, warnings) = injected(&p, SidecarMode::Classic);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("\"migrate\" runs before weft-proxy")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("\"app\" runs as UID 2103")),
        "{warnings:?}"
    );
    // Native sidecars start before init containers: no such warning.
    let (_, warnings) = injected(&p, SidecarMode::Native);
    assert!(
        !warnings.iter().any(|w| w.contains("runs before")),
        "{warnings:?}"
    );
}

#[test]
fn keys_with_slashes_are_escaped() {
    let p = pod(json!({
        "metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}},
        "spec": {"containers": [{"name": "app"}]}
    }));
    let Decision::Inject { patch, .. } = decide(&p, ENABLED).unwrap() else {
        panic!()
    };
    let paths: Vec<String> = patch.0.iter().map(|op| op.path().to_string()).collect();
    assert!(
        paths.contains(&"/metadata/labels/weft.io~1workload".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/metadata/labels/weft.io~1control-plane-ns".to_string()),
        "{paths:?}"
    );
}

#[test]
fn a_workload_label_the_user_set_is_kept() {
    let p = pod(json!({
        "metadata": {"name": "x-1", "labels": {"weft.io/workload": "checkout"}},
        "spec": {"containers": [{"name": "app"}]}
    }));
    let (doc, _) = injected(&p, SidecarMode::Native);
    assert_eq!(doc["metadata"]["labels"]["weft.io/workload"], "checkout");
    assert_eq!(
        doc["metadata"]["labels"]["weft.io/control-plane-ns"],
        "weft-system"
    );
}

#[test]
fn identity_comes_from_the_running_pod() {
    let (doc, _) = injected(&app_pod(json!({})), SidecarMode::Native);
    assert_eq!(
        proxy_env(&doc, "WEFT_IDENTITY").unwrap(),
        "spiffe://cluster.local/ns/$(_WEFT_POD_NS)/sa/$(_WEFT_POD_SA)"
    );
    // Kubernetes expands $(VAR) only from variables defined earlier.
    let env = doc["spec"]["initContainers"][1]["env"].as_array().unwrap();
    let at = |name: &str| env.iter().position(|e| e["name"] == name).unwrap();
    assert!(at("_WEFT_POD_NS") < at("WEFT_IDENTITY"));
    assert!(at("_WEFT_POD_SA") < at("WEFT_IDENTITY"));
    assert_eq!(
        env[at("_WEFT_POD_SA")]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
}

#[test]
fn a_jobs_classic_proxy_exits_with_the_app() {
    let job_pod = |share: Option<bool>| {
        let mut spec = json!({"containers": [{"name": "app", "image": "app:1"}]});
        if let Some(share) = share {
            spec["shareProcessNamespace"] = json!(share);
        }
        pod(json!({
            "metadata": {"name": "backup-x1", "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "backup", "uid": "u1"}]},
            "spec": spec
        }))
    };
    let (doc, warnings) = injected(&job_pod(None), SidecarMode::Classic);
    assert_eq!(doc["spec"]["shareProcessNamespace"], true);
    assert_eq!(
        proxy_env(&doc, "WEFT_EXIT_WITH_APP").as_deref(),
        Some("true")
    );
    assert!(warnings.is_empty(), "{warnings:?}");

    // Native sidecars are stopped by the kubelet: nothing to add.
    let (doc, _) = injected(&job_pod(None), SidecarMode::Native);
    assert!(doc["spec"]["shareProcessNamespace"].is_null());
    assert_eq!(proxy_env(&doc, "WEFT_EXIT_WITH_APP"), None);

    // Not a Job: the proxy lives as long as the pod.
    let (doc, _) = injected(&app_pod(json!({})), SidecarMode::Classic);
    assert!(doc["spec"]["shareProcessNamespace"].is_null());
    assert_eq!(proxy_env(&doc, "WEFT_EXIT_WITH_APP"), None);

    // With hostPID the proxy already sees the app; the API server refuses
    // shareProcessNamespace beside it.
    let mut host_pid = job_pod(None);
    host_pid.spec.as_mut().unwrap().host_pid = Some(true);
    let (doc, warnings) = injected(&host_pid, SidecarMode::Classic);
    assert!(doc["spec"]["shareProcessNamespace"].is_null());
    assert_eq!(
        proxy_env(&doc, "WEFT_EXIT_WITH_APP").as_deref(),
        Some("true")
    );
    assert!(warnings.is_empty(), "{warnings:?}");

    // A pod that refuses to share is left so, with a warning.
    let (doc, warnings) = injected(&job_pod(Some(false)), SidecarMode::Classic);
    assert_eq!(doc["spec"]["shareProcessNamespace"], false);
    assert!(
        warnings.iter().any(|w| w.contains("will not complete")),
        "{warnings:?}"
    );
}

#[test]
fn tracing_is_passed_on_only_when_configured() {
    let pod = app_pod(json!({}));
    let (doc, _) = injected(&pod, SidecarMode::Native);
    assert_eq!(proxy_env(&doc, "WEFT_TRACE_COLLECTOR"), None);
    let traced = MeshSettings {
        trace_collector: Some("http://otel-collector.observability:4317".into()),
        trace_sample_ratio: Some("0.1".into()),
        ..settings()
    };
    let Decision::Inject { patch, .. } =
        mutate(&pod, ENABLED, &traced, SidecarMode::Native).unwrap()
    else {
        panic!("not injected")
    };
    let mut doc = serde_json::to_value(&pod).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    assert_eq!(
        proxy_env(&doc, "WEFT_TRACE_COLLECTOR").as_deref(),
        Some("http://otel-collector.observability:4317")
    );
    assert_eq!(
        proxy_env(&doc, "WEFT_TRACE_SAMPLE_RATIO").as_deref(),
        Some("0.1")
    );
}

#[test]
fn a_pod_level_budget_is_shared_not_exceeded() {
    let budget = pod(json!({
        "metadata": {"name": "web-1"},
        "spec": {
            "resources": {"limits": {"cpu": "1", "memory": "128Mi"}},
            "containers": [{"name": "app", "image": "app:1"}]
        }
    }));
    for mode in [SidecarMode::Classic, SidecarMode::Native] {
        let (doc, _) = injected(&budget, mode);
        let injected: Vec<&serde_json::Value> = doc["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .chain(doc["spec"]["containers"].as_array())
            .flatten()
            .filter(|c| c["name"] == PROXY_CONTAINER_NAME || c["name"] == VALIDATOR_CONTAINER_NAME)
            .collect();
        assert_eq!(injected.len(), 2, "{mode:?}");
        for c in injected {
            assert!(c["resources"]["limits"].is_null(), "{mode:?}: {c}");
            assert!(c["resources"]["requests"].is_null(), "{mode:?}: {c}");
        }
    }
    // An annotated limit over the pod's is refused with its name.
    let mut over = budget.clone();
    over.metadata.annotations = Some(
        [(
            "config.weft.io/proxy-memory-limit".to_string(),
            "1Gi".to_string(),
        )]
        .into(),
    );
    let message = decide(&over, ENABLED).unwrap_err().to_string();
    assert!(
        message.contains("config.weft.io/proxy-memory-limit=\"1Gi\""),
        "{message}"
    );
}
