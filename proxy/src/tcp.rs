//! Opaque TCP forwarding and upstream connection setup.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::io::CountingIo;
use crate::metrics::{ConnectionGuard, Direction, Metrics, TcpLabels};

/// Why an upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// An upstream connection with its metrics attached.
pub type Upstream = CountingIo<TcpStream>;

/// Connects to `addr`, counting the connection under `peer="dst"`.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    metrics: &Arc<Metrics>,
    direction: Direction,
) -> Result<(Upstream, ConnectionGuard), ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Ok(Ok(stream)) => stream,
    };
    // Small request/response exchanges must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let guard = ConnectionGuard::open(metrics, direction, "dst");
    let labels = TcpLabels {
        direction: direction.as_str(),
        peer: "dst",
    };
    let io = CountingIo::new(
        stream,
        metrics.tcp_read_bytes.get_or_create(&labels).clone(),
        metrics.tcp_write_bytes.get_or_create(&labels).clone(),
    );
    Ok((io, guard))
}

/// Copies both ways until both sides are done, passing half-closes through.
pub async fn forward<C>(
    mut client: C,
    client_guard: &mut ConnectionGuard,
    target: SocketAddr,
    timeout: Duration,
    metrics: &Arc<Metrics>,
    direction: Direction,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut upstream, mut upstream_guard) =
        match connect(target, timeout, metrics, direction).await {
            Ok(ok) => ok,
            Err(error) => {
                tracing::info!(%error, "opaque forward failed");
                if let ConnectError::Io { source, .. } = &error {
                    client_guard.set_error(source);
                }
                return;
            }
        };
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => tracing::debug!(%target, sent, received, "opaque stream done"),
        Err(error) => {
            tracing::debug!(%target, %error, "opaque stream failed");
            client_guard.set_error(&error);
            upstream_guard.set_error(&error);
        }
    }
}
