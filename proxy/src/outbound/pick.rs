//! The balancing layer: for each attempt, the split's backend by weight and
//! one of its endpoints by power of two choices, then the endpoint service;
//! the outcome feeds the endpoint's latency estimate and breaker.
//!
//! tower's `balance::p2c` is not used: it owns its endpoint services and
//! needs `&mut self` to pick, so a shared balancer would sit behind a
//! `Buffer` task, putting a channel hop on every request. Endpoint state
//! here is shared and atomic, so every connection picks on its own task.
//! The breaker works as a readiness gate the same way: an ejected endpoint
//! is not ready, so it is not picked (see `crate::balance::pick`).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tower::Service;

use super::Attempt;
use super::error::Error;
use super::retry::Served;
use crate::discovery::{NoEndpoint, Routes};
use crate::http::pool::{BoxBody, UpstreamError};
use crate::http::replay::ReplayBody;
use crate::transport::Target;
use http_body_util::BodyExt;

/// Picks an endpoint for each attempt and sends it there.
#[derive(Clone, Debug)]
pub(crate) struct Balance<S> {
    routes: Arc<Routes>,
    endpoint: S,
}

impl<S> Balance<S> {
    pub(crate) fn new(routes: Arc<Routes>, endpoint: S) -> Self {
        Balance { routes, endpoint }
    }
}

impl<S> Service<Request<ReplayBody>> for Balance<S>
where
    S: Service<
            (Target, Request<BoxBody>),
            Response = Response<BoxBody>,
            Error = UpstreamError,
            Future = crate::http::endpoint::EndpointFuture,
        > + Clone
        + Send
        + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, Error>>;

    /// Readiness is decided per endpoint at the pick; this only waits for
    /// the endpoint service (which the pool keeps always ready).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self.endpoint.poll_ready(cx) {
            Poll::Ready(Err(source)) => Poll::Ready(Err(Error::Unready(source))),
            other => other.map(|_| Ok(())),
        }
    }

    fn call(&mut self, mut req: Request<ReplayBody>) -> Self::Future {
        let attempt = req.extensions_mut().remove::<Attempt>().unwrap_or_default();
        let routes = self.routes.clone();
        let picked = match attempt.chosen {
            Some(endpoint) => Ok(endpoint),
            None => routes.pick_endpoint(attempt.avoid.as_deref()),
        };
        let endpoint = match picked {
            Ok(endpoint) => endpoint,
            Err(why) => return Box::pin(std::future::ready(Err(routes.no_endpoint(why)))),
        };
        let in_flight = endpoint.start();
        let sent = Instant::now();
        let response = self
            .endpoint
            .call((endpoint.target.clone(), req.map(|body| body.boxed())));
        // A rule's per-attempt timeout. (tower's `Timeout` would box the
        // error and sit outside the outcome accounting below; here a slow
        // attempt counts against its endpoint like a failed one.)
        let attempt_timeout = routes.policy.backend_timeout;
        Box::pin(async move {
            let result = match attempt_timeout {
                None => response.await,
                Some(after) => match tokio::time::timeout(after, response).await {
                    Ok(result) => result,
                    Err(_) => {
                        drop(in_flight);
                        routes.record_outcome(&endpoint, true);
                        return Err(Error::Timeout {
                            service: routes.service.clone(),
                            after,
                        });
                    }
                },
            };
            drop(in_flight);
            let failed = match &result {
                Ok(resp) => {
                    endpoint.observe(sent.elapsed());
                    resp.status().is_server_error()
                }
                Err(_) => true,
            };
            routes.record_outcome(&endpoint, failed);
            match result {
                Ok(mut resp) => {
                    resp.extensions_mut().insert(Served(endpoint));
                    Ok(resp)
                }
                Err(source) => Err(Error::Upstream { endpoint, source }),
            }
        })
    }
}

impl Routes {
    /// The error for a pick that found nothing, counting a shed request.
    pub(crate) fn no_endpoint(&self, why: NoEndpoint) -> Error {
        match why {
            NoEndpoint::None => Error::NoEndpoints {
                service: self.service.clone(),
            },
            NoEndpoint::Unresolved(reason) => Error::Unresolved {
                rule: self.rule.clone().unwrap_or_default(),
                reason,
            },
            NoEndpoint::NoBackend => Error::NoBackend {
                rule: self.rule.clone().unwrap_or_default(),
            },
            NoEndpoint::Overloaded => {
                self.shed.inc();
                tracing::info!(service = %self.service, limit = self.policy.max_in_flight, "every endpoint at its in-flight limit; shedding");
                Error::Overloaded {
                    service: self.service.clone(),
                    limit: self.policy.max_in_flight,
                }
            }
        }
    }
}
