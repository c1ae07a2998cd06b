//! `weft-proxy`: Weft's per-pod sidecar.
//!
//! It accepts the pod's redirected TCP connections on an outbound and an
//! inbound listener, recovers each connection's original destination,
//! detects the protocol, and forwards: HTTP through hyper with pooled
//! upstream connections, everything else as an opaque byte stream. With no
//! controller configured it forwards transparently to the original
//! destination (inbound: to the app on loopback).

pub mod admin;
pub mod config;
pub mod detect;
pub mod http;
pub mod io;
pub mod metrics;
pub mod orig_dst;
pub mod pool;
pub mod tcp;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::detect::{Detection, Protocol};
use crate::http::HttpContext;
use crate::io::CountingIo;
use crate::metrics::{
    ConnectionGuard, DetectLabels, Direction, DirectionLabels, Metrics, TcpLabels,
};

/// Fatal startup errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// Sets up logging once, from the validated filter.
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Everything a connection handler needs.
#[derive(Debug)]
struct Listener {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    http: Arc<HttpContext>,
    direction: Direction,
    shutdown: CancellationToken,
}

/// Runs the proxy until SIGTERM, SIGINT or an admin `/shutdown`, then drains.
pub async fn run(config: Config) -> Result<(), Error> {
    let config = Arc::new(config);
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    let admin_listener = bind(config.admin_addr, false)?;
    let state = Arc::new(admin::AdminState {
        metrics: metrics.clone(),
        ready: Default::default(),
        shutdown: shutdown.clone(),
    });
    tokio::spawn(admin::serve(admin_listener, state.clone()));

    // Outbound traffic is redirected to loopback (the NAT output hook
    // rewrites to the local address); inbound traffic arrives on the pod's
    // own addresses.
    let listeners = [
        (
            Direction::Outbound,
            SocketAddr::from((Ipv4Addr::LOCALHOST, config.outbound_port)),
        ),
        (
            Direction::Outbound,
            SocketAddr::from((Ipv6Addr::LOCALHOST, config.outbound_port)),
        ),
        (
            Direction::Inbound,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.inbound_port)),
        ),
        (
            Direction::Inbound,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, config.inbound_port)),
        ),
    ];
    let mut accept_loops = Vec::new();
    for direction in [Direction::Outbound, Direction::Inbound] {
        let ctx = Arc::new(Listener {
            config: config.clone(),
            metrics: metrics.clone(),
            http: Arc::new(HttpContext::new(config.clone(), metrics.clone(), direction)),
            direction,
            shutdown: shutdown.clone(),
        });
        for (_, addr) in listeners.iter().filter(|(d, _)| *d == direction) {
            match bind(*addr, addr.is_ipv6()) {
                Ok(listener) => {
                    tracing::info!(%direction, %addr, "listening");
                    accept_loops.push(tokio::spawn(accept(listener, ctx.clone(), tracker.clone())));
                }
                // A pod without IPv6 still works over IPv4.
                Err(error) if addr.is_ipv6() => {
                    tracing::info!(%addr, %error, "IPv6 unavailable, not listening")
                }
                Err(error) => return Err(error),
            }
        }
    }
    state.ready.store(true, Ordering::Release);
    tracing::info!(admin = %config.admin_addr, "ready");

    wait_for_shutdown(&shutdown).await?;
    state.ready.store(false, Ordering::Release);
    shutdown.cancel();
    for task in accept_loops {
        task.abort();
    }
    tracker.close();
    tracing::info!(grace = ?config.shutdown_grace, in_flight = tracker.len(), "draining");
    match tokio::time::timeout(config.shutdown_grace, tracker.wait()).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            left = tracker.len(),
            "grace period over; closing remaining connections"
        ),
    }
    Ok(())
}

async fn wait_for_shutdown(shutdown: &CancellationToken) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = shutdown.cancelled() => {}
    }
    Ok(())
}

fn bind(addr: SocketAddr, v6_only: bool) -> Result<TcpListener, Error> {
    use socket2::{Domain, Socket, Type};
    let err = |source| Error::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6_only).map_err(err)?;
    }
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

async fn accept(listener: TcpListener, ctx: Arc<Listener>, tracker: TaskTracker) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tracker.spawn(handle(ctx.clone(), stream, peer));
            }
            Err(error) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(direction = %ctx.direction, %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Where a connection should go, given where the client sent it.
fn upstream_for(direction: Direction, orig_dst: SocketAddr) -> SocketAddr {
    match direction {
        Direction::Outbound => orig_dst,
        // The app listens in the same pod; reach it over loopback so the
        // connection is not redirected again.
        Direction::Inbound => match orig_dst {
            SocketAddr::V4(a) => SocketAddr::from((Ipv4Addr::LOCALHOST, a.port())),
            SocketAddr::V6(a) => SocketAddr::from((Ipv6Addr::LOCALHOST, a.port())),
        },
    }
}

async fn handle(ctx: Arc<Listener>, stream: TcpStream, peer: SocketAddr) {
    let direction = ctx.direction;
    let orig_dst = match orig_dst::original_dst(&stream) {
        Ok(addr) => addr,
        Err(error) => {
            tracing::warn!(%direction, %peer, %error, "no original destination; was the connection redirected?");
            return;
        }
    };
    // Without NAT the "original" destination is the listener itself: a
    // client dialled the proxy port directly. Forwarding would loop.
    if stream.local_addr().is_ok_and(|local| local == orig_dst) {
        tracing::warn!(%direction, %peer, %orig_dst, "refusing a connection addressed to the proxy itself");
        return;
    }
    let _ = stream.set_nodelay(true);
    let target = upstream_for(direction, orig_dst);
    let span = tracing::debug_span!("conn", %direction, %peer, dst = %orig_dst);
    // Instrument the whole future: a span entered with `enter()` must not be
    // held across an await.
    tracing::Instrument::instrument(serve(ctx, stream, orig_dst, target), span).await;
}

/// Detects the protocol of an accepted connection and forwards it.
async fn serve(ctx: Arc<Listener>, stream: TcpStream, orig_dst: SocketAddr, target: SocketAddr) {
    let direction = ctx.direction;
    let mut guard = ConnectionGuard::open(&ctx.metrics, direction, "src");
    let labels = TcpLabels {
        direction: direction.as_str(),
        peer: "src",
    };
    let mut io = CountingIo::new(
        stream,
        ctx.metrics.tcp_read_bytes.get_or_create(&labels).clone(),
        ctx.metrics.tcp_write_bytes.get_or_create(&labels).clone(),
    );
    let mut buf = BytesMut::with_capacity(1024);
    let (protocol, outcome) = if ctx.config.opaque_ports.contains(&orig_dst.port()) {
        (Protocol::Opaque, "opaque_port")
    } else {
        match detect::detect(&mut io, &mut buf, ctx.config.detect_timeout).await {
            Ok(Detection::Found(protocol)) => (protocol, protocol.as_str()),
            Ok(Detection::TimedOut) => {
                ctx.metrics
                    .detect_timeout
                    .get_or_create(&DirectionLabels {
                        direction: direction.as_str(),
                    })
                    .inc();
                (Protocol::Opaque, Protocol::Opaque.as_str())
            }
            Err(error) => {
                guard.set_error(&error);
                return;
            }
        }
    };
    ctx.metrics
        .detect
        .get_or_create(&DetectLabels {
            direction: direction.as_str(),
            protocol: outcome,
        })
        .inc();
    tracing::debug!(protocol = outcome, %target, "forwarding");
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            http::serve(
                ctx.http.clone(),
                io,
                buf,
                protocol,
                target,
                ctx.shutdown.clone(),
            )
            .await
        }
        Protocol::Tls | Protocol::Opaque => {
            let io = io::PrefixedIo::new(buf, io);
            tcp::forward(
                io,
                &mut guard,
                target,
                ctx.config.connect_timeout,
                &ctx.metrics,
                direction,
            )
            .await
        }
    }
}
