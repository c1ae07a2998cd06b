//! What the injector puts into every pod: the mesh-wide settings it is
//! started with, as opposed to the per-pod annotations.

use weft_api::identity::SpiffeId;

use crate::quantity::{self, Quantity};

/// How the proxy is added to a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+):
    /// it starts before every other container, including init containers,
    /// the app starts only once its startup probe passes, and it stops on
    /// its own after the app exits, so Jobs complete.
    Native,
    /// The first regular container, whose `postStart` hook holds back the
    /// next containers until the proxy is ready. Works on every version.
    Classic,
}

impl SidecarMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarMode::Native => "native",
            SidecarMode::Classic => "classic",
        }
    }
}

/// Resource requests and limits, each optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub cpu_request: Option<Quantity>,
    pub cpu_limit: Option<Quantity>,
    pub memory_request: Option<Quantity>,
    pub memory_limit: Option<Quantity>,
}

impl Resources {
    /// The request and the limit of `resource` (`cpu` or `memory`).
    pub fn get_mut(&mut self, resource: &str) -> (&mut Option<Quantity>, &mut Option<Quantity>) {
        match resource {
            "cpu" => (&mut self.cpu_request, &mut self.cpu_limit),
            "memory" => (&mut self.memory_request, &mut self.memory_limit),
            other => unreachable!("no proxy resource {other}"),
        }
    }

    /// The defaults: enough for a proxy at a few thousand requests per
    /// second (it idles at ~10 MiB), a memory limit as a guard against a
    /// leak, and no CPU limit, because CFS throttling turns into tail
    /// latency for every request through the pod.
    pub fn proxy_defaults() -> Self {
        let q = |v: &str| Some(quantity::parse(v).expect("valid default quantity"));
        Resources {
            cpu_request: q("100m"),
            cpu_limit: None,
            memory_request: q("32Mi"),
            memory_limit: q("256Mi"),
        }
    }
}

/// Mesh-wide settings, fixed when the injector starts (the trust anchors
/// are re-read when their file changes).
#[derive(Clone)]
pub struct MeshSettings {
    pub proxy_image: String,
    /// `Always`, `IfNotPresent` or `Never`; unset lets Kubernetes decide
    /// from the image tag.
    pub image_pull_policy: Option<String>,
    /// The proxy binary's path inside its image, for the `postStart` hook.
    pub proxy_binary: String,
    /// Namespace of the control plane (the `weft.io/control-plane-ns` label).
    pub control_plane_namespace: String,
    /// `host:port` of the controller's gRPC service.
    pub controller_addr: String,
    pub controller_identity: SpiffeId,
    pub trust_domain: String,
    /// PEM trust anchors, passed to the proxy inline.
    pub trust_anchors_pem: String,
    /// Audience of the projected service-account token the proxy presents.
    pub token_audience: String,
    /// Lifetime of that token; kubelet refreshes it at 80 %.
    pub token_expiration_seconds: i64,
    pub log_level: String,
    pub resources: Resources,
    /// How long the classic mode's `postStart` hook waits for the proxy.
    pub ready_timeout_seconds: u32,
    /// OTLP/gRPC collector every proxy sends request spans to, and the
    /// share of new traces sampled; no tracing when unset.
    pub trace_collector: Option<String>,
    pub trace_sample_ratio: Option<String>,
}

impl MeshSettings {
    /// The settings of a default installation (the injector's flag
    /// defaults) around the given trust anchors.
    pub fn defaults(trust_anchors_pem: String) -> Self {
        let namespace = weft_api::controller::NAMESPACE;
        MeshSettings {
            proxy_image: concat!("docker.io/weft/weft-proxy:", env!("CARGO_PKG_VERSION")).into(),
            image_pull_policy: None,
            proxy_binary: "/usr/local/bin/weft-proxy".into(),
            control_plane_namespace: namespace.into(),
            controller_addr: format!(
                "weft-controller.{namespace}.svc.cluster.local:{}",
                weft_api::controller::GRPC_PORT
            ),
            controller_identity: SpiffeId::new(
                weft_api::identity::DEFAULT_TRUST_DOMAIN,
                namespace,
                weft_api::controller::SERVICE_ACCOUNT,
            )
            .expect("valid default identity"),
            trust_domain: weft_api::identity::DEFAULT_TRUST_DOMAIN.into(),
            trust_anchors_pem,
            token_audience: weft_api::identity::TOKEN_AUDIENCE.into(),
            token_expiration_seconds: 3600,
            log_level: "warn,weft_proxy=info".into(),
            resources: Resources::proxy_defaults(),
            ready_timeout_seconds: 120,
            trace_collector: None,
            trace_sample_ratio: None,
        }
    }
}

impl std::fmt::Debug for MeshSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The anchors are public, but a PEM block per startup line is noise.
        let anchors = self.trust_anchors_pem.matches("BEGIN CERTIFICATE").count();
        f.debug_struct("MeshSettings")
            .field("proxy_image", &self.proxy_image)
            .field("image_pull_policy", &self.image_pull_policy)
            .field("control_plane_namespace", &self.control_plane_namespace)
            .field("controller_addr", &self.controller_addr)
            .field("controller_identity", &self.controller_identity.to_string())
            .field("trust_domain", &self.trust_domain)
            .field("trust_anchors", &format!("{anchors} certificate(s)"))
            .field("token_audience", &self.token_audience)
            .field("log_level", &self.log_level)
            .field("resources", &self.resources)
            .field("ready_timeout_seconds", &self.ready_timeout_seconds)
            .field("trace_collector", &self.trace_collector)
            .finish_non_exhaustive()
    }
}

/// The lowest Kubernetes version whose native sidecars are on by default
/// (the `SidecarContainers` feature went beta, enabled, in 1.29).
pub const NATIVE_SIDECAR_MIN: (u32, u32) = (1, 29);

/// Chooses the mode from the API server's `major` and `minor` version
/// strings (`/version`); providers write minors like `29+`.
pub fn mode_for_version(major: &str, minor: &str) -> Option<SidecarMode> {
    let digits = |s: &str| -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let version = (digits(major)?, digits(minor)?);
    Some(if version >= NATIVE_SIDECAR_MIN {
        SidecarMode::Native
    } else {
        SidecarMode::Classic
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_sidecars_from_1_29() {
        assert_eq!(mode_for_version("1", "20"), Some(SidecarMode::Classic));
        assert_eq!(mode_for_version("1", "28"), Some(SidecarMode::Classic));
        assert_eq!(mode_for_version("1", "29"), Some(SidecarMode::Native));
        assert_eq!(mode_for_version("1", "31+"), Some(SidecarMode::Native));
        assert_eq!(mode_for_version("2", "0"), Some(SidecarMode::Native));
        assert_eq!(mode_for_version("1", ""), None);
        assert_eq!(mode_for_version("x", "30"), None);
    }
}
