use std::path::Path;

use k8s_openapi::chrono::{TimeZone, Utc};

use super::*;
use crate::discovery::Object;
use crate::discovery::file::parse;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: demo}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
"#;

fn services() -> HashMap<Key, ServiceInfo> {
    parse(Path::new("services.yaml"), SERVICES)
        .unwrap()
        .into_iter()
        .map(|o| match o {
            Object::Service(key, info) => (key, info),
            other => panic!("not a Service: {other:?}"),
        })
        .collect()
}

fn route(spec: &str) -> RouteInfo {
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: r, namespace: demo, generation: 4}}\nspec:\n{spec}"
    );
    match parse(Path::new("route.yaml"), &yaml).unwrap().pop() {
        Some(Object::Route(_, info)) => info,
        other => panic!("not a route: {other:?}"),
    }
}

fn key() -> Key {
    ("demo".into(), "r".into())
}

/// `(type, status, reason)` of the only parent's conditions.
fn summary(d: &Desired) -> Vec<(&'static str, bool, &'static str)> {
    assert_eq!(d.parents.len(), 1, "{d:?}");
    d.parents[0]
        .conditions
        .iter()
        .map(|c| (c.kind, c.status, c.reason))
        .collect()
}

#[test]
fn a_route_whose_parent_and_backends_exist_is_accepted_and_resolved() {
    let r = route(
        "  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}, {name: a-gateway}]\n\
         \x20 rules: [{backendRefs: [{name: web-v1, port: 80}]}]\n",
    );
    let d = desired(&key(), &r, &services(), &[]);
    assert_eq!(d.generation, 4);
    assert_eq!(
        summary(&d),
        [
            ("Accepted", true, "Accepted"),
            ("ResolvedRefs", true, "ResolvedRefs")
        ]
    );
    assert_eq!(d.parents[0].parent_ref.port, Some(80), "the ref is echoed");
}

#[test]
fn a_missing_parent_or_port_is_no_matching_parent() {
    for parent in [
        "{kind: Service, group: \"\", name: nope}",
        "{kind: Service, group: \"\", name: web, port: 81}",
    ] {
        let r = route(&format!(
            "  parentRefs: [{parent}]\n  rules: [{{backendRefs: [{{name: web-v1, port: 80}}]}}]\n"
        ));
        let s = summary(&desired(&key(), &r, &services(), &[]));
        assert_eq!(s[0], ("Accepted", false, "NoMatchingParent"), "{parent}");
    }
}

#[test]
fn unresolved_backends_say_why() {
    for (backend, reason) in [
        ("{name: gone, port: 80}", "BackendNotFound"),
        ("{name: web-v1, port: 8080}", "BackendNotFound"),
        (
            "{name: web-v1, namespace: other, port: 80}",
            "RefNotPermitted",
        ),
        (
            "{group: example.com, kind: Thing, name: t, port: 80}",
            "InvalidKind",
        ),
    ] {
        let r = route(&format!(
            "  parentRefs: [{{kind: Service, group: \"\", name: web}}]\n  rules: [{{backendRefs: [{backend}]}}]\n"
        ));
        let s = summary(&desired(&key(), &r, &services(), &[]));
        assert_eq!(s[0], ("Accepted", true, "Accepted"), "{backend}");
        assert_eq!(s[1], ("ResolvedRefs", false, reason), "{backend}");
    }
}

#[test]
fn dropped_rules_make_a_route_partially_invalid_or_refused() {
    let bad = "{matches: [{path: {type: RegularExpression, value: \"(\"}}], backendRefs: [{name: web-v1, port: 80}]}";
    let good = "{backendRefs: [{name: web-v1, port: 80}]}";
    let parent = "  parentRefs: [{kind: Service, group: \"\", name: web}]\n";
    let partly = desired(
        &key(),
        &route(&format!("{parent}  rules: [{good}, {bad}]\n")),
        &services(),
        &[],
    );
    assert_eq!(
        summary(&partly),
        [
            ("Accepted", true, "Accepted"),
            ("PartiallyInvalid", true, "UnsupportedValue"),
            ("ResolvedRefs", true, "ResolvedRefs")
        ]
    );
    assert!(
        partly.parents[0].conditions[1]
            .message
            .contains("1 of 2 rules dropped"),
        "{partly:?}"
    );
    let none = desired(
        &key(),
        &route(&format!("{parent}  rules: [{bad}]\n")),
        &services(),
        &[],
    );
    assert_eq!(summary(&none)[0], ("Accepted", false, "UnsupportedValue"));
}

#[test]
fn merging_keeps_other_controllers_and_unchanged_transition_times() {
    let r = route(
        "  parentRefs: [{kind: Service, group: \"\", name: web}]\n  rules: [{backendRefs: [{name: gone, port: 80}]}]\n",
    );
    let first = desired(&key(), &r, &services(), &[]);
    let t0 = Time(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    let t1 = Time(Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap());
    let gateway = RouteParentStatus {
        parent_ref: ParentRef {
            name: "a-gateway".into(),
            ..Default::default()
        },
        controller_name: "example.com/gateway".into(),
        conditions: Vec::new(),
    };
    let start = RouteStatus {
        parents: vec![gateway.clone()],
    };
    assert!(!up_to_date(Some(&start), &first));
    let written = merged(Some(&start), &first, &t0);
    assert_eq!(
        written.parents[0], gateway,
        "another controller's entry stays"
    );
    assert_eq!(written.parents[1].controller_name, CONTROLLER_NAME);
    assert!(up_to_date(Some(&written), &first));

    // The backend appears: ResolvedRefs turns True and moves its time;
    // Accepted stays True and keeps its time.
    let mut more = services();
    let v1 = more[&("demo".to_string(), "web-v1".to_string())].clone();
    more.insert(("demo".into(), "gone".into()), v1);
    let second = desired(&key(), &r, &more, &[]);
    assert!(!up_to_date(Some(&written), &second));
    let again = merged(Some(&written), &second, &t1);
    let ours = &again.parents[1].conditions;
    assert_eq!(
        (ours[0].type_.as_str(), &ours[0].last_transition_time),
        ("Accepted", &t0)
    );
    assert_eq!(
        (
            ours[1].type_.as_str(),
            ours[1].status.as_str(),
            &ours[1].last_transition_time
        ),
        ("ResolvedRefs", "True", &t1)
    );
    assert!(ours.iter().all(|c| c.observed_generation == Some(4)));
}

#[test]
fn conflicting_and_zero_weight_rules_are_named_on_an_accepted_route() {
    let parent = "  parentRefs: [{kind: Service, group: \"\", name: web}]\n";
    let same = "{matches: [{path: {value: /api}}], backendRefs: [{name: web-v1, port: 80}]}";
    let mut older = route(&format!("{parent}  rules: [{same}]\n"));
    older.created = "2026-01-01T00:00:00Z".into();
    let mut newer = route(&format!(
        "{parent}  rules: [{same}, {{backendRefs: [{{name: web-v1, port: 80, weight: 0}}]}}]\n"
    ));
    newer.created = "2026-02-01T00:00:00Z".into();
    let older_key: Key = ("demo".into(), "older".into());
    let d = desired(&key(), &newer, &services(), &[(&older_key, &older)]);
    assert_eq!(d.shadowed, 1);
    let accepted = &d.parents[0].conditions[0];
    assert!(accepted.status, "{accepted:?}");
    assert!(
        accepted
            .message
            .contains("rule 0 never matches: route demo/older has the same matches"),
        "{}",
        accepted.message
    );
    assert!(
        accepted
            .message
            .contains("rule 1: every backend has weight 0")
    );
    // The older route is the one that wins: nothing to say about it.
    let o = desired(&older_key, &older, &services(), &[(&key(), &newer)]);
    assert_eq!(o.shadowed, 0);
    assert_eq!(o.parents[0].conditions[0].message, "served by the mesh");
}
