//! `Expect: 100-continue` end to end: the client's body is read (and so
//! hyper sends the client `100 Continue`) only once the server has asked for
//! it, by sending its own 100, or after a short wait for servers that never
//! send one. A server that refuses the upload at once (413) is then heard
//! before the client sends a byte of it.
//!
//! hyper's HTTP/1 server answers 100 as soon as the body is first polled,
//! and its HTTP/1 client reports informational responses through
//! `hyper::ext::on_informational`; HTTP/2 has neither in hyper, so such a
//! request crosses the mesh as HTTP/1 (see `crate::http::send`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::header::EXPECT;
use http::{HeaderMap, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::http::pool::{BoxBody, BoxError};

/// How long the body waits for the server's 100 before it is sent anyway
/// (curl waits 1 s too), for servers that read the body without a 100.
pub(crate) const CONTINUE_WAIT: Duration = Duration::from_secs(1);

const WAITING: u8 = 0;
const OPEN: u8 = 1;
/// The final response came without a 100: the body is never sent.
const CLOSED: u8 = 2;

/// Whether the request asks the server before sending its body.
pub(crate) fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Opens or closes a [`GatedBody`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Gate(Arc<GateState>);

#[derive(Debug, Default)]
struct GateState {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl Gate {
    fn set(&self, to: u8) {
        if self
            .0
            .state
            .compare_exchange(WAITING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.0.waker.wake();
        }
    }

    /// The server asked for the body.
    pub(crate) fn open(&self) {
        self.set(OPEN)
    }

    /// The server answered without asking: the body is not sent.
    pub(crate) fn close(&self) {
        self.set(CLOSED)
    }
}

/// Holds the request's body back until its gate opens.
pub(crate) struct GatedBody {
    inner: BoxBody,
    gate: Gate,
    wait: Pin<Box<tokio::time::Sleep>>,
}

impl GatedBody {
    fn new(inner: BoxBody, gate: Gate, wait: Duration) -> Self {
        GatedBody {
            inner,
            gate,
            wait: Box::pin(tokio::time::sleep(wait)),
        }
    }
}

/// Gates `req`'s body on the server's 100, and returns the gate to close
/// once the final response is in.
pub(crate) fn gate(req: Request<BoxBody>, wait: Duration) -> (Request<BoxBody>, Gate) {
    use http_body_util::BodyExt;
    let gate = Gate::default();
    let (parts, body) = req.into_parts();
    let mut req = Request::from_parts(parts, GatedBody::new(body, gate.clone(), wait).boxed());
    let opener = gate.clone();
    hyper::ext::on_informational(&mut req, move |res| {
        if res.status() == StatusCode::CONTINUE {
            opener.open();
        }
    });
    (req, gate)
}

impl Body for GatedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            match self.gate.0.state.load(Ordering::Acquire) {
                OPEN => return Pin::new(&mut self.inner).poll_frame(cx),
                CLOSED => return Poll::Ready(None),
                _ => {}
            }
            self.gate.0.waker.register(cx.waker());
            // Checked again after registering, so an open in between is
            // not missed.
            if self.gate.0.state.load(Ordering::Acquire) != WAITING {
                continue;
            }
            match self.wait.as_mut().poll(cx) {
                Poll::Ready(()) => self.gate.open(),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.gate.0.state.load(Ordering::Acquire) == CLOSED || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    fn body(s: &'static str) -> BoxBody {
        Full::new(Bytes::from_static(s.as_bytes()))
            .map_err(BoxError::from)
            .boxed()
    }

    #[test]
    fn recognises_the_expectation() {
        let mut h = HeaderMap::new();
        assert!(!expects_continue(&h));
        h.insert(EXPECT, "100-Continue".parse().unwrap());
        assert!(expects_continue(&h));
    }

    #[tokio::test(start_paused = true)]
    async fn the_body_waits_for_the_gate() {
        let gate = Gate::default();
        let mut gated = GatedBody::new(body("data"), gate.clone(), CONTINUE_WAIT);
        let opener = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            opener.open();
        });
        let started = tokio::time::Instant::now();
        let frame = gated.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "data");
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_gate_sends_nothing_and_a_silent_server_gets_the_body_anyway() {
        let gate = Gate::default();
        let mut gated = GatedBody::new(body("data"), gate.clone(), CONTINUE_WAIT);
        gate.close();
        assert!(gated.frame().await.is_none());
        assert!(gated.is_end_stream());
        // Opening after a close changes nothing.
        gate.open();
        assert!(gated.frame().await.is_none());

        let mut gated = GatedBody::new(body("data"), Gate::default(), CONTINUE_WAIT);
        let started = tokio::time::Instant::now();
        assert!(gated.frame().await.unwrap().is_ok());
        assert_eq!(started.elapsed(), CONTINUE_WAIT);
    }
}
