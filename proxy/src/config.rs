//! Configuration, read only from `WEFT_*` environment variables.
//!
//! Every variable is parsed and validated here, once, at startup, so a
//! misconfigured proxy exits immediately (code 64) with a message naming the
//! variable instead of failing later under traffic.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use weft_api::{DEFAULT_OPAQUE_PORTS, ports};

/// A variable whose value could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
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
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        for (key, _) in std::env::vars() {
            if key.starts_with("WEFT_") && !KNOWN.contains(&key.as_str()) {
                // Warn, don't fail: a newer injector may set variables an
                // older proxy does not know yet.
                eprintln!("weft-proxy: ignoring unknown variable {key}");
            }
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any variable lookup (tests use a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &'static str| get(name).filter(|v| !v.trim().is_empty());
        let config = Config {
            outbound_port: parse_or(
                var("WEFT_OUTBOUND_PORT"),
                "WEFT_OUTBOUND_PORT",
                ports::OUTBOUND,
                parse_port,
            )?,
            inbound_port: parse_or(
                var("WEFT_INBOUND_PORT"),
                "WEFT_INBOUND_PORT",
                ports::INBOUND,
                parse_port,
            )?,
            admin_addr: parse_or(
                var("WEFT_ADMIN_ADDR"),
                "WEFT_ADMIN_ADDR",
                SocketAddr::from(([0, 0, 0, 0], ports::ADMIN)),
                |v| v.parse().map_err(|e| format!("not a socket address: {e}")),
            )?,
            detect_timeout: parse_or(
                var("WEFT_DETECT_TIMEOUT"),
                "WEFT_DETECT_TIMEOUT",
                Duration::from_secs(1),
                parse_duration,
            )?,
            opaque_ports: parse_or(
                var("WEFT_OPAQUE_PORTS"),
                "WEFT_OPAQUE_PORTS",
                DEFAULT_OPAQUE_PORTS.iter().copied().collect(),
                parse_port_set,
            )?,
            shutdown_grace: parse_or(
                var("WEFT_SHUTDOWN_GRACE"),
                "WEFT_SHUTDOWN_GRACE",
                Duration::from_secs(30),
                parse_duration,
            )?,
            connect_timeout: parse_or(
                var("WEFT_CONNECT_TIMEOUT"),
                "WEFT_CONNECT_TIMEOUT",
                Duration::from_secs(3),
                parse_duration,
            )?,
            http_header_timeout: parse_or(
                var("WEFT_HTTP_HEADER_TIMEOUT"),
                "WEFT_HTTP_HEADER_TIMEOUT",
                Duration::from_secs(10),
                parse_duration,
            )?,
            http_idle_timeout: parse_or(
                var("WEFT_HTTP_IDLE_TIMEOUT"),
                "WEFT_HTTP_IDLE_TIMEOUT",
                Duration::from_secs(90),
                parse_duration,
            )?,
            http_max_header_bytes: parse_or(
                var("WEFT_HTTP_MAX_HEADER_BYTES"),
                "WEFT_HTTP_MAX_HEADER_BYTES",
                64 * 1024,
                |v| {
                    let n: usize = v.parse().map_err(|e| format!("not a byte count: {e}"))?;
                    // hyper refuses buffers below 8 KiB.
                    if !(8192..=16 * 1024 * 1024).contains(&n) {
                        return Err("must be between 8192 and 16777216".into());
                    }
                    Ok(n)
                },
            )?,
            log_level: parse_or(
                var("WEFT_LOG_LEVEL"),
                "WEFT_LOG_LEVEL",
                "info".to_string(),
                |v| {
                    tracing_subscriber::EnvFilter::builder()
                        .parse(v)
                        .map(|_| v.to_string())
                        .map_err(|e| format!("not a log filter: {e}"))
                },
            )?,
            worker_threads: parse_or(var("WEFT_PROXY_CORES"), "WEFT_PROXY_CORES", 1, |v| match v
                .parse::<usize>(
            ) {
                Ok(n) if (1..=64).contains(&n) => Ok(n),
                _ => Err("must be a whole number from 1 to 64".into()),
            })?,
        };
        let listeners = [
            config.outbound_port,
            config.inbound_port,
            config.admin_addr.port(),
        ];
        if listeners[0] == listeners[1]
            || listeners[0] == listeners[2]
            || listeners[1] == listeners[2]
        {
            return Err(ConfigError {
                var: "WEFT_OUTBOUND_PORT",
                value: format!("{listeners:?}"),
                reason: "outbound, inbound and admin ports must differ".into(),
            });
        }
        if config.detect_timeout.is_zero() {
            return Err(ConfigError {
                var: "WEFT_DETECT_TIMEOUT",
                value: get("WEFT_DETECT_TIMEOUT").unwrap_or_default(),
                reason: "must be greater than zero".into(),
            });
        }
        Ok(config)
    }
}

/// Variables this proxy understands.
const KNOWN: &[&str] = &[
    "WEFT_OUTBOUND_PORT",
    "WEFT_INBOUND_PORT",
    "WEFT_ADMIN_ADDR",
    "WEFT_DETECT_TIMEOUT",
    "WEFT_OPAQUE_PORTS",
    "WEFT_SHUTDOWN_GRACE",
    "WEFT_CONNECT_TIMEOUT",
    "WEFT_HTTP_HEADER_TIMEOUT",
    "WEFT_HTTP_IDLE_TIMEOUT",
    "WEFT_HTTP_MAX_HEADER_BYTES",
    "WEFT_LOG_LEVEL",
    "WEFT_PROXY_CORES",
];

fn parse_or<T>(
    value: Option<String>,
    var: &'static str,
    default: T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => parse(value.trim()).map_err(|reason| ConfigError { var, value, reason }),
    }
}

fn parse_port(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(0) | Err(_) => Err("not a port from 1 to 65535".into()),
        Ok(p) => Ok(p),
    }
}

/// Parses `25,587,3306-3310`; whitespace around items is allowed.
pub fn parse_port_set(v: &str) -> Result<BTreeSet<u16>, String> {
    let mut set = BTreeSet::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (parse_port(lo.trim())?, parse_port(hi.trim())?);
                if lo > hi {
                    return Err(format!("range {item} is backwards"));
                }
                set.extend(lo..=hi);
            }
            None => {
                set.insert(parse_port(item).map_err(|e| format!("{item}: {e}"))?);
            }
        }
    }
    Ok(set)
}

/// Parses `250ms`, `1s`, `2m`, `1h`, or a bare number of seconds; at most
/// a day, which is longer than any proxy timeout should be.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let d = weft_api::duration::parse(v)?;
    if d > Duration::from_secs(86_400) {
        return Err("must be at most a day".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests;
