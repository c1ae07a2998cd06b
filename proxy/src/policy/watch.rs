//! Keeps the pod's policy up to date from the controller's stream,
//! reconnecting with backoff; the last policy holds meanwhile.

use std::sync::Weak;
use std::time::Duration;

use weft_api::proto::policy::GetPolicy;
use weft_api::proto::policy::policy_client::PolicyClient;

use super::Policy;
use super::rules::Rules;

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub(super) async fn follow(
    channel: tonic::transport::Channel,
    namespace: String,
    pod: String,
    policy: Weak<Policy>,
) {
    let mut client = PolicyClient::new(channel);
    let request = GetPolicy {
        namespace: namespace.clone(),
        pod: pod.clone(),
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        match client.watch(request.clone()).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            backoff = MIN_BACKOFF;
                            let Some(policy) = policy.upgrade() else {
                                return;
                            };
                            // Not yet known to the controller: keep what we
                            // have (refusing, before the first policy).
                            if !update.known {
                                tracing::info!(%namespace, %pod, "the controller does not know this pod yet; policy unchanged");
                                continue;
                            }
                            let rules = Rules::compile(&update);
                            tracing::info!(
                                ingress_isolated = rules.isolated(super::Way::Ingress),
                                egress_isolated = rules.isolated(super::Way::Egress),
                                audit = rules.audit,
                                "policy updated"
                            );
                            policy.set(rules);
                        }
                        Ok(None) => {
                            tracing::info!("policy stream ended; resubscribing");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(code = ?status.code(), message = %status.message(), "policy stream failed; keeping the last known policy");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = %status.message(), "cannot reach the controller for policy; keeping the last known policy")
            }
        }
        if policy.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
