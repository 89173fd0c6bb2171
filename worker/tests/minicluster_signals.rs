//! The local mini-cluster (`streamjob run --workers 2`) never leaves a worker behind: a
//! SIGTERM or SIGINT to it stops every worker, and workers die with it even when it is
//! killed outright.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, signal, wait_exit, wait_until, workers_of};

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("signals", name)
}

/// An unbounded job: lines from a socket the test keeps open, keyed across both workers,
/// with checkpoints (so a crashed worker would be restarted).
fn socket_job(dir: &Path, port: u16) -> PathBuf {
    let spec = dir.join("job.yaml");
    let yaml = format!(
        r#"apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {{name: endless}}
spec:
  parallelism: 2
  checkpointing: {{intervalMs: 200, directory: {chk}}}
  steps:
    - {{name: lines, source: {{socket: {{host: 127.0.0.1, port: {port}, maxRetry: 1000}}}}}}
    - {{name: by-line, keyBy: {{expr: "value"}}}}
    - {{name: count, reduce: {{expr: "acc"}}}}
    - {{name: out, sink: {{blackhole: {{}}}}}}
"#,
        chk = dir.join("chk").display()
    );
    std::fs::write(&spec, yaml).unwrap();
    spec
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; it only waits to be reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Starts the mini-cluster and waits until both workers run and the job has connected to
/// the socket.
fn start_cluster(name: &str) -> (Child, Vec<u32>, TcpListener, PathBuf) {
    let dir = tmp(name);
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = socket_job(&dir, server.local_addr().unwrap().port());
    let cluster = Command::new(BIN)
        .args(["run", "--workers", "2"])
        .arg(&spec)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    server.set_nonblocking(true).unwrap();
    let mut connected = None;
    let mut workers = Vec::new();
    wait_until(Duration::from_secs(60), "the workers did not start", || {
        if connected.is_none() {
            connected = server.accept().ok();
        }
        workers = workers_of(cluster.id());
        workers.len() == 2 && connected.is_some()
    });
    // Keep the connection open: the job never ends by itself.
    std::mem::forget(connected);
    (cluster, workers, server, dir)
}

fn wait_gone(pids: &[u32], within: Duration) {
    wait_until(within, format!("worker(s) still running: {pids:?}"), || {
        !pids.iter().any(|p| alive(*p))
    });
}

/// The mini-cluster's stderr, read on a thread: workers inherit the pipe, so reading it to
/// the end on this thread would hang on a worker left behind instead of failing the test.
fn stderr_of(child: &mut Child) -> std::thread::JoinHandle<String> {
    let mut pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut err = String::new();
        use std::io::Read as _;
        let _ = pipe.read_to_string(&mut err);
        err
    })
}

fn stop_by(sig: &str, code: i32) {
    let (mut cluster, workers, _server, dir) = start_cluster(&sig.to_lowercase());
    let stderr = stderr_of(&mut cluster);
    signal(sig, cluster.id());
    let status = wait_exit(&mut cluster, Duration::from_secs(30));
    wait_gone(&workers, Duration::from_secs(5));
    let err = stderr.join().unwrap();
    assert_eq!(status.code(), Some(code), "{err}");
    assert!(
        err.contains("stopped by signal"),
        "says why it stopped: {err}"
    );
    assert!(
        !err.contains("starting it again"),
        "a stopped worker is not restarted: {err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_to_the_mini_cluster_stops_every_worker() {
    stop_by("TERM", 143);
}

#[test]
fn sigint_to_the_mini_cluster_stops_every_worker() {
    stop_by("INT", 130);
}

#[test]
fn a_worker_stopped_by_sigterm_stops_the_mini_cluster_instead_of_restarting() {
    let (mut cluster, workers, _server, dir) = start_cluster("worker-term");
    let stderr = stderr_of(&mut cluster);
    signal("TERM", workers[1]);
    let status = wait_exit(&mut cluster, Duration::from_secs(30));
    wait_gone(&workers, Duration::from_secs(5));
    let err = stderr.join().unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(!err.contains("starting it again"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn workers_die_with_a_killed_mini_cluster() {
    let (mut cluster, workers, _server, dir) = start_cluster("kill");
    signal("KILL", cluster.id());
    let _ = cluster.wait();
    wait_gone(&workers, Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(dir);
}
