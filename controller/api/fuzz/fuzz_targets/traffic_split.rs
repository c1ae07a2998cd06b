//! SMI TrafficSplits as JSON or YAML, in any of their versions' shapes.
//! Invariants: no panic; a split whose backends resolve has a service,
//! at least one backend and a non-zero total that does not overflow; a
//! weight of `N` and of `N000m` mean the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_api::split::{TrafficSplit, Weight};

fuzz_target!(|text: &str| {
    let parsed: Option<TrafficSplit> = serde_json::from_str(text)
        .ok()
        .or_else(|| serde_yaml_ng::from_str(text).ok());
    let Some(split) = parsed else {
        return;
    };
    match split.weighted_backends() {
        Ok(backends) => {
            assert!(!split.spec.service.trim().is_empty());
            assert!(!backends.is_empty());
            let total = backends
                .iter()
                .try_fold(0u128, |sum, (_, w)| sum.checked_add(u128::from(*w)));
            assert!(total.is_some_and(|t| t > 0));
        }
        Err(error) => assert!(!error.reason().is_empty()),
    }
    for backend in &split.spec.backends {
        if let Weight::Integer(n) = backend.weight
            && (0..1_000_000).contains(&n)
        {
            let as_quantity = Weight::Quantity(format!("{}m", n * 1000));
            assert_eq!(backend.weight.millis(), as_quantity.millis());
        }
    }
});
