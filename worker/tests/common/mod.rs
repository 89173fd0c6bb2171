//! Helpers shared by integration tests.

// Each test crate uses a part of this module.
#![allow(dead_code)]
pub mod kafka;

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
