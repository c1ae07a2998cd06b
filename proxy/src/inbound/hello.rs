//! Telling mesh mTLS apart on an app's own port. Another Weft proxy opens
//! with a TLS ClientHello whose ALPN offers `weft/1`; anything else is the
//! app's own client (plaintext, or TLS of its own) and is detected as
//! before. The ClientHello is parsed by rustls (the same parser that then
//! runs the handshake), on a copy, so nothing is consumed.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use weft_api::mesh::ALPN;

use crate::detect::{self, Detection, Protocol};

/// The largest ClientHello waited for: one TLS record. Bigger ones are
/// not from Weft and go to the app as they are.
const MAX_HELLO: usize = 5 + 16 * 1024;

/// What an inbound connection on an app port opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum First {
    /// A Weft proxy's ClientHello: mesh traffic.
    Mesh,
    /// Anything else, as protocol detection classified it.
    App(Detection),
}

/// How far a byte prefix is from a ClientHello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hello {
    /// Could still become a ClientHello.
    Partial,
    /// A whole ClientHello; `true` when its ALPN offers Weft's protocol.
    Complete { mesh: bool },
    /// Not a ClientHello rustls accepts.
    Invalid,
}

/// Classifies `bytes` (the start of a connection) as a ClientHello.
pub fn client_hello(bytes: &[u8]) -> Hello {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => return Hello::Invalid,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(None) => Hello::Partial,
        Ok(Some(accepted)) => Hello::Complete {
            mesh: accepted
                .client_hello()
                .alpn()
                .is_some_and(|mut protocols| protocols.any(|p| p == ALPN)),
        },
        Err(_) => Hello::Invalid,
    }
}

/// Reads the first bytes of `io` into `buf` until it is clear whether a
/// Weft proxy is on the other end. A client that sends nothing waits out
/// `timeout`, as detection does.
pub async fn read_first<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    timeout: Duration,
) -> std::io::Result<First> {
    let deadline = tokio::time::Instant::now() + timeout;
    let detection = detect::detect(io, buf, timeout).await?;
    if detection != Detection::Found(Protocol::Tls) {
        return Ok(First::App(detection));
    }
    loop {
        match client_hello(buf) {
            Hello::Complete { mesh: true } => return Ok(First::Mesh),
            Hello::Complete { mesh: false } | Hello::Invalid => return Ok(First::App(detection)),
            Hello::Partial if buf.len() >= MAX_HELLO => return Ok(First::App(detection)),
            Hello::Partial => {}
        }
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            // What there is goes to the app, which decides.
            Err(_) | Ok(Ok(0)) => return Ok(First::App(detection)),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests;
