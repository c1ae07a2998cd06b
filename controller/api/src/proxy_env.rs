//! The proxy's environment: the contract between the injector, which
//! writes these variables into the `weft-proxy` container, and the proxy,
//! which reads them. Each name, its default and its meaning are defined here
//! once; the proxy's `--help` is generated from [`ALL`].

/// One `WEFT_*` variable the proxy reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var {
    pub name: &'static str,
    /// The default as a user would write it; empty when unset means off or
    /// "not configured".
    pub default: &'static str,
    pub meaning: &'static str,
}

macro_rules! vars {
    ($($(#[$doc:meta])* $ident:ident = $name:literal, $default:literal, $meaning:literal;)*) => {
        $($(#[$doc])* pub const $ident: Var = Var {
            name: $name,
            default: $default,
            meaning: $meaning,
        };)*
        /// Every variable, in the order `--help` lists them.
        pub const ALL: &[Var] = &[$($ident),*];
    };
}

vars! {
    OUTBOUND_PORT = "WEFT_OUTBOUND_PORT", "6140",
        "outbound listener port, on loopback";
    INBOUND_PORT = "WEFT_INBOUND_PORT", "6143",
        "inbound listener port, on every address";
    ADMIN_ADDR = "WEFT_ADMIN_ADDR", "0.0.0.0:6191",
        "admin server (/live, /ready, /metrics, /shutdown)";
    LOG_LEVEL = "WEFT_LOG_LEVEL", "info",
        "log filter, as tracing's EnvFilter reads it";
    PROXY_CORES = "WEFT_PROXY_CORES", "1",
        "runtime worker threads, 1 to 64";
    DETECT_TIMEOUT = "WEFT_DETECT_TIMEOUT", "1s",
        "wait for a client's first bytes; then open the upstream and let the first side to speak decide";
    MAX_CONNECTIONS = "WEFT_MAX_CONNECTIONS", "10000",
        "connections each direction's listeners hold at once; more are closed on accept";
    MAX_CONNECTIONS_PER_CLIENT = "WEFT_MAX_CONNECTIONS_PER_CLIENT", "1000",
        "inbound connections one client address holds at once";
    MAX_REQUESTS_IN_FLIGHT = "WEFT_MAX_REQUESTS_IN_FLIGHT", "10000",
        "requests awaiting their response, per direction; more are answered 503 at once";
    OPAQUE_PORTS = "WEFT_OPAQUE_PORTS", "25,587,3306,4444,4222,5432,6379,9300,11211,27017,33060",
        "ports that skip protocol detection (replaces the default list)";
    SHUTDOWN_GRACE = "WEFT_SHUTDOWN_GRACE", "30s",
        "time for in-flight work after SIGTERM";
    CONNECT_TIMEOUT = "WEFT_CONNECT_TIMEOUT", "3s",
        "bound on opening an upstream connection";
    HTTP_HEADER_TIMEOUT = "WEFT_HTTP_HEADER_TIMEOUT", "10s",
        "a client's first request head must arrive within this (else 408)";
    HTTP_IDLE_TIMEOUT = "WEFT_HTTP_IDLE_TIMEOUT", "90s",
        "idle keep-alive connections close after this";
    HTTP_MAX_HEADER_BYTES = "WEFT_HTTP_MAX_HEADER_BYTES", "65536",
        "largest header block on every hop, 8192 to 16777216 (else 431)";
    CONTROLLER_ADDR = "WEFT_CONTROLLER_ADDR", "",
        "controller host:port; unset makes a plain transparent proxy";
    CONTROLLER_IDENTITY = "WEFT_CONTROLLER_IDENTITY", "",
        "the controller's SPIFFE ID (default: weft-system's, in the proxy's trust domain)";
    IDENTITY = "WEFT_IDENTITY", "",
        "this workload's SPIFFE ID (required with a controller)";
    IDENTITY_TOKEN_FILE = "WEFT_IDENTITY_TOKEN_FILE", "",
        "projected service-account token proving the identity (required with a controller)";
    TRUST_ANCHORS = "WEFT_TRUST_ANCHORS", "",
        "trust anchors, PEM (or WEFT_TRUST_ANCHORS_FILE)";
    TRUST_ANCHORS_FILE = "WEFT_TRUST_ANCHORS_FILE", "",
        "trust anchors, a PEM file (or WEFT_TRUST_ANCHORS)";
    TRUST_ANCHORS_CACHE = "WEFT_TRUST_ANCHORS_CACHE", "",
        "a file for the controller's latest anchor bundle, preferred at start (so a restarted proxy follows a rotation)";
    INBOUND_MTLS = "WEFT_INBOUND_MTLS", "permissive",
        "permissive, or strict to accept only mesh mTLS";
    MESH_ENDPOINTS = "WEFT_MESH_ENDPOINTS", "",
        "ip=spiffe-id pairs known to be meshed, without discovery";
    DISCOVERY = "WEFT_DISCOVERY", "on",
        "ask the controller where destinations are (on or off)";
    DISCOVERY_WAIT = "WEFT_DISCOVERY_WAIT", "3s",
        "how long a first lookup waits for the controller";
    POD_NAME = "WEFT_POD_NAME", "",
        "the pod's name: with discovery, the proxy enforces its NetworkPolicy";
    HOST_IP = "WEFT_HOST_IP", "",
        "the node's address: NetworkPolicy always allows it (kubelet probes)";
    TRACE_COLLECTOR = "WEFT_TRACE_COLLECTOR", "",
        "OTLP/gRPC collector URL for request spans";
    TRACE_SAMPLE_RATIO = "WEFT_TRACE_SAMPLE_RATIO", "1",
        "share of new traces sampled, 0 to 1";
    EXIT_WITH_APP = "WEFT_EXIT_WITH_APP", "false",
        "exit when the pod's app containers have (Jobs)";
    SKIP_INBOUND_PORTS = "WEFT_SKIP_INBOUND_PORTS", "",
        "inbound ports the redirect rules leave alone";
    SKIP_OUTBOUND_PORTS = "WEFT_SKIP_OUTBOUND_PORTS", "",
        "outbound ports the redirect rules leave alone";
    SKIP_OUTBOUND_CIDRS = "WEFT_SKIP_OUTBOUND_CIDRS", "",
        "outbound networks the redirect rules leave alone";
}

/// The variable called `name`, if the proxy reads one.
pub fn find(name: &str) -> Option<Var> {
    ALL.iter().copied().find(|v| v.name == name)
}

/// The `--help` section listing every variable with its default.
pub fn help() -> String {
    let width = ALL.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut out = String::from("Environment (all optional):\n");
    for var in ALL {
        out.push_str(&format!("  {:width$}  {}", var.name, var.meaning));
        if !var.default.is_empty() {
            out.push_str(&format!(" [default: {}]", var.default));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_defaults_match_the_constants() {
        let mut names: Vec<_> = ALL.iter().map(|v| v.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert!(ALL.iter().all(|v| v.name.starts_with("WEFT_")));
        let opaque: Vec<String> = crate::DEFAULT_OPAQUE_PORTS
            .iter()
            .map(u16::to_string)
            .collect();
        assert_eq!(OPAQUE_PORTS.default, opaque.join(","));
        assert_eq!(OUTBOUND_PORT.default, crate::ports::OUTBOUND.to_string());
        assert_eq!(INBOUND_PORT.default, crate::ports::INBOUND.to_string());
        assert_eq!(
            ADMIN_ADDR.default,
            format!("0.0.0.0:{}", crate::ports::ADMIN)
        );
        assert!(help().contains("WEFT_DETECT_TIMEOUT"));
        assert_eq!(find("WEFT_DISCOVERY"), Some(DISCOVERY));
        assert_eq!(find("WEFT_NOPE"), None);
    }
}
