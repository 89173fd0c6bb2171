//! Aligned checkpoints (Flink's barrier snapshots) for a job running in one process.
//!
//! The coordinator triggers checkpoint `n`; every source task snapshots its position, writes
//! it, and sends a barrier downstream in order with its records. Input gates align barriers;
//! every operator that keeps state snapshots it when the barrier passes, and each task acks
//! once the barrier has gone through its chain. When every task has acked (or finished), the
//! coordinator writes `chk-<n>/_metadata` — from then on the checkpoint is complete and
//! durable — and tasks pass `CheckpointComplete(n)` down their chains, so sinks commit
//! (two-phase commit) and sources commit offsets.
//!
//! Layout in the checkpoint directory: `chk-<n>/<operator uid>-<subtask>.state` per snapshot
//! and `chk-<n>/_metadata` (JSON) when complete. A restarted job restores from the highest
//! complete checkpoint; keyed state is stored by key group, so a restore may use another
//! parallelism (each subtask reads every file of its operator and keeps its key groups).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

/// Checkpointing settings of a run.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    pub interval: Duration,
    pub dir: PathBuf,
    /// Complete checkpoints kept; older ones are deleted.
    pub retained: usize,
}

/// Tracks checkpoints of one run: triggers, acknowledgements, completion and restore.
#[derive(Debug)]
pub struct Coordinator {
    dir: PathBuf,
    retained: usize,
    /// Tasks that must acknowledge every checkpoint.
    tasks: usize,
    triggered: AtomicU64,
    completed: AtomicU64,
    /// Latest checkpoint that completed or failed: the next may start.
    settled: AtomicU64,
    /// Checkpoint this run restored from.
    restored: Option<u64>,
    state: Mutex<Acks>,
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
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn chk_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("chk-{id}"))
}

/// Highest checkpoint in `dir` that has its metadata (complete).
pub fn latest_complete(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let id: u64 = e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok()?;
            e.path().join("_metadata").is_file().then_some(id)
        })
        .max()
}

impl Coordinator {
    /// A coordinator for `tasks` tasks, restoring from the latest complete checkpoint in
    /// `config.dir` if there is one.
    pub fn new(config: &CheckpointConfig, tasks: usize) -> std::io::Result<Coordinator> {
        std::fs::create_dir_all(&config.dir)?;
        let restored = latest_complete(&config.dir);
        if let Some(id) = restored {
            info!(checkpoint = id, dir = %config.dir.display(), "restoring from checkpoint");
            // Incomplete checkpoints after it are garbage from the crashed run.
            for e in std::fs::read_dir(&config.dir)?.flatten() {
                let name = e.file_name();
                let stale = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("chk-"))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n > id);
                if stale {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let base = restored.unwrap_or(0);
        Ok(Coordinator {
            dir: config.dir.clone(),
            retained: config.retained.max(1),
            tasks,
            triggered: AtomicU64::new(base),
            completed: AtomicU64::new(base),
            settled: AtomicU64::new(base),
            restored,
            state: Mutex::new(Acks::default()),
        })
    }

    pub fn restored(&self) -> Option<u64> {
        self.restored
    }

    /// Latest checkpoint sources should inject.
    pub fn pending(&self) -> u64 {
        self.triggered.load(Ordering::Acquire)
    }

    /// Latest complete checkpoint.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    /// Starts the next checkpoint unless one is still in flight; returns its id.
    pub fn trigger(&self) -> Option<u64> {
        let done = self.settled.load(Ordering::Acquire);
        let id = done + 1;
        // One checkpoint at a time: a new one only once the last completed.
        self.triggered
            .compare_exchange(done, id, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        self.state.lock().unwrap().started_ms.insert(id, now_ms());
        debug!(checkpoint = id, "triggered");
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
        let dir = chk_dir(&self.dir, id);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{uid}-{subtask}.state"));
        let tmp = dir.join(format!(".{uid}-{subtask}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, path)
    }

    /// The snapshot of (`uid`, `subtask`) in the restored checkpoint.
    pub fn restored_state(&self, uid: &str, subtask: u32) -> std::io::Result<Option<Vec<u8>>> {
        let Some(id) = self.restored else {
            return Ok(None);
        };
        match std::fs::read(chk_dir(&self.dir, id).join(format!("{uid}-{subtask}.state"))) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every subtask's snapshot of `uid` in the restored checkpoint, with its subtask index
    /// (keyed state is redistributed by key group, whatever the old parallelism was).
    pub fn restored_states(&self, uid: &str) -> std::io::Result<Vec<(u32, Vec<u8>)>> {
        let Some(id) = self.restored else {
            return Ok(Vec::new());
        };
        let prefix = format!("{uid}-");
        let mut out = Vec::new();
        for e in std::fs::read_dir(chk_dir(&self.dir, id))?.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let subtask = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".state"))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(subtask) = subtask {
                out.push((subtask, std::fs::read(e.path())?));
            }
        }
        Ok(out)
    }

    /// A task has taken checkpoint `id` (its barrier went through its whole chain).
    pub fn ack(&self, id: u64) -> std::io::Result<()> {
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
        if let Some((uid, subtask, bytes)) = final_state {
            self.register_final(uid, subtask, bytes);
        }
        let mut s = self.state.lock().unwrap();
        s.finished.push(last_acked);
        let id = self.pending();
        if id > self.completed() {
            self.maybe_complete(&mut s, id)?;
        }
        Ok(())
    }

    /// A snapshot of checkpoint `id` will be written in the background; the checkpoint does
    /// not complete before [`Coordinator::end_write`].
    pub fn begin_write(&self, id: u64) {
        *self.state.lock().unwrap().writing.entry(id).or_insert(0) += 1;
    }

    /// The background write of a snapshot of checkpoint `id` ended.
    pub fn end_write(&self, id: u64, result: std::io::Result<()>) -> std::io::Result<()> {
        let mut s = self.state.lock().unwrap();
        if let Some(n) = s.writing.get_mut(&id) {
            *n -= 1;
        }
        if let Err(e) = result {
            // The checkpoint is abandoned; the next one is triggered once it would have
            // completed, so failing it must also unblock triggering.
            warn!(checkpoint = id, error = %e, "checkpoint failed: a snapshot could not be written");
            s.failed.push(id);
            s.writing.remove(&id);
            s.acked.remove(&id);
            self.settled.fetch_max(id, Ordering::AcqRel);
            return Err(e);
        }
        self.maybe_complete(&mut s, id)
    }

    /// Final snapshot of an operator whose input ended: part of every later checkpoint.
    pub fn register_final(&self, uid: &str, subtask: u32, bytes: Vec<u8>) {
        let mut s = self.state.lock().unwrap();
        s.final_states
            .retain(|(u, t, _)| !(u == uid && *t == subtask));
        s.final_states.push((uid.to_string(), subtask, bytes));
    }

    /// After every task finished: one last checkpoint from the final snapshots, so a run
    /// started later (with more input) continues exactly where this one ended.
    pub fn final_checkpoint(&self) -> std::io::Result<()> {
        let mut s = self.state.lock().unwrap();
        if s.finished.len() < self.tasks {
            return Ok(());
        }
        let id = self.pending().max(self.settled.load(Ordering::Acquire)) + 1;
        self.triggered.store(id, Ordering::Release);
        self.maybe_complete(&mut s, id)
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
        std::fs::create_dir_all(&dir)?;
        for (uid, subtask, bytes) in &s.final_states {
            // A source that took this checkpoint itself and finished later keeps its own
            // snapshot: what it emitted after the barrier is not in this checkpoint.
            if !dir.join(format!("{uid}-{subtask}.state")).exists() {
                self.write_state(id, uid, *subtask, bytes)?;
            }
        }
        let started = s.started_ms.remove(&id).unwrap_or_else(now_ms);
        let meta = serde_json::json!({
            "id": id,
            "triggeredMs": started,
            "completedMs": now_ms(),
            "tasks": self.tasks,
            "acknowledged": acked,
            "finished": stand_ins,
        });
        let tmp = dir.join("._metadata.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&meta).expect("json"))?;
        std::fs::rename(tmp, dir.join("_metadata"))?;
        s.acked.remove(&id);
        self.completed.store(id, Ordering::Release);
        self.settled.fetch_max(id, Ordering::AcqRel);
        info!(
            checkpoint = id,
            took_ms = now_ms().saturating_sub(started),
            "checkpoint complete"
        );
        self.prune(id);
        Ok(())
    }

    /// Deletes complete checkpoints beyond the retained number.
    fn prune(&self, latest: u64) {
        let keep_from = latest.saturating_sub(self.retained as u64 - 1);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let old = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("chk-"))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n < keep_from);
            if old && let Err(err) = std::fs::remove_dir_all(e.path()) {
                warn!(error = %err, "cannot delete an old checkpoint");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> CheckpointConfig {
        let dir = std::env::temp_dir().join(format!("sj-chk-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        CheckpointConfig {
            interval: Duration::from_millis(10),
            dir,
            retained: 2,
        }
    }

    #[test]
    fn a_checkpoint_completes_when_every_task_acked_or_finished() {
        let cfg = config("acks");
        let c = Coordinator::new(&cfg, 3).unwrap();
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
            std::fs::read(cfg.dir.join("chk-1/src-3.state")).unwrap(),
            b"done"
        );
        assert!(cfg.dir.join("chk-1/_metadata").is_file());
        // later checkpoints need the two running tasks only
        assert_eq!(c.trigger(), Some(2));
        c.ack(2).unwrap();
        c.ack(2).unwrap();
        assert_eq!(c.completed(), 2);
        c.trigger();
        c.ack(3).unwrap();
        c.ack(3).unwrap();
        // retained 2: chk-1 is gone
        assert!(!cfg.dir.join("chk-1").exists());
        assert!(cfg.dir.join("chk-2/_metadata").is_file());
    }

    #[test]
    fn a_task_that_acked_and_then_finished_counts_once() {
        let cfg = config("once");
        let c = Coordinator::new(&cfg, 3).unwrap();
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
            std::fs::read(cfg.dir.join("chk-1/src-0.state")).unwrap(),
            b"at-barrier"
        );
        c.trigger();
        c.ack(2).unwrap();
        c.ack(2).unwrap();
        assert_eq!(c.completed(), 2);
        assert_eq!(
            std::fs::read(cfg.dir.join("chk-2/src-0.state")).unwrap(),
            b"finished"
        );
    }

    #[test]
    fn background_writes_hold_completion_and_a_failed_write_abandons_the_checkpoint() {
        let cfg = config("writes");
        let c = Coordinator::new(&cfg, 1).unwrap();
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
        assert!(!cfg.dir.join("chk-2/_metadata").exists());
        assert_eq!(c.trigger(), Some(3), "the next checkpoint may start");
    }

    #[test]
    fn a_restart_restores_the_latest_complete_checkpoint_and_drops_partial_ones() {
        let cfg = config("restore");
        let c = Coordinator::new(&cfg, 1).unwrap();
        c.trigger();
        c.write_state(1, "reduce", 0, b"one").unwrap();
        c.write_state(1, "reduce", 1, b"two").unwrap();
        c.ack(1).unwrap();
        c.trigger();
        c.write_state(2, "reduce", 0, b"partial").unwrap();
        drop(c); // crash before checkpoint 2 completes
        let c = Coordinator::new(&cfg, 1).unwrap();
        assert_eq!(c.restored(), Some(1));
        assert!(!cfg.dir.join("chk-2").exists());
        assert_eq!(c.restored_state("reduce", 1).unwrap().unwrap(), b"two");
        assert_eq!(c.restored_state("reduce", 7).unwrap(), None);
        let mut all = c.restored_states("reduce").unwrap();
        all.sort();
        assert_eq!(all, vec![(0, b"one".to_vec()), (1, b"two".to_vec())]);
        // ids continue after the restored checkpoint
        assert_eq!(c.trigger(), Some(2));
    }
}
