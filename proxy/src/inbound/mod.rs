//! The inbound side: connections from other proxies, over mesh mTLS.
//! The handshake proves the client's identity, the mesh header names the
//! app's port and protocol, and the connection goes to the app on
//! loopback with no detection: HTTP through [`http::LocalApp`], anything
//! else spliced. (Plaintext from unmeshed clients takes the detection path
//! of [`crate::connection`], then the same service.)

pub(crate) mod http;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::http::pool::Version;
use crate::listener::Listener;
use crate::metrics::PeerLabels;
use crate::metrics::identity::Refusal;
use crate::metrics::tcp::{ConnectionGuard, Side};
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
/// which local port and protocol; no detection is needed.
pub(crate) async fn serve_mesh(ctx: Arc<Listener>, stream: TcpStream, orig_dst: SocketAddr) {
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
    let (mut tls, client, header) = match mesh::accept(server, io, MESH_HANDSHAKE_TIMEOUT).await {
        Ok(accepted) => accepted,
        Err(error) => {
            tracing::info!(%error, "mesh connection refused");
            ctx.metrics.identity.refused(direction, error.reason());
            return;
        }
    };
    let peer_labels = PeerLabels::client(Arc::new(client.to_string()));
    let mut guard = ConnectionGuard::open(&ctx.metrics, direction, Side::Src, peer_labels.clone());
    let labels = guard.labels().clone();
    tls.get_mut().0.set_counters(
        ctx.metrics.tcp.read_bytes.get_or_create(&labels).clone(),
        ctx.metrics.tcp.write_bytes.get_or_create(&labels).clone(),
    );
    let target = Target::plain(local_app(orig_dst, header.port));
    tracing::debug!(%client, port = header.port, protocol = ?header.protocol, "mesh connection");
    match header.protocol {
        weft_api::mesh::Protocol::Http1 | weft_api::mesh::Protocol::Http2 => {
            let version = if header.protocol == weft_api::mesh::Protocol::Http2 {
                Version::Http2
            } else {
                Version::Http1
            };
            serve_http(&ctx, tls, BytesMut::new(), version, target, peer_labels).await
        }
        weft_api::mesh::Protocol::Opaque => {
            tcp::forward(tls, &mut guard, &target, &ctx.http.pool.connector).await
        }
    }
}

/// Serves an inbound HTTP connection, meshed or plaintext, to the app.
pub(crate) async fn serve_http<I>(
    ctx: &Listener,
    io: I,
    buf: BytesMut,
    version: Version,
    app: Target,
    client: PeerLabels,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let app = http::LocalApp {
        ctx: ctx.http.clone(),
        app: Arc::new(app),
        version,
        client: client.clone(),
    };
    let service = hyper::service::service_fn(move |req| app.clone().call(req));
    crate::http::server::serve(
        ctx.http.clone(),
        io,
        buf,
        version,
        client,
        service,
        ctx.shutdown.clone(),
    )
    .await
}
