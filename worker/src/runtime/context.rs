//! What a subtask knows about itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use streamjob_crds::KeyGroupRange;

/// Identity and settings of one subtask, given to every operator, source and sink it runs.
#[derive(Debug, Clone)]
pub struct SubtaskContext {
    pub job_name: Arc<str>,
    /// Name of the operator being built (each operator of a chain gets its own copy).
    pub operator: Arc<str>,
    /// Stable operator id (for state).
    pub uid: Arc<str>,
    /// 0-based index of this subtask.
    pub subtask: u32,
    pub parallelism: u32,
    /// Number of key groups in the job.
    pub max_parallelism: u32,
    /// Key groups this subtask owns (for keyed operators).
    pub key_groups: KeyGroupRange,
    /// Records per batch on channels.
    pub batch_size: usize,
    /// Longest time a partially filled batch waits before being sent.
    pub buffer_timeout: Duration,
    pub(crate) cancel: CancelFlag,
    /// Checkpoints of this run, when enabled.
    pub checkpoints: Option<Arc<crate::runtime::checkpoint::Coordinator>>,
}

impl SubtaskContext {
    /// True once the job is being torn down (another task failed); long-running sources and
    /// sinks should check it while they wait.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_set()
    }
}

/// Job-wide cancellation, set when any task fails.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// How often blocked tasks wake up to look at the cancel flag.
pub(crate) const CANCEL_POLL: Duration = Duration::from_millis(50);
