//! The proxy's environment, as the injector or a user sets it. The input
//! is `NAME=value` lines; names are picked from the proxy's contract by
//! index when a line starts with a digit, so most lines set a real
//! variable. Invariants: no panic; a configuration is refused only with
//! an error naming a variable of the contract, with its value as given,
//! or, for a required one that is missing or blank, no value.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use weft_api::proxy_env::ALL;
use weft_proxy::config::Config;

fuzz_target!(|text: &str| {
    let mut vars = HashMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = match name.parse::<usize>() {
            Ok(i) => ALL[i % ALL.len()].name.to_string(),
            Err(_) => name.to_string(),
        };
        vars.insert(name, value.to_string());
    }
    if let Err(error) = Config::from_lookup(|name| vars.get(name).cloned()) {
        assert!(
            ALL.iter().any(|var| var.name == error.var),
            "{error} blames a variable outside the contract"
        );
        let given = vars.get(error.var).map_or("", |v| v.as_str());
        assert_eq!(given, error.value, "{error} misquotes the value");
    }
});
