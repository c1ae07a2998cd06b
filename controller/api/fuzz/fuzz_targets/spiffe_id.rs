//! SPIFFE IDs from certificates and flags. Invariant: parsing never
//! panics, and an ID that parses prints back to the same text and parses
//! to the same ID; its TLS server name is one rustls accepts (the first
//! run found IDs that had none; see the regression test in
//! `identity.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_api::identity::SpiffeId;

fuzz_target!(|text: &str| {
    let Ok(id) = text.parse::<SpiffeId>() else {
        return;
    };
    let printed = id.to_string();
    assert_eq!(printed, text, "an ID prints as it was written");
    assert_eq!(printed.parse::<SpiffeId>().as_ref(), Ok(&id));
    let name = id.tls_server_name();
    assert!(
        rustls_pki_types::ServerName::try_from(name.as_str()).is_ok(),
        "{id} has no TLS name: {name:?}"
    );
    let again = SpiffeId::new(id.trust_domain(), id.namespace(), id.service_account());
    assert_eq!(again.as_ref(), Ok(&id));
});
