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
/// The key of an anchor added by `rotate-anchor add`, until `issuer`
/// makes it the signing anchor.
pub const NEXT_ANCHOR_KEY: &str = "ca-next.key";
/// The key of the anchor `rotate-anchor issuer` stepped away from.
pub const RETIRED_ANCHOR_KEY: &str = "ca-retired.key";
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
    // The date tells anchors of one trust domain apart in a bundle.
    let today = time::OffsetDateTime::now_utc().date();
    let params = ca_params(&format!("root.{trust_domain} {today}"), lifetime, None);
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
    let key_pem = read(ANCHOR_KEY)?;
    let anchor = Anchor {
        cert_pem: anchor_for_key(&read(ANCHOR_CERT)?, &key_pem)?,
        key_pem,
    };
    let issuer = generate_issuer(trust_domain, &anchor, lifetime)?;
    write_atomic(&dir.join(ISSUER_KEY), issuer.key_pem.as_bytes(), true)?;
    write_atomic(&dir.join(ISSUER_CERT), issuer.cert_pem.as_bytes(), false)?;
    Ok(())
}

/// The certificate in the bundle `bundle_pem` whose public key is that of
/// `key_pem`, as PEM.
fn anchor_for_key(bundle_pem: &str, key_pem: &str) -> anyhow::Result<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let key = KeyPair::from_pem(key_pem).context("trust anchor key")?;
    for block in ::pem::parse_many(bundle_pem).context("trust anchors")? {
        let (_, cert) = X509Certificate::from_der(block.contents()).context("trust anchor")?;
        if cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw() {
            return Ok(::pem::encode_config(
                &block,
                ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
            ));
        }
    }
    anyhow::bail!("no trust anchor in {ANCHOR_CERT} belongs to the key")
}

/// The three steps of replacing the trust anchor with no outage. Between
/// steps, every proxy must have caught up (see the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnchorStep {
    /// Make a new anchor and add it to the bundle: everything trusts both.
    Add,
    /// Switch to a new issuer under the new anchor.
    Issuer,
    /// Drop every anchor but the one of the issuer in use.
    Retire,
}

/// `rotate-anchor`: one step of an anchor rotation in `dir`.
pub fn rotate_anchor(
    dir: &Path,
    step: AnchorStep,
    trust_domain: &str,
    anchor_lifetime: Duration,
    issuer_lifetime: Duration,
) -> anyhow::Result<String> {
    let path = |name: &str| dir.join(name);
    let read = |name: &str| {
        std::fs::read_to_string(path(name))
            .with_context(|| format!("cannot read {}", path(name).display()))
    };
    match step {
        AnchorStep::Add => {
            if path(NEXT_ANCHOR_KEY).exists() {
                anyhow::bail!(
                    "{} exists: a rotation is already under way (next step: issuer)",
                    path(NEXT_ANCHOR_KEY).display()
                );
            }
            let bundle = read(ANCHOR_CERT)?;
            let anchor = generate_anchor(trust_domain, anchor_lifetime)?;
            // The key first: a bundle naming an anchor whose key is lost
            // would be a rotation that cannot finish.
            write_atomic(&path(NEXT_ANCHOR_KEY), anchor.key_pem.as_bytes(), true)?;
            let mut bundle = bundle.trim_end().to_string();
            bundle.push('\n');
            bundle.push_str(&anchor.cert_pem);
            write_atomic(&path(ANCHOR_CERT), bundle.as_bytes(), false)?;
            Ok(format!(
                "added a new trust anchor to {}; once every proxy trusts it, run the issuer step",
                path(ANCHOR_CERT).display()
            ))
        }
        AnchorStep::Issuer => {
            let next_key =
                read(NEXT_ANCHOR_KEY).context("no rotation under way (run the add step)")?;
            let anchor = Anchor {
                cert_pem: anchor_for_key(&read(ANCHOR_CERT)?, &next_key)?,
                key_pem: next_key,
            };
            let issuer = generate_issuer(trust_domain, &anchor, issuer_lifetime)?;
            write_atomic(&path(ISSUER_KEY), issuer.key_pem.as_bytes(), true)?;
            write_atomic(&path(ISSUER_CERT), issuer.cert_pem.as_bytes(), false)?;
            std::fs::rename(path(ANCHOR_KEY), path(RETIRED_ANCHOR_KEY))
                .context("cannot set the old anchor key aside")?;
            std::fs::rename(path(NEXT_ANCHOR_KEY), path(ANCHOR_KEY))
                .context("cannot make the new anchor key current")?;
            Ok(format!(
                "the issuer in {} is now under the new anchor; once every proxy has a certificate from it, run the retire step",
                path(ISSUER_CERT).display()
            ))
        }
        AnchorStep::Retire => {
            if path(NEXT_ANCHOR_KEY).exists() {
                anyhow::bail!("the issuer step has not run yet");
            }
            let current = anchor_for_key(&read(ANCHOR_CERT)?, &read(ANCHOR_KEY)?)?;
            write_atomic(&path(ANCHOR_CERT), current.as_bytes(), false)?;
            let retired = if path(RETIRED_ANCHOR_KEY).exists() {
                format!(
                    "; the old anchor's key is {} (delete it when you no longer need it)",
                    path(RETIRED_ANCHOR_KEY).display()
                )
            } else {
                String::new()
            };
            Ok(format!(
                "{} holds only the current anchor now{retired}",
                path(ANCHOR_CERT).display()
            ))
        }
    }
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
