//! `weft-controller`: Weft's control plane.
//!
//! It is the mesh's identity CA: proxies send a CSR for a key they keep,
//! with the service-account token that proves who they are, and get a
//! short-lived SPIFFE workload certificate signed by the issuer (an
//! intermediate under the trust anchor). The issuer is reloaded from its
//! files when they change.
//!
//! It also serves discovery: proxies subscribe to the destinations their
//! apps dial and get each one's endpoints (with identities), traffic split
//! and route policy, pushed whenever they change. Objects come from the
//! Kubernetes API or from YAML files.

pub mod admin;
pub mod ca;
pub mod discovery;
pub mod install;
pub mod metrics;
pub mod pki;
pub mod service;
pub mod serving;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use weft_api::identity::SpiffeId;
use weft_api::proto::destination::destination_server::DestinationServer;
use weft_api::proto::identity::identity_server::IdentityServer;
use weft_api::proto::policy::policy_server::PolicyServer;

use crate::ca::{Ca, CaSettings};
use crate::discovery::Store;
use crate::metrics::Metrics;
use crate::token::TokenVerifier;

/// Where tokens are checked.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// TokenReview against the API server of the cluster we run in.
    Kubernetes,
    /// JWTs signed by the key whose public half is in this file.
    File(PathBuf),
}

/// Where discovery objects come from.
#[derive(Debug, Clone)]
pub enum DiscoverySource {
    /// Watches on the API server of the cluster we run in.
    Kubernetes,
    /// YAML files in this file or folder, polled for changes.
    File(PathBuf),
    /// No discovery: every destination is unknown (identity only).
    None,
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub issuer_dir: PathBuf,
    pub trust_domain: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub leaf_lifetime: Duration,
    pub clock_skew: Duration,
    pub token_source: TokenSource,
    pub token_audience: String,
    /// The controller's own identity, on its serving certificate.
    pub identity: SpiffeId,
    pub reload_interval: Duration,
    pub discovery: DiscoverySource,
    /// The cluster's DNS domain, for names like `web.demo.svc.cluster.local`.
    pub cluster_domain: String,
    /// Mesh authorization where no policy says otherwise.
    pub authorization: discovery::authz::resolve::Defaults,
}

/// Runs the identity service until SIGTERM or SIGINT.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    metrics
        .identity
        .known_refusals(&token::TokenRefusal::REASONS);
    metrics.identity.known_refusals(&ca::CsrRefusal::REASONS);
    let ca = Arc::new(
        Ca::load(
            pki::IssuerPaths::in_dir(&config.issuer_dir),
            CaSettings {
                trust_domain: config.trust_domain.clone(),
                leaf_lifetime: config.leaf_lifetime,
                clock_skew: config.clock_skew,
            },
            metrics.identity.clone(),
        )
        .with_context(|| {
            format!(
                "cannot load the issuer from {}",
                config.issuer_dir.display()
            )
        })?,
    );
    let mut kube_client = None;
    let mut kube = async || -> anyhow::Result<kube::Client> {
        if let Some(client) = &kube_client {
            return Ok(Clone::clone(client));
        }
        let client = kube::Client::try_default()
            .await
            .context("cannot reach the Kubernetes API")?;
        kube_client = Some(client.clone());
        Ok(client)
    };
    let tokens = Arc::new(match &config.token_source {
        TokenSource::File(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read token key {}", path.display()))?;
            TokenVerifier::file(&pem, &config.token_audience)
                .with_context(|| format!("{} is not an EC public key", path.display()))?
        }
        TokenSource::Kubernetes => TokenVerifier::kubernetes(kube().await?, &config.token_audience),
    });
    let store = Store::new(
        &config.trust_domain,
        &config.cluster_domain,
        metrics.discovery.clone(),
    );
    store.set_authorization_defaults(config.authorization.clone());
    match &config.discovery {
        DiscoverySource::Kubernetes => discovery::kubernetes::spawn(kube().await?, store.clone()),
        DiscoverySource::File(path) => {
            tokio::spawn(discovery::file::run(
                path.clone(),
                store.clone(),
                config.reload_interval,
            ));
        }
        DiscoverySource::None => store.mark_synced(),
    }
    let serving = serving::ServingCert::new(&ca, config.identity.clone())?;
    let tls = serving.server_config()?;
    tokio::spawn(serving::maintain(
        ca.clone(),
        serving.clone(),
        config.reload_interval,
    ));

    let admin = tokio::net::TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("cannot listen on {}", config.admin))?;
    tokio::spawn(weft_api::admin::serve(
        admin,
        Arc::new(admin::ControllerAdmin {
            metrics: metrics.clone(),
            store: store.clone(),
        }),
    ));
    let grpc = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin,
        identity = %config.identity,
        tokens = ?config.token_source,
        discovery = ?config.discovery,
        "serving identity and discovery"
    );
    let policies = PolicyServer::new(discovery::netpol::service::PolicyService {
        store: store.clone(),
    })
    .max_decoding_message_size(16 * 1024);
    let destinations = DestinationServer::new(discovery::service::DestinationService {
        store,
        metrics: metrics.clone(),
    })
    .max_decoding_message_size(16 * 1024);
    let service = IdentityServer::new(service::IdentityService {
        ca,
        tokens,
        metrics,
        refusal_log: Default::default(),
    })
    // A CSR and a token fit easily; anything bigger is not a real request.
    .max_decoding_message_size(64 * 1024);
    tonic::transport::Server::builder()
        // Bounds each call until its response starts; a destination
        // stream then lives as long as the proxy keeps it.
        .timeout(Duration::from_secs(30))
        // Finds proxies that vanished without closing their streams.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(service)
        .add_service(destinations)
        .add_service(policies)
        .serve_with_incoming_shutdown(serving::incoming(grpc, tls), shutdown_signal())
        .await
        .context("gRPC server failed")?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    match weft_api::runtime::stop_signal() {
        Ok(stop) => tracing::info!(signal = stop.await.as_str(), "stopping"),
        Err(error) => {
            tracing::warn!(%error, "no signal handlers; stop with SIGKILL");
            std::future::pending().await
        }
    }
}
