//! One accepted connection, either direction: its original destination,
//! the route to it, protocol detection, then HTTP or opaque forwarding.
//! Mesh mTLS addressed to the inbound port goes to [`crate::inbound`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, InboundMtls};
use crate::detect::{Detection, Protocol};
use crate::discovery::Resolver;
use crate::inbound::{local_app, serve_mesh};
use crate::mesh::Endpoints;
use crate::metrics::detect::Detected;
use crate::metrics::identity::Refusal;
use crate::metrics::tcp::{ConnectionGuard, Side};
use crate::metrics::{Direction, Metrics, PeerLabels};
use crate::serve::{HttpContext, Route};
use crate::transport::Target;
use crate::{detect, io, orig_dst, serve, tcp, transport};

/// Everything a connection handler needs.
#[derive(Debug)]
pub(crate) struct Listener {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub http: Arc<HttpContext>,
    pub direction: Direction,
    pub shutdown: CancellationToken,
    /// Destinations pinned as meshed (outbound).
    pub endpoints: Arc<Endpoints>,
    /// Discovery (outbound), when a controller is configured.
    pub resolver: Option<Arc<Resolver>>,
    /// Terminates mesh mTLS (inbound), when the proxy has an identity.
    pub mesh_server: Option<Arc<rustls::ServerConfig>>,
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

pub(crate) async fn handle(ctx: Arc<Listener>, stream: TcpStream, peer: SocketAddr) {
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
        ctx.metrics.identity.refused(direction, Refusal::Plaintext);
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
    let direction = ctx.direction;
    if ctx.metrics.detect.timed_out(direction, port) {
        tracing::warn!(
            %direction,
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
    let mut guard = ConnectionGuard::open(&ctx.metrics, direction, Side::Src, PeerLabels::plain());
    let mut io = transport::counting(&ctx.metrics, stream, guard.labels());
    let mut buf = BytesMut::with_capacity(1024);
    // The proxy's own opaque ports win over what discovery declares.
    let declared = match ctx.config.opaque_ports.contains(&orig_dst.port()) {
        true => Some(Protocol::Opaque),
        false => declared,
    };
    let (protocol, outcome) = if let Some(protocol) = declared {
        let outcome = match protocol {
            Protocol::Opaque | Protocol::Tls => Detected::OpaquePort,
            http => http.into(),
        };
        (protocol, outcome)
    } else {
        match detect::detect(&mut io, &mut buf, ctx.config.detect_timeout).await {
            Ok(Detection::Found(protocol)) => (protocol, protocol.into()),
            Ok(Detection::TimedOut) => {
                detection_timed_out(&ctx, orig_dst.port());
                (Protocol::Opaque, Detected::Opaque)
            }
            Err(error) => {
                guard.set_error(&error);
                return;
            }
        }
    };
    ctx.metrics.detect.detected(direction, outcome);
    tracing::debug!(protocol = %outcome, ?route, "forwarding");
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
