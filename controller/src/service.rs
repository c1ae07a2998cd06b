//! The gRPC identity service.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use weft_api::identity::SpiffeId;
use weft_api::proto::identity::identity_server::Identity;
use weft_api::proto::identity::{CertifyRequest, CertifyResponse};

use crate::ca::Ca;
use crate::metrics::Metrics;
use crate::token::{TokenRefusal, TokenVerifier};

#[derive(Debug)]
pub struct IdentityService {
    pub ca: Arc<Ca>,
    pub tokens: Arc<TokenVerifier>,
    pub metrics: Arc<Metrics>,
    pub refusal_log: RefusalLog,
}

/// Refusals are logged at most this many times per window; the metric
/// counts every one. An endless stream of garbage must not fill the disk.
const LOGGED_PER_WINDOW: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// How many refusals the current window has logged, and left out.
#[derive(Debug)]
pub struct RefusalLog(Mutex<(Instant, u32, u64)>);

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog(Mutex::new((Instant::now(), 0, 0)))
    }
}

impl RefusalLog {
    /// Whether to log one more refusal now, and how many were left out
    /// since the last one logged.
    fn admit(&self) -> Option<u64> {
        let mut window = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (started, logged, suppressed) = &mut *window;
        if started.elapsed() >= LOG_WINDOW {
            (*started, *logged) = (Instant::now(), 0);
        }
        if *logged >= LOGGED_PER_WINDOW {
            *suppressed += 1;
            return None;
        }
        *logged += 1;
        Some(std::mem::take(suppressed))
    }
}

impl IdentityService {
    fn refuse_csr(
        &self,
        peer: Option<SocketAddr>,
        identity: &str,
        refusal: crate::ca::CsrRefusal,
    ) -> Status {
        let status = match refusal {
            crate::ca::CsrRefusal::TrustDomain(_) => Status::permission_denied(refusal.to_string()),
            _ => Status::invalid_argument(refusal.to_string()),
        };
        self.refuse(peer, identity, refusal.reason(), status)
    }

    fn refuse(
        &self,
        peer: Option<SocketAddr>,
        identity: &str,
        reason: &'static str,
        status: Status,
    ) -> Status {
        self.metrics.identity.refuse(reason);
        if let Some(suppressed) = self.refusal_log.admit() {
            tracing::warn!(
                ?peer,
                identity,
                reason,
                message = status.message(),
                suppressed_since_last_log = suppressed,
                "certificate request refused"
            );
        }
        status
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let peer = request
            .remote_addr()
            .or_else(|| request.extensions().get::<SocketAddr>().copied());
        let request = request.into_inner();
        let identity: SpiffeId = request.identity.parse().map_err(|e| {
            self.refuse(
                peer,
                &request.identity,
                "malformed_identity",
                Status::invalid_argument(format!("{e}")),
            )
        })?;
        // The CSR first: its checks are local, and a request that fails
        // them never reaches the API server's TokenReview.
        let csr = self
            .ca
            .check(&identity, &request.csr_der)
            .map_err(|refusal| self.refuse_csr(peer, &request.identity, refusal))?;
        let account = self
            .tokens
            .verify(&request.token)
            .await
            .map_err(|refusal| {
                let status = match &refusal {
                    TokenRefusal::Unavailable(_) => Status::unavailable(refusal.to_string()),
                    _ => Status::unauthenticated(refusal.to_string()),
                };
                self.refuse(peer, &request.identity, refusal.reason(), status)
            })?;
        if account.namespace != identity.namespace() || account.name != identity.service_account() {
            return Err(self.refuse(
                peer,
                &request.identity,
                "identity_mismatch",
                Status::permission_denied(format!(
                    "the token belongs to service account {}/{}, which may not have identity {identity}",
                    account.namespace, account.name
                )),
            ));
        }
        let issued = self
            .ca
            .sign(&csr)
            .map_err(|refusal| self.refuse_csr(peer, &request.identity, refusal))?;
        self.metrics.identity.issued.inc();
        tracing::info!(?peer, %identity, not_after = %crate::ca::humantime(issued.not_after), "certificate issued");
        Ok(Response::new(CertifyResponse {
            leaf_der: issued.leaf.to_vec(),
            intermediates_der: issued.intermediates.iter().map(|c| c.to_vec()).collect(),
            valid_until_unix: issued
                .not_after
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs() as i64,
            trust_anchors_der: issued.anchors.iter().map(|c| c.to_vec()).collect(),
        }))
    }
}
