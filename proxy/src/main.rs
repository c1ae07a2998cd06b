//! The `weft-proxy` binary: reads its configuration from the environment,
//! starts the runtime and runs the proxy until it is told to stop.

use std::process::ExitCode;

fn main() -> ExitCode {
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
