//! One request to one endpoint over the pool: the bottom of every HTTP
//! stack. Hop-by-hop fields go; HTTP/1 between two proxies travels as
//! HTTP/2 and is turned back at the other end.

use std::sync::Arc;

use http::header::HOST;
use http::{HeaderValue, Request, Response};

use super::expect;
use super::headers::strip_hop_by_hop;
use super::pool::{BoxBody, Pool, UpstreamError, Version};
use crate::metrics::Direction;
use crate::transport::Target;

/// Sends one request to one target: hop-by-hop fields go, and HTTP/1
/// between two proxies travels as HTTP/2 (see [`ORIG_PROTO_HEADER`]),
/// except a request that expects `100 Continue`, whose body waits for the
/// server's 100 (see [`expect`]). The request's version is the client's.
pub(crate) async fn send(
    pool: &Arc<Pool>,
    direction: Direction,
    target: &Target,
    mut req: Request<BoxBody>,
) -> Result<Response<BoxBody>, UpstreamError> {
    strip_hop_by_hop(req.headers_mut(), false);
    let downstream = if req.version() == http::Version::HTTP_2 {
        Version::Http2
    } else {
        Version::Http1
    };
    let expect = downstream == Version::Http1 && expect::expects_continue(req.headers());
    // Whether this hop turns HTTP/1 into mesh HTTP/2, or back.
    let (mut to_mesh, mut from_mesh) = (false, false);
    let version = match (direction, downstream) {
        (Direction::Outbound, Version::Http1) if target.mesh.is_some() && !expect => {
            to_mesh_h2(&mut req, target);
            to_mesh = true;
            Version::Http2
        }
        (Direction::Inbound, Version::Http2) if req.headers().contains_key(ORIG_PROTO_HEADER) => {
            from_mesh_h2(&mut req);
            from_mesh = true;
            Version::Http1
        }
        (_, Version::Http2) => {
            // HTTP/2 carries the authority in the URI; keep Host out.
            req.headers_mut().remove(HOST);
            Version::Http2
        }
        (_, Version::Http1) => Version::Http1,
    };
    let (req, gate) = match expect && version == Version::Http1 {
        true => {
            let (req, gate) = expect::gate(req, expect::CONTINUE_WAIT);
            (req, Some(gate))
        }
        false => (req, None),
    };
    let sent = pool.send(target, version, req).await;
    if let Some(gate) = gate {
        // A final answer without a 100: the client's body is not wanted.
        gate.close();
    }
    let mut resp = sent?;
    strip_hop_by_hop(resp.headers_mut(), false);
    if from_mesh {
        carry_reason(&mut resp);
    } else if to_mesh {
        restore_reason(&mut resp);
    }
    Ok(resp)
}

/// Carries an HTTP/1 server's own reason phrase across the mesh's HTTP/2
/// hop, which has none: the client's proxy puts it back.
pub const REASON_HEADER: &str = "weft-orig-reason";

fn carry_reason(resp: &mut Response<BoxBody>) {
    let reason = resp.extensions().get::<hyper::ext::ReasonPhrase>();
    if let Some(value) = reason.and_then(|r| HeaderValue::from_bytes(r.as_bytes()).ok()) {
        resp.headers_mut().insert(REASON_HEADER, value);
    }
}

fn restore_reason(resp: &mut Response<BoxBody>) {
    if let Some(value) = resp.headers_mut().remove(REASON_HEADER)
        && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(value.as_bytes())
    {
        resp.extensions_mut().insert(reason);
    }
}

/// The endpoint service's future. Boxed: a generic `S::Future: Send`
/// bound trips a rustc limitation with `BoxError`'s lifetime.
pub(crate) type EndpointFuture = futures_util::future::BoxFuture<
    'static,
    Result<Response<BoxBody>, crate::http::pool::UpstreamError>,
>;

/// The bottom of the outbound stack: one request to one endpoint over the
/// pool.
#[derive(Clone, Debug)]
pub(crate) struct EndpointSender {
    pub pool: Arc<Pool>,
    pub direction: Direction,
}

impl tower::Service<(Target, Request<BoxBody>)> for EndpointSender {
    type Response = Response<BoxBody>;
    type Error = UpstreamError;
    type Future = EndpointFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), UpstreamError>> {
        // The pool dials on demand: there is nothing to wait for.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, (target, req): (Target, Request<BoxBody>)) -> Self::Future {
        let (pool, direction) = (self.pool.clone(), self.direction);
        Box::pin(async move { send(&pool, direction, &target, req).await })
    }
}

/// Marks an HTTP/1 request that crosses the mesh as HTTP/2, so the
/// receiving proxy hands it to its app as HTTP/1 again.
pub const ORIG_PROTO_HEADER: &str = "weft-orig-proto";

/// Turns an app's HTTP/1 request into one for a mesh HTTP/2 connection:
/// the authority moves from Host into the URI.
pub fn to_mesh_h2(req: &mut Request<BoxBody>, target: &Target) {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| target.addr.to_string());
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let orig = if req.version() == http::Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    if let Ok(uri) = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
    {
        *req.uri_mut() = uri;
        req.headers_mut().remove(HOST);
    }
    req.headers_mut()
        .insert(ORIG_PROTO_HEADER, HeaderValue::from_static(orig));
    *req.version_mut() = http::Version::HTTP_2;
}

/// The receiving side of [`to_mesh_h2`]: back to an origin-form HTTP/1.1
/// request with Host.
pub fn from_mesh_h2(req: &mut Request<BoxBody>) {
    req.headers_mut().remove(ORIG_PROTO_HEADER);
    if let Some(authority) = req.uri().authority().cloned()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(HOST, host);
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_11;
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::*;
    use crate::http::pool::BoxError;

    #[test]
    fn http1_crosses_the_mesh_as_http2_and_back() {
        let target = Target::plain("10.0.0.1:8080".parse().unwrap());
        let mut req = Request::get("/path?q=1")
            .header(HOST, "web.demo:80")
            .header("x-app", "kept")
            .body(Full::new(Bytes::new()).map_err(BoxError::from).boxed())
            .unwrap();
        to_mesh_h2(&mut req, &target);
        assert_eq!(req.uri(), "http://web.demo:80/path?q=1");
        assert!(!req.headers().contains_key(HOST));
        assert_eq!(req.headers()[ORIG_PROTO_HEADER], "HTTP/1.1");
        assert_eq!(req.version(), http::Version::HTTP_2);
        from_mesh_h2(&mut req);
        assert_eq!(req.uri(), "/path?q=1");
        assert_eq!(req.headers()[HOST], "web.demo:80");
        assert_eq!(req.headers()["x-app"], "kept");
        assert!(!req.headers().contains_key(ORIG_PROTO_HEADER));
        assert_eq!(req.version(), http::Version::HTTP_11);
        // No Host at all (HTTP/1.0): the dialled address stands in.
        let mut req = Request::get("/")
            .version(http::Version::HTTP_10)
            .body(Full::new(Bytes::new()).map_err(BoxError::from).boxed())
            .unwrap();
        to_mesh_h2(&mut req, &target);
        assert_eq!(req.uri(), "http://10.0.0.1:8080/");
        assert_eq!(req.headers()[ORIG_PROTO_HEADER], "HTTP/1.0");
    }
}
