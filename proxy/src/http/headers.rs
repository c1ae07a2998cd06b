//! Header work with no I/O: hop-by-hop stripping (RFC 9110 §7.6.1),
//! upgrade detection, HTTP/2 header-list sizes, and the responses the
//! proxy makes itself.

use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use bytes::Bytes;

use super::PROXY_ERROR_HEADER;
use crate::pool::{BoxBody, BoxError, UpstreamError};
use crate::tcp::ConnectError;

pub(super) fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() <= http::Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and every
/// field it names, plus the well-known ones that never cross a proxy.
/// For an upgrade, `Connection: upgrade` and `Upgrade` are kept, because the
/// upgrade has to reach the upstream.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == UPGRADE) {
            headers.remove(&name);
        }
    }
    headers.remove(CONNECTION);
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    headers.remove(TRANSFER_ENCODING);
    // `TE: trailers` is end-to-end meaningful (gRPC needs it); any other TE
    // value is about this hop's transfer coding.
    if headers
        .get(TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(TE);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// A header list's size as HTTP/2 counts it: each field's name and value
/// plus 32 bytes (RFC 9113, section 6.5.2).
pub(super) fn header_list_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

pub(crate) fn error_response(error: &UpstreamError) -> Response<BoxBody> {
    let status = match error {
        UpstreamError::Connect(ConnectError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    proxy_error(status, error.to_string())
}

/// A response the proxy makes itself, naming the cause in a header.
pub(crate) fn proxy_error(status: StatusCode, reason: String) -> Response<BoxBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("{reason}\n")))
            .map_err(BoxError::from)
            .boxed(),
    );
    *resp.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(&reason) {
        resp.headers_mut().insert(PROXY_ERROR_HEADER, value);
    }
    resp
}
