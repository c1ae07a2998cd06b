//! Outbound opaque TCP to a discovered destination: the same routes,
//! endpoints and breaker as HTTP, balanced per connection with connections
//! in flight as the load; an endpoint that refuses is skipped.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use weft_api::mesh::Protocol as MeshProtocol;

use crate::balance::EndpointState;
use crate::discovery::Destination;
use crate::metrics::tcp::ConnectionGuard;
use crate::tcp::{Opened, connect, splice};
use crate::transport::{Connector, Target};

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
    if let Some(opened) = connect_balanced(client_guard, dest, connector).await {
        splice(client, client_guard, opened).await
    }
}

/// Opens the upstream for [`forward_balanced`]: an endpoint that refuses is
/// skipped for the next.
pub async fn connect_balanced(
    client_guard: &mut ConnectionGuard,
    dest: &Destination,
    connector: &Connector,
) -> Option<Opened> {
    let Some(routes) = dest.routes() else {
        return connect(client_guard, &Target::plain(dest.addr), connector).await;
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
            Ok((upstream, guard)) => {
                endpoint.observe(started.elapsed());
                routes.record_outcome(&endpoint, false);
                return Some(Opened {
                    upstream,
                    guard,
                    target: endpoint.target.clone(),
                    in_flight: Some(in_flight),
                });
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
    None
}
