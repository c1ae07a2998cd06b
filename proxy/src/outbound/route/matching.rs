//! Request matching for Gateway API routes: the pure decision of which
//! rule a request takes, compiled once per discovery update.

use http::{HeaderName, Method, Request};
use regex::Regex;
use weft_api::proto::destination::{HttpRouteMatch, PathMatch, ValueMatch, path_match};

/// Why a match from the controller could not be compiled (the controller
/// validates, so this means a newer controller or a bug; the match is
/// left out, never guessed at).
#[derive(Debug, thiserror::Error)]
pub(crate) enum MatchError {
    #[error("bad regular expression {0:?}")]
    Regex(String),
    #[error("bad header name {0:?}")]
    HeaderName(String),
    #[error("bad method {0:?}")]
    Method(String),
    #[error("rule {0} does not exist")]
    Rule(u32),
}

#[derive(Debug)]
enum PathRule {
    Exact(String),
    /// Without its trailing `/`; empty matches every path.
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueRule {
    Exact(String),
    Regex(Regex),
}

impl ValueRule {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueRule::Exact(v) => v == value,
            ValueRule::Regex(r) => r.is_match(value),
        }
    }
}

/// One compiled match.
#[derive(Debug)]
pub(crate) struct RequestMatch {
    pub rule: usize,
    path: Option<PathRule>,
    headers: Vec<(HeaderName, ValueRule)>,
    query: Vec<(String, ValueRule)>,
    method: Option<Method>,
}

/// What a request matched: the rule, and the path prefix that matched
/// (for `ReplacePrefixMatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Matched<'a> {
    pub rule: usize,
    pub prefix: Option<&'a str>,
}

/// Anchored, so a pattern matches a whole value as RE2 full matches do.
fn whole(pattern: &str) -> Result<Regex, MatchError> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|_| MatchError::Regex(pattern.to_string()))
}

fn value_rule(v: &ValueMatch) -> Result<ValueRule, MatchError> {
    Ok(if v.regex {
        ValueRule::Regex(whole(&v.value)?)
    } else {
        ValueRule::Exact(v.value.clone())
    })
}

fn path_rule(p: &PathMatch) -> Result<PathRule, MatchError> {
    Ok(match p.kind() {
        path_match::Kind::Exact => PathRule::Exact(p.value.clone()),
        path_match::Kind::Prefix => PathRule::Prefix(p.value.trim_end_matches('/').to_string()),
        path_match::Kind::Regex => PathRule::Regex(whole(&p.value)?),
    })
}

impl RequestMatch {
    pub(crate) fn compile(m: &HttpRouteMatch, rules: usize) -> Result<Self, MatchError> {
        let rule = m.rule as usize;
        if rule >= rules {
            return Err(MatchError::Rule(m.rule));
        }
        let mut headers = Vec::with_capacity(m.headers.len());
        for h in &m.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| MatchError::HeaderName(h.name.clone()))?;
            // The first match for a name counts, as the Gateway API says.
            if !headers.iter().any(|(n, _)| *n == name) {
                headers.push((name, value_rule(h)?));
            }
        }
        let mut query = Vec::with_capacity(m.query_params.len());
        for q in &m.query_params {
            if !query.iter().any(|(n, _)| *n == q.name) {
                query.push((q.name.clone(), value_rule(q)?));
            }
        }
        let method = match m.method.as_str() {
            "" => None,
            other => Some(
                Method::from_bytes(other.as_bytes())
                    .map_err(|_| MatchError::Method(other.to_string()))?,
            ),
        };
        Ok(RequestMatch {
            rule,
            path: m.path.as_ref().map(path_rule).transpose()?,
            headers,
            query,
            method,
        })
    }

    /// Whether `req` satisfies every condition; with the prefix that
    /// matched, if the path condition is a prefix.
    pub(crate) fn matches<B>(&self, req: &Request<B>) -> Option<Matched<'_>> {
        if self.method.as_ref().is_some_and(|m| m != req.method()) {
            return None;
        }
        let path = req.uri().path();
        let prefix = match &self.path {
            None => None,
            Some(PathRule::Exact(p)) => {
                if p != path {
                    return None;
                }
                None
            }
            Some(PathRule::Prefix(p)) => {
                let element_wise = path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || p.is_empty());
                if !element_wise {
                    return None;
                }
                Some(p.as_str())
            }
            Some(PathRule::Regex(r)) => {
                if !r.is_match(path) {
                    return None;
                }
                None
            }
        };
        for (name, rule) in &self.headers {
            // Several values of one header read as one, comma-joined, as
            // RFC 9110 allows for list-valued fields.
            let mut values = req.headers().get_all(name).iter();
            let first = values.next()?;
            let joined;
            let value = match values.next() {
                None => first.to_str().ok()?,
                Some(_) => {
                    joined = req
                        .headers()
                        .get_all(name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect::<Vec<_>>()
                        .join(",");
                    joined.as_str()
                }
            };
            if !rule.matches(value) {
                return None;
            }
        }
        if !self.query.is_empty() {
            let query = req.uri().query().unwrap_or_default();
            for (name, rule) in &self.query {
                let value = form_urlencoded::parse(query.as_bytes())
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v)?;
                if !rule.matches(&value) {
                    return None;
                }
            }
        }
        Some(Matched {
            rule: self.rule,
            prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(m: HttpRouteMatch) -> RequestMatch {
        RequestMatch::compile(&m, 1).unwrap()
    }

    fn path(kind: path_match::Kind, value: &str) -> Option<PathMatch> {
        Some(PathMatch {
            kind: kind.into(),
            value: value.into(),
        })
    }

    fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    #[test]
    fn path_prefixes_match_whole_segments() {
        let m = compile(HttpRouteMatch {
            path: path(path_match::Kind::Prefix, "/api/"),
            ..Default::default()
        });
        for yes in ["/api", "/api/", "/api/v1", "/api?x=1"] {
            assert_eq!(
                m.matches(&get(yes)).map(|m| m.prefix),
                Some(Some("/api")),
                "{yes}"
            );
        }
        for no in ["/apix", "/ap", "/"] {
            assert!(m.matches(&get(no)).is_none(), "{no}");
        }
        let all = compile(HttpRouteMatch {
            path: path(path_match::Kind::Prefix, "/"),
            ..Default::default()
        });
        assert!(all.matches(&get("/anything/at/all")).is_some());
    }

    #[test]
    fn exact_and_regex_paths_match_the_whole_path() {
        let exact = compile(HttpRouteMatch {
            path: path(path_match::Kind::Exact, "/login"),
            ..Default::default()
        });
        assert!(exact.matches(&get("/login?next=/")).is_some());
        assert!(exact.matches(&get("/login/")).is_none());
        let regex = compile(HttpRouteMatch {
            path: path(path_match::Kind::Regex, "/v[0-9]+/users"),
            ..Default::default()
        });
        assert!(regex.matches(&get("/v2/users")).is_some());
        assert!(
            regex.matches(&get("/v2/users/7")).is_none(),
            "anchored at the end"
        );
        assert!(
            regex.matches(&get("/x/v2/users")).is_none(),
            "anchored at the start"
        );
    }

    #[test]
    fn headers_query_and_method_all_must_hold() {
        let m = compile(HttpRouteMatch {
            headers: vec![
                ValueMatch {
                    name: "X-Version".into(),
                    regex: false,
                    value: "2".into(),
                },
                ValueMatch {
                    name: "x-user".into(),
                    regex: true,
                    value: "admin-.*".into(),
                },
            ],
            query_params: vec![ValueMatch {
                name: "debug".into(),
                regex: false,
                value: "on now".into(),
            }],
            method: "POST".into(),
            ..Default::default()
        });
        let req = |method: &str, version: &str, query: &str| {
            Request::builder()
                .method(method)
                .uri(format!("/p?{query}"))
                .header("x-version", version)
                .header("x-user", "admin-ann")
                .body(())
                .unwrap()
        };
        assert!(m.matches(&req("POST", "2", "a=1&debug=on+now")).is_some());
        assert!(m.matches(&req("POST", "2", "debug=on%20now")).is_some());
        assert!(m.matches(&req("GET", "2", "debug=on+now")).is_none());
        assert!(m.matches(&req("POST", "3", "debug=on+now")).is_none());
        assert!(m.matches(&req("POST", "2", "debug=off")).is_none());
        assert!(m.matches(&req("POST", "2", "")).is_none());
    }

    #[test]
    fn what_does_not_compile_is_refused() {
        let bad_regex = HttpRouteMatch {
            path: path(path_match::Kind::Regex, "(open"),
            ..Default::default()
        };
        assert!(matches!(
            RequestMatch::compile(&bad_regex, 1),
            Err(MatchError::Regex(_))
        ));
        let no_rule = HttpRouteMatch {
            rule: 3,
            ..Default::default()
        };
        assert!(matches!(
            RequestMatch::compile(&no_rule, 1),
            Err(MatchError::Rule(3))
        ));
    }
}
