//! The header a client proxy sends after the mesh TLS handshake.
//! Invariants: no panic; a header that decodes encodes to the same bytes,
//! and one that does not decode is refused with a reason, never with a
//! port of 0.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_api::mesh::Header;

fuzz_target!(|bytes: [u8; Header::LEN]| {
    match Header::decode(&bytes) {
        Ok(header) => {
            assert_ne!(header.port, 0);
            assert_eq!(header.encode(), bytes);
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
