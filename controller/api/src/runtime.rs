//! How every Weft program runs: one way to build its tokio runtime, and one
//! way to wait for the signal that stops it.

/// A runtime with `workers` threads; one worker gets a current-thread
/// runtime, which avoids cross-thread wake-ups.
pub fn build(name: &str, workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.thread_name(name).enable_all().build()
}

/// Which signal asked the program to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Terminate,
    Interrupt,
}

impl Stop {
    pub fn as_str(self) -> &'static str {
        match self {
            Stop::Terminate => "SIGTERM",
            Stop::Interrupt => "SIGINT",
        }
    }
}

/// Waits for SIGTERM or SIGINT. The handlers are installed at the call, so
/// call it early and await the future later.
pub fn stop_signal() -> std::io::Result<impl Future<Output = Stop>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => Stop::Terminate,
            _ = int.recv() => Stop::Interrupt,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_is_a_current_thread_runtime() {
        let rt = build("weft-test", 1).unwrap();
        assert_eq!(
            rt.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        let rt = build("weft-test", 2).unwrap();
        assert_eq!(
            rt.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        );
    }

    #[test]
    fn a_signal_stops_the_wait() {
        let rt = build("weft-test", 1).unwrap();
        let stop = rt.block_on(async {
            let wait = stop_signal().unwrap();
            interrupt_self();
            wait.await
        });
        assert_eq!(stop, Stop::Interrupt);
    }

    fn interrupt_self() {
        // SIGINT to this process; the handler installed above takes it.
        let _ = std::process::Command::new("sh")
            .args(["-c", &format!("kill -INT {}", std::process::id())])
            .status();
    }
}
