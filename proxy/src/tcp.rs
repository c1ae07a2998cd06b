//! Opaque TCP forwarding: splice the client to one target, or to an
//! endpoint of a discovered destination balanced per connection.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use weft_api::mesh::Protocol as MeshProtocol;

use crate::balance::EndpointState;
use crate::discovery::Destination;
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

/// Endpoints tried per connection before giving up: one that refuses is
/// skipped for the next (the client has sent nothing anywhere yet).
const OPAQUE_CONNECT_ATTEMPTS: usize = 3;

/// Opaque forwarding to a discovered destination: balanced per
/// connection, with connections in flight as the load.
pub async fn forward_balanced<C>(
    client: C,
    client_guard: &mut ConnectionGuard,
    dest: &Destination,
    connector: &Connector,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Some(routes) = dest.routes() else {
        return forward(client, client_guard, &Target::plain(dest.addr), connector).await;
    };
    let mut avoid: Option<Arc<EndpointState>> = None;
    for _ in 0..OPAQUE_CONNECT_ATTEMPTS {
        let Ok(endpoint) = routes.pick_for_connection(avoid.as_deref()) else {
            break;
        };
        let in_flight = endpoint.start();
        let started = std::time::Instant::now();
        match connector
            .connect(&endpoint.target, MeshProtocol::Opaque)
            .await
        {
            Ok((upstream, upstream_guard)) => {
                endpoint.observe(started.elapsed());
                routes.record_outcome(&endpoint, false);
                splice(
                    client,
                    client_guard,
                    upstream,
                    upstream_guard,
                    &endpoint.target,
                )
                .await;
                drop(in_flight);
                return;
            }
            Err(error) => {
                tracing::info!(service = %routes.service, %error, "endpoint unreachable; trying another");
                routes.record_outcome(&endpoint, true);
                drop(in_flight);
                avoid = Some(endpoint);
            }
        }
    }
    tracing::info!(service = %routes.service, "no reachable endpoint; closing the connection");
}

async fn splice<C>(
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
