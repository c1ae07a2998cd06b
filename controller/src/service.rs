//! The gRPC identity service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

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
}

impl IdentityService {
    fn refuse(
        &self,
        peer: Option<SocketAddr>,
        identity: &str,
        reason: &'static str,
        status: Status,
    ) -> Status {
        tracing::warn!(
            ?peer,
            identity,
            reason,
            message = status.message(),
            "certificate request refused"
        );
        self.metrics.identity.refuse(reason);
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
            .certify(&identity, &request.csr_der)
            .map_err(|refusal| {
                let status = match refusal {
                    crate::ca::CsrRefusal::TrustDomain(_) => {
                        Status::permission_denied(refusal.to_string())
                    }
                    _ => Status::invalid_argument(refusal.to_string()),
                };
                self.refuse(peer, &request.identity, refusal.reason(), status)
            })?;
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
        }))
    }
}
