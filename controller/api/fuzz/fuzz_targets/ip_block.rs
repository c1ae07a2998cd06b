//! NetworkPolicy `ipBlock`s, read by the controller and matched by the
//! proxy. The input is a CIDR, its exceptions and an address, one per line.
//! Invariants: no panic; a block that parses holds an address exactly
//! when its CIDR does and no exception does (checked against `ipnet`
//! directly); a bad exception makes the whole block unreadable rather
//! than larger.
#![no_main]

use std::net::IpAddr;

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use weft_api::ip_block::IpBlock;

fuzz_target!(|text: &str| {
    let mut lines = text.lines();
    let (Some(cidr), Some(addr)) = (lines.next(), lines.next()) else {
        return;
    };
    let except: Vec<String> = lines.map(str::to_string).collect();
    let block = IpBlock::parse(cidr, &except);
    let net: Option<IpNet> = cidr.trim().parse().ok();
    let nets: Option<Vec<IpNet>> = except.iter().map(|e| e.trim().parse().ok()).collect();
    let (Some(net), Some(nets)) = (net, nets) else {
        assert!(block.is_none(), "a block with a bad CIDR was read");
        return;
    };
    let block = block.expect("good CIDRs make a block");
    if let Ok(ip) = addr.trim().parse::<IpAddr>() {
        let expected = net.contains(&ip) && !nets.iter().any(|n| n.contains(&ip));
        assert_eq!(
            block.contains(ip),
            expected,
            "{ip} in {cidr} except {except:?}"
        );
    }
});
