//! The inbound side: connections from other proxies, over mesh mTLS,
//! recognised by their ClientHello ([`hello`]) on the app's port or by
//! arriving at the inbound port. The handshake proves the client's
//! identity, the mesh header names the protocol, and the connection goes
//! to the app on loopback with no detection: HTTP through
//! [`http::LocalApp`], anything else spliced. (Plaintext from unmeshed
//! clients takes the detection path of [`crate::connection`], then the
//! same service.)

pub(crate) mod hello;
pub(crate) mod http;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::BytesMut;

use crate::http::pool::Version;
use crate::listener::Listener;
use crate::metrics::PeerLabels;
use crate::metrics::identity::Refusal;
use crate::metrics::tcp::{ConnectionGuard, Side};
use crate::policy::Way;
use crate::transport::Target;
use crate::{io, mesh, tcp};

/// How long a peer may take to complete the mesh TLS handshake and header.
pub(crate) const MESH_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The app in this pod, reached over loopback so that the connection is
/// not redirected again.
pub(crate) fn local_app(orig_dst: SocketAddr, port: u16) -> SocketAddr {
    match orig_dst {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    }
}

/// Serves a connection from another proxy: mTLS, then the mesh header says
/// which protocol (and, at the inbound port, which local port); no
/// detection is needed.
pub(crate) async fn serve_mesh<I>(
    ctx: Arc<Listener>,
    stream: I,
    peer: SocketAddr,
    orig_dst: SocketAddr,
    arrival: mesh::Arrival,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let direction = ctx.direction;
    let Some(server) = ctx.mesh_server.clone() else {
        tracing::info!("mesh connection refused: this proxy has no identity");
        ctx.metrics
            .identity
            .refused(direction, Refusal::NoCertificate);
        return;
    };
    // Counted under the client's identity once the handshake tells it.
    let io = io::CountingIo::new(stream, Default::default(), Default::default());
    let accepted = mesh::accept(server, io, arrival, MESH_HANDSHAKE_TIMEOUT).await;
    let (mut tls, client, header) = match accepted {
        Ok(accepted) => accepted,
        Err(error) => {
            tracing::info!(%error, ?arrival, "mesh connection refused");
            ctx.metrics.identity.refused(direction, error.reason());
            return;
        }
    };
    // NetworkPolicy sees the app's port and the proven identity.
    if !ctx
        .policy
        .allows(Way::Ingress, peer, Some(&client), header.port)
    {
        return;
    }
    let peer_labels = PeerLabels::client(Arc::new(client.to_string()));
    let mut guard = ConnectionGuard::open(&ctx.metrics, direction, Side::Src, peer_labels.clone());
    let labels = guard.labels().clone();
    tls.get_mut().0.set_counters(
        ctx.metrics.tcp.read_bytes.get_or_create(&labels).clone(),
        ctx.metrics.tcp.write_bytes.get_or_create(&labels).clone(),
    );
    let target = Target::plain(local_app(orig_dst, header.port));
    tracing::debug!(%client, port = header.port, protocol = ?header.protocol, ?arrival, "mesh connection");
    match header.protocol {
        weft_api::mesh::Protocol::Http1 | weft_api::mesh::Protocol::Http2 => {
            let version = if header.protocol == weft_api::mesh::Protocol::Http2 {
                Version::Http2
            } else {
                Version::Http1
            };
            let buf = BytesMut::new();
            let caller = http::Caller {
                labels: peer_labels,
                peer,
                identity: Some(Arc::new(client)),
            };
            serve_http(&ctx, tls, buf, version, target, caller).await
        }
        weft_api::mesh::Protocol::Opaque => {
            let subject = crate::policy::authz::Subject::Connection;
            if ctx
                .policy
                .authorizes(peer, Some(&client), header.port, subject)
                .is_err()
            {
                return;
            }
            tcp::forward(tls, &mut guard, &target, &ctx.http.pool.connector).await
        }
    }
}

/// Whether a client at `source` may be a proxy that speaks mesh on app
/// ports, so that a connection to a port detection skips (a server that
/// speaks first) is worth waiting on for its ClientHello. Discovery knows
/// every pod: an address it says is no meshed pod does not wait. While it
/// has not answered, the connection waits, so mesh traffic keeps working
/// through a controller outage (an unmeshed client then waits out the
/// detection timeout). Without discovery only pinned peers are meshed.
pub(crate) async fn source_may_be_mesh(ctx: &Listener, source: SocketAddr, port: u16) -> bool {
    if let Some(peer) = ctx.endpoints.lookup(source.ip()) {
        return peer.app_port;
    }
    let Some(resolver) = &ctx.resolver else {
        return false;
    };
    // Keyed by the local port, so the cache holds one entry per client
    // pod and server-speaks-first port.
    let dest = resolver.resolve(SocketAddr::new(source.ip(), port)).await;
    if !dest.answered() {
        return true;
    }
    dest.routes()
        .is_some_and(|routes| routes.mesh_peer_at(source.ip()).is_some_and(|p| p.app_port))
}

/// Serves an inbound HTTP connection, meshed or plaintext, to the app.
pub(crate) async fn serve_http<I>(
    ctx: &Listener,
    io: I,
    buf: BytesMut,
    version: Version,
    app: Target,
    caller: http::Caller,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let labels = caller.labels.clone();
    let app = http::LocalApp {
        ctx: ctx.http.clone(),
        app: Arc::new(app),
        version,
        caller,
        policy: ctx.policy.clone(),
    };
    let service = tower::service_fn(move |req| app.clone().call(req));
    crate::http::server::serve(
        ctx.http.clone(),
        io,
        buf,
        version,
        labels,
        service,
        ctx.shutdown.clone(),
    )
    .await
}
