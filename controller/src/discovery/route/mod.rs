//! Gateway API routes (`HTTPRoute`, `GRPCRoute`) whose parent is a
//! Service: the GAMMA model of the mesh.
//!
//! A route is converted once, when it arrives ([`convert`]), into what
//! resolution needs: its Service parents, and its rules with matches and
//! filters already in the proxy's wire form. What cannot be honoured is
//! recorded as [`Invalid`] (for the log, the metrics and the route's
//! status) and the rest keeps working: a rule with a bad regex or an
//! unsupported filter is dropped, a backend that does not resolve gets
//! its share of requests answered 500, a mirror that does not resolve
//! mirrors nothing. Filters on a backend reference are not supported yet:
//! a rule using them is dropped, and the route's status says so. [`table`] turns the routes that
//! apply to one client into the table the proxy matches requests against.

pub mod convert;
pub mod gateway;
pub mod status;
pub mod table;

use weft_api::proto::destination::{HttpFilter, HttpRetry, HttpRouteMatch};

use super::model::{Invalid, Key};

weft_api::label_values! {
    /// The route kinds Weft serves.
    pub enum RouteKind {
        Http => "HTTPRoute",
        Grpc => "GRPCRoute",
    }
}

/// A route, as discovery keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteInfo {
    pub kind: RouteKind,
    /// `metadata.generation`, for the status's `observedGeneration`.
    pub generation: i64,
    /// `metadata.creationTimestamp` (RFC 3339), the first tie-breaker
    /// between equal matches of different routes: the older route wins.
    pub created: String,
    /// The Services it attaches to; parents of other kinds (Gateways) are
    /// someone else's and are left out.
    pub parents: Vec<Parent>,
    /// The usable rules, each keeping its index in the route.
    pub rules: Vec<RuleInfo>,
    /// How many rules the route has, usable or not.
    pub rules_total: usize,
    /// What could not be honoured.
    pub invalid: Vec<Invalid>,
}

/// A `parentRef` to a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub service: Key,
    /// Only requests to this Service port; `None`: every port.
    pub port: Option<u16>,
    /// The reference as written, which the route's status echoes.
    pub reference: gateway::ParentRef,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleInfo {
    /// The rule's index in the route's `rules`.
    pub index: u32,
    pub name: String,
    /// Never empty: a rule without matches matches every request.
    pub matches: Vec<HttpRouteMatch>,
    /// In the proxy's wire form, applied in order. A `RequestMirror`'s
    /// backend is left for the table to resolve, from `mirrors`.
    pub filters: Vec<HttpFilter>,
    /// Where each `RequestMirror` filter points, in their order.
    pub mirrors: Vec<Result<BackendTarget, Unresolved>>,
    pub backends: Vec<BackendRef>,
    pub request_timeout_ms: Option<u64>,
    pub backend_request_timeout_ms: Option<u64>,
    pub retry: Option<HttpRetry>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendRef {
    /// Where it points, or why it points nowhere usable.
    pub target: Result<BackendTarget, Unresolved>,
    pub weight: u32,
}

/// A Service port a route sends to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendTarget {
    pub service: Key,
    pub port: u16,
}

weft_api::label_values! {
    /// Why a backend reference does not resolve, as the Gateway API names
    /// the reasons of `ResolvedRefs`.
    pub enum Unresolved {
        InvalidKind => "InvalidKind",
        RefNotPermitted => "RefNotPermitted",
        BackendNotFound => "BackendNotFound",
        NoPort => "UnsupportedValue",
    }
}

impl Unresolved {
    pub fn detail(self) -> &'static str {
        match self {
            Unresolved::InvalidKind => "only core Services can be backends",
            Unresolved::RefNotPermitted => {
                "a backend in another namespace needs a ReferenceGrant, which Weft does not support yet"
            }
            Unresolved::BackendNotFound => "no such Service or port",
            Unresolved::NoPort => "a Service backend needs a port",
        }
    }
}
