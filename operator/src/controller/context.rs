//! What every reconcile shares: the client, the operator's settings, and what it remembers
//! between reconciles of a job (failures for backoff, recent reports and events).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::events::Reporter;
use kube::{Client, ResourceExt};
use streamjob_crds::spec::StreamJob;

use crate::control::{GrpcJobControl, JobControl, JobReport};
use crate::metrics::Metrics;
use crate::resources::Defaults;

/// Field manager of every object the operator applies.
pub const MANAGER: &str = "streamjob-operator";

/// Finalizer of jobs that take a savepoint when deleted (`savepointOnDeletion` with a stateful
/// `upgradeMode`).
pub const FINALIZER: &str = "streamjob.dev/savepoint";

/// `status.upgrade.step` values.
pub const SAVEPOINTING: &str = "savepointing";

pub const DEPLOYING: &str = "deploying";

/// A deleted job gets this many stop-with-savepoint attempts, and none once this long has
/// passed since its deletion (also after an operator restart, which forgets the attempts):
/// a job whose workers cannot answer must not stay undeletable.
pub const DELETION_SAVEPOINT_ATTEMPTS: u32 = 3;

pub const DELETION_SAVEPOINT_DEADLINE: Duration = Duration::from_secs(600);

/// A job's report is reused for this long: our own status patch triggers the next reconcile at
/// once, which must not poll again (and find a newer checkpoint, and patch again...).
pub(crate) const REPORT_TTL: Duration = Duration::from_secs(5);

/// An event with the same reason and note as the last one of its job is published again only
/// after this long.
pub(crate) const EVENT_REPEAT_AFTER: Duration = Duration::from_secs(600);

/// Default of `--max-workers-per-job`.
pub const DEFAULT_MAX_WORKERS_PER_JOB: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot create a job token: {0}")]
    Token(getrandom::Error),
    /// A savepoint the operator needs failed; retried with the same backoff.
    #[error("{0}")]
    Savepoint(String),
    /// A job from the API server that does not fit the types (the CRD schema admitted it).
    #[error("cannot read {0}")]
    Read(String),
    /// The API server refused a child object (the status and an event say so).
    #[error("{kind} {name} was rejected: {message}")]
    ChildRejected {
        kind: String,
        name: String,
        message: String,
    },
}

pub(crate) type Key = (String, String);

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// Who publishes the events.
    pub reporter: Reporter,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
    /// Savepoints and status of the jobs (worker 0's JobControl service).
    pub control: Arc<dyn JobControl>,
    /// How often a running job's status is read.
    pub poll_interval: Duration,
    /// Most worker pods one job may have.
    pub max_workers_per_job: u32,
    /// Consecutive failures per job, for backoff.
    pub(crate) failures: Mutex<HashMap<Key, u32>>,
    /// Failed deletion savepoints per job.
    pub(crate) deletion_attempts: Mutex<HashMap<Key, u32>>,
    /// The last report of each job, and when it came.
    pub(crate) reports: Mutex<HashMap<Key, (Instant, JobReport)>>,
    /// The last note of each job and event reason, and when it was published.
    pub(crate) recent_events: Mutex<HashMap<(Key, String), (String, Instant)>>,
}

impl Context {
    pub fn new(client: Client, defaults: Defaults, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            reporter,
            client,
            defaults,
            metrics,
            control: Arc::new(GrpcJobControl::default()),
            poll_interval: Duration::from_secs(30),
            max_workers_per_job: DEFAULT_MAX_WORKERS_PER_JOB,
            failures: Mutex::new(HashMap::new()),
            deletion_attempts: Mutex::new(HashMap::new()),
            reports: Mutex::new(HashMap::new()),
            recent_events: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the JobControl client (tests script the jobs' answers with it).
    pub fn with_control(mut self, control: Arc<dyn JobControl>) -> Self {
        self.control = control;
        self
    }

    pub fn with_max_workers_per_job(mut self, max: u32) -> Self {
        self.max_workers_per_job = max;
        self
    }

    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    pub(crate) fn forget_report(&self, key: &Key) {
        self.reports.lock().unwrap().remove(key);
    }

    /// Drops what is kept about a deleted job.
    pub(crate) fn forget(&self, key: &Key) {
        self.forget_report(key);
        self.deletion_attempts.lock().unwrap().remove(key);
        self.recent_events
            .lock()
            .unwrap()
            .retain(|(job, _), _| job != key);
    }
}

pub(crate) fn key(job: &StreamJob) -> Key {
    (job.namespace().unwrap_or_default(), job.name_any())
}
