//! Opaque TCP forwarding: splice the client to one target. (Outbound to a
//! discovered destination, balanced per connection, is
//! `crate::outbound::tcp`.)

use tokio::io::{AsyncRead, AsyncWrite};
use weft_api::mesh::Protocol as MeshProtocol;

use crate::metrics::tcp::ConnectionGuard;
use crate::transport::{ConnectError, Connector, Target, Upstream};

/// Copies both ways until both sides are done, passing half-closes through.
pub async fn forward<C>(
    client: C,
    client_guard: &mut ConnectionGuard,
    target: &Target,
    connector: &Connector,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    match connector.connect(target, MeshProtocol::Opaque).await {
        Ok((upstream, upstream_guard)) => {
            splice(client, client_guard, upstream, upstream_guard, target).await
        }
        Err(error) => {
            tracing::info!(%error, "opaque forward failed");
            if let ConnectError::Io { source, .. } = &error {
                client_guard.set_error(source);
            }
        }
    }
}

pub(crate) async fn splice<C>(
    mut client: C,
    client_guard: &mut ConnectionGuard,
    mut upstream: Upstream,
    mut upstream_guard: ConnectionGuard,
    target: &Target,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => {
            tracing::debug!(target = %target.addr, sent, received, "opaque stream done")
        }
        Err(error) => {
            tracing::debug!(target = %target.addr, %error, "opaque stream failed");
            client_guard.set_error(&error);
            upstream_guard.set_error(&error);
        }
    }
}
