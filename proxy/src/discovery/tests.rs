use super::*;

#[test]
fn endpoints_need_an_address_and_a_valid_identity() {
    assert!(target_of("10.0.0.1:80", "", false).unwrap().mesh.is_none());
    let t = target_of("10.0.0.1:80", "spiffe://cluster.local/ns/a/sa/b", true).unwrap();
    assert_eq!(
        t.mesh.unwrap().identity.to_string(),
        "spiffe://cluster.local/ns/a/sa/b"
    );
    assert!(target_of("nowhere", "", false).is_none());
    assert!(target_of("10.0.0.1:80", "spiffe://x/bad", true).is_none());
}

fn weighted(weights: &[(u64, usize)]) -> Routes {
    Routes {
        backends: weights
            .iter()
            .enumerate()
            .map(|(i, (w, n))| BackendSet {
                service: Arc::new(i.to_string()),
                weight: *w,
                endpoints: (0..*n)
                    .map(|p| {
                        Arc::new(EndpointState::new(Target::plain(SocketAddr::from((
                            [10, 0, 0, i as u8],
                            p as u16 + 1,
                        )))))
                    })
                    .collect(),
                unresolved: None,
            })
            .collect(),
        ..Routes::default()
    }
}

#[test]
fn backends_without_endpoints_hand_their_share_on() {
    let routes = weighted(&[(50, 0), (50, 2)]);
    for _ in 0..100 {
        assert_eq!(routes.pick_backend().unwrap().service.as_str(), "1");
    }
    let routes = weighted(&[(0, 1), (100, 0)]);
    assert_eq!(routes.pick_backend().unwrap().service.as_str(), "0");
    assert_eq!(
        weighted(&[(1, 0)]).pick_backend().unwrap_err(),
        NoEndpoint::None
    );
}

#[test]
fn a_rule_keeps_its_weights() {
    // A rule's zero weights send nowhere, rather than anywhere.
    let mut rule = weighted(&[(0, 1), (100, 0)]);
    rule.rule = Some("HTTPRoute demo/web rule 0".into());
    assert_eq!(rule.pick_backend().unwrap_err(), NoEndpoint::NoBackend);
    // An unresolved backend keeps its share, which is refused.
    rule.backends[1].unresolved = Some("BackendNotFound".into());
    let mut refused = 0;
    for _ in 0..200 {
        match rule.pick_backend() {
            Err(NoEndpoint::Unresolved(why)) => {
                assert_eq!(&*why, "BackendNotFound");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refused, 200);
    rule.backends[0].weight = 100;
    let refused = (0..2000).filter(|_| rule.pick_backend().is_err()).count();
    assert!((800..1200).contains(&refused), "{refused} of 2000 refused");
}

#[test]
fn a_retry_leaves_a_backend_whose_only_endpoint_failed() {
    let routes = weighted(&[(50, 1), (50, 1)]);
    let failed = routes.backends[0].endpoints[0].clone();
    for _ in 0..100 {
        let next = routes.pick_endpoint(Some(&failed)).unwrap();
        assert!(!Arc::ptr_eq(&next, &failed));
    }
    // With nowhere else to go, the same endpoint is used again.
    let alone = weighted(&[(1, 1)]);
    let only = alone.backends[0].endpoints[0].clone();
    assert!(Arc::ptr_eq(
        &alone.pick_endpoint(Some(&only)).unwrap(),
        &only
    ));
}
