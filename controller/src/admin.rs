//! What the controller's admin server reports (served by
//! [`weft_api::admin`]): ready once discovery has listed everything.

use std::sync::Arc;

use crate::discovery::Store;
use crate::metrics::Metrics;

/// The controller as its admin server sees it.
#[derive(Debug)]
pub struct ControllerAdmin {
    pub metrics: Arc<Metrics>,
    pub store: Arc<Store>,
}

impl weft_api::admin::Admin for ControllerAdmin {
    fn readiness(&self) -> Result<(), weft_api::admin::NotReady> {
        // Serving starts only after the CA loaded; discovery must also have
        // listed everything once, or proxies would be told that existing
        // services do not exist.
        if self.store.is_synced() {
            Ok(())
        } else {
            Err(weft_api::admin::NotReady("discovery not synced"))
        }
    }

    fn metrics(&self) -> String {
        self.metrics.encode()
    }
}
