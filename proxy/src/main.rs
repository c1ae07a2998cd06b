//! The `weft-proxy` binary: reads its configuration from the environment,
//! starts the runtime and runs the proxy until it is told to stop.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("await-ready") => return await_ready(&args[1..]),
        Some("validate") => return validate(&args[1..]),
        Some(other) => {
            eprintln!(
                "weft-proxy: unknown command {other:?}; run with no arguments (configured by WEFT_* variables) `await-ready [--timeout 120s] [--addr 127.0.0.1:6191]` or `validate [--timeout 5s]`"
            );
            return ExitCode::from(64);
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

    // One core: a current-thread runtime avoids cross-thread wakeups.
    let mut builder = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.worker_threads);
        b
    };
    let runtime = match builder.thread_name("weft-proxy").enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-proxy: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(weft_proxy::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "proxy failed");
            ExitCode::FAILURE
        }
    }
}

/// `weft-proxy await-ready`: see [`weft_proxy::await_ready`].
fn await_ready(args: &[String]) -> ExitCode {
    use weft_proxy::await_ready::{AwaitArgs, await_ready};
    let admin = std::env::var("WEFT_ADMIN_ADDR").ok();
    let parsed = match AwaitArgs::parse(args, admin.as_deref()) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("weft-proxy await-ready: {error}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
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
                "weft-proxy validate: this pod has no redirect rules: {error}. The weft-cni plugin did not run \
                 for it (was the pod created before weft-cni was installed on this node?). The weft-cni \
                 installer deletes such pods so that they are created again with the rules; if this \
                 repeats, check the weft-cni pod on this node."
            );
            ExitCode::from(weft_api::VALIDATION_FAILED_EXIT)
        }
    }
}
