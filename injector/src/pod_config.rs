//! The per-pod `weft.io/inject` and `config.weft.io/*` annotations, parsed
//! and checked. Every bad value is reported with the annotation's name, and
//! all of them at once, so one failed `kubectl apply` shows every mistake.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use weft_api::annotations as names;

use crate::quantity::{self, Quantity};
use crate::settings::{MeshSettings, Resources};

/// One annotation whose value cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}={value:?}: {reason}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub value: String,
    pub reason: String,
}

/// The pod's own say on injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectAnnotation {
    Enabled,
    Disabled,
}

/// Reads `weft.io/inject`; anything but `enabled` or `disabled` is an error
/// rather than a silent "no", so a typo never leaves a pod unmeshed unseen.
pub fn inject_annotation(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<InjectAnnotation>, AnnotationError> {
    match annotations.get(names::INJECT).map(|v| v.trim()) {
        None => Ok(None),
        Some("enabled") => Ok(Some(InjectAnnotation::Enabled)),
        Some("disabled") => Ok(Some(InjectAnnotation::Disabled)),
        Some(other) => Err(AnnotationError {
            annotation: names::INJECT,
            value: other.to_string(),
            reason: "expected enabled or disabled".into(),
        }),
    }
}

/// The proxy's settings for one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Normalised lists, passed on to the proxy; the CNI plugin reads the
    /// annotations themselves when it writes the redirect rules.
    pub skip_inbound_ports: Option<String>,
    pub skip_outbound_ports: Option<String>,
    pub skip_outbound_cidrs: Option<String>,
    /// Ports added to the proxy's default opaque ports.
    pub opaque_ports: Option<BTreeSet<u16>>,
    pub resources: Resources,
    pub log_level: String,
    /// `permissive` or `strict`, when the pod says.
    pub inbound_mtls: Option<String>,
    /// Proxy worker threads: the CPU limit (else request) rounded up.
    pub cores: u32,
    /// `cpu`, `memory`: resources the pod budgets at pod level
    /// (`spec.resources`), which the injected containers share rather than
    /// set (see [`crate::pod_budget`]).
    pub pod_level_resources: Vec<&'static str>,
}

/// Proxy worker threads for a CPU amount: rounded up, at least one.
pub fn cores_for(cpu: Option<&Quantity>) -> u32 {
    cpu.map_or(1, |q| (q.value.ceil() as u32).clamp(1, MAX_CORES))
}

/// Checks the proxy's resources against the pod's own budget, when it has
/// one (see [`crate::pod_budget`]).
pub fn fit_pod_resources(
    config: ProxyConfig,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    annotations: &BTreeMap<String, String>,
) -> Result<ProxyConfig, Vec<AnnotationError>> {
    crate::pod_budget::fit(config, spec, annotations)
}

/// Most worker threads the injector gives a proxy, whatever its CPU.
const MAX_CORES: u32 = 16;

/// Parses every `config.weft.io/*` annotation over the mesh's defaults.
pub fn proxy_config(
    annotations: &BTreeMap<String, String>,
    settings: &MeshSettings,
) -> Result<ProxyConfig, Vec<AnnotationError>> {
    let mut errors = Vec::new();
    let mut read = |annotation: &'static str,
                    check: &dyn Fn(&str) -> Result<String, String>|
     -> Option<String> {
        let value = annotations.get(annotation)?;
        match check(value.trim()) {
            Ok(v) => Some(v),
            Err(reason) => {
                errors.push(AnnotationError {
                    annotation,
                    value: value.clone(),
                    reason,
                });
                None
            }
        }
    };
    let ports = |v: &str| -> Result<String, String> {
        let ranges = weft_api::port_list::parse_ranges(v).map_err(|e| e.to_string())?;
        if ranges.is_empty() {
            return Err("empty port list".into());
        }
        Ok(join(ranges))
    };
    let cidrs = |v: &str| -> Result<String, String> {
        let nets = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .map_err(|_| format!("{s:?} is not a CIDR such as 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nets.is_empty() {
            return Err("empty CIDR list".into());
        }
        Ok(join(nets))
    };
    let quantity = |v: &str| -> Result<String, String> {
        let q = quantity::parse(v)?;
        if q.value <= 0.0 {
            return Err("must be greater than zero".into());
        }
        Ok(q.text)
    };
    let skip_inbound_ports = read(names::SKIP_INBOUND_PORTS, &ports);
    let skip_outbound_ports = read(names::SKIP_OUTBOUND_PORTS, &ports);
    let skip_outbound_cidrs = read(names::SKIP_OUTBOUND_CIDRS, &cidrs);
    let opaque_ports = read(names::OPAQUE_PORTS, &ports);
    let cpu_request = read(names::PROXY_CPU_REQUEST, &quantity);
    let cpu_limit = read(names::PROXY_CPU_LIMIT, &quantity);
    let memory_request = read(names::PROXY_MEMORY_REQUEST, &quantity);
    let memory_limit = read(names::PROXY_MEMORY_LIMIT, &quantity);
    let log_level = read(names::PROXY_LOG_LEVEL, &|v| {
        if v.is_empty() {
            return Err("empty log filter".into());
        }
        tracing_subscriber::EnvFilter::try_new(v)
            .map(|_| v.to_string())
            .map_err(|e| format!("not a log filter such as info or weft_proxy=debug: {e}"))
    });
    let inbound_mtls = read(names::INBOUND_MTLS, &|v| match v {
        "permissive" | "strict" => Ok(v.to_string()),
        _ => Err("expected permissive or strict".into()),
    });

    let parsed = |v: Option<String>| v.map(|v| quantity::parse(&v).expect("checked above"));
    let defaults = &settings.resources;
    let (cpu_request, cpu_limit) = request_and_limit(
        (names::PROXY_CPU_REQUEST, parsed(cpu_request)),
        (names::PROXY_CPU_LIMIT, parsed(cpu_limit)),
        (&defaults.cpu_request, &defaults.cpu_limit),
        &mut errors,
    );
    let (memory_request, memory_limit) = request_and_limit(
        (names::PROXY_MEMORY_REQUEST, parsed(memory_request)),
        (names::PROXY_MEMORY_LIMIT, parsed(memory_limit)),
        (&defaults.memory_request, &defaults.memory_limit),
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    let cores = cores_for(cpu_limit.as_ref().or(cpu_request.as_ref()));
    Ok(ProxyConfig {
        skip_inbound_ports,
        skip_outbound_ports,
        skip_outbound_cidrs,
        opaque_ports: opaque_ports
            .map(|v| weft_api::port_list::parse_set(&v).expect("checked above")),
        resources: Resources {
            cpu_request,
            cpu_limit,
            memory_request,
            memory_limit,
        },
        log_level: log_level.unwrap_or_else(|| settings.log_level.clone()),
        inbound_mtls,
        cores,
        pod_level_resources: Vec::new(),
    })
}

fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Merges a request and a limit from annotations over the defaults. Two
/// annotations that contradict each other are an error; a default that
/// contradicts an annotation gives way to it (a pod asking for a 16Mi
/// limit gets a 16Mi request, not a pod the API server refuses).
fn request_and_limit(
    (request_name, request): (&'static str, Option<Quantity>),
    (limit_name, limit): (&'static str, Option<Quantity>),
    (default_request, default_limit): (&Option<Quantity>, &Option<Quantity>),
    errors: &mut Vec<AnnotationError>,
) -> (Option<Quantity>, Option<Quantity>) {
    match (request, limit) {
        (Some(r), Some(l)) if r.value > l.value => {
            errors.push(AnnotationError {
                annotation: request_name,
                value: r.text.clone(),
                reason: format!("more than {limit_name}={:?}", l.text),
            });
            (None, None)
        }
        (Some(r), Some(l)) => (Some(r), Some(l)),
        (Some(r), None) => match default_limit {
            Some(l) if l.value < r.value => (Some(r.clone()), Some(r)),
            l => (Some(r), l.clone()),
        },
        (None, Some(l)) => match default_request {
            Some(r) if r.value > l.value => (Some(l.clone()), Some(l)),
            r => (r.clone(), Some(l)),
        },
        (None, None) => (default_request.clone(), default_limit.clone()),
    }
}
