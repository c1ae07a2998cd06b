//! The plugin's network configuration, parsed and validated once.
//!
//! Besides the standard fields it reads (all optional, camelCase):
//! `inboundPort`, `outboundPort`, `adminPort`, `proxyUid`,
//! `skipInboundPorts`, `skipOutboundPorts` (numbers or `"a-b"` ranges),
//! `skipOutboundCidrs`, `logFile`, and `kubernetes` (see
//! [`crate::kubernetes`]; when absent every pod is redirected).

use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use weft_api::{PROXY_UID, ports};

use crate::kubernetes::KubernetesConfig;
use crate::{CniError, SUPPORTED_VERSIONS, codes};

/// One port or an inclusive range: the type the injector and the proxy
/// use too.
pub use weft_api::port_list::PortRange;

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(u64),
    Text(String),
}

fn port_ranges(field: &str, raw: Vec<RawPort>) -> Result<Vec<PortRange>, CniError> {
    let bad = |v: String| {
        CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            format!("invalid {field}"),
            format!("{v:?} is not a port (1-65535) or a range like \"8000-8100\""),
        )
    };
    raw.into_iter()
        .map(|r| match r {
            RawPort::Number(n) => u16::try_from(n)
                .ok()
                .filter(|p| *p != 0)
                .map(PortRange::single)
                .ok_or_else(|| bad(n.to_string())),
            RawPort::Text(s) => PortRange::parse(&s).map_err(|_| bad(s)),
        })
        .collect()
}

/// What the redirect rules are built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectConfig {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub proxy_uid: u32,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_outbound_cidrs: Vec<IpNet>,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            inbound_port: ports::INBOUND,
            outbound_port: ports::OUTBOUND,
            admin_port: ports::ADMIN,
            proxy_uid: PROXY_UID,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
        }
    }
}

/// The parsed stdin of one invocation.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub prev_result: Option<Value>,
    pub redirect: RedirectConfig,
    pub log_file: Option<PathBuf>,
    pub kubernetes: Option<KubernetesConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    prev_result: Option<Value>,
    inbound_port: Option<u16>,
    outbound_port: Option<u16>,
    admin_port: Option<u16>,
    proxy_uid: Option<u32>,
    #[serde(default)]
    skip_inbound_ports: Vec<RawPort>,
    #[serde(default)]
    skip_outbound_ports: Vec<RawPort>,
    #[serde(default)]
    skip_outbound_cidrs: Vec<String>,
    log_file: Option<PathBuf>,
    kubernetes: Option<Value>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let raw: Raw = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                codes::DECODE_FAILURE,
                "cannot decode network config",
                e.to_string(),
            )
        })?;
        let invalid =
            |msg: &str, details: String| CniError::new(codes::INVALID_NETWORK_CONFIG, msg, details);
        let cni_version = raw.cni_version.ok_or_else(|| {
            invalid(
                "cniVersion is missing",
                "set cniVersion to one of 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0".into(),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                codes::INCOMPATIBLE_VERSION,
                format!("unsupported cniVersion {cni_version:?}"),
                format!("weft-cni supports {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        let name = raw.name.ok_or_else(|| {
            invalid(
                "name is missing",
                "the network config must have a name".into(),
            )
        })?;
        if raw.plugin_type.as_deref() != Some("weft-cni") {
            return Err(invalid(
                "type must be \"weft-cni\"",
                format!("got {:?}", raw.plugin_type),
            ));
        }
        if let Some(prev) = &raw.prev_result
            && !prev.is_object()
        {
            return Err(invalid("prevResult must be an object", prev.to_string()));
        }
        let d = RedirectConfig::default();
        let redirect = RedirectConfig {
            inbound_port: raw.inbound_port.unwrap_or(d.inbound_port),
            outbound_port: raw.outbound_port.unwrap_or(d.outbound_port),
            admin_port: raw.admin_port.unwrap_or(d.admin_port),
            proxy_uid: raw.proxy_uid.unwrap_or(d.proxy_uid),
            skip_inbound_ports: port_ranges("skipInboundPorts", raw.skip_inbound_ports)?,
            skip_outbound_ports: port_ranges("skipOutboundPorts", raw.skip_outbound_ports)?,
            skip_outbound_cidrs: raw
                .skip_outbound_cidrs
                .iter()
                .map(|c| {
                    c.trim()
                        .parse::<IpNet>()
                        .or_else(|_| c.trim().parse::<std::net::IpAddr>().map(IpNet::from))
                        .map(|n| n.trunc())
                        .map_err(|_| {
                            invalid(
                                "invalid skipOutboundCidrs",
                                format!("{c:?} is not a CIDR like 10.0.0.0/8"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        for (field, port) in [
            ("inboundPort", redirect.inbound_port),
            ("outboundPort", redirect.outbound_port),
            ("adminPort", redirect.admin_port),
        ] {
            if port == 0 {
                return Err(invalid("invalid port", format!("{field} must be 1-65535")));
            }
        }
        let kubernetes = raw
            .kubernetes
            .map(serde_json::from_value::<KubernetesConfig>)
            .transpose()
            .map_err(|e| invalid("invalid kubernetes object", e.to_string()))?;
        Ok(NetConf {
            cni_version,
            name,
            prev_result: raw.prev_result,
            redirect,
            log_file: raw.log_file,
            kubernetes,
        })
    }
}
