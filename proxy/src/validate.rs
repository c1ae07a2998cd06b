//! `weft-proxy validate`: proves the pod's redirect rules are in place
//! before anything else in the pod runs. The injector adds it as the pod's
//! first init container (`weft-validate`), running as a user other than
//! the proxy's, so its traffic is subject to the rules.
//!
//! It listens on the proxy's outbound port on loopback, then connects to an
//! address outside the pod that the rules should redirect and sends a
//! random token. With the rules, the connection lands on its own listener
//! and the token arrives. Without them, it fails (nothing routes it, or
//! nothing answers with the token), and the validator exits with
//! [`weft_api::VALIDATION_FAILED_EXIT`] so the pod never starts its app
//! without the mesh (the CNI installer then replaces the pod).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_api::port_list::PortRange;
use weft_api::proxy_env as env;

/// What the check needs, from the proxy's own variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidateArgs {
    pub outbound_port: u16,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_outbound_cidrs: Vec<IpNet>,
    pub timeout: Duration,
}

/// A setting the check cannot use. (`reason` is the shared validator's
/// own words.)
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("{name}={value:?}: {reason}")]
    Variable {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("--timeout {value:?}: {reason}")]
    Timeout {
        value: String,
        reason: crate::config::Invalid,
    },
    #[error("unknown argument {0:?}")]
    UnknownArgument(String),
}

/// Why the redirect rules could not be shown to be in place.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot listen on {addr} (the proxy's outbound port)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("accepting the probe")]
    Accept(#[source] std::io::Error),
    #[error("connecting to {target}")]
    Connect {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("writing to {target}")]
    Write {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("a connection to {target} did not reach port {port} within {timeout:?}")]
    NotRedirected {
        target: SocketAddr,
        port: u16,
        timeout: Duration,
    },
}

impl ValidateArgs {
    /// `[--timeout DURATION]`, plus `WEFT_OUTBOUND_PORT`,
    /// `WEFT_SKIP_OUTBOUND_PORTS` and `WEFT_SKIP_OUTBOUND_CIDRS`.
    pub fn parse(args: &[String], var: impl Fn(&str) -> Option<String>) -> Result<Self, ArgsError> {
        let variable = |name: &'static str, value: &str, reason: String| ArgsError::Variable {
            name,
            value: value.to_string(),
            reason,
        };
        let mut parsed = ValidateArgs {
            outbound_port: weft_api::ports::OUTBOUND,
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            timeout: Duration::from_secs(5),
        };
        if let Some(v) = var(env::OUTBOUND_PORT.name) {
            parsed.outbound_port = v
                .trim()
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| variable(env::OUTBOUND_PORT.name, &v, "not a port".into()))?;
        }
        if let Some(v) = var(env::SKIP_OUTBOUND_PORTS.name) {
            parsed.skip_outbound_ports = weft_api::port_list::parse_ranges(&v)
                .map_err(|e| variable(env::SKIP_OUTBOUND_PORTS.name, &v, e.to_string()))?;
        }
        if let Some(v) = var(env::SKIP_OUTBOUND_CIDRS.name) {
            parsed.skip_outbound_cidrs = crate::config::parse_cidrs(&v)
                .map_err(|e| variable(env::SKIP_OUTBOUND_CIDRS.name, &v, e.to_string()))?;
        }
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| ArgsError::MissingValue(flag.clone()))?;
            match flag.as_str() {
                "--timeout" => {
                    parsed.timeout = crate::config::parse_duration(value).map_err(|reason| {
                        ArgsError::Timeout {
                            value: value.clone(),
                            reason,
                        }
                    })?
                }
                other => return Err(ArgsError::UnknownArgument(other.to_string())),
            }
        }
        Ok(parsed)
    }
}

/// How a check ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The probe to `target` came back to the outbound port.
    Redirected { target: SocketAddr, after: Duration },
    /// Every routed destination is exempt from redirection: nothing to
    /// check (and nothing the rules would catch).
    NothingToCheck,
}

/// The probe's destination: an address the pod routes somewhere other
/// than loopback, outside the exempt CIDRs, on a port that is not exempt.
/// `routes` are the pod's IPv4 routes (destination, prefix length).
pub fn probe_target(args: &ValidateArgs, routes: &[(Ipv4Addr, u8)]) -> Option<SocketAddr> {
    let port = (20001..=u16::MAX).chain(1..20001).find(|p| {
        !args
            .skip_outbound_ports
            .iter()
            .any(|r| r.first <= *p && *p <= r.last)
    })?;
    let exempt = |ip: Ipv4Addr| {
        args.skip_outbound_cidrs
            .iter()
            .any(|n| n.contains(&IpAddr::V4(ip)))
    };
    routes
        .iter()
        .filter_map(|&(dest, len)| match len {
            // Behind the default route: TEST-NET-2, never a real host.
            0 => Some(Ipv4Addr::new(198, 51, 100, 1)),
            // The last host address of a routed prefix. If the rules are
            // missing the probe may reach a real host there, which
            // cannot answer with the token.
            1..=30 => {
                let host_bits = 32 - u32::from(len);
                let last = u32::from(dest) | ((1u32 << host_bits) - 2);
                Some(Ipv4Addr::from(last))
            }
            _ => None,
        })
        .find(|ip| !ip.is_loopback() && !ip.is_link_local() && !exempt(*ip))
        .map(|ip| SocketAddr::new(IpAddr::V4(ip), port))
}

/// The pod's IPv4 routes from `/proc/net/route` (little-endian hex).
pub fn ipv4_routes(table: &str) -> Vec<(Ipv4Addr, u8)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            Some((Ipv4Addr::from(dest.to_le_bytes()), mask.count_ones() as u8))
        })
        .collect()
}

/// Runs the check.
pub async fn validate(
    args: &ValidateArgs,
    routes: &[(Ipv4Addr, u8)],
) -> Result<Outcome, CheckError> {
    let Some(target) = probe_target(args, routes) else {
        return Ok(Outcome::NothingToCheck);
    };
    let listen = SocketAddr::from(([127, 0, 0, 1], args.outbound_port));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| CheckError::Listen {
            addr: listen,
            source,
        })?;
    let token: [u8; 16] = rand::random();
    let started = Instant::now();
    let check = async {
        let accept = async {
            loop {
                let (mut conn, _) = listener.accept().await.map_err(CheckError::Accept)?;
                let mut got = [0u8; 16];
                if conn.read_exact(&mut got).await.is_ok() && got == token {
                    return Ok::<(), CheckError>(());
                }
            }
        };
        let send = async {
            let mut conn = tokio::net::TcpStream::connect(target)
                .await
                .map_err(|source| CheckError::Connect { target, source })?;
            conn.write_all(&token)
                .await
                .map_err(|source| CheckError::Write { target, source })?;
            // Held open until the listener has read the token.
            std::future::pending::<Result<(), CheckError>>().await
        };
        tokio::select! {
            accepted = accept => accepted,
            failed = send => failed,
        }
    };
    match tokio::time::timeout(args.timeout, check).await {
        Ok(Ok(())) => Ok(Outcome::Redirected {
            target,
            after: started.elapsed(),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(CheckError::NotRedirected {
            target,
            port: args.outbound_port,
            timeout: args.timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ports: &str, cidrs: &str) -> ValidateArgs {
        ValidateArgs::parse(&[], |k| match k {
            "WEFT_SKIP_OUTBOUND_PORTS" if !ports.is_empty() => Some(ports.into()),
            "WEFT_SKIP_OUTBOUND_CIDRS" if !cidrs.is_empty() => Some(cidrs.into()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn routes_are_read_from_proc() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t0000F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\t0000600A\t0100F40A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\t00000000\t0100F40A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            ipv4_routes(table),
            [
                (Ipv4Addr::new(10, 244, 0, 0), 24),
                (Ipv4Addr::new(10, 96, 0, 0), 24),
                (Ipv4Addr::UNSPECIFIED, 0)
            ]
        );
    }

    #[test]
    fn the_probe_avoids_exempt_ports_and_cidrs() {
        let routes = [
            (Ipv4Addr::new(10, 244, 0, 0), 24),
            (Ipv4Addr::UNSPECIFIED, 0),
        ];
        assert_eq!(
            probe_target(&args("", ""), &routes),
            Some("10.244.0.254:20001".parse().unwrap())
        );
        assert_eq!(
            probe_target(&args("20000-20010", "10.0.0.0/8"), &routes),
            Some("198.51.100.1:20011".parse().unwrap())
        );
        assert_eq!(probe_target(&args("", "0.0.0.0/0"), &routes), None);
        // Only loopback and host routes: nothing the rules would catch.
        assert_eq!(
            probe_target(
                &args("", ""),
                &[
                    (Ipv4Addr::new(127, 0, 0, 0), 8),
                    (Ipv4Addr::new(169, 254, 1, 1), 32)
                ]
            ),
            None
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let e = ValidateArgs::parse(&[], |k| (k == "WEFT_OUTBOUND_PORT").then(|| "x".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("WEFT_OUTBOUND_PORT"), "{e}");
        let e = ValidateArgs::parse(&["--frob".into(), "1".into()], |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--frob"), "{e}");
        let e = ValidateArgs::parse(&[], |k| {
            (k == "WEFT_SKIP_OUTBOUND_CIDRS").then(|| "nope".into())
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("WEFT_SKIP_OUTBOUND_CIDRS"), "{e}");
    }
}
