//! Mesh authorization as the proxy checks it: a pod's AuthorizationPolicies
//! (resolved by the controller into identities and port numbers) compiled
//! for lookups, and the one pure function that decides a request or a
//! connection ([`Authorization::decide`]).
//!
//! The order: a matching DENY rule refuses; otherwise, when ALLOW policies
//! cover the port, one of their rules must match; otherwise the default
//! decides (`all`, `authenticated`, `cluster` or `deny`). HTTP matches are
//! checked per request. On a connection that is not HTTP, a rule with HTTP
//! matches cannot be checked: it matches in a DENY policy and not in an
//! ALLOW one, so what cannot be seen is refused.

use std::sync::Arc;

use http::Method;
use ipnet::IpNet;
use weft_api::identity::SpiffeId;
use weft_api::proto::policy::{self as proto, DefaultAuthorization};

/// What is being decided.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Subject<'a> {
    /// A connection that is not HTTP (opaque TCP, TLS to the app).
    Connection,
    /// One HTTP request: its method and its path (without the query).
    Request { method: &'a Method, path: &'a str },
}

/// Who asks: the client's address and, over mesh mTLS, its identity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Client<'a> {
    pub ip: std::net::IpAddr,
    pub identity: Option<&'a SpiffeId>,
}

/// Why a request was refused; each is a metric label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AuthzReason {
    /// A DENY policy's rule matched.
    Denied,
    /// ALLOW policies cover the port and none of their rules matched.
    NotAuthorized,
    /// No ALLOW policy covers the port and the default refuses.
    Default,
}

impl AuthzReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AuthzReason::Denied => "deny_rule",
            AuthzReason::NotAuthorized => "not_authorized",
            AuthzReason::Default => "default",
        }
    }
}

/// A refusal, as the client is told it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("authorization refuses this client ({}: {policy})", reason.as_str())]
pub(crate) struct Refused {
    pub reason: AuthzReason,
    pub policy: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Refused, naming the policies (or `default:<value>`) that decided.
    Deny {
        reason: AuthzReason,
        policy: Arc<str>,
    },
}

/// What passes where no ALLOW policy covers the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fallback {
    All,
    Authenticated,
    Cluster,
    Deny,
}

#[derive(Debug)]
struct Rule {
    any_source: bool,
    identities: Vec<SpiffeId>,
    /// `(trust domain, namespace)`: every service account there.
    namespaces: Vec<(String, String)>,
    /// `None`: any port the policy covers.
    ports: Option<Vec<(u16, u16)>>,
    http: Vec<HttpMatch>,
}

#[derive(Debug)]
struct HttpMatch {
    methods: Vec<Method>,
    path: Option<PathMatch>,
    grpc: Option<(String, String)>,
}

#[derive(Debug)]
enum PathMatch {
    Exact(String),
    /// Whole segments; empty for `/` (every path).
    Prefix(String),
}

#[derive(Debug)]
struct Policy {
    name: Arc<str>,
    deny: bool,
    /// `None`: every port of the pod.
    ports: Option<Vec<(u16, u16)>>,
    rules: Vec<Rule>,
}

/// A pod's compiled authorization.
#[derive(Debug)]
pub(crate) struct Authorization {
    fallback: Fallback,
    /// `default:<value>`, the `policy` label of the default's denials.
    default_name: Arc<str>,
    cluster_networks: Vec<IpNet>,
    policies: Vec<Policy>,
}

impl Default for Authorization {
    /// No policy and the default `all`: everything passes.
    fn default() -> Self {
        Authorization::compile(None)
    }
}

fn ranges(any: bool, ports: &[proto::PortRange]) -> Option<Vec<(u16, u16)>> {
    (!any).then(|| {
        ports
            .iter()
            .filter_map(|p| Some((u16::try_from(p.first).ok()?, u16::try_from(p.last).ok()?)))
            .collect()
    })
}

fn in_ranges(ranges: &Option<Vec<(u16, u16)>>, port: u16) -> bool {
    ranges
        .as_ref()
        .is_none_or(|r| r.iter().any(|(a, b)| (*a..=*b).contains(&port)))
}

impl Authorization {
    pub(crate) fn compile(update: Option<&proto::Authorization>) -> Self {
        let Some(update) = update else {
            return Authorization {
                fallback: Fallback::All,
                default_name: "default:all".into(),
                cluster_networks: Vec::new(),
                policies: Vec::new(),
            };
        };
        let (fallback, name) = match update.default() {
            DefaultAuthorization::DefaultAll => (Fallback::All, "all"),
            DefaultAuthorization::DefaultAuthenticated => {
                (Fallback::Authenticated, "authenticated")
            }
            DefaultAuthorization::DefaultCluster => (Fallback::Cluster, "cluster"),
            DefaultAuthorization::DefaultDeny => (Fallback::Deny, "deny"),
        };
        Authorization {
            fallback,
            default_name: format!("default:{name}").into(),
            cluster_networks: update
                .cluster_networks
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            policies: update.policies.iter().map(compile_policy).collect(),
        }
    }

    /// Whether any policy or a default other than `all` applies, so that
    /// a request needs deciding at all.
    pub(crate) fn is_open(&self) -> bool {
        self.policies.is_empty() && self.fallback == Fallback::All
    }

    /// Decides `subject` from `client` to this pod's app port `port`.
    pub(crate) fn decide(&self, client: Client<'_>, port: u16, subject: Subject<'_>) -> Verdict {
        let covering = || self.policies.iter().filter(|p| in_ranges(&p.ports, port));
        for policy in covering().filter(|p| p.deny) {
            if policy
                .rules
                .iter()
                .any(|r| r.matches(client, port, subject, true))
            {
                return Verdict::Deny {
                    reason: AuthzReason::Denied,
                    policy: policy.name.clone(),
                };
            }
        }
        let mut allowing = covering().filter(|p| !p.deny).peekable();
        if allowing.peek().is_some() {
            let mut names = Vec::new();
            for policy in allowing {
                if policy
                    .rules
                    .iter()
                    .any(|r| r.matches(client, port, subject, false))
                {
                    return Verdict::Allow;
                }
                names.push(&*policy.name);
            }
            return Verdict::Deny {
                reason: AuthzReason::NotAuthorized,
                policy: names.join(",").into(),
            };
        }
        let allowed = match self.fallback {
            Fallback::All => true,
            Fallback::Authenticated => client.identity.is_some(),
            Fallback::Cluster => {
                client.identity.is_some()
                    || self.cluster_networks.iter().any(|n| n.contains(&client.ip))
            }
            Fallback::Deny => false,
        };
        match allowed {
            true => Verdict::Allow,
            false => Verdict::Deny {
                reason: AuthzReason::Default,
                policy: self.default_name.clone(),
            },
        }
    }
}

fn compile_policy(p: &proto::AuthorizationPolicy) -> Policy {
    Policy {
        name: p.name.as_str().into(),
        deny: p.deny,
        ports: ranges(p.any_port, &p.ports),
        rules: p.rules.iter().map(compile_rule).collect(),
    }
}

fn compile_rule(r: &proto::AuthorizationRule) -> Rule {
    Rule {
        any_source: r.any_source,
        // An ID a mesh peer cannot present (another path shape) matches
        // nobody, as it would by comparison.
        identities: r.identities.iter().filter_map(|i| i.parse().ok()).collect(),
        namespaces: r
            .identity_prefixes
            .iter()
            .filter_map(|p| {
                let rest = p.strip_prefix("spiffe://")?;
                let (domain, rest) = rest.split_once("/ns/")?;
                let namespace = rest.strip_suffix("/sa/")?;
                Some((domain.to_string(), namespace.to_string()))
            })
            .collect(),
        ports: ranges(r.any_port, &r.ports),
        http: r
            .http
            .iter()
            .map(|m| HttpMatch {
                // A method that is no token matches nothing.
                methods: m
                    .methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
                path: m.path.as_ref().and_then(|p| match &p.kind {
                    Some(proto::path_match::Kind::Exact(v)) => Some(PathMatch::Exact(v.clone())),
                    Some(proto::path_match::Kind::Prefix(v)) => {
                        Some(PathMatch::Prefix(v.trim_end_matches('/').to_string()))
                    }
                    None => None,
                }),
                grpc: m
                    .grpc
                    .as_ref()
                    .map(|g| (g.service.clone(), g.method.clone())),
            })
            .collect(),
    }
}

impl Rule {
    fn matches(&self, client: Client<'_>, port: u16, subject: Subject<'_>, deny: bool) -> bool {
        let source = self.any_source
            || client.identity.is_some_and(|id| {
                self.identities.iter().any(|i| i == id)
                    || self
                        .namespaces
                        .iter()
                        .any(|(td, ns)| id.trust_domain() == td && id.namespace() == ns)
            });
        if !source || !in_ranges(&self.ports, port) {
            return false;
        }
        if self.http.is_empty() {
            return true;
        }
        match subject {
            Subject::Connection => deny,
            Subject::Request { method, path } => {
                let path = normalize(path);
                self.http
                    .iter()
                    .any(|m| m.matches(method, path.as_deref(), deny))
            }
        }
    }
}

impl HttpMatch {
    /// `path` is `None` when it cannot be read safely: a path matcher then
    /// matches in a DENY policy only.
    fn matches(&self, method: &Method, path: Option<&str>, deny: bool) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        let needs_path = self.path.is_some() || self.grpc.is_some();
        let Some(path) = path else {
            return deny || !needs_path;
        };
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => path == p,
            Some(PathMatch::Prefix(p)) => {
                p.is_empty()
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        };
        let grpc_ok = match &self.grpc {
            None => true,
            Some((service, method)) => {
                let mut parts = path.strip_prefix('/').unwrap_or_default().splitn(2, '/');
                let (s, m) = (parts.next().unwrap_or_default(), parts.next());
                m.is_some_and(|m| {
                    (service.is_empty() || s == service) && (method.is_empty() || m == method)
                })
            }
        };
        path_ok && grpc_ok
    }
}

/// The path as an app would most likely read it: `.` and `..` segments
/// resolved (RFC 3986, 5.2.4), `%2E` read as `.`, repeated `/` merged. A
/// path with an encoded `/` or `\` (`%2F`, `%5C`), a raw `\`, or `..`
/// above the root has no safe reading: `None`.
pub(crate) fn normalize(path: &str) -> Option<String> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if path.contains('\\') {
        return None;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return None;
    }
    let decoded = match lower.contains("%2e") {
        true => path.replace("%2e", ".").replace("%2E", "."),
        false => path.to_string(),
    };
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        match segment {
            "." => {}
            ".." => {
                segments.pop()?;
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') && !segments.is_empty();
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Some(out)
}

#[cfg(test)]
mod tests;
