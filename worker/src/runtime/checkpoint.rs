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
//! workers hold a *follower* that forwards their tasks' acks to it over gRPC
//! (`net::coordination`) and learns triggers and completions from it. Every worker writes
//! its snapshots straight into the shared checkpoint directory.
//!
//! Layout: `<dir>[/<run id>]/chk-<n>/<operator uid>-<subtask>.state` per snapshot and
//! `chk-<n>/_metadata` (JSON) when complete. A job restores from the highest complete
//! checkpoint of its run directory, else from `restore_from` (a savepoint, a `chk-<n>`
//! directory, or another run's directory). State is matched to operators by `uid`; keyed
//! state is stored by key group, so a restore may use another parallelism. A savepoint is a
//! checkpoint copied to the savepoint directory when it completes, and never pruned.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

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
}

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

/// The snapshot a run restored from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub id: u64,
    pub dir: Location,
}

/// Savepoint requested for a checkpoint id.
#[derive(Debug, Clone)]
struct SavepointRequest {
    dir: Location,
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
    triggered: AtomicU64,
    completed: AtomicU64,
    stop_at: AtomicU64,
    /// Latest checkpoint that completed or failed: the next may start.
    settled: AtomicU64,
    restored: Option<Restored>,
    state: Mutex<Acks>,
    progress: tokio::sync::watch::Sender<Progress>,
}

#[derive(Debug, Default)]
struct Acks {
    acked: HashMap<u64, usize>,
    /// Per finished task, the last checkpoint it acknowledged itself: it stands in for the
    /// task in later checkpoints only.
    finished: Vec<u64>,
    started_ms: HashMap<u64, u64>,
    /// Final snapshots of finished sources, part of every later checkpoint: a restore must
    /// not read a finished source again.
    final_states: Vec<(String, u32, Vec<u8>)>,
    /// Snapshots still being written in the background, per checkpoint.
    writing: HashMap<u64, usize>,
    /// Checkpoints that can never complete (a write failed).
    failed: Vec<u64>,
    savepoints: HashMap<u64, SavepointRequest>,
    /// Id of the final checkpoint once written.
    final_id: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn chk_dir(dir: &Location, id: u64) -> Location {
    dir.join(&format!("chk-{id}"))
}

/// Highest checkpoint in `dir` that has its metadata (complete).
pub fn latest_complete(dir: &Location) -> std::io::Result<Option<u64>> {
    let (dirs, _) = dir.children()?;
    let mut ids: Vec<u64> = dirs
        .iter()
        .filter_map(|n| n.strip_prefix("chk-")?.parse().ok())
        .collect();
    ids.sort_unstable();
    for id in ids.into_iter().rev() {
        if chk_dir(dir, id).join("_metadata").exists()? {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The complete snapshot at `url`: a snapshot directory (it has `_metadata`) or a
/// directory of checkpoints (its latest complete one).
pub fn resolve_snapshot(url: &str) -> std::io::Result<Restored> {
    let loc = Location::parse(url)?;
    if let Some(text) = loc.join("_metadata").get()? {
        let id = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("id")?.as_u64())
            .ok_or_else(|| {
                std::io::Error::other(format!("{url}/_metadata: no checkpoint id in it"))
            })?;
        return Ok(Restored { id, dir: loc });
    }
    match latest_complete(&loc)? {
        Some(id) => Ok(Restored {
            id,
            dir: chk_dir(&loc, id),
        }),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{url}: neither a complete checkpoint or savepoint (no _metadata) nor a \
                 directory holding one"
            ),
        )),
    }
}

/// The state files of a complete snapshot, as its metadata lists them (older snapshots
/// without the list: what the directory holds).
fn state_files(dir: &Location) -> std::io::Result<Vec<String>> {
    let listed = dir
        .join("_metadata")
        .get()?
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|m| {
            m.get("states")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| Some(s.get("file")?.as_str()?.to_string()))
                    .collect::<Vec<_>>()
            })
        });
    match listed {
        Some(files) => Ok(files),
        None => Ok(dir
            .children()?
            .1
            .into_iter()
            .filter(|n| n.ends_with(".state"))
            .collect()),
    }
}

/// Operator uids with state in a snapshot directory.
fn uids_in(dir: &Location) -> std::io::Result<HashSet<String>> {
    let files = state_files(dir)?;
    Ok(files
        .iter()
        .filter_map(|n| Some(n.strip_suffix(".state")?.rsplit_once('-')?.0.to_string()))
        .collect())
}

impl Coordinator {
    /// The job's (leader) coordinator for `tasks` tasks. Restores from the latest complete
    /// checkpoint of the run directory, else from `config.restore_from`. `uids` are the
    /// job's operators: state of any other operator in the snapshot is an error unless
    /// `allow_non_restored_state`.
    pub fn new(
        config: &CheckpointConfig,
        tasks: usize,
        uids: &[&str],
    ) -> std::io::Result<Coordinator> {
        let dir = config.run_dir()?;
        let own = latest_complete(&dir)?;
        if let Some(id) = own {
            // Incomplete checkpoints after it are garbage from the crashed run.
            for name in dir.children()?.0 {
                let stale = name
                    .strip_prefix("chk-")
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n > id);
                if stale {
                    let _ = dir.join(&name).delete_all();
                }
            }
        }
        let restored = match (own, &config.restore_from) {
            (Some(id), _) => Some(Restored {
                id,
                dir: chk_dir(&dir, id),
            }),
            (None, Some(from)) => Some(resolve_snapshot(from)?),
            (None, None) => None,
        };
        if let Some(r) = &restored {
            info!(checkpoint = r.id, dir = r.dir.url(), "restoring");
            let known: HashSet<&str> = uids.iter().copied().collect();
            let mut unknown: Vec<String> = uids_in(&r.dir)?
                .into_iter()
                .filter(|u| !known.contains(u.as_str()))
                .collect();
            unknown.sort();
            if !unknown.is_empty() {
                if !config.allow_non_restored_state {
                    return Err(std::io::Error::other(format!(
                        "{} holds state of operator(s) {} that this job does not have; \
                         give them back their uid, or set allowNonRestoredState to drop it",
                        r.dir.url(),
                        unknown.join(", ")
                    )));
                }
                warn!(operators = %unknown.join(", "), "dropping state of operators the job no longer has");
            }
        }
        Self::with_role(config, tasks, restored, Role::Leader)
    }

    /// A follower (a worker other than the leader): it restores what the leader chose and
    /// sends `reports` to it.
    pub fn follower(
        config: &CheckpointConfig,
        tasks: usize,
        restored: Option<Restored>,
        reports: tokio::sync::mpsc::UnboundedSender<Report>,
    ) -> std::io::Result<Coordinator> {
        Self::with_role(config, tasks, restored, Role::Follower(reports))
    }

    fn with_role(
        config: &CheckpointConfig,
        tasks: usize,
        restored: Option<Restored>,
        role: Role,
    ) -> std::io::Result<Coordinator> {
        let base = restored.as_ref().map_or(0, |r| r.id);
        Ok(Coordinator {
            role,
            dir: config.run_dir()?,
            savepoint_dir: config.savepoint_dir()?,
            retained: config.retained.max(1),
            tasks,
            triggered: AtomicU64::new(base),
            completed: AtomicU64::new(base),
            stop_at: AtomicU64::new(0),
            settled: AtomicU64::new(base),
            restored,
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

    /// Watches what the coordinator decides (followers, control clients).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// A follower learns the leader's decisions.
    /// The complete final checkpoint (0 until every task finished and it is written).
    pub fn final_checkpoint_id(&self) -> u64 {
        self.progress.borrow().final_checkpoint
    }

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
        if s.final_id != 0 {
            return None;
        }
        // One checkpoint at a time: a new one only once the last completed.
        if self.triggered.load(Ordering::Acquire) != done {
            return None;
        }
        s.started_ms.insert(id, now_ms());
        let is_savepoint = savepoint.is_some();
        if let Some(sp) = savepoint {
            s.savepoints.insert(id, sp);
        }
        if stop {
            self.stop_at.store(id, Ordering::Release);
        }
        self.triggered.store(id, Ordering::Release);
        drop(s);
        self.publish(|_| {});
        debug!(checkpoint = id, savepoint = is_savepoint, stop, "triggered");
        Some(id)
    }

    /// Writes one snapshot of checkpoint `id` (atomically: a crash never leaves half a file).
    pub fn write_state(
        &self,
        id: u64,
        uid: &str,
        subtask: u32,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        chk_dir(&self.dir, id)
            .join(&format!("{uid}-{subtask}.state"))
            .put(bytes.to_vec())
    }

    /// The snapshot of (`uid`, `subtask`) in the restored checkpoint.
    pub fn restored_state(&self, uid: &str, subtask: u32) -> std::io::Result<Option<Vec<u8>>> {
        let Some(r) = &self.restored else {
            return Ok(None);
        };
        r.dir.join(&format!("{uid}-{subtask}.state")).get()
    }

    /// Every subtask's snapshot of `uid` in the restored checkpoint, with its subtask index
    /// (keyed state is redistributed by key group, whatever the old parallelism was).
    pub fn restored_states(&self, uid: &str) -> std::io::Result<Vec<(u32, Vec<u8>)>> {
        let Some(r) = &self.restored else {
            return Ok(Vec::new());
        };
        let prefix = format!("{uid}-");
        let mut out = Vec::new();
        for name in state_files(&r.dir)? {
            let subtask = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".state"))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(subtask) = subtask
                && let Some(bytes) = r.dir.join(&name).get()?
            {
                out.push((subtask, bytes));
            }
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
    pub fn apply(&self, report: Report) -> std::io::Result<()> {
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
        }
    }

    /// A task has taken checkpoint `id` (its barrier went through its whole chain).
    pub fn ack(&self, id: u64) -> std::io::Result<()> {
        if self.forward(|| Report::Ack(id))? {
            return Ok(());
        }
        let mut s = self.state.lock().unwrap();
        *s.acked.entry(id).or_insert(0) += 1;
        self.maybe_complete(&mut s, id)
    }

    /// A task finished: it acknowledges every later checkpoint by not taking part. A source
    /// passes its final position, which every later checkpoint then includes.
    pub fn task_finished(
        &self,
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
            self.maybe_complete(&mut s, id)?;
        }
        // The last task: write the final checkpoint now; the finished tasks wait for it.
        self.write_final(&mut s)
    }

    /// A snapshot of checkpoint `id` will be written in the background; the checkpoint does
    /// not complete before [`Coordinator::end_write`].
    pub fn begin_write(&self, id: u64) {
        if self.forward(|| Report::BeginWrite(id)).unwrap_or(true) {
            return;
        }
        *self.state.lock().unwrap().writing.entry(id).or_insert(0) += 1;
    }

    /// The background write of a snapshot of checkpoint `id` ended.
    pub fn end_write(&self, id: u64, result: std::io::Result<()>) -> std::io::Result<()> {
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
        if let Some(n) = s.writing.get_mut(&id) {
            *n -= 1;
        }
        if let Some(Err(e)) = result {
            // The checkpoint is abandoned; the next one is triggered once it would have
            // completed, so failing it must also unblock triggering.
            warn!(checkpoint = id, error = %e, "checkpoint failed: a snapshot could not be written");
            s.failed.push(id);
            s.writing.remove(&id);
            s.acked.remove(&id);
            self.settled.fetch_max(id, Ordering::AcqRel);
            let cause = e.to_string();
            self.publish(|p| {
                p.failed.push((id, cause));
                if p.failed.len() > 16 {
                    p.failed.remove(0);
                }
            });
            return Err(e);
        }
        self.maybe_complete(&mut s, id)
    }

    /// Final snapshot of an operator whose input ended: part of every later checkpoint.
    pub fn register_final(&self, uid: &str, subtask: u32, bytes: Vec<u8>) {
        let mut bytes = Some(bytes);
        if self
            .forward(|| Report::Final(uid.to_string(), subtask, bytes.take().unwrap_or_default()))
            .unwrap_or(true)
        {
            return;
        }
        let mut s = self.state.lock().unwrap();
        s.final_states
            .retain(|(u, t, _)| !(u == uid && *t == subtask));
        s.final_states
            .push((uid.to_string(), subtask, bytes.unwrap_or_default()));
    }

    /// After every task finished: one last checkpoint from the final snapshots, so a run
    /// started later (with more input) continues exactly where this one ended. Written when
    /// the last task reports; finished tasks wait for it before they end.
    fn write_final(&self, s: &mut Acks) -> std::io::Result<()> {
        if !self.is_leader() || s.final_id != 0 || s.finished.len() < self.tasks {
            return Ok(());
        }
        let id = self.pending().max(self.settled.load(Ordering::Acquire)) + 1;
        self.triggered.store(id, Ordering::Release);
        self.maybe_complete(s, id)?;
        s.final_id = id;
        self.publish(|p| p.final_checkpoint = id);
        Ok(())
    }

    fn maybe_complete(&self, s: &mut Acks, id: u64) -> std::io::Result<()> {
        let acked = s.acked.get(&id).copied().unwrap_or(0);
        let stand_ins = s.finished.iter().filter(|&&last| last < id).count();
        let writing = s.writing.get(&id).copied().unwrap_or(0);
        if acked + stand_ins < self.tasks
            || writing > 0
            || id <= self.completed()
            || s.failed.contains(&id)
        {
            return Ok(());
        }
        s.writing.remove(&id);
        // Only with at least one snapshot is there something to restore.
        let dir = chk_dir(&self.dir, id);
        for (uid, subtask, bytes) in &s.final_states {
            // A source that took this checkpoint itself and finished later keeps its own
            // snapshot: what it emitted after the barrier is not in this checkpoint.
            if !dir.join(&format!("{uid}-{subtask}.state")).exists()? {
                self.write_state(id, uid, *subtask, bytes)?;
            }
        }
        // Every state handle of the checkpoint, so a restore reads exactly these.
        let states: Vec<serde_json::Value> = dir
            .children()?
            .1
            .into_iter()
            .filter_map(|file| {
                let (uid, subtask) = file.strip_suffix(".state")?.rsplit_once('-')?;
                let subtask: u32 = subtask.parse().ok()?;
                Some(serde_json::json!({"operator": uid, "subtask": subtask, "file": file}))
            })
            .collect();
        let started = s.started_ms.remove(&id).unwrap_or_else(now_ms);
        let completed_ms = now_ms();
        let meta = |savepoint: bool| {
            serde_json::to_vec_pretty(&serde_json::json!({
                "id": id,
                "triggeredMs": started,
                "completedMs": completed_ms,
                "tasks": self.tasks,
                "acknowledged": acked,
                "finished": stand_ins,
                "savepoint": savepoint,
                "states": states,
            }))
            .expect("json")
        };
        dir.join("_metadata").put(meta(false))?;
        let savepoint = match s.savepoints.remove(&id) {
            Some(req) => Some(copy_snapshot(&dir, &req.dir, id, &meta(true))?),
            None => None,
        };
        s.acked.remove(&id);
        self.completed.store(id, Ordering::Release);
        self.settled.fetch_max(id, Ordering::AcqRel);
        info!(
            checkpoint = id,
            took_ms = completed_ms.saturating_sub(started),
            savepoint = ?savepoint,
            "checkpoint complete"
        );
        self.publish(|p| {
            p.last_checkpoint = Some(SnapshotInfo {
                id,
                path: dir.url().to_string(),
                completed_ms,
            });
            if let Some(path) = savepoint {
                p.last_savepoint = Some(SnapshotInfo {
                    id,
                    path,
                    completed_ms,
                });
            }
        });
        self.prune(id);
        Ok(())
    }

    /// Deletes complete checkpoints beyond the retained number.
    fn prune(&self, latest: u64) {
        let keep_from = latest.saturating_sub(self.retained as u64 - 1);
        let Ok((dirs, _)) = self.dir.children() else {
            return;
        };
        for name in dirs {
            let old = name
                .strip_prefix("chk-")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n < keep_from);
            if old && let Err(err) = self.dir.join(&name).delete_all() {
                warn!(error = %err, "cannot delete an old checkpoint");
            }
        }
    }
}

/// Copies a complete checkpoint into `<to>/savepoint-<id>-<ms>` and returns where; the
/// metadata goes last, so a half-copied savepoint is never taken for a complete one.
fn copy_snapshot(from: &Location, to: &Location, id: u64, meta: &[u8]) -> std::io::Result<String> {
    let dest = to.join(&format!("savepoint-{id}-{}", now_ms()));
    for name in state_files(from)? {
        if let Some(bytes) = from.join(&name).get()? {
            dest.join(&name).put(bytes)?;
        }
    }
    dest.join("_metadata").put(meta.to_vec())?;
    Ok(dest.url().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> CheckpointConfig {
        let dir = std::env::temp_dir().join(format!("sj-chk-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        CheckpointConfig::new(Duration::from_millis(10), dir.display().to_string(), 2)
    }

    /// A file under the checkpoint directory.
    fn at(cfg: &CheckpointConfig, rel: &str) -> std::path::PathBuf {
        std::path::Path::new(&cfg.dir).join(rel)
    }

    #[test]
    fn a_checkpoint_completes_when_every_task_acked_or_finished() {
        let cfg = config("acks");
        let c = Coordinator::new(&cfg, 3, &[]).unwrap();
        assert_eq!(c.trigger(), Some(1));
        assert_eq!(c.trigger(), None, "one at a time");
        c.write_state(1, "op", 0, b"a").unwrap();
        c.ack(1).unwrap();
        c.ack(1).unwrap();
        assert_eq!(c.completed(), 0);
        c.task_finished(0, Some(("src", 3, b"done".to_vec())))
            .unwrap();
        assert_eq!(c.completed(), 1);
        // a finished source's final position is part of every later checkpoint
        assert_eq!(
            std::fs::read(at(&cfg, "chk-1/src-3.state")).unwrap(),
            b"done"
        );
        assert!(at(&cfg, "chk-1/_metadata").is_file());
        // later checkpoints need the two running tasks only
        assert_eq!(c.trigger(), Some(2));
        c.ack(2).unwrap();
        c.ack(2).unwrap();
        assert_eq!(c.completed(), 2);
        c.trigger();
        c.ack(3).unwrap();
        c.ack(3).unwrap();
        // retained 2: chk-1 is gone
        assert!(!at(&cfg, "chk-1").exists());
        assert!(at(&cfg, "chk-2/_metadata").is_file());
    }

    #[test]
    fn a_task_that_acked_and_then_finished_counts_once() {
        let cfg = config("once");
        let c = Coordinator::new(&cfg, 3, &[]).unwrap();
        c.trigger();
        c.write_state(1, "src", 0, b"at-barrier").unwrap();
        c.ack(1).unwrap();
        // the same task finishes before the others acked checkpoint 1
        c.task_finished(1, Some(("src", 0, b"finished".to_vec())))
            .unwrap();
        c.ack(1).unwrap();
        assert_eq!(c.completed(), 0, "two of three tasks took checkpoint 1");
        c.ack(1).unwrap();
        assert_eq!(c.completed(), 1);
        // its own snapshot of checkpoint 1 is kept, not replaced by the final one
        assert_eq!(
            std::fs::read(at(&cfg, "chk-1/src-0.state")).unwrap(),
            b"at-barrier"
        );
        c.trigger();
        c.ack(2).unwrap();
        c.ack(2).unwrap();
        assert_eq!(c.completed(), 2);
        assert_eq!(
            std::fs::read(at(&cfg, "chk-2/src-0.state")).unwrap(),
            b"finished"
        );
    }

    #[test]
    fn background_writes_hold_completion_and_a_failed_write_abandons_the_checkpoint() {
        let cfg = config("writes");
        let c = Coordinator::new(&cfg, 1, &["reduce"]).unwrap();
        c.trigger();
        c.begin_write(1);
        c.ack(1).unwrap();
        assert_eq!(c.completed(), 0, "a snapshot is still being written");
        c.end_write(1, Ok(())).unwrap();
        assert_eq!(c.completed(), 1);
        c.trigger();
        c.begin_write(2);
        c.ack(2).unwrap();
        assert!(
            c.end_write(2, Err(std::io::Error::other("disk full")))
                .is_err()
        );
        assert_eq!(c.completed(), 1, "checkpoint 2 never completes");
        assert!(!at(&cfg, "chk-2/_metadata").exists());
        assert_eq!(c.trigger(), Some(3), "the next checkpoint may start");
    }

    #[test]
    fn a_restart_restores_the_latest_complete_checkpoint_and_drops_partial_ones() {
        let cfg = config("restore");
        let c = Coordinator::new(&cfg, 1, &["reduce"]).unwrap();
        c.trigger();
        c.write_state(1, "reduce", 0, b"one").unwrap();
        c.write_state(1, "reduce", 1, b"two").unwrap();
        c.ack(1).unwrap();
        c.trigger();
        c.write_state(2, "reduce", 0, b"partial").unwrap();
        drop(c); // crash before checkpoint 2 completes
        let c = Coordinator::new(&cfg, 1, &["reduce"]).unwrap();
        assert_eq!(c.restored(), Some(1));
        assert!(!at(&cfg, "chk-2").exists());
        assert_eq!(c.restored_state("reduce", 1).unwrap().unwrap(), b"two");
        assert_eq!(c.restored_state("reduce", 7).unwrap(), None);
        let mut all = c.restored_states("reduce").unwrap();
        all.sort();
        assert_eq!(all, vec![(0, b"one".to_vec()), (1, b"two".to_vec())]);
        // ids continue after the restored checkpoint
        assert_eq!(c.trigger(), Some(2));
    }

    #[test]
    fn a_savepoint_is_copied_out_and_another_run_restores_from_it() {
        let cfg = config("savepoint");
        let c = Coordinator::new(&cfg, 1, &["count"]).unwrap();
        assert_eq!(c.trigger_savepoint(true, None), Some(1));
        assert_eq!(c.stop_at(), 1);
        assert_eq!(c.trigger(), None, "nothing is triggered after a stop");
        c.write_state(1, "count", 0, b"state").unwrap();
        c.ack(1).unwrap();
        let sp = c.progress().last_savepoint.expect("savepoint recorded");
        assert_eq!(sp.id, 1);
        assert!(
            sp.path
                .starts_with(&at(&cfg, "savepoints").display().to_string())
        );
        assert_eq!(
            std::fs::read(std::path::Path::new(&sp.path).join("count-0.state")).unwrap(),
            b"state"
        );
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(std::path::Path::new(&sp.path).join("_metadata")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["savepoint"], true);
        assert_eq!(
            meta["states"],
            serde_json::json!([{"operator": "count", "subtask": 0, "file": "count-0.state"}])
        );
        // A new deployment (another run directory) starts from the savepoint.
        let mut next = cfg.clone();
        next.run_id = Some("run-2".into());
        next.restore_from = Some(sp.path.clone());
        let c2 = Coordinator::new(&next, 1, &["count"]).unwrap();
        assert_eq!(c2.restored(), Some(1));
        assert_eq!(c2.restored_state("count", 0).unwrap().unwrap(), b"state");
        assert_eq!(c2.trigger(), Some(2));
        c2.ack(2).unwrap();
        assert!(at(&cfg, "run-2/chk-2/_metadata").is_file());
        // Restarted again, the run's own checkpoint wins over the savepoint.
        let c3 = Coordinator::new(&next, 1, &["count"]).unwrap();
        assert_eq!(c3.restored(), Some(2));
        // A run directory as the source means its latest complete checkpoint.
        let mut third = cfg.clone();
        third.run_id = Some("run-3".into());
        third.restore_from = Some(at(&cfg, "run-2").display().to_string());
        let c4 = Coordinator::new(&third, 1, &["count"]).unwrap();
        assert_eq!(
            c4.restored_snapshot().unwrap().dir.url(),
            at(&cfg, "run-2/chk-2").display().to_string()
        );
    }

    #[test]
    fn state_of_an_operator_the_job_lost_is_refused_unless_allowed() {
        let cfg = config("nonrestored");
        let c = Coordinator::new(&cfg, 1, &["count", "old-filter"]).unwrap();
        c.trigger();
        c.write_state(1, "count", 0, b"c").unwrap();
        c.write_state(1, "old-filter", 0, b"f").unwrap();
        c.ack(1).unwrap();
        let err = Coordinator::new(&cfg, 1, &["count"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("state of operator(s) old-filter that this job does not have"),
            "{err}"
        );
        let mut allow = cfg.clone();
        allow.allow_non_restored_state = true;
        assert_eq!(
            Coordinator::new(&allow, 1, &["count"]).unwrap().restored(),
            Some(1)
        );
        let mut missing = cfg.clone();
        missing.run_id = Some("empty".into());
        missing.restore_from = Some(at(&cfg, "nowhere").display().to_string());
        let err = Coordinator::new(&missing, 1, &["count"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("nowhere: neither a complete checkpoint"),
            "{err}"
        );
    }

    #[test]
    fn a_follower_forwards_its_tasks_reports_and_learns_the_leaders_decisions() {
        let cfg = config("follower");
        let leader = Coordinator::new(&cfg, 2, &[]).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let follower = Coordinator::follower(&cfg, 2, None, tx).unwrap();
        assert_eq!(follower.trigger(), None, "only the leader triggers");
        leader.trigger();
        follower.observe(&leader.progress());
        assert_eq!(follower.pending(), 1);
        leader.ack(1).unwrap();
        follower.begin_write(1);
        follower.ack(1).unwrap();
        follower.end_write(1, Ok(())).unwrap();
        follower
            .task_finished(1, Some(("src", 1, b"end".to_vec())))
            .unwrap();
        let mut reports = Vec::new();
        while let Ok(r) = rx.try_recv() {
            reports.push(r);
        }
        assert_eq!(
            reports,
            vec![
                Report::BeginWrite(1),
                Report::Ack(1),
                Report::EndWrite(1, None),
                Report::Finished {
                    last_acked: 1,
                    final_state: Some(("src".into(), 1, b"end".to_vec()))
                },
            ]
        );
        for r in reports {
            leader.apply(r).unwrap();
        }
        assert_eq!(leader.completed(), 1);
        follower.observe(&leader.progress());
        assert_eq!(follower.completed(), 1);
    }
}
