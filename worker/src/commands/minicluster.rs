//! `streamjob run --workers N`: a local mini-cluster. Starts N `streamjob worker` processes
//! on loopback ports and waits for them, so the distributed path is one command away.
//!
//! Like a kubelet restarting a pod's container, it starts a worker again when the process
//! dies from a signal (killed, crashed), as the job's restart strategy allows; the other
//! workers then restart by themselves and every worker resumes from the latest checkpoint.
//!
//! No worker outlives the mini-cluster: SIGTERM or SIGINT is passed on to every worker and
//! waited for (a worker stopped that way is not restarted), every other way out (an error, a
//! panic) kills the workers that are left, and each worker asks the kernel to kill it when
//! this process dies (PR_SET_PDEATHSIG), which covers SIGKILL too.

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::os::unix::process::ExitStatusExt as _;
use streamjob::runtime::restart::{Decision, RestartStrategy, Restarts};

use super::worker::{PARENT_PID_ENV, RestoreArgs, TOKEN_ENV};

/// How long the other workers get to stop by themselves once one has failed, and how long
/// stopping workers get before they are killed.
const GRACE: Duration = Duration::from_secs(10);

/// The mini-cluster was told to stop by a signal; it exits with 128 + the signal number.
#[derive(Debug, thiserror::Error)]
#[error("stopped by signal {0}; every worker has stopped")]
pub struct Stopped(pub i32);

/// The running workers. Dropping it kills and reaps every worker still running, so no exit
/// path (error, panic) leaves one behind.
struct Workers {
    running: Vec<(u32, Child)>,
}

impl Workers {
    fn signal_all(&self, signal: Signal) {
        for (_, c) in &self.running {
            if let Some(pid) = Pid::from_raw(c.id() as i32) {
                // Fails only for a worker that already exited and is not reaped yet.
                let _ = kill_process(pid, signal);
            }
        }
    }

    /// Waits up to `within` for every worker to exit; kills the rest. Returns the workers
    /// that had to be killed.
    fn wait_all(&mut self, within: Duration) -> Vec<u32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            self.running
                .retain_mut(|(_, c)| matches!(c.try_wait(), Ok(None)));
            if self.running.is_empty() {
                return Vec::new();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let killed = self.running.iter().map(|(i, _)| *i).collect();
        self.kill_all();
        killed
    }

    fn kill_all(&mut self) {
        for (_, c) in &mut self.running {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.running.clear();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A worker process ended by SIGTERM or SIGINT was told to stop; it did not crash.
fn told_to_stop(status: ExitStatus) -> bool {
    matches!(status.signal(), Some(SIGTERM | SIGINT))
}

pub fn run(
    file: &Path,
    workers: u32,
    slots: Option<u32>,
    restore: &RestoreArgs,
    web: streamjob::web::WebPort,
) -> Result<()> {
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    // First, so a signal from now on stops the workers instead of orphaning them.
    let stop = Arc::new(AtomicUsize::new(0));
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register_usize(sig, stop.clone(), sig as usize)
            .context("cannot install the signal handlers")?;
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let spec = streamjob::crds::validate::parse_job(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
        .spec;
    let mut restarts = Restarts::new(RestartStrategy::from_spec(&spec));
    let exe = std::env::current_exe().context("cannot find the streamjob binary")?;
    // A given token lets `streamjob savepoint` talk to the job.
    let token = match std::env::var(TOKEN_ENV) {
        Ok(t) if !t.is_empty() => t,
        _ => random_token()?,
    };
    // Reserve free ports by binding port 0, then hand them to the workers.
    let ports: Vec<u16> = (0..workers)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })
        .collect::<std::io::Result<_>>()
        .context("cannot reserve loopback ports")?;
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    eprintln!(
        "mini-cluster: {workers} worker(s); worker 0 (checkpoint coordinator, job control) at {}",
        peers[0]
    );
    // With the job page on, every worker serves metrics, and worker 0 reads the others'.
    let web_ports: Vec<String> = match web.0 {
        Some(_) => (1..workers)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.to_string())
            })
            .collect::<std::io::Result<_>>()
            .context("cannot reserve loopback ports")?,
        None => Vec::new(),
    };
    let parent = std::process::id().to_string();
    let start = |i: u32| -> Result<Child> {
        let mut cmd = Command::new(&exe);
        cmd.arg("worker")
            .arg(file)
            .args(["--index", &i.to_string()])
            .args(["--workers", &workers.to_string()])
            .args(["--peers", &peers.join(",")])
            .args(["--listen", &peers[i as usize]])
            .args(restore.to_args())
            // Worker 0 serves the job page on the mini-cluster's --web-port.
            .args([
                "--metrics-port",
                &match (i, web.0) {
                    (0, _) => web.to_string(),
                    (_, Some(_)) => web_ports[i as usize - 1].rsplit(':').next().unwrap().into(),
                    (_, None) => "off".into(),
                },
            ])
            .env(TOKEN_ENV, &token)
            .env(PARENT_PID_ENV, &parent)
            .env_remove("POD_NAME");
        if let Some(s) = slots {
            cmd.args(["--slots", &s.to_string()]);
        }
        if i == 0 && !web_ports.is_empty() {
            // Worker 0's own entry is unused.
            let all: Vec<&str> = std::iter::once("-")
                .chain(web_ports.iter().map(String::as_str))
                .collect();
            cmd.arg(format!("--peer-metrics={}", all.join(",")));
        }
        cmd.spawn()
            .with_context(|| format!("cannot start worker {i}"))
    };
    let mut cluster = Workers {
        running: Vec::new(),
    };
    for i in 0..workers {
        cluster.running.push((i, start(i)?));
    }
    // Workers waiting for their restart delay: (index, start at).
    let mut pending: Vec<(u32, Instant)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut first_failure: Option<Instant> = None;
    while !cluster.running.is_empty() || !pending.is_empty() {
        let signal = stop.load(Ordering::Relaxed) as i32;
        if signal != 0 {
            return Err(shut_down(&mut cluster, signal).into());
        }
        let mut exited = Vec::new();
        let mut wait_error = None;
        cluster.running.retain_mut(|(i, c)| match c.try_wait() {
            Ok(Some(status)) => {
                exited.push((*i, status));
                false
            }
            Ok(None) => true,
            Err(e) => {
                wait_error.get_or_insert(e);
                true
            }
        });
        if let Some(e) = wait_error {
            return Err(e).context("cannot check on the workers");
        }
        for (i, status) in exited {
            if status.success() {
                continue;
            }
            // Stopped on purpose (e.g. Ctrl-C reaching the whole process group): the whole
            // mini-cluster stops, and workers waiting to be started again stay stopped.
            if told_to_stop(status) {
                eprintln!("mini-cluster: worker {i} {status}; stopping the other workers");
                let signal = status.signal().unwrap_or(SIGTERM);
                return Err(shut_down(&mut cluster, signal).into());
            }
            // Died from another signal (killed, crashed): start it again, as Kubernetes
            // would, if the restart strategy allows.
            if status.signal().is_some() && first_failure.is_none() {
                match restarts.failed() {
                    Decision::Restart { restart, delay } => {
                        eprintln!(
                            "mini-cluster: worker {i} {status}; starting it again in {delay:?} (restart {restart})"
                        );
                        pending.push((i, Instant::now() + delay));
                        continue;
                    }
                    Decision::GiveUp { reason } => {
                        failed.push(format!("worker {i} {status} (not restarted: {reason})"));
                    }
                }
            } else {
                failed.push(format!("worker {i} {status}"));
            }
            first_failure.get_or_insert_with(Instant::now);
        }
        let now = Instant::now();
        let mut waiting = Vec::new();
        for (i, at) in pending {
            if at <= now {
                cluster.running.push((i, start(i)?));
                restarts.started();
            } else {
                waiting.push((i, at));
            }
        }
        pending = waiting;
        if first_failure.is_some_and(|t| t.elapsed() > GRACE) {
            for i in cluster.wait_all(Duration::ZERO) {
                failed.push(format!("worker {i} killed after {GRACE:?}"));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !failed.is_empty() {
        bail!("the job failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Passes `signal` on to every worker, waits for them (killing any that outlast the grace
/// period) and says so.
fn shut_down(cluster: &mut Workers, signal: i32) -> Stopped {
    let forward = if signal == SIGINT {
        Signal::INT
    } else {
        Signal::TERM
    };
    eprintln!(
        "mini-cluster: stopping {} worker(s) (signal {signal})",
        cluster.running.len()
    );
    cluster.signal_all(forward);
    let killed = cluster.wait_all(GRACE);
    if !killed.is_empty() {
        eprintln!("mini-cluster: killed worker(s) {killed:?} that did not stop within {GRACE:?}");
    }
    Stopped(signal)
}

/// A token for this run only; workers refuse streams without it.
fn random_token() -> Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the job token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
