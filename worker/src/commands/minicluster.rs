//! `streamjob run --workers N`: a local mini-cluster. Starts N `streamjob worker` processes
//! on loopback ports and waits for them, so the distributed path is one command away.
//!
//! Like a kubelet restarting a pod's container, it starts a worker again when the process
//! dies from a signal (killed, crashed), up to the job's restart attempts; the other
//! workers then restart by themselves and every worker resumes from the latest checkpoint.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::worker::{RestoreArgs, TOKEN_ENV};

/// How long the other workers get to stop by themselves once one has failed.
const GRACE: Duration = Duration::from_secs(10);

pub fn run(file: &Path, workers: u32, slots: Option<u32>, restore: &RestoreArgs) -> Result<()> {
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let spec = streamjob::crds::validate::parse_job(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
        .spec;
    // Restarting a killed worker only makes sense when it can resume from a checkpoint.
    let restarts_allowed = if spec.checkpointing.is_some() {
        spec.restart_strategy.attempts
    } else {
        0
    };
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
    let start = |i: u32| -> Result<Child> {
        let mut cmd = Command::new(&exe);
        cmd.arg("worker")
            .arg(file)
            .args(["--index", &i.to_string()])
            .args(["--workers", &workers.to_string()])
            .args(["--peers", &peers.join(",")])
            .args(["--listen", &peers[i as usize]])
            .args(restore.to_args())
            .env(TOKEN_ENV, &token)
            .env_remove("POD_NAME");
        if let Some(s) = slots {
            cmd.args(["--slots", &s.to_string()]);
        }
        cmd.spawn()
            .with_context(|| format!("cannot start worker {i}"))
    };
    let mut children: Vec<(u32, Child)> = Vec::new();
    for i in 0..workers {
        children.push((i, start(i)?));
    }
    let mut restarts = 0;
    let mut failed: Vec<String> = Vec::new();
    let mut first_failure: Option<Instant> = None;
    while !children.is_empty() {
        let mut still = Vec::new();
        for (i, mut c) in children {
            match c.try_wait()? {
                Some(status) if status.success() => {}
                // Died from a signal: start it again, as Kubernetes would.
                Some(status) if status.code().is_none() && restarts < restarts_allowed => {
                    restarts += 1;
                    eprintln!(
                        "mini-cluster: worker {i} {status}; starting it again ({restarts} of {restarts_allowed})"
                    );
                    still.push((i, start(i)?));
                }
                Some(status) => {
                    failed.push(format!("worker {i} {status}"));
                    first_failure.get_or_insert_with(Instant::now);
                }
                None => still.push((i, c)),
            }
        }
        children = still;
        if first_failure.is_some_and(|t| t.elapsed() > GRACE) {
            for (i, c) in &mut children {
                let _ = c.kill();
                let _ = c.wait();
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

/// A token for this run only; workers refuse streams without it.
fn random_token() -> Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the job token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
