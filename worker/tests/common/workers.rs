//! Hand-started `streamjob worker` processes (what the pods of a StatefulSet run) and the
//! settings of workers a test runs through the Rust API.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use streamjob::net::cluster::ClusterConfig;

use super::{BIN, wait_exit};

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
    pub child: Child,
    pub index: u32,
}

impl Worker {
    /// Worker `index` of `peers.len()` running `spec`, listening on `peers[index]`.
    pub fn start(spec: &Path, index: u32, peers: &[String], token: &str, extra: &[&str]) -> Worker {
        let child = Command::new(BIN)
            .arg("worker")
            .arg(spec)
            .args(["--index", &index.to_string()])
            .args(["--workers", &peers.len().to_string()])
            .args(["--peers", &peers.join(",")])
            .args(["--listen", &peers[index as usize]])
            .args(extra)
            .env("STREAMJOB_TOKEN", token)
            .env_remove("POD_NAME")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Worker { child, index }
    }

    /// Waits up to `timeout` for the worker to exit; returns (success, stderr).
    pub fn wait(mut self, timeout: Duration) -> (bool, String) {
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

/// Waits for `first` to end within `first_within`, then for `second` within `then_within`:
/// both must succeed (the failure shows what each said). Returns their stderr in index
/// order (worker 0's first).
pub fn both_succeed(
    first: Worker,
    first_within: Duration,
    second: Worker,
    then_within: Duration,
) -> (String, String) {
    let (a, b) = (first.index, second.index);
    let (ok_a, err_a) = first.wait(first_within);
    let (ok_b, err_b) = second.wait(then_within);
    assert!(ok_a && ok_b, "worker {a}:\n{err_a}\nworker {b}:\n{err_b}");
    if a < b {
        (err_a, err_b)
    } else {
        (err_b, err_a)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What worker `index` of `peers.len()`, with `slots` slots, needs to run a job through the
/// Rust API (`execute_as_worker`): the defaults of `streamjob worker` for the rest.
pub fn cluster_config(index: u32, peers: &[String], slots: u32, token: &str) -> ClusterConfig {
    ClusterConfig {
        index,
        workers: peers.len() as u32,
        slots,
        listen: peers[index as usize].parse().unwrap(),
        peers: peers.to_vec(),
        token: token.into(),
        connect_timeout: Duration::from_secs(30),
        credit: 4,
        job_hash: 0,
        idle_after_finish: false,
        health: Default::default(),
        tls: None,
        restarts: 0,
    }
}
