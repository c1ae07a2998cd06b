//! Which routes apply to one client of a Service, and the table of them
//! the proxy matches requests against.
//!
//! GAMMA's rules: a route in the client's own namespace (a consumer
//! route) applies to that namespace's clients and replaces every route of
//! the Service's namespace (producer routes) for them; producer routes
//! apply to everyone else. Routes in any third namespace do not apply.
//! Among the routes that apply, matches are ordered as the Gateway API
//! orders them: an exact path, then a regular-expression path, then the
//! longest path prefix; then a method match; then more header matches;
//! then more query matches; then the older route, then the route's
//! `namespace/name`, then the rule's and the match's own order.

use std::cmp::Reverse;
use std::collections::HashMap;

use weft_api::proto::destination::{
    Backend, HttpFilter, HttpRouteMatch, HttpRouteRule, HttpRouteTable, RouteRef,
    WeightedBackendRef, http_filter, path_match,
};

use super::{BackendTarget, RouteInfo, Unresolved};
use crate::discovery::model::Key;

/// A route that applies, with its name.
#[derive(Debug)]
pub struct Applicable<'a> {
    pub key: &'a Key,
    pub route: &'a RouteInfo,
}

/// Chooses the routes for a client in `client_namespace` calling `port`
/// of `service`, from the routes attached to that Service.
pub fn applicable<'a>(
    attached: impl Iterator<Item = (&'a Key, &'a RouteInfo)>,
    service: &Key,
    port: u16,
    client_namespace: &str,
) -> Vec<Applicable<'a>> {
    let mut producer = Vec::new();
    let mut consumer = Vec::new();
    for (key, route) in attached {
        let attaches = route
            .parents
            .iter()
            .any(|p| &p.service == service && p.port.is_none_or(|p| p == port));
        if !attaches || route.rules.is_empty() {
            continue;
        }
        if key.0 == service.0 {
            producer.push(Applicable { key, route });
        } else if key.0 == client_namespace {
            consumer.push(Applicable { key, route });
        }
    }
    if consumer.is_empty() {
        producer
    } else {
        consumer
    }
}

/// How a match ranks: smaller first.
type Rank<'a> = (
    u8,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
    &'a str,
    &'a Key,
    u32,
    usize,
);

fn rank<'a>(route: &'a Applicable<'a>, rule: u32, index: usize, m: &HttpRouteMatch) -> Rank<'a> {
    let (kind, len) = match &m.path {
        Some(p) => (
            match p.kind() {
                path_match::Kind::Exact => 0,
                path_match::Kind::Regex => 1,
                path_match::Kind::Prefix => 2,
            },
            p.value.trim_end_matches('/').len(),
        ),
        None => (2, 0),
    };
    (
        kind,
        Reverse(len),
        m.method.is_empty(),
        Reverse(m.headers.len()),
        Reverse(m.query_params.len()),
        route.route.created.as_str(),
        route.key,
        rule,
        index,
    )
}

/// Builds one table, resolving each backend once.
struct Builder<R> {
    table: HttpRouteTable,
    index: HashMap<BackendTarget, Option<u32>>,
    resolve: R,
}

impl<R: FnMut(&BackendTarget) -> Option<Backend>> Builder<R> {
    /// The rule's filters, each mirror pointing at its backend's index.
    fn mirrors_resolved(&mut self, rule: &super::RuleInfo) -> Vec<HttpFilter> {
        let mut targets = rule.mirrors.iter();
        let mut filters = rule.filters.clone();
        for f in &mut filters {
            if let Some(http_filter::Filter::RequestMirror(m)) = &mut f.filter {
                m.backend = match targets.next() {
                    Some(Ok(target)) => self.backend(target),
                    _ => None,
                };
            }
        }
        filters
    }

    fn backend(&mut self, target: &BackendTarget) -> Option<u32> {
        if let Some(known) = self.index.get(target) {
            return *known;
        }
        let index = (self.resolve)(target).map(|backend| {
            self.table.backends.push(backend);
            self.table.backends.len() as u32 - 1
        });
        self.index.insert(target.clone(), index);
        index
    }
}

/// The table for the routes that apply; `resolve` finds a backend's
/// endpoints (`None`: no such Service or port).
pub fn build(
    routes: &[Applicable<'_>],
    resolve: impl FnMut(&BackendTarget) -> Option<Backend>,
) -> HttpRouteTable {
    let mut b = Builder {
        table: HttpRouteTable::default(),
        index: HashMap::new(),
        resolve,
    };
    let mut ranked: Vec<(Rank<'_>, HttpRouteMatch)> = Vec::new();
    for applicable in routes {
        let route = applicable.route;
        for rule in &route.rules {
            let rule_index = b.table.rules.len() as u32;
            let mut backends = Vec::new();
            for backend in &rule.backends {
                let (index, unresolved) = match &backend.target {
                    Ok(target) => match b.backend(target) {
                        Some(i) => (Some(i), String::new()),
                        None => (None, Unresolved::BackendNotFound.as_str().to_string()),
                    },
                    Err(why) => (None, why.as_str().to_string()),
                };
                backends.push(WeightedBackendRef {
                    backend: index,
                    weight: backend.weight,
                    unresolved,
                });
            }
            let filters = b.mirrors_resolved(rule);
            b.table.rules.push(HttpRouteRule {
                route: Some(RouteRef {
                    kind: route.kind.as_str().to_string(),
                    namespace: applicable.key.0.clone(),
                    name: applicable.key.1.clone(),
                    rule: rule.index,
                    rule_name: rule.name.clone(),
                }),
                filters,
                backends,
                request_timeout_ms: rule.request_timeout_ms,
                backend_request_timeout_ms: rule.backend_request_timeout_ms,
                retry: rule.retry.clone(),
            });
            for (i, m) in rule.matches.iter().enumerate() {
                let mut m = m.clone();
                m.rule = rule_index;
                ranked.push((rank(applicable, rule.index, i, &m), m));
            }
        }
    }
    ranked.sort_by(|x, y| x.0.cmp(&y.0));
    b.table.matches = ranked.into_iter().map(|(_, m)| m).collect();
    b.table
}

#[cfg(test)]
mod tests;
