//! Outbound HTTP to a destination discovery knows, as a stack of tower
//! layers, from the top:
//!
//! 0. when the destination has Gateway API routes, [`route`] picks the
//!    request's rule (or answers: a redirect, or 404), whose backends and
//!    policy the layers below then use, and [`mirror`] tees the request to
//!    the rule's mirrors;
//! 1. the route timeout (`tower::timeout`), over all attempts;
//! 2. retries (`tower::retry`, with [`retry::RetryPolicy`] and the
//!    destination's `TpsBudget`), each attempt replaying the body copy;
//!    under them, a rule's `timeouts.backendRequest` times each attempt
//!    (in [`pick::Balance`], so that the breaker sees the timeout);
//! 3. [`pick::Balance`]: the split's backend by weight, then an endpoint by
//!    two choices over peak-EWMA load, skipping ejected endpoints and those
//!    at their in-flight limit; it feeds the outcome back to the breaker;
//! 4. the endpoint service: hop-by-hop stripping, the HTTP/1→HTTP/2 mesh
//!    upgrade, and the pooled connection (`crate::http::EndpointSender`).
//!
//! Above it, [`http::Outbound`] serves the app's requests (an address
//! discovery does not know goes as sent; upgrades hold one endpoint), over
//! the logical layer every request crosses (`crate::http::logical`: span,
//! request and response metrics, the header limit). Errors of this stack
//! become responses in one place, [`error::Error::into_response`]. Opaque
//! TCP to a discovered destination is [`tcp`].

pub(crate) mod error;
pub(crate) mod http;
pub(crate) mod mirror;
pub(crate) mod pick;
pub(crate) mod retry;
pub(crate) mod route;
pub(crate) mod tcp;

use std::sync::Arc;

use ::http::{Request, Response};
use tower::ServiceExt;
use tower::retry::Retry;
use tower::timeout::Timeout;

use crate::balance::{EndpointState, RetryBudget};
use crate::discovery::Routes;
use crate::http::pool::BoxBody;
use crate::http::replay::{MAX_REPLAY_BYTES, ReplayBody};
use crate::transport::Target;
use error::Error;

/// Which attempt a request is; the retry policy sets it for each retry.
#[derive(Clone, Debug, Default)]
pub(crate) struct Attempt {
    /// The endpoint the previous attempt failed on.
    pub avoid: Option<Arc<EndpointState>>,
    /// Already picked (the first attempt is picked by the caller, which
    /// counts the request under that hop on arrival).
    pub chosen: Option<Arc<EndpointState>>,
}

/// Sends `req` to the destination of `routes`, starting with `first`, with
/// the route's timeout and retries. `endpoint` sends one request to one
/// endpoint.
pub(crate) async fn send<S>(
    routes: Arc<Routes>,
    budget: Arc<RetryBudget>,
    first: Arc<EndpointState>,
    endpoint: S,
    req: Request<BoxBody>,
) -> Result<Response<BoxBody>, Error>
where
    S: tower::Service<(Target, Request<BoxBody>), Response = Response<BoxBody>>
        + Clone
        + Send
        + 'static,
    S: tower::Service<
            (Target, Request<BoxBody>),
            Error = crate::http::pool::UpstreamError,
            Future = crate::http::endpoint::EndpointFuture,
        >,
{
    let retries_on = routes.retry.is_on();
    let (parts, body) = req.into_parts();
    let body = if retries_on {
        ReplayBody::replayable(body, MAX_REPLAY_BYTES)
    } else {
        ReplayBody::once(body)
    };
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(Attempt {
        avoid: None,
        chosen: Some(first),
    });
    budget.deposit();
    let policy = retry::RetryPolicy::new(routes.retry.clone(), budget);
    let balance = pick::Balance::new(routes.clone(), endpoint);
    retry_within(&routes, Retry::new(policy, balance), req).await
}

/// Runs the retries under the whole request's timeout, if there is one.
async fn retry_within<S>(
    routes: &Routes,
    retry: S,
    req: Request<ReplayBody>,
) -> Result<Response<BoxBody>, Error>
where
    S: tower::Service<Request<ReplayBody>, Response = Response<BoxBody>, Error = Error>,
{
    match routes.policy.timeout {
        None => retry.oneshot(req).await,
        Some(after) => Timeout::new(retry, after)
            .oneshot(req)
            .await
            .map_err(|error| Error::from_boxed(error, &routes.service, after)),
    }
}
