//! The `weft-cni` binary. Called by a container runtime (no arguments), it
//! is the CNI plugin: the command in `CNI_COMMAND`, the network config on
//! stdin, the result (or an error object) on stdout, and nothing else on
//! stdout. `weft-cni install` is the node installer the DaemonSet runs, and
//! `weft-cni installed` its readiness check.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weft_cni::install::Installer;

#[derive(Debug, Parser)]
#[command(
    name = "weft-cni",
    version,
    about = "Weft's CNI plugin and its node installer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the plugin on this node and keep it installed until stopped;
    /// remove it on SIGTERM.
    Install {
        #[command(flatten)]
        node: NodeArgs,
        /// How often the node's files are checked.
        #[arg(long, env = "WEFT_CNI_INTERVAL", default_value = "2s", value_parser = weft_api::duration::parse)]
        interval: Duration,
        #[arg(long, env = "WEFT_LOG_LEVEL", default_value = "info")]
        log_level: String,
    },
    /// Exit 0 when the plugin is installed and chained (a readiness probe).
    Installed {
        #[command(flatten)]
        node: NodeArgs,
    },
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// The node's CNI config directory, as mounted here.
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/host/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The same directory as the node sees it.
    #[arg(long, env = "WEFT_CNI_HOST_CONF_DIR", default_value = "/etc/cni/net.d")]
    host_conf_dir: PathBuf,
    /// The node's CNI bin directory, as mounted here.
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    bin_dir: PathBuf,
    /// Namespaces whose pods the plugin never looks up or redirects.
    #[arg(
        long,
        env = "WEFT_CNI_EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    exclude_namespaces: Vec<String>,
    /// This node's name; pods on it that started without redirect rules
    /// are deleted so they come back with them.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    #[arg(
        long,
        env = "WEFT_SERVICE_ACCOUNT_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    service_account_dir: PathBuf,
}

impl NodeArgs {
    fn installer(self) -> anyhow::Result<Installer> {
        // The installer runs in the node's network namespace, where the
        // API server is the `kubernetes` Service the kubelet names.
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| anyhow::anyhow!("KUBERNETES_SERVICE_HOST is not set: run me in a pod"))?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Installer {
            conf_dir: self.conf_dir,
            host_conf_dir: self.host_conf_dir,
            bin_dir: self.bin_dir,
            plugin_binary: std::env::current_exe()?,
            service_account_dir: self.service_account_dir,
            api_server: format!("https://{host}:{port}"),
            exclude_namespaces: self.exclude_namespaces,
            node_name: self.node_name,
        })
    }
}

fn main() -> ExitCode {
    if std::env::args_os().len() > 1 {
        return installer_main(Cli::parse());
    }
    let mut stdin = Vec::new();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => weft_cni::run(&env, &stdin),
        Err(e) => Err(weft_cni::CniError::io(
            "cannot read network config from stdin",
            e.to_string(),
        )),
    };
    match outcome {
        Ok(Some(result)) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => {
            weft_cni::log(&format!("error: {} ({})", error.msg, error.details));
            println!("{}", error.to_json(weft_cni::version_for_error(&stdin)));
            ExitCode::FAILURE
        }
    }
}

fn installer_main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Install {
            node,
            interval,
            log_level,
        } => (|| {
            let filter = tracing_subscriber::EnvFilter::builder()
                .parse(&log_level)
                .map_err(|e| anyhow::anyhow!("--log-level {log_level:?}: {e}"))?;
            tracing_subscriber::fmt().with_env_filter(filter).init();
            let installer = node.installer()?;
            weft_api::runtime::build("weft-cni", 1)?
                .block_on(weft_cni::install::run(installer, interval))
        })(),
        Command::Installed { node } => node.installer().and_then(|i| {
            i.is_installed()?.then_some(()).ok_or_else(|| {
                anyhow::anyhow!("weft-cni is not chained into the node's CNI config yet")
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-cni: {}", weft_api::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
