//! `weft-cni`: a CNI chain plugin (spec 0.3.0 to 1.1.0) that runs after the
//! node's primary plugin and installs the pod's redirect rules: inbound TCP
//! to the proxy's inbound port, outbound TCP to its outbound port, with the
//! documented exemptions. It passes the previous result through unchanged.
//!
//! Rules are nftables, in a table of Weft's own (`inet weft`) inside the
//! pod's network namespace. See `cni/README.md` for why nftables.
//!
//! In Kubernetes the same binary is also the node installer
//! (`weft-cni install`, run by a DaemonSet; see [`install`]).

pub mod config;
pub mod install;
pub mod kubernetes;
pub mod rules;

use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::config::NetConf;
use crate::kubernetes::{PodRef, Verdict};

/// CNI spec versions this plugin implements. The 0.x versions matter
/// because many nodes' primary configs still say 0.3.1 or 0.4.0, and a
/// chained plugin is called with its list's version.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Error codes from the CNI spec ("Error" section).
pub mod codes {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific (100+): the rules CHECK expects are missing or wrong.
    pub const RULES_MISSING: u32 = 100;
}

/// A failure reported to the runtime as the spec's error object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
    pub fn io(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::IO_FAILURE, msg, details)
    }
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details })
    }
}

/// The version to put in an error object: the config's, when it is readable
/// and supported, else the newest we speak.
pub fn version_for_error(stdin: &[u8]) -> &'static str {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .and_then(|v| SUPPORTED_VERSIONS.iter().find(|s| **s == v).copied())
        .unwrap_or("1.1.0")
}

static LOG_FILE: OnceLock<std::path::PathBuf> = OnceLock::new();

/// Logs to stderr and, when configured, to the plugin's log file; never to
/// stdout, which belongs to the result.
pub fn log(line: &str) {
    let cmd = std::env::var("CNI_COMMAND").unwrap_or_default();
    let container = std::env::var("CNI_CONTAINERID").unwrap_or_default();
    let line = format!("weft-cni {cmd} {container}: {line}");
    eprintln!("{line}");
    if let Some(path) = LOG_FILE.get()
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn env<'a>(vars: &'a HashMap<String, String>, name: &str) -> Result<&'a str, CniError> {
    vars.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            CniError::new(
                codes::INVALID_ENVIRONMENT,
                format!("{name} is not set"),
                format!("the runtime must set {name}"),
            )
        })
}

/// Runs one CNI command. `Ok(Some(json))` is printed on stdout.
pub fn run(vars: &HashMap<String, String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let command = env(vars, "CNI_COMMAND")?;
    if command == "VERSION" {
        return Ok(Some(
            json!({ "cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS }),
        ));
    }
    let conf = NetConf::parse(stdin)?;
    if let Some(path) = &conf.log_file {
        let _ = LOG_FILE.set(path.clone());
    }
    match command {
        "ADD" => add(vars, &conf),
        "DEL" => del(vars),
        "CHECK" => check(vars, &conf),
        "STATUS" => status(&conf),
        "GC" => gc(&conf),
        other => Err(CniError::new(
            codes::INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND {other:?}"),
            "expected ADD, DEL, CHECK, STATUS, GC or VERSION",
        )),
    }
}

fn add(vars: &HashMap<String, String>, conf: &NetConf) -> Result<Option<Value>, CniError> {
    env(vars, "CNI_CONTAINERID")?;
    env(vars, "CNI_IFNAME")?;
    let netns = env(vars, "CNI_NETNS")?;
    let prev = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            "prevResult is missing",
            "weft-cni is a chained plugin: list it after the primary plugin in a conflist",
        )
    })?;
    let redirect = match redirect_for(vars, conf)? {
        Verdict::Redirect(redirect) => redirect,
        Verdict::PassThrough(why) => {
            log(&format!("passing through: {why}"));
            return Ok(Some(pass_through(prev, &conf.cni_version)));
        }
    };
    rules::enter_netns(netns)?;
    rules::apply(&redirect)?;
    log(&format!("redirect rules installed in {netns}"));
    Ok(Some(pass_through(prev, &conf.cni_version)))
}

/// The rules this pod should have: the config's, unless Kubernetes mode
/// says the pod is not meshed or adds its annotations.
fn redirect_for(vars: &HashMap<String, String>, conf: &NetConf) -> Result<Verdict, CniError> {
    let Some(k8s) = &conf.kubernetes else {
        return Ok(Verdict::Redirect(conf.redirect.clone()));
    };
    let args = vars.get("CNI_ARGS").map(String::as_str).unwrap_or("");
    let Some(pod) = PodRef::from_cni_args(args) else {
        return Ok(Verdict::PassThrough(
            "CNI_ARGS names no Kubernetes pod".into(),
        ));
    };
    if k8s.exclude_namespaces.contains(&pod.namespace) {
        return Ok(Verdict::PassThrough(format!(
            "namespace {} is excluded",
            pod.namespace
        )));
    }
    let object = kubernetes::lookup(k8s, &pod)?;
    kubernetes::verdict(&object, &conf.redirect)
}

/// The previous result, unchanged but for the version we answer in.
fn pass_through(mut prev: Value, cni_version: &str) -> Value {
    if let Some(obj) = prev.as_object_mut() {
        obj.insert("cniVersion".into(), Value::String(cni_version.into()));
    }
    prev
}

fn del(vars: &HashMap<String, String>) -> Result<Option<Value>, CniError> {
    env(vars, "CNI_CONTAINERID")?;
    // A missing or already-deleted netns means the rules went with it.
    let Some(netns) = vars.get("CNI_NETNS").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if !std::path::Path::new(netns).exists() {
        log(&format!("netns {netns} is gone; nothing to remove"));
        return Ok(None);
    }
    match rules::enter_netns(netns) {
        Ok(()) => {}
        // The path may exist but no longer be a namespace (an unmounted bind mount).
        Err(e) => {
            log(&format!("cannot enter {netns} ({e}); treating as gone"));
            return Ok(None);
        }
    }
    rules::remove()?;
    log(&format!("redirect rules removed from {netns}"));
    Ok(None)
}

fn check(vars: &HashMap<String, String>, conf: &NetConf) -> Result<Option<Value>, CniError> {
    env(vars, "CNI_CONTAINERID")?;
    env(vars, "CNI_IFNAME")?;
    let netns = env(vars, "CNI_NETNS")?;
    if conf.prev_result.is_none() {
        return Err(CniError::new(
            codes::INVALID_NETWORK_CONFIG,
            "prevResult is missing",
            "CHECK needs the ADD result",
        ));
    }
    if conf.cni_version.starts_with("0.3.") {
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            "CHECK needs CNI 0.4.0 or later",
            format!("the config says {}", conf.cni_version),
        ));
    }
    let redirect = match redirect_for(vars, conf)? {
        Verdict::Redirect(redirect) => redirect,
        Verdict::PassThrough(_) => return Ok(None),
    };
    rules::enter_netns(netns)?;
    rules::verify(&redirect)?;
    Ok(None)
}

fn status(conf: &NetConf) -> Result<Option<Value>, CniError> {
    if conf.cni_version != "1.1.0" {
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            "STATUS needs CNI 1.1.0",
            format!("the config says {}", conf.cni_version),
        ));
    }
    rules::nft_available()
        .map_err(|e| CniError::new(codes::PLUGIN_NOT_AVAILABLE, "nft is not usable", e.details))?;
    Ok(None)
}

/// The rules live inside each pod's network namespace and vanish with it,
/// so there is no node-level state to collect; GC only validates its input.
fn gc(conf: &NetConf) -> Result<Option<Value>, CniError> {
    if conf.cni_version != "1.1.0" {
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            "GC needs CNI 1.1.0",
            format!("the config says {}", conf.cni_version),
        ));
    }
    Ok(None)
}
