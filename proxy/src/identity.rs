//! The proxy's workload certificate: made at start, renewed before expiry.
//!
//! The key is generated in memory and never leaves the process; the
//! controller only ever sees a CSR and the pod's service-account token. A
//! renewal swaps the certificate in place (see [`CertStore`]), and a
//! controller that cannot be reached is retried with jittered exponential
//! backoff while the current certificate keeps serving. Each certificate
//! comes with the controller's trust anchors, which replace the proxy's
//! (see [`tls::TrustAnchors`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use weft_api::identity::SpiffeId;
use weft_api::proto::identity::CertifyRequest;
use weft_api::proto::identity::identity_client::IdentityClient;

use crate::metrics::Metrics;
use crate::tls::{self, AnchorSet, CertStore, TrustAnchors};

/// Where and how to get certificates.
#[derive(Clone)]
pub struct IdentityConfig {
    /// `host:port` of the controller's gRPC server.
    pub controller_addr: String,
    /// The identity the controller's serving certificate must carry.
    pub controller_identity: SpiffeId,
    /// This workload's identity.
    pub identity: SpiffeId,
    /// The service-account token; re-read on every request because the
    /// kubelet rotates projected tokens.
    pub token_file: PathBuf,
    /// Live: every verifier of the proxy reads it at each handshake.
    pub anchors: Arc<TrustAnchors>,
    /// Where the controller's latest bundle is kept for the next start.
    pub anchors_cache: Option<PathBuf>,
}

impl std::fmt::Debug for IdentityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The anchors' DER would drown the startup log line.
        f.debug_struct("IdentityConfig")
            .field("controller_addr", &self.controller_addr)
            .field("controller_identity", &self.controller_identity.to_string())
            .field("identity", &self.identity.to_string())
            .field("token_file", &self.token_file)
            .field("trust_anchors", &self.anchors.current().count())
            .finish()
    }
}

/// Backoff between failed attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why one certificate request failed.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    #[error("cannot read the service-account token {path}: {source}")]
    Token {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("controller refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("controller unreachable: {0}")]
    Unreachable(String),
    #[error("controller sent an unusable certificate: {0}")]
    BadCertificate(String),
}

/// Why a channel to the controller cannot even be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("controller TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Name(#[from] tls::NoTlsName),
    #[error("controller address {addr:?}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Runs forever, keeping `store` supplied with a valid certificate.
pub async fn maintain(config: IdentityConfig, store: Arc<CertStore>, metrics: Arc<Metrics>) {
    metrics
        .identity
        .anchors_in_use(&config.anchors.current().fingerprints());
    let key = match rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256) {
        Ok(key) => key,
        Err(error) => {
            tracing::error!(%error, "cannot generate a key; the proxy will never be ready");
            return;
        }
    };
    let csr = match csr(&key, &config.identity) {
        Ok(csr) => csr,
        Err(error) => {
            tracing::error!(%error, "cannot build a CSR; the proxy will never be ready");
            return;
        }
    };
    let client = match controller_channel(&config, Some(Duration::from_secs(15))) {
        Ok(channel) => IdentityClient::new(channel),
        Err(error) => {
            let error = weft_api::error_chain(&error);
            tracing::error!(%error, "cannot set up the controller connection");
            return;
        }
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        match refresh(&config, &key, &csr, client.clone()).await {
            Ok(Refreshed {
                certified,
                not_before,
                not_after,
                anchors,
            }) => {
                let issuer = certified
                    .cert
                    .get(1)
                    .map(|c| weft_api::identity::fingerprint(c));
                // The anchors first: the new certificate chains to them,
                // and peers' renewed certificates soon will.
                if let Some(anchors) = anchors {
                    if let Some(path) = &config.anchors_cache {
                        keep_anchors(path, &anchors.to_pem());
                    }
                    let fingerprints = anchors.fingerprints();
                    if config.anchors.replace(anchors) {
                        tracing::info!(anchors = ?fingerprints, "trust anchors replaced by the controller's bundle");
                    }
                }
                metrics
                    .identity
                    .anchors_in_use(&config.anchors.current().fingerprints());
                store.set(certified);
                metrics.identity.refreshed(not_after, issuer);
                backoff = MIN_BACKOFF;
                let wait = renew_after(not_before, not_after, SystemTime::now());
                tracing::info!(
                    identity = %config.identity,
                    expires_in = ?not_after.duration_since(SystemTime::now()).unwrap_or_default(),
                    renew_in = ?wait,
                    "certificate installed"
                );
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                metrics.identity.refresh_failed();
                let wait = jitter(backoff);
                tracing::warn!(%error, retry_in = ?wait, ready = store.is_ready(), "certificate request failed");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Writes the bundle for the next start of this proxy (a temporary file,
/// then a rename: a restart never reads half a bundle). Unchanged
/// contents are not rewritten.
fn keep_anchors(path: &std::path::Path, pem: &str) {
    if std::fs::read_to_string(path).is_ok_and(|old| old == pem) {
        return;
    }
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, pem).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(error) = written {
        tracing::warn!(%error, path = %path.display(), "cannot keep the trust anchors for the next start");
    }
}

/// Renew at 60–75 % of the lifetime: well before expiry, and spread out so
/// that proxies started together do not all renew together.
pub fn renew_after(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> Duration {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let fraction = rand::rng().random_range(0.60..0.75);
    let at = not_before + lifetime.mul_f64(fraction);
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

/// A random point in the second half of `d`, so that proxies that lost
/// the controller together do not come back together.
pub(crate) fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..1.0))
}

fn csr(key: &rcgen::KeyPair, identity: &SpiffeId) -> Result<Vec<u8>, rcgen::Error> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.to_string().try_into()?)];
    Ok(params.serialize_request(key)?.der().to_vec())
}

/// A lazily connected gRPC channel that speaks TLS to the controller and
/// checks its identity.
/// A lazily connected gRPC channel to the controller over TLS, checking
/// the controller's identity. `timeout` bounds each unary call; streams
/// (discovery) pass `None` and rely on HTTP/2 keepalives instead.
pub fn controller_channel(
    config: &IdentityConfig,
    timeout: Option<Duration>,
) -> Result<tonic::transport::Channel, ChannelError> {
    let tls = tls::controller_client_config(config.anchors.clone())?;
    let server_name = tls::server_name_for(&config.controller_identity)?;
    let addr = config.controller_addr.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let (tls, server_name, addr) = (tls.clone(), server_name.clone(), addr.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr.as_str()).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(server_name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    // The URI is only a label here: the connector above decides where to go.
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{}", config.controller_addr))
            .map_err(|source| ChannelError::Address {
                addr: config.controller_addr.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            // A controller that vanished without closing the connection is
            // noticed within seconds, and streams are resubscribed.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
    if let Some(timeout) = timeout {
        endpoint = endpoint.timeout(timeout);
    }
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// A certificate ready to install, and the bundle that came with it
/// (`None` from a controller that sends none: keep the anchors in use).
struct Refreshed {
    certified: CertifiedKey,
    not_before: SystemTime,
    not_after: SystemTime,
    anchors: Option<AnchorSet>,
}

async fn refresh(
    config: &IdentityConfig,
    key: &rcgen::KeyPair,
    csr: &[u8],
    mut client: IdentityClient<tonic::transport::Channel>,
) -> Result<Refreshed, RefreshError> {
    let token =
        std::fs::read_to_string(&config.token_file).map_err(|source| RefreshError::Token {
            path: config.token_file.display().to_string(),
            source,
        })?;
    let response = client
        .certify(CertifyRequest {
            identity: config.identity.to_string(),
            token: token.trim().to_string(),
            csr_der: csr.to_vec(),
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                RefreshError::Unreachable(status.message().to_string())
            }
            code => RefreshError::Refused {
                code,
                message: status.message().to_string(),
            },
        })?
        .into_inner();
    let leaf = CertificateDer::from(response.leaf_der);
    let mut chain = vec![leaf.clone()];
    chain.extend(
        response
            .intermediates_der
            .into_iter()
            .map(CertificateDer::from),
    );
    let anchors =
        if response.trust_anchors_der.is_empty() {
            None
        } else {
            let ders = response
                .trust_anchors_der
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            Some(AnchorSet::from_der(ders).map_err(|e| {
                RefreshError::BadCertificate(format!("unusable trust anchors: {e}"))
            })?)
        };
    let current = config.anchors.current();
    let (not_before, not_after) =
        check_issued(config, key, &chain, anchors.as_ref().unwrap_or(&current))?;
    let signing_key = tls::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .map_err(|e| RefreshError::BadCertificate(e.to_string()))?;
    Ok(Refreshed {
        certified: CertifiedKey::new(chain, signing_key),
        not_before,
        not_after,
        anchors,
    })
}

/// Checks what the controller sent before using it: our key, our identity,
/// a chain to `anchors` (the bundle that came with it). Returns the
/// validity period.
fn check_issued(
    config: &IdentityConfig,
    key: &rcgen::KeyPair,
    chain: &[CertificateDer<'static>],
    anchors: &AnchorSet,
) -> Result<(SystemTime, SystemTime), RefreshError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let bad = |m: String| RefreshError::BadCertificate(m);
    let (_, leaf) = X509Certificate::from_der(&chain[0]).map_err(|e| bad(e.to_string()))?;
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad("certificate is not for this proxy's key".into()));
    }
    match tls::spiffe_id_of(&chain[0]) {
        Some(id) if id == config.identity => {}
        other => {
            return Err(bad(format!(
                "certificate is for {other:?}, not {}",
                config.identity
            )));
        }
    }
    let parsed =
        rustls::server::ParsedCertificate::try_from(&chain[0]).map_err(|e| bad(e.to_string()))?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        anchors.roots(),
        &chain[1..],
        rustls::pki_types::UnixTime::now(),
        tls::provider().signature_verification_algorithms.all,
    )
    .map_err(|e| {
        bad(format!(
            "certificate does not chain to the trust anchors: {e}"
        ))
    })?;
    let validity = leaf.validity();
    let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    Ok((
        at(validity.not_before.timestamp()),
        at(validity.not_after.timestamp()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_well_before_expiry() {
        let now = SystemTime::now();
        for _ in 0..100 {
            let wait = renew_after(now, now + Duration::from_secs(100), now);
            assert!((60..=75).contains(&wait.as_secs()), "{wait:?}");
        }
        // A certificate already past its renewal point renews at once.
        let old = now - Duration::from_secs(90);
        assert_eq!(
            renew_after(old, old + Duration::from_secs(100), now),
            Duration::ZERO
        );
    }
}
