//! One accepted connection, either direction: its original destination,
//! the route to it, protocol detection, then HTTP or opaque forwarding.
//! Inbound mesh mTLS (Weft's ClientHello on an app port, or anything at
//! the inbound port) goes to [`crate::inbound`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::config::InboundMtls;
use crate::detect::{Detection, Protocol};
use crate::http::server::version_of;
use crate::inbound::hello::{self, First};
use crate::inbound::{local_app, serve_mesh};
use crate::listener::Listener;
use crate::metrics::detect::Detected;
use crate::metrics::identity::Refusal;
use crate::metrics::tcp::{ConnectionGuard, Side};
use crate::metrics::{Direction, PeerLabels};
use crate::outbound::http::Route;
use crate::policy::Way;
use crate::transport::Target;
use crate::{detect, inbound, io, mesh, orig_dst, outbound, tcp, transport};

/// Where an outbound connection should go, given where the app sent it,
/// and the protocol discovery says the port speaks, if it says.
async fn outbound_route(ctx: &Listener, orig_dst: SocketAddr) -> (Route, Option<Protocol>) {
    let fixed = |target: Target| (Route::Fixed(Arc::new(target)), None);
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

/// Where an outbound connection may end up, for egress policy: its
/// target, or every endpoint of its destination. With Gateway API routes
/// a rule may send it elsewhere, so only each endpoint connection is
/// checked then.
fn egress_candidates(route: &Route) -> Vec<SocketAddr> {
    match route {
        Route::Fixed(target) => vec![target.addr],
        Route::Balanced(dest) => match dest.routes() {
            Some(routes) if routes.http.is_some() => Vec::new(),
            Some(routes) => routes
                .backends
                .iter()
                .flat_map(|b| &b.endpoints)
                .map(|e| e.target.addr)
                .collect(),
            None => vec![dest.addr],
        },
    }
}

/// The next hop of an accepted connection that is not mesh mTLS.
#[derive(Debug)]
enum Next {
    /// Inbound from an unmeshed client: the app on loopback.
    App(Target),
    /// Outbound from the app.
    Out(Route),
}

pub(crate) async fn handle(ctx: Arc<Listener>, mut stream: TcpStream, peer: SocketAddr) {
    let direction = ctx.direction;
    let orig_dst = match orig_dst::original_dst(&stream) {
        Ok(addr) => addr,
        Err(error) => {
            tracing::warn!(%direction, %peer, %error, "no original destination; was the connection redirected?");
            return;
        }
    };
    // A proxy from before app-port mesh addresses the inbound port itself.
    if direction == Direction::Inbound && orig_dst.port() == ctx.config.inbound_port {
        let _ = stream.set_nodelay(true);
        let span = tracing::debug_span!("mesh", %peer);
        let serve = serve_mesh(ctx, stream, peer, orig_dst, mesh::Arrival::InboundPort);
        Box::pin(tracing::Instrument::instrument(serve, span)).await;
        return;
    }
    // Without NAT the "original" destination is the listener itself: a
    // client dialled the proxy port directly. Forwarding would loop.
    if stream.local_addr().is_ok_and(|local| local == orig_dst) {
        tracing::warn!(%direction, %peer, %orig_dst, "refusing a connection addressed to the proxy itself");
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(1024);
    let mut first = None;
    if direction == Direction::Inbound {
        // Mesh mTLS to the app's port opens with Weft's ClientHello. A
        // port that skips detection waits for it only from a meshed pod.
        let opaque = ctx.config.opaque_ports.contains(&orig_dst.port());
        if !opaque || inbound::source_may_be_mesh(&ctx, peer, orig_dst.port()).await {
            match hello::read_first(&mut stream, &mut buf, ctx.config.detect_timeout).await {
                Ok(First::Mesh) => {
                    let span = tracing::debug_span!("mesh", %peer, port = orig_dst.port());
                    let stream = io::PrefixedIo::new(buf, stream);
                    let arrival = mesh::Arrival::AppPort(orig_dst.port());
                    let serve = serve_mesh(ctx, stream, peer, orig_dst, arrival);
                    Box::pin(tracing::Instrument::instrument(serve, span)).await;
                    return;
                }
                Ok(First::App(detection)) => first = Some(detection),
                Err(error) => {
                    tracing::debug!(%peer, %orig_dst, %error, "connection failed before its first bytes");
                    return;
                }
            }
        }
        // Plaintext: the source address is all NetworkPolicy has, as for
        // a CNI.
        if !ctx.policy.allows(Way::Ingress, peer, None, orig_dst.port()) {
            return;
        }
        if ctx.config.inbound_mtls == InboundMtls::Strict {
            tracing::info!(%peer, %orig_dst, "refusing a connection that is not mesh mTLS (strict mode)");
            ctx.metrics.identity.refused(direction, Refusal::Plaintext);
            return;
        }
    }
    let span = tracing::debug_span!("conn", %direction, %peer, dst = %orig_dst);
    // Instrument the whole future: a span entered with `enter()` must not be
    // held across an await.
    let serve = serve(ctx, stream, peer, orig_dst, buf, first);
    Box::pin(tracing::Instrument::instrument(serve, span)).await;
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

/// How a silent client's connection goes on once someone spoke.
enum Silence {
    /// Opaque through the upstream already opened: the server spoke first
    /// (its greeting is passed on) or the client's bytes are not HTTP.
    Forward(tcp::Opened, Detected),
    /// The client spoke first, in this protocol, and is served as if it
    /// had not waited.
    Detected(Protocol),
}

/// A client silent for the whole detection timeout is either waiting for a
/// server that speaks first or an HTTP client that dialled before it had a
/// request (pools that dial ahead, or race a dial against a connection
/// being returned). The upstream is opened as for opaque bytes and
/// whichever side speaks first decides; if it is the client, the upstream
/// (which has seen nothing) is dropped and the client is served as if it
/// had not waited. Judging by the timeout alone would leave such HTTP
/// connections opaque: no per-request balancing, retries or metrics.
async fn after_silence<C>(
    ctx: &Listener,
    io: &mut C,
    buf: &mut BytesMut,
    mut opened: Option<tcp::Opened>,
    port: u16,
) -> std::io::Result<Silence>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut greeting = BytesMut::new();
    let upstream = opened.as_mut().map(|o| &mut o.upstream);
    let timeout = ctx.config.detect_timeout;
    match detect::first_speaker(io, buf, upstream, &mut greeting, timeout).await? {
        detect::Speaker::Server => {
            detection_timed_out(ctx, port);
            tokio::io::AsyncWriteExt::write_all(io, &greeting).await?;
            let opened = opened.expect("only an opened upstream speaks");
            Ok(Silence::Forward(opened, Detected::Opaque))
        }
        detect::Speaker::Client(protocol) => {
            if !buf.is_empty() {
                ctx.metrics.detect.spoke_late(ctx.direction);
            }
            tracing::debug!(protocol = protocol.as_str(), "a silent client spoke first");
            match (protocol, opened) {
                (Protocol::Http1 | Protocol::Http2, _) | (_, None) => {
                    Ok(Silence::Detected(protocol))
                }
                // The splice sends the client's bytes first.
                (_, Some(opened)) => Ok(Silence::Forward(opened, protocol.into())),
            }
        }
    }
}

/// Opens the upstream a silent client's bytes would go to if they are
/// opaque, where policy lets opaque bytes through; `None` otherwise, and
/// the client is heard out alone.
async fn open_opaque(
    ctx: &Listener,
    guard: &mut ConnectionGuard,
    next: &Next,
    peer: SocketAddr,
    port: u16,
) -> Option<tcp::Opened> {
    let connector = &ctx.http.pool.connector;
    match next {
        Next::App(app) => {
            let subject = crate::policy::authz::Subject::Connection;
            if !ctx.policy.would_authorize(peer, None, port, subject) {
                return None;
            }
            tcp::connect(guard, app, connector).await
        }
        Next::Out(Route::Fixed(target)) => tcp::connect(guard, target, connector).await,
        Next::Out(Route::Balanced(dest)) => {
            outbound::tcp::connect_balanced(guard, dest, connector).await
        }
    }
}

/// Detects the protocol of an accepted connection and forwards it. The
/// later stages are boxed so that a connection waiting for its first bytes
/// holds only what waiting needs, not the largest stage's state: idle
/// connections are what a hostile client piles up. `buf`
/// holds what was already read, and `first` what detection made of it.
async fn serve(
    ctx: Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
    orig_dst: SocketAddr,
    mut buf: BytesMut,
    first: Option<Detection>,
) {
    let direction = ctx.direction;
    let (next, declared) = match direction {
        Direction::Inbound => {
            let app = Target::plain(local_app(orig_dst, orig_dst.port()));
            (Next::App(app), None)
        }
        Direction::Outbound => {
            let (route, declared) = outbound_route(&ctx, orig_dst).await;
            (Next::Out(route), declared)
        }
    };
    if let Next::Out(route) = &next
        && !ctx
            .policy
            .allows_any(Way::Egress, &egress_candidates(route))
    {
        return;
    }
    // The accepted side of this connection is never mesh TLS: outbound it
    // is the app, inbound an unmeshed client.
    let mut guard = ConnectionGuard::open(&ctx.metrics, direction, Side::Src, PeerLabels::plain());
    let mut io = transport::counting(&ctx.metrics, stream, guard.labels());
    // Bytes read before the counters existed.
    ctx.metrics
        .tcp
        .read_bytes
        .get_or_create(guard.labels())
        .inc_by(buf.len() as u64);
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
        let detection = match first {
            Some(detection) => Ok(detection),
            None => detect::detect(&mut io, &mut buf, ctx.config.detect_timeout).await,
        };
        let silent = match detection {
            Ok(Detection::Found(protocol)) => Ok(protocol),
            // It spoke, then stalled inside what could have been HTTP.
            Ok(Detection::TimedOut) if !buf.is_empty() => {
                detection_timed_out(&ctx, orig_dst.port());
                Ok(Protocol::Opaque)
            }
            Ok(Detection::TimedOut) => Err(()),
            Err(error) => {
                guard.set_error(&error);
                return;
            }
        };
        let protocol = match silent {
            Ok(protocol) => protocol,
            Err(()) => {
                let opened =
                    Box::pin(open_opaque(&ctx, &mut guard, &next, peer, orig_dst.port())).await;
                let heard = after_silence(&ctx, &mut io, &mut buf, opened, orig_dst.port());
                match Box::pin(heard).await {
                    Ok(Silence::Forward(opened, outcome)) => {
                        ctx.metrics.detect.detected(direction, outcome);
                        let io = io::PrefixedIo::new(buf, io);
                        return Box::pin(tcp::splice(io, &mut guard, opened)).await;
                    }
                    Ok(Silence::Detected(protocol)) => protocol,
                    Err(error) => {
                        guard.set_error(&error);
                        return;
                    }
                }
            }
        };
        (protocol, protocol.into())
    };
    ctx.metrics.detect.detected(direction, outcome);
    tracing::debug!(protocol = %outcome, ?next, "forwarding");
    let connector = &ctx.http.pool.connector;
    match (protocol, next) {
        (Protocol::Http1 | Protocol::Http2, Next::App(app)) => {
            let version = version_of(protocol);
            let caller = inbound::http::Caller {
                labels: PeerLabels::plain(),
                peer,
                identity: None,
            };
            Box::pin(inbound::serve_http(&ctx, io, buf, version, app, caller)).await
        }
        (Protocol::Http1 | Protocol::Http2, Next::Out(route)) => {
            let version = version_of(protocol);
            let shutdown = ctx.shutdown.clone();
            Box::pin(outbound::http::serve(
                ctx.http.clone(),
                io,
                buf,
                version,
                route,
                shutdown,
            ))
            .await
        }
        (Protocol::Tls | Protocol::Opaque, next) => {
            let io = io::PrefixedIo::new(buf, io);
            match next {
                Next::App(app) => {
                    let subject = crate::policy::authz::Subject::Connection;
                    if ctx
                        .policy
                        .authorizes(peer, None, orig_dst.port(), subject)
                        .is_err()
                    {
                        return;
                    }
                    Box::pin(tcp::forward(io, &mut guard, &app, connector)).await
                }
                Next::Out(Route::Fixed(target)) => {
                    Box::pin(tcp::forward(io, &mut guard, &target, connector)).await
                }
                Next::Out(Route::Balanced(dest)) => {
                    let forward = outbound::tcp::forward_balanced(io, &mut guard, &dest, connector);
                    Box::pin(forward).await
                }
            }
        }
    }
}
