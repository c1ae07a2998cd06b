//! The retry layer's policy: which outcomes are sent again, how often, and
//! within the destination's budget. It runs under `tower::retry::Retry`.

use std::sync::Arc;

use http::{Method, Request, Response};
use tower::retry::budget::Budget;

use super::Attempt;
use super::error::Error;
use crate::balance::{EndpointState, RetryBudget};
use crate::discovery::RetryRules;
use crate::http::pool::{BoxBody, UpstreamError};
use crate::http::replay::ReplayBody;

/// The endpoint that produced a response, so that a retry avoids it.
#[derive(Clone, Debug)]
pub(crate) struct Served(pub Arc<EndpointState>);

/// One request's retry state; cloned per request by `Retry`.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    rules: Arc<RetryRules>,
    retried: u32,
    budget: Arc<RetryBudget>,
}

impl RetryPolicy {
    /// A fresh policy for one request to a route.
    pub(crate) fn new(rules: Arc<RetryRules>, budget: Arc<RetryBudget>) -> Self {
        RetryPolicy {
            rules,
            retried: 0,
            budget,
        }
    }
}

/// Safe to send twice: RFC 9110's idempotent methods.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl RetryPolicy {
    /// Whether the outcome may be retried (`Some`), and the endpoint to
    /// avoid.
    fn retryable(
        &self,
        method: &Method,
        result: &Result<Response<BoxBody>, Error>,
    ) -> Option<Option<Arc<EndpointState>>> {
        let (retryable, endpoint) = match result {
            Ok(resp) => (
                idempotent(method) && self.rules.retry_on.status(resp.status().as_u16()),
                resp.extensions().get::<Served>().map(|s| s.0.clone()),
            ),
            // Never sent: safe for any method.
            Err(Error::Upstream {
                endpoint,
                source: UpstreamError::Connect(_),
            }) => (self.rules.retry_on.connect_failure, Some(endpoint.clone())),
            // Lost mid-exchange: the proxy would answer 502.
            Err(Error::Upstream { endpoint, .. }) => (
                idempotent(method) && self.rules.retry_on.status(502),
                Some(endpoint.clone()),
            ),
            // An attempt's own timeout (the whole request's is above the
            // retries and never gets here): a 504 from the proxy.
            Err(Error::Timeout { .. }) => {
                let retry = idempotent(method) && self.rules.retry_on.status(504);
                return retry.then_some(None);
            }
            // Nowhere else to send it.
            Err(_) => (false, None),
        };
        (retryable && endpoint.is_some()).then_some(endpoint)
    }
}

impl tower::retry::Policy<Request<ReplayBody>, Response<BoxBody>, Error> for RetryPolicy {
    type Future = futures_util::future::Either<std::future::Ready<()>, tokio::time::Sleep>;

    fn retry(
        &mut self,
        req: &mut Request<ReplayBody>,
        result: &mut Result<Response<BoxBody>, Error>,
    ) -> Option<Self::Future> {
        let failed = self.retryable(req.method(), result)?;
        if self.retried >= self.rules.limit || !req.body().can_replay() {
            return None;
        }
        if !self.budget.withdraw() {
            self.rules.exhausted.inc();
            return None;
        }
        self.rules.retries.inc();
        self.retried += 1;
        tracing::debug!(endpoint = ?failed.as_ref().map(|e| e.target.addr), attempt = self.retried, "retrying");
        req.extensions_mut().insert(Attempt {
            avoid: failed,
            chosen: None,
        });
        // Without a route's backoff the retry goes to another endpoint at
        // once: the budget, not a delay, keeps retries from piling up.
        Some(match self.rules.backoff.is_zero() {
            true => futures_util::future::Either::Left(std::future::ready(())),
            false => futures_util::future::Either::Right(tokio::time::sleep(self.rules.backoff)),
        })
    }

    fn clone_request(&mut self, req: &Request<ReplayBody>) -> Option<Request<ReplayBody>> {
        if self.retried >= self.rules.limit {
            return None;
        }
        let body = req.body().try_clone()?;
        let mut clone = Request::new(body);
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::{BodyExt, Empty, Full};
    use tower::{Service, ServiceExt};

    use super::*;
    use crate::discovery::RetryOn;
    use crate::http::pool::BoxError;
    use crate::http::replay::MAX_REPLAY_BYTES;
    use crate::transport::{ConnectError, Target};

    fn endpoint(port: u16) -> Arc<EndpointState> {
        Arc::new(EndpointState::new(Target::plain(
            ([10, 0, 0, 1], port).into(),
        )))
    }

    fn policy(conditions: &[&str], limit: u32, budget: RetryBudget) -> RetryPolicy {
        let conditions: Vec<String> = conditions.iter().map(|c| c.to_string()).collect();
        let rules = Arc::new(RetryRules {
            retry_on: RetryOn::parse(&conditions),
            limit,
            ..Default::default()
        });
        RetryPolicy::new(rules, Arc::new(budget))
    }

    fn request(method: Method, body: &'static str) -> Request<ReplayBody> {
        let body = Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(BoxError::from)
            .boxed();
        let mut req = Request::new(ReplayBody::replayable(body, MAX_REPLAY_BYTES));
        *req.method_mut() = method;
        req
    }

    /// An attempt's body, and the port of the endpoint it avoided.
    type Seen = (Vec<u8>, Option<u16>);

    /// A backend that answers each attempt with the next status from a
    /// script (0: a refused connection), recording the bodies it got and
    /// the endpoint it was told to avoid.
    #[derive(Clone)]
    struct Scripted {
        script: Arc<Mutex<Vec<u16>>>,
        seen: Arc<Mutex<Vec<Seen>>>,
        calls: Arc<AtomicUsize>,
    }

    impl Scripted {
        fn new(script: &[u16]) -> Self {
            Scripted {
                script: Arc::new(Mutex::new(script.iter().rev().copied().collect())),
                seen: Arc::default(),
                calls: Arc::default(),
            }
        }
    }

    impl Service<Request<ReplayBody>> for Scripted {
        type Response = Response<BoxBody>;
        type Error = Error;
        type Future = futures_util::future::BoxFuture<'static, Result<Response<BoxBody>, Error>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let status = self.script.lock().unwrap().pop().unwrap_or(200);
            let seen = self.seen.clone();
            Box::pin(async move {
                let avoided = req
                    .extensions()
                    .get::<Attempt>()
                    .and_then(|a| a.avoid.as_ref().map(|e| e.target.addr.port()));
                let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                seen.lock().unwrap().push((body, avoided));
                let endpoint = endpoint(n as u16 + 1);
                if status == 0 {
                    let addr = endpoint.target.addr;
                    return Err(Error::Upstream {
                        endpoint,
                        source: UpstreamError::Connect(ConnectError::Io {
                            addr,
                            source: std::io::ErrorKind::ConnectionRefused.into(),
                        }),
                    });
                }
                let mut resp = Response::new(Empty::new().map_err(BoxError::from).boxed());
                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                resp.extensions_mut().insert(Served(endpoint));
                Ok(resp)
            })
        }
    }

    async fn run(
        policy: RetryPolicy,
        backend: &Scripted,
        req: Request<ReplayBody>,
    ) -> Result<u16, ()> {
        tower::retry::Retry::new(policy, backend.clone())
            .oneshot(req)
            .await
            .map(|r| r.status().as_u16())
            .map_err(|_| ())
    }

    #[tokio::test]
    async fn retries_a_listed_status_with_the_whole_body_and_avoids_the_endpoint() {
        let backend = Scripted::new(&[503, 503, 200]);
        let p = policy(&["5xx"], 2, RetryBudget::destination());
        let retries = p.rules.retries.clone();
        assert_eq!(
            run(p, &backend, request(Method::PUT, "payload")).await,
            Ok(200)
        );
        let seen = backend.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|(body, _)| body == b"payload"), "{seen:?}");
        // Each retry avoids the endpoint that failed just before.
        assert_eq!(seen[1].1, Some(1));
        assert_eq!(seen[2].1, Some(2));
        assert_eq!(retries.get(), 2);
    }

    #[tokio::test]
    async fn the_limit_caps_attempts() {
        let backend = Scripted::new(&[503, 503, 503, 200]);
        let p = policy(&["5xx"], 2, RetryBudget::destination());
        assert_eq!(run(p, &backend, request(Method::GET, "")).await, Ok(503));
        assert_eq!(backend.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn only_idempotent_methods_retry_a_response() {
        let backend = Scripted::new(&[503, 200]);
        let p = policy(&["5xx"], 2, RetryBudget::destination());
        assert_eq!(run(p, &backend, request(Method::POST, "x")).await, Ok(503));
        // A refused connection never reached anyone: any method retries.
        let backend = Scripted::new(&[0, 200]);
        let p = policy(&["connect-failure"], 2, RetryBudget::destination());
        assert_eq!(run(p, &backend, request(Method::POST, "x")).await, Ok(200));
        // Unless connect failures are not a condition.
        let backend = Scripted::new(&[0, 200]);
        let p = policy(&["5xx"], 2, RetryBudget::destination());
        assert_eq!(run(p, &backend, request(Method::POST, "x")).await, Err(()));
    }

    #[tokio::test]
    async fn unlisted_statuses_and_unreplayable_bodies_are_not_retried() {
        let backend = Scripted::new(&[500, 200]);
        let p = policy(&["gateway-error"], 2, RetryBudget::destination());
        assert_eq!(run(p, &backend, request(Method::GET, "")).await, Ok(500));
        let backend = Scripted::new(&[503, 200]);
        let p = policy(&["5xx"], 2, RetryBudget::destination());
        let mut req = request(Method::GET, "");
        *req.body_mut() = ReplayBody::once(Empty::new().map_err(BoxError::from).boxed());
        assert_eq!(run(p, &backend, req).await, Ok(503));
    }

    #[tokio::test]
    async fn the_budget_stops_retries_and_counts_it() {
        // No share, and the floor spent first: nothing left.
        let backend = Scripted::new(&[503, 200]);
        let p = policy(&["5xx"], 2, RetryBudget::new(0.0, 1));
        let budget = p.budget.clone();
        while budget.withdraw() {}
        let exhausted = p.rules.exhausted.clone();
        assert_eq!(run(p, &backend, request(Method::GET, "")).await, Ok(503));
        assert_eq!(exhausted.get(), 1);
    }

    #[test]
    fn the_destination_budget_is_a_share_plus_a_floor() {
        let budget = RetryBudget::destination();
        let floor = (0..10_000).take_while(|_| budget.withdraw()).count();
        assert_eq!(floor, 100);
        for _ in 0..1000 {
            budget.deposit();
        }
        let more = (0..10_000).take_while(|_| budget.withdraw()).count();
        assert_eq!(more, 200);
    }
}
