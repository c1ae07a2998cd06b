//! Golden tests: realistic pods through the whole review path. Each patch
//! is compared with the one committed under `tests/golden/` (regenerate
//! with `WEFT_UPDATE_GOLDEN=1 cargo test -p weft-injector --test golden`),
//! applied with a JSON-Patch library, and the result read back as a
//! typed Pod to check what the proxy needs is there and nothing was lost.

mod common;

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;
use weft_injector::review::{self, Outcome};
use weft_injector::settings::SidecarMode;

struct Case {
    name: &'static str,
    namespace_enabled: bool,
    /// `Some(workload)` when the pod must be injected, `None` when skipped.
    workload: Option<&'static str>,
    skip: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case {
        name: "podinfo",
        namespace_enabled: true,
        workload: Some("podinfo"),
        skip: None,
    },
    Case {
        name: "init-containers",
        namespace_enabled: true,
        workload: Some("orders"),
        skip: None,
    },
    Case {
        name: "other-sidecar",
        namespace_enabled: true,
        workload: Some("frontend"),
        skip: None,
    },
    Case {
        name: "no-ports",
        namespace_enabled: true,
        workload: Some("worker"),
        skip: None,
    },
    Case {
        name: "every-annotation",
        namespace_enabled: false,
        workload: Some("payments-5"),
        skip: None,
    },
    Case {
        name: "job",
        namespace_enabled: true,
        workload: Some("nightly-report-28734120"),
        skip: None,
    },
    Case {
        name: "host-network",
        namespace_enabled: true,
        workload: None,
        skip: Some("host_network"),
    },
    Case {
        name: "opted-out",
        namespace_enabled: true,
        workload: None,
        skip: Some("opted_out"),
    },
    // Injected earlier with a native sidecar: left alone in either mode.
    Case {
        name: "already-injected",
        namespace_enabled: true,
        workload: None,
        skip: Some("already_injected"),
    },
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn load(name: &str) -> Value {
    let path = dir().join(format!("{name}.pod.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Runs a review and returns the outcome and the decoded patch.
fn run(
    pod: &Value,
    namespace_enabled: bool,
    mode: SidecarMode,
) -> (Outcome, Option<json_patch::Patch>, Value) {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("demo");
    let body = serde_json::to_vec(&common::review_of(
        pod,
        namespace,
        "705ab4f5-6393-11e8-b7cc-42010a800002",
    ))
    .unwrap();
    let reviewed = review::review(&body, namespace_enabled, &common::settings(), mode).unwrap();
    let (response, patch) = common::decode_response(&reviewed.body);
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true, "{response}");
    (reviewed.outcome, patch, response)
}

fn compare_golden(name: &str, mode: SidecarMode, patch: &json_patch::Patch) {
    let path = dir().join(format!("{name}.{}.patch.json", mode.as_str()));
    let actual = serde_json::to_string_pretty(patch).unwrap() + "\n";
    if std::env::var_os("WEFT_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (set WEFT_UPDATE_GOLDEN=1 to write it)",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{} differs from the golden patch",
        path.display()
    );
}

fn names(containers: &Option<Vec<Container>>) -> Vec<String> {
    containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

fn check_injected(case: &Case, mode: SidecarMode, before: &Value, after: &Pod) {
    let original: Pod = serde_json::from_value(before.clone()).unwrap();
    let spec = after.spec.as_ref().unwrap();
    let old = original.spec.as_ref().unwrap();

    // The proxy is where the mode puts it, once; everything else is kept in order.
    // The validator is the first init container in both modes.
    let init = spec.init_containers.as_ref().expect("init containers");
    let validator = &init[0];
    let (proxy, rest_init, rest_containers) = match mode {
        SidecarMode::Native => (
            &init[1],
            names(&Some(init[2..].to_vec())),
            names(&Some(spec.containers.clone())),
        ),
        SidecarMode::Classic => (
            &spec.containers[0],
            names(&Some(init[1..].to_vec())),
            names(&Some(spec.containers[1..].to_vec())),
        ),
    };
    assert_eq!(proxy.name, "weft-proxy", "{}", case.name);
    assert_eq!(validator.name, "weft-validate", "{}", case.name);
    assert_eq!(
        validator.command.as_deref().unwrap()[1..],
        ["validate".to_string()],
        "{}",
        case.name
    );
    let validator_uid = validator.security_context.as_ref().unwrap().run_as_user;
    assert_eq!(
        validator_uid,
        Some(2102),
        "not the proxy's UID: {}",
        case.name
    );
    assert_eq!(rest_init, names(&old.init_containers), "{}", case.name);
    assert_eq!(
        rest_containers,
        names(&Some(old.containers.clone())),
        "{}",
        case.name
    );
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let all: Vec<_> = all.collect();
    assert_eq!(all.iter().filter(|c| c.name == "weft-proxy").count(), 1);
    assert_eq!(all.iter().filter(|c| c.name == "weft-validate").count(), 1);

    match mode {
        SidecarMode::Native => {
            assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
            let probe = proxy.startup_probe.as_ref().expect("startup probe");
            assert_eq!(
                probe.http_get.as_ref().unwrap().path.as_deref(),
                Some("/ready")
            );
            assert!(proxy.lifecycle.is_none());
        }
        SidecarMode::Classic => {
            assert!(proxy.restart_policy.is_none());
            let hook = proxy
                .lifecycle
                .as_ref()
                .unwrap()
                .post_start
                .as_ref()
                .unwrap();
            let command = hook.exec.as_ref().unwrap().command.as_ref().unwrap();
            assert_eq!(
                command[..2],
                [
                    "/usr/local/bin/weft-proxy".to_string(),
                    "await-ready".into()
                ]
            );
            let annotations = after.metadata.annotations.as_ref().unwrap();
            assert_eq!(
                annotations.get("kubectl.kubernetes.io/default-container"),
                Some(&old.containers[0].name)
            );
        }
    }

    // The admin port, probes, hardening and the token.
    let port = &proxy.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("weft-admin"), 6191)
    );
    assert!(proxy.liveness_probe.is_some() && proxy.readiness_probe.is_some());
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(2103));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert!(caps.add.is_none(), "no NET_ADMIN: the CNI plugin redirects");
    let volumes = spec.volumes.as_ref().unwrap();
    let token = volumes
        .iter()
        .find(|v| v.name == "weft-identity-token")
        .expect("token volume");
    let projection = token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(projection.audience.as_deref(), Some("identity.weft.io"));
    let anchors = volumes
        .iter()
        .find(|v| v.name == "weft-trust-anchors")
        .expect("anchors volume");
    let empty_dir = anchors.empty_dir.as_ref().unwrap();
    assert_eq!(empty_dir.medium.as_deref(), Some("Memory"));
    assert_eq!(volumes.len(), old.volumes.as_ref().map_or(0, Vec::len) + 2);
    let mounts: Vec<(&str, bool)> = proxy
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.read_only == Some(true)))
        .collect();
    assert_eq!(
        mounts,
        [("weft-identity-token", true), ("weft-trust-anchors", false)]
    );
    let env: Vec<&str> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    for name in [
        "WEFT_CONTROLLER_ADDR",
        "WEFT_IDENTITY",
        "WEFT_IDENTITY_TOKEN_FILE",
        "WEFT_TRUST_ANCHORS",
        "WEFT_TRUST_ANCHORS_CACHE",
        "WEFT_INBOUND_PORT",
        "WEFT_OUTBOUND_PORT",
        "WEFT_ADMIN_ADDR",
        "WEFT_LOG_LEVEL",
    ] {
        assert!(env.contains(&name), "{}: {name} missing", case.name);
    }

    // Labels added, the pod's own kept.
    let labels = after.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["weft.io/control-plane-ns"], "weft-system");
    assert_eq!(
        labels["weft.io/workload"],
        case.workload.unwrap(),
        "{}",
        case.name
    );
    for (k, v) in original.metadata.labels.iter().flatten() {
        assert_eq!(labels.get(k), Some(v));
    }
}

#[test]
fn golden_pods_in_both_modes() {
    for case in CASES {
        for mode in [SidecarMode::Native, SidecarMode::Classic] {
            let pod = load(case.name);
            let (outcome, patch, _) = run(&pod, case.namespace_enabled, mode);
            match case.skip {
                Some(reason) => {
                    assert_eq!(outcome.labels(), ("skipped", reason), "{}", case.name);
                    assert!(patch.is_none(), "{}", case.name);
                    continue;
                }
                None => assert_eq!(outcome, Outcome::Injected, "{}", case.name),
            }
            let patch = patch.expect("a patch");
            compare_golden(case.name, mode, &patch);

            let mut doc = pod.clone();
            json_patch::patch(&mut doc, &patch).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let after: Pod = serde_json::from_value(doc.clone())
                .unwrap_or_else(|e| panic!("{}: not a Pod after the patch: {e}", case.name));
            check_injected(case, mode, &pod, &after);

            // Injecting the injected pod changes nothing.
            let (again, patch, _) = run(&doc, case.namespace_enabled, mode);
            assert_eq!(
                again.labels(),
                ("skipped", "already_injected"),
                "{}",
                case.name
            );
            assert!(patch.is_none());
        }
    }
}

#[test]
fn every_annotation_reaches_the_proxy() {
    let pod = load("every-annotation");
    let (_, patch, _) = run(&pod, false, SidecarMode::Native);
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch.unwrap()).unwrap();
    let after: Pod = serde_json::from_value(doc).unwrap();
    let init = after.spec.unwrap().init_containers.unwrap();
    let (validator, proxy) = (&init[0], &init[1]);
    let validator_env: Vec<_> = validator
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    // The validator probes past exactly the exemptions the rules have.
    assert!(validator_env.contains(&("WEFT_SKIP_OUTBOUND_PORTS", Some("5432"))));
    assert!(validator_env.contains(&(
        "WEFT_SKIP_OUTBOUND_CIDRS",
        Some("169.254.169.254/32,fd00::/8")
    )));
    let env: std::collections::BTreeMap<String, String> = proxy
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    assert_eq!(env["WEFT_SKIP_INBOUND_PORTS"], "22,9000-9010");
    assert_eq!(env["WEFT_SKIP_OUTBOUND_PORTS"], "5432");
    assert_eq!(
        env["WEFT_SKIP_OUTBOUND_CIDRS"],
        "169.254.169.254/32,fd00::/8"
    );
    assert!(env["WEFT_OPAQUE_PORTS"].split(',').any(|p| p == "6000"));
    assert_eq!(env["WEFT_LOG_LEVEL"], "warn,weft_proxy=debug");
    assert_eq!(env["WEFT_INBOUND_MTLS"], "strict");
    assert_eq!(env["WEFT_PROXY_CORES"], "2");
    let resources = proxy.resources.as_ref().unwrap();
    let q = |m: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
             k: &str| { m.as_ref().unwrap()[k].0.clone() };
    assert_eq!(q(&resources.requests, "cpu"), "250m");
    assert_eq!(q(&resources.limits, "cpu"), "2");
    assert_eq!(q(&resources.requests, "memory"), "64Mi");
    assert_eq!(q(&resources.limits, "memory"), "128Mi");
}

#[test]
fn classic_mode_warns_about_init_containers() {
    let pod = load("init-containers");
    let (_, _, response) = run(&pod, true, SidecarMode::Classic);
    let warnings = response["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("\"wait-for-postgres\" runs before weft-proxy")
    );
    let (_, _, response) = run(&pod, true, SidecarMode::Native);
    assert!(response.get("warnings").is_none());
}
