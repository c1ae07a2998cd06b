//! Upstream connections: to a plain address, or over mesh mTLS to
//! another proxy with the mesh header; the [`Target`] type every stage
//! that connects names its destination with.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use weft_api::mesh::{Header, Protocol as MeshProtocol};

use crate::io::CountingIo;
use crate::mesh::{MeshClient, MeshPeer};
use crate::metrics::identity::Refusal;
use crate::metrics::tcp::{ConnectionGuard, Side, TcpLabels};
use crate::metrics::{Direction, Dst, Metrics, PeerLabels};
use crate::policy::{Policy, Way};

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
    #[error("mTLS to {addr} (expecting {identity}): {source}")]
    Tls {
        addr: SocketAddr,
        identity: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no workload certificate yet; cannot open mTLS to {addr}")]
    NoCertificate { addr: SocketAddr },
    #[error("NetworkPolicy refuses connections to {addr}")]
    Denied { addr: SocketAddr },
}

/// Where a connection goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The address the app dialled (outbound), or the app's own loopback
    /// address (inbound).
    pub addr: SocketAddr,
    /// Set when the destination is a meshed pod: the identity its proxy
    /// must prove. The connection is then mTLS to that proxy, on the
    /// app's port or its inbound port as [`MeshPeer::app_port`] says.
    pub mesh: Option<Arc<MeshPeer>>,
    /// What discovery said the endpoint is (outbound only).
    pub dst: Dst,
}

impl Target {
    pub fn plain(addr: SocketAddr) -> Self {
        Target {
            addr,
            mesh: None,
            dst: Dst::default(),
        }
    }

    /// Labels for metrics about this hop.
    pub fn peer_labels(&self) -> PeerLabels {
        let labels = match &self.mesh {
            Some(peer) => PeerLabels::server(peer.label.clone()),
            None => PeerLabels::plain(),
        };
        labels.with_dst(self.dst.clone())
    }
}

/// An upstream connection with its metrics attached.
#[derive(Debug)]
pub enum Upstream {
    Plain(CountingIo<TcpStream>),
    Mesh(Box<tokio_rustls::client::TlsStream<CountingIo<TcpStream>>>),
}

/// Opens upstream connections for one direction.
#[derive(Debug, Clone)]
pub struct Connector {
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub direction: Direction,
    /// Present when the proxy has a workload identity.
    pub mesh: Option<Arc<MeshClient>>,
    /// Egress NetworkPolicy, checked before each outbound connection.
    pub egress: Option<Arc<Policy>>,
}

impl Connector {
    /// Connects to `target`, counting the connection under `peer="dst"`.
    /// A meshed target gets mTLS and the mesh header announcing `protocol`.
    pub async fn connect(
        &self,
        target: &Target,
        protocol: MeshProtocol,
    ) -> Result<(Upstream, ConnectionGuard), ConnectError> {
        if let Some(policy) = &self.egress
            && !policy.allows(Way::Egress, target.addr, None, target.addr.port())
        {
            return Err(ConnectError::Denied { addr: target.addr });
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (peer, mesh) = match (&target.mesh, &self.mesh) {
            (Some(peer), Some(mesh)) => (peer, mesh),
            _ => {
                let (io, guard) = self
                    .tcp(target.addr, target.peer_labels(), deadline)
                    .await?;
                return Ok((Upstream::Plain(io), guard));
            }
        };
        // The app's port keeps its meaning on the wire (NetworkPolicy);
        // a peer that cannot take that gets its inbound port.
        // A connection to this pod's own address never crosses its
        // inbound redirect (locally made packets skip PREROUTING), so it
        // goes straight to the inbound port.
        let addr = match peer.app_port && !is_own_address(target.addr.ip()) {
            true => target.addr,
            false => SocketAddr::new(target.addr.ip(), weft_api::ports::INBOUND),
        };
        if tokio::time::timeout_at(deadline, mesh.certs.wait_ready())
            .await
            .is_err()
        {
            self.metrics
                .identity
                .refused(self.direction, Refusal::NoCertificate);
            return Err(ConnectError::NoCertificate { addr });
        }
        let (io, mut guard) = self.tcp(addr, target.peer_labels(), deadline).await?;
        let tls_error = |source| ConnectError::Tls {
            addr,
            identity: peer.identity.to_string(),
            source,
        };
        let connector = tokio_rustls::TlsConnector::from(mesh.config.clone());
        let mut tls = match tokio::time::timeout_at(
            deadline,
            connector.connect(peer.server_name.clone(), io),
        )
        .await
        {
            Err(_) => {
                return Err(ConnectError::Timeout {
                    addr,
                    timeout: self.timeout,
                });
            }
            Ok(Err(source)) => {
                guard.set_error(&source);
                return Err(tls_error(source));
            }
            Ok(Ok(tls)) => tls,
        };
        let header = Header {
            port: target.addr.port(),
            protocol,
        };
        tls.write_all(&header.encode()).await.map_err(tls_error)?;
        Ok((Upstream::Mesh(Box::new(tls)), guard))
    }

    async fn tcp(
        &self,
        addr: SocketAddr,
        remote: PeerLabels,
        deadline: tokio::time::Instant,
    ) -> Result<(CountingIo<TcpStream>, ConnectionGuard), ConnectError> {
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(ConnectError::Timeout {
                    addr,
                    timeout: self.timeout,
                });
            }
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Ok(Ok(stream)) => stream,
        };
        // Small request/response exchanges must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let guard = ConnectionGuard::open(&self.metrics, self.direction, Side::Dst, remote);
        let io = counting(&self.metrics, stream, guard.labels());
        Ok((io, guard))
    }
}

/// Whether `ip` is an address of this network namespace (the pod's own).
/// Read once: a pod keeps its addresses for its whole life.
fn is_own_address(ip: std::net::IpAddr) -> bool {
    static OWN: std::sync::OnceLock<Vec<std::net::IpAddr>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
            return Vec::new();
        };
        addrs
            .filter_map(|a| a.address)
            .filter_map(|a| {
                if let Some(v4) = a.as_sockaddr_in() {
                    Some(std::net::IpAddr::V4(v4.ip()))
                } else {
                    a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))
                }
            })
            .collect()
    })
    .contains(&ip)
}

/// Wraps `stream` so its bytes count under `labels`.
pub fn counting<T>(metrics: &Metrics, stream: T, labels: &TcpLabels) -> CountingIo<T> {
    CountingIo::new(
        stream,
        metrics.tcp.read_bytes.get_or_create(labels).clone(),
        metrics.tcp.write_bytes.get_or_create(labels).clone(),
    )
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Upstream::Mesh(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Upstream::Mesh(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Upstream::Mesh(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Plain(io) => io.is_write_vectored(),
            Upstream::Mesh(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_flush(cx),
            Upstream::Mesh(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Upstream::Mesh(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
