//! Helpers shared by integration tests.

// Each test crate uses a part of this module.
#![allow(dead_code, unused_imports)]
pub mod cluster;
pub mod http;
pub mod kafka;
pub mod kafka_evidence;
pub mod kafka_job;
pub mod kafka_topics;
pub mod workers;

pub use workers::{Worker, free_ports};

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

/// Runs `cmd` to its end; it must succeed (the command and its stderr are the failure
/// message).
pub fn succeed(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
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

/// True once a checkpoint directory under `dir` holds a complete checkpoint (its
/// `_metadata` is written last).
pub fn has_complete_checkpoint(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().join("_metadata").is_file())
    })
}

/// For a Rust-API job that must fail partway: called with the index `n` of each record, it
/// panics ("injected failure after {n} {what}") past `fail_after`, at the first thousandth
/// record once a checkpoint under `chk` is complete, so the restore that follows has one to
/// use however slow the machine. Paces the failing run (1 ms a thousand records); no
/// assertion depends on the pace.
pub fn fail_partway(n: u64, fail_after: Option<u64>, chk: &std::path::Path, what: &str) {
    let Some(limit) = fail_after else { return };
    if n.is_multiple_of(1000) {
        if n >= limit && has_complete_checkpoint(chk) {
            panic!("injected failure after {n} {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
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

/// A fresh, empty directory `<tmp>/sj-<suite>-<pid>-<name>` for one test: the suite keeps
/// test binaries apart, the process id concurrent runs of one binary.
pub fn tmp_dir(suite: &str, name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sj-{suite}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `lines` lines of six words drawn from `w0 .. w<vocabulary>` by a generator seeded with
/// `seed` (the same text every run), and the exact count of each word.
pub fn word_text(
    lines: usize,
    seed: u64,
    vocabulary: u64,
) -> (String, std::collections::BTreeMap<String, u64>) {
    let mut counts = std::collections::BTreeMap::new();
    let mut s = String::new();
    let mut x = seed;
    for _ in 0..lines {
        let words: Vec<String> = (0..6)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                format!("w{}", (x >> 33) % vocabulary)
            })
            .collect();
        for w in &words {
            *counts.entry(w.clone()).or_insert(0) += 1;
        }
        s.push_str(&words.join(" "));
        s.push('\n');
    }
    (s, counts)
}
