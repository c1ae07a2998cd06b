//! How one proxy talks to another.
//!
//! A meshed connection is made to the peer pod's inbound port directly
//! (not to the port the app dialled), as TLS 1.3 with both sides'
//! workload certificates and the ALPN protocol [`ALPN`]. The first bytes
//! inside the TLS stream are a [`Header`] naming the port the app dialled
//! and the protocol the client proxy detected. This way the server proxy
//! tells mesh traffic apart from anything an app sends by where it
//! arrives (no guessing), never runs protocol detection on it, and
//! handles server-speaks-first protocols without waiting.

/// ALPN protocol both proxies must agree on; a TLS client that does not
/// offer it is not a Weft proxy.
pub const ALPN: &[u8] = b"weft/1";

/// What the client proxy found on the app's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Bytes, forwarded as they are.
    Opaque,
    /// HTTP/1.x requests.
    Http1,
    /// HTTP/2 (including gRPC).
    Http2,
}

/// Sent by the client proxy right after the TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The destination port the app dialled; the server proxy forwards to
    /// this port on loopback.
    pub port: u16,
    pub protocol: Protocol,
}

const MAGIC: [u8; 2] = *b"WF";
const VERSION: u8 = 1;

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a Weft mesh header")]
    Magic,
    #[error("unsupported mesh header version {0}")]
    Version(u8),
    #[error("unknown protocol {0} in mesh header")]
    Protocol(u8),
    #[error("port 0 in mesh header")]
    Port,
}

impl Header {
    /// Encoded size: magic (2), version, protocol, port (big-endian).
    pub const LEN: usize = 6;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let port = self.port.to_be_bytes();
        let protocol = match self.protocol {
            Protocol::Opaque => 0,
            Protocol::Http1 => 1,
            Protocol::Http2 => 2,
        };
        [MAGIC[0], MAGIC[1], VERSION, protocol, port[0], port[1]]
    }

    pub fn decode(bytes: &[u8; Self::LEN]) -> Result<Self, HeaderError> {
        if bytes[..2] != MAGIC {
            return Err(HeaderError::Magic);
        }
        if bytes[2] != VERSION {
            return Err(HeaderError::Version(bytes[2]));
        }
        let protocol = match bytes[3] {
            0 => Protocol::Opaque,
            1 => Protocol::Http1,
            2 => Protocol::Http2,
            other => return Err(HeaderError::Protocol(other)),
        };
        let port = u16::from_be_bytes([bytes[4], bytes[5]]);
        if port == 0 {
            return Err(HeaderError::Port);
        }
        Ok(Header { port, protocol })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        for protocol in [Protocol::Opaque, Protocol::Http1, Protocol::Http2] {
            let h = Header {
                port: 50051,
                protocol,
            };
            assert_eq!(Header::decode(&h.encode()), Ok(h));
        }
    }

    #[test]
    fn header_refuses_garbage() {
        assert_eq!(Header::decode(b"GET / "), Err(HeaderError::Magic));
        assert_eq!(
            Header::decode(b"WF\x02\x00\x00\x50"),
            Err(HeaderError::Version(2))
        );
        assert_eq!(
            Header::decode(b"WF\x01\x09\x00\x50"),
            Err(HeaderError::Protocol(9))
        );
        assert_eq!(
            Header::decode(b"WF\x01\x00\x00\x00"),
            Err(HeaderError::Port)
        );
    }
}
