//! Gateway API routes (HTTPRoute, GRPCRoute) in the outbound stack: the
//! layer that picks a request's rule before balancing.
//!
//! The controller sends a table per destination, its matches already in
//! precedence order ([`matching`]). The first match decides the rule; the
//! rule's request filters run ([`filters`]), a redirect answers at once,
//! and the request goes on through the balanced stack with the rule's own
//! [`Routes`]: its weighted backends, its timeouts and its retries in
//! place of the Service's. A request that matches no rule is answered
//! 404, as a route-aware proxy must not guess where it goes.

pub(crate) mod filters;
pub(crate) mod matching;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use weft_api::proto::destination::{HttpRouteRule, HttpRouteTable, http_filter};

use crate::balance::EndpointState;
use crate::discovery::{BackendSet, RetryOn, RetryRules, Routes};
use crate::http::headers::proxy_error;
use crate::http::pool::BoxBody;
use crate::metrics::http::RouteRefLabels;
use crate::outbound::mirror::Mirror;
use filters::Filter;
use matching::RequestMatch;

/// A destination's routes, compiled.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    matches: Vec<RequestMatch>,
    rules: Vec<Arc<RouteRule>>,
}

/// One rule: what its requests go through.
#[derive(Debug)]
pub(crate) struct RouteRule {
    /// `HTTPRoute demo/web rule 0`, for logs and error responses.
    pub name: Arc<str>,
    /// The route, for request metrics; made once per rule.
    pub labels: RouteRefLabels,
    /// The rule's backends and policy, in the shape the balanced stack
    /// takes.
    pub routes: Arc<Routes>,
    filters: Vec<Filter>,
    /// Its `RequestMirror` filters.
    pub mirrors: Vec<Arc<Mirror>>,
}

/// What the route layer decided for one request.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Balance along the rule's routes; its response filters apply to
    /// what comes back.
    Forward(Arc<RouteRule>),
    /// Answer at once: a redirect (with its route), or no rule matched.
    Respond(Response<BoxBody>, Option<RouteRefLabels>),
}

impl RouteTable {
    /// Compiles the controller's table; `backends` are its backends, built
    /// by discovery (which keeps each endpoint's state across updates).
    /// What does not compile is left out and logged.
    pub(crate) fn build(table: &HttpRouteTable, backends: &[BackendSet], parent: &Routes) -> Self {
        let rules: Vec<Arc<RouteRule>> = table
            .rules
            .iter()
            .map(|rule| Arc::new(RouteRule::build(rule, backends, parent)))
            .collect();
        let matches = table
            .matches
            .iter()
            .filter_map(|m| match RequestMatch::compile(m, rules.len()) {
                Ok(m) => Some(m),
                Err(error) => {
                    tracing::warn!(service = %parent.service, %error, "ignoring a route match");
                    None
                }
            })
            .collect();
        RouteTable { matches, rules }
    }

    /// Every endpoint the rules can send to.
    pub(crate) fn endpoints(&self) -> impl Iterator<Item = &Arc<EndpointState>> {
        self.rules
            .iter()
            .flat_map(|r| &r.routes.backends)
            .flat_map(|b| &b.endpoints)
    }

    /// Picks the rule for `req` (sent to `port` of `service`) and applies
    /// its request filters.
    pub(crate) fn route<B>(&self, req: &mut Request<B>, port: u16, service: &str) -> Decision {
        let Some(matched) = self.matches.iter().find_map(|m| m.matches(req)) else {
            return Decision::Respond(
                proxy_error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no route of {service} matches {} {}",
                        req.method(),
                        req.uri().path()
                    ),
                ),
                None,
            );
        };
        let rule = &self.rules[matched.rule];
        tracing::trace!(rule = %rule.name, "request matched");
        for filter in &rule.filters {
            match filter {
                Filter::RequestHeaders(changes) => changes.apply(req.headers_mut()),
                Filter::Rewrite(rewrite) => rewrite.apply(req, matched.prefix),
                Filter::Redirect(redirect) => {
                    return Decision::Respond(
                        redirect.response(req, port, matched.prefix),
                        Some(rule.labels.clone()),
                    );
                }
                Filter::ResponseHeaders(_) => {}
            }
        }
        Decision::Forward(rule.clone())
    }
}

impl RouteRule {
    fn build(rule: &HttpRouteRule, backends: &[BackendSet], parent: &Routes) -> Self {
        let name: Arc<str> = match &rule.route {
            Some(r) => format!("{} {}/{} rule {}", r.kind, r.namespace, r.name, r.rule).into(),
            None => "route".into(),
        };
        let labels = rule
            .route
            .as_ref()
            .map(|r| RouteRefLabels {
                route_kind: Arc::new(r.kind.clone()),
                route_namespace: Arc::new(r.namespace.clone()),
                route_name: Arc::new(r.name.clone()),
            })
            .unwrap_or_default();
        let mut mirrors = Vec::new();
        for f in &rule.filters {
            if let Some(http_filter::Filter::RequestMirror(m)) = &f.filter {
                let set = m.backend.and_then(|i| backends.get(i as usize));
                mirrors.push(Arc::new(Mirror {
                    service: set.map(|s| s.service.clone()).unwrap_or_default(),
                    endpoints: set.map(|s| s.endpoints.clone()).unwrap_or_default(),
                    per_million: m.per_million,
                }));
            }
        }
        let filters = rule
            .filters
            .iter()
            .filter(|f| !matches!(f.filter, Some(http_filter::Filter::RequestMirror(_))))
            .filter_map(|f| match Filter::compile(f) {
                Ok(f) => Some(f),
                Err(error) => {
                    tracing::warn!(route = %name, %error, "ignoring a route filter");
                    None
                }
            })
            .collect();
        let sets = rule
            .backends
            .iter()
            .map(|b| match b.backend.and_then(|i| backends.get(i as usize)) {
                Some(set) => BackendSet {
                    service: set.service.clone(),
                    weight: u64::from(b.weight),
                    endpoints: set.endpoints.clone(),
                    unresolved: None,
                },
                None => BackendSet {
                    service: Arc::default(),
                    weight: u64::from(b.weight),
                    endpoints: Vec::new(),
                    unresolved: Some(match b.unresolved.as_str() {
                        "" => "BackendNotFound".into(),
                        why => why.into(),
                    }),
                },
            })
            .collect();
        RouteRule {
            routes: Arc::new(parent.for_rule(rule, sets, name.clone())),
            name,
            labels,
            filters,
            mirrors,
        }
    }

    /// Applies the rule's response filters.
    pub(crate) fn on_response(&self, resp: &mut Response<BoxBody>) {
        for filter in &self.filters {
            if let Filter::ResponseHeaders(changes) = filter {
                changes.apply(resp.headers_mut());
            }
        }
    }
}

impl Routes {
    /// The routes of one rule: the Service's, with the rule's backends,
    /// and its timeouts and retries where it sets them.
    fn for_rule(&self, rule: &HttpRouteRule, backends: Vec<BackendSet>, name: Arc<str>) -> Routes {
        let mut policy = self.policy.clone();
        if let Some(ms) = rule.request_timeout_ms {
            policy.timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(ms) = rule.backend_request_timeout_ms {
            policy.backend_timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        let retry = match &rule.retry {
            None => self.retry.clone(),
            Some(r) => {
                let retry_on = RetryOn {
                    statuses: r
                        .codes
                        .iter()
                        .filter_map(|c| u16::try_from(*c).ok())
                        .map(|c| (c, c))
                        .collect(),
                    // A connection never made is always safe to retry.
                    connect_failure: !r.codes.is_empty(),
                };
                policy.retry_on = retry_on.clone();
                policy.retry_limit = r.attempts;
                Arc::new(RetryRules {
                    retry_on,
                    limit: r.attempts,
                    backoff: Duration::from_millis(r.backoff_ms),
                    retries: self.retry.retries.clone(),
                    exhausted: self.retry.exhausted.clone(),
                })
            }
        };
        Routes {
            service: self.service.clone(),
            authority: self.authority.clone(),
            route_labels: self.route_labels.clone(),
            policy,
            retry,
            ejected: self.ejected.clone(),
            readmitted: self.readmitted.clone(),
            shed: self.shed.clone(),
            backends,
            protocol: self.protocol,
            http: None,
            rule: Some(name),
        }
    }
}

#[cfg(test)]
mod tests;
