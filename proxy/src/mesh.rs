//! Proxy-to-proxy connections (framing in [`weft_api::mesh`]).
//!
//! Outbound, a destination known to be meshed gets an mTLS connection to
//! the port the app dialled, or to its proxy's inbound port when that
//! proxy predates app-port mesh (see `transport::Connector`). Inbound, a
//! ClientHello offering Weft's ALPN on any port (`inbound::hello`), or any
//! connection addressed to the inbound port itself, is mesh traffic: the
//! TLS handshake must succeed with a client certificate under the trust
//! anchors and Weft's ALPN, then the header says which protocol the client
//! proxy found (and, at the inbound port, where the app wanted to go).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use weft_api::identity::SpiffeId;
use weft_api::mesh::{ALPN, Header};

use crate::io::CountingIo;
use crate::metrics::identity::Refusal;
use crate::tls::{self, CertStore};

/// A meshed destination: the identity its proxy must present.
#[derive(Debug)]
pub struct MeshPeer {
    pub identity: SpiffeId,
    /// The identity as a metric label value.
    pub label: Arc<String>,
    /// The SNI that asks for (and lets the verifier check) that identity.
    pub server_name: ServerName<'static>,
    /// Its proxy takes mesh mTLS on the app's port itself; otherwise
    /// (an older proxy, or a port the pod skips inbound) the connection
    /// goes to the inbound port and the header names the app's port.
    pub app_port: bool,
}

impl MeshPeer {
    pub fn new(identity: SpiffeId, app_port: bool) -> Result<Self, tls::NoTlsName> {
        Ok(MeshPeer {
            server_name: tls::server_name_for(&identity)?,
            label: Arc::new(identity.to_string()),
            identity,
            app_port,
        })
    }
}

impl PartialEq for MeshPeer {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity && self.app_port == other.app_port
    }
}

impl Eq for MeshPeer {}

impl Hash for MeshPeer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity.hash(state);
        self.app_port.hash(state);
    }
}

/// What outbound mTLS needs.
#[derive(Debug)]
pub struct MeshClient {
    pub config: Arc<rustls::ClientConfig>,
    pub certs: Arc<CertStore>,
}

/// Which addresses are meshed pods, and as whom. A static table until
/// discovery (a later issue) supplies it; addresses not in it are
/// forwarded plain, as before.
#[derive(Debug, Default)]
pub struct Endpoints {
    by_ip: HashMap<IpAddr, Arc<MeshPeer>>,
}

impl Endpoints {
    pub fn new(entries: &[(IpAddr, SpiffeId)]) -> Result<Self, tls::NoTlsName> {
        let mut by_ip = HashMap::new();
        for (ip, identity) in entries {
            // A static table names proxies of this same version.
            by_ip.insert(*ip, Arc::new(MeshPeer::new(identity.clone(), true)?));
        }
        Ok(Endpoints { by_ip })
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<MeshPeer>> {
        self.by_ip.get(&ip).cloned()
    }
}

/// Why an inbound mesh connection was refused; each is a metric reason.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error("client did not negotiate Weft's ALPN protocol")]
    Alpn,
    #[error("client certificate has no workload identity")]
    NoIdentity,
    #[error("bad mesh header: {0}")]
    Header(String),
}

impl AcceptError {
    pub fn reason(&self) -> Refusal {
        match self {
            AcceptError::Handshake(_) | AcceptError::HandshakeTimeout => Refusal::TlsHandshake,
            AcceptError::Alpn => Refusal::Alpn,
            AcceptError::NoIdentity => Refusal::NoIdentity,
            AcceptError::Header(_) => Refusal::MeshHeader,
        }
    }
}

/// An accepted, authenticated mesh connection.
pub type MeshStream<I> = tokio_rustls::server::TlsStream<CountingIo<I>>;

/// Where a mesh connection arrived, which decides the app's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// At the inbound port (proxies from before app-port mesh): the
    /// header names the app's port.
    InboundPort,
    /// At the app's port itself: the header must name that same port, so
    /// a client cannot be let in on one port and reach another.
    AppPort(u16),
}

/// Completes the server side of a mesh connection: handshake, client
/// identity, header.
pub async fn accept<I>(
    config: Arc<rustls::ServerConfig>,
    io: CountingIo<I>,
    arrival: Arrival,
    timeout: Duration,
) -> Result<(MeshStream<I>, SpiffeId, Header), AcceptError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let mut stream = match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
        Err(_) => return Err(AcceptError::HandshakeTimeout),
        Ok(Err(e)) => return Err(AcceptError::Handshake(e)),
        Ok(Ok(stream)) => stream,
    };
    let (_, session) = stream.get_ref();
    // rustls refuses a client whose ALPN list lacks ours, but lets one
    // that offers no ALPN at all through.
    if session.alpn_protocol() != Some(ALPN) {
        return Err(AcceptError::Alpn);
    }
    let identity = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(tls::spiffe_id_of)
        .ok_or(AcceptError::NoIdentity)?;
    let mut header = [0u8; Header::LEN];
    match tokio::time::timeout_at(deadline, stream.read_exact(&mut header)).await {
        Err(_) => return Err(AcceptError::Header("timed out".into())),
        Ok(Err(e)) => return Err(AcceptError::Header(e.to_string())),
        Ok(Ok(_)) => {}
    }
    let header = Header::decode(&header).map_err(|e| AcceptError::Header(e.to_string()))?;
    if let Arrival::AppPort(port) = arrival
        && header.port != port
    {
        return Err(AcceptError::Header(format!(
            "names port {} on a connection to port {port}",
            header.port
        )));
    }
    Ok((stream, identity, header))
}
