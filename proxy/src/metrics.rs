//! The proxy's Prometheus metrics.
//!
//! Names follow the ones existing mesh dashboards already query
//! (`request_total`, `response_total`, `response_latency_ms`, `tcp_*`), so
//! dashboards carry over. Labels only take bounded values: direction, peer
//! side, protocol, status code, classification, and the peer's workload
//! identity (`tls`, `client_id` on inbound, `server_id` on outbound; one
//! value per service account); never paths or ports of clients.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which listener a connection or request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The destination of an outbound hop, as discovery described its
/// endpoint: `dst_namespace`, `dst_service`, `dst_workload`, `dst_pod`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DstLabels {
    pub namespace: Arc<String>,
    pub service: Arc<String>,
    pub workload: Arc<String>,
    pub pod: Arc<String>,
}

/// Absent for hops discovery said nothing about (inbound, unknown
/// destinations), so those series carry no `dst_*` labels at all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Dst(pub Option<Arc<DstLabels>>);

impl EncodeLabelSet for Dst {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let Some(dst) = &self.0 else {
            return Ok(());
        };
        [
            ("dst_namespace", dst.namespace.as_str()),
            ("dst_service", dst.service.as_str()),
            ("dst_workload", dst.workload.as_str()),
            ("dst_pod", dst.pod.as_str()),
        ]
        .encode(encoder)
    }
}

/// Who is at the other end of a hop: whether it is mesh mTLS and the other
/// proxy's identity (the client's on inbound connections, the server's on
/// outbound ones), and on outbound hops what discovery said the endpoint
/// is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PeerLabels {
    /// `"true"` for mesh mTLS, `"false"` otherwise.
    pub tls: &'static str,
    pub client_id: Option<Arc<String>>,
    pub server_id: Option<Arc<String>>,
    #[prometheus(flatten)]
    pub dst: Dst,
}

impl PeerLabels {
    pub fn plain() -> Self {
        PeerLabels {
            tls: "false",
            ..Default::default()
        }
    }

    pub fn client(id: Arc<String>) -> Self {
        PeerLabels {
            tls: "true",
            client_id: Some(id),
            ..Default::default()
        }
    }

    pub fn server(id: Arc<String>) -> Self {
        PeerLabels {
            tls: "true",
            server_id: Some(id),
            ..Default::default()
        }
    }

    pub fn with_dst(mut self, dst: Dst) -> Self {
        self.dst = dst;
        self
    }
}

/// `peer="src"` is the accepted connection, `peer="dst"` the one the proxy
/// opened.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: &'static str,
    pub peer: &'static str,
    #[prometheus(flatten)]
    pub remote: PeerLabels,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpCloseLabels {
    pub direction: &'static str,
    pub peer: &'static str,
    #[prometheus(flatten)]
    pub remote: PeerLabels,
    /// Empty for a clean close, else the OS error name (`ECONNRESET`, ...).
    pub errno: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: &'static str,
    pub authority: Arc<String>,
    #[prometheus(flatten)]
    pub remote: PeerLabels,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResponseLabels {
    pub direction: &'static str,
    pub authority: Arc<String>,
    #[prometheus(flatten)]
    pub remote: PeerLabels,
    pub status_code: u16,
    /// The `grpc-status` a gRPC response ended with; absent otherwise.
    pub grpc_status: Option<u16>,
    /// `failure` for a 5xx, a non-zero `grpc-status`, or no response at
    /// all; else `success`.
    pub classification: &'static str,
}

/// Authorities seen in requests, as label values. The set is capped, so a
/// client inventing Host headers cannot grow the metrics without bound;
/// past the cap, new authorities are counted as `other`. Destinations
/// discovery knows use the service's canonical name instead (bounded by
/// the services there are), see `Routes::authority` in discovery.
#[derive(Debug)]
pub struct Authorities {
    seen: std::sync::RwLock<std::collections::HashMap<String, Arc<String>>>,
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

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedLabels {
    pub direction: &'static str,
    /// `plaintext` (strict mode), `tls_handshake`, `no_identity`,
    /// `mesh_header`, or `no_certificate` (ours had not arrived yet).
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefreshLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

/// Labels of `protocol_detect_timeout_by_port_total`: the port names what
/// to mark opaque.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DetectTimeoutLabels {
    pub direction: &'static str,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DetectLabels {
    pub direction: &'static str,
    /// `http1`, `http2`, `tls`, `opaque` (nothing recognisable) or
    /// `opaque_port` (skipped by configuration).
    pub protocol: &'static str,
}

/// A route: the canonical authority of the service it serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub authority: Arc<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BreakerLabels {
    pub authority: Arc<String>,
    /// `open` (ejected) or `closed` (back in the balancer).
    pub state: &'static str,
}

/// Values of `protocol_detect_total{protocol}`.
pub const DETECT_OUTCOMES: [&str; 5] = ["http1", "http2", "tls", "opaque", "opaque_port"];
/// Values of `mtls_refused_total{reason}`.
pub const MTLS_REFUSAL_REASONS: [&str; 6] = [
    "plaintext",
    "tls_handshake",
    "alpn",
    "no_identity",
    "mesh_header",
    "no_certificate",
];
/// Values of `destination_lookups_total{result}`.
pub const DESTINATION_LOOKUP_RESULTS: [&str; 3] = ["known", "unknown", "timeout"];

/// Every metric the proxy exports, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub tcp_open: Family<TcpLabels, Counter>,
    pub tcp_open_connections: Family<TcpLabels, Gauge>,
    pub tcp_close: Family<TcpCloseLabels, Counter>,
    pub tcp_read_bytes: Family<TcpLabels, Counter>,
    pub tcp_write_bytes: Family<TcpLabels, Counter>,
    pub tcp_connection_duration_ms: Family<TcpLabels, Histogram>,
    pub detect: Family<DetectLabels, Counter>,
    pub detect_timeout: Family<DirectionLabels, Counter>,
    pub detect_timeout_by_port: Family<DetectTimeoutLabels, Counter>,
    pub request: Family<RequestLabels, Counter>,
    pub response: Family<ResponseLabels, Counter>,
    pub response_latency_ms: Family<ResponseLabels, Histogram>,
    pub http_errors: Family<DirectionLabels, Counter>,
    pub mtls_refused: Family<RefusedLabels, Counter>,
    pub identity_expiry: Gauge,
    pub identity_refresh: Family<RefreshLabels, Counter>,
    pub destination_lookups: Family<RefreshLabels, Counter>,
    pub destination_updates: Counter,
    pub destination_reconnects: Counter,
    pub retries: Family<RouteLabels, Counter>,
    pub retry_budget_exhausted: Family<RouteLabels, Counter>,
    pub requests_shed: Family<RouteLabels, Counter>,
    pub breaker_transitions: Family<BreakerLabels, Counter>,
    pub authorities: Authorities,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
        1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
    ]
    .into_iter()
}

fn duration_buckets() -> impl Iterator<Item = f64> {
    [
        1.0,
        10.0,
        100.0,
        1000.0,
        10_000.0,
        100_000.0,
        1_000_000.0,
        10_000_000.0,
    ]
    .into_iter()
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let m = Metrics {
            tcp_open: Family::default(),
            tcp_open_connections: Family::default(),
            tcp_close: Family::default(),
            tcp_read_bytes: Family::default(),
            tcp_write_bytes: Family::default(),
            tcp_connection_duration_ms: Family::new_with_constructor(|| {
                Histogram::new(duration_buckets())
            }),
            detect: Family::default(),
            detect_timeout: Family::default(),
            detect_timeout_by_port: Family::default(),
            request: Family::default(),
            response: Family::default(),
            response_latency_ms: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            http_errors: Family::default(),
            mtls_refused: Family::default(),
            identity_expiry: Gauge::default(),
            identity_refresh: Family::default(),
            destination_lookups: Family::default(),
            destination_updates: Counter::default(),
            destination_reconnects: Counter::default(),
            retries: Family::default(),
            retry_budget_exhausted: Family::default(),
            requests_shed: Family::default(),
            breaker_transitions: Family::default(),
            authorities: Authorities::default(),
            registry: Registry::default(),
        };
        // prometheus-client appends `_total` to counters.
        registry.register("tcp_open", "TCP connections opened", m.tcp_open.clone());
        registry.register(
            "tcp_open_connections",
            "TCP connections currently open",
            m.tcp_open_connections.clone(),
        );
        registry.register("tcp_close", "TCP connections closed", m.tcp_close.clone());
        registry.register(
            "tcp_read_bytes",
            "Bytes read from peers",
            m.tcp_read_bytes.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written to peers",
            m.tcp_write_bytes.clone(),
        );
        registry.register(
            "tcp_connection_duration_ms",
            "Lifetime of closed TCP connections",
            m.tcp_connection_duration_ms.clone(),
        );
        registry.register(
            "protocol_detect",
            "Connections by detected protocol",
            m.detect.clone(),
        );
        registry.register(
            "protocol_detect_timeout",
            "Connections that sent nothing recognisable within the detection timeout",
            m.detect_timeout.clone(),
        );
        // Beside the total, which starts at zero for dashboards: the ports
        // are not known in advance.
        registry.register(
            "protocol_detect_timeout_by_port",
            "Detection timeouts by destination port",
            m.detect_timeout_by_port.clone(),
        );
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
            m.http_errors.clone(),
        );
        registry.register(
            "mtls_refused",
            "Connections refused by the mesh TLS layer, by reason",
            m.mtls_refused.clone(),
        );
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the proxy's workload certificate expires (Unix time)",
            m.identity_expiry.clone(),
        );
        registry.register(
            "identity_cert_refresh",
            "Workload certificate requests, by result",
            m.identity_refresh.clone(),
        );
        registry.register(
            "destination_lookups",
            "First lookups of a destination in discovery, by result (known, unknown, timeout)",
            m.destination_lookups.clone(),
        );
        registry.register(
            "destination_updates",
            "Destination updates received from the controller",
            m.destination_updates.clone(),
        );
        registry.register(
            "destination_reconnects",
            "Discovery streams lost and retried (the last known state keeps serving)",
            m.destination_reconnects.clone(),
        );
        registry.register(
            "retries",
            "HTTP requests sent again after a retryable failure",
            m.retries.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retryable failures not retried because the retry budget was spent",
            m.retry_budget_exhausted.clone(),
        );
        registry.register(
            "requests_shed",
            "HTTP requests answered 503 at once because every endpoint had \
             balancer.weft.io/max-in-flight requests in flight",
            m.requests_shed.clone(),
        );
        registry.register(
            "circuit_breaker_transitions",
            "Endpoints ejected (open) after consecutive failures, or readmitted (closed)",
            m.breaker_transitions.clone(),
        );
        registry.register_collector(Box::new(weft_api::process::ProcessCollector));
        m.initialise_known_series();
        Arc::new(Metrics { registry, ..m })
    }

    /// Creates every series whose labels are known in advance at zero, so
    /// that dashboards and alerts see "none yet" rather than "no data".
    fn initialise_known_series(&self) {
        for direction in [Direction::Inbound, Direction::Outbound] {
            let direction = direction.as_str();
            let _ = self
                .detect_timeout
                .get_or_create(&DirectionLabels { direction });
            let _ = self
                .http_errors
                .get_or_create(&DirectionLabels { direction });
            for protocol in DETECT_OUTCOMES {
                let _ = self.detect.get_or_create(&DetectLabels {
                    direction,
                    protocol,
                });
            }
            for reason in MTLS_REFUSAL_REASONS {
                let _ = self
                    .mtls_refused
                    .get_or_create(&RefusedLabels { direction, reason });
            }
        }
        for result in ["success", "failure"] {
            let _ = self
                .identity_refresh
                .get_or_create(&RefreshLabels { result });
        }
        for result in DESTINATION_LOOKUP_RESULTS {
            let _ = self
                .destination_lookups
                .get_or_create(&RefreshLabels { result });
        }
    }

    /// Starts a service's route metrics at zero, so that "no retries yet"
    /// shows as zero.
    pub fn route_known(&self, route: &RouteLabels) {
        if route.authority.is_empty() {
            return;
        }
        let _ = self.retries.get_or_create(route);
        let _ = self.retry_budget_exhausted.get_or_create(route);
        let _ = self.requests_shed.get_or_create(route);
        for state in ["open", "closed"] {
            let _ = self.breaker_transitions.get_or_create(&BreakerLabels {
                authority: route.authority.clone(),
                state,
            });
        }
    }

    pub fn identity_refreshed(&self, not_after: SystemTime) {
        let secs = not_after.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.identity_expiry.set(secs.as_secs() as i64);
        self.identity_refresh
            .get_or_create(&RefreshLabels { result: "success" })
            .inc();
    }

    pub fn identity_refresh_failed(&self) {
        self.identity_refresh
            .get_or_create(&RefreshLabels { result: "failure" })
            .inc();
    }

    pub fn mtls_refused(&self, direction: Direction, reason: &'static str) {
        self.mtls_refused
            .get_or_create(&RefusedLabels {
                direction: direction.as_str(),
                reason,
            })
            .inc();
    }

    pub fn destination_lookup(&self, result: &'static str) {
        self.destination_lookups
            .get_or_create(&RefreshLabels { result })
            .inc();
    }

    pub fn destination_update(&self) {
        self.destination_updates.inc();
    }

    pub fn destination_reconnect(&self) {
        self.destination_reconnects.inc();
    }

    /// The counter of a route's breaker transitions to `state`.
    pub fn breaker_counter(&self, route: &RouteLabels, state: &'static str) -> Counter {
        self.breaker_transitions
            .get_or_create(&BreakerLabels {
                authority: route.authority.clone(),
                state,
            })
            .clone()
    }

    /// Renders the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

/// Tracks one TCP connection's open/close metrics; counts the close when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    labels: TcpLabels,
    opened: std::time::Instant,
    errno: String,
}

impl ConnectionGuard {
    pub fn open(
        metrics: &Arc<Metrics>,
        direction: Direction,
        peer: &'static str,
        remote: PeerLabels,
    ) -> Self {
        let labels = TcpLabels {
            direction: direction.as_str(),
            peer,
            remote,
        };
        metrics.tcp_open.get_or_create(&labels).inc();
        metrics.tcp_open_connections.get_or_create(&labels).inc();
        ConnectionGuard {
            metrics: metrics.clone(),
            labels,
            opened: std::time::Instant::now(),
            errno: String::new(),
        }
    }

    pub fn labels(&self) -> &TcpLabels {
        &self.labels
    }

    /// Records why the connection failed, for `tcp_close_total{errno}`.
    pub fn set_error(&mut self, error: &std::io::Error) {
        self.errno = error
            .raw_os_error()
            .map(|code| format!("{:?}", nix::errno::Errno::from_raw(code)))
            .unwrap_or_default();
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics
            .tcp_open_connections
            .get_or_create(&self.labels)
            .dec();
        self.metrics
            .tcp_close
            .get_or_create(&TcpCloseLabels {
                direction: self.labels.direction,
                peer: self.labels.peer,
                remote: self.labels.remote.clone(),
                errno: std::mem::take(&mut self.errno),
            })
            .inc();
        self.metrics
            .tcp_connection_duration_ms
            .get_or_create(&self.labels)
            .observe(self.opened.elapsed().as_secs_f64() * 1000.0);
    }
}

#[cfg(test)]
mod tests {
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
            .request
            .get_or_create(&RequestLabels {
                direction: "outbound",
                authority: authority.clone(),
                remote: PeerLabels::server(Arc::new("spiffe://td/ns/demo/sa/web".into()))
                    .with_dst(dst),
            })
            .inc();
        metrics
            .request
            .get_or_create(&RequestLabels {
                direction: "inbound",
                authority,
                remote: PeerLabels::plain(),
            })
            .inc();
        let text = metrics.encode();
        assert!(
            text.contains(r#"request_total{direction="outbound",authority="web.demo.svc.cluster.local:80",tls="true",client_id="",server_id="spiffe://td/ns/demo/sa/web",dst_namespace="demo",dst_service="web-v1",dst_workload="web-v1",dst_pod="web-v1-abc"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"request_total{direction="inbound",authority="web.demo.svc.cluster.local:80",tls="false",client_id="",server_id=""} 1"#),
            "{text}"
        );
    }

    #[test]
    fn known_series_start_at_zero() {
        let text = Metrics::new().encode();
        for series in [
            r#"protocol_detect_timeout_total{direction="inbound"} 0"#,
            r#"protocol_detect_total{direction="outbound",protocol="opaque_port"} 0"#,
            r#"mtls_refused_total{direction="inbound",reason="no_identity"} 0"#,
            r#"identity_cert_refresh_total{result="failure"} 0"#,
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}
