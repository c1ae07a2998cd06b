//! The pod's redirect rules, as an nftables table of Weft's own.
//!
//! Every change is one `nft -f` transaction, so a pod never has half a rule
//! set: ADD replaces the whole table atomically (running it twice leaves
//! one set), DEL drops the table, and no other table (the primary CNI's,
//! kube-proxy's) is touched.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde_json::Value;

use crate::config::{PortRange, RedirectConfig};
use crate::{CniError, codes};

/// nftables family and table holding all of Weft's rules in a pod.
pub const TABLE: &str = "inet weft";

fn set<T: std::fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The rule lines of each chain, in order.
fn chains(c: &RedirectConfig) -> (Vec<String>, Vec<String>) {
    let mut skip_in = vec![PortRange::single(c.admin_port)];
    skip_in.extend(c.skip_inbound_ports.iter().copied());
    let inbound = vec![
        "iifname \"lo\" return".to_string(),
        "meta l4proto != tcp return".to_string(),
        format!("tcp dport {} return", set(&skip_in)),
        format!("meta l4proto tcp redirect to :{}", c.inbound_port),
    ];

    let mut outbound = vec![
        "meta l4proto != tcp return".to_string(),
        // The proxy's own upstream connections must leave untouched.
        format!("meta skuid {} return", c.proxy_uid),
        "oifname \"lo\" return".to_string(),
        "ip daddr 127.0.0.0/8 return".to_string(),
        "ip6 daddr ::1 return".to_string(),
    ];
    if !c.skip_outbound_ports.is_empty() {
        outbound.push(format!("tcp dport {} return", set(&c.skip_outbound_ports)));
    }
    let v4: Vec<IpNet> = c
        .skip_outbound_cidrs
        .iter()
        .filter(|n| matches!(n, IpNet::V4(_)))
        .copied()
        .collect();
    let v6: Vec<IpNet> = c
        .skip_outbound_cidrs
        .iter()
        .filter(|n| matches!(n, IpNet::V6(_)))
        .copied()
        .collect();
    if !v4.is_empty() {
        outbound.push(format!("ip daddr {} return", set(&v4)));
    }
    if !v6.is_empty() {
        outbound.push(format!("ip6 daddr {} return", set(&v6)));
    }
    outbound.push(format!("meta l4proto tcp redirect to :{}", c.outbound_port));
    (inbound, outbound)
}

/// The complete `nft -f` script that (re)creates the table.
pub fn script(c: &RedirectConfig) -> String {
    let (inbound, outbound) = chains(c);
    let mut s = String::new();
    // Declaring the table first makes the delete valid when it is absent,
    // so the replacement is idempotent and atomic.
    let _ = writeln!(s, "table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{");
    let _ = writeln!(
        s,
        "  chain inbound {{\n    type nat hook prerouting priority dstnat; policy accept;"
    );
    for rule in &inbound {
        let _ = writeln!(s, "    {rule}");
    }
    let _ = writeln!(
        s,
        "  }}\n  chain outbound {{\n    type nat hook output priority -100; policy accept;"
    );
    for rule in &outbound {
        let _ = writeln!(s, "    {rule}");
    }
    let _ = writeln!(s, "  }}\n}}");
    s
}

/// Moves this (single-threaded) process into the pod's network namespace;
/// the `nft` it runs afterwards inherits it.
pub fn enter_netns(path: &str) -> Result<(), CniError> {
    let file = std::fs::File::open(path).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            codes::UNKNOWN_CONTAINER
        } else {
            codes::IO_FAILURE
        };
        CniError::new(
            code,
            format!("cannot open network namespace {path}"),
            e.to_string(),
        )
    })?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        CniError::new(
            codes::IO_FAILURE,
            format!("cannot enter network namespace {path}"),
            e.to_string(),
        )
    })
}

fn nft_path() -> Result<PathBuf, CniError> {
    // Runtimes call plugins with a minimal PATH; look in the usual places too.
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| PathBuf::from(dir).join("nft"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                codes::PLUGIN_NOT_AVAILABLE,
                "nft not found",
                "install the nftables package on the node",
            )
        })
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, CniError> {
    let mut child = Command::new(nft_path()?)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io("cannot run nft", e.to_string()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| CniError::io("cannot write to nft", e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io("nft did not finish", e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CniError::io(
            format!("nft {} failed", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Installs (or replaces) the rules in the current network namespace.
pub fn apply(c: &RedirectConfig) -> Result<(), CniError> {
    nft(&["-f", "-"], Some(&script(c))).map(drop)
}

/// Removes the rules; succeeds when they are already gone.
pub fn remove() -> Result<(), CniError> {
    nft(
        &["-f", "-"],
        Some(&format!("table {TABLE}\ndelete table {TABLE}\n")),
    )
    .map(drop)
}

/// Checks that `nft` runs at all (STATUS).
pub fn nft_available() -> Result<(), CniError> {
    nft(&["--version"], None).map(drop)
}

/// Verifies that the installed table is the one `apply` would install.
pub fn verify(c: &RedirectConfig) -> Result<(), CniError> {
    let missing = |details: String| {
        CniError::new(
            codes::RULES_MISSING,
            "redirect rules are not in place",
            details,
        )
    };
    let listing = nft(&["-j", "list", "table", "inet", "weft"], None)
        .map_err(|e| missing(format!("table {TABLE} is missing: {}", e.details)))?;
    let doc: Value = serde_json::from_str(&listing)
        .map_err(|e| CniError::io("cannot parse nft output", e.to_string()))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (inbound, outbound) = chains(c);
    for (chain, hook, expected, redirect_port) in [
        ("inbound", "prerouting", inbound.len(), c.inbound_port),
        ("outbound", "output", outbound.len(), c.outbound_port),
    ] {
        let has_chain = items.iter().any(|i| {
            i.get("chain")
                .is_some_and(|ch| ch["name"] == chain && ch["hook"] == hook && ch["type"] == "nat")
        });
        if !has_chain {
            return Err(missing(format!("chain {chain} (nat, {hook}) is missing")));
        }
        let rules: Vec<String> = items
            .iter()
            .filter_map(|i| i.get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].to_string())
            .collect();
        if rules.len() != expected {
            return Err(missing(format!(
                "chain {chain} has {} rules, expected {expected}",
                rules.len()
            )));
        }
        let redirect = format!("{{\"redirect\":{{\"port\":{redirect_port}}}}}");
        if !rules.last().is_some_and(|r| r.contains(&redirect)) {
            return Err(missing(format!(
                "chain {chain} does not end in a redirect to port {redirect_port}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_contains_every_exemption() {
        let c = RedirectConfig {
            skip_inbound_ports: vec![PortRange::single(22)],
            skip_outbound_ports: vec![
                PortRange::single(5432),
                PortRange {
                    first: 8000,
                    last: 8100,
                },
            ],
            skip_outbound_cidrs: vec!["10.96.0.0/12".parse().unwrap(), "fd00::/8".parse().unwrap()],
            ..RedirectConfig::default()
        };
        let s = script(&c);
        assert!(s.contains("tcp dport { 6191, 22 } return"), "{s}");
        assert!(s.contains("meta skuid 2103 return"), "{s}");
        assert!(s.contains("tcp dport { 5432, 8000-8100 } return"), "{s}");
        assert!(s.contains("ip daddr { 10.96.0.0/12 } return"), "{s}");
        assert!(s.contains("ip6 daddr { fd00::/8 } return"), "{s}");
        assert!(
            s.contains("redirect to :6143") && s.contains("redirect to :6140"),
            "{s}"
        );
        assert!(
            s.starts_with("table inet weft\ndelete table inet weft\n"),
            "{s}"
        );
    }

    #[test]
    fn empty_sets_are_left_out() {
        let s = script(&RedirectConfig::default());
        assert!(!s.contains("{  }"), "{s}");
        assert!(!s.contains("ip daddr {"), "{s}");
    }
}
