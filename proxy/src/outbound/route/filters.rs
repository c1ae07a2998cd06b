//! Gateway API filters: header changes, rewrites and redirects, compiled
//! once per discovery update and applied without I/O.

use bytes::Bytes;
use http::header::{HOST, LOCATION};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use weft_api::proto::destination::{self as proto, http_filter};

use crate::http::pool::{BoxBody, BoxError};

/// Why a filter from the controller could not be compiled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FilterError {
    #[error("bad header {0:?}")]
    Header(String),
    #[error("bad redirect status {0}")]
    Status(u32),
    #[error("empty filter")]
    Empty,
    #[error("a mirror is not a request filter")]
    Mirror,
}

/// Header changes: set replaces, add appends, remove drops.
#[derive(Debug, Default)]
pub(crate) struct HeaderChanges {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderChanges {
    fn compile(m: &proto::HeaderModifier) -> Result<Self, FilterError> {
        let pair = |h: &proto::Header| {
            Ok((
                HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| FilterError::Header(h.name.clone()))?,
                HeaderValue::from_str(&h.value).map_err(|_| FilterError::Header(h.name.clone()))?,
            ))
        };
        Ok(HeaderChanges {
            set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes()).map_err(|_| FilterError::Header(n.clone()))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum PathChange {
    Full(String),
    /// Replaces the prefix the rule matched.
    Prefix(String),
}

impl PathChange {
    fn compile(p: &Option<proto::PathModifier>) -> Option<Self> {
        p.as_ref().map(|p| match p.replace_prefix {
            true => PathChange::Prefix(p.value.clone()),
            false => PathChange::Full(p.value.clone()),
        })
    }

    /// The new path for `path`, which matched `prefix`.
    fn apply(&self, path: &str, prefix: Option<&str>) -> String {
        match self {
            PathChange::Full(p) => p.clone(),
            PathChange::Prefix(replacement) => {
                let rest = prefix
                    .and_then(|prefix| path.strip_prefix(prefix))
                    .unwrap_or(path);
                let joined = format!("{}{rest}", replacement.trim_end_matches('/'));
                if joined.is_empty() {
                    "/".into()
                } else if !joined.starts_with('/') {
                    format!("/{joined}")
                } else {
                    joined
                }
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Redirect {
    scheme: Option<Scheme>,
    hostname: Option<String>,
    path: Option<PathChange>,
    port: Option<u16>,
    status: StatusCode,
}

#[derive(Debug)]
pub(crate) struct Rewrite {
    hostname: Option<HeaderValue>,
    path: Option<PathChange>,
}

/// One compiled filter.
#[derive(Debug)]
pub(crate) enum Filter {
    RequestHeaders(HeaderChanges),
    ResponseHeaders(HeaderChanges),
    Redirect(Redirect),
    Rewrite(Rewrite),
}

impl Filter {
    pub(crate) fn compile(f: &proto::HttpFilter) -> Result<Self, FilterError> {
        Ok(match f.filter.as_ref().ok_or(FilterError::Empty)? {
            http_filter::Filter::RequestHeaderModifier(m) => {
                Filter::RequestHeaders(HeaderChanges::compile(m)?)
            }
            http_filter::Filter::ResponseHeaderModifier(m) => {
                Filter::ResponseHeaders(HeaderChanges::compile(m)?)
            }
            http_filter::Filter::RequestRedirect(r) => Filter::Redirect(Redirect {
                scheme: match r.scheme.as_str() {
                    "" => None,
                    s => Some(s.parse().map_err(|_| FilterError::Header(s.to_string()))?),
                },
                hostname: (!r.hostname.is_empty()).then(|| r.hostname.clone()),
                path: PathChange::compile(&r.path),
                port: u16::try_from(r.port).ok().filter(|p| *p != 0),
                status: match r.status_code {
                    0 => StatusCode::FOUND,
                    code @ (301 | 302 | 303 | 307 | 308) => {
                        StatusCode::from_u16(code as u16).map_err(|_| FilterError::Status(code))?
                    }
                    other => return Err(FilterError::Status(other)),
                },
            }),
            // Compiled with the rule's backends (see `RouteRule::build`).
            http_filter::Filter::RequestMirror(_) => return Err(FilterError::Mirror),
            http_filter::Filter::UrlRewrite(r) => Filter::Rewrite(Rewrite {
                hostname: match r.hostname.as_str() {
                    "" => None,
                    h => Some(HeaderValue::from_str(h).map_err(|_| FilterError::Header(h.into()))?),
                },
                path: PathChange::compile(&r.path),
            }),
        })
    }
}

/// The host and port a request names (`Host`, or the URI's authority
/// for HTTP/2), with `default_port` when it names none.
fn host_of<B>(req: &Request<B>, default_port: u16) -> (String, u16) {
    let authority = req.uri().authority().cloned().or_else(|| {
        req.headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<Authority>().ok())
    });
    match authority {
        Some(a) => (a.host().to_string(), a.port_u16().unwrap_or(default_port)),
        None => (String::new(), default_port),
    }
}

fn well_known(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Sets a request's path (keeping its query) in the URI.
fn set_path<B>(req: &mut Request<B>, path: &str) {
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let Ok(pq) = format!("{path}{query}").parse::<PathAndQuery>() else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

impl Rewrite {
    pub(crate) fn apply<B>(&self, req: &mut Request<B>, prefix: Option<&str>) {
        if let Some(path) = &self.path {
            let new = path.apply(req.uri().path(), prefix);
            set_path(req, &new);
        }
        if let Some(host) = &self.hostname {
            req.headers_mut().insert(HOST, host.clone());
            if req.uri().authority().is_some() {
                let mut parts = req.uri().clone().into_parts();
                parts.authority = host.to_str().ok().and_then(|h| h.parse().ok());
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
    }
}

impl Redirect {
    /// The redirect for `req`, which was sent to `port` and matched
    /// `prefix`.
    pub(crate) fn response<B>(
        &self,
        req: &Request<B>,
        port: u16,
        prefix: Option<&str>,
    ) -> Response<BoxBody> {
        let request_scheme = req.uri().scheme_str().unwrap_or("http").to_string();
        let scheme = self
            .scheme
            .as_ref()
            .map_or(request_scheme.clone(), |s| s.as_str().to_string());
        let (host, request_port) = host_of(req, port);
        let host = self.hostname.clone().unwrap_or(host);
        // The Gateway API's rule: the port given, else the new scheme's
        // well-known one, else the request's.
        let port = self.port.or_else(|| {
            self.scheme
                .as_ref()
                .and_then(|s| well_known(s.as_str()))
                .or(Some(request_port))
        });
        let port = match port {
            Some(p) if well_known(&scheme) == Some(p) => String::new(),
            Some(p) => format!(":{p}"),
            None => String::new(),
        };
        let path = match &self.path {
            Some(change) => change.apply(req.uri().path(), prefix),
            None => req.uri().path().to_string(),
        };
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let location = format!("{scheme}://{host}{port}{path}{query}");
        let mut resp = Response::new(Empty::<Bytes>::new().map_err(BoxError::from).boxed());
        *resp.status_mut() = self.status;
        if let Ok(value) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(LOCATION, value);
        }
        resp
    }
}

#[cfg(test)]
mod tests;
