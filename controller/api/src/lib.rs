//! The contract between Weft's programs: the well-known ports, user id,
//! labels and annotations that the proxy, the CNI plugin, the injector and
//! the controller must agree on, the SPIFFE workload identity, the framing
//! of proxy-to-proxy connections, and the proxy–controller gRPC protocol.
//! It is deliberately small so that the data plane can depend on it without
//! pulling in control-plane code.

pub mod admin;
pub mod duration;
pub mod error_chain;
pub mod identity;
pub mod ip_block;
pub mod mesh;
pub mod metric_labels;
pub mod port_list;
pub mod process;
pub mod proxy_env;
pub mod runtime;
pub mod slots;
pub mod split;

pub use error_chain::error_chain;

/// The proxy–controller gRPC protocol, generated from `proto/`.
pub mod proto {
    /// Workload certificates: `weft.identity.v1.Identity`.
    pub mod identity {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("weft.identity.v1");
    }
    /// Discovery: `weft.destination.v1.Destination`.
    pub mod destination {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("weft.destination.v1");
    }
    /// NetworkPolicy, resolved per pod: `weft.policy.v1.Policy`.
    pub mod policy {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("weft.policy.v1");
    }
}

/// Ports the proxy listens on inside a meshed pod.
pub mod ports {
    /// Outbound listener; bound on loopback only, reached through redirect rules.
    pub const OUTBOUND: u16 = 6140;
    /// Inbound listener; receives redirected connections addressed to the pod.
    pub const INBOUND: u16 = 6143;
    /// Admin server: `/live`, `/ready`, `/metrics`, `/shutdown`.
    pub const ADMIN: u16 = 6191;
    /// Name given to the admin port in the injected container.
    pub const ADMIN_PORT_NAME: &str = "weft-admin";
}

/// The controller's well-known names and ports.
pub mod controller {
    /// gRPC (identity and discovery), over TLS.
    pub const GRPC_PORT: u16 = 8086;
    /// Admin server: `/live`, `/ready`, `/metrics`.
    pub const ADMIN_PORT: u16 = 9996;
    /// Namespace the control plane is installed in.
    pub const NAMESPACE: &str = "weft-system";
    /// The controller's service account; its serving certificate carries
    /// this identity, and proxies check for it.
    pub const SERVICE_ACCOUNT: &str = "weft-controller";
}

/// The proxy runs as this user and group; redirect rules exempt its traffic
/// so the proxy's own upstream connections never loop back into it.
pub const PROXY_UID: u32 = 2103;
/// See [`PROXY_UID`].
pub const PROXY_GID: u32 = 2103;

/// Name of the injected sidecar container.
pub const PROXY_CONTAINER_NAME: &str = "weft-proxy";

/// Name of the injected init container that checks the pod's redirect
/// rules before anything else in the pod runs (`weft-proxy validate`).
pub const VALIDATOR_CONTAINER_NAME: &str = "weft-validate";
/// The validator runs as this user: any user but the proxy's, since the
/// proxy's traffic is exempt from the rules being checked.
pub const VALIDATOR_UID: u32 = 2102;
/// The validator's exit status when the pod has no redirect rules. The CNI
/// installer deletes pods whose validator exited with it.
pub const VALIDATION_FAILED_EXIT: u8 = 95;

/// Labels that users and tooling see.
pub mod labels {
    /// Namespace label that turns on injection (`enabled`).
    pub const INJECT: &str = "weft.io/inject";
    /// Pod label naming the namespace of the control plane.
    pub const CONTROL_PLANE_NS: &str = "weft.io/control-plane-ns";
    /// Pod label naming the owning workload.
    pub const WORKLOAD: &str = "weft.io/workload";
}

/// Pod annotations that configure the proxy and its redirect rules.
pub mod annotations {
    /// `enabled` or `disabled`; overrides the namespace label.
    pub const INJECT: &str = "weft.io/inject";
    pub const SKIP_INBOUND_PORTS: &str = "config.weft.io/skip-inbound-ports";
    pub const SKIP_OUTBOUND_PORTS: &str = "config.weft.io/skip-outbound-ports";
    pub const SKIP_OUTBOUND_CIDRS: &str = "config.weft.io/skip-outbound-cidrs";
    pub const OPAQUE_PORTS: &str = "config.weft.io/opaque-ports";
    pub const PROXY_CPU_REQUEST: &str = "config.weft.io/proxy-cpu-request";
    pub const PROXY_CPU_LIMIT: &str = "config.weft.io/proxy-cpu-limit";
    pub const PROXY_MEMORY_REQUEST: &str = "config.weft.io/proxy-memory-request";
    pub const PROXY_MEMORY_LIMIT: &str = "config.weft.io/proxy-memory-limit";
    pub const PROXY_LOG_LEVEL: &str = "config.weft.io/proxy-log-level";
    /// `permissive` (default: plaintext from unmeshed clients is accepted)
    /// or `strict` (only mesh mTLS is accepted).
    pub const INBOUND_MTLS: &str = "config.weft.io/inbound-mtls";
    /// Set by the injector: how the pod's proxy takes mesh mTLS.
    /// [`MESH_TRANSPORT_APP_PORT`] means on the port the app dialled,
    /// recognised by ALPN; without it (a proxy injected before), only on
    /// the inbound port with the mesh header.
    pub const MESH_TRANSPORT: &str = "weft.io/mesh-transport";
    pub const MESH_TRANSPORT_APP_PORT: &str = "app-port";
}

/// Namespace annotations that set how the proxies apply policy there.
pub mod policy_annotations {
    /// `enforce` (default) or `audit`: would-be denials are counted and
    /// logged, and let through.
    pub const MODE: &str = "policy.weft.io/mode";
    /// What mesh authorization lets through to a port no ALLOW
    /// AuthorizationPolicy covers: `all`, `authenticated`, `cluster` or
    /// `deny` (the controller's `--default-authorization` when unset).
    pub const DEFAULT: &str = "policy.weft.io/default";
}

/// Service annotations that set route policy. Invalid values are reported
/// by the controller and ignored; they never break discovery.
pub mod policy {
    /// Comma-separated retry conditions: `5xx`, `gateway-error` (502, 503,
    /// 504), `connect-failure`, or single status codes such as `429`.
    pub const RETRY_HTTP: &str = "retry.weft.io/http";
    /// Retries per request at most (default 2 when retries are on).
    pub const RETRY_LIMIT: &str = "retry.weft.io/limit";
    /// Whole-request timeout, retries included (`500ms`, `2s`).
    pub const TIMEOUT_REQUEST: &str = "timeout.weft.io/request";
    /// `consecutive:N` ejects an endpoint after N failures in a row; `off`
    /// disables ejection.
    pub const FAILURE_ACCRUAL: &str = "balancer.weft.io/failure-accrual";
    /// Requests in flight to one endpoint from one proxy at most (a
    /// number, or `off`): beyond it a request goes to another endpoint, or
    /// is answered 503 at once when all are full, instead of queueing.
    pub const MAX_IN_FLIGHT: &str = "balancer.weft.io/max-in-flight";
    /// The in-flight limit when a service does not say: generous, so that
    /// it only stops a runaway queue in front of a stuck endpoint.
    pub const DEFAULT_MAX_IN_FLIGHT: u32 = 10_000;
    /// Failure accrual when a service does not say.
    pub const DEFAULT_FAILURE_ACCRUAL: u32 = 5;
    /// Retry limit when retries are on and the service does not say.
    pub const DEFAULT_RETRY_LIMIT: u32 = 2;
}

/// Well-known ports whose protocols have the server speak first (or are
/// otherwise never HTTP). Connections to them skip protocol detection, so a
/// client that waits for a greeting is never delayed by the detection
/// timeout.
pub const DEFAULT_OPAQUE_PORTS: &[u16] = &[
    25,    // SMTP
    587,   // SMTP submission
    3306,  // MySQL
    4444,  // Galera
    4222,  // NATS
    5432,  // PostgreSQL
    6379,  // Redis (client speaks first, but binary-safe inline commands confuse detection)
    9300,  // Elasticsearch transport
    11211, // memcached
    27017, // MongoDB
    33060, // MySQL X protocol
];
