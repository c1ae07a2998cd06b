//! The network config a runtime passes on stdin, `prevResult` included,
//! in any CNI version. Invariants: no panic; a config that parses has a
//! supported version and an object (or no) `prevResult`, and the nftables
//! script built from it holds only what the rules' grammar can (so no
//! value can inject a statement) with every skipped port and CIDR in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cni::config::NetConf;
use weft_cni::{SUPPORTED_VERSIONS, rules};

fuzz_target!(|stdin: &[u8]| {
    let Ok(conf) = NetConf::parse(stdin) else {
        return;
    };
    assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
    assert!(conf.prev_result.as_ref().is_none_or(|p| p.is_object()));
    let script = rules::script(&conf.redirect);
    let allowed = |c: char| c.is_ascii_alphanumeric() || " \n\t{}:;.,/\"-!=_".contains(c);
    assert!(script.chars().all(allowed), "{script}");
    assert_eq!(
        script.matches('{').count(),
        script.matches('}').count(),
        "{script}"
    );
    let r = &conf.redirect;
    for range in r.skip_inbound_ports.iter().chain(&r.skip_outbound_ports) {
        assert!(script.contains(&range.to_string()), "{range} missing");
    }
    for cidr in &r.skip_outbound_cidrs {
        assert!(script.contains(&cidr.to_string()), "{cidr} missing");
    }
});
