//! Pod-level resources (`spec.resources`, Kubernetes 1.34+): a budget that
//! every container of the pod shares. The API server refuses a pod whose
//! container limits exceed the pod's limit, or whose container requests add
//! up to more than the pod's request. The proxy's defaults could do either,
//! so inside such a budget the proxy sets no request or limit of its own
//! for that resource and shares the pod's, as the app's containers do.
//! Values the user annotated are kept, and checked here, so that a refusal
//! names the annotation to change instead of a container the user never
//! wrote.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use weft_api::annotations as names;

use crate::pod_config::{AnnotationError, ProxyConfig};
use crate::quantity::{self, Quantity};

/// The resources a pod-level budget can cover, with the proxy's
/// annotations for each.
const RESOURCES: [(&str, &str, &str); 2] = [
    ("cpu", names::PROXY_CPU_REQUEST, names::PROXY_CPU_LIMIT),
    (
        "memory",
        names::PROXY_MEMORY_REQUEST,
        names::PROXY_MEMORY_LIMIT,
    ),
];

/// Fits `config` into the pod's own budget, if it has one. The resources
/// the budget covers are recorded in `config.pod_level_resources`, so the
/// validator init container leaves them unset too.
pub fn fit(
    mut config: ProxyConfig,
    spec: &PodSpec,
    annotations: &BTreeMap<String, String>,
) -> Result<ProxyConfig, Vec<AnnotationError>> {
    let Some(budget) = spec.resources.as_ref() else {
        return Ok(config);
    };
    let mut errors = Vec::new();
    for (resource, request_name, limit_name) in RESOURCES {
        let pod_limit = amount(budget.limits.as_ref(), resource);
        // As for containers, a pod-level limit alone is also its request.
        let pod_request = amount(budget.requests.as_ref(), resource).or_else(|| pod_limit.clone());
        if pod_limit.is_none() && pod_request.is_none() {
            continue;
        }
        config.pod_level_resources.push(resource);
        let (request, limit) = config.resources.get_mut(resource);
        if !annotations.contains_key(request_name) {
            *request = None;
        }
        if !annotations.contains_key(limit_name) {
            *limit = None;
        }
        if let (Some(l), Some(pod)) = (limit.as_ref(), pod_limit.as_ref())
            && l.value > pod.value
        {
            errors.push(AnnotationError {
                annotation: limit_name,
                value: l.text.clone(),
                reason: format!(
                    "more than the pod's own limit (spec.resources.limits.{resource}={:?})",
                    pod.text
                ),
            });
            continue;
        }
        // A limit without a request is also the request.
        let (asked, asked_by) = match (request.as_ref(), limit.as_ref()) {
            (Some(r), _) => (r, request_name),
            (None, Some(l)) => (l, limit_name),
            (None, None) => continue,
        };
        if let Some(pod) = &pod_request {
            let others = containers_request(spec, resource);
            if others + asked.value > pod.value {
                errors.push(AnnotationError {
                    annotation: asked_by,
                    value: asked.text.clone(),
                    reason: format!(
                        "with the other containers' requests, more than the pod's own request \
                         (spec.resources.requests.{resource}={:?}); lower it or leave it unset \
                         to share the pod's budget",
                        pod.text
                    ),
                });
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if config.pod_level_resources.contains(&"cpu")
        && config.resources.cpu_limit.is_none()
        && config.resources.cpu_request.is_none()
    {
        // The proxy's threads follow the pod's CPU when it has none of its own.
        let pod_cpu = amount(budget.limits.as_ref(), "cpu")
            .or_else(|| amount(budget.requests.as_ref(), "cpu"));
        config.cores = crate::pod_config::cores_for(pod_cpu.as_ref());
    }
    Ok(config)
}

fn amount(map: Option<&BTreeMap<String, K8sQuantity>>, resource: &str) -> Option<Quantity> {
    map?.get(resource).and_then(|q| quantity::parse(&q.0).ok())
}

/// What the app's containers and sidecars already take of the budget: their
/// requests, or their limits where they set no request. Plain init
/// containers run before and are not summed, as the API server counts them.
fn containers_request(spec: &PodSpec, resource: &str) -> f64 {
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .filter_map(|c: &Container| {
            let r = c.resources.as_ref()?;
            amount(r.requests.as_ref(), resource).or_else(|| amount(r.limits.as_ref(), resource))
        })
        .map(|q| q.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::MeshSettings;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> PodSpec {
        serde_json::from_value::<Pod>(value).unwrap().spec.unwrap()
    }

    fn config(annotations: &BTreeMap<String, String>) -> ProxyConfig {
        let settings = MeshSettings::defaults(String::new());
        crate::pod_config::proxy_config(annotations, &settings).unwrap()
    }

    fn budget_pod(requests: serde_json::Value, limits: serde_json::Value) -> PodSpec {
        pod(json!({"spec": {
            "resources": {"requests": requests, "limits": limits},
            "containers": [{"name": "app", "resources": {"requests": {"memory": "40Mi"}}}]
        }}))
    }

    #[test]
    fn a_pod_without_a_budget_keeps_the_defaults() {
        let none = BTreeMap::new();
        let spec = pod(json!({"spec": {"containers": [{"name": "app"}]}}));
        let fitted = fit(config(&none), &spec, &none).unwrap();
        assert_eq!(fitted, config(&none));
    }

    #[test]
    fn inside_a_budget_the_defaults_give_way() {
        let none = BTreeMap::new();
        let spec = budget_pod(json!({"memory": "64Mi"}), json!({"memory": "128Mi"}));
        let fitted = fit(config(&none), &spec, &none).unwrap();
        assert_eq!(fitted.resources.memory_request, None);
        assert_eq!(fitted.resources.memory_limit, None);
        // CPU is outside the pod's budget: its default stays.
        assert_eq!(fitted.resources.cpu_request.unwrap().text, "100m");
        assert_eq!(fitted.pod_level_resources, vec!["memory"]);
    }

    #[test]
    fn annotations_that_fit_are_kept() {
        let a = BTreeMap::from([(names::PROXY_MEMORY_LIMIT.to_string(), "20Mi".to_string())]);
        let spec = budget_pod(json!({"memory": "64Mi"}), json!({"memory": "128Mi"}));
        let fitted = fit(config(&a), &spec, &a).unwrap();
        assert_eq!(fitted.resources.memory_limit.unwrap().text, "20Mi");
        assert_eq!(fitted.resources.memory_request, None);
    }

    #[test]
    fn annotations_over_the_budget_are_named() {
        let a = BTreeMap::from([(names::PROXY_MEMORY_LIMIT.to_string(), "200Mi".to_string())]);
        let spec = budget_pod(json!({"memory": "64Mi"}), json!({"memory": "128Mi"}));
        let errors = fit(config(&a), &spec, &a).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].annotation, names::PROXY_MEMORY_LIMIT);
        assert!(
            errors[0].reason.contains("limits.memory=\"128Mi\""),
            "{}",
            errors[0]
        );

        // 40Mi of the app plus 30Mi is more than the pod's 64Mi request.
        let a = BTreeMap::from([(names::PROXY_MEMORY_REQUEST.to_string(), "30Mi".to_string())]);
        let errors = fit(config(&a), &spec, &a).unwrap_err();
        assert_eq!(errors[0].annotation, names::PROXY_MEMORY_REQUEST);
        assert!(
            errors[0].reason.contains("requests.memory=\"64Mi\""),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn a_pod_limit_alone_is_its_request_and_sets_the_cores() {
        let none = BTreeMap::new();
        let spec = pod(json!({"spec": {
            "resources": {"limits": {"cpu": "3", "memory": "1Gi"}},
            "containers": [{"name": "app"}]
        }}));
        let fitted = fit(config(&none), &spec, &none).unwrap();
        assert_eq!(fitted.cores, 3);
        assert_eq!(fitted.pod_level_resources, vec!["cpu", "memory"]);
        assert_eq!(fitted.resources, crate::settings::Resources::default());
    }
}
