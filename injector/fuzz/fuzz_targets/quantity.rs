//! Kubernetes resource quantities from the proxy's resource annotations.
//! Invariants: no panic; a quantity that parses is a finite, non-negative
//! amount; and a whole number with the suffixes `""`, `m`, `Ki` and `M`
//! means what the API's grammar says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_injector::quantity;

fuzz_target!(|text: &str| {
    if let Ok(q) = quantity::parse(text) {
        assert!(
            q.value.is_finite() && q.value >= 0.0,
            "{text:?} is {}",
            q.value
        );
    }
    let Ok(n) = text.trim().parse::<u32>() else {
        return;
    };
    let n = f64::from(n);
    for (suffix, scale) in [("", 1.0), ("m", 1e-3), ("Ki", 1024.0), ("M", 1e6)] {
        let q = quantity::parse(&format!("{}{suffix}", text.trim()))
            .unwrap_or_else(|e| panic!("{text:?}{suffix}: {e}"));
        assert!(
            (q.value - n * scale).abs() <= (n * scale).abs() * 1e-12,
            "{text:?}{suffix}"
        );
    }
});
