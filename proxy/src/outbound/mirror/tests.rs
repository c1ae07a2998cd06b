use http_body_util::StreamBody;

use super::*;

/// A body of these frames, then `end`: a clean end, or an error.
fn body(frames: &[&'static str], fail: bool) -> BoxBody {
    let mut items: Vec<Result<Frame<Bytes>, BoxError>> = frames
        .iter()
        .map(|f| Ok(Frame::data(Bytes::from_static(f.as_bytes()))))
        .collect();
    if fail {
        items.push(Err("client went away".into()));
    }
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(items)))
}

fn teed(inner: BoxBody, copies: usize) -> (Tee, Vec<BoxBody>) {
    let mut senders = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..copies {
        let (tx, rx) = mpsc::channel(MIRROR_LAG_FRAMES);
        senders.push(tx);
        bodies.push(copy_body(rx));
    }
    (
        Tee {
            inner,
            copies: senders,
        },
        bodies,
    )
}

#[tokio::test]
async fn each_copy_gets_the_whole_body_and_a_clean_end() {
    let (tee, copies) = teed(body(&["hello ", "mirror ", "world"], false), 2);
    let sent = tee.collect().await.unwrap().to_bytes();
    assert_eq!(sent, "hello mirror world");
    for copy in copies {
        assert_eq!(copy.collect().await.unwrap().to_bytes(), sent);
    }
}

#[tokio::test]
async fn a_copy_that_falls_behind_is_cut_off_not_truncated() {
    let frames: Vec<&'static str> = vec!["x"; MIRROR_LAG_FRAMES + 5];
    let (tee, mut copies) = teed(body(&frames, false), 1);
    // The request streams on, whole, while nobody reads the copy.
    let sent = tee.collect().await.unwrap().to_bytes();
    assert_eq!(sent.len(), MIRROR_LAG_FRAMES + 5);
    let copy = copies.pop().unwrap().collect().await;
    assert!(copy.is_err(), "a cut-off copy must fail, not end early");
}

#[tokio::test]
async fn a_failed_request_body_aborts_the_copy() {
    let (tee, mut copies) = teed(body(&["partial"], true), 1);
    assert!(tee.collect().await.is_err());
    assert!(copies.pop().unwrap().collect().await.is_err());
}

#[test]
fn the_share_is_sampled() {
    let mirror = |per_million| Mirror {
        service: Arc::default(),
        endpoints: Vec::new(),
        per_million,
    };
    assert!((0..1000).all(|_| mirror(1_000_000).chosen()));
    assert!((0..1000).all(|_| !mirror(0).chosen()));
    let half = (0..4000).filter(|_| mirror(500_000).chosen()).count();
    assert!((1700..2300).contains(&half), "{half} of 4000");
}
