//! The identity CA: signs workload certificates with the issuer, and
//! reloads the trust anchors and the issuer when their files change.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use weft_api::identity::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::pki::IssuerPaths;
use metrics::{IdentityMetrics, Reload};

pub mod expiry;
pub mod metrics;

/// The issuer files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Why a CSR was not signed. Each maps to a `reason` label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrRefusal {
    #[error("CSR cannot be parsed or its signature does not verify: {0}")]
    Malformed(String),
    #[error("CSR key must be ECDSA P-256")]
    UnsupportedKey,
    #[error("CSR must carry exactly one SAN, the URI {expected}; it carries {found}")]
    SanMismatch { expected: String, found: String },
    #[error("identity {0} is not in this mesh's trust domain")]
    TrustDomain(String),
}

impl CsrRefusal {
    /// Every value [`Self::reason`] can take.
    pub const REASONS: [&'static str; 4] = [
        "malformed_csr",
        "unsupported_key",
        "csr_san_mismatch",
        "trust_domain",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            CsrRefusal::Malformed(_) => "malformed_csr",
            CsrRefusal::UnsupportedKey => "unsupported_key",
            CsrRefusal::SanMismatch { .. } => "csr_san_mismatch",
            CsrRefusal::TrustDomain(_) => "trust_domain",
        }
    }
}

/// The anchors and the issuer in use, swapped as one so that a
/// certificate and the bundle sent with it always come from the same
/// files, with the raw files (to detect changes).
struct Material {
    anchors: Arc<[CertificateDer<'static>]>,
    anchor_validity: Vec<expiry::Validity>,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    raw: [Vec<u8>; 3],
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub leaf: CertificateDer<'static>,
    /// The issuer, leaf first order after the leaf.
    pub intermediates: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
    /// The trust anchors the leaf was issued under: what the holder
    /// should trust from now on.
    pub anchors: Arc<[CertificateDer<'static>]>,
}

/// Settings for what the CA issues.
#[derive(Debug, Clone)]
pub struct CaSettings {
    pub trust_domain: String,
    pub leaf_lifetime: Duration,
    /// Certificates are valid from this long before they were signed, for
    /// peers whose clocks lag.
    pub clock_skew: Duration,
}

pub struct Ca {
    settings: CaSettings,
    paths: IssuerPaths,
    material: ArcSwap<Material>,
    metrics: Arc<IdentityMetrics>,
    expiry: expiry::ExpiryWatch,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("settings", &self.settings)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

/// The anchor, issuer certificate and issuer key files, as read.
fn read_material(paths: &IssuerPaths) -> Result<[Vec<u8>; 3], LoadError> {
    Ok([read(&paths.anchors)?, read(&paths.cert)?, read(&paths.key)?])
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn pem_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &pem[..]).collect();
    let certs = certs.map_err(|e| LoadError::Invalid(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(LoadError::Invalid(format!("{what}: no PEM certificate")));
    }
    Ok(certs)
}

fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, LoadError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| LoadError::Invalid(format!("{what} is not a certificate: {e}")))
}

fn unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// Checks the anchors, and the issuer certificate and key against them,
/// and loads them.
fn load_material(raw: [Vec<u8>; 3]) -> Result<Material, LoadError> {
    let [anchors_pem, cert_pem, key_pem] = &raw;
    let anchors = pem_certs(anchors_pem, "trust anchors")?;
    let mut anchor_validity = Vec::new();
    for anchor in &anchors {
        let parsed = parse_cert(anchor, "trust anchor")?;
        let validity = parsed.validity();
        anchor_validity.push(expiry::Validity {
            what: format!("trust anchor {}", parsed.subject()),
            not_before: unix(validity.not_before.timestamp()),
            not_after: unix(validity.not_after.timestamp()),
        });
    }
    let cert = pem_certs(cert_pem, "issuer certificate")?.swap_remove(0);
    let key_text = std::str::from_utf8(key_pem)
        .map_err(|_| LoadError::Invalid("issuer key is not PEM text".into()))?;
    let key =
        KeyPair::from_pem(key_text).map_err(|e| LoadError::Invalid(format!("issuer key: {e}")))?;
    if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(LoadError::Invalid("issuer key must be ECDSA P-256".into()));
    }
    let parsed = parse_cert(&cert, "issuer certificate")?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(LoadError::Invalid(
            "issuer certificate and key do not belong together".into(),
        ));
    }
    if !parsed.is_ca() {
        return Err(LoadError::Invalid("issuer certificate is not a CA".into()));
    }
    let validity = parsed.validity();
    if !validity.is_valid() {
        return Err(LoadError::Invalid(format!(
            "issuer certificate is not valid now (valid from {} to {})",
            validity.not_before, validity.not_after
        )));
    }
    let signed_by_anchor = anchors.iter().any(|anchor| {
        parse_cert(anchor, "anchor").is_ok_and(|a| {
            a.subject() == parsed.issuer() && parsed.verify_signature(Some(a.public_key())).is_ok()
        })
    });
    if !signed_by_anchor {
        return Err(LoadError::Invalid(
            "issuer certificate is not signed by any trust anchor".into(),
        ));
    }
    let not_before = unix(validity.not_before.timestamp());
    let not_after = unix(validity.not_after.timestamp());
    let issuer = Issuer::from_ca_cert_der(&cert, key)
        .map_err(|e| LoadError::Invalid(format!("issuer certificate: {e}")))?;
    Ok(Material {
        anchors: anchors.into(),
        anchor_validity,
        issuer,
        cert,
        not_before,
        not_after,
        raw,
    })
}

impl Ca {
    /// Loads the anchors and the issuer; fails if they do not fit together.
    pub fn load(
        paths: IssuerPaths,
        settings: CaSettings,
        metrics: Arc<IdentityMetrics>,
    ) -> Result<Self, LoadError> {
        let material = load_material(read_material(&paths)?)?;
        let ca = Ca {
            settings,
            paths,
            material: ArcSwap::from_pointee(material),
            metrics,
            expiry: Default::default(),
        };
        ca.export_material();
        ca.watch_expiry();
        Ok(ca)
    }

    /// The gauges for the material in use.
    fn export_material(&self) {
        let material = self.material.load();
        self.metrics.set_issuer(&material.cert, material.not_after);
        self.metrics.set_bundle(&material.anchors);
        if let Some(first) = material.anchor_validity.iter().map(|v| v.not_after).min() {
            self.metrics.set_anchor_expiry(first);
        }
    }

    /// Logs (at most hourly) the issuer or an anchor near its end; the
    /// gauges say it all the time.
    pub fn watch_expiry(&self) -> bool {
        let material = self.material.load();
        let mut certs = material.anchor_validity.clone();
        certs.push(expiry::Validity {
            what: "the issuer".into(),
            not_before: material.not_before,
            not_after: material.not_after,
        });
        self.expiry.check(&certs, SystemTime::now())
    }

    pub fn settings(&self) -> &CaSettings {
        &self.settings
    }

    /// The trust anchors in use.
    pub fn anchors(&self) -> Arc<[CertificateDer<'static>]> {
        self.material.load().anchors.clone()
    }

    /// The issuer currently signing.
    pub fn issuer_cert(&self) -> CertificateDer<'static> {
        self.material.load().cert.clone()
    }

    /// Re-reads the anchor and issuer files; switches to them if they
    /// changed and fit together. An invalid or half-written set is
    /// reported and the current one stays in use, so no request fails
    /// because of a rotation. Returns whether the issuer changed (the
    /// serving certificate then follows it).
    pub fn reload_if_changed(&self) -> bool {
        let raw = match read_material(&self.paths) {
            Ok(raw) => raw,
            Err(error) => {
                tracing::warn!(%error, "cannot read the CA files; keeping the current anchors and issuer");
                return false;
            }
        };
        let current = self.material.load();
        if current.raw == raw {
            return false;
        }
        match load_material(raw) {
            Ok(loaded) => {
                let issuer_changed = loaded.raw[1..] != current.raw[1..];
                if loaded.raw[0] != current.raw[0] {
                    tracing::info!(
                        anchors = loaded.anchors.len(),
                        "trust anchors reloaded from {}; proxies get them with their next certificate",
                        self.paths.anchors.display()
                    );
                }
                if issuer_changed {
                    tracing::info!(
                        not_after = %humantime(loaded.not_after),
                        "issuer reloaded from {}",
                        self.paths.cert.display()
                    );
                }
                self.metrics.issuer_reload(Reload::Success);
                self.material.store(Arc::new(loaded));
                self.export_material();
                issuer_changed
            }
            Err(error) => {
                // Often a rotation caught between its file writes; the
                // next poll sees the finished set.
                tracing::warn!(%error, "new CA files are not usable (yet); keeping the current anchors and issuer");
                self.metrics.issuer_reload(Reload::Failure);
                false
            }
        }
    }

    /// Signs `csr_der` for `identity` after checking that the CSR is well
    /// formed, signed by a P-256 key, and asks for exactly that identity.
    pub fn certify(&self, identity: &SpiffeId, csr_der: &[u8]) -> Result<Issued, CsrRefusal> {
        let checked = self.check(identity, csr_der)?;
        self.sign(&checked)
    }

    /// The checks of [`Self::certify`], all local and cheap: done before a
    /// token is sent to the API server, so garbage costs it nothing.
    pub fn check(&self, identity: &SpiffeId, csr_der: &[u8]) -> Result<CheckedCsr, CsrRefusal> {
        if identity.trust_domain() != self.settings.trust_domain {
            return Err(CsrRefusal::TrustDomain(identity.to_string()));
        }
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| CsrRefusal::Malformed(e.to_string()))?;
        check_p256_key(csr_der)?;
        let expected = identity.to_string();
        let sans: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if sans.len() != 1 || sans[0] != expected {
            return Err(CsrRefusal::SanMismatch {
                expected,
                found: format!("{sans:?}"),
            });
        }
        Ok(CheckedCsr {
            identity: expected,
            public_key: csr.public_key,
        })
    }

    /// Signs a checked CSR under the current issuer.
    pub fn sign(&self, checked: &CheckedCsr) -> Result<Issued, CsrRefusal> {
        let expected = checked.identity.clone();
        let loaded = self.material.load();
        let now = SystemTime::now();
        let not_after = (now + self.settings.leaf_lifetime).min(loaded.not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(expected.clone().try_into().map_err(|_| {
                CsrRefusal::Malformed("identity is not ASCII".into())
            })?)];
        params.not_before = (now - self.settings.clock_skew).into();
        params.not_after = not_after.into();
        params.serial_number = Some(crate::pki::random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&checked.public_key, &loaded.issuer)
            .map_err(|e| CsrRefusal::Malformed(format!("cannot sign: {e}")))?;
        Ok(Issued {
            leaf: leaf.der().clone(),
            intermediates: vec![loaded.cert.clone()],
            not_after,
            anchors: loaded.anchors.clone(),
        })
    }
}

/// A CSR that passed [`Ca::check`]: the identity it asks for and its key.
#[derive(Debug)]
pub struct CheckedCsr {
    identity: String,
    public_key: rcgen::PublicKey,
}

impl Ca {
    /// Makes a key here and certifies it, for certificates the controller
    /// hands out itself (its own serving certificate, `issue`), through the
    /// same checks as a proxy's CSR.
    pub fn issue_with_new_key(&self, identity: &SpiffeId) -> anyhow::Result<(KeyPair, Issued)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        let csr = params.serialize_request(&key)?;
        let issued = self.certify(identity, csr.der())?;
        Ok((key, issued))
    }
}

/// Only P-256 keys: the signature algorithm alone does not say the curve.
fn check_p256_key(csr_der: &[u8]) -> Result<(), CsrRefusal> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    let (_, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| CsrRefusal::Malformed(e.to_string()))?;
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY
        || curve != Some(OID_EC_P256)
        || spki.subject_public_key.data.len() != 65
    {
        return Err(CsrRefusal::UnsupportedKey);
    }
    Ok(())
}

/// RFC 3339 rendering for logs.
pub fn humantime(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// `issue`: signs a workload certificate straight from the issuer files,
/// for a peer outside the mesh (a gateway, a benchmark's TLS peer). Writes
/// one PEM file with the chain (leaf first) and the key.
pub fn issue_offline(
    dir: &Path,
    identity: &weft_api::identity::SpiffeId,
    lifetime: Duration,
    out: &Path,
) -> anyhow::Result<()> {
    let ca = Ca::load(
        IssuerPaths::in_dir(dir),
        CaSettings {
            trust_domain: identity.trust_domain().to_string(),
            leaf_lifetime: lifetime,
            clock_skew: Duration::from_secs(60),
        },
        Arc::default(), // metrics of a one-off issue are not exported
    )?;
    let (key, issued) = ca.issue_with_new_key(identity)?;
    let mut pem = String::new();
    for der in std::iter::once(&issued.leaf).chain(&issued.intermediates) {
        pem.push_str(&::pem::encode(&::pem::Pem::new(
            "CERTIFICATE",
            der.to_vec(),
        )));
    }
    pem.push_str(&key.serialize_pem());
    crate::pki::write_atomic(out, pem.as_bytes(), true)
}

#[cfg(test)]
mod tests;
