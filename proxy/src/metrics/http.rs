//! HTTP metrics: requests, responses and their latency, per authority and
//! peer, and connections that ended in a protocol error.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{Direction, DirectionLabels, PeerLabels, label_values};

label_values! {
    /// What a response means for success-rate dashboards.
    pub enum Classification {
        Success => "success",
        /// A 5xx, a non-zero `grpc-status`, or no response at all.
        Failure => "failure",
    }
}

/// The Gateway API route a request matched: `route_kind` (`HTTPRoute`,
/// `GRPCRoute`), `route_namespace` and `route_name`; all three empty when
/// no route applied (inbound, or a Service without routes). Bounded by the
/// routes attached to the destinations this proxy calls; the rule is left
/// out to keep it so.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteRefLabels {
    pub route_kind: Arc<String>,
    pub route_namespace: Arc<String>,
    pub route_name: Arc<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub authority: Arc<String>,
    #[prometheus(flatten)]
    pub remote: PeerLabels,
    #[prometheus(flatten)]
    pub route: RouteRefLabels,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResponseLabels {
    pub direction: Direction,
    pub authority: Arc<String>,
    #[prometheus(flatten)]
    pub remote: PeerLabels,
    #[prometheus(flatten)]
    pub route: RouteRefLabels,
    pub status_code: u16,
    /// The `grpc-status` a gRPC response ended with; absent otherwise.
    pub grpc_status: Option<u16>,
    pub classification: Classification,
}

#[derive(Debug)]
pub struct HttpMetrics {
    pub request: Family<RequestLabels, Counter>,
    pub response: Family<ResponseLabels, Counter>,
    pub response_latency_ms: Family<ResponseLabels, Histogram>,
    pub errors: Family<DirectionLabels, Counter>,
    pub authorities: Authorities,
}

/// Response latency, 1 ms to 50 s, with the steps dashboards expect.
fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
        1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
    ]
    .into_iter()
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = HttpMetrics {
            request: Family::default(),
            response: Family::default(),
            response_latency_ms: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            errors: Family::default(),
            authorities: Authorities::default(),
        };
        registry.register("request", "HTTP requests received", m.request.clone());
        registry.register("response", "HTTP responses sent", m.response.clone());
        registry.register(
            "response_latency_ms",
            "Time from request received to response headers sent",
            m.response_latency_ms.clone(),
        );
        registry.register(
            "http_error",
            "HTTP connections that ended in a protocol error (malformed or stalled requests)",
            m.errors.clone(),
        );
        for &direction in Direction::ALL {
            let _ = m.errors.get_or_create(&DirectionLabels { direction });
        }
        m
    }
}

/// Authorities seen in requests, as label values. The set is capped, so a
/// client inventing Host headers cannot grow the metrics without bound;
/// past the cap, new authorities are counted as `other`. Destinations
/// discovery knows use the service's canonical name instead (bounded by
/// the services there are), see `Routes::authority` in discovery.
#[derive(Debug)]
pub struct Authorities {
    seen: RwLock<HashMap<String, Arc<String>>>,
    other: Arc<String>,
    none: Arc<String>,
}

/// Distinct request authorities a proxy labels before using `other`.
pub const MAX_AUTHORITIES: usize = 100;

impl Default for Authorities {
    fn default() -> Self {
        Authorities {
            seen: Default::default(),
            other: Arc::new("other".to_string()),
            none: Arc::default(),
        }
    }
}

impl Authorities {
    /// The label for a request's authority (lower-cased); empty if it
    /// had none.
    pub fn label(&self, authority: Option<&str>) -> Arc<String> {
        let Some(authority) = authority.filter(|a| !a.is_empty()) else {
            return self.none.clone();
        };
        let lower;
        let authority = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = authority.to_ascii_lowercase();
            lower.as_str()
        } else {
            authority
        };
        if let Some(label) = self
            .seen
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(authority)
        {
            return label.clone();
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_AUTHORITIES {
            return self.other.clone();
        }
        seen.entry(authority.to_string())
            .or_insert_with(|| Arc::new(authority.to_string()))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Dst, DstLabels, Metrics};
    use super::*;

    #[test]
    fn authorities_are_capped() {
        let authorities = Authorities::default();
        assert_eq!(*authorities.label(Some("Web.Demo:80")), "web.demo:80");
        assert_eq!(*authorities.label(None), "");
        for i in 1..MAX_AUTHORITIES {
            authorities.label(Some(&format!("host-{i}:80")));
        }
        assert_eq!(*authorities.label(Some("one-too-many:80")), "other");
        // Ones already seen keep their own label.
        assert_eq!(*authorities.label(Some("web.demo:80")), "web.demo:80");
    }

    #[test]
    fn dst_labels_appear_only_when_discovery_named_the_endpoint() {
        let metrics = Metrics::new();
        let dst = Dst(Some(Arc::new(DstLabels {
            namespace: Arc::new("demo".into()),
            service: Arc::new("web-v1".into()),
            workload: Arc::new("web-v1".into()),
            pod: Arc::new("web-v1-abc".into()),
        })));
        let authority = Arc::new("web.demo.svc.cluster.local:80".to_string());
        metrics
            .http
            .request
            .get_or_create(&RequestLabels {
                direction: Direction::Outbound,
                authority: authority.clone(),
                remote: PeerLabels::server(Arc::new("spiffe://td/ns/demo/sa/web".into()))
                    .with_dst(dst),
                route: RouteRefLabels::default(),
            })
            .inc();
        metrics
            .http
            .request
            .get_or_create(&RequestLabels {
                direction: Direction::Inbound,
                authority,
                remote: PeerLabels::plain(),
                route: RouteRefLabels::default(),
            })
            .inc();
        let text = metrics.encode();
        assert!(
            text.contains(r#"request_total{direction="outbound",authority="web.demo.svc.cluster.local:80",tls="true",client_id="",server_id="spiffe://td/ns/demo/sa/web",dst_namespace="demo",dst_service="web-v1",dst_workload="web-v1",dst_pod="web-v1-abc",route_kind="",route_namespace="",route_name=""} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"request_total{direction="inbound",authority="web.demo.svc.cluster.local:80",tls="false",client_id="",server_id="",route_kind="",route_namespace="",route_name=""} 1"#),
            "{text}"
        );
    }
}
