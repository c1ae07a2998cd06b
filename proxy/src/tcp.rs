//! Opaque TCP forwarding: splice the client to one target. (Outbound to a
//! discovered destination, balanced per connection, is
//! `crate::outbound::tcp`.)

use tokio::io::{AsyncRead, AsyncWrite};
use weft_api::mesh::Protocol as MeshProtocol;

use crate::balance::InFlight;
use crate::metrics::tcp::ConnectionGuard;
use crate::transport::{ConnectError, Connector, Target, Upstream};

/// An upstream connection opened for opaque bytes, before any were sent.
#[derive(Debug)]
pub struct Opened {
    pub upstream: Upstream,
    pub guard: ConnectionGuard,
    pub target: Target,
    /// The balanced endpoint's load while the connection lasts.
    pub in_flight: Option<InFlight>,
}

/// Copies both ways until both sides are done, passing half-closes through.
pub async fn forward<C>(
    client: C,
    client_guard: &mut ConnectionGuard,
    target: &Target,
    connector: &Connector,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(opened) = connect(client_guard, target, connector).await {
        splice(client, client_guard, opened).await
    }
}

/// Opens the upstream for [`forward`]; a failure is logged and marked on
/// the client's connection.
pub async fn connect(
    client_guard: &mut ConnectionGuard,
    target: &Target,
    connector: &Connector,
) -> Option<Opened> {
    match connector.connect(target, MeshProtocol::Opaque).await {
        Ok((upstream, guard)) => Some(Opened {
            upstream,
            guard,
            target: target.clone(),
            in_flight: None,
        }),
        Err(error) => {
            tracing::info!(%error, "opaque forward failed");
            if let ConnectError::Io { source, .. } = &error {
                client_guard.set_error(source);
            }
            None
        }
    }
}

/// Copies both ways between the client and an opened upstream.
pub async fn splice<C>(mut client: C, client_guard: &mut ConnectionGuard, opened: Opened)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Opened {
        mut upstream,
        guard: mut upstream_guard,
        target,
        in_flight,
    } = opened;
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
    drop(in_flight);
}
