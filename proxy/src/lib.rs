//! `weft-proxy`: Weft's per-pod sidecar.
//!
//! It accepts the pod's redirected TCP connections on an outbound and an
//! inbound listener, recovers each connection's original destination,
//! detects the protocol, and forwards: HTTP through hyper with pooled
//! upstream connections, everything else as an opaque byte stream. With no
//! controller configured it forwards transparently to the original
//! destination (inbound: to the app on loopback). With one, it gets a
//! workload certificate, asks discovery where each destination's endpoints
//! are, balances HTTP per request and TCP per connection over them with
//! the service's retry, timeout and circuit-breaking policy, and wraps
//! traffic to meshed pods in mutual TLS.

pub mod admin;
pub mod app_watch;
pub mod await_ready;
pub mod balance;
pub mod config;
pub(crate) mod connection;
pub mod detect;
pub mod discovery;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http;
pub mod identity;
pub(crate) mod inbound;
pub mod io;
pub mod limits;
pub(crate) mod listener;
pub mod mesh;
pub mod metrics;
pub mod orig_dst;
pub(crate) mod outbound;
pub mod policy;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod transport;
pub mod validate;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::discovery::Resolver;
use crate::http::server::HttpContext;
use crate::limits::ConnectionLimits;
use crate::listener::Listener;
use crate::mesh::{Endpoints, MeshClient};
use crate::metrics::{Direction, Metrics};
use crate::policy::Policy;
use crate::tls::CertStore;
use crate::transport::Connector;

/// Fatal startup errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tracing")]
    Tracing(#[from] trace::ExporterError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("mesh TLS")]
    MeshTls(#[from] rustls::Error),
    #[error("mesh endpoints")]
    MeshEndpoints(#[from] tls::NoTlsName),
    #[error("the controller connection")]
    Controller(#[from] identity::ChannelError),
}

/// Sets up logging once, from the validated filter.
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Mesh TLS state, present when the proxy has an identity.
struct Mesh {
    certs: Arc<CertStore>,
    client: Arc<MeshClient>,
    server: Arc<rustls::ServerConfig>,
}

/// Runs the proxy until SIGTERM, SIGINT or an admin `/shutdown`, then drains.
pub async fn run(config: Config) -> Result<(), Error> {
    let config = Arc::new(config);
    raise_open_files_limit(config.max_connections);
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    let mesh = match &config.identity {
        None => None,
        Some(identity) => {
            let certs = Arc::new(CertStore::default());
            let client = tls::mesh_client_config(identity.anchors.clone(), certs.clone())?;
            let server = tls::mesh_server_config(identity.anchors.clone(), certs.clone())?;
            tokio::spawn(identity::maintain(
                identity.clone(),
                certs.clone(),
                metrics.clone(),
            ));
            Some(Mesh {
                client: Arc::new(MeshClient {
                    config: client,
                    certs: certs.clone(),
                }),
                certs,
                server,
            })
        }
    };
    let endpoints = Arc::new(Endpoints::new(&config.mesh_endpoints)?);
    let resolver = match &config.identity {
        Some(identity) if config.discovery => {
            let channel = identity::controller_channel(identity, None)?;
            Some(Resolver::new(
                channel,
                identity.identity.namespace().to_string(),
                config.discovery_wait,
                metrics.clone(),
            ))
        }
        _ => None,
    };
    let policy = match (&config.identity, &config.pod_name) {
        (Some(identity), Some(pod)) if config.discovery => {
            let channel = identity::controller_channel(identity, None)?;
            let namespace = identity.identity.namespace().to_string();
            tracing::info!(%namespace, %pod, "enforcing the pod's NetworkPolicy; refusing connections until it arrives");
            Policy::follow(
                channel,
                namespace,
                pod.clone(),
                config.host_ip,
                metrics.clone(),
            )
        }
        _ => Policy::off(metrics.clone()),
    };

    let tracer = match &config.trace_collector {
        None => None,
        Some(collector) => {
            let tracer = trace::Tracer::new(
                collector,
                config.trace_sample_ratio,
                config.identity.as_ref().map(|i| &i.identity),
            )?;
            tracing::info!(%collector, ratio = config.trace_sample_ratio, "exporting request spans");
            Some(tracer)
        }
    };

    let admin_listener = bind(config.admin_addr, false)?;
    let state = Arc::new(admin::AdminState {
        metrics: metrics.clone(),
        ready: Default::default(),
        certs: mesh.as_ref().map(|m| m.certs.clone()),
        policy: policy.clone(),
        shutdown: shutdown.clone(),
    });
    tokio::spawn(weft_api::admin::serve(admin_listener, state.clone()));

    // Outbound traffic is redirected to loopback (the NAT output hook
    // rewrites to the local address); inbound traffic arrives on the pod's
    // own addresses.
    let listeners = [
        (
            Direction::Outbound,
            SocketAddr::from((Ipv4Addr::LOCALHOST, config.outbound_port)),
        ),
        (
            Direction::Outbound,
            SocketAddr::from((Ipv6Addr::LOCALHOST, config.outbound_port)),
        ),
        (
            Direction::Inbound,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.inbound_port)),
        ),
        (
            Direction::Inbound,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, config.inbound_port)),
        ),
    ];
    let mut accept_loops = Vec::new();
    for direction in [Direction::Outbound, Direction::Inbound] {
        let connector = Connector {
            timeout: config.connect_timeout,
            metrics: metrics.clone(),
            direction,
            // Inbound connections go to the app over loopback, never mTLS.
            mesh: match direction {
                Direction::Outbound => mesh.as_ref().map(|m| m.client.clone()),
                Direction::Inbound => None,
            },
            egress: match direction {
                Direction::Outbound => Some(policy.clone()),
                Direction::Inbound => None,
            },
        };
        let ctx = Arc::new(Listener {
            config: config.clone(),
            metrics: metrics.clone(),
            http: Arc::new(HttpContext::new(config.clone(), connector, tracer.clone())),
            direction,
            shutdown: shutdown.clone(),
            endpoints: endpoints.clone(),
            // Inbound uses it only to ask whether a client is a meshed pod.
            resolver: resolver.clone(),
            mesh_server: mesh.as_ref().map(|m| m.server.clone()),
            policy: policy.clone(),
            limits: ConnectionLimits::new(
                direction,
                config.max_connections,
                // Outbound, every connection comes from the pod's app.
                (direction == Direction::Inbound).then_some(config.max_connections_per_client),
                metrics.clone(),
            ),
        });
        for (_, addr) in listeners.iter().filter(|(d, _)| *d == direction) {
            match bind(*addr, addr.is_ipv6()) {
                Ok(listener) => {
                    tracing::info!(%direction, %addr, "listening");
                    accept_loops.push(tokio::spawn(accept(listener, ctx.clone(), tracker.clone())));
                }
                // A pod without IPv6 still works over IPv4.
                Err(error) if addr.is_ipv6() => {
                    tracing::info!(%addr, %error, "IPv6 unavailable, not listening")
                }
                Err(error) => return Err(error),
            }
        }
    }
    state.ready.store(true, Ordering::Release);
    match &config.identity {
        Some(identity) => tracing::info!(
            admin = %config.admin_addr,
            identity = %identity.identity,
            controller = %identity.controller_addr,
            inbound_mtls = ?config.inbound_mtls,
            "listening; ready once the first certificate arrives"
        ),
        None => {
            tracing::info!(admin = %config.admin_addr, "ready (no identity: plain transparent proxy)")
        }
    }

    if config.exit_with_app {
        tokio::spawn(app_watch::exit_with_app(
            shutdown.clone(),
            nix::unistd::getuid().as_raw(),
            std::time::Duration::from_millis(500),
        ));
    }
    wait_for_shutdown(&shutdown).await?;
    state.ready.store(false, Ordering::Release);
    shutdown.cancel();
    for task in accept_loops {
        task.abort();
    }
    tracker.close();
    tracing::info!(grace = ?config.shutdown_grace, in_flight = tracker.len(), "draining");
    match tokio::time::timeout(config.shutdown_grace, tracker.wait()).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            left = tracker.len(),
            "grace period over; closing remaining connections"
        ),
    }
    if let Some(tracer) = tracer {
        // Flushing blocks until the exporter is done; keep it off the
        // runtime's workers, which the exporter's channel runs on.
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one, as Go's runtime
/// does: each proxied connection takes two descriptors, and runtimes
/// often leave the soft limit at 1024, far below `WEFT_MAX_CONNECTIONS`.
fn raise_open_files_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        tracing::warn!(soft, hard, "cannot raise the open-files limit");
    }
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(soft, _)| soft);
    // Two per connection (client and upstream), for both directions.
    let needed = 4 * max_connections as u64 + 256;
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "the open-files limit is below what WEFT_MAX_CONNECTIONS needs; \
             connections past it fail to accept (EMFILE) instead of being refused and counted"
        );
    }
}

async fn wait_for_shutdown(shutdown: &CancellationToken) -> Result<(), Error> {
    let stop = weft_api::runtime::stop_signal().map_err(Error::Signal)?;
    tokio::select! {
        stop = stop => tracing::info!(signal = stop.as_str(), "stopping"),
        _ = shutdown.cancelled() => {}
    }
    Ok(())
}

fn bind(addr: SocketAddr, v6_only: bool) -> Result<TcpListener, Error> {
    use socket2::{Domain, Socket, Type};
    let err = |source| Error::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6_only).map_err(err)?;
    }
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

async fn accept(listener: TcpListener, ctx: Arc<Listener>, tracker: TaskTracker) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Over a limit the connection is closed at once: holding it
                // unserved would use what the limit protects.
                let Ok(admitted) = ctx.limits.admit(peer.ip()) else {
                    drop(stream);
                    continue;
                };
                let handle = connection::handle(ctx.clone(), stream, peer);
                tracker.spawn(async move {
                    handle.await;
                    drop(admitted);
                });
            }
            Err(error) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(direction = %ctx.direction, %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
