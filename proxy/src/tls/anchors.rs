//! The trust anchors in use, replaced live.
//!
//! The proxy starts from the anchors in its environment (the bundle the
//! injector put there when the pod was made). From then on, every
//! certificate the controller issues comes with the bundle it was issued
//! under, and the proxy trusts that bundle instead: the anchors follow a
//! rotation without a pod restart. The bundle arrives over the TLS channel
//! to the controller, which the current anchors authenticated.
//!
//! Every verifier reads the current set at each handshake; connections
//! made before a change keep what they verified.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::{AnchorError, provider};

/// One bundle of anchors, with what each verifier builds from it.
#[derive(Debug)]
pub struct AnchorSet {
    roots: Arc<RootCertStore>,
    certs: Vec<CertificateDer<'static>>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl AnchorSet {
    /// A bundle from DER certificates; refused when empty or unusable.
    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Self, AnchorError> {
        if certs.is_empty() {
            return Err(AnchorError::Empty);
        }
        let mut roots = RootCertStore::empty();
        for cert in &certs {
            roots.add(cert.clone()).map_err(AnchorError::Unusable)?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| AnchorError::Unusable(rustls::Error::General(e.to_string())))?;
        Ok(AnchorSet {
            roots,
            certs,
            client_verifier,
        })
    }

    /// A bundle from PEM.
    pub fn from_pem(pem: &[u8]) -> Result<Self, AnchorError> {
        let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &pem[..]).collect();
        Self::from_der(certs.map_err(AnchorError::NotPem)?)
    }

    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// How many anchors; never zero.
    pub fn count(&self) -> usize {
        self.certs.len()
    }

    /// [`weft_api::identity::fingerprint`] of each anchor, in bundle order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| weft_api::identity::fingerprint(c))
            .collect()
    }

    /// The bundle as PEM, for the cache file.
    pub fn to_pem(&self) -> String {
        self.certs
            .iter()
            .map(|c| {
                pem::encode_config(
                    &pem::Pem::new("CERTIFICATE", c.to_vec()),
                    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
                )
            })
            .collect()
    }

    fn same_certs(&self, other: &AnchorSet) -> bool {
        self.certs == other.certs
    }
}

/// The anchors every verifier of this proxy uses, swapped in place.
#[derive(Debug)]
pub struct TrustAnchors {
    current: ArcSwap<AnchorSet>,
}

impl TrustAnchors {
    pub fn new(set: AnchorSet) -> Arc<Self> {
        Arc::new(TrustAnchors {
            current: ArcSwap::from_pointee(set),
        })
    }

    pub fn current(&self) -> Arc<AnchorSet> {
        self.current.load_full()
    }

    /// Trusts `set` from now on. Returns whether it differs from the
    /// bundle in use.
    pub fn replace(&self, set: AnchorSet) -> bool {
        if self.current.load().same_certs(&set) {
            return false;
        }
        self.current.store(Arc::new(set));
        true
    }
}

/// The server side's client-certificate check, against the anchors of
/// the moment (rustls fixes a server config's verifier; this one follows
/// [`TrustAnchors`] by delegating to the current set's webpki verifier).
#[derive(Debug)]
pub struct LiveClientVerifier {
    anchors: Arc<TrustAnchors>,
}

impl LiveClientVerifier {
    pub fn new(anchors: Arc<TrustAnchors>) -> Arc<Self> {
        Arc::new(LiveClientVerifier { anchors })
    }
}

impl ClientCertVerifier for LiveClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would borrow from a set that can be replaced meanwhile,
        // and proxies have one certificate to send whatever the hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.anchors
            .current()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.anchors
            .current()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.anchors
            .current()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.anchors
            .current()
            .client_verifier
            .supported_verify_schemes()
    }
}
