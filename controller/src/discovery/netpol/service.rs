//! The gRPC policy service: one stream per proxy, carrying its pod's
//! resolved NetworkPolicy whenever it changes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weft_api::proto::policy::policy_server::Policy;
use weft_api::proto::policy::{GetPolicy, PolicyUpdate};

use crate::discovery::Store;

/// Changes that land together (a Deployment rolling, a file rewritten)
/// are resolved once.
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct PolicyService {
    pub store: Arc<Store>,
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<PolicyUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Policy for PolicyService {
    type WatchStream = UpdateStream;

    async fn watch(
        &self,
        request: Request<GetPolicy>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        if req.namespace.is_empty() || req.pod.is_empty() {
            return Err(Status::invalid_argument(
                "a policy watch names the pod's namespace and name",
            ));
        }
        let key = (req.namespace, req.pod);
        let (tx, rx) = mpsc::channel(4);
        let store = self.store.clone();
        tokio::spawn(async move {
            // Subscribed before the first look, so no change slips past.
            let mut inputs = store.policy_inputs();
            let mut last: Option<PolicyUpdate> = None;
            loop {
                inputs.borrow_and_update();
                // Before the first full listing the pod may look unknown;
                // the proxy keeps denying (isolated or not) until it knows.
                let update = match store.is_synced() {
                    true => store.policy_for(&key),
                    false => PolicyUpdate::default(),
                };
                if last.as_ref() != Some(&update) {
                    tracing::debug!(pod = ?key, known = update.known, "policy update");
                    if tx.send(Ok(update.clone())).await.is_err() {
                        break;
                    }
                    last = Some(update);
                }
                tokio::select! {
                    changed = inputs.changed() => if changed.is_err() { break },
                    () = tx.closed() => break,
                }
                tokio::time::sleep(SETTLE).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
