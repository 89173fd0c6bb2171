//! Helpers shared by integration tests.

// Each test crate uses a part of this module.
#![allow(dead_code)]
pub mod cluster;
pub mod http;
pub mod kafka;
pub mod kafka_evidence;
pub mod kafka_job;
pub mod kafka_topics;

/// The child processes of `pid`: the workers a mini-cluster (`run --workers N`) started.
pub fn workers_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILL, no cleanup of any kind.
pub fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

/// Sends `SIG<name>` (e.g. `STOP`, `CONT`) to `pid`.
pub fn signal(name: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Kills a mini-cluster and every worker it started: stopped first, so it cannot start a
/// worker again between the listing and the kills.
pub fn kill_cluster(cluster: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-STOP", &cluster.id().to_string()])
        .status();
    for w in workers_of(cluster.id()) {
        kill9(w);
    }
    let _ = cluster.kill();
    let _ = cluster.wait();
}

/// The `streamjob` binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_streamjob");

/// A failure message computed when it is shown (after the wait), not when the wait starts.
pub fn lazy<F: Fn() -> String>(f: F) -> impl std::fmt::Display {
    struct Lazy<F>(F);
    impl<F: Fn() -> String> std::fmt::Display for Lazy<F> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&(self.0)())
        }
    }
    Lazy(f)
}

/// Polls `probe` until it returns `Some`, failing the test with `what` after `within`. The
/// one way tests wait: for the condition itself, never for a fixed time a slow machine could
/// outrun.
pub fn wait_for<T>(
    within: std::time::Duration,
    what: impl std::fmt::Display,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} (waited {within:?})"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// [`wait_for`] a condition.
pub fn wait_until(
    within: std::time::Duration,
    what: impl std::fmt::Display,
    mut cond: impl FnMut() -> bool,
) {
    wait_for(within, what, || cond().then_some(()))
}

/// Waits for `child` to exit; kills it and fails the test after `within`.
pub fn wait_exit(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {within:?}", child.id());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `n` distinct free loopback addresses (`127.0.0.1:port`), for workers to listen on.
pub fn free_ports(n: usize) -> Vec<String> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

/// One `streamjob worker` process of a hand-started cluster (what a pod runs), killed when
/// dropped.
pub struct Worker {
    pub child: std::process::Child,
}

impl Worker {
    /// Worker `index` of `peers.len()` running `spec`, listening on `peers[index]`.
    pub fn start(
        spec: &std::path::Path,
        index: u32,
        peers: &[String],
        token: &str,
        extra: &[&str],
    ) -> Worker {
        let child = std::process::Command::new(BIN)
            .arg("worker")
            .arg(spec)
            .args(["--index", &index.to_string()])
            .args(["--workers", &peers.len().to_string()])
            .args(["--peers", &peers.join(",")])
            .args(["--listen", &peers[index as usize]])
            .args(extra)
            .env("STREAMJOB_TOKEN", token)
            .env_remove("POD_NAME")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Worker { child }
    }

    /// Waits up to `timeout` for the worker to exit; returns (success, stderr).
    pub fn wait(mut self, timeout: std::time::Duration) -> (bool, String) {
        use std::io::Read as _;
        let status = wait_exit(&mut self.child, timeout);
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.success(), err)
    }

    /// Resident memory of the worker process.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True once a checkpoint directory under `dir` holds a complete checkpoint (its
/// `_metadata` is written last).
pub fn has_complete_checkpoint(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().join("_metadata").is_file())
    })
}

/// True once a complete checkpoint (its `_metadata`, written last) exists anywhere below
/// `dir` (a run's checkpoints may sit under a run id).
pub fn has_complete_checkpoint_below(dir: &std::path::Path) -> bool {
    fn walk(dir: &std::path::Path, depth: u32) -> bool {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let p = e.path();
                p.join("_metadata").is_file() || (depth > 0 && p.is_dir() && walk(&p, depth - 1))
            })
        })
    }
    walk(dir, 3)
}

/// Lines of every file under `dir` whose name starts with `stem` (a sink's subtask files),
/// sorted.
pub fn sorted_lines(dir: &std::path::Path, stem: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(stem) {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                out.extend(text.lines().map(str::to_string));
            }
        }
    }
    out.sort();
    out
}
