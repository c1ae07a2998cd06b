use http::Method;
use weft_api::proto::destination::{
    Header, HeaderModifier, HttpFilter, PathModifier, RequestRedirect, UrlRewrite,
};

use super::*;

fn compile(filter: http_filter::Filter) -> Filter {
    Filter::compile(&HttpFilter {
        filter: Some(filter),
    })
    .unwrap()
}

fn request(uri: &str, host: &str) -> Request<()> {
    Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(HOST, host)
        .header("x-old", "1")
        .header("x-keep", "a")
        .body(())
        .unwrap()
}

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.into(),
        value: value.into(),
    }
}

#[test]
fn header_changes_set_add_and_remove() {
    let Filter::RequestHeaders(changes) =
        compile(http_filter::Filter::RequestHeaderModifier(HeaderModifier {
            set: vec![header("x-keep", "b")],
            add: vec![header("x-added", "1"), header("x-added", "2")],
            remove: vec!["x-old".into()],
        }))
    else {
        panic!("not a header filter")
    };
    let mut req = request("/", "web");
    changes.apply(req.headers_mut());
    assert_eq!(req.headers()["x-keep"], "b");
    assert_eq!(req.headers().get_all("x-added").iter().count(), 2);
    assert!(req.headers().get("x-old").is_none());
}

fn path(prefix: bool, value: &str) -> Option<PathModifier> {
    Some(PathModifier {
        replace_prefix: prefix,
        value: value.into(),
    })
}

#[test]
fn prefix_replacement_keeps_the_rest_of_the_path() {
    let cases = [
        ("/api/v1/users", "/api", "/v2", "/v2/v1/users"),
        ("/api", "/api", "/v2", "/v2"),
        ("/api/", "/api", "/", "/"),
        ("/api/x", "/api", "/", "/x"),
        ("/api/x", "", "/prefix", "/prefix/api/x"),
        ("/api/x", "/api", "/v2/", "/v2/x"),
    ];
    for (path, prefix, replacement, want) in cases {
        let change = PathChange::Prefix(replacement.into());
        assert_eq!(
            change.apply(path, Some(prefix)),
            want,
            "{path} {prefix} {replacement}"
        );
    }
}

#[test]
fn rewrites_change_the_path_and_host_and_keep_the_query() {
    let Filter::Rewrite(rewrite) = compile(http_filter::Filter::UrlRewrite(UrlRewrite {
        hostname: "backend.internal".into(),
        path: path(true, "/new"),
    })) else {
        panic!("not a rewrite")
    };
    let mut req = request("/old/page?x=1", "web");
    rewrite.apply(&mut req, Some("/old"));
    assert_eq!(req.uri().path(), "/new/page");
    assert_eq!(req.uri().query(), Some("x=1"));
    assert_eq!(req.headers()[HOST], "backend.internal");
    let Filter::Rewrite(full) = compile(http_filter::Filter::UrlRewrite(UrlRewrite {
        hostname: String::new(),
        path: path(false, "/replaced"),
    })) else {
        panic!("not a rewrite")
    };
    let mut req = request("http://web:8080/a/b", "web:8080");
    full.apply(&mut req, None);
    assert_eq!(req.uri().path(), "/replaced");
    assert_eq!(req.headers()[HOST], "web:8080");
}

fn redirect(r: RequestRedirect) -> Redirect {
    match compile(http_filter::Filter::RequestRedirect(r)) {
        Filter::Redirect(r) => r,
        other => panic!("not a redirect: {other:?}"),
    }
}

#[test]
fn redirects_build_their_location_as_the_gateway_api_says() {
    let location = |r: &Redirect, uri: &str, host: &str, prefix| {
        let resp = r.response(&request(uri, host), 80, prefix);
        (
            resp.status().as_u16(),
            resp.headers()[LOCATION].to_str().unwrap().to_string(),
        )
    };
    // The scheme changes: its well-known port, left out of the URL.
    let to_https = redirect(RequestRedirect {
        scheme: "https".into(),
        ..Default::default()
    });
    assert_eq!(
        location(&to_https, "/a?b=c", "web:8080", None),
        (302, "https://web/a?b=c".into())
    );
    // Only the host: the request's port stays.
    let to_host = redirect(RequestRedirect {
        hostname: "example.org".into(),
        status_code: 301,
        ..Default::default()
    });
    assert_eq!(
        location(&to_host, "/", "web:8080", None),
        (301, "http://example.org:8080/".into())
    );
    assert_eq!(
        location(&to_host, "/", "web", None),
        (301, "http://example.org/".into())
    );
    // A port and a path prefix.
    let moved = redirect(RequestRedirect {
        port: 9090,
        path: path(true, "/v2"),
        ..Default::default()
    });
    assert_eq!(
        location(&moved, "/v1/x", "web", Some("/v1")),
        (302, "http://web:9090/v2/x".into())
    );
    assert!(
        Filter::compile(&HttpFilter {
            filter: Some(http_filter::Filter::RequestRedirect(RequestRedirect {
                status_code: 200,
                ..Default::default()
            }))
        })
        .is_err()
    );
}
