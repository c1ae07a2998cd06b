//! The logical layer every proxied request crosses, in either direction:
//! its trace span, the request counted on arrival under the hop it takes,
//! and the response: errors turned into answers, the header limit, and the
//! response metrics (at once, or when a gRPC or traced body ends).

use std::sync::Arc;
use std::time::Instant;

use http::header::HOST;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::headers::{error_response, header_list_size, proxy_error};
use super::metered::{MeteredBody, ResponseMeter, grpc_status, is_grpc};
use super::pool::{BoxBody, UpstreamError, Version};
use super::server::HttpContext;
use crate::metrics::PeerLabels;
use crate::metrics::http::{Classification, RequestLabels, ResponseLabels, RouteRefLabels};
use crate::trace::RequestSpan;

/// The request's authority: the URI's (HTTP/2, absolute form), else Host.
pub(crate) fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
}

/// One request from its arrival to its response's metrics.
#[derive(Debug)]
pub(crate) struct Exchange {
    ctx: Arc<HttpContext>,
    /// The client's HTTP version on this connection.
    version: Version,
    started: Instant,
    authority: Arc<String>,
    /// The route it matched, once the route layer has decided.
    route: RouteRefLabels,
    span: Option<RequestSpan>,
}

impl Exchange {
    /// Starts the request's span (which may add trace headers to `req`).
    /// `authority` is its metrics label: discovery's name for a known
    /// destination, else the request's own, bounded.
    pub(crate) fn begin<B>(
        ctx: &Arc<HttpContext>,
        version: Version,
        req: &mut Request<B>,
        authority: Option<Arc<String>>,
    ) -> Exchange {
        let authority =
            authority.unwrap_or_else(|| ctx.metrics.http.authorities.label(request_authority(req)));
        let span = ctx
            .tracer
            .as_ref()
            .map(|tracer| tracer.start(req, ctx.direction, &authority));
        Exchange {
            ctx: ctx.clone(),
            version,
            started: Instant::now(),
            authority,
            route: RouteRefLabels::default(),
            span,
        }
    }

    /// Labels the request's metrics with the route it matched.
    pub(crate) fn matched(&mut self, route: &RouteRefLabels) {
        self.route = route.clone();
    }

    /// Counts the request under the hop it takes.
    pub(crate) fn count(&self, remote: PeerLabels) {
        self.ctx
            .metrics
            .http
            .request
            .get_or_create(&RequestLabels {
                direction: self.ctx.direction,
                authority: self.authority.clone(),
                remote,
                route: self.route.clone(),
            })
            .inc();
    }

    /// The answer to the client: an upstream error becomes the proxy's
    /// response, a header list over the limit is refused, and the response
    /// is counted under `remote`.
    pub(crate) fn respond(
        self,
        result: Result<Response<BoxBody>, UpstreamError>,
        remote: PeerLabels,
    ) -> Response<BoxBody> {
        let ctx = self.ctx.clone();
        let response = result.unwrap_or_else(|error| {
            tracing::info!(direction = %ctx.direction, %error, "upstream request failed");
            error_response(&error)
        });
        let response = self.within_header_limit(response);
        let status = response.status();
        let trailers_only = grpc_status(response.headers());
        let streams_grpc = trailers_only.is_none() && is_grpc(response.headers());
        let meter = ResponseMeter {
            metrics: ctx.metrics.clone(),
            labels: ResponseLabels {
                direction: ctx.direction,
                authority: self.authority,
                remote,
                route: self.route,
                status_code: status.as_u16(),
                grpc_status: None,
                classification: if status.is_server_error() {
                    Classification::Failure
                } else {
                    Classification::Success
                },
            },
            latency_ms: Some(self.started.elapsed().as_secs_f64() * 1000.0),
            span: self.span,
        };
        if !streams_grpc && meter.span.is_none() {
            meter.finish(trailers_only, false);
            return response;
        }
        response.map(|inner| {
            MeteredBody {
                inner,
                meter: Some(meter),
            }
            .boxed()
        })
    }

    /// An HTTP/2 peer refuses a header list over its limit with a bare
    /// stream error, so a response over ours is refused here, saying why.
    /// (HTTP/1 downstreams have no such limit from us.)
    fn within_header_limit(&self, response: Response<BoxBody>) -> Response<BoxBody> {
        if self.version != Version::Http2 {
            return response;
        }
        let size = header_list_size(response.headers());
        let limit = self.ctx.config.http_max_header_bytes;
        if size <= super::h2::header_list_limit(limit) as usize {
            return response;
        }
        tracing::info!(direction = %self.ctx.direction, size, limit, "response headers over the limit");
        proxy_error(
            StatusCode::BAD_GATEWAY,
            format!("response headers of {size} bytes exceed WEFT_HTTP_MAX_HEADER_BYTES ({limit})"),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::HeaderValue;
    use http_body_util::Full;

    use super::*;
    use crate::config::Config;
    use crate::http::PROXY_ERROR_HEADER;
    use crate::http::pool::BoxError;
    use crate::metrics::{Direction, Metrics};
    use crate::transport::{ConnectError, Connector};

    fn context(direction: Direction) -> Arc<HttpContext> {
        let config = Arc::new(Config::from_lookup(|_| None).unwrap());
        let connector = Connector {
            timeout: config.connect_timeout,
            metrics: Metrics::new(),
            direction,
            mesh: None,
            egress: None,
        };
        Arc::new(HttpContext::new(config, connector, None))
    }

    fn request(authority: &str) -> Request<()> {
        Request::builder()
            .uri("/x")
            .header(HOST, authority)
            .body(())
            .unwrap()
    }

    fn ok() -> Response<BoxBody> {
        Response::new(Full::new(Bytes::from("hi")).map_err(BoxError::from).boxed())
    }

    fn responses(ctx: &HttpContext, remote: PeerLabels, status: u16, failed: bool) -> u64 {
        ctx.metrics
            .http
            .response
            .get_or_create(&ResponseLabels {
                direction: ctx.direction,
                authority: Arc::new("web:80".into()),
                remote,
                route: RouteRefLabels::default(),
                status_code: status,
                grpc_status: None,
                classification: if failed {
                    Classification::Failure
                } else {
                    Classification::Success
                },
            })
            .get()
    }

    #[tokio::test]
    async fn a_matched_route_labels_the_request_and_its_response() {
        let ctx = context(Direction::Outbound);
        let route = RouteRefLabels {
            route_kind: Arc::new("HTTPRoute".into()),
            route_namespace: Arc::new("demo".into()),
            route_name: Arc::new("web".into()),
        };
        let mut req = request("web:80");
        let mut exchange = Exchange::begin(&ctx, Version::Http1, &mut req, None);
        exchange.matched(&route);
        exchange.count(PeerLabels::plain());
        exchange.respond(Ok(ok()), PeerLabels::plain());
        let text = ctx.metrics.encode();
        for family in ["request_total", "response_total"] {
            let line = text
                .lines()
                .find(|l| l.starts_with(family))
                .unwrap_or_else(|| panic!("no {family} in {text}"));
            assert!(
                line.contains(r#"route_kind="HTTPRoute",route_namespace="demo",route_name="web""#),
                "{line}"
            );
        }
    }

    #[tokio::test]
    async fn counts_the_request_and_its_response_under_the_hop() {
        let ctx = context(Direction::Inbound);
        let client = PeerLabels::client(Arc::new("spiffe://td/ns/a/sa/load".into()));
        let mut req = request("web:80");
        let exchange = Exchange::begin(&ctx, Version::Http1, &mut req, None);
        exchange.count(client.clone());
        let response = exchange.respond(Ok(ok()), client.clone());
        assert_eq!(response.status(), StatusCode::OK);
        let requests = ctx
            .metrics
            .http
            .request
            .get_or_create(&RequestLabels {
                direction: Direction::Inbound,
                authority: Arc::new("web:80".into()),
                remote: client.clone(),
                route: RouteRefLabels::default(),
            })
            .get();
        assert_eq!(requests, 1);
        assert_eq!(responses(&ctx, client, 200, false), 1);
    }

    #[tokio::test]
    async fn an_upstream_error_becomes_the_proxy_s_answer_and_a_failure() {
        let ctx = context(Direction::Outbound);
        let mut req = request("web:80");
        let exchange = Exchange::begin(&ctx, Version::Http1, &mut req, None);
        let error = UpstreamError::Connect(ConnectError::Timeout {
            addr: "10.0.0.1:80".parse().unwrap(),
            timeout: Duration::from_secs(1),
        });
        let response = exchange.respond(Err(error), PeerLabels::plain());
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(response.headers().contains_key(PROXY_ERROR_HEADER));
        assert_eq!(responses(&ctx, PeerLabels::plain(), 504, true), 1);
    }

    #[tokio::test]
    async fn an_http2_client_gets_a_reason_for_headers_over_the_limit() {
        let ctx = context(Direction::Outbound);
        let over = 2 * ctx.config.http_max_header_bytes;
        let big = HeaderValue::from_str(&"x".repeat(over)).unwrap();
        let oversized = || {
            let mut response = ok();
            response.headers_mut().insert("set-cookie", big.clone());
            response
        };
        for (version, status) in [
            (Version::Http2, StatusCode::BAD_GATEWAY),
            // An HTTP/1 client has no such limit from the proxy.
            (Version::Http1, StatusCode::OK),
        ] {
            let mut req = request("web:80");
            let exchange = Exchange::begin(&ctx, version, &mut req, None);
            let response = exchange.respond(Ok(oversized()), PeerLabels::plain());
            assert_eq!(response.status(), status, "{version:?}");
        }
        assert_eq!(responses(&ctx, PeerLabels::plain(), 502, true), 1);
    }

    #[tokio::test]
    async fn discovery_s_name_wins_over_the_request_s_authority() {
        let ctx = context(Direction::Outbound);
        let mut req = request("10.96.0.10:80");
        let exchange = Exchange::begin(
            &ctx,
            Version::Http1,
            &mut req,
            Some(Arc::new("web:80".into())),
        );
        exchange.respond(Ok(ok()), PeerLabels::plain());
        assert_eq!(responses(&ctx, PeerLabels::plain(), 200, false), 1);
    }
}
