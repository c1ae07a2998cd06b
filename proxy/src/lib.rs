//! `weft-proxy`: Weft's per-pod sidecar.
//!
//! It accepts the pod's redirected TCP connections on an outbound and an
//! inbound listener, recovers each connection's original destination,
//! detects the protocol, and forwards: HTTP through hyper with pooled
//! upstream connections, everything else as an opaque byte stream. With no
//! controller configured it forwards transparently to the original
//! destination (inbound: to the app on loopback). With one, it gets a
//! workload certificate, asks discovery where each destination's endpoints
//! are, balances HTTP per request and TCP per connection over them with
//! the service's retry, timeout and circuit-breaking policy, and wraps
//! traffic to meshed pods in mutual TLS.

pub mod admin;
pub mod app_watch;
pub mod await_ready;
pub mod balance;
pub mod config;
pub mod detect;
pub mod discovery;
pub mod http;
pub mod identity;
pub mod io;
pub mod mesh;
pub mod metrics;
pub mod orig_dst;
pub(crate) mod outbound;
pub(crate) mod serve;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod transport;
pub mod validate;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, InboundMtls};
use crate::detect::{Detection, Protocol};
use crate::discovery::Resolver;
use crate::mesh::{Endpoints, MeshClient};
use crate::metrics::{
    ConnectionGuard, DetectLabels, DetectTimeoutLabels, Direction, DirectionLabels, Metrics,
    PeerLabels,
};
use crate::serve::{HttpContext, Route};
use crate::tls::CertStore;
use crate::transport::{Connector, Target};

/// Fatal startup errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tracing: {0}")]
    Tracing(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
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
    /// Destinations pinned as meshed (outbound).
    endpoints: Arc<Endpoints>,
    /// Discovery (outbound), when a controller is configured.
    resolver: Option<Arc<Resolver>>,
    /// Terminates mesh mTLS (inbound), when the proxy has an identity.
    mesh_server: Option<Arc<rustls::ServerConfig>>,
}

/// Mesh TLS state, present when the proxy has an identity.
struct Mesh {
    certs: Arc<CertStore>,
    client: Arc<MeshClient>,
    server: Arc<rustls::ServerConfig>,
}

/// How long a peer may take to complete the mesh TLS handshake and header.
const MESH_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the proxy until SIGTERM, SIGINT or an admin `/shutdown`, then drains.
pub async fn run(config: Config) -> Result<(), Error> {
    let config = Arc::new(config);
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    let mesh = match &config.identity {
        None => None,
        Some(identity) => {
            let certs = Arc::new(CertStore::default());
            let client = tls::mesh_client_config(identity.anchors.clone(), certs.clone())
                .map_err(|e| Error::Tls(e.to_string()))?;
            let server = tls::mesh_server_config(identity.anchors.clone(), certs.clone())
                .map_err(|e| Error::Tls(e.to_string()))?;
            tokio::spawn(identity::maintain(
                identity.clone(),
                certs.clone(),
                metrics.clone(),
            ));
            Some(Mesh {
                client: Arc::new(MeshClient {
                    config: client,
                    certs: certs.clone(),
                }),
                certs,
                server,
            })
        }
    };
    let endpoints = Arc::new(Endpoints::new(&config.mesh_endpoints).map_err(Error::Tls)?);
    let resolver = match &config.identity {
        Some(identity) if config.discovery => {
            let channel = identity::controller_channel(identity, None).map_err(Error::Tls)?;
            Some(Resolver::new(
                channel,
                identity.identity.namespace().to_string(),
                config.discovery_wait,
                metrics.clone(),
            ))
        }
        _ => None,
    };

    let tracer = match &config.trace_collector {
        None => None,
        Some(collector) => {
            let tracer = trace::Tracer::new(
                collector,
                config.trace_sample_ratio,
                config.identity.as_ref().map(|i| &i.identity),
            )
            .map_err(Error::Tracing)?;
            tracing::info!(%collector, ratio = config.trace_sample_ratio, "exporting request spans");
            Some(tracer)
        }
    };

    let admin_listener = bind(config.admin_addr, false)?;
    let state = Arc::new(admin::AdminState {
        metrics: metrics.clone(),
        ready: Default::default(),
        certs: mesh.as_ref().map(|m| m.certs.clone()),
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
        let connector = Connector {
            timeout: config.connect_timeout,
            metrics: metrics.clone(),
            direction,
            // Inbound connections go to the app over loopback, never mTLS.
            mesh: match direction {
                Direction::Outbound => mesh.as_ref().map(|m| m.client.clone()),
                Direction::Inbound => None,
            },
        };
        let ctx = Arc::new(Listener {
            config: config.clone(),
            metrics: metrics.clone(),
            http: Arc::new(HttpContext::new(config.clone(), connector, tracer.clone())),
            direction,
            shutdown: shutdown.clone(),
            endpoints: endpoints.clone(),
            resolver: match direction {
                Direction::Outbound => resolver.clone(),
                Direction::Inbound => None,
            },
            mesh_server: mesh.as_ref().map(|m| m.server.clone()),
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
    match &config.identity {
        Some(identity) => tracing::info!(
            admin = %config.admin_addr,
            identity = %identity.identity,
            controller = %identity.controller_addr,
            inbound_mtls = ?config.inbound_mtls,
            "listening; ready once the first certificate arrives"
        ),
        None => {
            tracing::info!(admin = %config.admin_addr, "ready (no identity: plain transparent proxy)")
        }
    }

    if config.exit_with_app {
        tokio::spawn(app_watch::exit_with_app(
            shutdown.clone(),
            nix::unistd::getuid().as_raw(),
            std::time::Duration::from_millis(500),
        ));
    }
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
    if let Some(tracer) = tracer {
        // Flushing blocks until the exporter is done; keep it off the
        // runtime's workers, which the exporter's channel runs on.
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
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

/// The app in this pod, reached over loopback so that the connection is
/// not redirected again.
fn local_app(orig_dst: SocketAddr, port: u16) -> SocketAddr {
    match orig_dst {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    }
}

/// Where a connection should go, given where the client sent it, and the
/// protocol discovery says the port speaks, if it says.
async fn route_for(ctx: &Listener, orig_dst: SocketAddr) -> (Route, Option<Protocol>) {
    let fixed = |target: Target| (Route::Fixed(Arc::new(target)), None);
    match ctx.direction {
        Direction::Inbound => fixed(Target::plain(local_app(orig_dst, orig_dst.port()))),
        Direction::Outbound => {
            if let Some(peer) = ctx.endpoints.lookup(orig_dst.ip()) {
                return fixed(Target {
                    addr: orig_dst,
                    mesh: Some(peer),
                    dst: Default::default(),
                });
            }
            let Some(resolver) = &ctx.resolver else {
                return fixed(Target::plain(orig_dst));
            };
            let dest = resolver.resolve(orig_dst).await;
            let declared = dest.routes().and_then(|r| r.protocol);
            (Route::Balanced(dest), declared)
        }
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
    // Another proxy addresses the inbound port itself: mesh traffic.
    if direction == Direction::Inbound && orig_dst.port() == ctx.config.inbound_port {
        let _ = stream.set_nodelay(true);
        let span = tracing::debug_span!("mesh", %peer);
        tracing::Instrument::instrument(serve_mesh(ctx, stream, orig_dst), span).await;
        return;
    }
    // Without NAT the "original" destination is the listener itself: a
    // client dialled the proxy port directly. Forwarding would loop.
    if stream.local_addr().is_ok_and(|local| local == orig_dst) {
        tracing::warn!(%direction, %peer, %orig_dst, "refusing a connection addressed to the proxy itself");
        return;
    }
    let _ = stream.set_nodelay(true);
    if direction == Direction::Inbound && ctx.config.inbound_mtls == InboundMtls::Strict {
        tracing::info!(%peer, %orig_dst, "refusing a connection that is not mesh mTLS (strict mode)");
        ctx.metrics.mtls_refused(direction, "plaintext");
        return;
    }
    let span = tracing::debug_span!("conn", %direction, %peer, dst = %orig_dst);
    // Instrument the whole future: a span entered with `enter()` must not be
    // held across an await.
    tracing::Instrument::instrument(serve(ctx, stream, orig_dst), span).await;
}

/// Counts a detection timeout on `port`, and the first time for that port
/// tells the operator how to stop the wait: a server-speaks-first protocol
/// waits out the timeout on every connection otherwise.
fn detection_timed_out(ctx: &Listener, port: u16) {
    let direction = ctx.direction.as_str();
    ctx.metrics
        .detect_timeout
        .get_or_create(&DirectionLabels { direction })
        .inc();
    let before = ctx
        .metrics
        .detect_timeout_by_port
        .get_or_create(&DetectTimeoutLabels { direction, port })
        .inc();
    if before == 0 {
        tracing::warn!(
            direction,
            port,
            timeout = ?ctx.config.detect_timeout,
            "protocol detection timed out: the client sent nothing, as with protocols where \
             the server speaks first; if port {port} is one, list it in the pod annotation \
             {} (or WEFT_OPAQUE_PORTS) to skip detection",
            weft_api::annotations::OPAQUE_PORTS,
        );
    }
}

/// Detects the protocol of an accepted connection and forwards it.
async fn serve(ctx: Arc<Listener>, stream: TcpStream, orig_dst: SocketAddr) {
    let direction = ctx.direction;
    let (route, declared) = route_for(&ctx, orig_dst).await;
    // The accepted side of this connection is never mesh TLS: outbound it
    // is the app, inbound an unmeshed client.
    let mut guard = ConnectionGuard::open(&ctx.metrics, direction, "src", PeerLabels::plain());
    let mut io = transport::counting(&ctx.metrics, stream, guard.labels());
    let mut buf = BytesMut::with_capacity(1024);
    // The proxy's own opaque ports win over what discovery declares.
    let declared = match ctx.config.opaque_ports.contains(&orig_dst.port()) {
        true => Some(Protocol::Opaque),
        false => declared,
    };
    let (protocol, outcome) = if let Some(protocol) = declared {
        let outcome = match protocol {
            Protocol::Opaque | Protocol::Tls => "opaque_port",
            http => http.as_str(),
        };
        (protocol, outcome)
    } else {
        match detect::detect(&mut io, &mut buf, ctx.config.detect_timeout).await {
            Ok(Detection::Found(protocol)) => (protocol, protocol.as_str()),
            Ok(Detection::TimedOut) => {
                detection_timed_out(&ctx, orig_dst.port());
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
    tracing::debug!(protocol = outcome, ?route, "forwarding");
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let tls = match &route {
                Route::Fixed(target) => target.peer_labels(),
                Route::Balanced(_) => PeerLabels::plain(),
            };
            serve::serve(
                ctx.http.clone(),
                io,
                buf,
                protocol,
                route,
                tls,
                ctx.shutdown.clone(),
            )
            .await
        }
        Protocol::Tls | Protocol::Opaque => {
            let io = io::PrefixedIo::new(buf, io);
            match &route {
                Route::Fixed(target) => {
                    tcp::forward(io, &mut guard, target, &ctx.http.pool.connector).await
                }
                Route::Balanced(dest) => {
                    tcp::forward_balanced(io, &mut guard, dest, &ctx.http.pool.connector).await
                }
            }
        }
    }
}

/// Serves a connection from another proxy: mTLS, then the mesh header says
/// which local port and protocol; no detection is needed.
async fn serve_mesh(ctx: Arc<Listener>, stream: TcpStream, orig_dst: SocketAddr) {
    let direction = ctx.direction;
    let Some(server) = ctx.mesh_server.clone() else {
        tracing::info!("mesh connection refused: this proxy has no identity");
        ctx.metrics.mtls_refused(direction, "no_certificate");
        return;
    };
    // Counted under the client's identity once the handshake tells it.
    let io = io::CountingIo::new(stream, Default::default(), Default::default());
    let (mut tls, client, header) = match mesh::accept(server, io, MESH_HANDSHAKE_TIMEOUT).await {
        Ok(accepted) => accepted,
        Err(error) => {
            tracing::info!(%error, "mesh connection refused");
            ctx.metrics.mtls_refused(direction, error.reason());
            return;
        }
    };
    let peer_labels = PeerLabels::client(Arc::new(client.to_string()));
    let mut guard = ConnectionGuard::open(&ctx.metrics, direction, "src", peer_labels.clone());
    let labels = guard.labels().clone();
    tls.get_mut().0.set_counters(
        ctx.metrics.tcp_read_bytes.get_or_create(&labels).clone(),
        ctx.metrics.tcp_write_bytes.get_or_create(&labels).clone(),
    );
    let target = Target::plain(local_app(orig_dst, header.port));
    tracing::debug!(%client, port = header.port, protocol = ?header.protocol, "mesh connection");
    match header.protocol {
        weft_api::mesh::Protocol::Http1 | weft_api::mesh::Protocol::Http2 => {
            let protocol = if header.protocol == weft_api::mesh::Protocol::Http2 {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            serve::serve(
                ctx.http.clone(),
                tls,
                BytesMut::new(),
                protocol,
                Route::Fixed(Arc::new(target)),
                peer_labels,
                ctx.shutdown.clone(),
            )
            .await
        }
        weft_api::mesh::Protocol::Opaque => {
            tcp::forward(tls, &mut guard, &target, &ctx.http.pool.connector).await
        }
    }
}
