//! Making and storing the mesh's CA material: the trust anchor (a
//! self-signed root) and the issuer (an intermediate it signs). Both are
//! ECDSA P-256.
//!
//! Files use the `kubernetes.io/tls` Secret layout, so the same folder can
//! be a mounted Secret: `ca.crt` (trust anchors), `tls.crt` (issuer
//! certificate), `tls.key` (issuer key). The anchor's own key is written as
//! `ca.key` by `bootstrap` and is only needed to mint a new issuer; it
//! belongs offline, not in the cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

pub const ANCHOR_CERT: &str = "ca.crt";
pub const ANCHOR_KEY: &str = "ca.key";
pub const ISSUER_CERT: &str = "tls.crt";
pub const ISSUER_KEY: &str = "tls.key";
pub const TOKEN_SIGNING_KEY: &str = "token-signing.key";
pub const TOKEN_VERIFY_KEY: &str = "token-signing.pub";

/// Where the issuer's files live.
#[derive(Clone, Debug)]
pub struct IssuerPaths {
    pub anchors: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl IssuerPaths {
    pub fn in_dir(dir: &Path) -> Self {
        IssuerPaths {
            anchors: dir.join(ANCHOR_CERT),
            cert: dir.join(ISSUER_CERT),
            key: dir.join(ISSUER_KEY),
        }
    }
}

/// A CA certificate's parameters: backdated five minutes, a random serial.
pub fn ca_params(common_name: &str, lifetime: Duration, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    // A little backdating so a node whose clock lags still accepts it.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + lifetime;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params
}

/// A positive 128-bit serial.
pub fn random_serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

/// The trust anchor and its key, as PEM.
#[derive(Debug)]
pub struct Anchor {
    pub cert_pem: String,
    pub key_pem: String,
}

/// An issuer certificate and its key, as PEM.
#[derive(Debug)]
pub struct IssuerPem {
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn generate_anchor(trust_domain: &str, lifetime: Duration) -> anyhow::Result<Anchor> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let params = ca_params(&format!("root.{trust_domain}"), lifetime, None);
    let cert = params.self_signed(&key)?;
    Ok(Anchor {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Makes a new issuer signed by the anchor whose certificate and key are given.
pub fn generate_issuer(
    trust_domain: &str,
    anchor: &Anchor,
    lifetime: Duration,
) -> anyhow::Result<IssuerPem> {
    let anchor_key = KeyPair::from_pem(&anchor.key_pem).context("trust anchor key")?;
    let anchor_issuer = Issuer::from_ca_cert_pem(&anchor.cert_pem, anchor_key)
        .context("trust anchor certificate")?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params(&format!("issuer.{trust_domain}"), lifetime, Some(0));
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &anchor_issuer)?;
    Ok(IssuerPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `contents` to `path` atomically (a temporary file, then rename),
/// so a reader never sees half a file. `private` files are mode 0600.
pub fn write_atomic(path: &Path, contents: &[u8], private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// `bootstrap`: a fresh anchor and issuer for a new install.
pub fn bootstrap(
    out: &Path,
    trust_domain: &str,
    anchor_lifetime: Duration,
    issuer_lifetime: Duration,
    force: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for name in [ANCHOR_CERT, ANCHOR_KEY, ISSUER_CERT, ISSUER_KEY] {
        let path = out.join(name);
        if path.exists() && !force {
            anyhow::bail!(
                "{} exists; refusing to replace a trust anchor (use --force for a new mesh)",
                path.display()
            );
        }
    }
    let anchor = generate_anchor(trust_domain, anchor_lifetime)?;
    let issuer = generate_issuer(trust_domain, &anchor, issuer_lifetime)?;
    write_atomic(&out.join(ANCHOR_CERT), anchor.cert_pem.as_bytes(), false)?;
    write_atomic(&out.join(ANCHOR_KEY), anchor.key_pem.as_bytes(), true)?;
    write_atomic(&out.join(ISSUER_KEY), issuer.key_pem.as_bytes(), true)?;
    write_atomic(&out.join(ISSUER_CERT), issuer.cert_pem.as_bytes(), false)?;
    Ok(())
}

/// `rotate-issuer`: a new issuer under the existing anchor in `dir`. The key
/// is replaced before the certificate; the controller only switches once
/// the two match, so it never serves a half-rotated issuer.
pub fn rotate_issuer(dir: &Path, trust_domain: &str, lifetime: Duration) -> anyhow::Result<()> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("cannot read {}", dir.join(name).display()))
    };
    let anchor = Anchor {
        cert_pem: read(ANCHOR_CERT)?,
        key_pem: read(ANCHOR_KEY)?,
    };
    let issuer = generate_issuer(trust_domain, &anchor, lifetime)?;
    write_atomic(&dir.join(ISSUER_KEY), issuer.key_pem.as_bytes(), true)?;
    write_atomic(&dir.join(ISSUER_CERT), issuer.cert_pem.as_bytes(), false)?;
    Ok(())
}

/// `token-key`: the key pair the file token source signs and checks with.
pub fn generate_token_key(out: &Path, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let private = out.join(TOKEN_SIGNING_KEY);
    if private.exists() && !force {
        anyhow::bail!("{} exists (use --force to replace it)", private.display());
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    write_atomic(&private, key.serialize_pem().as_bytes(), true)?;
    write_atomic(
        &out.join(TOKEN_VERIFY_KEY),
        key.public_key_pem().as_bytes(),
        false,
    )?;
    Ok(())
}
