//! The webhook's serving certificate, reloaded in place when its files
//! change (a renewed Secret, cert-manager), so rotating it never needs a
//! restart and never drops a connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Files read together; `changed` reports new contents once per change.
#[derive(Debug)]
pub struct WatchedFiles {
    paths: Vec<PathBuf>,
    last: Mutex<Vec<Vec<u8>>>,
}

impl WatchedFiles {
    /// Reads the files now; these contents count as seen.
    pub fn open(paths: &[&Path]) -> std::io::Result<(Self, Vec<Vec<u8>>)> {
        let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
        let contents = read_all(&paths)?;
        let watched = WatchedFiles {
            paths,
            last: Mutex::new(contents.clone()),
        };
        Ok((watched, contents))
    }

    /// The new contents when any file differs from what was last seen.
    /// Comparing contents, not timestamps, copes with Kubernetes' symlink
    /// swaps for Secret volumes. A file that cannot be read now (mid-swap)
    /// is tried again on the next call.
    pub fn changed(&self) -> std::io::Result<Option<Vec<Vec<u8>>>> {
        let contents = read_all(&self.paths)?;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last == contents {
            return Ok(None);
        }
        *last = contents.clone();
        Ok(Some(contents))
    }

    pub fn describe(&self) -> String {
        self.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn read_all(paths: &[PathBuf]) -> std::io::Result<Vec<Vec<u8>>> {
    paths
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        })
        .collect()
}

/// Why a certificate and key pair cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no certificate in the certificate file")]
    NoCertificate,
    #[error("no private key in the key file")]
    NoKey,
    #[error("unreadable PEM: {0}")]
    Pem(std::io::Error),
    #[error("unusable private key: {0}")]
    Key(rustls::Error),
    #[error("the key does not match the certificate: {0}")]
    Mismatch(rustls::Error),
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
}

/// A certificate chain and key, checked to belong together, and the
/// leaf's expiry.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<(CertifiedKey, u64), CertError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(CertError::Pem)?;
    let leaf = chain.first().ok_or(CertError::NoCertificate)?;
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| CertError::Parse(e.to_string()))?
        .1
        .validity()
        .not_after
        .timestamp();
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(CertError::Pem)?
        .ok_or(CertError::NoKey)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(CertError::Key)?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(CertError::Mismatch)?;
    Ok((certified, u64::try_from(not_after).unwrap_or(0)))
}

/// The certificate in use, swapped whole on reload.
#[derive(Debug)]
pub struct ServingCert {
    files: WatchedFiles,
    current: ArcSwap<CertifiedKey>,
    not_after: std::sync::atomic::AtomicU64,
}

impl ServingCert {
    /// Loads the pair; a bad pair at startup is an error (there is nothing
    /// older to fall back on).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Self>> {
        let (files, contents) = WatchedFiles::open(&[cert, key])?;
        let (certified, not_after) = certified_key(&contents[0], &contents[1])
            .map_err(|e| anyhow::anyhow!("{}: {e}", files.describe()))?;
        Ok(Arc::new(ServingCert {
            files,
            current: ArcSwap::from_pointee(certified),
            not_after: not_after.into(),
        }))
    }

    /// Swaps in the files' new contents if they changed and are a valid
    /// pair. A bad pair is reported and the current one kept.
    pub fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let contents = match self.files.changed() {
            Ok(Some(contents)) => contents,
            Ok(None) => return None,
            Err(error) => return Some(Err(error.to_string())),
        };
        match certified_key(&contents[0], &contents[1]) {
            Ok((certified, not_after)) => {
                self.current.store(Arc::new(certified));
                self.not_after
                    .store(not_after, std::sync::atomic::Ordering::Relaxed);
                Some(Ok(()))
            }
            Err(error) => Some(Err(format!("{}: {error}", self.files.describe()))),
        }
    }

    /// Unix time the current leaf expires.
    pub fn not_after(&self) -> u64 {
        self.not_after.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Seconds until the current leaf expires (negative once expired).
    pub fn remaining_secs(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.not_after() as i64 - now as i64
    }

    /// A rustls server configuration that always serves the current pair.
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
