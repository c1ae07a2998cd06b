//! Exiting with the app, for run-to-completion pods (Jobs) on clusters
//! without native sidecars: there the proxy is an ordinary container, and
//! a Job's pod would run forever after its app finished. The injector
//! shares the pod's process namespace for such pods and sets
//! `WEFT_EXIT_WITH_APP`; the proxy then watches `/proc` and drains and
//! exits once every app process it saw has ended.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Processes of the pod's apps: everything visible except PID 1 (the
/// sandbox's pause process when the namespace is shared), processes of the
/// proxy's own user (the proxy and its hooks), and zombies.
pub fn app_processes(proc_root: &Path, own_uid: u32) -> std::io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == 1 {
            continue;
        }
        // A process may end between the listing and this read.
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or("")
                .to_string()
        };
        let uid: Option<u32> = field("Uid:")
            .split_whitespace()
            .next()
            .and_then(|u| u.parse().ok());
        let zombie = field("State:").starts_with('Z');
        if uid != Some(own_uid) && !zombie {
            found.push(pid);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// How often `/proc` is read before the app has been seen. A short Job
/// (one request) can start and end within a few milliseconds, and an app
/// that is never seen is never waited for; listing a pod's handful of
/// processes costs tens of microseconds.
const LOOK_FOR_APP: Duration = Duration::from_millis(2);

/// Cancels `shutdown` once app processes have been seen and then have all
/// been gone for two checks `interval` apart.
pub async fn exit_with_app(shutdown: CancellationToken, own_uid: u32, interval: Duration) {
    let mut seen = false;
    let mut gone = 0;
    loop {
        let wait = if seen { interval } else { LOOK_FOR_APP };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match app_processes(Path::new("/proc"), own_uid) {
            Ok(apps) if apps.is_empty() => {
                if seen {
                    gone += 1;
                }
            }
            Ok(_) => {
                if !seen {
                    tracing::info!("app processes seen; exiting once they end");
                }
                seen = true;
                gone = 0;
            }
            Err(e) => tracing::warn!(error = %e, "cannot list processes"),
        }
        if gone >= 2 {
            tracing::info!("the pod's app has exited; shutting down");
            shutdown.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(root: &Path, pid: u32, uid: u32, state: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("status"),
            format!("Name:\tx\nState:\t{state}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
        )
        .unwrap();
    }

    #[test]
    fn only_app_processes_count() {
        let root = tempfile::tempdir().unwrap();
        process(root.path(), 1, 65535, "S (sleeping)");
        process(root.path(), 7, 2103, "S (sleeping)");
        process(root.path(), 12, 1000, "R (running)");
        process(root.path(), 13, 0, "Z (zombie)");
        process(root.path(), 14, 0, "S (sleeping)");
        std::fs::create_dir_all(root.path().join("self")).unwrap();
        assert_eq!(app_processes(root.path(), 2103).unwrap(), [12, 14]);
    }

    #[tokio::test]
    async fn shuts_down_only_after_an_app_was_seen() {
        // This test's own process is an "app" for a uid it does not have,
        // so the watcher sees apps and never cancels.
        let shutdown = CancellationToken::new();
        let watch = tokio::spawn(exit_with_app(
            shutdown.clone(),
            u32::MAX,
            Duration::from_millis(10),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!shutdown.is_cancelled());
        shutdown.cancel();
        watch.await.unwrap();
    }
}
