//! The checkpoint coordinator of one run: triggers, acknowledgements, background writes,
//! completion (the metadata write), failures and the snapshot the run restored from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::format::{self, METADATA_VERSION, Metadata, StateHandle, state_file_name};
use super::layout::{chk_dir, copy_snapshot, prune};
use super::restore::{self, CheckpointError, JobShape};
use super::{CheckpointConfig, Progress, Report, Restored, SnapshotInfo, now_ms};
use crate::runtime::storage::Location;

enum Role {
    Leader,
    /// Reports go to the leader in order; the link turns a lost leader into a job failure.
    Follower(tokio::sync::mpsc::UnboundedSender<Report>),
}

impl std::fmt::Debug for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Leader => "Leader",
            Role::Follower(_) => "Follower",
        })
    }
}

/// Savepoint requested for a checkpoint id.
#[derive(Debug, Clone)]
struct SavepointRequest {
    dir: Location,
}

/// Sinks whose output is written when they write it, so a final checkpoint they do not get
/// loses nothing; every other sink (Kafka's transactions, unknown sinks) may commit only on
/// a complete checkpoint.
const SINKS_WITHOUT_COMMIT: &[&str] =
    &["sink:file", "sink:print", "sink:blackhole", "sink:collect"];

/// How a task's wait for the job's final checkpoint ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalOutcome {
    /// Complete: announce it, sinks commit.
    Complete,
    /// It could not be written, and no sink needs it: end without announcing it.
    Skipped,
    /// It could not be written and a sink commits only on it: the run fails.
    Failed(String),
    Cancelled,
}

/// Tracks checkpoints of one run: triggers, acknowledgements, completion and restore.
#[derive(Debug)]
pub struct Coordinator {
    role: Role,
    dir: Location,
    savepoint_dir: Location,
    retained: usize,
    /// Tasks that must acknowledge every checkpoint (in the whole job).
    tasks: usize,
    shape: JobShape,
    sources: std::collections::BTreeMap<String, serde_json::Value>,
    interval: Duration,
    timeout: Duration,
    min_pause: Duration,
    tolerable_failures: Option<u32>,
    triggered: AtomicU64,
    completed: AtomicU64,
    stop_at: AtomicU64,
    /// Latest checkpoint that completed or failed: the next may start.
    settled: AtomicU64,
    /// Set once more checkpoints failed in a row than tolerated: the run fails.
    fatal: AtomicBool,
    restored: Option<Restored>,
    restored_meta: Option<Metadata>,
    state: Mutex<Acks>,
    progress: tokio::sync::watch::Sender<Progress>,
}

#[derive(Debug)]
struct Acks {
    acked: HashMap<u64, usize>,
    /// Per finished task, the last checkpoint it acknowledged itself: it stands in for the
    /// task in later checkpoints only.
    finished: Vec<u64>,
    started_ms: HashMap<u64, u64>,
    /// Final snapshots of finished sources, part of every later checkpoint: a restore must
    /// not read a finished source again.
    /// Whole state files (envelope included), shared with the completion thread.
    final_states: Vec<(String, u32, Arc<Vec<u8>>)>,
    /// State files written so far, per checkpoint.
    handles: HashMap<u64, Vec<StateHandle>>,
    /// Snapshots still being written, per checkpoint.
    writing: HashMap<u64, usize>,
    /// Checkpoints that can never complete.
    failed: Vec<u64>,
    /// Checkpoints failed since the last complete one.
    failed_in_a_row: u32,
    fatal: Option<String>,
    savepoints: HashMap<u64, SavepointRequest>,
    /// Id of the final checkpoint once attempted.
    final_id: u64,
    /// The checkpoint whose completion (final snapshots, savepoint copy, `_metadata`) is
    /// being written on the completion thread.
    completing: Option<u64>,
    /// When the last checkpoint completed or failed (none yet: no pause before the first),
    /// and when the last was triggered.
    settled_at: Option<Instant>,
    triggered_at: Instant,
}

impl Default for Acks {
    fn default() -> Self {
        Acks {
            acked: HashMap::new(),
            finished: Vec::new(),
            started_ms: HashMap::new(),
            final_states: Vec::new(),
            handles: HashMap::new(),
            writing: HashMap::new(),
            failed: Vec::new(),
            failed_in_a_row: 0,
            fatal: None,
            savepoints: HashMap::new(),
            final_id: 0,
            completing: None,
            settled_at: None,
            triggered_at: Instant::now(),
        }
    }
}

fn invalid(e: CheckpointError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

impl Coordinator {
    /// A leader for `tasks` tasks with operators `uids` and the default maxParallelism (tests
    /// and embedders that have no plan); see [`Coordinator::for_job`].
    pub fn new(
        config: &CheckpointConfig,
        tasks: usize,
        uids: &[&str],
    ) -> Result<Coordinator, CheckpointError> {
        let shape = JobShape {
            tasks,
            max_parallelism: streamjob_crds::keygroup::DEFAULT_MAX_PARALLELISM,
            operators: uids
                .iter()
                .map(|u| (u.to_string(), format::OperatorRecord::default()))
                .collect(),
        };
        Self::for_job(config, &shape)
    }

    /// The job's (leader) coordinator. Restores from the newest intact complete checkpoint
    /// of the run directory, else from `config.restore_from`, after checking that the job
    /// can read it (see [`restore`]).
    pub fn for_job(
        config: &CheckpointConfig,
        shape: &JobShape,
    ) -> Result<Coordinator, CheckpointError> {
        let chosen = restore::choose(config, shape)?;
        if let Some((r, meta)) = &chosen {
            info!(
                checkpoint = r.id,
                dir = r.dir.url(),
                bytes = meta.state_bytes,
                "restoring"
            );
        }
        let (restored, meta) = chosen.unzip();
        Self::with_role(config, shape.clone(), restored, meta, Role::Leader)
    }

    /// A follower (a worker other than the leader): it restores what the leader chose and
    /// sends `reports` to it.
    pub fn follower(
        config: &CheckpointConfig,
        tasks: usize,
        restored: Option<Restored>,
        reports: tokio::sync::mpsc::UnboundedSender<Report>,
    ) -> Result<Coordinator, CheckpointError> {
        // The leader checked the snapshot; this worker reads its file list to verify what it
        // restores itself.
        let meta = match &restored {
            Some(r) => {
                let bytes = r.dir.join("_metadata").get()?.ok_or_else(|| {
                    CheckpointError::Unusable(format!("{}/_metadata is missing", r.dir.url()))
                })?;
                Some(Metadata::parse(&bytes).map_err(CheckpointError::Unusable)?)
            }
            None => None,
        };
        let shape = JobShape {
            tasks,
            ..JobShape::default()
        };
        Self::with_role(config, shape, restored, meta, Role::Follower(reports))
    }

    fn with_role(
        config: &CheckpointConfig,
        shape: JobShape,
        restored: Option<Restored>,
        restored_meta: Option<Metadata>,
        role: Role,
    ) -> Result<Coordinator, CheckpointError> {
        let base = restored.as_ref().map_or(0, |r| r.id);
        Ok(Coordinator {
            role,
            dir: config.run_dir()?,
            savepoint_dir: config.savepoint_dir()?,
            retained: config.retained.max(1),
            tasks: shape.tasks,
            shape,
            sources: config.sources.clone(),
            interval: config.interval,
            timeout: config.timeout,
            min_pause: config.min_pause,
            tolerable_failures: config.tolerable_failures,
            triggered: AtomicU64::new(base),
            completed: AtomicU64::new(base),
            stop_at: AtomicU64::new(0),
            settled: AtomicU64::new(base),
            fatal: AtomicBool::new(false),
            restored,
            restored_meta,
            state: Mutex::new(Acks::default()),
            progress: tokio::sync::watch::Sender::new(Progress {
                pending: base,
                completed: base,
                ..Progress::default()
            }),
        })
    }

    /// Where this run's checkpoints go.
    pub fn storage_url(&self) -> &str {
        self.dir.url()
    }

    /// Leader: records this run's epoch in the run directory, so that followers can check
    /// they see the same storage.
    pub fn mark_leader(&self, epoch: u64) -> std::io::Result<()> {
        self.dir.join("_leader").put(epoch.to_string().into_bytes())
    }

    /// Follower: whether the leader's mark for `epoch` is visible, i.e. the storage is
    /// shared. A plain path on each pod's own disk is not, and a restore would then find no
    /// state for this worker's subtasks and silently start them empty.
    pub fn sees_leader(&self, epoch: u64) -> std::io::Result<bool> {
        Ok(self
            .dir
            .join("_leader")
            .get()?
            .is_some_and(|b| b == epoch.to_string().as_bytes()))
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader)
    }

    /// Checkpoint this run restored from.
    pub fn restored(&self) -> Option<u64> {
        self.restored.as_ref().map(|r| r.id)
    }

    pub fn restored_snapshot(&self) -> Option<&Restored> {
        self.restored.as_ref()
    }

    /// Latest checkpoint sources should inject.
    pub fn pending(&self) -> u64 {
        self.triggered.load(Ordering::Acquire)
    }

    /// Latest complete checkpoint.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    /// Stop-with-savepoint: the checkpoint after whose barrier sources end (0: none).
    pub fn stop_at(&self) -> u64 {
        self.stop_at.load(Ordering::Acquire)
    }

    /// Whether checkpoint `id` can never complete.
    pub fn has_failed(&self, id: u64) -> bool {
        self.progress.borrow().failed.iter().any(|(f, _)| *f == id)
    }

    /// Why the run must fail: more checkpoints failed in a row than tolerated.
    pub fn fatal(&self) -> Option<String> {
        if !self.fatal.load(Ordering::Acquire) {
            return None;
        }
        self.state.lock().unwrap().fatal.clone()
    }

    /// Watches what the coordinator decides (followers, control clients).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// The complete final checkpoint (0 until every task finished and it is written).
    pub fn final_checkpoint_id(&self) -> u64 {
        self.progress.borrow().final_checkpoint
    }

    /// Whether the final checkpoint completed or failed: the job is over either way.
    pub fn final_settled(&self) -> bool {
        let p = self.progress.borrow();
        p.final_checkpoint != 0 || p.final_failure.is_some()
    }

    /// A finished task waits here for the job's final checkpoint.
    pub fn await_final(&self, cancelled: impl Fn() -> bool) -> FinalOutcome {
        loop {
            {
                let p = self.progress.borrow();
                if p.final_checkpoint != 0 {
                    return FinalOutcome::Complete;
                }
                if let Some((cause, fatal)) = &p.final_failure {
                    return match fatal {
                        true => FinalOutcome::Failed(cause.clone()),
                        false => FinalOutcome::Skipped,
                    };
                }
            }
            if cancelled() {
                return FinalOutcome::Cancelled;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A follower learns the leader's decisions.
    pub fn observe(&self, p: &Progress) {
        self.stop_at.store(p.stop_at, Ordering::Release);
        self.triggered.fetch_max(p.pending, Ordering::AcqRel);
        self.completed.fetch_max(p.completed, Ordering::AcqRel);
        self.progress.send_replace(p.clone());
    }

    fn publish(&self, f: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(|p| {
            f(p);
            p.pending = self.pending();
            p.completed = self.completed();
            p.stop_at = self.stop_at();
        });
    }

    /// Starts the next checkpoint unless one is still in flight; returns its id.
    pub fn trigger(&self) -> Option<u64> {
        self.start(None, false)
    }

    /// The trigger thread's heartbeat: fails a checkpoint that ran past the timeout, and
    /// triggers the next one once the interval and the minimum pause have passed.
    pub fn tick(&self) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        let pending = self.pending();
        let mut s = self.state.lock().unwrap();
        if pending > self.settled.load(Ordering::Acquire)
            && s.completing != Some(pending)
            && let Some(&started) = s.started_ms.get(&pending)
            && now_ms().saturating_sub(started) > self.timeout.as_millis() as u64
        {
            let cause = format!("expired: not complete {:?} after its trigger", self.timeout);
            self.fail_checkpoint(&mut s, pending, cause);
        }
        let due = s.triggered_at.elapsed() >= self.interval
            && s.settled_at.is_none_or(|t| t.elapsed() >= self.min_pause);
        drop(s);
        if due { self.trigger() } else { None }
    }

    /// Starts a savepoint (a checkpoint copied to `dir`, or the savepoint directory, when
    /// complete) unless a checkpoint is in flight. With `stop`, sources end after its barrier.
    pub fn trigger_savepoint(&self, stop: bool, dir: Option<Location>) -> Option<u64> {
        let dir = dir.unwrap_or_else(|| self.savepoint_dir.clone());
        self.start(Some(SavepointRequest { dir }), stop)
    }

    fn start(&self, savepoint: Option<SavepointRequest>, stop: bool) -> Option<u64> {
        if !self.is_leader() || self.stop_at() != 0 {
            return None;
        }
        let done = self.settled.load(Ordering::Acquire);
        let id = done + 1;
        // Record the request before the id is visible to sources.
        let mut s = self.state.lock().unwrap();
        if s.final_id != 0 || s.fatal.is_some() {
            return None;
        }
        // One checkpoint at a time: a new one only once the last completed.
        if self.triggered.load(Ordering::Acquire) != done {
            return None;
        }
        s.started_ms.insert(id, now_ms());
        s.triggered_at = Instant::now();
        let is_savepoint = savepoint.is_some();
        if let Some(sp) = savepoint {
            s.savepoints.insert(id, sp);
        }
        if stop {
            self.stop_at.store(id, Ordering::Release);
        }
        self.triggered.store(id, Ordering::Release);
        crate::runtime::metrics::global().checkpoint_triggered(id);
        drop(s);
        self.publish(|_| {});
        debug!(checkpoint = id, savepoint = is_savepoint, stop, "triggered");
        Some(id)
    }

    /// Writes one snapshot of checkpoint `id` (atomically: a crash never leaves half a file)
    /// in its envelope. A failed write fails the checkpoint, not the caller; `Err` only once
    /// more checkpoints failed in a row than tolerated.
    pub fn write_state(
        self: &Arc<Self>,
        id: u64,
        uid: &str,
        subtask: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.write_file(id, uid, subtask, format::wrap(uid, subtask, payload))
    }

    /// Like [`Coordinator::write_state`] for a file already in its envelope (from
    /// [`format::envelope`] followed by the payload), so it is not copied again.
    pub fn write_file(
        self: &Arc<Self>,
        id: u64,
        uid: &str,
        subtask: u32,
        file: Vec<u8>,
    ) -> std::io::Result<()> {
        self.begin_write(id);
        let result = self.put_file(id, uid, subtask, file);
        self.end_write(id, result)
    }

    fn put_file(&self, id: u64, uid: &str, subtask: u32, file: Vec<u8>) -> std::io::Result<()> {
        // A checkpoint that already failed is not worth writing to.
        if self.has_failed(id) {
            return Ok(());
        }
        let handle = StateHandle {
            operator: uid.to_string(),
            subtask,
            file: state_file_name(uid, subtask),
            length: file.len() as u64,
            xxh3: format::checksum(&file),
        };
        chk_dir(&self.dir, id).join(&handle.file).put(file)?;
        self.written(id, handle)
    }

    fn written(&self, id: u64, handle: StateHandle) -> std::io::Result<()> {
        let mut handle = Some(handle);
        if self.forward(|| Report::Written(id, handle.take().expect("once")))? {
            return Ok(());
        }
        let handle = handle.expect("not forwarded");
        let mut s = self.state.lock().unwrap();
        let files = s.handles.entry(id).or_default();
        files.retain(|h| !(h.operator == handle.operator && h.subtask == handle.subtask));
        files.push(handle);
        Ok(())
    }

    /// The snapshot of (`uid`, `subtask`) in the restored checkpoint, checked against the
    /// length and checksum its metadata recorded.
    pub fn restored_state(&self, uid: &str, subtask: u32) -> std::io::Result<Option<Vec<u8>>> {
        let (Some(r), Some(meta)) = (&self.restored, &self.restored_meta) else {
            return Ok(None);
        };
        match meta.handle(uid, subtask) {
            Some(h) => self.read_checked(r, meta, h).map(Some),
            None => Ok(None),
        }
    }

    fn read_checked(
        &self,
        r: &Restored,
        meta: &Metadata,
        h: &StateHandle,
    ) -> std::io::Result<Vec<u8>> {
        let loc = r.dir.join(&h.file);
        Metadata::verify(h, loc.get()?).map_err(|problem| {
            invalid(CheckpointError::StateFile {
                id: meta.id,
                file: loc.url().to_string(),
                uid: h.operator.clone(),
                problem,
            })
        })
    }

    /// Every subtask's snapshot of `uid` in the restored checkpoint, with its subtask index
    /// (keyed state is redistributed by key group, whatever the old parallelism was).
    pub fn restored_states(&self, uid: &str) -> std::io::Result<Vec<(u32, Vec<u8>)>> {
        let (Some(r), Some(meta)) = (&self.restored, &self.restored_meta) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for h in meta.states.iter().filter(|h| h.operator == uid) {
            out.push((h.subtask, self.read_checked(r, meta, h)?));
        }
        Ok(out)
    }

    /// Sends a report to the leader; `false` on the leader itself.
    fn forward(&self, report: impl FnOnce() -> Report) -> std::io::Result<bool> {
        match &self.role {
            Role::Leader => Ok(false),
            Role::Follower(tx) => tx
                .send(report())
                .map(|()| true)
                .map_err(|_| std::io::Error::other("the checkpoint coordinator is gone")),
        }
    }

    /// Runs a follower's report on the leader.
    pub fn apply(self: &Arc<Self>, report: Report) -> std::io::Result<()> {
        match report {
            Report::Ack(id) => self.ack(id),
            Report::Finished {
                last_acked,
                final_state,
            } => self.task_finished(
                last_acked,
                final_state
                    .as_ref()
                    .map(|(u, t, b)| (u.as_str(), *t, b.clone())),
            ),
            Report::Final(uid, subtask, bytes) => {
                self.register_final(&uid, subtask, bytes);
                Ok(())
            }
            Report::BeginWrite(id) => {
                self.begin_write(id);
                Ok(())
            }
            Report::EndWrite(id, error) => {
                self.end_write(id, error.map_or(Ok(()), |e| Err(std::io::Error::other(e))))
            }
            Report::Written(id, handle) => self.written(id, handle),
        }
    }

    fn check_fatal(&self) -> std::io::Result<()> {
        match self.fatal() {
            Some(e) => Err(std::io::Error::other(e)),
            None => Ok(()),
        }
    }

    /// A task has taken checkpoint `id` (its barrier went through its whole chain).
    pub fn ack(self: &Arc<Self>, id: u64) -> std::io::Result<()> {
        self.check_fatal()?;
        if self.forward(|| Report::Ack(id))? {
            return Ok(());
        }
        let mut s = self.state.lock().unwrap();
        *s.acked.entry(id).or_insert(0) += 1;
        self.maybe_complete(&mut s, id);
        drop(s);
        self.check_fatal()
    }

    /// A task finished: it acknowledges every later checkpoint by not taking part. A source
    /// passes its final position, which every later checkpoint then includes.
    pub fn task_finished(
        self: &Arc<Self>,
        last_acked: u64,
        final_state: Option<(&str, u32, Vec<u8>)>,
    ) -> std::io::Result<()> {
        let mut final_state = final_state;
        if self.forward(|| Report::Finished {
            last_acked,
            final_state: final_state.take().map(|(u, t, b)| (u.to_string(), t, b)),
        })? {
            return Ok(());
        }
        if let Some((uid, subtask, bytes)) = final_state {
            self.register_final(uid, subtask, bytes);
        }
        let mut s = self.state.lock().unwrap();
        s.finished.push(last_acked);
        let id = self.pending();
        if id > self.completed() {
            self.maybe_complete(&mut s, id);
        }
        // The last task: write the final checkpoint now; the finished tasks wait for it.
        self.write_final(&mut s);
        Ok(())
    }

    /// A snapshot of checkpoint `id` will be written in the background; the checkpoint does
    /// not complete before [`Coordinator::end_write`].
    pub fn begin_write(&self, id: u64) {
        if self.forward(|| Report::BeginWrite(id)).unwrap_or(true) {
            return;
        }
        *self.state.lock().unwrap().writing.entry(id).or_insert(0) += 1;
    }

    /// The write of a snapshot of checkpoint `id` ended. A failure fails the checkpoint;
    /// `Err` only once that makes more failures in a row than tolerated.
    pub fn end_write(
        self: &Arc<Self>,
        id: u64,
        result: std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut result = Some(result);
        if self.forward(|| {
            Report::EndWrite(
                id,
                result.take().and_then(|r| r.err()).map(|e| e.to_string()),
            )
        })? {
            return Ok(());
        }
        let mut s = self.state.lock().unwrap();
        let left = match s.writing.get_mut(&id) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            s.writing.remove(&id);
        }
        match result {
            Some(Err(e)) => {
                self.fail_checkpoint(&mut s, id, format!("a snapshot could not be written: {e}"));
            }
            _ if s.failed.contains(&id) => {
                // The last write of a failed checkpoint is done: nothing writes there now.
                if left == 0 {
                    self.remove_failed(id);
                }
            }
            _ => self.maybe_complete(&mut s, id),
        }
        drop(s);
        self.check_fatal()
    }

    /// Final snapshot of an operator whose input ended: part of every later checkpoint.
    pub fn register_final(&self, uid: &str, subtask: u32, payload: Vec<u8>) {
        if self.is_leader() {
            self.register_final_file(uid, subtask, format::wrap(uid, subtask, &payload));
        } else {
            let _ = self.forward(|| Report::Final(uid.to_string(), subtask, payload));
        }
    }

    /// Like [`Coordinator::register_final`] for a file already in its envelope, so a large
    /// state is held once.
    pub fn register_final_file(&self, uid: &str, subtask: u32, file: Vec<u8>) {
        if !self.is_leader() {
            // The leader wraps what followers send.
            if let Ok(payload) = format::unwrap(file, uid, subtask) {
                let _ = self.forward(|| Report::Final(uid.to_string(), subtask, payload));
            }
            return;
        }
        let mut s = self.state.lock().unwrap();
        s.final_states
            .retain(|(u, t, _)| !(u == uid && *t == subtask));
        s.final_states
            .push((uid.to_string(), subtask, Arc::new(file)));
    }

    /// Checkpoint `id` can never complete: it counts against the tolerated failures, its
    /// directory goes once nothing writes there any more, and the next may start.
    fn fail_checkpoint(&self, s: &mut Acks, id: u64, cause: String) {
        if s.failed.contains(&id) || id <= self.completed() {
            return;
        }
        warn!(checkpoint = id, %cause, "checkpoint failed");
        crate::runtime::metrics::global().checkpoint_failed(id, &cause);
        s.failed.push(id);
        s.acked.remove(&id);
        s.handles.remove(&id);
        s.started_ms.remove(&id);
        s.savepoints.remove(&id);
        s.failed_in_a_row += 1;
        s.settled_at = Some(Instant::now());
        self.settled.fetch_max(id, Ordering::AcqRel);
        if !s.writing.contains_key(&id) {
            self.remove_failed(id);
        }
        if let Some(limit) = self.tolerable_failures
            && s.failed_in_a_row > limit
            && s.fatal.is_none()
        {
            s.fatal = Some(format!(
                "{} checkpoints failed in a row, more than tolerableCheckpointFailureNumber {limit}; \
                 the last, {id}: {cause}",
                s.failed_in_a_row
            ));
            self.fatal.store(true, Ordering::Release);
        }
        let final_failed = (id == s.final_id).then(|| cause.clone());
        self.publish(|p| {
            p.failed.push((id, cause));
            if p.failed.len() > 16 {
                p.failed.remove(0);
            }
        });
        if let Some(cause) = final_failed {
            self.final_failed(id, cause);
        }
    }

    fn remove_failed(&self, id: u64) {
        if let Err(e) = chk_dir(&self.dir, id).delete_all() {
            warn!(checkpoint = id, error = %e, "cannot delete the failed checkpoint's files");
        }
    }

    /// After every task finished: one last checkpoint from the final snapshots, so a run
    /// started later (with more input) continues exactly where this one ended. Written when
    /// the last task reports; finished tasks wait for it before they end.
    fn write_final(self: &Arc<Self>, s: &mut Acks) {
        if !self.is_leader() || s.final_id != 0 || s.finished.len() < self.tasks {
            return;
        }
        let id = self.pending().max(self.settled.load(Ordering::Acquire)) + 1;
        self.triggered.store(id, Ordering::Release);
        s.final_id = id;
        s.started_ms.insert(id, now_ms());
        self.maybe_complete(s, id);
    }

    /// The final checkpoint failed: whether the run fails depends on its sinks.
    fn final_failed(&self, id: u64, cause: String) {
        let needs: Vec<&str> = self
            .shape
            .operators
            .values()
            .filter(|o| o.operator.starts_with("sink:"))
            .filter(|o| !SINKS_WITHOUT_COMMIT.contains(&o.operator.as_str()))
            .map(|o| o.name.as_str())
            .collect();
        let fatal = !needs.is_empty();
        if fatal {
            tracing::error!(checkpoint = id, %cause, sinks = %needs.join(", "), "the final checkpoint failed; these sinks commit only on a complete checkpoint, so the run fails");
        } else {
            warn!(
                checkpoint = id,
                %cause,
                last_complete = self.completed(),
                "the final checkpoint failed; every sink's output is already written, so the run \
                 ends normally, but a later run continues from the last complete checkpoint"
            );
        }
        let message = format!(
            "final checkpoint {id} failed ({cause}); sink(s) {} commit only on a complete checkpoint",
            needs.join(", ")
        );
        self.publish(|p| p.final_failure = Some((message, fatal)));
    }

    /// Completes checkpoint `id` if every task acknowledged it and every write ended. The
    /// completion's I/O (the final snapshots it includes, the savepoint copy, `_metadata`,
    /// pruning) runs on a thread of its own, so no task waits for storage.
    fn maybe_complete(self: &Arc<Self>, s: &mut Acks, id: u64) {
        let acked = s.acked.get(&id).copied().unwrap_or(0);
        let stand_ins = s.finished.iter().filter(|&&last| last < id).count();
        let writing = s.writing.get(&id).copied().unwrap_or(0);
        if acked + stand_ins < self.tasks
            || writing > 0
            || id <= self.completed()
            || s.failed.contains(&id)
            || s.completing.is_some()
        {
            return;
        }
        s.completing = Some(id);
        s.writing.remove(&id);
        let job = Completion {
            id,
            acked,
            stand_ins,
            handles: s.handles.remove(&id).unwrap_or_default(),
            // The final checkpoint is the last to include them: it takes them, so each is
            // written without another copy.
            finals: match id == s.final_id {
                true => std::mem::take(&mut s.final_states),
                false => s.final_states.clone(),
            },
            started: s.started_ms.get(&id).copied().unwrap_or_else(now_ms),
            savepoint: s.savepoints.remove(&id),
        };
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("checkpoint-complete".into())
            .spawn(move || me.run_completion(job))
            .expect("spawn checkpoint completion thread");
    }

    fn run_completion(self: Arc<Self>, job: Completion) {
        let id = job.id;
        let written = self.write_completion(job);
        let mut s = self.state.lock().unwrap();
        match written {
            Ok((meta, savepoint)) => {
                s.acked.remove(&id);
                s.started_ms.remove(&id);
                s.failed_in_a_row = 0;
                s.settled_at = Some(Instant::now());
                self.completed.fetch_max(id, Ordering::AcqRel);
                self.settled.fetch_max(id, Ordering::AcqRel);
                crate::runtime::metrics::global().checkpoint_completed(
                    id,
                    meta.triggered_ms,
                    meta.completed_ms,
                    meta.state_bytes,
                );
                info!(
                    checkpoint = id,
                    took_ms = meta.completed_ms.saturating_sub(meta.triggered_ms),
                    state_bytes = meta.state_bytes,
                    files = meta.states.len(),
                    savepoint = ?savepoint,
                    "checkpoint complete"
                );
                let is_final = id == s.final_id;
                let path = chk_dir(&self.dir, id).url().to_string();
                self.publish(|p| {
                    p.last_checkpoint = Some(SnapshotInfo {
                        id,
                        path,
                        completed_ms: meta.completed_ms,
                    });
                    if let Some(path) = savepoint {
                        p.last_savepoint = Some(SnapshotInfo {
                            id,
                            path,
                            completed_ms: meta.completed_ms,
                        });
                    }
                    if is_final {
                        p.final_checkpoint = id;
                    }
                });
            }
            Err(e) => self.fail_checkpoint(&mut s, id, e.to_string()),
        }
        drop(s);
        prune(&self.dir, self.completed(), self.retained);
        let mut s = self.state.lock().unwrap();
        s.completing = None;
        // The final checkpoint may have been requested meanwhile.
        let next = s.final_id;
        if next > id {
            self.maybe_complete(&mut s, next);
        }
    }

    /// Writes what completes a checkpoint; `_metadata` last, so its presence means complete.
    fn write_completion(&self, job: Completion) -> std::io::Result<(Metadata, Option<String>)> {
        let id = job.id;
        let dir = chk_dir(&self.dir, id);
        let mut handles = job.handles.clone();
        for (uid, subtask, file) in job.finals {
            // A source that took this checkpoint itself and finished later keeps its own
            // snapshot: what it emitted after the barrier is not in this checkpoint.
            if handles
                .iter()
                .any(|h| h.operator == uid && h.subtask == subtask)
            {
                continue;
            }
            let file = Arc::try_unwrap(file).unwrap_or_else(|shared| (*shared).clone());
            let handle = StateHandle {
                file: state_file_name(&uid, subtask),
                operator: uid,
                subtask,
                length: file.len() as u64,
                xxh3: format::checksum(&file),
            };
            dir.join(&handle.file).put(file)?;
            handles.push(handle);
        }
        handles.sort_by(|a, b| (&a.operator, a.subtask).cmp(&(&b.operator, b.subtask)));
        let completed_ms = now_ms();
        let mut operators = self.shape.operators.clone();
        for (uid, source) in &self.sources {
            if let Some(o) = operators.get_mut(uid) {
                o.source = Some(source.clone());
            }
        }
        let mut meta = Metadata {
            format: METADATA_VERSION,
            id,
            triggered_ms: job.started,
            completed_ms,
            tasks: self.tasks,
            acknowledged: job.acked,
            finished: job.stand_ins,
            savepoint: false,
            max_parallelism: Some(self.shape.max_parallelism),
            state_bytes: handles.iter().map(|h| h.length).sum(),
            operators,
            states: handles,
        };
        // The savepoint copy comes first: a stop-with-savepoint must not see its checkpoint
        // complete while the savepoint is missing.
        let savepoint = match &job.savepoint {
            Some(req) => {
                meta.savepoint = true;
                let path = copy_snapshot(&dir, &req.dir, &meta, completed_ms)?;
                meta.savepoint = false;
                Some(path)
            }
            None => None,
        };
        dir.join("_metadata").put(meta.to_json())?;
        Ok((meta, savepoint))
    }
}

/// What the completion thread needs to complete one checkpoint.
struct Completion {
    id: u64,
    acked: usize,
    stand_ins: usize,
    handles: Vec<StateHandle>,
    finals: Vec<(String, u32, Arc<Vec<u8>>)>,
    started: u64,
    savepoint: Option<SavepointRequest>,
}

#[cfg(test)]
impl Coordinator {
    /// Waits until no completion is being written (tests look at the result right after).
    pub(super) fn settle(&self) {
        while self.state.lock().unwrap().completing.is_some() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
