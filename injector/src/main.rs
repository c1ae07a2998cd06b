//! The `weft-injector` command: serves the admission webhook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use weft_api::identity::{DEFAULT_TRUST_DOMAIN, SpiffeId, TOKEN_AUDIENCE};
use weft_injector::metrics::Metrics;
use weft_injector::server::{self, Webhook};
use weft_injector::settings::{self, MeshSettings, Resources, SidecarMode};
use weft_injector::tls::{ServingCert, WatchedFiles};
use weft_injector::{ADMIN_PORT, WEBHOOK_PORT, quantity};

fn duration(v: &str) -> Result<Duration, weft_api::duration::DurationError> {
    weft_api::duration::parse(v)
}

fn positive_quantity(v: &str) -> Result<quantity::Quantity, String> {
    let q = quantity::parse(v)?;
    if q.value <= 0.0 {
        return Err("must be greater than zero".into());
    }
    Ok(q)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeFlag {
    /// Native on Kubernetes 1.29 and later, classic before (asks the API
    /// server's /version at start and every few minutes).
    Auto,
    Native,
    Classic,
}

#[derive(Debug, Parser)]
#[command(
    name = "weft-injector",
    version,
    about = "Weft's sidecar injection webhook"
)]
struct Cli {
    #[arg(long, env = "WEFT_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], WEBHOOK_PORT)))]
    listen: SocketAddr,
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], ADMIN_PORT)))]
    admin: SocketAddr,
    /// The webhook's serving certificate (PEM chain); reloaded on change.
    #[arg(
        long,
        env = "WEFT_TLS_CERT",
        default_value = "/var/run/weft/webhook/tls.crt"
    )]
    tls_cert: PathBuf,
    #[arg(
        long,
        env = "WEFT_TLS_KEY",
        default_value = "/var/run/weft/webhook/tls.key"
    )]
    tls_key: PathBuf,
    /// The mesh's trust anchors (PEM), given to every proxy; reloaded on
    /// change, for pods created afterwards.
    #[arg(
        long,
        env = "WEFT_TRUST_ANCHORS_FILE",
        default_value = "/var/run/weft/trust/ca.crt"
    )]
    trust_anchors_file: PathBuf,
    #[arg(long, env = "WEFT_PROXY_IMAGE", default_value = concat!("docker.io/weft/weft-proxy:", env!("CARGO_PKG_VERSION")))]
    proxy_image: String,
    /// Always, IfNotPresent or Never; unset lets Kubernetes decide.
    #[arg(long, env = "WEFT_PROXY_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    proxy_image_pull_policy: Option<String>,
    /// The proxy binary inside its image (run by the classic mode's hook).
    #[arg(
        long,
        env = "WEFT_PROXY_BINARY",
        default_value = "/usr/local/bin/weft-proxy"
    )]
    proxy_binary: String,
    /// Namespace of the control plane.
    #[arg(long, env = "WEFT_NAMESPACE", default_value = weft_api::controller::NAMESPACE)]
    namespace: String,
    /// The controller's gRPC address (default: its Service in --namespace).
    #[arg(long, env = "WEFT_CONTROLLER_ADDR")]
    controller_addr: Option<String>,
    #[arg(long, env = "WEFT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    #[arg(long, env = "WEFT_TOKEN_AUDIENCE", default_value = TOKEN_AUDIENCE)]
    token_audience: String,
    /// Lifetime of the proxy's projected token (kubelet renews it at 80 %).
    #[arg(long, env = "WEFT_TOKEN_EXPIRATION", default_value = "1h", value_parser = duration)]
    token_expiration: Duration,
    /// The proxies' log filter unless a pod says otherwise.
    #[arg(
        long,
        env = "WEFT_PROXY_LOG_LEVEL",
        default_value = "warn,weft_proxy=info"
    )]
    proxy_log_level: String,
    #[arg(long, env = "WEFT_PROXY_CPU_REQUEST", default_value = "100m", value_parser = positive_quantity)]
    proxy_cpu_request: quantity::Quantity,
    /// No CPU limit unless set: throttling shows up as latency.
    #[arg(long, env = "WEFT_PROXY_CPU_LIMIT", value_parser = positive_quantity)]
    proxy_cpu_limit: Option<quantity::Quantity>,
    #[arg(long, env = "WEFT_PROXY_MEMORY_REQUEST", default_value = "32Mi", value_parser = positive_quantity)]
    proxy_memory_request: quantity::Quantity,
    #[arg(long, env = "WEFT_PROXY_MEMORY_LIMIT", default_value = "256Mi", value_parser = positive_quantity)]
    proxy_memory_limit: quantity::Quantity,
    #[arg(long, env = "WEFT_SIDECAR_MODE", value_enum, default_value = "auto")]
    sidecar_mode: ModeFlag,
    /// How long a new pod's app waits for its proxy to be ready.
    #[arg(long, env = "WEFT_PROXY_READY_TIMEOUT", default_value = "120s", value_parser = duration)]
    proxy_ready_timeout: Duration,
    /// How often the certificate and trust anchor files are checked.
    #[arg(long, env = "WEFT_RELOAD_INTERVAL", default_value = "5s", value_parser = duration)]
    reload_interval: Duration,
    /// How long open connections may finish after SIGTERM.
    #[arg(long, env = "WEFT_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    shutdown_grace: Duration,
    #[arg(long, env = "WEFT_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// OTLP/gRPC collector (`http://host:4317`) that proxies send a span
    /// per HTTP request to; unset, proxies do no tracing work.
    #[arg(long, env = "WEFT_TRACE_COLLECTOR", value_parser = trace_collector)]
    trace_collector: Option<String>,
    /// Share of new traces the proxies sample (requests arriving with a
    /// `traceparent` follow its sampling decision).
    #[arg(long, env = "WEFT_TRACE_SAMPLE_RATIO", value_parser = sample_ratio)]
    trace_sample_ratio: Option<f64>,
}

fn trace_collector(v: &str) -> Result<String, String> {
    let uri: http::Uri = v.parse().map_err(|e| format!("{e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(v.to_string()),
        _ => Err("must be an http:// or https:// URL of an OTLP/gRPC collector".into()),
    }
}

fn sample_ratio(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("must be a number from 0 to 1".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match weft_api::runtime::build("weft-injector", 2) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-injector: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", weft_api::error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Reads trust anchors, insisting on at least one certificate.
fn trust_anchors(pem: &[u8]) -> anyhow::Result<String> {
    let text = std::str::from_utf8(pem).map_err(|_| anyhow::anyhow!("not UTF-8 PEM"))?;
    let certs = rustls_pemfile::certs(&mut text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("unreadable PEM: {e}"))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in the trust anchors");
    Ok(text.trim().to_string() + "\n")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let (anchor_files, contents) =
        WatchedFiles::open(&[&cli.trust_anchors_file]).context("cannot read the trust anchors")?;
    let anchors = trust_anchors(&contents[0])
        .with_context(|| format!("{}", cli.trust_anchors_file.display()))?;
    let controller_identity = SpiffeId::new(
        &cli.trust_domain,
        &cli.namespace,
        weft_api::controller::SERVICE_ACCOUNT,
    )
    .map_err(|e| anyhow::anyhow!("controller identity: {e}"))?;
    let controller_addr = cli.controller_addr.clone().unwrap_or_else(|| {
        default_controller_addr(
            |k| std::env::var(k).ok(),
            &cli.namespace,
            &cli.cluster_domain,
        )
    });
    tracing_subscriber::EnvFilter::try_new(&cli.proxy_log_level)
        .context("--proxy-log-level is not a log filter")?;
    let settings = MeshSettings {
        proxy_image: cli.proxy_image.clone(),
        image_pull_policy: cli.proxy_image_pull_policy.clone(),
        proxy_binary: cli.proxy_binary.clone(),
        control_plane_namespace: cli.namespace.clone(),
        controller_addr,
        controller_identity,
        trust_domain: cli.trust_domain.clone(),
        trust_anchors_pem: anchors,
        token_audience: cli.token_audience.clone(),
        // The API's minimum is 10 minutes.
        token_expiration_seconds: cli.token_expiration.as_secs().max(600) as i64,
        log_level: cli.proxy_log_level.clone(),
        resources: Resources {
            cpu_request: Some(cli.proxy_cpu_request.clone()),
            cpu_limit: cli.proxy_cpu_limit.clone(),
            memory_request: Some(cli.proxy_memory_request.clone()),
            memory_limit: Some(cli.proxy_memory_limit.clone()),
        },
        ready_timeout_seconds: cli.proxy_ready_timeout.as_secs().clamp(1, 3600) as u32,
        trace_collector: cli.trace_collector.clone(),
        trace_sample_ratio: cli.trace_sample_ratio.map(|r| r.to_string()),
    };
    tracing::info!(
        ?settings,
        "starting weft-injector {}",
        env!("CARGO_PKG_VERSION")
    );

    let cert = ServingCert::load(&cli.tls_cert, &cli.tls_key)
        .context("cannot load the serving certificate")?;
    let metrics = Metrics::new();
    metrics.cert_expiry.set(cert.not_after() as i64);
    let initial_mode = match cli.sidecar_mode {
        ModeFlag::Native => SidecarMode::Native,
        // Until the API server answers, classic works on every version.
        ModeFlag::Classic | ModeFlag::Auto => SidecarMode::Classic,
    };
    let webhook = Webhook::new(settings, initial_mode, metrics.clone());

    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let admin = tokio::net::TcpListener::bind(cli.admin)
        .await
        .with_context(|| format!("cannot listen on {}", cli.admin))?;
    tracing::info!(webhook = %cli.listen, admin = %cli.admin, "listening");
    tokio::spawn(weft_api::admin::serve(admin, webhook.clone()));

    if matches!(cli.sidecar_mode, ModeFlag::Auto) {
        tokio::spawn(detect_mode(webhook.clone()));
    } else {
        webhook.ready.store(true, Ordering::Relaxed);
    }
    tokio::spawn(reload(
        cert.clone(),
        anchor_files,
        webhook.clone(),
        cli.reload_interval,
    ));

    server::serve_webhook(
        listener,
        cert,
        webhook,
        shutdown_signal(),
        cli.shutdown_grace,
    )
    .await;
    Ok(())
}

/// Picks the sidecar mode from the API server's version, and again every
/// few minutes so an upgraded cluster gets native sidecars. Ready once the
/// first answer came, or after a few failed tries (classic then).
async fn detect_mode(webhook: Arc<Webhook>) {
    let mut failures = 0u32;
    // One client for the process; made again only after it failed.
    let mut client: Option<kube::Client> = None;
    loop {
        let version = async {
            let c = match &client {
                Some(c) => c.clone(),
                None => client.insert(kube::Client::try_default().await?).clone(),
            };
            c.apiserver_version().await
        }
        .await;
        let wait = match version {
            Ok(info) => {
                let mode = settings::mode_for_version(&info.major, &info.minor).unwrap_or_else(|| {
                    tracing::warn!(major = %info.major, minor = %info.minor, "unreadable Kubernetes version; using classic sidecars");
                    SidecarMode::Classic
                });
                webhook.set_mode(mode);
                webhook.ready.store(true, Ordering::Relaxed);
                failures = 0;
                Duration::from_secs(300)
            }
            Err(error) => {
                client = None;
                failures += 1;
                tracing::warn!(%error, "cannot ask the API server for its version; keeping {} sidecars", webhook.mode.load().as_str());
                if failures >= 3 {
                    webhook.ready.store(true, Ordering::Relaxed);
                }
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn reload(
    cert: Arc<ServingCert>,
    anchors: WatchedFiles,
    webhook: Arc<Webhook>,
    every: Duration,
) {
    let metrics = webhook.metrics.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match cert.reload_if_changed() {
            None => {}
            Some(Ok(())) => {
                metrics.cert_reload("success");
                metrics.cert_expiry.set(cert.not_after() as i64);
                tracing::info!(
                    expires_in_s = cert.remaining_secs(),
                    "serving certificate reloaded"
                );
            }
            Some(Err(error)) => {
                metrics.cert_reload("failure");
                tracing::error!(%error, "cannot reload the serving certificate; keeping the current one");
            }
        }
        let changed = match anchors.changed() {
            Ok(changed) => changed,
            Err(error) => {
                tracing::warn!(%error, "cannot read the trust anchors");
                continue;
            }
        };
        if let Some(contents) = changed {
            let result = match trust_anchors(&contents[0]) {
                Ok(pem) => {
                    let mut settings = (**webhook.settings.load()).clone();
                    settings.trust_anchors_pem = pem;
                    webhook.settings.store(Arc::new(settings));
                    tracing::info!("trust anchors reloaded; new pods get them");
                    "success"
                }
                Err(error) => {
                    tracing::error!(%error, "cannot reload the trust anchors; keeping the current ones");
                    "failure"
                }
            };
            metrics.cert_reload(result);
        }
    }
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

/// Where proxies reach the controller when `--controller-addr` is not
/// given: the controller Service's cluster IP, which the kubelet hands
/// this pod as `WEFT_CONTROLLER_SERVICE_HOST` (the Service is applied
/// first), so proxies start without depending on cluster DNS; else its
/// DNS name.
fn default_controller_addr(
    var: impl Fn(&str) -> Option<String>,
    namespace: &str,
    cluster_domain: &str,
) -> String {
    let port = var("WEFT_CONTROLLER_SERVICE_PORT_GRPC")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(weft_api::controller::GRPC_PORT);
    match var("WEFT_CONTROLLER_SERVICE_HOST").and_then(|h| h.parse::<std::net::IpAddr>().ok()) {
        Some(ip) => std::net::SocketAddr::new(ip, port).to_string(),
        None => format!(
            "weft-controller.{namespace}.svc.{cluster_domain}:{}",
            weft_api::controller::GRPC_PORT
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::default_controller_addr;

    #[test]
    fn proxies_get_the_service_ip_when_the_kubelet_gave_one() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            default_controller_addr(
                env(&[
                    ("WEFT_CONTROLLER_SERVICE_HOST", "10.96.0.40"),
                    ("WEFT_CONTROLLER_SERVICE_PORT_GRPC", "8086")
                ]),
                "weft-system",
                "cluster.local"
            ),
            "10.96.0.40:8086"
        );
        assert_eq!(
            default_controller_addr(
                env(&[("WEFT_CONTROLLER_SERVICE_HOST", "fd00::40")]),
                "weft-system",
                "cluster.local"
            ),
            "[fd00::40]:8086"
        );
        assert_eq!(
            default_controller_addr(env(&[]), "mesh", "example.org"),
            "weft-controller.mesh.svc.example.org:8086"
        );
    }
}
