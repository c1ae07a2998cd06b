//! The containers and volumes the patch adds: the proxy (a native sidecar
//! or a classic one), its validator, the projected token the proxy proves
//! its identity with, and the small volume it keeps its anchors in.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_api::proxy_env as env;
use weft_api::{PROXY_CONTAINER_NAME, PROXY_UID, VALIDATOR_CONTAINER_NAME, VALIDATOR_UID, ports};

use super::{ANCHORS_DIR, ANCHORS_VOLUME, TOKEN_DIR, TOKEN_VOLUME};
use crate::pod_config::ProxyConfig;
use crate::settings::{MeshSettings, SidecarMode};
pub(super) fn token_volume(settings: &MeshSettings) -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(settings.token_audience.clone()),
                    expiration_seconds: Some(settings.token_expiration_seconds),
                    path: "token".into(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// In memory, and small: a bundle of anchors is a few KiB.
pub(super) fn anchors_volume() -> Volume {
    Volume {
        name: ANCHORS_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(K8sQuantity("1Mi".into())),
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ports::ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

pub(super) fn proxy_container(
    settings: &MeshSettings,
    config: &ProxyConfig,
    mode: SidecarMode,
    exit_with_app: bool,
) -> Container {
    let mut env_vars = vec![
        // The identity comes from the pod as it runs, so it is right even
        // when the service account is filled in after this webhook.
        field_env("_WEFT_POD_NS", "metadata.namespace"),
        field_env("_WEFT_POD_SA", "spec.serviceAccountName"),
        // The proxy asks for its pod's NetworkPolicy by name.
        field_env(env::POD_NAME.name, "metadata.name"),
        // NetworkPolicy always lets the pod's own node in (kubelet probes).
        field_env(env::HOST_IP.name, "status.hostIP"),
        env(
            env::IDENTITY.name,
            format!(
                "spiffe://{}/ns/$(_WEFT_POD_NS)/sa/$(_WEFT_POD_SA)",
                settings.trust_domain
            ),
        ),
        env(env::CONTROLLER_ADDR.name, settings.controller_addr.clone()),
        env(
            env::CONTROLLER_IDENTITY.name,
            settings.controller_identity.to_string(),
        ),
        env(env::IDENTITY_TOKEN_FILE.name, format!("{TOKEN_DIR}/token")),
        env(env::TRUST_ANCHORS.name, settings.trust_anchors_pem.clone()),
        env(
            env::TRUST_ANCHORS_CACHE.name,
            format!("{ANCHORS_DIR}/ca.crt"),
        ),
        env(env::OUTBOUND_PORT.name, ports::OUTBOUND.to_string()),
        env(env::INBOUND_PORT.name, ports::INBOUND.to_string()),
        // On all addresses: kubelet probes it on the pod IP. `/shutdown`
        // answers only on loopback.
        env(env::ADMIN_ADDR.name, format!("0.0.0.0:{}", ports::ADMIN)),
        env(env::LOG_LEVEL.name, config.log_level.clone()),
        env(env::PROXY_CORES.name, config.cores.to_string()),
    ];
    if exit_with_app {
        env_vars.push(env(env::EXIT_WITH_APP.name, "true"));
    }
    if let Some(extra) = &config.opaque_ports {
        let mut all: std::collections::BTreeSet<u16> =
            weft_api::DEFAULT_OPAQUE_PORTS.iter().copied().collect();
        all.extend(extra);
        let list: Vec<String> = all.iter().map(u16::to_string).collect();
        env_vars.push(env(env::OPAQUE_PORTS.name, list.join(",")));
    }
    for (name, value) in [
        (env::TRACE_COLLECTOR.name, &settings.trace_collector),
        (env::TRACE_SAMPLE_RATIO.name, &settings.trace_sample_ratio),
        (env::INBOUND_MTLS.name, &config.inbound_mtls),
        (env::SKIP_INBOUND_PORTS.name, &config.skip_inbound_ports),
        (env::SKIP_OUTBOUND_PORTS.name, &config.skip_outbound_ports),
        (env::SKIP_OUTBOUND_CIDRS.name, &config.skip_outbound_cidrs),
    ] {
        if let Some(v) = value {
            env_vars.push(env(name, v.clone()));
        }
    }

    let quantities = |pairs: [(&str, &Option<crate::quantity::Quantity>); 2]| {
        let map: BTreeMap<String, K8sQuantity> = pairs
            .into_iter()
            .filter_map(|(k, q)| {
                q.as_ref()
                    .map(|q| (k.to_string(), K8sQuantity(q.text.clone())))
            })
            .collect();
        (!map.is_empty()).then_some(map)
    };
    let r = &config.resources;
    let resources = ResourceRequirements {
        requests: quantities([("cpu", &r.cpu_request), ("memory", &r.memory_request)]),
        limits: quantities([("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]),
        ..Default::default()
    };

    let mut container = Container {
        name: PROXY_CONTAINER_NAME.into(),
        image: Some(settings.proxy_image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        env: Some(env_vars),
        ports: Some(vec![ContainerPort {
            name: Some(ports::ADMIN_PORT_NAME.into()),
            container_port: i32::from(ports::ADMIN),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(resources),
        security_context: Some(hardened(PROXY_UID)),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: ANCHORS_VOLUME.into(),
                mount_path: ANCHORS_DIR.into(),
                ..Default::default()
            },
        ]),
        liveness_probe: Some(probe("/live", 10, 3)),
        readiness_probe: Some(probe("/ready", 5, 3)),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let ready_timeout = settings.ready_timeout_seconds.max(1);
    match mode {
        SidecarMode::Native => {
            container.restart_policy = Some("Always".into());
            // Kubelet starts the next container only once this passes.
            container.startup_probe = Some(probe("/ready", 1, ready_timeout as i32));
        }
        SidecarMode::Classic => {
            // Kubelet starts the next container only after this returns.
            container.lifecycle = Some(Lifecycle {
                post_start: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(vec![
                            settings.proxy_binary.clone(),
                            "await-ready".into(),
                            "--timeout".into(),
                            format!("{ready_timeout}s"),
                        ]),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    container
}

/// Non-root as `uid`, read-only root, no privilege, no capabilities.
fn hardened(uid: u32) -> SecurityContext {
    SecurityContext {
        run_as_user: Some(i64::from(uid)),
        run_as_group: Some(i64::from(uid)),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// `weft-proxy validate` as the pod's first init container: it fails the
/// pod fast when the pod's redirect rules are missing.
pub(super) fn validator_container(settings: &MeshSettings, config: &ProxyConfig) -> Container {
    let mut env_vars = vec![env(env::OUTBOUND_PORT.name, ports::OUTBOUND.to_string())];
    for (name, value) in [
        (env::SKIP_OUTBOUND_PORTS.name, &config.skip_outbound_ports),
        (env::SKIP_OUTBOUND_CIDRS.name, &config.skip_outbound_cidrs),
    ] {
        if let Some(v) = value {
            env_vars.push(env(name, v.clone()));
        }
    }
    // Inside a pod-level budget the validator shares it, like the proxy.
    let small = |cpu: &str, memory: &str| {
        let map: BTreeMap<String, K8sQuantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter(|(r, _)| !config.pod_level_resources.contains(r))
            .map(|(r, q)| (r.to_string(), K8sQuantity(q.into())))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    Container {
        name: VALIDATOR_CONTAINER_NAME.into(),
        image: Some(settings.proxy_image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec![settings.proxy_binary.clone(), "validate".into()]),
        env: Some(env_vars),
        resources: Some(ResourceRequirements {
            requests: small("10m", "10Mi"),
            limits: small("100m", "32Mi"),
            ..Default::default()
        }),
        security_context: Some(hardened(VALIDATOR_UID)),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}
