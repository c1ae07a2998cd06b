//! Upstream HTTP connections, kept alive and reused.
//!
//! HTTP/1 connections carry one request at a time: a connection goes back
//! to the idle list when its response body has been read to the end, and is
//! dropped if the body is abandoned. HTTP/2 connections are shared by all
//! requests to the same address and multiplexed.
//!
//! The pool is keyed by the upstream [`Target`] (address, and the peer
//! identity when the hop is mesh mTLS), not by the request's authority,
//! because a transparent proxy must reach the address the client dialled
//! while passing the authority through untouched.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use weft_api::mesh::Protocol as MeshProtocol;

use crate::metrics::tcp::ConnectionGuard;
use crate::transport::{ConnectError, Connector, Target};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Idle HTTP/1 connections kept per upstream. Set well above realistic
/// concurrency: a lower cap makes a busy pool drop connections and dial new
/// ones under load (measured: 1 new connection per 5 requests at 50
/// concurrent clients with a cap of 32). The idle timeout reaps them.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// Which HTTP version to speak upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("request to {addr}: {source}")]
    Request {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

type H2Slot = Arc<tokio::sync::Mutex<Option<http2::SendRequest<BoxBody>>>>;

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<BoxBody>,
    since: Instant,
}

/// Shared upstream connection pool.
#[derive(Debug)]
pub struct Pool {
    h1_idle: Mutex<HashMap<Target, Vec<Idle>>>,
    /// One slot per upstream; its async lock is held only while that
    /// upstream's connection is being made, so concurrent first requests
    /// share one connection and a slow upstream delays no other.
    h2: Mutex<HashMap<Target, H2Slot>>,
    pub connector: Connector,
    idle_timeout: Duration,
    /// `WEFT_HTTP_MAX_HEADER_BYTES`, for the HTTP/2 hops (HTTP/1 responses
    /// keep hyper's larger default buffer, which bodies stream through).
    max_header_bytes: usize,
}

impl Pool {
    pub fn new(connector: Connector, idle_timeout: Duration, max_header_bytes: usize) -> Arc<Self> {
        let pool = Arc::new(Pool {
            h1_idle: Mutex::default(),
            h2: Mutex::default(),
            connector,
            idle_timeout,
            max_header_bytes,
        });
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        pool
    }

    /// Sends `req` to `target` and returns the response with a body that
    /// returns the connection to the pool when it has been read.
    pub async fn send(
        self: &Arc<Self>,
        target: &Target,
        version: Version,
        req: Request<BoxBody>,
    ) -> Result<Response<BoxBody>, UpstreamError> {
        match version {
            Version::Http1 => self.send_h1(target, req).await,
            Version::Http2 => self.send_h2(target, req).await,
        }
    }

    fn pop_idle_h1(&self, target: &Target) -> Option<Idle> {
        let mut idle = self.h1_idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(target)?.pop()
    }

    async fn checkout_h1(&self, target: &Target) -> Option<http1::SendRequest<BoxBody>> {
        while let Some(Idle { mut sender, since }) = self.pop_idle_h1(target) {
            if sender.is_closed() || since.elapsed() >= self.idle_timeout {
                continue;
            }
            if sender.is_ready() {
                return Some(sender);
            }
            // Just checked in: readiness follows within a poll or two.
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_millis(50), sender.ready()).await
            {
                return Some(sender);
            }
        }
        None
    }

    /// Returns a connection whose response body has been read to the end.
    /// hyper marks it ready a moment later (on its dispatcher's next poll),
    /// so checkout waits briefly for readiness rather than paying for a
    /// task per response here.
    fn checkin_h1(&self, target: Target, sender: http1::SendRequest<BoxBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.h1_idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(target).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect_h1(
        &self,
        target: &Target,
    ) -> Result<http1::SendRequest<BoxBody>, UpstreamError> {
        let addr = target.addr;
        let (io, guard) = self.connector.connect(target, MeshProtocol::Http1).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        drive(conn, guard, addr, Version::Http1);
        Ok(sender)
    }

    async fn send_h1(
        self: &Arc<Self>,
        target: &Target,
        req: Request<BoxBody>,
    ) -> Result<Response<BoxBody>, UpstreamError> {
        let addr = target.addr;
        let mut req = req;
        // A pooled connection may have been closed by the server just now; if
        // hyper hands the request back unsent, it is safe to try a fresh one.
        if let Some(mut sender) = self.checkout_h1(target).await {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(target, sender, resp)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(UpstreamError::Request {
                            addr,
                            source: error.into_error(),
                        });
                    }
                },
            }
        }
        let mut sender = self.connect_h1(target).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Request { addr, source })?;
        Ok(self.pooled(target, sender, resp))
    }

    fn pooled(
        self: &Arc<Self>,
        target: &Target,
        sender: http1::SendRequest<BoxBody>,
        resp: Response<hyper::body::Incoming>,
    ) -> Response<BoxBody> {
        resp.map(|body| {
            let done = body.is_end_stream();
            let mut pooled = PooledBody {
                body,
                checkin: Some((self.clone(), target.clone(), sender)),
            };
            if done {
                pooled.release();
            }
            BoxBody::new(pooled)
        })
    }

    async fn send_h2(
        &self,
        target: &Target,
        req: Request<BoxBody>,
    ) -> Result<Response<BoxBody>, UpstreamError> {
        let addr = target.addr;
        let slot = {
            let mut slots = self.h2.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(target.clone()).or_default().clone()
        };
        let mut sender = {
            let mut slot = slot.lock().await;
            match slot.as_ref() {
                Some(sender) if !sender.is_closed() => sender.clone(),
                _ => {
                    let (io, guard) = self.connector.connect(target, MeshProtocol::Http2).await?;
                    let mut builder = http2::Builder::new(TokioExecutor::new());
                    builder
                        .timer(TokioTimer::new())
                        .keep_alive_interval(Duration::from_secs(30));
                    // h2's header-list default is 16 KiB, far below what
                    // users configure (cookies, JWTs).
                    super::h2::client(&mut builder, self.max_header_bytes);
                    let (sender, conn) = builder
                        .handshake(TokioIo::new(io))
                        .await
                        .map_err(|source| UpstreamError::Handshake { addr, source })?;
                    drive(conn, guard, addr, Version::Http2);
                    *slot = Some(sender.clone());
                    sender
                }
            }
        };
        sender
            .ready()
            .await
            .map_err(|source| UpstreamError::Request { addr, source })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Request { addr, source })?;
        Ok(resp.map(|b| b.map_err(BoxError::from).boxed()))
    }
}

/// Runs an upstream connection's task; its metrics close with it.
fn drive<F>(conn: F, guard: ConnectionGuard, addr: SocketAddr, version: Version)
where
    F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let _guard = guard;
        if let Err(error) = conn.await {
            tracing::debug!(%addr, ?version, %error, "upstream connection ended");
        }
    });
}

/// Drops idle connections that outlived the idle timeout, so an upstream
/// that is never called again does not keep sockets open forever.
async fn sweep(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        {
            let mut idle = pool.h1_idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|_, list| {
                list.retain(|e| !e.sender.is_closed() && e.since.elapsed() < pool.idle_timeout);
                !list.is_empty()
            });
        }
        pool.h2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, slot| match slot.try_lock() {
                Ok(sender) => sender.as_ref().is_some_and(|s| !s.is_closed()),
                // Being connected right now.
                Err(_) => true,
            });
    }
}

/// A response body that gives its HTTP/1 connection back to the pool once
/// the body has been read to the end.
struct PooledBody {
    body: hyper::body::Incoming,
    checkin: Option<(Arc<Pool>, Target, http1::SendRequest<BoxBody>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((pool, target, sender)) = self.checkin.take() {
            pool.checkin_h1(target, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.body).poll_frame(cx);
        match &poll {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.checkin = None,
            _ => {}
        }
        poll.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
