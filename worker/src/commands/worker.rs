//! `streamjob worker`: the pod entrypoint. Runs this worker's slots of a StreamJob and
//! exchanges records with its peers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use streamjob::net::cluster::{ClusterConfig, TlsPems, index_from_pod_name, peers_from_pattern};

/// Environment variable holding the job's exchange token (the operator fills it from a
/// Secret).
pub const TOKEN_ENV: &str = "STREAMJOB_TOKEN";

/// Set by the local mini-cluster to its process id: its workers die with it.
pub const PARENT_PID_ENV: &str = "STREAMJOB_PARENT_PID";

/// A worker started by the local mini-cluster asks the kernel to kill it when the
/// mini-cluster dies, even by SIGKILL, so no worker is left running on its own. The parent
/// may have died before this call: then the worker's parent is no longer that process, and
/// it stops at once.
pub fn die_with_parent() -> Result<()> {
    let Ok(parent) = std::env::var(PARENT_PID_ENV) else {
        return Ok(());
    };
    let parent: i32 = parent
        .parse()
        .with_context(|| format!("{PARENT_PID_ENV} is not a process id: '{parent}'"))?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("cannot ask to be stopped with the mini-cluster (PR_SET_PDEATHSIG)")?;
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        bail!("the mini-cluster that started this worker (pid {parent}) has exited");
    }
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// StreamJob manifest (the operator mounts it from a ConfigMap).
    pub file: PathBuf,
    /// This worker's index; default: the ordinal at the end of POD_NAME (`wc-worker-2` -> 2).
    #[arg(long, env = "STREAMJOB_WORKER_INDEX")]
    pub index: Option<u32>,
    /// Number of workers running the job.
    #[arg(long, env = "STREAMJOB_WORKERS")]
    pub workers: u32,
    /// Peer addresses, `host:port` per worker in index order.
    #[arg(
        long,
        env = "STREAMJOB_PEERS",
        value_delimiter = ',',
        conflicts_with = "peer_pattern"
    )]
    pub peers: Vec<String>,
    /// Peer address pattern: `{i}` is the worker index; `{job}`, `{namespace}` and `{port}` are
    /// filled in, e.g. `{job}-worker-{i}.{job}-workers.{namespace}.svc:{port}`.
    #[arg(long, env = "STREAMJOB_PEER_PATTERN")]
    pub peer_pattern: Option<String>,
    /// Namespace for `{namespace}` in the peer pattern.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Exchange port (listened on, and `{port}` in the peer pattern).
    #[arg(long, env = "STREAMJOB_PORT", default_value_t = 6121)]
    pub port: u16,
    /// Listen address; default `0.0.0.0:<port>`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Slots per worker; default: the job's highest parallelism divided over the workers.
    #[arg(long, env = "STREAMJOB_SLOTS")]
    pub slots: Option<u32>,
    /// Seconds to wait for peers before failing.
    #[arg(long, default_value_t = 60)]
    pub connect_timeout_secs: u64,
    /// Batches each receiving channel buffers (credit granted to its sender).
    #[arg(long, default_value_t = 8)]
    pub credit: u32,
    /// After the job finishes, keep running and answering health probes instead of exiting
    /// (set in pods, so the StatefulSet does not run a finished job again).
    #[arg(long, env = "STREAMJOB_IDLE_AFTER_FINISH")]
    pub idle_after_finish: bool,
    /// This worker's TLS certificate (PEM) for the exchange; with --tls-key and --tls-ca,
    /// turns on mutual TLS (every worker of the job must use it).
    #[arg(long, env = "STREAMJOB_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "STREAMJOB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that signed every worker's certificate.
    #[arg(long, env = "STREAMJOB_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// HTTP port for /metrics, /healthz, /readyz and (worker 0) the job page; `off` turns
    /// it off, 0 picks a free port.
    #[arg(long, env = "STREAMJOB_METRICS_PORT", default_value = "9249")]
    pub metrics_port: streamjob::web::WebPort,
    /// Metrics addresses (`host:port`) of every worker in index order, which worker 0 reads
    /// for the job-wide page and summary; default: each peer's host with --metrics-port.
    #[arg(long, env = "STREAMJOB_PEER_METRICS", value_delimiter = ',')]
    pub peer_metrics: Vec<String>,
    #[command(flatten)]
    pub restore: RestoreArgs,
}

/// Where a run keeps its checkpoints and what it starts from (with `spec.checkpointing`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RestoreArgs {
    /// Checkpoint namespace of this deployment: checkpoints go to
    /// `<checkpointing.directory>/<run id>`, and a restarted worker resumes from the latest
    /// complete one there. The operator sets it per deployment (see upgradeMode).
    #[arg(long, env = "STREAMJOB_RUN_ID")]
    pub run_id: Option<String>,
    /// Snapshot to start from while the run has no checkpoint of its own: a savepoint, a
    /// `chk-<n>` directory or another run's directory (its latest checkpoint). Overrides the
    /// spec's initialSavepointPath.
    #[arg(long, env = "STREAMJOB_RESTORE_FROM")]
    pub restore_from: Option<String>,
}

impl RestoreArgs {
    /// Arguments that pass these settings on to a `streamjob worker` process.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(id) = &self.run_id {
            args.extend(["--run-id".to_string(), id.clone()]);
        }
        if let Some(p) = &self.restore_from {
            args.extend(["--restore-from".to_string(), p.clone()]);
        }
        args
    }
}

/// Resolves the command line and environment into a cluster config for `job_name`.
pub fn cluster_config(
    args: &WorkerArgs,
    job_name: &str,
    slots_needed: u32,
    spec_hash: u64,
) -> Result<ClusterConfig> {
    let token = std::env::var(TOKEN_ENV).unwrap_or_default();
    if token.is_empty() {
        bail!("{TOKEN_ENV} is not set: every worker of a job needs the same exchange token");
    }
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let index = match args.index {
        Some(i) => i,
        None => {
            let pod =
                std::env::var("POD_NAME").context("no --index given and POD_NAME is not set")?;
            index_from_pod_name(&pod)
                .with_context(|| format!("POD_NAME '{pod}' does not end in a worker index"))?
        }
    };
    let peers = match &args.peer_pattern {
        Some(pattern) => peers_from_pattern(
            pattern,
            args.workers,
            &[
                ("job", job_name),
                ("namespace", &args.namespace),
                ("port", &args.port.to_string()),
            ],
        )
        .map_err(anyhow::Error::msg)?,
        None => args.peers.clone(),
    };
    if peers.len() != args.workers as usize {
        bail!(
            "{} peer address(es) for {} workers: give --peers with one host:port per worker, or --peer-pattern",
            peers.len(),
            args.workers
        );
    }
    let slots = args
        .slots
        .unwrap_or_else(|| slots_needed.div_ceil(args.workers).max(1));
    Ok(ClusterConfig {
        index,
        workers: args.workers,
        slots,
        listen: args
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], args.port))),
        peers,
        token,
        connect_timeout: Duration::from_secs(args.connect_timeout_secs),
        credit: args.credit,
        job_hash: spec_hash,
        idle_after_finish: args.idle_after_finish,
        health: Default::default(),
        tls: match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
            (Some(c), Some(k), Some(a)) => {
                Some(TlsPems::load(c, k, a).map_err(anyhow::Error::msg)?)
            }
            _ => None,
        },
        restarts: 0,
    })
}
