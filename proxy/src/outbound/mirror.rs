//! `RequestMirror`: a copy of a rule's requests to a backend as well, its
//! response discarded.
//!
//! The copy must never cost the request itself anything, so:
//! - the body is teed frame by frame as the request streams upstream,
//!   into a small bounded channel per mirror; a mirror that cannot keep up
//!   is cut off (its copy aborts) rather than slowing the request;
//! - a copy whose body was cut off or ended in an error is aborted, never
//!   sent looking complete;
//! - the copy goes to one endpoint picked by two choices over load, with a
//!   deadline of its own, in a task of its own.
//!
//! tower has no tee or shadow layer; this is the request-side half of one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use rand::Rng;
use tokio::sync::mpsc;

use crate::balance::{EndpointState, Pick, pick};
use crate::http::endpoint::{EndpointSender, send};
use crate::http::pool::{BoxBody, BoxError};

/// Frames a mirror may fall behind the request before it is cut off.
const MIRROR_LAG_FRAMES: usize = 16;
/// How long a mirrored request may take.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// One `RequestMirror` filter, compiled.
#[derive(Debug)]
pub(crate) struct Mirror {
    /// `name.namespace` of the backend, for logs.
    pub service: Arc<String>,
    /// Empty when the reference did not resolve: nothing is mirrored.
    pub endpoints: Vec<Arc<EndpointState>>,
    /// Share of requests mirrored, in parts per million.
    pub per_million: u32,
}

impl Mirror {
    fn chosen(&self) -> bool {
        self.per_million >= 1_000_000 || rand::rng().random_range(0..1_000_000) < self.per_million
    }
}

/// What a teed body sends to a mirror.
enum Chunk {
    Data(Bytes),
    /// The request's body ended cleanly.
    End,
}

/// The request's body, copying each data frame to the mirrors.
struct Tee {
    inner: BoxBody,
    copies: Vec<mpsc::Sender<Chunk>>,
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    // A mirror whose channel is full is cut off: dropping
                    // its sender aborts its copy.
                    self.copies
                        .retain(|c| c.try_send(Chunk::Data(data.clone())).is_ok());
                }
            }
            Poll::Ready(None) => {
                for copy in self.copies.drain(..) {
                    let _ = copy.try_send(Chunk::End);
                }
            }
            // An error upstream: the copies abort with it.
            Poll::Ready(Some(Err(_))) => self.copies.clear(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The body a mirror sends: the teed frames, failing if the tee stopped
/// before the end.
struct CopyBody {
    frames: mpsc::Receiver<Chunk>,
    done: bool,
}

impl Body for CopyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.frames.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Chunk::Data(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Chunk::End)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(BoxError::from(
                    "the request mirror fell behind, or the request failed",
                ))))
            }
        }
    }
}

fn copy_body(frames: mpsc::Receiver<Chunk>) -> BoxBody {
    CopyBody {
        frames,
        done: false,
    }
    .boxed()
}

/// Starts the copies `mirrors` ask for and returns the request to send on,
/// its body teed to them.
pub(crate) fn start(
    mirrors: &[Arc<Mirror>],
    req: Request<BoxBody>,
    sender: &EndpointSender,
) -> Request<BoxBody> {
    let mut copies = Vec::new();
    let bodyless = req.body().is_end_stream();
    for mirror in mirrors {
        if !mirror.chosen() {
            continue;
        }
        let Pick::Endpoint(endpoint) = pick(&mirror.endpoints, None, usize::MAX) else {
            continue;
        };
        let mut copy = Request::new(if bodyless {
            BoxBody::default()
        } else {
            let (tx, rx) = mpsc::channel(MIRROR_LAG_FRAMES);
            copies.push(tx);
            copy_body(rx)
        });
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        let (endpoint, sender, service) =
            (endpoint.clone(), sender.clone(), mirror.service.clone());
        tokio::spawn(async move {
            let sent = tokio::time::timeout(MIRROR_TIMEOUT, async {
                let resp = send(&sender.pool, sender.direction, &endpoint.target, copy).await?;
                // Read to the end, so the connection can be reused.
                resp.into_body().collect().await?;
                Ok::<_, BoxError>(())
            })
            .await;
            match sent {
                Ok(Ok(())) => tracing::trace!(%service, "request mirrored"),
                Ok(Err(error)) => tracing::debug!(%service, %error, "request mirror failed"),
                Err(_) => tracing::debug!(%service, "request mirror timed out"),
            }
        });
    }
    if copies.is_empty() {
        return req;
    }
    req.map(|inner| Tee { inner, copies }.boxed())
}

#[cfg(test)]
mod tests;
