//! The controller's own TLS: proxies send their tokens only to a server
//! that proves the controller's workload identity under the mesh's trust
//! anchor. The controller issues its serving certificate to itself from
//! the current issuer, and re-issues it after an issuer rotation and at
//! half its lifetime.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use weft_api::identity::SpiffeId;

use crate::ca::Ca;

/// The serving certificate in use, swapped in place.
#[derive(Debug)]
pub struct ServingCert {
    identity: SpiffeId,
    current: ArcSwap<CertifiedKey>,
    not_after: ArcSwap<SystemTime>,
    issued_at: ArcSwap<SystemTime>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes a key, a CSR and a certificate for `identity` from `ca`.
fn issue(ca: &Ca, identity: &SpiffeId) -> anyhow::Result<(CertifiedKey, SystemTime)> {
    let (key, issued) = ca.issue_with_new_key(identity)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))?;
    let mut chain = vec![issued.leaf];
    chain.extend(issued.intermediates);
    Ok((CertifiedKey::new(chain, signing_key), issued.not_after))
}

impl ServingCert {
    pub fn new(ca: &Ca, identity: SpiffeId) -> anyhow::Result<Arc<Self>> {
        let (key, not_after) = issue(ca, &identity)?;
        Ok(Arc::new(ServingCert {
            identity,
            current: ArcSwap::from_pointee(key),
            not_after: ArcSwap::from_pointee(not_after),
            issued_at: ArcSwap::from_pointee(SystemTime::now()),
        }))
    }

    /// Re-issues now.
    pub fn renew(&self, ca: &Ca) {
        match issue(ca, &self.identity) {
            Ok((key, not_after)) => {
                self.current.store(Arc::new(key));
                self.not_after.store(Arc::new(not_after));
                self.issued_at.store(Arc::new(SystemTime::now()));
                tracing::info!(identity = %self.identity, not_after = %crate::ca::humantime(not_after), "serving certificate renewed");
            }
            Err(error) => tracing::error!(%error, "cannot renew the serving certificate"),
        }
    }

    /// True once half the certificate's lifetime has passed.
    pub fn due(&self) -> bool {
        let issued = **self.issued_at.load();
        let not_after = **self.not_after.load();
        let life = not_after.duration_since(issued).unwrap_or_default();
        issued.elapsed().unwrap_or_default() >= life / 2
    }

    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Watches the issuer files and keeps the serving certificate fresh.
pub async fn maintain(ca: Arc<Ca>, serving: Arc<ServingCert>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reloaded = ca.reload_if_changed();
        ca.watch_expiry();
        if reloaded || serving.due() {
            serving.renew(&ca);
        }
    }
}

/// A TLS connection handed to tonic.
#[derive(Debug)]
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = SocketAddr;
    fn connect_info(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP, completes TLS handshakes off the accept loop, and yields
/// the finished connections.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(TlsConn { stream, peer })).await;
                    }
                    Ok(Err(error)) => tracing::info!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
