//! The HTTP/2 settings of every HTTP/2 connection the proxy accepts or
//! makes: the header-list limit users configure, and framing and
//! flow-control sized for bulk transfers between proxies.
//!
//! hyper's defaults (16 KiB frames; 1 MiB server and 2 MiB client stream
//! windows) suit the open internet. Inside the mesh they made an h2c
//! download slower than the same download over HTTP/1: every 16 KiB of
//! body costs a frame, a poll and a flow-control step on each of the three
//! hops. Larger frames and windows let a proxy move a stream in fewer,
//! larger steps; a peer that asked for less still gets no more than it
//! asked for.

use hyper::client::conn::http2 as client;
use hyper::server::conn::http2 as server;

/// The largest DATA frame a peer may send us (HTTP/2 allows up to
/// 16 MiB − 1; the default is 16 KiB).
pub(crate) const MAX_FRAME_SIZE: u32 = 256 * 1024;
/// How much of one stream's body a peer may send before we read it.
pub(crate) const STREAM_WINDOW: u32 = 4 << 20;
/// The same for the connection, shared by its streams.
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;
/// How much of a body we buffer per stream before waiting for the peer.
pub(crate) const MAX_SEND_BUF: usize = 1 << 20;

/// An HTTP/2 header-list limit for a configured head size. HTTP/2 counts
/// each field as name + value + 32 bytes (RFC 9113, 6.5.2), so the list
/// allowance is the head size plus that overhead for a generous number of
/// fields; HTTP/1 counts the raw head instead.
pub(crate) fn header_list_limit(max_header_bytes: usize) -> u32 {
    const FIELD_OVERHEAD: usize = 32;
    const FIELDS: usize = 100;
    u32::try_from(max_header_bytes.saturating_add(FIELD_OVERHEAD * FIELDS)).unwrap_or(u32::MAX)
}

/// The same settings on hyper's client and server builders, which share
/// the methods but no trait.
macro_rules! apply_settings {
    ($builder:expr, $max_header_bytes:expr) => {
        $builder
            .max_header_list_size(header_list_limit($max_header_bytes))
            .max_frame_size(MAX_FRAME_SIZE)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buf_size(MAX_SEND_BUF)
    };
}

/// Applies the mesh's settings to a client connection.
pub fn client<E: Clone>(builder: &mut client::Builder<E>, max_header_bytes: usize) {
    apply_settings!(builder, max_header_bytes);
}

/// Applies the mesh's settings to a server connection.
pub fn server<E>(builder: &mut server::Builder<E>, max_header_bytes: usize) {
    apply_settings!(builder, max_header_bytes);
}
