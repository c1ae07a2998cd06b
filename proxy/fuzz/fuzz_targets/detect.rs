//! Protocol detection over arbitrary first bytes, arriving in arbitrary
//! pieces. Invariants: no panic; once a prefix is classified, no longer
//! prefix is classified otherwise (so where the segments fall never
//! matters); and `detect` over the pieces returns what `classify` says at
//! the first piece boundary where it decides (opaque at the end of the
//! stream if it never does).
#![no_main]

mod chunks;

use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weft_proxy::detect::{Detection, Protocol, classify, detect};

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (bytes, cuts) = input;
    let mut decided: Option<(usize, Protocol)> = None;
    for end in 0..=bytes.len() {
        match (classify(&bytes[..end]), decided) {
            (Some(p), None) => decided = Some((end, p)),
            (Some(p), Some((at, first))) => {
                assert_eq!(
                    p,
                    first,
                    "{:?} classified at {at}, then otherwise",
                    &bytes[..end]
                )
            }
            (None, Some((at, _))) => panic!("classified at {at}, undecided at {end}"),
            (None, None) => {}
        }
    }
    let reader = chunks::Chunks::new(&bytes, &cuts);
    let expected = reader
        .boundaries()
        .into_iter()
        .find_map(|end| classify(&bytes[..end]))
        .unwrap_or(Protocol::Opaque);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut reader = reader;
    let mut buf = BytesMut::new();
    let got = runtime
        .block_on(detect(&mut reader, &mut buf, Duration::from_secs(5)))
        .expect("an in-memory read does not fail");
    assert_eq!(got, Detection::Found(expected));
    assert!(bytes.starts_with(&buf), "detection lost or changed bytes");
});
