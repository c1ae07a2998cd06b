//! The `weft-controller` command: `serve` runs the control plane; the
//! other subcommands make the CA material and file-source tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weft_api::identity::{DEFAULT_TRUST_DOMAIN, SpiffeId, TOKEN_AUDIENCE};
use weft_controller::{DiscoverySource, ServeConfig, TokenSource, ca, pki, token};

fn duration(v: &str) -> Result<Duration, weft_api::duration::DurationError> {
    weft_api::duration::parse(v)
}

#[derive(Debug, Parser)]
#[command(name = "weft-controller", version, about = "Weft's control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at startup; the size of `Serve` does not matter.
#[allow(clippy::large_enum_variant)]
/// The steps of `rotate-anchor`, in order.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum AnchorStepFlag {
    Add,
    Issuer,
    Retire,
}

// Parsed once at start: the size of the biggest command does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the identity service.
    Serve {
        /// Folder with ca.crt (trust anchors), tls.crt and tls.key (the issuer).
        #[arg(long, env = "WEFT_ISSUER_DIR", default_value = "/var/run/weft/issuer")]
        issuer_dir: PathBuf,
        #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, env = "WEFT_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], weft_api::controller::GRPC_PORT)))]
        listen: SocketAddr,
        #[arg(long, env = "WEFT_ADMIN_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], weft_api::controller::ADMIN_PORT)))]
        admin: SocketAddr,
        /// Lifetime of workload certificates.
        #[arg(long, env = "WEFT_CERT_LIFETIME", default_value = "24h", value_parser = duration)]
        cert_lifetime: Duration,
        /// Certificates are valid from this long before they are signed.
        #[arg(long, env = "WEFT_CLOCK_SKEW", default_value = "1m", value_parser = duration)]
        clock_skew: Duration,
        /// `kubernetes` (TokenReview) or `file:<public key>`.
        #[arg(long, env = "WEFT_TOKEN_SOURCE", default_value = "kubernetes")]
        token_source: String,
        #[arg(long, env = "WEFT_TOKEN_AUDIENCE", default_value = TOKEN_AUDIENCE)]
        token_audience: String,
        /// Namespace and service account the controller runs as; its
        /// serving certificate carries that identity.
        #[arg(long, env = "WEFT_NAMESPACE", default_value = weft_api::controller::NAMESPACE)]
        namespace: String,
        #[arg(long, env = "WEFT_SERVICE_ACCOUNT", default_value = weft_api::controller::SERVICE_ACCOUNT)]
        service_account: String,
        /// How often the issuer files are checked for changes.
        #[arg(long, env = "WEFT_RELOAD_INTERVAL", default_value = "2s", value_parser = duration)]
        reload_interval: Duration,
        /// Where discovery objects come from: `kubernetes` (watches),
        /// `file:<file or folder>` (YAML, reloaded on change) or `none`.
        #[arg(long, env = "WEFT_DISCOVERY", default_value = "kubernetes")]
        discovery: String,
        /// The cluster's DNS domain.
        #[arg(long, env = "WEFT_CLUSTER_DOMAIN", default_value = "cluster.local")]
        cluster_domain: String,
        /// What mesh authorization lets through to a port no ALLOW
        /// AuthorizationPolicy covers, in namespaces without the
        /// `policy.weft.io/default` annotation: `all`, `authenticated`
        /// (mesh clients), `cluster` (mesh clients and plaintext from
        /// `--cluster-networks`) or `deny`.
        #[arg(long, env = "WEFT_DEFAULT_AUTHORIZATION", default_value = "all")]
        default_authorization: String,
        /// The cluster's pod and node CIDRs, comma-separated, for the
        /// `cluster` default (the private ranges when unset).
        #[arg(long, env = "WEFT_CLUSTER_NETWORKS", value_delimiter = ',')]
        cluster_networks: Vec<ipnet::IpNet>,
        #[arg(long, env = "WEFT_LOG_LEVEL", default_value = "info")]
        log_level: String,
    },
    /// Make a new trust anchor and issuer for a new mesh.
    Bootstrap {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, default_value = "3650d", value_parser = duration)]
        anchor_lifetime: Duration,
        #[arg(long, default_value = "365d", value_parser = duration)]
        issuer_lifetime: Duration,
        /// Replace an existing anchor (this starts a new mesh).
        #[arg(long)]
        force: bool,
    },
    /// Write the manifest of everything an install needs that is secret or
    /// generated: the issuer Secret, the trust anchors, the injector's
    /// serving certificate and its webhook configuration. The CA material
    /// is made in (or reused from) `--pki`, which stays with the operator.
    InstallSecrets {
        /// Folder for the CA material (created when missing; keep it safe).
        #[arg(long)]
        pki: PathBuf,
        /// Where to write the manifest (`-` for stdout).
        #[arg(long, default_value = "examples/install/05-secrets.yaml")]
        out: PathBuf,
        /// What the API server does with pods of labelled namespaces while
        /// no injector answers: `Fail` (refuse them) or `Ignore` (create
        /// them without the proxy).
        #[arg(long, default_value = "Fail")]
        failure_policy: String,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, default_value = weft_api::controller::NAMESPACE)]
        namespace: String,
        #[arg(long, default_value = "365d", value_parser = duration)]
        webhook_cert_lifetime: Duration,
    },
    /// Make a new issuer under the existing anchor (needs ca.key).
    RotateIssuer {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, default_value = "365d", value_parser = duration)]
        issuer_lifetime: Duration,
    },
    /// One step of replacing the trust anchor with no outage, in the CA
    /// folder: `add` a new anchor to the bundle, switch to an `issuer`
    /// under it, then `retire` the old anchor. Wait between steps until
    /// every proxy caught up (README, "Rotating the trust anchor").
    RotateAnchor {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum)]
        step: AnchorStepFlag,
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, default_value = "3650d", value_parser = duration)]
        anchor_lifetime: Duration,
        #[arg(long, default_value = "365d", value_parser = duration)]
        issuer_lifetime: Duration,
    },
    /// Sign a certificate for a peer outside the mesh straight from the
    /// issuer files (writes the chain and the key as one PEM file).
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
        #[arg(long)]
        identity: String,
        #[arg(long, default_value = "24h", value_parser = duration)]
        lifetime: Duration,
        #[arg(long)]
        out: PathBuf,
    },
    /// Make the key pair the file token source signs with.
    TokenKey {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Print a file-source token for a service account.
    Token {
        /// The private key from `token-key`.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        #[arg(long, default_value = TOKEN_AUDIENCE)]
        audience: String,
        #[arg(long, default_value = "24h", value_parser = duration)]
        ttl: Duration,
        /// Make a token that has already expired (for testing refusals).
        #[arg(long)]
        expired: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft-controller: {}", weft_api::error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            issuer_dir,
            trust_domain,
            listen,
            admin,
            cert_lifetime,
            clock_skew,
            token_source,
            token_audience,
            namespace,
            service_account,
            reload_interval,
            discovery,
            cluster_domain,
            default_authorization,
            cluster_networks,
            log_level,
        } => {
            let filter = tracing_subscriber::EnvFilter::builder()
                .parse(&log_level)
                .map_err(|e| anyhow::anyhow!("--log-level {log_level:?}: {e}"))?;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            let token_source = match token_source.as_str() {
                "kubernetes" => TokenSource::Kubernetes,
                other => match other.strip_prefix("file:") {
                    Some(path) if !path.is_empty() => TokenSource::File(path.into()),
                    _ => anyhow::bail!(
                        "--token-source {other:?}: use `kubernetes` or `file:<public key path>`"
                    ),
                },
            };
            let discovery = match discovery.as_str() {
                "kubernetes" => DiscoverySource::Kubernetes,
                "none" => DiscoverySource::None,
                other => match other.strip_prefix("file:") {
                    Some(path) if !path.is_empty() => DiscoverySource::File(path.into()),
                    _ => anyhow::bail!(
                        "--discovery {other:?}: use `kubernetes`, `file:<file or folder>` or `none`"
                    ),
                },
            };
            if cert_lifetime < Duration::from_secs(10) {
                anyhow::bail!("--cert-lifetime must be at least 10s");
            }
            let identity = SpiffeId::new(&trust_domain, &namespace, &service_account)?;
            let authorization = weft_controller::discovery::authz::resolve::Defaults {
                authorization: weft_controller::discovery::authz::parse_default(
                    &default_authorization,
                )
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--default-authorization {default_authorization:?}: use all, authenticated, cluster or deny"
                    )
                })?,
                cluster_networks: match cluster_networks.is_empty() {
                    true => weft_controller::discovery::authz::resolve::default_cluster_networks(),
                    false => cluster_networks,
                },
            };
            let config = ServeConfig {
                issuer_dir,
                trust_domain,
                listen,
                admin,
                leaf_lifetime: cert_lifetime,
                clock_skew,
                token_source,
                token_audience,
                identity,
                reload_interval,
                discovery,
                cluster_domain,
                authorization,
            };
            weft_api::runtime::build("weft-controller", 2)?.block_on(weft_controller::serve(config))
        }
        Command::Bootstrap {
            out,
            trust_domain,
            anchor_lifetime,
            issuer_lifetime,
            force,
        } => {
            SpiffeId::new(&trust_domain, "a", "b")?;
            pki::bootstrap(&out, &trust_domain, anchor_lifetime, issuer_lifetime, force)?;
            println!(
                "wrote the trust anchor ({0}/{1}, key {0}/{2}: keep it offline) and the issuer ({0}/{3}, {0}/{4})",
                out.display(),
                pki::ANCHOR_CERT,
                pki::ANCHOR_KEY,
                pki::ISSUER_CERT,
                pki::ISSUER_KEY
            );
            Ok(())
        }
        Command::InstallSecrets {
            pki: pki_dir,
            out,
            failure_policy,
            trust_domain,
            namespace,
            webhook_cert_lifetime,
        } => {
            SpiffeId::new(&trust_domain, &namespace, "a")?;
            let manifest = weft_controller::install::render(
                &pki_dir,
                &weft_controller::install::InstallSecrets {
                    trust_domain,
                    namespace,
                    failure_policy,
                    webhook_cert_lifetime,
                },
            )?;
            if out.as_os_str() == "-" {
                print!("{manifest}");
            } else {
                pki::write_atomic(&out, manifest.as_bytes(), true)?;
                eprintln!(
                    "wrote {} (CA material in {}; keep that folder, and do not commit the manifest)",
                    out.display(),
                    pki_dir.display()
                );
            }
            Ok(())
        }
        Command::RotateIssuer {
            dir,
            trust_domain,
            issuer_lifetime,
        } => {
            pki::rotate_issuer(&dir, &trust_domain, issuer_lifetime)?;
            println!("wrote a new issuer to {}", dir.display());
            Ok(())
        }
        Command::RotateAnchor {
            dir,
            step,
            trust_domain,
            anchor_lifetime,
            issuer_lifetime,
        } => {
            SpiffeId::new(&trust_domain, "a", "b")?;
            let step = match step {
                AnchorStepFlag::Add => pki::AnchorStep::Add,
                AnchorStepFlag::Issuer => pki::AnchorStep::Issuer,
                AnchorStepFlag::Retire => pki::AnchorStep::Retire,
            };
            let done =
                pki::rotate_anchor(&dir, step, &trust_domain, anchor_lifetime, issuer_lifetime)?;
            println!("{done}");
            Ok(())
        }
        Command::Issue {
            dir,
            identity,
            lifetime,
            out,
        } => {
            let identity: SpiffeId = identity.parse()?;
            ca::issue_offline(&dir, &identity, lifetime, &out)?;
            println!("wrote {} for {identity}", out.display());
            Ok(())
        }
        Command::TokenKey { out, force } => {
            pki::generate_token_key(&out, force)?;
            println!(
                "wrote {0}/{1} (signing) and {0}/{2} (for --token-source file:)",
                out.display(),
                pki::TOKEN_SIGNING_KEY,
                pki::TOKEN_VERIFY_KEY
            );
            Ok(())
        }
        Command::Token {
            key,
            namespace,
            service_account,
            audience,
            ttl,
            expired,
        } => {
            SpiffeId::new(DEFAULT_TRUST_DOMAIN, &namespace, &service_account)?;
            let pem = std::fs::read(&key)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", key.display()))?;
            println!(
                "{}",
                token::mint_file_token(
                    &pem,
                    &namespace,
                    &service_account,
                    &audience,
                    ttl,
                    expired
                )?
            );
            Ok(())
        }
    }
}
