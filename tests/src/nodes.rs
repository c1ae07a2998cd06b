//! The nodes of the mesh on one machine: each a network namespace with a
//! pod bridge and its own pod subnet. A second node is joined to the first
//! by an underlay link, and each routes the other's pod subnet via the
//! other's underlay address, as flannel's host-gw does: no NAT, no tunnel,
//! and no route out of the machine.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{Value, json};

use crate::sh;

/// The interface at each end of the underlay link, in both nodes.
pub const UNDERLAY_LINK: &str = "underlay";

/// Node `index`'s address on its pod bridge, its pods' gateway.
pub fn gateway(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, index, 1)
}

/// Node `index`'s pod subnet.
pub fn pod_subnet(index: u8) -> String {
    format!("10.42.{index}.0/24")
}

/// Node `index`'s address on the underlay.
pub fn underlay_address(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 41, 0, index + 1)
}

/// A fresh network namespace with loopback up.
pub(crate) fn add_netns(name: &str, ipv6: bool) -> anyhow::Result<()> {
    sh("ip", &["netns", "add", name])?;
    sh("ip", &["-n", name, "link", "set", "lo", "up"])?;
    if ipv6 {
        // Duplicate address detection would hold new addresses back for
        // seconds; nothing else is on these links.
        for key in [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            sh("ip", &["netns", "exec", name, "sysctl", "-qw", key])?;
        }
    }
    Ok(())
}

/// Node `index`'s conflist: Debian's `bridge` and `host-local`, then
/// `weft-cni`, logging to `cni_log`. Dual stack adds `fd42:<index>::/64`.
pub(crate) fn conflist(index: u8, ipv6: bool, ipam_dir: &Path, cni_log: &Path) -> Value {
    let mut ranges = vec![json!([{ "subnet": pod_subnet(index) }])];
    if ipv6 {
        ranges.push(json!([{ "subnet": format!("fd42:{index}::/64") }]));
    }
    json!({
        "cniVersion": "1.0.0",
        "name": "weft-mesh",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "weft0",
                "isGateway": true,
                // Pods route everything via the node, as on a real
                // cluster, so service IPs are reachable; the node has no
                // route out, so anything not redirected dies there.
                "isDefaultGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": ranges,
                    "dataDir": ipam_dir,
                }
            },
            { "type": "weft-cni", "logFile": cni_log }
        ]
    })
}

/// Joins node 0 (`first`) and node 1 (`second`) by a veth pair, and routes
/// each one's pod subnet via the other. Routes are sourced from the node's
/// gateway address, which pods route back to.
pub(crate) fn join(first: &str, second: &str) -> anyhow::Result<()> {
    sh(
        "ip",
        &[
            "-n",
            first,
            "link",
            "add",
            UNDERLAY_LINK,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY_LINK,
            "netns",
            second,
        ],
    )?;
    // The bridges exist before the routes that name their addresses.
    for (netns, index) in [(first, 0u8), (second, 1)] {
        sh(
            "ip",
            &["-n", netns, "link", "add", "weft0", "type", "bridge"],
        )?;
        let gateway = format!("{}/24", gateway(index));
        sh(
            "ip",
            &["-n", netns, "addr", "add", &gateway, "dev", "weft0"],
        )?;
        sh("ip", &["-n", netns, "link", "set", "weft0", "up"])?;
        let underlay = format!("{}/30", underlay_address(index));
        sh(
            "ip",
            &["-n", netns, "addr", "add", &underlay, "dev", UNDERLAY_LINK],
        )?;
        sh("ip", &["-n", netns, "link", "set", UNDERLAY_LINK, "up"])?;
        sh(
            "ip",
            &[
                "netns",
                "exec",
                netns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
    }
    for (netns, index, peer) in [(first, 0u8, 1u8), (second, 1, 0)] {
        sh(
            "ip",
            &[
                "-n",
                netns,
                "route",
                "add",
                &pod_subnet(peer),
                "via",
                &underlay_address(peer).to_string(),
                "dev",
                UNDERLAY_LINK,
                "src",
                &gateway(index).to_string(),
            ],
        )?;
    }
    Ok(())
}
