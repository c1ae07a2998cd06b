//! From the Kubernetes objects to [`RouteInfo`]: validation, and the wire
//! form of matches and filters. GRPCRoute's filters and references are
//! HTTPRoute's; its method matches become path matches
//! (`/service/method`), which is what gRPC puts on the wire.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_api::proto::destination::{
    HeaderModifier, HttpFilter, HttpRetry, HttpRouteMatch, PathMatch, PathModifier,
    RequestRedirect, UrlRewrite, ValueMatch, http_filter, path_match,
};

use super::gateway::{
    self, GrpcRoute, HttpRoute, HttpRouteRule, MatchType, ParentRef, PathModifierType, RouteFilter,
};
use super::{BackendRef, BackendTarget, Parent, RouteInfo, RouteKind, RuleInfo, Unresolved};
use crate::discovery::model::Invalid;

/// The longest regular expression accepted, so a route cannot make every
/// proxy compile something huge.
const MAX_REGEX_LEN: usize = 1024;

fn invalid(reason: &str, detail: String) -> Invalid {
    Invalid {
        kind: "route",
        reason: reason.into(),
        detail,
    }
}

fn meta_of(meta: &ObjectMeta) -> (i64, String) {
    (
        meta.generation.unwrap_or(0),
        meta.creation_timestamp
            .as_ref()
            .map(|t| {
                t.0.to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true)
            })
            .unwrap_or_default(),
    )
}

/// An HTTPRoute in `namespace`.
pub fn http_route(namespace: &str, route: &HttpRoute) -> RouteInfo {
    let (generation, created) = meta_of(&route.metadata);
    let mut out = RouteInfo {
        kind: RouteKind::Http,
        generation,
        created,
        parents: parents(namespace, &route.spec.parent_refs),
        rules: Vec::new(),
        rules_total: route.spec.rules.len(),
        invalid: Vec::new(),
    };
    for (index, rule) in route.spec.rules.iter().enumerate() {
        match http_rule(
            namespace,
            index as u32,
            rule,
            &out.parents,
            &mut out.invalid,
        ) {
            Ok(rule) => out.rules.push(rule),
            Err(problem) => out.invalid.push(problem),
        }
    }
    out
}

/// A GRPCRoute in `namespace`.
pub fn grpc_route(namespace: &str, route: &GrpcRoute) -> RouteInfo {
    let (generation, created) = meta_of(&route.metadata);
    let mut out = RouteInfo {
        kind: RouteKind::Grpc,
        generation,
        created,
        parents: parents(namespace, &route.spec.parent_refs),
        rules: Vec::new(),
        rules_total: route.spec.rules.len(),
        invalid: Vec::new(),
    };
    for (index, rule) in route.spec.rules.iter().enumerate() {
        let converted = grpc_matches(index, &rule.matches).and_then(|matches| {
            // The rest of a GRPCRoute rule reads as an HTTPRoute rule's.
            let as_http = HttpRouteRule {
                name: rule.name.clone(),
                filters: rule.filters.clone(),
                backend_refs: rule.backend_refs.clone(),
                ..Default::default()
            };
            let mut converted = http_rule(
                namespace,
                index as u32,
                &as_http,
                &out.parents,
                &mut out.invalid,
            )?;
            if !matches.is_empty() {
                converted.matches = matches;
            }
            Ok(converted)
        });
        match converted {
            Ok(rule) => out.rules.push(rule),
            Err(p) => out.invalid.push(p),
        }
    }
    out
}

fn grpc_matches(
    index: usize,
    matches: &[gateway::GrpcRouteMatch],
) -> Result<Vec<HttpRouteMatch>, Invalid> {
    let mut out = Vec::new();
    for m in matches {
        let headers = value_matches(index, "header", &m.headers)?;
        let path = match &m.method {
            None => None,
            Some(method) => {
                let regex = match method.kind.unwrap_or_default() {
                    MatchType::Exact => false,
                    MatchType::RegularExpression => true,
                    other => return Err(unsupported_match(index, "method", other)),
                };
                grpc_path(method.service.as_deref(), method.method.as_deref(), regex)
            }
        };
        let candidate = HttpRouteMatch {
            rule: 0,
            path,
            headers,
            query_params: Vec::new(),
            method: String::new(),
        };
        check_regexes(&candidate)?;
        out.push(candidate);
    }
    Ok(out)
}

fn unsupported_match(index: usize, what: &str, kind: MatchType) -> Invalid {
    invalid(
        "unsupported_match",
        format!("rule {index}: a {what} match of type {kind:?} is not supported"),
    )
}

/// Header or query parameter matches: `Exact` (the default) or
/// `RegularExpression`.
fn value_matches(
    index: usize,
    what: &str,
    matches: &[gateway::ValueMatch],
) -> Result<Vec<ValueMatch>, Invalid> {
    matches
        .iter()
        .map(|m| {
            let regex = match m.kind.unwrap_or_default() {
                MatchType::Exact => false,
                MatchType::RegularExpression => true,
                other => return Err(unsupported_match(index, what, other)),
            };
            Ok(value_match(&m.name, regex, &m.value))
        })
        .collect()
}

/// The path a gRPC method match stands for.
fn grpc_path(service: Option<&str>, method: Option<&str>, regex: bool) -> Option<PathMatch> {
    let (kind, value) = match (service, method, regex) {
        (None, None, _) => return None,
        (Some(s), Some(m), false) => (path_match::Kind::Exact, format!("/{s}/{m}")),
        (Some(s), None, false) => (path_match::Kind::Prefix, format!("/{s}")),
        (None, Some(m), false) => (
            path_match::Kind::Regex,
            format!("/[^/]+/{}", regex::escape(m)),
        ),
        (s, m, true) => (
            path_match::Kind::Regex,
            format!("/{}/{}", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+")),
        ),
    };
    Some(PathMatch {
        kind: kind.into(),
        value,
    })
}

fn parents(namespace: &str, refs: &[ParentRef]) -> Vec<Parent> {
    refs.iter()
        .filter(|r| is_service_parent(r))
        .map(|r| Parent {
            service: (
                r.namespace.clone().unwrap_or_else(|| namespace.to_string()),
                r.name.clone(),
            ),
            port: r.port.and_then(|p| u16::try_from(p).ok()),
            reference: r.clone(),
        })
        .collect()
}

/// Whether a `parentRef` names a Service, which makes it the mesh's (GAMMA)
/// rather than a Gateway's.
fn is_service_parent(r: &ParentRef) -> bool {
    r.group.as_deref().unwrap_or_default().is_empty() && r.kind.as_deref() == Some("Service")
}

fn value_match(name: &str, regex: bool, value: &str) -> ValueMatch {
    ValueMatch {
        name: name.to_string(),
        regex,
        value: value.to_string(),
    }
}

/// One rule, or why it cannot be used. Problems that leave the rule usable
/// (a backend that does not resolve) go to `problems`.
fn http_rule(
    namespace: &str,
    index: u32,
    rule: &HttpRouteRule,
    parents: &[Parent],
    problems: &mut Vec<Invalid>,
) -> Result<RuleInfo, Invalid> {
    let at = index as usize;
    let mut matches = Vec::new();
    for m in &rule.matches {
        let path = match &m.path {
            None => None,
            Some(p) => {
                let kind = match p.kind.unwrap_or(MatchType::PathPrefix) {
                    MatchType::Exact => path_match::Kind::Exact,
                    MatchType::PathPrefix => path_match::Kind::Prefix,
                    MatchType::RegularExpression => path_match::Kind::Regex,
                    other => return Err(unsupported_match(at, "path", other)),
                };
                Some(PathMatch {
                    kind: kind.into(),
                    value: p.value.clone().unwrap_or_else(|| "/".into()),
                })
            }
        };
        let headers = value_matches(at, "header", &m.headers)?;
        let query_params = value_matches(at, "query parameter", &m.query_params)?;
        let method = m.method.clone().unwrap_or_default();
        let candidate = HttpRouteMatch {
            rule: 0,
            path,
            headers,
            query_params,
            method,
        };
        check_regexes(&candidate)?;
        matches.push(candidate);
    }
    if matches.is_empty() {
        matches.push(HttpRouteMatch {
            path: Some(PathMatch {
                kind: path_match::Kind::Prefix.into(),
                value: "/".into(),
            }),
            ..Default::default()
        });
    }
    let name = rule.name.clone().unwrap_or_default();
    let mut mirrors = Vec::new();
    let filters = filters(&rule.filters, &mut |m| {
        let to = target(namespace, parents, &m.backend_ref);
        if let Err(why) = &to {
            problems.push(invalid(
                why.as_str(),
                format!(
                    "rule {index}: mirror {:?}: {}",
                    m.backend_ref.name,
                    why.detail()
                ),
            ));
        }
        mirrors.push(to);
    })
    .map_err(|why| invalid("unsupported_filter", format!("rule {index}: {why}")))?;
    let mut backends = Vec::new();
    for b in &rule.backend_refs {
        if !b.filters.is_empty() {
            return Err(invalid(
                "unsupported_filter",
                format!("rule {index}: filters on a backendRef are not supported yet"),
            ));
        }
        let converted = backend_ref(namespace, parents, b);
        if let Err(why) = &converted.target {
            problems.push(invalid(
                why.as_str(),
                format!(
                    "rule {index}: backend {:?}: {}",
                    b.target.name,
                    why.detail()
                ),
            ));
        }
        backends.push(converted);
    }
    if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
        // Kept: its requests are answered 500, as the Gateway API says.
        problems.push(invalid(
            "zero_total_weight",
            format!("rule {index}: every backend has weight 0"),
        ));
    }
    let timeout = |v: Option<&String>, field: &str| -> Result<Option<u64>, Invalid> {
        v.map(|v| {
            gateway_duration(v).ok_or_else(|| {
                invalid(
                    "bad_timeout",
                    format!("rule {index}: timeouts.{field} {v:?} is not a Gateway API duration"),
                )
            })
        })
        .transpose()
    };
    let timeouts = rule.timeouts.as_ref();
    let request_timeout_ms = timeout(timeouts.and_then(|t| t.request.as_ref()), "request")?;
    let backend_request_timeout_ms = timeout(
        timeouts.and_then(|t| t.backend_request.as_ref()),
        "backendRequest",
    )?;
    if let (Some(request), Some(backend)) = (request_timeout_ms, backend_request_timeout_ms)
        && request != 0
        && (backend == 0 || backend > request)
    {
        return Err(invalid(
            "bad_timeout",
            format!("rule {index}: timeouts.backendRequest must not exceed timeouts.request"),
        ));
    }
    let retry = match &rule.retry {
        None => None,
        Some(r) => {
            let mut codes = Vec::new();
            for code in &r.codes {
                match u32::try_from(*code) {
                    Ok(c) if (400..=599).contains(&c) => codes.push(c),
                    _ => {
                        return Err(invalid(
                            "bad_retry",
                            format!("rule {index}: retry code {code} is not from 400 to 599"),
                        ));
                    }
                }
            }
            let backoff_ms = match &r.backoff {
                None => 0,
                Some(v) => gateway_duration(v).ok_or_else(|| {
                    invalid(
                        "bad_retry",
                        format!("rule {index}: retry.backoff {v:?} is not a duration"),
                    )
                })?,
            };
            Some(HttpRetry {
                codes,
                attempts: r
                    .attempts
                    .map(|a| {
                        a.clamp(0, i64::from(crate::discovery::policy::MAX_RETRY_LIMIT)) as u32
                    })
                    .unwrap_or(1),
                backoff_ms,
            })
        }
    };
    Ok(RuleInfo {
        index,
        name,
        matches,
        filters,
        mirrors,
        backends,
        request_timeout_ms,
        backend_request_timeout_ms,
        retry,
    })
}

fn check_regexes(m: &HttpRouteMatch) -> Result<(), Invalid> {
    let path = m
        .path
        .as_ref()
        .filter(|p| p.kind() == path_match::Kind::Regex)
        .map(|p| p.value.as_str());
    let values = m
        .headers
        .iter()
        .chain(&m.query_params)
        .filter(|v| v.regex)
        .map(|v| v.value.as_str());
    for pattern in path.into_iter().chain(values) {
        let compiled = regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 20)
            .build();
        if pattern.len() > MAX_REGEX_LEN || compiled.is_err() {
            return Err(invalid(
                "invalid_regex",
                format!("{pattern:?} is not a usable regular expression"),
            ));
        }
    }
    Ok(())
}

fn header_modifier(m: &gateway::HeaderModifier) -> HeaderModifier {
    let header = |h: &gateway::HeaderValue| weft_api::proto::destination::Header {
        name: h.name.to_ascii_lowercase(),
        value: h.value.clone(),
    };
    HeaderModifier {
        set: m.set.iter().map(header).collect(),
        add: m.add.iter().map(header).collect(),
        remove: m.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

fn path_modifier(p: &gateway::PathModifier) -> Result<PathModifier, String> {
    let (replace_prefix, value) = match p.kind {
        PathModifierType::ReplaceFullPath => (false, &p.replace_full_path),
        PathModifierType::ReplacePrefixMatch => (true, &p.replace_prefix_match),
        PathModifierType::Unknown => return Err("a path modifier of unknown type".into()),
    };
    Ok(PathModifier {
        replace_prefix,
        value: value.clone().unwrap_or_default(),
    })
}

/// A mirror's share of requests, in parts per million: `percent`, or
/// `fraction` (denominator 100 by default), or all of them.
fn mirror_share(m: &gateway::RequestMirror) -> Result<u32, String> {
    let share = match (m.percent, &m.fraction) {
        (Some(p), _) if (0..=100).contains(&p) => i64::from(p) * 10_000,
        (Some(p), _) => return Err(format!("mirror percent {p} is not from 0 to 100")),
        (None, Some(f)) => {
            let d = f.denominator.unwrap_or(100);
            if d <= 0 || f.numerator < 0 || f.numerator > d {
                return Err(format!("mirror fraction {}/{d}", f.numerator));
            }
            i64::from(f.numerator) * 1_000_000 / i64::from(d)
        }
        (None, None) => 1_000_000,
    };
    Ok(share as u32)
}

/// The wire form of a rule's filters; each mirror's backend reference
/// goes to `mirror`, in order, for the table to resolve.
fn filters(
    filters: &[RouteFilter],
    mirror: &mut dyn FnMut(&gateway::RequestMirror),
) -> Result<Vec<HttpFilter>, String> {
    let plain = |f: http_filter::Filter| HttpFilter { filter: Some(f) };
    let mut out = Vec::new();
    for f in filters {
        let missing = || format!("{} filter without its settings", f.kind);
        out.push(match f.kind.as_str() {
            "RequestHeaderModifier" => {
                let m = f.request_header_modifier.as_ref().ok_or_else(missing)?;
                plain(http_filter::Filter::RequestHeaderModifier(header_modifier(
                    m,
                )))
            }
            "ResponseHeaderModifier" => {
                let m = f.response_header_modifier.as_ref().ok_or_else(missing)?;
                plain(http_filter::Filter::ResponseHeaderModifier(
                    header_modifier(m),
                ))
            }
            "RequestRedirect" => {
                let r = f.request_redirect.as_ref().ok_or_else(missing)?;
                let scheme = match r.scheme.as_deref() {
                    None => String::new(),
                    Some(s @ ("http" | "https")) => s.to_string(),
                    Some(other) => return Err(format!("redirect scheme {other:?}")),
                };
                plain(http_filter::Filter::RequestRedirect(RequestRedirect {
                    scheme,
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path: r.path.as_ref().map(path_modifier).transpose()?,
                    port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                    status_code: r
                        .status_code
                        .and_then(|c| u32::try_from(c).ok())
                        .unwrap_or(302),
                }))
            }
            "URLRewrite" => {
                let r = f.url_rewrite.as_ref().ok_or_else(missing)?;
                plain(http_filter::Filter::UrlRewrite(UrlRewrite {
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path: r.path.as_ref().map(path_modifier).transpose()?,
                }))
            }
            "RequestMirror" => {
                let m = f.request_mirror.as_ref().ok_or_else(missing)?;
                let per_million = mirror_share(m)?;
                mirror(m);
                plain(http_filter::Filter::RequestMirror(
                    weft_api::proto::destination::RequestMirror {
                        backend: None,
                        per_million,
                    },
                ))
            }
            other => return Err(format!("the {other} filter is not supported")),
        });
    }
    Ok(out)
}

/// Where a backend reference points. Another namespace's Service needs a
/// ReferenceGrant, which Weft does not read yet, except the route's own
/// parent: a consumer route sending its namespace's requests on to the
/// Service it routes (GAMMA) grants nothing the client did not have.
fn target(
    namespace: &str,
    parents: &[Parent],
    r: &gateway::ObjectRef,
) -> Result<BackendTarget, Unresolved> {
    if !r.group.as_deref().unwrap_or_default().is_empty()
        || r.kind.as_deref().unwrap_or("Service") != "Service"
    {
        return Err(Unresolved::InvalidKind);
    }
    let ns = r.namespace.as_deref().unwrap_or(namespace);
    let is_parent = || {
        parents
            .iter()
            .any(|p| p.service.0 == ns && p.service.1 == r.name)
    };
    if ns != namespace && !is_parent() {
        return Err(Unresolved::RefNotPermitted);
    }
    let port = r
        .port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or(Unresolved::NoPort)?;
    Ok(BackendTarget {
        service: (ns.to_string(), r.name.clone()),
        port,
    })
}

fn backend_ref(namespace: &str, parents: &[Parent], b: &gateway::BackendRef) -> BackendRef {
    BackendRef {
        target: target(namespace, parents, &b.target),
        weight: b.weight.unwrap_or(1).clamp(0, 1_000_000) as u32,
    }
}

/// A Gateway API duration (GEP-2257): one to four `<number><unit>` parts,
/// units `h`, `m`, `s` and `ms`, such as `1h30m` or `500ms`; in
/// milliseconds.
pub fn gateway_duration(v: &str) -> Option<u64> {
    let mut rest = v;
    let mut total: u64 = 0;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += n * unit;
        parts += 1;
    }
    (parts > 0 && parts <= 4).then_some(total)
}

#[cfg(test)]
mod tests;
