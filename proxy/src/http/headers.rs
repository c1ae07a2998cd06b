//! Header work with no I/O: hop-by-hop stripping (RFC 9110 §7.6.1),
//! upgrade detection, HTTP/2 header-list sizes, and the responses the
//! proxy makes itself.

use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use bytes::Bytes;

use super::PROXY_ERROR_HEADER;
use crate::http::pool::{BoxBody, BoxError, UpstreamError};
use crate::transport::ConnectError;

pub(crate) fn wants_upgrade<B>(req: &Request<B>) -> bool {
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
pub(crate) fn header_list_size(headers: &HeaderMap) -> usize {
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

#[cfg(test)]
mod tests {
    use http::header::{CONNECTION, TE, UPGRADE};

    use super::*;

    #[test]
    fn header_lists_are_sized_as_http2_counts_them() {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("abc"));
        h.append("cookie", HeaderValue::from_static("de"));
        assert_eq!(header_list_size(&h), (6 + 3 + 32) + (6 + 2 + 32));
        // The allowance covers the configured head plus field overhead.
        assert!(crate::http::h2::header_list_limit(65536) as usize > 65536);
        assert_eq!(crate::http::h2::header_list_limit(usize::MAX), u32::MAX);
    }

    #[test]
    fn strips_hop_by_hop_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(TE, HeaderValue::from_static("gzip"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-end-to-end", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-end-to-end"));
    }

    #[test]
    fn keeps_te_trailers_and_upgrade_when_upgrading() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade, x-private"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(TE).unwrap(), "trailers");
        assert!(!h.contains_key("x-private"));
    }

    #[test]
    fn recognises_upgrade_requests() {
        let req = Request::builder()
            .header(CONNECTION, "keep-alive, Upgrade")
            .header(UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(wants_upgrade(&req));
        let req = Request::builder()
            .header(UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(!wants_upgrade(&req));
    }
}
