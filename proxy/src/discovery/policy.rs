//! A route's policy as the controller sent it: which failures it retries,
//! its timeout, breaker and in-flight limit, and why no endpoint was
//! picked.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

/// Which failures a route retries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Inclusive status ranges.
    pub statuses: Vec<(u16, u16)>,
    /// The connection to the endpoint could not be made (the request was
    /// never sent, so any method may be retried).
    pub connect_failure: bool,
}

impl RetryOn {
    pub(crate) fn parse(conditions: &[String]) -> Self {
        let mut out = RetryOn::default();
        for c in conditions {
            match c.as_str() {
                "5xx" => out.statuses.push((500, 599)),
                "gateway-error" => out.statuses.push((502, 504)),
                "connect-failure" => out.connect_failure = true,
                code => match code.parse::<u16>() {
                    Ok(code) => out.statuses.push((code, code)),
                    // The controller validates; an unknown word from a newer
                    // one is ignored rather than guessed at.
                    Err(_) => tracing::debug!(condition = %code, "unknown retry condition"),
                },
            }
        }
        out
    }

    pub fn status(&self, status: u16) -> bool {
        self.statuses
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }

    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty() && !self.connect_failure
    }
}

/// A route's retry settings with its counters, resolved once per
/// discovery update rather than per request.
#[derive(Debug, Default)]
pub(crate) struct RetryRules {
    pub retry_on: RetryOn,
    /// Retries allowed on top of the first attempt.
    pub limit: u32,
    /// The pause before each retry (a route's `retry.backoff`).
    pub backoff: Duration,
    pub retries: Counter,
    pub exhausted: Counter,
}

impl RetryRules {
    pub(crate) fn is_on(&self) -> bool {
        !self.retry_on.is_empty() && self.limit > 0
    }
}

/// Route policy, as the controller sent it.
#[derive(Debug, Clone)]
pub struct Policy {
    pub retry_on: RetryOn,
    pub retry_limit: u32,
    pub timeout: Option<Duration>,
    /// Each attempt's timeout (a route's `timeouts.backendRequest`).
    pub backend_timeout: Option<Duration>,
    /// Consecutive failures that eject an endpoint (0: never).
    pub failure_accrual: u32,
    /// Requests in flight to one endpoint at most.
    pub max_in_flight: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retry_on: RetryOn::default(),
            retry_limit: 0,
            timeout: None,
            backend_timeout: None,
            failure_accrual: 0,
            max_in_flight: weft_api::policy::DEFAULT_MAX_IN_FLIGHT as usize,
        }
    }
}

/// Why no endpoint was picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoEndpoint {
    /// No backend has a ready endpoint.
    None,
    /// Every endpoint of the chosen backend is at its in-flight limit.
    Overloaded,
    /// The route's backend picked does not resolve, for this reason.
    Unresolved(Arc<str>),
    /// Every backend of the route's rule has weight zero (or there is none).
    NoBackend,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conditions() {
        let r = RetryOn::parse(&["gateway-error".into(), "429".into()]);
        assert!(r.status(502) && r.status(504) && r.status(429));
        assert!(!r.status(500) && !r.connect_failure);
        let r = RetryOn::parse(&["5xx".into(), "connect-failure".into()]);
        assert!(r.status(500) && r.status(599) && !r.status(404) && r.connect_failure);
        assert!(RetryOn::parse(&[]).is_empty());
    }
}
