//! The outbound HTTP stack's one error type, and the one place that turns
//! it into the response the app gets.

use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};

use crate::balance::EndpointState;
use crate::http::headers::{error_response, proxy_error};
use crate::http::pool::{BoxBody, BoxError, UpstreamError};

/// Why a balanced request got no response from an endpoint.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("no ready endpoints for {service}")]
    NoEndpoints { service: Arc<String> },
    #[error(
        "{service}: every endpoint has {limit} requests in flight \
         (balancer.weft.io/max-in-flight); overloaded"
    )]
    Overloaded { service: Arc<String>, limit: usize },
    /// A route's backend reference that does not resolve (an unknown
    /// Service, a wrong kind, no port): the Gateway API's 500.
    #[error("{rule}: backend does not resolve ({reason})")]
    Unresolved { rule: Arc<str>, reason: Arc<str> },
    #[error("{rule}: no backend with a weight above zero")]
    NoBackend { rule: Arc<str> },
    #[error("request to {service} timed out after {after:?}")]
    Timeout {
        service: Arc<String>,
        after: Duration,
    },
    /// The endpoint service failed before any request (never, with the
    /// pool; kept so the layer is honest about its inner service).
    #[error("endpoint service unavailable: {0}")]
    Unready(#[source] UpstreamError),
    #[error("{source}")]
    Upstream {
        /// The endpoint that failed, for the retry policy to avoid.
        endpoint: Arc<EndpointState>,
        #[source]
        source: UpstreamError,
    },
}

impl Error {
    /// Recovers the stack's error from tower's boxed one (the timeout
    /// layer boxes what it wraps).
    pub(crate) fn from_boxed(error: BoxError, service: &Arc<String>, after: Duration) -> Self {
        if error.is::<tower::timeout::error::Elapsed>() {
            return Error::Timeout {
                service: service.clone(),
                after,
            };
        }
        match error.downcast::<Error>() {
            Ok(error) => *error,
            // Every layer below the timeout fails with `Error`.
            Err(other) => unreachable!("outbound stack error of another type: {other}"),
        }
    }

    /// The response the app gets, naming the cause in `weft-proxy-error`:
    /// 503 when nothing could take the request, 504 when it took too long,
    /// 502 when the endpoint failed it, 500 when a route sends it nowhere.
    pub(crate) fn into_response(self) -> Response<BoxBody> {
        match self {
            Error::Unresolved { .. } | Error::NoBackend { .. } => {
                proxy_error(StatusCode::INTERNAL_SERVER_ERROR, self.to_string())
            }
            Error::NoEndpoints { .. } | Error::Overloaded { .. } => {
                proxy_error(StatusCode::SERVICE_UNAVAILABLE, self.to_string())
            }
            Error::Timeout { .. } => proxy_error(StatusCode::GATEWAY_TIMEOUT, self.to_string()),
            Error::Upstream { source, .. } | Error::Unready(source) => error_response(&source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::PROXY_ERROR_HEADER as PROXY_ERROR_HEADER_NAME;
    use crate::transport::{ConnectError, Target};

    fn header(resp: &Response<BoxBody>) -> &str {
        resp.headers()[PROXY_ERROR_HEADER_NAME].to_str().unwrap()
    }

    #[test]
    fn each_error_maps_to_its_status_and_says_why() {
        let service = Arc::new("web.demo".to_string());
        let resp = Error::NoEndpoints {
            service: service.clone(),
        }
        .into_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(header(&resp), "no ready endpoints for web.demo");
        let resp = Error::Overloaded {
            service: service.clone(),
            limit: 8,
        }
        .into_response();
        assert_eq!(resp.status(), 503);
        assert!(header(&resp).ends_with("overloaded"), "{}", header(&resp));
        let resp = Error::Timeout {
            service: service.clone(),
            after: Duration::from_millis(250),
        }
        .into_response();
        assert_eq!(resp.status(), 504);
        assert!(header(&resp).contains("250ms"));
        let rule: Arc<str> = "HTTPRoute demo/web rule 0".into();
        let resp = Error::Unresolved {
            rule: rule.clone(),
            reason: "BackendNotFound".into(),
        }
        .into_response();
        assert_eq!(resp.status(), 500);
        assert_eq!(
            header(&resp),
            "HTTPRoute demo/web rule 0: backend does not resolve (BackendNotFound)"
        );
        assert_eq!(Error::NoBackend { rule }.into_response().status(), 500);
        let addr = "10.0.0.1:80".parse().unwrap();
        let endpoint = Arc::new(EndpointState::new(Target::plain(addr)));
        let refused = || {
            UpstreamError::Connect(ConnectError::Io {
                addr,
                source: std::io::ErrorKind::ConnectionRefused.into(),
            })
        };
        let resp = Error::Upstream {
            endpoint: endpoint.clone(),
            source: refused(),
        }
        .into_response();
        assert_eq!(resp.status(), 502);
        let timed_out = UpstreamError::Connect(ConnectError::Timeout {
            addr,
            timeout: Duration::from_secs(1),
        });
        let resp = Error::Upstream {
            endpoint,
            source: timed_out,
        }
        .into_response();
        assert_eq!(resp.status(), 504);
    }

    #[test]
    fn the_timeout_layer_error_is_recovered() {
        let service = Arc::new("web.demo".to_string());
        let after = Duration::from_secs(1);
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert!(matches!(
            Error::from_boxed(elapsed, &service, after),
            Error::Timeout { .. }
        ));
        let inner: BoxError = Box::new(Error::NoEndpoints {
            service: service.clone(),
        });
        assert!(matches!(
            Error::from_boxed(inner, &service, after),
            Error::NoEndpoints { .. }
        ));
    }
}
