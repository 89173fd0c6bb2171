//! What a running job measures about itself: per-task record counts and time shares,
//! checkpoints, restarts, failures. One registry per process (a worker runs one job).
//!
//! Recording is cheap by construction: each task owns its [`TaskMetrics`] (atomics written by
//! that task's thread only, once per batch, never under a lock); the scrape reads them.
//! Code deep in a chain (routers, channel sends) reaches its task's metrics through a
//! thread-local set when the task starts, also looked up once per batch.

mod encode;
mod exchange;
pub mod kafka;
mod summary;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

use streamjob_crds::plan::PhysicalPlan;

pub use encode::render;
pub use exchange::{ChannelMetrics, Direction};
pub use summary::{JobSummary, Rates, Summary, summary};

use crate::runtime::checkpoint::now_ms;
use crate::runtime::context::SubtaskContext;
use crate::runtime::time::MAX_WATERMARK;

/// No watermark has reached the task yet.
pub const NO_WATERMARK: i64 = i64::MIN;

/// Checkpoints and exceptions kept for the job page.
const HISTORY: usize = 20;

/// The process's registry.
pub fn global() -> &'static JobMetrics {
    static GLOBAL: LazyLock<JobMetrics> = LazyLock::new(JobMetrics::default);
    &GLOBAL
}

/// Counters of one subtask (one chain instance). Written by its task thread only.
#[derive(Debug)]
pub struct TaskMetrics {
    /// Name of the operator at the head of the chain (its step name).
    pub operator: String,
    pub subtask: u32,
    records_in: AtomicU64,
    records_out: AtomicU64,
    idle_ns: AtomicU64,
    backpressured_ns: AtomicU64,
    watermark: AtomicI64,
    /// Nanoseconds since the registry's start when the task (last) started, and when it
    /// ended (0: still running).
    started_ns: AtomicU64,
    ended_ns: AtomicU64,
    /// Busy time of earlier runs of this subtask (before a restart).
    earlier_ns: AtomicU64,
    /// Bytes a source read from its input (a file's or socket's bytes, Kafka keys and
    /// payloads); 0 for other tasks.
    source_bytes: AtomicU64,
    /// Bytes a sink wrote to its output (a file's bytes, Kafka keys and payloads).
    sink_bytes: AtomicU64,
    /// Size of a bounded source's input, bytes or records (0: unknown or unbounded).
    source_total_bytes: AtomicU64,
    source_total_records: AtomicU64,
    /// Batches waiting in the task's input channels, sampled by its input gate.
    queued_batches: AtomicU64,
    /// Barrier alignment at the input gate: count, total and last time.
    alignments: AtomicU64,
    alignment_total_ns: AtomicU64,
    alignment_last_ns: AtomicU64,
}

/// Adds to a counter only one thread writes: a plain load and store, no locked
/// read-modify-write.
#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl TaskMetrics {
    fn new(operator: &str, subtask: u32) -> Self {
        TaskMetrics {
            operator: operator.to_string(),
            subtask,
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            idle_ns: AtomicU64::new(0),
            backpressured_ns: AtomicU64::new(0),
            watermark: AtomicI64::new(NO_WATERMARK),
            started_ns: AtomicU64::new(0),
            ended_ns: AtomicU64::new(0),
            earlier_ns: AtomicU64::new(0),
            source_bytes: AtomicU64::new(0),
            sink_bytes: AtomicU64::new(0),
            source_total_bytes: AtomicU64::new(0),
            source_total_records: AtomicU64::new(0),
            queued_batches: AtomicU64::new(0),
            alignments: AtomicU64::new(0),
            alignment_total_ns: AtomicU64::new(0),
            alignment_last_ns: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn records_in(&self, n: u64) {
        bump(&self.records_in, n);
    }

    #[inline]
    pub fn records_out(&self, n: u64) {
        bump(&self.records_out, n);
    }

    pub fn idle(&self, d: Duration) {
        bump(&self.idle_ns, d.as_nanos() as u64);
    }

    pub fn backpressured(&self, d: Duration) {
        bump(&self.backpressured_ns, d.as_nanos() as u64);
    }

    /// Counts the time until the returned guard drops as idle (waiting for input).
    pub fn idle_scope(&self) -> IdleScope<'_> {
        IdleScope(self, Instant::now())
    }

    pub fn watermark(&self, w: i64) {
        self.watermark.store(w, Ordering::Relaxed);
    }

    /// A bounded source's input size (bytes and/or records), for progress and its ETA.
    pub fn source_total(&self, bytes: Option<u64>, records: Option<u64>) {
        if let Some(b) = bytes {
            self.source_total_bytes.store(b, Ordering::Relaxed);
        }
        if let Some(r) = records {
            self.source_total_records.store(r, Ordering::Relaxed);
        }
    }

    fn snapshot(&self, now_ns: u64, wall_ms: u64) -> TaskSnapshot {
        let started = self.started_ns.load(Ordering::Relaxed);
        let ended = self.ended_ns.load(Ordering::Relaxed);
        let alive = match ended {
            0 => now_ns.saturating_sub(started),
            e => e.saturating_sub(started),
        } + self.earlier_ns.load(Ordering::Relaxed);
        let idle = self.idle_ns.load(Ordering::Relaxed);
        let backpressured = self.backpressured_ns.load(Ordering::Relaxed);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let nonzero = |v: u64| (v != 0).then_some(v);
        let watermark = match self.watermark.load(Ordering::Relaxed) {
            NO_WATERMARK => None,
            w => Some(w),
        };
        let source_bytes = load(&self.source_bytes);
        TaskSnapshot {
            operator: self.operator.clone(),
            subtask: self.subtask,
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            busy_seconds: alive.saturating_sub(idle + backpressured) as f64 / 1e9,
            idle_seconds: idle as f64 / 1e9,
            backpressured_seconds: backpressured as f64 / 1e9,
            watermark,
            // The end of a bounded input moves event time to the end of time: no lag then.
            event_time_lag_seconds: watermark
                .filter(|&w| w < MAX_WATERMARK)
                .map(|w| (wall_ms as i64).saturating_sub(w) as f64 / 1e3),
            running: started != 0 && ended == 0,
            // Exchange bytes are added by the registry, which knows the channels.
            bytes_in: source_bytes,
            bytes_out: load(&self.sink_bytes),
            source_bytes_read: source_bytes,
            source_total_bytes: nonzero(load(&self.source_total_bytes)),
            source_total_records: nonzero(load(&self.source_total_records)),
            queued_batches: load(&self.queued_batches),
            alignments: load(&self.alignments),
            alignment_seconds: load(&self.alignment_total_ns) as f64 / 1e9,
            alignment_last_seconds: load(&self.alignment_last_ns) as f64 / 1e9,
        }
    }
}

/// A point-in-time copy of a task's counters.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TaskSnapshot {
    pub operator: String,
    pub subtask: u32,
    pub records_in: u64,
    pub records_out: u64,
    pub busy_seconds: f64,
    pub idle_seconds: f64,
    pub backpressured_seconds: f64,
    pub watermark: Option<i64>,
    /// Wall clock minus the input watermark (None without a watermark, or at the end of a
    /// bounded input).
    #[serde(default)]
    pub event_time_lag_seconds: Option<f64>,
    pub running: bool,
    /// Bytes into the subtask: read by its source, plus received over the exchange from
    /// other workers. Records handed over in-process (chained operators, local channels)
    /// are moved, not serialized, and count no bytes.
    #[serde(default)]
    pub bytes_in: u64,
    /// Bytes out of the subtask: written by its sink, plus sent over the exchange to other
    /// workers (encoded batches).
    #[serde(default)]
    pub bytes_out: u64,
    #[serde(default)]
    pub source_bytes_read: u64,
    #[serde(default)]
    pub source_total_bytes: Option<u64>,
    #[serde(default)]
    pub source_total_records: Option<u64>,
    #[serde(default)]
    pub queued_batches: u64,
    #[serde(default)]
    pub alignments: u64,
    #[serde(default)]
    pub alignment_seconds: f64,
    #[serde(default)]
    pub alignment_last_seconds: f64,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<TaskMetrics>>> = const { RefCell::new(None) };
}

/// Runs `f` on the metrics of the task running on this thread, if any.
#[inline]
fn with_current(f: impl FnOnce(&TaskMetrics)) {
    CURRENT.with(|c| {
        if let Some(m) = &*c.borrow() {
            f(m)
        }
    });
}

/// A batch of `n` records left this thread's task (a router sent it, or a sink wrote it).
#[inline]
pub fn records_out(n: u64) {
    with_current(|m| m.records_out(n));
}

/// This thread's source read `n` bytes of its input (called per batch).
#[inline]
pub fn source_read(n: u64) {
    with_current(|m| bump(&m.source_bytes, n));
}

/// This thread's sink wrote `n` bytes to its output (called per batch or flush).
#[inline]
pub fn sink_wrote(n: u64) {
    if n > 0 {
        with_current(|m| bump(&m.sink_bytes, n));
    }
}

/// This thread's source learned the size of its bounded input.
pub fn source_total(bytes: Option<u64>, records: Option<u64>) {
    with_current(|m| m.source_total(bytes, records));
}

/// `n` batches wait in this thread's task's input channels (sampled by the input gate).
#[inline]
pub fn queued(n: usize) {
    with_current(|m| m.queued_batches.store(n as u64, Ordering::Relaxed));
}

/// This thread's input gate aligned a checkpoint barrier; its inputs were blocked for `d`.
pub fn aligned(d: Duration) {
    with_current(|m| {
        let ns = d.as_nanos() as u64;
        bump(&m.alignments, 1);
        bump(&m.alignment_total_ns, ns);
        m.alignment_last_ns.store(ns, Ordering::Relaxed);
    });
}

/// This thread's task waited `d` for room downstream.
pub fn backpressured(d: Duration) {
    with_current(|m| m.backpressured(d));
}

/// Time waiting for input, counted when dropped.
pub struct IdleScope<'a>(&'a TaskMetrics, Instant);

impl Drop for IdleScope<'_> {
    fn drop(&mut self) {
        self.0.idle(self.1.elapsed());
    }
}

/// Time this thread's task waits for room downstream, counted when dropped. Only taken when
/// a channel is full, so the fast path costs nothing.
pub struct BackpressureScope(Instant);

impl BackpressureScope {
    pub fn start() -> Self {
        BackpressureScope(Instant::now())
    }
}

impl Drop for BackpressureScope {
    fn drop(&mut self) {
        backpressured(self.0.elapsed());
    }
}

/// The task running on this thread: its metrics, registered for the scrape; the thread's
/// current task until dropped.
pub struct TaskScope(Arc<TaskMetrics>);

impl std::ops::Deref for TaskScope {
    type Target = TaskMetrics;
    fn deref(&self) -> &TaskMetrics {
        &self.0
    }
}

impl Drop for TaskScope {
    fn drop(&mut self) {
        self.0
            .ended_ns
            .store(global().now_ns().max(1), Ordering::Relaxed);
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

/// Whether tasks record metrics: `STREAMJOB_METRICS=off` turns it off, to measure what
/// recording costs (the word count benchmark); nothing else should.
fn recording() -> bool {
    static ON: LazyLock<bool> =
        LazyLock::new(|| std::env::var("STREAMJOB_METRICS").map_or(true, |v| v != "off"));
    *ON
}

/// Registers the task of `ctx` (the head of its chain) and makes it this thread's task.
/// With recording off, the task counts into a private set nobody reads, and code deeper in
/// the chain finds no current task (its hooks do nothing).
pub fn enter_task(ctx: &SubtaskContext) -> TaskScope {
    if !recording() {
        return TaskScope(Arc::new(TaskMetrics::new(&ctx.operator, ctx.subtask)));
    }
    let m = global().task(&ctx.operator, ctx.subtask);
    CURRENT.with(|c| *c.borrow_mut() = Some(m.clone()));
    TaskScope(m)
}

/// One checkpoint as the job page lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckpointRecord {
    pub id: u64,
    /// "in progress", "completed" or "failed".
    pub status: &'static str,
    pub triggered_ms: u64,
    pub duration_ms: Option<u64>,
    pub state_bytes: Option<u64>,
    pub cause: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct CheckpointCounts {
    pub triggered: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub last_duration_ms: AtomicU64,
    pub last_size_bytes: AtomicU64,
    pub last_completed_id: AtomicU64,
    pub last_completed_ms: AtomicU64,
}

/// A failure the job page shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exception {
    pub time_ms: u64,
    pub message: String,
}

/// What the page knows about the job's shape and where it runs.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub plan: PhysicalPlan,
    /// Slots per worker (None: every subtask in this process).
    pub slots: Option<u32>,
    pub worker: u32,
}

/// Everything one process measures about its job.
#[derive(Debug)]
pub struct JobMetrics {
    start: Instant,
    started_ms: u64,
    tasks: Mutex<Vec<Arc<TaskMetrics>>>,
    channels: Mutex<Vec<Arc<ChannelMetrics>>>,
    layout: RwLock<Option<Layout>>,
    pub(crate) checkpoints: CheckpointCounts,
    history: Mutex<VecDeque<CheckpointRecord>>,
    restarts: AtomicU64,
    exceptions: Mutex<VecDeque<Exception>>,
    on_error: Mutex<Option<(Arc<AtomicU64>, Arc<AtomicU64>)>>,
    /// 0 running or not started, 1 finished, 2 failed.
    outcome: AtomicU64,
    sampler: summary::Sampler,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            start: Instant::now(),
            started_ms: now_ms(),
            tasks: Mutex::default(),
            channels: Mutex::default(),
            layout: RwLock::default(),
            checkpoints: CheckpointCounts::default(),
            history: Mutex::default(),
            restarts: AtomicU64::new(0),
            exceptions: Mutex::default(),
            on_error: Mutex::default(),
            outcome: AtomicU64::new(0),
            sampler: Default::default(),
        }
    }
}

impl JobMetrics {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The metrics of subtask `subtask` of the chain headed by `operator`; a restarted task
    /// continues the counters of its earlier run.
    fn task(&self, operator: &str, subtask: u32) -> Arc<TaskMetrics> {
        let mut tasks = self.tasks.lock().unwrap();
        let now = self.now_ns().max(1);
        if let Some(t) = tasks
            .iter()
            .find(|t| t.operator == operator && t.subtask == subtask)
        {
            let (s, e) = (
                t.started_ns.load(Ordering::Relaxed),
                t.ended_ns.load(Ordering::Relaxed),
            );
            if e > s {
                bump(&t.earlier_ns, e - s);
            }
            t.started_ns.store(now, Ordering::Relaxed);
            t.ended_ns.store(0, Ordering::Relaxed);
            return t.clone();
        }
        let t = Arc::new(TaskMetrics::new(operator, subtask));
        t.started_ns.store(now, Ordering::Relaxed);
        tasks.push(t.clone());
        t
    }

    /// The job's plan, and which worker of how many slots each this process is.
    pub fn set_layout(&self, plan: PhysicalPlan, worker: u32, slots: Option<u32>) {
        *self.layout.write().unwrap() = Some(Layout {
            plan,
            slots,
            worker,
        });
    }

    /// The on-error policy's counters (records skipped, dead-lettered).
    pub fn set_on_error_counters(&self, skipped: Arc<AtomicU64>, dead_lettered: Arc<AtomicU64>) {
        *self.on_error.lock().unwrap() = Some((skipped, dead_lettered));
    }

    /// The job failed and restarts (or gives up) because of `cause`.
    pub fn failed(&self, cause: &str, restarting: bool) {
        if restarting {
            self.restarts.fetch_add(1, Ordering::Relaxed);
        } else {
            self.outcome.store(2, Ordering::Relaxed);
        }
        let mut ex = self.exceptions.lock().unwrap();
        if ex.len() == HISTORY {
            ex.pop_front();
        }
        ex.push_back(Exception {
            time_ms: now_ms(),
            message: cause.to_string(),
        });
    }

    /// The job ended successfully.
    pub fn finished(&self) {
        self.outcome.store(1, Ordering::Relaxed);
    }

    /// Every local task runs (or the job has ended): the worker is ready.
    pub fn ready(&self) -> bool {
        if self.outcome.load(Ordering::Relaxed) != 0 {
            return true;
        }
        let expected = match &*self.layout.read().unwrap() {
            Some(l) => l.local_subtasks(),
            None => return false,
        };
        // Tasks that ended stay registered: a worker idling after its job finished is ready.
        expected > 0 && self.tasks.lock().unwrap().len() >= expected
    }

    /// "running", "finished" (also a worker idling after its tasks ended) or "failed".
    fn state(&self) -> &'static str {
        match self.outcome.load(Ordering::Relaxed) {
            1 => return "finished",
            2 => return "failed",
            _ => {}
        }
        let all_ended = {
            let tasks = self.tasks.lock().unwrap();
            !tasks.is_empty()
                && tasks
                    .iter()
                    .all(|t| t.ended_ns.load(Ordering::Relaxed) != 0)
        };
        match all_ended && self.ready() {
            true => "finished",
            false => "running",
        }
    }

    pub(crate) fn checkpoint_triggered(&self, id: u64) {
        self.checkpoints.triggered.fetch_add(1, Ordering::Relaxed);
        self.record(CheckpointRecord {
            id,
            status: "in progress",
            triggered_ms: now_ms(),
            duration_ms: None,
            state_bytes: None,
            cause: None,
        });
    }

    pub(crate) fn checkpoint_completed(
        &self,
        id: u64,
        triggered_ms: u64,
        completed_ms: u64,
        bytes: u64,
    ) {
        let c = &self.checkpoints;
        let took = completed_ms.saturating_sub(triggered_ms);
        c.completed.fetch_add(1, Ordering::Relaxed);
        c.last_duration_ms.store(took, Ordering::Relaxed);
        c.last_size_bytes.store(bytes, Ordering::Relaxed);
        c.last_completed_id.store(id, Ordering::Relaxed);
        c.last_completed_ms.store(completed_ms, Ordering::Relaxed);
        self.update(id, triggered_ms, |r| {
            r.status = "completed";
            r.duration_ms = Some(took);
            r.state_bytes = Some(bytes);
        });
    }

    pub(crate) fn checkpoint_failed(&self, id: u64, cause: &str) {
        self.checkpoints.failed.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        self.update(id, now, |r| {
            r.status = "failed";
            r.duration_ms = Some(now.saturating_sub(r.triggered_ms));
            r.cause = Some(cause.to_string());
        });
    }

    fn record(&self, r: CheckpointRecord) {
        let mut h = self.history.lock().unwrap();
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(r);
    }

    /// Updates the history entry of checkpoint `id` (the final checkpoint and followers'
    /// checkpoints were never triggered here: they get an entry now).
    fn update(&self, id: u64, triggered_ms: u64, f: impl FnOnce(&mut CheckpointRecord)) {
        let mut h = self.history.lock().unwrap();
        if let Some(r) = h.iter_mut().rev().find(|r| r.id == id) {
            return f(r);
        }
        drop(h);
        let mut r = CheckpointRecord {
            id,
            status: "in progress",
            triggered_ms,
            duration_ms: None,
            state_bytes: None,
            cause: None,
        };
        f(&mut r);
        self.record(r);
    }

    fn snapshots(&self) -> Vec<TaskSnapshot> {
        let now = self.now_ns();
        let wall = now_ms();
        let mut v: Vec<_> = self
            .tasks
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.snapshot(now, wall))
            .collect();
        v.sort_by(|a, b| (&a.operator, a.subtask).cmp(&(&b.operator, b.subtask)));
        self.add_exchange_bytes(&mut v);
        v
    }

    fn on_error_counts(&self) -> (u64, u64) {
        match &*self.on_error.lock().unwrap() {
            Some((s, d)) => (s.load(Ordering::Relaxed), d.load(Ordering::Relaxed)),
            None => (0, 0),
        }
    }

    fn job_name(&self) -> String {
        match &*self.layout.read().unwrap() {
            Some(l) => l.plan.job_name.clone(),
            None => String::new(),
        }
    }
}

impl Layout {
    fn worker_of(&self, subtask: u32) -> u32 {
        match self.slots {
            Some(s) => PhysicalPlan::worker_of(subtask, s),
            None => 0,
        }
    }

    fn local_subtasks(&self) -> usize {
        self.plan
            .chains
            .iter()
            .map(|c| {
                (0..c.parallelism)
                    .filter(|&i| self.worker_of(i) == self.worker)
                    .count()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` with `m` as this thread's task, as a task thread would.
    fn as_task(m: &Arc<TaskMetrics>, f: impl FnOnce()) {
        CURRENT.with(|c| *c.borrow_mut() = Some(m.clone()));
        f();
        CURRENT.with(|c| c.borrow_mut().take());
    }

    #[test]
    fn hooks_record_alignment_queue_depth_and_source_progress() {
        let m = Arc::new(TaskMetrics::new("op", 0));
        as_task(&m, || {
            aligned(Duration::from_millis(30));
            aligned(Duration::from_millis(10));
            queued(5);
            queued(3);
            source_total(Some(1000), None);
            source_read(200);
            source_read(50);
            sink_wrote(70);
            sink_wrote(0);
        });
        let s = m.snapshot(0, 0);
        assert_eq!(s.alignments, 2);
        assert!((s.alignment_seconds - 0.040).abs() < 1e-9);
        assert!((s.alignment_last_seconds - 0.010).abs() < 1e-9);
        assert_eq!(s.queued_batches, 3);
        assert_eq!(
            (s.source_total_bytes, s.source_bytes_read),
            (Some(1000), 250)
        );
        // A source's bytes are its input bytes, a sink's its output bytes (no exchange here).
        assert_eq!((s.bytes_in, s.bytes_out), (250, 70));
        // Without a current task the hooks do nothing (and do not panic).
        aligned(Duration::from_millis(1));
        assert_eq!(m.snapshot(0, 0).alignments, 2);
    }

    #[test]
    fn event_time_lag_is_wall_clock_minus_the_watermark_only_while_one_exists() {
        let m = TaskMetrics::new("op", 0);
        assert_eq!(m.snapshot(0, 10_000).event_time_lag_seconds, None);
        m.watermark(7_500);
        assert_eq!(m.snapshot(0, 10_000).event_time_lag_seconds, Some(2.5));
        // The end of a bounded input is no lag.
        m.watermark(MAX_WATERMARK);
        assert_eq!(m.snapshot(0, 10_000).event_time_lag_seconds, None);
    }
}
