//! How the inbound proxy tells a Weft peer from an app's own client on an
//! app port: a TLS ClientHello offering ALPN `weft/1`. Invariants: no
//! panic; a connection is taken as mesh only if its bytes hold `weft/1`
//! and it opened with a TLS handshake record; the verdict does not depend
//! on how the bytes were split into segments; and nothing is consumed
//! (the app gets every byte read).
#![no_main]

mod chunks;

use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weft_proxy::fuzzing::{First, Hello, client_hello, read_first};

fn first(bytes: &[u8], cuts: &[u8]) -> (First, BytesMut) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut reader = chunks::Chunks::new(bytes, cuts);
    let mut buf = BytesMut::new();
    let first = runtime
        .block_on(read_first(&mut reader, &mut buf, Duration::from_secs(1)))
        .expect("an in-memory read does not fail");
    (first, buf)
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (bytes, cuts) = input;
    if let Hello::Complete { mesh: true } = client_hello(&bytes) {
        assert!(bytes.windows(6).any(|w| w == b"weft/1"));
    }
    let (split, buf) = first(&bytes, &cuts);
    let (whole, _) = first(&bytes, &[]);
    assert!(bytes.starts_with(&buf), "bytes lost before the app");
    if split == First::Mesh {
        assert_eq!(bytes.first(), Some(&0x16));
        assert!(bytes.windows(6).any(|w| w == b"weft/1"));
    }
    assert_eq!(split, whole, "the verdict changed with the segments");
});
