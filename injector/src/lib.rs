//! `weft-injector`: the mutating admission webhook that adds `weft-proxy`
//! to pods. Labelling a namespace `weft.io/inject=enabled` (or annotating a
//! pod `weft.io/inject: enabled`) is all a user does to mesh a workload.
//!
//! - [`inject`]: the mutation, a pure function from a Pod to a JSON Patch;
//! - [`pod_config`]: the per-pod annotations, parsed and checked;
//! - [`pod_budget`]: the proxy inside a pod's own resource budget;
//! - [`review`]: AdmissionReview in, AdmissionReview out;
//! - [`server`]: the HTTPS webhook (certificate hot-reloaded by [`tls`])
//!   and the admin server.

pub mod inject;
pub mod metrics;
pub mod pod_budget;
pub mod pod_config;
pub mod quantity;
pub mod review;
pub mod server;
pub mod settings;
pub mod tls;

/// The webhook's HTTPS port.
pub const WEBHOOK_PORT: u16 = 8443;
/// The admin port: `/live`, `/ready`, `/metrics`.
pub const ADMIN_PORT: u16 = 9995;
