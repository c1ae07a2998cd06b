//! The gRPC destination service.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use weft_api::proto::destination::destination_server::Destination;
use weft_api::proto::destination::{DestinationUpdate, GetDestination};

use super::Store;
use super::resolve::Authority;
use crate::metrics::Metrics;

#[derive(Debug)]
pub struct DestinationService {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<DestinationUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = UpdateStream;

    async fn get(
        &self,
        request: Request<GetDestination>,
    ) -> Result<Response<Self::GetStream>, Status> {
        // One channel per proxy: its address tells proxies apart.
        let peer = request
            .remote_addr()
            .or_else(|| request.extensions().get::<std::net::SocketAddr>().copied());
        let req = request.into_inner();
        let authority = Authority::parse(&req.authority).map_err(|e| {
            self.metrics.discovery.refused();
            Status::invalid_argument(e)
        })?;
        let namespace = if req.context_namespace.is_empty() {
            "default".to_string()
        } else {
            req.context_namespace
        };
        let (tx, rx) = mpsc::channel(4);
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _subscription = metrics.discovery.subscription(peer);
            // Registered before the first look, so neither the first full
            // listing nor a change after it can slip past.
            let subscription = store.subscribe();
            let mut last: Option<DestinationUpdate> = None;
            loop {
                let changed_at = subscription.wake.take_pending_since();
                // Before the first full listing, "unknown" could be wrong;
                // the proxy waits (bounded on its side) instead.
                if store.is_synced() {
                    let update = store.resolve_for(&subscription, &authority, &namespace);
                    if last.as_ref() != Some(&update) {
                        tracing::debug!(
                            ?authority,
                            known = update.known,
                            backends = update.backends.len(),
                            "destination update"
                        );
                        if tx.send(Ok(update.clone())).await.is_err() {
                            break;
                        }
                        // A first answer is not a change being propagated.
                        metrics.discovery.update(match (&last, changed_at) {
                            (Some(_), Some(at)) => Some(at.elapsed()),
                            _ => None,
                        });
                        last = Some(update);
                    }
                }
                tokio::select! {
                    () = subscription.wake.changed() => {}
                    () = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
