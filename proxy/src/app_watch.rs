//! Exiting with the app, for run-to-completion pods (Jobs) on clusters
//! without native sidecars: there the proxy is an ordinary container, and
//! a Job's pod would run forever after its app finished. The injector
//! shares the pod's process namespace for such pods and sets
//! `WEFT_EXIT_WITH_APP`; the proxy then watches `/proc` and drains and
//! exits once every app process it saw has ended.
//!
//! A pod with `hostPID` already shows the app to the proxy (the API server
//! refuses `shareProcessNamespace` beside it), but it shows the whole node
//! too. So only processes of the proxy's own pod count: those in its pod's
//! cgroup, started after the proxy (the app's containers start after it,
//! the sandbox before it).

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Where a process's cgroup is, per hierarchy: `(controllers, path)` from
/// `/proc/<pid>/cgroup` (`4:memory:/kubepods/...`, `0::/...` for v2).
fn cgroups(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((controllers, path))
        })
        .collect()
}

/// The hierarchy to compare in: the pids or memory controller's (cgroup
/// v1), else the unified one (v2).
fn pick<'a>(paths: &[(&'a str, &'a str)]) -> Option<(&'a str, &'a str)> {
    ["pids", "memory"]
        .iter()
        .find_map(|want| paths.iter().find(|(c, _)| c.split(',').any(|c| c == *want)))
        .or_else(|| paths.iter().find(|(c, _)| c.is_empty()))
        .copied()
}

/// A process's start time, in clock ticks since boot (`stat` field 22).
fn start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What marks a process as one of the proxy's own pod.
#[derive(Debug, Default)]
struct PodScope {
    /// The hierarchy, and the pod's cgroup in it: the parent of the proxy's
    /// container cgroup. `None` inside a cgroup namespace, where the
    /// proxy's own cgroup reads `/` and the pod's other containers
    /// `/../<container>`.
    cgroup: Option<(String, Option<String>)>,
    started: Option<u64>,
}

impl PodScope {
    fn of_self(proc_root: &Path) -> PodScope {
        let own = proc_root.join("self");
        let cgroup = std::fs::read_to_string(own.join("cgroup"))
            .ok()
            .and_then(|text| {
                let (controllers, path) = pick(&cgroups(&text))?;
                let pod = match path {
                    "/" => None,
                    p => Some(p.rsplit_once('/')?.0.to_string()),
                };
                Some((controllers.to_string(), pod))
            });
        let started = std::fs::read_to_string(own.join("stat"))
            .ok()
            .and_then(|s| start_time(&s));
        PodScope { cgroup, started }
    }

    /// Whether the process at `dir` belongs to the pod. What cannot be read
    /// counts as belonging: a process wrongly waited for only delays the
    /// exit, one wrongly ignored could cut the app off.
    fn contains(&self, dir: &Path) -> bool {
        if let (Some(own), Some(theirs)) = (
            self.started,
            std::fs::read_to_string(dir.join("stat"))
                .ok()
                .and_then(|s| start_time(&s)),
        ) && theirs < own
        {
            return false;
        }
        let Some((controllers, pod)) = &self.cgroup else {
            return true;
        };
        let Ok(text) = std::fs::read_to_string(dir.join("cgroup")) else {
            return true;
        };
        let paths = cgroups(&text);
        let Some((_, path)) = paths.iter().find(|(c, _)| c == controllers) else {
            return true;
        };
        match pod {
            Some(pod) => path
                .strip_prefix(pod.as_str())
                .is_some_and(|rest| rest.starts_with('/')),
            None => {
                *path == "/"
                    || path
                        .strip_prefix("/../")
                        .is_some_and(|rest| !rest.starts_with(".."))
            }
        }
    }
}

/// Processes of the pod's apps: everything visible of the proxy's own pod
/// (see [`PodScope`]) except PID 1 (the sandbox's pause process when the
/// namespace is shared), processes of the proxy's own user (the proxy and
/// its hooks), and zombies.
pub fn app_processes(proc_root: &Path, own_uid: u32) -> std::io::Result<Vec<u32>> {
    let scope = PodScope::of_self(proc_root);
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
        if uid != Some(own_uid) && !zombie && scope.contains(&entry.path()) {
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

    /// A `stat` line with `start` as field 22.
    fn stat(start: u64) -> String {
        // Fields 4 to 21 before the start time, and more after it.
        let before = vec!["0"; 18].join(" ");
        format!("42 (odd (name)) S {before} {start} 0 0")
    }

    #[test]
    fn start_times_are_read_past_the_command_name() {
        assert_eq!(start_time(&stat(12345)), Some(12345));
        assert_eq!(start_time("garbage"), None);
    }

    #[test]
    fn with_host_pid_only_the_pods_later_processes_count() {
        let root = tempfile::tempdir().unwrap();
        let with = |pid: &str, cgroup: &str, start: u64| {
            let dir = root.path().join(pid);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
            std::fs::write(dir.join("stat"), stat(start)).unwrap();
        };
        let pod = "/kubepods/besteffort/pod1234";
        with(
            "self",
            &format!("5:pids:{pod}/proxy\n4:memory:{pod}/proxy\n"),
            500,
        );
        process(root.path(), 1, 0, "S (sleeping)"); // the node's init
        process(root.path(), 30, 0, "S (sleeping)"); // the kubelet
        with("30", "5:pids:/\n4:memory:/\n", 10);
        process(root.path(), 40, 65535, "S (sleeping)"); // the pod's pause
        with("40", &format!("5:pids:{pod}/sandbox\n"), 400);
        process(root.path(), 50, 0, "S (sleeping)"); // another pod's app
        with("50", "5:pids:/kubepods/besteffort/pod9/app\n", 900);
        process(root.path(), 60, 1000, "S (sleeping)"); // this pod's app
        with("60", &format!("5:pids:{pod}/app\n"), 600);
        process(root.path(), 70, 1000, "S (sleeping)"); // a sibling pod's
        with("70", &format!("5:pids:{pod}0/app\n"), 600);
        assert_eq!(app_processes(root.path(), 2103).unwrap(), [60]);
    }

    #[test]
    fn inside_a_cgroup_namespace_siblings_are_one_level_up() {
        let root = tempfile::tempdir().unwrap();
        let with = |pid: &str, cgroup: &str| {
            let dir = root.path().join(pid);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        };
        with("self", "0::/\n");
        process(root.path(), 60, 1000, "S (sleeping)");
        with("60", "0::/../app\n");
        process(root.path(), 70, 1000, "S (sleeping)");
        with("70", "0::/../../pod9/app\n");
        assert_eq!(app_processes(root.path(), 2103).unwrap(), [60]);
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
