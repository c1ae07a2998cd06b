//! TLS between proxies, and to the controller.
//!
//! Peers are authenticated by SPIFFE identity, not by DNS name: a client
//! expecting identity `X` sends `X`'s [`SpiffeId::tls_server_name`] as SNI,
//! and [`SpiffeServerVerifier`] accepts a server certificate only if it
//! chains to a trust anchor and its one URI SAN maps to that same name.
//! Servers require a client certificate chaining to a trust anchor and
//! read the client's identity from it. Only TLS 1.3; rustls prefers the
//! hybrid post-quantum key exchange X25519MLKEM768 when both sides have it.
//! Every verifier follows the live [`TrustAnchors`].

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::sync::watch;
use weft_api::identity::SpiffeId;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// The crypto provider every TLS config here uses (aws-lc-rs, which has
/// the post-quantum hybrid key exchange).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Why a trust bundle could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("not PEM: {0}")]
    NotPem(#[source] std::io::Error),
    #[error("not a usable trust anchor: {0}")]
    Unusable(#[source] rustls::Error),
    #[error("no PEM certificate found")]
    Empty,
}

mod anchors;
pub use anchors::{AnchorSet, LiveClientVerifier, TrustAnchors};

/// The bundle a previous run left in `path`, if there is a usable one.
pub fn read_anchor_cache(path: &std::path::Path) -> Option<AnchorSet> {
    let pem = std::fs::read(path).ok()?;
    match AnchorSet::from_pem(&pem) {
        Ok(set) => Some(set),
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "ignoring the cached trust anchors");
            None
        }
    }
}

/// Parses PEM trust anchors, the proxy's first bundle.
pub fn load_anchors(pem: &[u8]) -> Result<Arc<TrustAnchors>, AnchorError> {
    Ok(TrustAnchors::new(AnchorSet::from_pem(pem)?))
}

/// The identity in a certificate's single SPIFFE URI SAN, if it has
/// exactly one.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
    let (_, cert) = X509Certificate::from_der(cert).ok()?;
    let mut uris = cert
        .extensions()
        .iter()
        .filter_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let first = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    first.parse().ok()
}

/// The proxy's current workload certificate, swapped in place on renewal.
/// Connections keep the certificate they were made with; new handshakes
/// use the new one, so a renewal drops nothing.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwapOption<CertifiedKey>,
    ready: watch::Sender<bool>,
}

impl Default for CertStore {
    fn default() -> Self {
        CertStore {
            current: ArcSwapOption::empty(),
            ready: watch::Sender::new(false),
        }
    }
}

impl CertStore {
    pub fn set(&self, key: CertifiedKey) {
        self.current.store(Some(Arc::new(key)));
        self.ready.send_replace(true);
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the first certificate has arrived.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}

/// Verifies a server's chain against the trust anchors and its SPIFFE
/// identity against the one the client expects (carried as SNI).
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    anchors: Arc<TrustAnchors>,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn new(anchors: Arc<TrustAnchors>) -> Self {
        SpiffeServerVerifier {
            anchors,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            self.anchors.current().roots(),
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let identity = spiffe_id_of(end_entity).ok_or_else(|| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(NoIdentity),
            )))
        })?;
        match server_name {
            ServerName::DnsName(name) if name.as_ref() == identity.tls_server_name() => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug)]
struct NoIdentity;

impl std::fmt::Display for NoIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("certificate has no single SPIFFE workload identity")
    }
}

impl std::error::Error for NoIdentity {}

/// The server name a client sends when it expects `identity`.
pub fn server_name_for(identity: &SpiffeId) -> Result<ServerName<'static>, NoTlsName> {
    ServerName::try_from(identity.tls_server_name()).map_err(|source| NoTlsName {
        identity: identity.to_string(),
        source,
    })
}

/// An identity whose SNI form is not a valid DNS name.
#[derive(Debug, thiserror::Error)]
#[error("identity {identity} has no valid TLS name")]
pub struct NoTlsName {
    identity: String,
    #[source]
    source: rustls::pki_types::InvalidDnsNameError,
}

/// Client side of proxy-to-proxy mTLS.
pub fn mesh_client_config(
    anchors: Arc<TrustAnchors>,
    certs: Arc<CertStore>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(anchors)))
        .with_client_cert_resolver(certs);
    config.alpn_protocols = vec![weft_api::mesh::ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Server side of proxy-to-proxy mTLS: a client certificate under the
/// trust anchors is required, and so is Weft's ALPN protocol.
pub fn mesh_server_config(
    anchors: Arc<TrustAnchors>,
    certs: Arc<CertStore>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(LiveClientVerifier::new(anchors))
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![weft_api::mesh::ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Client config for the controller's gRPC server (no client certificate:
/// the token proves who we are).
pub fn controller_client_config(
    anchors: Arc<TrustAnchors>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(anchors)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
