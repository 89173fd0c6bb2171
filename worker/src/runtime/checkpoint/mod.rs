//! Aligned checkpoints (Flink's barrier snapshots) and savepoints.
//!
//! The coordinator triggers checkpoint `n`; every source task snapshots its position, writes
//! it, and sends a barrier downstream in order with its records. Input gates align barriers;
//! every operator that keeps state snapshots it when the barrier passes, and each task acks
//! once the barrier has gone through its chain. When every task has acked (or finished), the
//! coordinator writes `chk-<n>/_metadata` — from then on the checkpoint is complete and
//! durable — and tasks pass `CheckpointComplete(n)` down their chains, so sinks commit
//! (two-phase commit) and sources commit offsets.
//!
//! In a distributed run one coordinator (the *leader*, in worker 0) decides; the other
//! workers hold a *follower* that forwards their tasks' acks and written state files to it
//! over gRPC (`net::coordination`) and learns triggers and completions from it. Every worker
//! writes its snapshots straight into the shared checkpoint directory.
//!
//! Layout: `<dir>[/<run id>]/chk-<n>/<operator uid>-<subtask>.state` per snapshot and
//! `chk-<n>/_metadata` (JSON) when complete; [`format`] has the bytes. A job restores from
//! the newest intact complete checkpoint of its run directory, else from `restore_from` (a
//! savepoint, a `chk-<n>` directory, or another run's directory); [`restore`] has the
//! checks. State is matched to operators by `uid`; keyed state is stored by key group, so a
//! restore may use another parallelism (never another maxParallelism). A savepoint is a
//! checkpoint copied to the savepoint directory when it completes, and never pruned.

mod coordinator;
pub mod format;
mod layout;
pub mod restore;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use coordinator::{Coordinator, FinalOutcome};
pub use layout::latest_complete;
pub use restore::{CheckpointError, JobShape};

use crate::runtime::storage::Location;

/// Checkpointing settings of a run.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    pub interval: Duration,
    /// Base checkpoint directory (the spec's `checkpointing.directory`): a path,
    /// `file:///path` or `s3://bucket/prefix`.
    pub dir: String,
    /// Complete checkpoints kept; older ones are deleted.
    pub retained: usize,
    /// Checkpoints of this run go to `dir/<run id>`; `None`: straight into `dir`.
    pub run_id: Option<String>,
    /// Where savepoints go; `dir/savepoints` when unset.
    pub savepoint_dir: Option<String>,
    /// Snapshot to start from when the run directory has no complete checkpoint yet: a
    /// snapshot directory (savepoint, `chk-<n>`) or a run directory (its latest).
    pub restore_from: Option<String>,
    /// Start even if the restored snapshot has state of operators the job no longer has.
    pub allow_non_restored_state: bool,
    /// Flink's `checkpointTimeout`: a checkpoint not complete this long after its trigger
    /// fails (and counts as a failed checkpoint).
    pub timeout: Duration,
    /// Flink's `minPauseBetweenCheckpoints`: time from one checkpoint's end (complete or
    /// failed) to the next trigger.
    pub min_pause: Duration,
    /// Flink's `tolerableCheckpointFailureNumber`: consecutive failed checkpoints the job
    /// survives; one more fails it. `None`: any number (failures are logged and reported).
    pub tolerable_failures: Option<u32>,
    /// By operator uid, the settings that decide what a source's position means (file path,
    /// topics, ...). Recorded in every checkpoint; a restore with other settings is refused.
    pub sources: BTreeMap<String, serde_json::Value>,
}

impl CheckpointConfig {
    pub fn new(interval: Duration, dir: String, retained: usize) -> Self {
        CheckpointConfig {
            interval,
            dir,
            retained,
            run_id: None,
            savepoint_dir: None,
            restore_from: None,
            allow_non_restored_state: false,
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            tolerable_failures: None,
            sources: BTreeMap::new(),
        }
    }

    /// Directory of this run's checkpoints.
    pub fn run_dir(&self) -> std::io::Result<Location> {
        let base = Location::parse(&self.dir)?;
        Ok(match &self.run_id {
            Some(id) => base.join(id),
            None => base,
        })
    }

    pub fn savepoint_dir(&self) -> std::io::Result<Location> {
        match &self.savepoint_dir {
            Some(d) => Location::parse(d),
            None => Ok(Location::parse(&self.dir)?.join("savepoints")),
        }
    }
}

/// A complete snapshot: where it is and when it completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: u64,
    /// Its location (URL or path): what `--restore-from` takes.
    pub path: String,
    pub completed_ms: u64,
}

/// What the coordinator has decided so far; followers and control clients watch it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Latest checkpoint triggered (sources inject its barrier).
    pub pending: u64,
    /// Latest complete checkpoint.
    pub completed: u64,
    /// A stop-with-savepoint: sources end after this checkpoint's barrier (0: none).
    pub stop_at: u64,
    pub last_checkpoint: Option<SnapshotInfo>,
    pub last_savepoint: Option<SnapshotInfo>,
    /// Checkpoints that can never complete, most recent last (bounded).
    pub failed: Vec<(u64, String)>,
    /// The final checkpoint, once every task has finished and it is complete (0: not yet).
    /// Tasks wait for it before they end, so sinks commit only what it covers.
    pub final_checkpoint: u64,
    /// The final checkpoint could not be written: why, and whether that fails the run (a
    /// sink commits only on it) or is a warning (every sink's output is already written).
    pub final_failure: Option<(String, bool)>,
}

/// A follower's message to the leader: the leader's own method of the same name runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Ack(u64),
    Finished {
        last_acked: u64,
        final_state: Option<(String, u32, Vec<u8>)>,
    },
    Final(String, u32, Vec<u8>),
    BeginWrite(u64),
    EndWrite(u64, Option<String>),
    /// A state file of checkpoint `id` was written: (id, handle).
    Written(u64, format::StateHandle),
}

/// The snapshot a run restored from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub id: u64,
    pub dir: Location,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
