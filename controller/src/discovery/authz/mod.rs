//! Mesh authorization: Weft's `AuthorizationPolicy` ([`crd`]) read into
//! the store's model ([`AuthorizationPolicyInfo`]) with what is wrong in
//! it, and resolved per pod ([`resolve`]) into identities and port
//! numbers for the pod's proxy, which checks it after NetworkPolicy.
//!
//! A part that cannot be read never opens a pod up: a broken rule of an
//! ALLOW policy matches nothing, a broken rule of a DENY policy (or a
//! policy whose action is unknown) matches every client in its scope, and
//! a namespace default that is not understood reads as `deny`.

pub mod crd;
pub mod resolve;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use weft_api::proto::policy::{self as proto, DefaultAuthorization};

use super::model::Invalid;
use crd::{AuthorizationPolicy, AuthorizationPolicySpec, HttpMatchSpec, RuleSpec, SourceSpec};

/// What a policy is attached to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The pods a Service of the policy's namespace selects, on the ports
    /// it routes to.
    Service(String),
    /// Pods of the policy's namespace, on every port.
    Pods(LabelSelector),
}

/// Who a rule lets in (or keeps out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Spiffe(String),
    ServiceAccount {
        namespace: String,
        name: String,
    },
    /// Every service account of a namespace (`name: "*"`).
    Namespace(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleInfo {
    /// `None`: any client, plaintext included.
    pub sources: Option<Vec<Source>>,
    /// Empty: any port in the policy's scope.
    pub ports: Vec<u16>,
    pub http: Vec<proto::HttpMatch>,
}

impl RuleInfo {
    /// What a rule that cannot be read becomes: nothing for ALLOW,
    /// everything for DENY.
    fn broken(deny: bool) -> Self {
        RuleInfo {
            sources: (!deny).then(Vec::new),
            ports: Vec::new(),
            http: Vec::new(),
        }
    }
}

/// One AuthorizationPolicy as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationPolicyInfo {
    pub targets: Vec<Target>,
    pub deny: bool,
    pub rules: Vec<RuleInfo>,
    pub invalid: Vec<Invalid>,
}

fn invalid(reason: &str, detail: String) -> Invalid {
    Invalid {
        kind: "authorization_policy",
        reason: reason.into(),
        detail,
    }
}

/// `policy.weft.io/default` as written; `None` when unset.
pub fn default_from_annotation(
    value: Option<&str>,
    problems: &mut Vec<Invalid>,
) -> Option<DefaultAuthorization> {
    let value = value?;
    Some(parse_default(value).unwrap_or_else(|| {
        problems.push(Invalid {
            kind: "annotation",
            reason: "bad_authorization_default".into(),
            detail: format!(
                "{}={value:?}: expected all, authenticated, cluster or deny; denying",
                weft_api::policy_annotations::DEFAULT
            ),
        });
        DefaultAuthorization::DefaultDeny
    }))
}

/// `all`, `authenticated`, `cluster` or `deny`.
pub fn parse_default(value: &str) -> Option<DefaultAuthorization> {
    Some(match value {
        "all" => DefaultAuthorization::DefaultAll,
        "authenticated" => DefaultAuthorization::DefaultAuthenticated,
        "cluster" => DefaultAuthorization::DefaultCluster,
        "deny" => DefaultAuthorization::DefaultDeny,
        _ => return None,
    })
}

impl AuthorizationPolicyInfo {
    pub fn from_crd(namespace: &str, policy: &AuthorizationPolicy) -> Self {
        Self::from_spec(namespace, &policy.spec)
    }

    pub fn from_spec(namespace: &str, spec: &AuthorizationPolicySpec) -> Self {
        let mut problems = Vec::new();
        let (deny, unknown_action) = match spec.action.as_str() {
            "ALLOW" => (false, false),
            "DENY" => (true, false),
            other => {
                problems.push(invalid(
                    "bad_action",
                    format!(
                        "action {other:?}: expected ALLOW or DENY; denying every client in the policy's scope"
                    ),
                ));
                (true, true)
            }
        };
        let application = match spec.enforcement_level.as_str() {
            "Application" => true,
            "Network" => false,
            "" => {
                problems.push(invalid(
                    "missing_enforcement_level",
                    "enforcementLevel is unset; read as Network (HTTP rules need Application)"
                        .into(),
                ));
                false
            }
            other => {
                problems.push(invalid(
                    "bad_enforcement_level",
                    format!("enforcementLevel {other:?}: expected Network or Application; read as Network"),
                ));
                false
            }
        };
        let targets = targets(spec, &mut problems);
        let rules = match unknown_action {
            true => vec![RuleInfo::broken(true)],
            false => spec
                .rules
                .iter()
                .enumerate()
                .map(|(index, rule)| {
                    read_rule(namespace, rule, application).unwrap_or_else(|why| {
                        let effect = match deny {
                            true => "it denies every client in the policy's scope",
                            false => "it allows nothing",
                        };
                        problems.push(invalid(why.0, format!("rule {index}: {}; {effect}", why.1)));
                        RuleInfo::broken(deny)
                    })
                })
                .collect(),
        };
        AuthorizationPolicyInfo {
            targets,
            deny,
            rules,
            invalid: problems,
        }
    }
}

fn targets(spec: &AuthorizationPolicySpec, problems: &mut Vec<Invalid>) -> Vec<Target> {
    if spec.target_refs.is_empty() {
        problems.push(invalid(
            "no_target",
            "targetRefs is empty; the policy applies to no pod".into(),
        ));
    }
    let mut out = Vec::new();
    for (index, target) in spec.target_refs.iter().enumerate() {
        let core = matches!(target.group.as_str(), "" | "core");
        let read = match (core, target.kind.as_str(), &target.name, &target.selector) {
            (true, "Service", Some(name), None) if !name.is_empty() => {
                Ok(Target::Service(name.clone()))
            }
            (true, "Pod", None, Some(selector)) => match super::netpol::selector(selector) {
                Some(_) => Ok(Target::Pods(selector.clone())),
                None => Err("its selector cannot be read"),
            },
            (true, "Service", _, _) => Err("a Service target needs a name and no selector"),
            (true, "Pod", _, _) => Err("a Pod target needs a selector and no name"),
            _ => Err("only Services and Pods (group \"\") can be targets"),
        };
        match read {
            Ok(t) => out.push(t),
            Err(why) => problems.push(invalid(
                "bad_target",
                format!(
                    "targetRefs[{index}] ({}/{}): {why}; it targets nothing",
                    target.group, target.kind
                ),
            )),
        }
    }
    out
}

type Problem = (&'static str, String);

fn read_rule(namespace: &str, rule: &RuleSpec, application: bool) -> Result<RuleInfo, Problem> {
    let sources = match &rule.sources {
        None => None,
        Some(list) => Some(
            list.iter()
                .map(|s| read_source(namespace, s))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let ports = rule
        .network_attributes
        .iter()
        .flat_map(|n| &n.ports)
        .map(|&p| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ("bad_port", format!("port {p} is out of range")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !rule.http.is_empty() && !application {
        return Err((
            "http_needs_application",
            "HTTP matches need enforcementLevel Application".into(),
        ));
    }
    let http = rule
        .http
        .iter()
        .map(read_http)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RuleInfo {
        sources,
        ports,
        http,
    })
}

fn read_source(namespace: &str, source: &SourceSpec) -> Result<Source, Problem> {
    match (
        source.kind.as_str(),
        &source.spiffe,
        &source.service_account,
    ) {
        ("SPIFFE", Some(id), None) => {
            let rest = id.strip_prefix("spiffe://").unwrap_or_default();
            match rest.split_once('/') {
                Some((domain, path)) if !domain.is_empty() && !path.is_empty() => {
                    Ok(Source::Spiffe(id.clone()))
                }
                _ => Err((
                    "bad_source",
                    format!("{id:?} is no SPIFFE ID (spiffe://<trust domain>/<path>)"),
                )),
            }
        }
        ("ServiceAccount", None, Some(sa)) => {
            let ns = sa
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_string());
            match sa.name.as_str() {
                "" => Err(("bad_source", "a ServiceAccount source needs a name".into())),
                "*" => Ok(Source::Namespace(ns)),
                name => Ok(Source::ServiceAccount {
                    namespace: ns,
                    name: name.to_string(),
                }),
            }
        }
        (kind, _, _) => Err((
            "bad_source",
            format!(
                "a source of type {kind:?} must be SPIFFE with `spiffe`, or ServiceAccount with `serviceAccount`"
            ),
        )),
    }
}

fn read_http(m: &HttpMatchSpec) -> Result<proto::HttpMatch, Problem> {
    for method in &m.methods {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err((
                "bad_http_match",
                format!("method {method:?} must be upper case, such as GET"),
            ));
        }
    }
    let path = match &m.path {
        None => None,
        Some(p) => {
            if !p.value.starts_with('/') {
                return Err((
                    "bad_http_match",
                    format!("path {:?} must start with /", p.value),
                ));
            }
            let kind = match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => proto::path_match::Kind::Exact(p.value.clone()),
                "PathPrefix" => {
                    proto::path_match::Kind::Prefix(p.value.trim_end_matches('/').to_string())
                }
                other => {
                    return Err((
                        "bad_http_match",
                        format!("path type {other:?}: expected Exact or PathPrefix"),
                    ));
                }
            };
            Some(proto::PathMatch { kind: Some(kind) })
        }
    };
    let grpc = m.grpc.as_ref().map(|g| proto::GrpcMatch {
        service: g.service.clone().unwrap_or_default(),
        method: g.method.clone().unwrap_or_default(),
    });
    if let Some(g) = &grpc
        && (g.service.contains('/') || g.method.contains('/'))
    {
        return Err(("bad_http_match", "a gRPC service or method has no /".into()));
    }
    if grpc.is_some() && (path.is_some() || !m.methods.is_empty()) {
        return Err((
            "bad_http_match",
            "a match has either grpc, or methods and path".into(),
        ));
    }
    Ok(proto::HttpMatch {
        methods: m.methods.clone(),
        path,
        grpc,
    })
}

#[cfg(test)]
mod tests;
