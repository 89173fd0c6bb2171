//! A `streamjob run --workers N` mini-cluster driven through worker 0's control API
//! (status, stop-with-savepoint), as an operator's upgrade or rescale would drive it.

use std::io::{BufRead as _, Read as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BIN, kill_cluster};

const TOKEN: &str = "windows-test-token";

/// A running mini-cluster; its stderr is kept (drained by a thread, so a chatty job never
/// blocks on a full pipe). Killed with its workers when dropped.
pub struct MiniCluster {
    pub child: Child,
    /// Worker 0's control address.
    pub address: String,
    log: Arc<Mutex<String>>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl MiniCluster {
    /// `streamjob run <args> <spec>`.
    pub fn start(spec: &Path, args: &[&str]) -> MiniCluster {
        let mut child = Command::new(BIN)
            .arg("run")
            .args(args)
            .arg(spec)
            .env("STREAMJOB_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        stderr.read_line(&mut first).unwrap();
        let address = first
            .trim()
            .rsplit(' ')
            .next()
            .expect("the mini-cluster names worker 0's address")
            .to_string();
        let log = Arc::new(Mutex::new(first));
        let drain = std::thread::spawn({
            let log = log.clone();
            move || {
                let mut rest = String::new();
                let _ = stderr.read_to_string(&mut rest);
                log.lock().unwrap().push_str(&rest);
            }
        });
        MiniCluster {
            child,
            address,
            log,
            drain: Some(drain),
        }
    }

    /// What worker 0's status API says (`null` while it does not answer yet).
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["status", "--address", &self.address])
            .env("STREAMJOB_TOKEN", TOKEN)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Waits until the job has completed a checkpoint and `ready` holds of its status (e.g.
    /// some output exists), then stops it with a savepoint; returns the savepoint's path
    /// once the cluster has ended cleanly.
    pub fn stop_with_savepoint_when(
        mut self,
        mut ready: impl FnMut(&serde_json::Value) -> bool,
    ) -> String {
        let mut last = serde_json::Value::Null;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let (_, log) = self.wait(Duration::from_secs(5));
                panic!(
                    "the job ended ({status}) before its savepoint; last status {last}; log:\n{log}"
                );
            }
            last = self.status();
            if last["lastCheckpoint"]["id"].as_u64().is_some() && ready(&last) {
                break;
            }
            if std::time::Instant::now() > deadline {
                kill_cluster(&mut self.child);
                let (_, log) = self.wait(Duration::from_secs(5));
                panic!(
                    "no checkpoint completed with output written within 60s; last status {last}; log:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let sp = Command::new(BIN)
            .args(["savepoint", "--stop", "--address", &self.address])
            .env("STREAMJOB_TOKEN", TOKEN)
            .output()
            .unwrap();
        let (ok, log) = self.wait(Duration::from_secs(60));
        assert!(
            sp.status.success(),
            "savepoint failed: {}\n{log}",
            String::from_utf8_lossy(&sp.stderr)
        );
        assert!(ok, "the stopped job must end cleanly: {log}");
        String::from_utf8(sp.stdout).unwrap().trim().to_string()
    }

    /// Waits for the cluster to exit; returns (success, its stderr).
    /// On timeout the cluster is killed and the log says so.
    pub fn wait(&mut self, within: Duration) -> (bool, String) {
        let deadline = std::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                kill_cluster(&mut self.child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
        match status {
            Some(s) => (s.success(), self.log()),
            None => (
                false,
                format!(
                    "did not exit within {within:?}, killed; its log:\n{}",
                    self.log()
                ),
            ),
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for MiniCluster {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            kill_cluster(&mut self.child);
        }
    }
}
