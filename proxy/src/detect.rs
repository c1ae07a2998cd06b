//! Protocol detection: peek at what the client sends first.
//!
//! A connection is classified as soon as its first bytes allow it: an HTTP/1
//! method, the HTTP/2 connection preface, a TLS record header, or anything
//! else (opaque, at once). Only a client that sends nothing, or stops in the
//! middle of a prefix that could still be HTTP, waits for the timeout; the
//! well-known server-speaks-first ports skip detection altogether. After
//! the timeout a silent client's upstream is opened and whichever side
//! speaks first decides ([`first_speaker`]).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// A TLS ClientHello from the app; forwarded opaque.
    Tls,
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Outcome of reading a connection's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    Found(Protocol),
    /// Nothing conclusive arrived in time; treated as opaque.
    TimedOut,
}

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HTTP1_METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// Beyond this many bytes without a match, a connection is opaque.
const MAX_DETECT_BYTES: usize = 64;

/// Classifies a prefix, or returns `None` when more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    // TLS handshake record: content type 22, legacy version 3.x.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(0x03) => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    let mut could_be = H2_PREFACE.starts_with(buf);
    for method in HTTP1_METHODS {
        if buf.starts_with(method) {
            return Some(Protocol::Http1);
        }
        could_be |= method.starts_with(buf);
    }
    if could_be && buf.len() < MAX_DETECT_BYTES {
        None
    } else {
        Some(Protocol::Opaque)
    }
}

/// Reads from `io` into `buf` until the protocol is known, the peer closes
/// its side, or `timeout` passes.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    timeout: Duration,
) -> std::io::Result<Detection> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Err(_) => return Ok(Detection::TimedOut),
            // The client half-closed: nothing more will come, forward what we have.
            Ok(Ok(0)) => return Ok(Detection::Found(classify(buf).unwrap_or(Protocol::Opaque))),
            Ok(Ok(_)) => {
                if let Some(protocol) = classify(buf) {
                    return Ok(Detection::Found(protocol));
                }
            }
            Ok(Err(error)) => return Err(error),
        }
    }
}

/// Who broke the silence after detection timed out on a client that sent
/// nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    /// The server, as protocols where it speaks first do: its first bytes
    /// are in the greeting buffer (none if it closed).
    Server,
    /// The client, as an HTTP client does that dialled before it had a
    /// request: what its bytes are (opaque if it closed or stalled in a
    /// prefix).
    Client(Protocol),
}

/// Waits for whichever side speaks first once a silent client has outlasted
/// the detection timeout. `upstream` is the connection opened for opaque
/// bytes, when one could be; server bytes win a tie, since forwarding them
/// is right whatever the client says next. The client's bytes are then
/// detected as at first, within `timeout`.
pub async fn first_speaker<C, U>(
    client: &mut C,
    buf: &mut BytesMut,
    upstream: Option<&mut U>,
    greeting: &mut BytesMut,
    timeout: Duration,
) -> std::io::Result<Speaker>
where
    C: AsyncRead + Unpin,
    U: AsyncRead + Unpin,
{
    // Both reads are cancel-safe: the one that loses consumed nothing.
    let read = match upstream {
        Some(upstream) => tokio::select! {
            biased;
            read = upstream.read_buf(greeting) => {
                read?;
                return Ok(Speaker::Server);
            }
            read = client.read_buf(buf) => read?,
        },
        None => client.read_buf(buf).await?,
    };
    if read == 0 {
        return Ok(Speaker::Client(Protocol::Opaque));
    }
    if let Some(protocol) = classify(buf) {
        return Ok(Speaker::Client(protocol));
    }
    Ok(Speaker::Client(
        match detect(client, buf, timeout).await? {
            Detection::Found(protocol) => protocol,
            Detection::TimedOut => Protocol::Opaque,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"DELETE /x"), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some(Protocol::Tls)
        );
        assert_eq!(classify(b"\x00\x00\x00\x08"), Some(Protocol::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GETX"), Some(Protocol::Opaque));
        // Partial prefixes wait for more.
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"G"), None);
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(&[0x16]), None);
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (mut client, _server) = tokio::io::duplex(64);
        let mut buf = BytesMut::new();
        let started = std::time::Instant::now();
        let d = detect(&mut client, &mut buf, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(d, Detection::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn split_preface_is_reassembled() {
        use tokio::io::AsyncWriteExt;
        let (mut app, mut proxy_side) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            app.write_all(&H2_PREFACE[..5]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            app.write_all(&H2_PREFACE[5..]).await.unwrap();
            app
        });
        let mut buf = BytesMut::new();
        let d = detect(&mut proxy_side, &mut buf, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(d, Detection::Found(Protocol::Http2));
        assert_eq!(&buf[..], H2_PREFACE);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_late_client_is_detected_and_a_greeting_wins() {
        use tokio::io::AsyncWriteExt;
        // The client speaks first, late, in two pieces.
        let (mut app, mut proxy_side) = tokio::io::duplex(64);
        let (_server, mut upstream) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            app.write_all(b"PO").await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            app.write_all(b"ST / HTTP/1.1\r\n").await.unwrap();
            app
        });
        let (mut buf, mut greeting) = (BytesMut::new(), BytesMut::new());
        let speaker = first_speaker(
            &mut proxy_side,
            &mut buf,
            Some(&mut upstream),
            &mut greeting,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(speaker, Speaker::Client(Protocol::Http1));
        assert!(buf.starts_with(b"POST "));
        assert!(greeting.is_empty());
        drop(writer.await.unwrap());

        // The server greets while the client keeps waiting.
        let (_app, mut proxy_side) = tokio::io::duplex(64);
        let (mut server, mut upstream) = tokio::io::duplex(64);
        server.write_all(b"220 ready\r\n").await.unwrap();
        let (mut buf, mut greeting) = (BytesMut::new(), BytesMut::new());
        let speaker = first_speaker(
            &mut proxy_side,
            &mut buf,
            Some(&mut upstream),
            &mut greeting,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(speaker, Speaker::Server);
        assert_eq!(&greeting[..], b"220 ready\r\n");
        assert!(buf.is_empty());

        // No upstream: only the client can speak; closing is opaque.
        let (app, mut proxy_side) = tokio::io::duplex(64);
        drop(app);
        let mut buf = BytesMut::new();
        let speaker = first_speaker(
            &mut proxy_side,
            &mut buf,
            None::<&mut tokio::io::DuplexStream>,
            &mut BytesMut::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(speaker, Speaker::Client(Protocol::Opaque));
    }
}
