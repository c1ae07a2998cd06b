//! Configuration, read only from `WEFT_*` environment variables.
//!
//! Every variable is parsed and validated here, once, at startup, so a
//! misconfigured proxy exits immediately (code 64) with a message naming the
//! variable instead of failing later under traffic.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use weft_api::identity::SpiffeId;
use weft_api::proxy_env as env;
use weft_api::{DEFAULT_OPAQUE_PORTS, ports};

use crate::identity::IdentityConfig;

/// A variable whose value could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: Invalid,
}

/// Why a value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// A value outside what the variable allows; the words say what it does
    /// allow.
    #[error("{0}")]
    Rule(&'static str),
    #[error("not a port from 1 to 65535")]
    Port,
    #[error(transparent)]
    PortList(#[from] weft_api::port_list::PortListError),
    #[error("not a socket address: {0}")]
    SocketAddr(#[from] std::net::AddrParseError),
    #[error(transparent)]
    Duration(#[from] weft_api::duration::DurationError),
    #[error("{0:?} is not a CIDR such as 10.0.0.0/8")]
    Cidr(String),
    #[error("{0:?} is not ip=spiffe-id")]
    EndpointEntry(String),
    #[error("{0:?} is not an IP address")]
    Ip(String),
    #[error(transparent)]
    SpiffeId(#[from] weft_api::identity::SpiffeIdError),
    #[error(transparent)]
    Anchors(#[from] crate::tls::AnchorError),
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("not a byte count: {0}")]
    ByteCount(#[source] std::num::ParseIntError),
    #[error("not a log filter: {0}")]
    LogFilter(#[source] tracing_subscriber::filter::ParseError),
    #[error("not a URL: {0}")]
    Uri(#[from] http::uri::InvalidUri),
}

/// The proxy's effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Outbound listener port, bound on the loopback addresses.
    pub outbound_port: u16,
    /// Inbound listener port, bound on all addresses.
    pub inbound_port: u16,
    /// Admin server address.
    pub admin_addr: SocketAddr,
    /// How long to wait for a client's first bytes before treating the
    /// connection as opaque TCP.
    pub detect_timeout: Duration,
    /// Destination ports that skip protocol detection.
    pub opaque_ports: BTreeSet<u16>,
    /// How long in-flight work may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Bound on establishing an upstream connection.
    pub connect_timeout: Duration,
    /// A client must send its first request's headers within this time or
    /// get 408.
    pub http_header_timeout: Duration,
    /// Idle HTTP/1 keep-alive connections are closed after this time.
    pub http_idle_timeout: Duration,
    /// Largest request head accepted; larger gets 431.
    pub http_max_header_bytes: usize,
    /// `tracing` filter directive.
    pub log_level: String,
    /// Runtime worker threads.
    pub worker_threads: usize,
    /// Connections each direction's listeners hold at once.
    pub max_connections: usize,
    /// Inbound connections one client address holds at once.
    pub max_connections_per_client: usize,
    /// Requests awaiting their response, per direction.
    pub max_requests_in_flight: usize,
    /// Where the workload certificate comes from; `None` (no controller
    /// configured) makes a plain transparent proxy without mTLS.
    pub identity: Option<IdentityConfig>,
    /// Whether inbound connections must be mesh mTLS.
    pub inbound_mtls: InboundMtls,
    /// Destinations known to be meshed, and their identities, without
    /// asking discovery (pinned; discovery is not consulted for them).
    pub mesh_endpoints: Vec<(IpAddr, SpiffeId)>,
    /// Ask the controller about outbound destinations (needs an identity).
    pub discovery: bool,
    /// How long a connection to a destination seen for the first time
    /// waits for discovery's answer before going to the original address.
    pub discovery_wait: Duration,
    /// The pod's name: with discovery, the proxy asks for its pod's
    /// NetworkPolicy and enforces it. Without one, no policy applies.
    pub pod_name: Option<String>,
    /// The node's address, which NetworkPolicy always allows, as the API
    /// defines (kubelet's probes come from it).
    pub host_ip: Option<IpAddr>,
    /// The pod's redirect exemptions, as the injector copied them from its
    /// `config.weft.io/skip-*` annotations. The CNI plugin applies them;
    /// the proxy only reports them.
    pub redirect_exemptions: RedirectExemptions,
    /// Drain and exit once the pod's app processes have ended (Jobs on
    /// clusters without native sidecars; see `app_watch`).
    pub exit_with_app: bool,
    /// OTLP/gRPC collector for request spans (`http://host:4317`); with
    /// none, the proxy does no tracing work at all.
    pub trace_collector: Option<http::Uri>,
    /// Share of new traces sampled (requests arriving with a sampled or
    /// unsampled `traceparent` follow it).
    pub trace_sample_ratio: f64,
}

/// Traffic the pod's redirect rules leave alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedirectExemptions {
    pub inbound_ports: Vec<weft_api::port_list::PortRange>,
    pub outbound_ports: Vec<weft_api::port_list::PortRange>,
    pub outbound_cidrs: Vec<ipnet::IpNet>,
}

/// Inbound policy for connections that are not mesh mTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundMtls {
    /// Plaintext (and app TLS) from unmeshed clients is accepted.
    Permissive,
    /// Only mesh mTLS is accepted; anything else is closed at once.
    Strict,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        for (key, _) in std::env::vars() {
            if key.starts_with("WEFT_") && env::find(&key).is_none() {
                // Warn, don't fail: a newer injector may set variables an
                // older proxy does not know yet.
                eprintln!("weft-proxy: ignoring unknown variable {key}");
            }
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any variable lookup (tests use a map).
    /// An error quotes the variable's value exactly as given, whatever part
    /// of it the parser looked at (found by fuzzing: some quoted it
    /// trimmed).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::parse(&get).map_err(|error| ConfigError {
            value: get(error.var).unwrap_or_default(),
            ..error
        })
    }

    fn parse(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |var: env::Var| get(var.name).filter(|v| !v.trim().is_empty());
        let config =
            Config {
                outbound_port: parse_or(
                    var(env::OUTBOUND_PORT),
                    env::OUTBOUND_PORT,
                    ports::OUTBOUND,
                    parse_port,
                )?,
                inbound_port: parse_or(
                    var(env::INBOUND_PORT),
                    env::INBOUND_PORT,
                    ports::INBOUND,
                    parse_port,
                )?,
                admin_addr: parse_or(
                    var(env::ADMIN_ADDR),
                    env::ADMIN_ADDR,
                    SocketAddr::from(([0, 0, 0, 0], ports::ADMIN)),
                    |v| v.parse::<SocketAddr>(),
                )?,
                detect_timeout: parse_or(
                    var(env::DETECT_TIMEOUT),
                    env::DETECT_TIMEOUT,
                    Duration::from_secs(1),
                    parse_duration,
                )?,
                opaque_ports: parse_or(
                    var(env::OPAQUE_PORTS),
                    env::OPAQUE_PORTS,
                    DEFAULT_OPAQUE_PORTS.iter().copied().collect(),
                    weft_api::port_list::parse_set,
                )?,
                shutdown_grace: parse_or(
                    var(env::SHUTDOWN_GRACE),
                    env::SHUTDOWN_GRACE,
                    Duration::from_secs(30),
                    parse_duration,
                )?,
                connect_timeout: parse_or(
                    var(env::CONNECT_TIMEOUT),
                    env::CONNECT_TIMEOUT,
                    Duration::from_secs(3),
                    parse_duration,
                )?,
                http_header_timeout: parse_or(
                    var(env::HTTP_HEADER_TIMEOUT),
                    env::HTTP_HEADER_TIMEOUT,
                    Duration::from_secs(10),
                    parse_duration,
                )?,
                http_idle_timeout: parse_or(
                    var(env::HTTP_IDLE_TIMEOUT),
                    env::HTTP_IDLE_TIMEOUT,
                    Duration::from_secs(90),
                    parse_duration,
                )?,
                http_max_header_bytes: parse_or(
                    var(env::HTTP_MAX_HEADER_BYTES),
                    env::HTTP_MAX_HEADER_BYTES,
                    64 * 1024,
                    |v| {
                        let n: usize = v.parse().map_err(Invalid::ByteCount)?;
                        // hyper refuses buffers below 8 KiB.
                        if !(8192..=16 * 1024 * 1024).contains(&n) {
                            return Err(Invalid::Rule("must be between 8192 and 16777216"));
                        }
                        Ok(n)
                    },
                )?,
                log_level: parse_or(
                    var(env::LOG_LEVEL),
                    env::LOG_LEVEL,
                    "info".to_string(),
                    |v| {
                        tracing_subscriber::EnvFilter::builder()
                            .parse(v)
                            .map(|_| v.to_string())
                            .map_err(Invalid::LogFilter)
                    },
                )?,
                worker_threads: parse_or(var(env::PROXY_CORES), env::PROXY_CORES, 1, |v| match v
                    .parse::<usize>(
                ) {
                    Ok(n) if (1..=64).contains(&n) => Ok(n),
                    _ => Err(Invalid::Rule("must be a whole number from 1 to 64")),
                })?,
                max_connections: parse_or(
                    var(env::MAX_CONNECTIONS),
                    env::MAX_CONNECTIONS,
                    10_000,
                    limit,
                )?,
                max_connections_per_client: parse_or(
                    var(env::MAX_CONNECTIONS_PER_CLIENT),
                    env::MAX_CONNECTIONS_PER_CLIENT,
                    1_000,
                    limit,
                )?,
                max_requests_in_flight: parse_or(
                    var(env::MAX_REQUESTS_IN_FLIGHT),
                    env::MAX_REQUESTS_IN_FLIGHT,
                    10_000,
                    limit,
                )?,
                identity: identity_config(&var)?,
                inbound_mtls: parse_or(
                    var(env::INBOUND_MTLS),
                    env::INBOUND_MTLS,
                    InboundMtls::Permissive,
                    |v| match v {
                        "permissive" => Ok(InboundMtls::Permissive),
                        "strict" => Ok(InboundMtls::Strict),
                        _ => Err(Invalid::Rule("must be permissive or strict")),
                    },
                )?,
                mesh_endpoints: parse_or(
                    var(env::MESH_ENDPOINTS),
                    env::MESH_ENDPOINTS,
                    Vec::new(),
                    parse_endpoints,
                )?,
                discovery: parse_or(var(env::DISCOVERY), env::DISCOVERY, true, |v| match v {
                    "on" | "true" => Ok(true),
                    "off" | "false" => Ok(false),
                    _ => Err(Invalid::Rule("must be on or off")),
                })?,
                pod_name: var(env::POD_NAME).map(|v| v.trim().to_string()),
                host_ip: parse_or(var(env::HOST_IP), env::HOST_IP, None, |v| {
                    v.parse().map(Some).map_err(|_| Invalid::Ip(v.to_string()))
                })?,
                discovery_wait: parse_or(
                    var(env::DISCOVERY_WAIT),
                    env::DISCOVERY_WAIT,
                    Duration::from_secs(3),
                    parse_duration,
                )?,
                trace_collector: parse_or(
                    var(env::TRACE_COLLECTOR),
                    env::TRACE_COLLECTOR,
                    None,
                    |v| {
                        let uri: http::Uri = v.trim().parse()?;
                        match (uri.scheme_str(), uri.authority()) {
                            (Some("http" | "https"), Some(_)) => Ok(Some(uri)),
                            _ => Err(Invalid::Rule(
                                "must be an http:// or https:// URL of an OTLP/gRPC collector",
                            )),
                        }
                    },
                )?,
                trace_sample_ratio: parse_or(
                    var(env::TRACE_SAMPLE_RATIO),
                    env::TRACE_SAMPLE_RATIO,
                    1.0,
                    |v| match v.trim().parse::<f64>() {
                        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                        _ => Err(Invalid::Rule("must be a number from 0 to 1")),
                    },
                )?,
                exit_with_app: parse_or(var(env::EXIT_WITH_APP), env::EXIT_WITH_APP, false, |v| {
                    match v {
                        "true" => Ok(true),
                        "false" => Ok(false),
                        _ => Err(Invalid::Rule("must be true or false")),
                    }
                })?,
                redirect_exemptions: RedirectExemptions {
                    inbound_ports: parse_or(
                        var(env::SKIP_INBOUND_PORTS),
                        env::SKIP_INBOUND_PORTS,
                        Vec::new(),
                        weft_api::port_list::parse_ranges,
                    )?,
                    outbound_ports: parse_or(
                        var(env::SKIP_OUTBOUND_PORTS),
                        env::SKIP_OUTBOUND_PORTS,
                        Vec::new(),
                        weft_api::port_list::parse_ranges,
                    )?,
                    outbound_cidrs: parse_or(
                        var(env::SKIP_OUTBOUND_CIDRS),
                        env::SKIP_OUTBOUND_CIDRS,
                        Vec::new(),
                        parse_cidrs,
                    )?,
                },
            };
        if config.identity.is_none() {
            for (name, set) in [
                (env::MESH_ENDPOINTS.name, !config.mesh_endpoints.is_empty()),
                (
                    env::INBOUND_MTLS.name,
                    config.inbound_mtls == InboundMtls::Strict,
                ),
            ] {
                if set {
                    return Err(ConfigError {
                        var: name,
                        value: get(name).unwrap_or_default(),
                        reason: Invalid::Rule(
                            "needs an identity: set WEFT_CONTROLLER_ADDR and its companions",
                        ),
                    });
                }
            }
        }
        // A clash blames the variable that was set (the defaults differ),
        // with its value as given.
        let listeners = [
            (env::OUTBOUND_PORT, config.outbound_port),
            (env::INBOUND_PORT, config.inbound_port),
            (env::ADMIN_ADDR, config.admin_addr.port()),
        ];
        for (i, (first, port)) in listeners.iter().enumerate() {
            for (second, other) in &listeners[i + 1..] {
                if port != other {
                    continue;
                }
                let blamed = match get(second.name) {
                    Some(_) => second,
                    None => first,
                };
                return Err(ConfigError {
                    var: blamed.name,
                    value: get(blamed.name).unwrap_or_default(),
                    reason: Invalid::Rule("outbound, inbound and admin ports must differ"),
                });
            }
        }
        if config.detect_timeout.is_zero() {
            return Err(ConfigError {
                var: env::DETECT_TIMEOUT.name,
                value: get(env::DETECT_TIMEOUT.name).unwrap_or_default(),
                reason: Invalid::Rule("must be greater than zero"),
            });
        }
        Ok(config)
    }
}

/// The identity settings: all or nothing, keyed on `WEFT_CONTROLLER_ADDR`.
fn identity_config(
    var: &impl Fn(env::Var) -> Option<String>,
) -> Result<Option<IdentityConfig>, ConfigError> {
    let Some(controller_addr) = var(env::CONTROLLER_ADDR) else {
        return Ok(None);
    };
    let controller_addr = controller_addr.trim().to_string();
    let valid_addr = controller_addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && parse_port(port).is_ok());
    if !valid_addr {
        return Err(ConfigError {
            var: env::CONTROLLER_ADDR.name,
            value: controller_addr,
            reason: Invalid::Rule("must be host:port"),
        });
    }
    let required = |v: env::Var| {
        var(v).ok_or_else(|| ConfigError {
            var: v.name,
            value: String::new(),
            reason: Invalid::Rule("required when WEFT_CONTROLLER_ADDR is set"),
        })
    };
    let parse_id = |name: &'static str, v: String| {
        v.trim().parse::<SpiffeId>().map_err(|e| ConfigError {
            var: name,
            value: v.clone(),
            reason: e.into(),
        })
    };
    let identity = parse_id(env::IDENTITY.name, required(env::IDENTITY)?)?;
    let controller_identity = match var(env::CONTROLLER_IDENTITY) {
        Some(v) => parse_id(env::CONTROLLER_IDENTITY.name, v)?,
        None => SpiffeId::new(
            identity.trust_domain(),
            weft_api::controller::NAMESPACE,
            weft_api::controller::SERVICE_ACCOUNT,
        )
        .map_err(|e| ConfigError {
            var: env::IDENTITY.name,
            value: identity.to_string(),
            reason: e.into(),
        })?,
    };
    let token_file = PathBuf::from(required(env::IDENTITY_TOKEN_FILE)?.trim());
    let (anchors_var, pem) = match (var(env::TRUST_ANCHORS), var(env::TRUST_ANCHORS_FILE)) {
        (Some(pem), None) => (env::TRUST_ANCHORS.name, pem.into_bytes()),
        (None, Some(path)) => (
            env::TRUST_ANCHORS_FILE.name,
            std::fs::read(path.trim()).map_err(|e| ConfigError {
                var: env::TRUST_ANCHORS_FILE.name,
                value: path.clone(),
                reason: Invalid::Read(e),
            })?,
        ),
        _ => {
            return Err(ConfigError {
                var: env::TRUST_ANCHORS.name,
                value: String::new(),
                reason: Invalid::Rule(
                    "set exactly one of WEFT_TRUST_ANCHORS (PEM) and WEFT_TRUST_ANCHORS_FILE",
                ),
            });
        }
    };
    let anchors = crate::tls::load_anchors(&pem).map_err(|e| ConfigError {
        var: anchors_var,
        value: String::from_utf8_lossy(&pem).chars().take(40).collect(),
        reason: e.into(),
    })?;
    let anchors_cache = var(env::TRUST_ANCHORS_CACHE).map(|path| PathBuf::from(path.trim()));
    // A bundle a previous run of this proxy got from the controller is
    // newer than the environment, which dates from the pod's creation.
    if let Some(cached) = anchors_cache
        .as_deref()
        .and_then(crate::tls::read_anchor_cache)
    {
        anchors.replace(cached);
    }
    Ok(Some(IdentityConfig {
        controller_addr,
        controller_identity,
        identity,
        token_file,
        anchors,
        anchors_cache,
    }))
}

/// Parses `10.0.0.5=spiffe://cluster.local/ns/demo/sa/web,...`.
fn parse_endpoints(v: &str) -> Result<Vec<(IpAddr, SpiffeId)>, Invalid> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let (ip, id) = entry
                .split_once('=')
                .ok_or_else(|| Invalid::EndpointEntry(entry.to_string()))?;
            let ip: IpAddr = ip
                .trim()
                .parse()
                .map_err(|_| Invalid::Ip(ip.trim().to_string()))?;
            let id: SpiffeId = id.trim().parse()?;
            Ok((ip, id))
        })
        .collect()
}

/// A count limit: a whole number from 1 to a million.
fn limit(value: &str) -> Result<usize, Invalid> {
    match value.parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(Invalid::Rule("must be a whole number from 1 to 1000000")),
    }
}

fn parse_or<T, E: Into<Invalid>>(
    value: Option<String>,
    var: env::Var,
    default: T,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => parse(value.trim()).map_err(|e| ConfigError {
            var: var.name,
            value,
            reason: e.into(),
        }),
    }
}

fn parse_port(v: &str) -> Result<u16, Invalid> {
    match v.parse::<u16>() {
        Ok(0) | Err(_) => Err(Invalid::Port),
        Ok(p) => Ok(p),
    }
}

/// Parses `10.0.0.0/8, fd00::/8`.
pub fn parse_cidrs(v: &str) -> Result<Vec<ipnet::IpNet>, Invalid> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| Invalid::Cidr(s.to_string())))
        .collect()
}

/// Parses `250ms`, `1s`, `2m`, `1h`, or a bare number of seconds; at most
/// a day, which is longer than any proxy timeout should be.
pub fn parse_duration(v: &str) -> Result<Duration, Invalid> {
    let d = weft_api::duration::parse(v)?;
    if d > Duration::from_secs(86_400) {
        return Err(Invalid::Rule("must be at most a day"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests;
