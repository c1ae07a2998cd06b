use std::net::SocketAddr;
use std::sync::Arc;

use super::*;

fn endpoint(port: u16) -> Arc<EndpointState> {
    Arc::new(EndpointState::new(Target::plain(SocketAddr::from((
        [10, 0, 0, 1],
        port,
    )))))
}

fn share(endpoints: &[Arc<EndpointState>], rounds: usize) -> Vec<usize> {
    let mut counts = vec![0; endpoints.len()];
    for _ in 0..rounds {
        let Pick::Endpoint(picked) = pick(endpoints, None, usize::MAX) else {
            panic!("no pick");
        };
        let i = endpoints
            .iter()
            .position(|e| Arc::ptr_eq(e, picked))
            .unwrap();
        counts[i] += 1;
    }
    counts
}

#[test]
fn two_choices_prefer_the_faster_endpoint() {
    let endpoints: Vec<_> = (1..=3).map(endpoint).collect();
    for e in &endpoints[..2] {
        e.observe(Duration::from_millis(1));
    }
    endpoints[2].observe(Duration::from_millis(50));
    let counts = share(&endpoints, 3000);
    // The two picks are distinct, so the slow one loses every pairing
    // until its estimate decays.
    assert!(counts[2] < 30, "{counts:?}");
    assert!(counts[0] > 500 && counts[1] > 500, "{counts:?}");
}

#[test]
fn load_counts_requests_in_flight() {
    let endpoints: Vec<_> = (1..=2).map(endpoint).collect();
    for e in &endpoints {
        e.observe(Duration::from_millis(5));
    }
    let _busy: Vec<_> = (0..4).map(|_| endpoints[0].start()).collect();
    let counts = share(&endpoints, 100);
    assert_eq!(counts, vec![0, 100]);
}

#[test]
fn consecutive_failures_eject_and_probation_readmits() {
    let e = endpoint(1);
    for _ in 0..4 {
        assert_eq!(e.failure(5), BreakerEvent::None);
    }
    assert!(matches!(e.failure(5), BreakerEvent::Ejected(d) if d >= Duration::from_millis(500)));
    assert!(!e.is_available(Instant::now()));
    // A success in between resets the count.
    let f = endpoint(2);
    for _ in 0..4 {
        f.failure(5);
    }
    f.success();
    assert_eq!(f.failure(5), BreakerEvent::None);
    // Off means off.
    for _ in 0..100 {
        assert_eq!(f.failure(0), BreakerEvent::None);
    }
}

#[test]
fn probation_failure_ejects_again_for_longer() {
    let e = endpoint(1);
    e.failure(3);
    e.failure(3);
    let first = match e.failure(3) {
        BreakerEvent::Ejected(d) => d,
        other => panic!("{other:?}"),
    };
    // Pretend the ejection ran out.
    e.set_ejected_until(&mut e.breaker.lock().unwrap(), Some(Instant::now()));
    assert!(e.is_available(Instant::now()));
    let second = match e.failure(3) {
        BreakerEvent::Ejected(d) => d,
        other => panic!("one failure on probation must eject: {other:?}"),
    };
    // Doubling with ±50 % jitter: 2 s × [0.5, 1.5) vs 1 s × [0.5, 1.5).
    assert!(second >= Duration::from_secs(1) && first < Duration::from_millis(1500));
    e.set_ejected_until(&mut e.breaker.lock().unwrap(), Some(Instant::now()));
    assert_eq!(e.success(), BreakerEvent::Recovered);
    assert_eq!(e.success(), BreakerEvent::None);
}

#[test]
fn an_ejected_endpoint_gets_no_traffic_unless_all_are() {
    let endpoints: Vec<_> = (1..=3).map(endpoint).collect();
    for _ in 0..5 {
        endpoints[0].failure(5);
    }
    assert_eq!(share(&endpoints, 300)[0], 0);
    for e in &endpoints[1..] {
        for _ in 0..5 {
            e.failure(5);
        }
    }
    assert!(share(&endpoints, 300).iter().all(|n| *n > 0));
}

#[test]
fn retries_avoid_the_endpoint_that_failed() {
    let endpoints: Vec<_> = (1..=2).map(endpoint).collect();
    for _ in 0..100 {
        let picked = pick(&endpoints, Some(&endpoints[0]), usize::MAX);
        assert!(matches!(picked, Pick::Endpoint(e) if Arc::ptr_eq(e, &endpoints[1])));
    }
    // With nothing else, the only endpoint is used.
    assert!(matches!(
        pick(&endpoints[..1], Some(&endpoints[0]), usize::MAX),
        Pick::Endpoint(_)
    ));
    assert!(matches!(
        pick::<Arc<EndpointState>>(&[], None, usize::MAX),
        Pick::Empty
    ));
}

#[test]
fn an_endpoint_at_its_limit_is_skipped_and_all_full_sheds() {
    let endpoints: Vec<_> = (1..=3).map(endpoint).collect();
    let _full: Vec<_> = (0..2).map(|_| endpoints[0].start()).collect();
    // Even when it is the fastest by far, and when the others are ejected.
    endpoints[1].observe(Duration::from_millis(80));
    endpoints[2].observe(Duration::from_millis(80));
    for e in &endpoints[1..] {
        for _ in 0..5 {
            e.failure(5);
        }
    }
    for _ in 0..200 {
        match pick(&endpoints, None, 2) {
            Pick::Endpoint(e) => assert!(!Arc::ptr_eq(e, &endpoints[0])),
            other => panic!("{other:?}"),
        }
    }
    let _more: Vec<_> = endpoints[1..]
        .iter()
        .flat_map(|e| [e.start(), e.start()])
        .collect();
    assert!(matches!(pick(&endpoints, None, 2), Pick::Overloaded));
    // A retry's avoided endpoint is no way around the limit either.
    assert!(matches!(
        pick(&endpoints, Some(&endpoints[1]), 2),
        Pick::Overloaded
    ));
    assert!(matches!(pick(&endpoints, None, 3), Pick::Endpoint(_)));
}

#[test]
fn many_endpoints_with_few_usable_are_still_found() {
    // Random draws miss: the scan finds the two usable ones.
    let endpoints: Vec<_> = (1..=200).map(endpoint).collect();
    let _full: Vec<_> = endpoints[2..].iter().map(|e| e.start()).collect();
    let counts = share_limited(&endpoints, 400, 1);
    assert_eq!(counts[0] + counts[1], 400, "{:?}", &counts[..4]);
    assert!(counts[0] > 0 && counts[1] > 0);
}

fn share_limited(endpoints: &[Arc<EndpointState>], rounds: usize, limit: usize) -> Vec<usize> {
    let mut counts = vec![0; endpoints.len()];
    for _ in 0..rounds {
        let Pick::Endpoint(picked) = pick(endpoints, None, limit) else {
            panic!("no pick");
        };
        counts[endpoints
            .iter()
            .position(|e| Arc::ptr_eq(e, picked))
            .unwrap()] += 1;
    }
    counts
}

#[test]
fn weights_pick_proportionally() {
    let weights = [90_000u64, 10_000, 0];
    let mut counts = [0; 3];
    for _ in 0..100_000 {
        counts[weighted_index(weights.iter().copied()).unwrap()] += 1;
    }
    assert!((88_500..91_500).contains(&counts[0]), "{counts:?}");
    assert_eq!(counts[2], 0);
    assert_eq!(weighted_index([0u64, 0].into_iter()), None);
}

#[test]
fn the_budget_allows_a_share_of_requests_plus_a_floor() {
    let budget = RetryBudget::new(0.2, 10);
    // The floor: 10 per second over the 10 s window.
    let floor = (0..1000).take_while(|_| budget.try_withdraw()).count();
    assert_eq!(floor, 100);
    for _ in 0..1000 {
        budget.deposit();
    }
    let more = (0..1000).take_while(|_| budget.try_withdraw()).count();
    assert_eq!(more, 200);
}
