//! A request body that can be sent again: it streams to the first attempt
//! at once and keeps a copy of what it sent, up to a cap, so that a retry
//! replays the copy and then goes on reading the client.
//!
//! Reading the whole body before the first attempt (as the proxy once did)
//! delays every retryable request by its upload, and cannot work for gRPC
//! streams, which have no `content-length`. Here a body is retryable as long
//! as it has not outgrown the cap.
//!
//! Only one attempt reads at a time: a handle cloned later (the retry)
//! takes over when first polled, and any older handle still held (by a
//! connection finishing an abandoned attempt) fails from then on, so the
//! client's bytes are never split between two attempts.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::http::pool::{BoxBody, BoxError};

/// Bytes of request body kept for a retry at most.
pub(crate) const MAX_REPLAY_BYTES: usize = 64 * 1024;

/// A request body, replayable when made with [`ReplayBody::replayable`].
#[derive(Debug)]
pub(crate) struct ReplayBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Sent once, with no copy and no lock.
    Once(BoxBody),
    Replay {
        shared: Arc<Mutex<Shared>>,
        generation: u64,
        /// Chunks of `shared.buffered` this handle has returned.
        position: usize,
        trailers_sent: bool,
    },
}

#[derive(Debug)]
struct Shared {
    /// The client's body, until it ends.
    source: Option<BoxBody>,
    hint: SizeHint,
    buffered: Vec<Bytes>,
    buffered_len: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// The copy is incomplete (over the cap, or the client's body failed):
    /// no replay is possible any more.
    spoilt: bool,
    cap: usize,
    /// The handle that reads now; older ones are cut off.
    active: u64,
    next_generation: u64,
}

impl ReplayBody {
    pub(crate) fn once(body: BoxBody) -> Self {
        ReplayBody {
            kind: Kind::Once(body),
        }
    }

    /// A body whose first `cap` bytes are kept for replays.
    pub(crate) fn replayable(body: BoxBody, cap: usize) -> Self {
        let hint = body.size_hint();
        let spoilt = hint.lower() > cap as u64;
        let shared = Shared {
            source: Some(body),
            hint,
            buffered: Vec::new(),
            buffered_len: 0,
            trailers: None,
            ended: false,
            spoilt,
            cap,
            active: 0,
            next_generation: 1,
        };
        ReplayBody {
            kind: Kind::Replay {
                shared: Arc::new(Mutex::new(shared)),
                generation: 0,
                position: 0,
                trailers_sent: false,
            },
        }
    }

    /// Whether a retry could still send the whole body.
    pub(crate) fn can_replay(&self) -> bool {
        match &self.kind {
            Kind::Once(_) => false,
            Kind::Replay { shared, .. } => !lock(shared).spoilt,
        }
    }

    /// A new handle that starts from the first byte, for the next attempt.
    pub(crate) fn try_clone(&self) -> Option<Self> {
        let Kind::Replay { shared, .. } = &self.kind else {
            return None;
        };
        let mut state = lock(shared);
        if state.spoilt {
            return None;
        }
        let generation = state.next_generation;
        state.next_generation += 1;
        Some(ReplayBody {
            kind: Kind::Replay {
                shared: shared.clone(),
                generation,
                position: 0,
                trailers_sent: false,
            },
        })
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// An attempt's body was cut off because a retry took over.
#[derive(Debug, thiserror::Error)]
#[error("the request body went to a retry")]
struct Superseded;

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (shared, generation, position, trailers_sent) = match &mut self.kind {
            Kind::Once(body) => return Pin::new(body).poll_frame(cx),
            Kind::Replay {
                shared,
                generation,
                position,
                trailers_sent,
            } => (shared, *generation, position, trailers_sent),
        };
        let mut state = lock(shared);
        if generation != state.active {
            // A newer handle takes over only while the copy is whole.
            if generation < state.active || state.spoilt {
                return Poll::Ready(Some(Err(Superseded.into())));
            }
            state.active = generation;
        }
        if *position < state.buffered.len() {
            let chunk = state.buffered[*position].clone();
            *position += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.ended {
            if !*trailers_sent && let Some(trailers) = state.trailers.clone() {
                *trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        let Some(source) = state.source.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(source).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                state.ended = true;
                state.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                state.spoilt = true;
                state.buffered = Vec::new();
                *position = 0;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if !state.spoilt {
                            if state.buffered_len + data.len() <= state.cap {
                                state.buffered_len += data.len();
                                state.buffered.push(data.clone());
                                *position = state.buffered.len();
                            } else {
                                // Too big to keep: free the copy, stream on.
                                state.spoilt = true;
                                state.buffered = Vec::new();
                                *position = 0;
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            state.trailers = Some(trailers.clone());
                            state.ended = true;
                            state.source = None;
                            *trailers_sent = true;
                            Frame::trailers(trailers)
                        }
                        Err(other) => other,
                    },
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Once(body) => body.is_end_stream(),
            Kind::Replay {
                shared,
                position,
                trailers_sent,
                ..
            } => {
                let state = lock(shared);
                let source_done =
                    state.ended || state.source.as_ref().is_some_and(|s| s.is_end_stream());
                source_done
                    && *position >= state.buffered.len()
                    && (state.trailers.is_none() || *trailers_sent)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Once(body) => body.size_hint(),
            // Every handle sends the whole body from its first byte.
            Kind::Replay { shared, .. } => lock(shared).hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type Frames = Vec<Result<Frame<Bytes>, BoxError>>;

    fn body(frames: Frames) -> BoxBody {
        StreamBody::new(stream::iter(frames)).boxed()
    }

    fn data(s: &'static str) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    async fn read_all(b: ReplayBody) -> Result<(Vec<u8>, Option<HeaderMap>), BoxError> {
        let collected = b.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok((collected.to_bytes().to_vec(), trailers))
    }

    #[tokio::test]
    async fn a_retry_replays_what_the_first_attempt_read() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let first = ReplayBody::replayable(
            body(vec![data("ab"), data("cd"), Ok(Frame::trailers(trailers))]),
            1024,
        );
        let second = first.try_clone().unwrap();
        let (bytes, t) = read_all(first).await.unwrap();
        assert_eq!(bytes, b"abcd");
        assert_eq!(t.unwrap()["grpc-status"], "0");
        assert!(second.can_replay());
        let third = second.try_clone().unwrap();
        let (bytes, t) = read_all(second).await.unwrap();
        assert_eq!(bytes, b"abcd");
        assert!(t.is_some());
        assert_eq!(read_all(third).await.unwrap().0, b"abcd");
    }

    #[tokio::test]
    async fn a_retry_after_a_partial_read_continues_from_the_client() {
        let mut first =
            ReplayBody::replayable(body(vec![data("ab"), data("cd"), data("ef")]), 1024);
        let second = first.try_clone().unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        // The first attempt failed; its body is dropped half read.
        drop(first);
        assert_eq!(read_all(second).await.unwrap().0, b"abcdef");
    }

    #[tokio::test]
    async fn an_older_attempt_is_cut_off_once_the_retry_reads() {
        let mut first = ReplayBody::replayable(body(vec![data("ab"), data("cd")]), 1024);
        let mut second = first.try_clone().unwrap();
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ab"
        );
        assert_eq!(
            second.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ab"
        );
        assert!(first.frame().await.unwrap().is_err());
        assert_eq!(
            second.frame().await.unwrap().unwrap().into_data().unwrap(),
            "cd"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_cap_streams_on_but_cannot_be_replayed() {
        let first = ReplayBody::replayable(body(vec![data("abcd"), data("efgh")]), 6);
        let spare = first.try_clone().unwrap();
        assert_eq!(read_all(first).await.unwrap().0, b"abcdefgh");
        assert!(!spare.can_replay());
        assert!(spare.try_clone().is_none());
        // A declared length over the cap is never replayable.
        let sized = ReplayBody::replayable(
            http_body_util::Full::new(Bytes::from(vec![0u8; 10]))
                .map_err(BoxError::from)
                .boxed(),
            6,
        );
        assert!(!sized.can_replay());
        assert_eq!(sized.size_hint().exact(), Some(10));
    }

    #[tokio::test]
    async fn a_failed_client_body_spoils_the_copy() {
        let first = ReplayBody::replayable(body(vec![data("ab"), Err("reset".into())]), 1024);
        let spare = first.try_clone().unwrap();
        assert!(read_all(first).await.is_err());
        assert!(!spare.can_replay());
    }

    #[tokio::test]
    async fn once_bodies_pass_through_and_never_clone() {
        let b = ReplayBody::once(body(vec![data("x")]));
        assert!(!b.can_replay() && b.try_clone().is_none());
        assert_eq!(read_all(b).await.unwrap().0, b"x");
    }
}
