//! The `weft-proxy` binary: reads its configuration from the environment,
//! starts the runtime and runs the proxy until it is told to stop.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Weft's per-pod sidecar proxy. With no command it proxies the pod's
/// redirected traffic, configured only by the WEFT_* variables below (the
/// injector sets them).
#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version, after_help = weft_api::proxy_env::help())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Waits until this pod's proxy is ready: the app container's
    /// postStart hook, so the app starts only once the mesh can carry its
    /// traffic.
    ///
    /// Example: weft-proxy await-ready --timeout 120s
    AwaitReady {
        /// How long to wait.
        #[arg(long, default_value = "120s")]
        timeout: String,
        /// The proxy's admin address (default: loopback, WEFT_ADMIN_ADDR's port).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Proves the pod's redirect rules are in place: the first init
    /// container; exits non-zero so the pod never runs unmeshed.
    ///
    /// Example: weft-proxy validate --timeout 5s
    Validate {
        /// How long the check may take.
        #[arg(long, default_value = "5s")]
        timeout: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // --help and --version are not errors; a bad command line is
            // EX_USAGE (64), as for a bad configuration.
            return if error.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        None => {}
        Some(Command::AwaitReady { timeout, addr }) => {
            let mut args = vec!["--timeout".to_string(), timeout];
            args.extend(addr.into_iter().flat_map(|a| ["--addr".to_string(), a]));
            return await_ready(&args);
        }
        Some(Command::Validate { timeout }) => {
            return validate(&["--timeout".to_string(), timeout]);
        }
    }
    let config = match weft_proxy::config::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("weft-proxy: invalid configuration: {error}");
            // EX_USAGE, as sysexits(3) defines it for bad configuration.
            return ExitCode::from(64);
        }
    };
    weft_proxy::init_tracing(&config.log_level);
    tracing::info!(?config, "starting weft-proxy {}", env!("CARGO_PKG_VERSION"));

    let runtime = match weft_api::runtime::build("weft-proxy", config.worker_threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-proxy: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(weft_proxy::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = weft_api::error_chain(&error), "proxy failed");
            ExitCode::FAILURE
        }
    }
}

/// `weft-proxy await-ready`: see [`weft_proxy::await_ready`].
fn await_ready(args: &[String]) -> ExitCode {
    use weft_proxy::await_ready::{AwaitArgs, await_ready};
    let admin = std::env::var(weft_api::proxy_env::ADMIN_ADDR.name).ok();
    let parsed = match AwaitArgs::parse(args, admin.as_deref()) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("weft-proxy await-ready: {error}");
            return ExitCode::from(64);
        }
    };
    let runtime = match weft_api::runtime::build("weft-proxy", 1) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-proxy await-ready: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(await_ready(&parsed)) {
        Ok(waited) => {
            eprintln!("weft-proxy await-ready: ready after {waited:?}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("weft-proxy await-ready: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `weft-proxy validate`: see [`weft_proxy::validate`].
fn validate(args: &[String]) -> ExitCode {
    use weft_proxy::validate::{Outcome, ValidateArgs, ipv4_routes, validate};
    let parsed = match ValidateArgs::parse(args, |k| std::env::var(k).ok()) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("weft-proxy validate: {error}");
            return ExitCode::from(64);
        }
    };
    let routes = ipv4_routes(&std::fs::read_to_string("/proc/net/route").unwrap_or_default());
    let runtime = match weft_api::runtime::build("weft-proxy", 1) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-proxy validate: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(validate(&parsed, &routes)) {
        Ok(Outcome::Redirected { target, after }) => {
            eprintln!(
                "weft-proxy validate: redirect rules in place (a connection to {target} reached port {} after {after:?})",
                parsed.outbound_port
            );
            ExitCode::SUCCESS
        }
        Ok(Outcome::NothingToCheck) => {
            eprintln!(
                "weft-proxy validate: every routed destination is exempt from redirection; nothing to check"
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "weft-proxy validate: this pod has no redirect rules: {}. The weft-cni plugin did not run \
                 for it (was the pod created before weft-cni was installed on this node?). The weft-cni \
                 installer deletes such pods so that they are created again with the rules; if this \
                 repeats, check the weft-cni pod on this node.",
                weft_api::error_chain(&error)
            );
            ExitCode::from(weft_api::VALIDATION_FAILED_EXIT)
        }
    }
}
