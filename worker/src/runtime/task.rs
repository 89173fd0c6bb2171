//! Task drivers: the loop that runs one subtask of a chain, either pulling from a source
//! reader or from the input gate, and pushing into the chain's head.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use crate::error::{TaskError, panic_message};
use crate::runtime::channel::{Endpoint, InputGate, cancelled};
use crate::runtime::checkpoint::{Coordinator, FinalOutcome};
use crate::runtime::context::{CANCEL_POLL, SubtaskContext};
use crate::runtime::functions::{Collector, SourceReader, SourceStatus};
use crate::runtime::message::{Batch, CheckpointBarrier, FINAL_CHECKPOINT, Message, Signal};
use crate::runtime::output::Output;
use crate::runtime::time::{MAX_WATERMARK, NO_TIMESTAMP, set_current_timestamp};

/// One runnable subtask.
pub(crate) trait Task: Send {
    fn run(self: Box<Self>) -> Result<TaskStats, TaskError>;
}

/// What a finished subtask reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskStats {
    /// Records that entered the chain (read from the source or from input channels).
    pub records_in: u64,
}

pub(crate) struct SourceTask<T> {
    pub reader: Box<dyn SourceReader<T>>,
    pub head: Box<dyn Output<T>>,
    pub ctx: SubtaskContext,
}

/// A task's view of the checkpoints: which barrier it injected or passed last, and which
/// completion it announced to its chain last.
struct CheckpointCursor {
    coordinator: Arc<Coordinator>,
    barrier: u64,
    complete: u64,
}

impl CheckpointCursor {
    fn of(ctx: &SubtaskContext) -> Option<Self> {
        let c = ctx.checkpoints.clone()?;
        Some(CheckpointCursor {
            barrier: c.pending(),
            complete: c.completed(),
            coordinator: c,
        })
    }
}

fn io_error(ctx: &SubtaskContext, what: &str, e: impl std::fmt::Display) -> TaskError {
    TaskError::user(&ctx.operator, ctx.subtask, format!("{what}: {e}"))
}

/// Tells the chain about a newly completed checkpoint (sinks commit).
fn announce_complete<T>(
    cursor: &mut Option<CheckpointCursor>,
    head: &mut dyn Output<T>,
) -> Result<Option<u64>, TaskError> {
    let Some(c) = cursor else { return Ok(None) };
    if let Some(e) = c.coordinator.fatal() {
        return Err(TaskError::user("checkpoints", 0, e));
    }
    let done = c.coordinator.completed();
    if done > c.complete {
        c.complete = done;
        head.signal(Signal::CheckpointComplete(done))?;
        return Ok(Some(done));
    }
    Ok(None)
}

/// Stop-with-savepoint: once a task has passed the savepoint's barrier, it waits for the
/// savepoint to complete (the caller then announces it, so sinks commit) before it ends, so
/// nothing the savepoint covers is left uncommitted. Returns whether this task is stopping.
fn await_stop(cursor: &Option<CheckpointCursor>, ctx: &SubtaskContext) -> Result<bool, TaskError> {
    let Some(c) = cursor else {
        return Ok(false);
    };
    let stop = c.coordinator.stop_at();
    if stop == 0 || c.barrier != stop {
        return Ok(false);
    }
    while c.coordinator.completed() < stop {
        if c.coordinator.has_failed(stop) {
            return Err(io_error(
                ctx,
                "stop-with-savepoint",
                format!("savepoint {stop} failed; the job stops without it"),
            ));
        }
        if ctx.is_cancelled() {
            return Err(cancelled(&endpoint(ctx)));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(true)
}

/// Reports a finished task, then waits until the job's final checkpoint is complete and
/// announces it down the chain: sinks commit what they pre-committed at the end of input
/// only once a checkpoint covers it (Flink's final checkpoint), so a crash before that
/// replays from the previous checkpoint without duplicates.
fn task_finished<T>(
    cursor: &Option<CheckpointCursor>,
    head: &mut dyn Output<T>,
    ctx: &SubtaskContext,
    final_state: Option<Vec<u8>>,
) -> Result<(), TaskError> {
    let Some(c) = cursor else { return Ok(()) };
    c.coordinator
        .task_finished(c.barrier, final_state.map(|b| (&*ctx.uid, ctx.subtask, b)))
        .map_err(|e| io_error(ctx, "cannot complete a checkpoint", e))?;
    match c.coordinator.await_final(|| ctx.is_cancelled()) {
        FinalOutcome::Complete => head.signal(Signal::CheckpointComplete(FINAL_CHECKPOINT))?,
        // Logged once by the coordinator; nothing the sinks wrote depends on it.
        FinalOutcome::Skipped => {}
        FinalOutcome::Failed(e) => return Err(io_error(ctx, "final checkpoint", e)),
        FinalOutcome::Cancelled => return Err(cancelled(&endpoint(ctx))),
    }
    head.flush()
}

impl<T: Send> Task for SourceTask<T> {
    fn run(mut self: Box<Self>) -> Result<TaskStats, TaskError> {
        let who = endpoint(&self.ctx);
        let metrics = crate::runtime::metrics::enter_task(&self.ctx);
        let mut stats = TaskStats::default();
        let mut last_flush = Instant::now();
        let mut cursor = CheckpointCursor::of(&self.ctx);
        if let Some(c) = &cursor
            && c.coordinator.restored().is_some()
        {
            let read = |e| io_error(&self.ctx, "cannot read checkpoint", e);
            let mut all = c.coordinator.restored_states(&self.ctx.uid).map_err(read)?;
            all.sort_unstable_by_key(|(subtask, _)| *subtask);
            let (subtasks, states): (Vec<u32>, Vec<Vec<u8>>) = all.into_iter().unzip();
            let restore = |e| io_error(&self.ctx, "cannot restore from checkpoint", e);
            if !self.reader.restore_from_all(&states).map_err(restore)?
                && let Ok(own) = subtasks.binary_search(&self.ctx.subtask)
            {
                self.reader.restore(&states[own]).map_err(restore)?;
            }
        }
        loop {
            if self.ctx.is_cancelled() {
                return Err(cancelled(&who));
            }
            if let Some(c) = &mut cursor {
                let id = c.coordinator.pending();
                if id > c.barrier {
                    // Position first, then the barrier: everything before it is covered.
                    let state = self
                        .reader
                        .snapshot()
                        .map_err(|e| io_error(&self.ctx, "cannot snapshot the source", e))?;
                    c.coordinator
                        .write_state(id, &self.ctx.uid, self.ctx.subtask, &state)
                        .map_err(|e| io_error(&self.ctx, "cannot write checkpoint", e))?;
                    let barrier = CheckpointBarrier {
                        id,
                        timestamp_ms: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64),
                    };
                    self.head.signal(Signal::Barrier(barrier))?;
                    c.coordinator
                        .ack(id)
                        .map_err(|e| io_error(&self.ctx, "cannot complete a checkpoint", e))?;
                    c.barrier = id;
                }
            }
            let stopping = await_stop(&cursor, &self.ctx)?;
            if let Some(done) = announce_complete(&mut cursor, &mut *self.head)? {
                self.reader
                    .notify_checkpoint_complete(done)
                    .map_err(|e| io_error(&self.ctx, "after checkpoint", e))?;
            }
            if stopping {
                // Stop-with-savepoint: nothing after the barrier is read, and event time
                // does not jump to the end (the resumed job fires the open windows).
                return self.finish(cursor, stats, false);
            }
            // Records of a source have no timestamp unless the reader sets one.
            set_current_timestamp(NO_TIMESTAMP);
            let mut out = Collector::new(&mut *self.head);
            let polled = catch_unwind(AssertUnwindSafe(|| self.reader.poll_next(&mut out)));
            stats.records_in += out.count();
            metrics.records_in(out.count());
            out.into_result()?;
            let status = match polled {
                Ok(Ok(status)) => status,
                Ok(Err(e)) => {
                    return Err(TaskError::user(
                        &self.ctx.operator,
                        self.ctx.subtask,
                        e.to_string(),
                    ));
                }
                Err(p) => {
                    return Err(TaskError::user(
                        &self.ctx.operator,
                        self.ctx.subtask,
                        panic_message(&*p),
                    ));
                }
            };
            match status {
                SourceStatus::MoreAvailable => {
                    if last_flush.elapsed() >= self.ctx.buffer_timeout {
                        self.head.flush()?;
                        last_flush = Instant::now();
                    }
                }
                SourceStatus::Idle => {
                    self.head.flush()?;
                    last_flush = Instant::now();
                }
                SourceStatus::Finished => return self.finish(cursor, stats, true),
            }
        }
    }
}

impl<T: Send> SourceTask<T> {
    fn finish(
        &mut self,
        cursor: Option<CheckpointCursor>,
        stats: TaskStats,
        exhausted: bool,
    ) -> Result<TaskStats, TaskError> {
        debug!(operator = %self.ctx.operator, subtask = self.ctx.subtask, records = stats.records_in, "source finished");
        if exhausted {
            // A bounded input is complete in event time too: every window and timer fires.
            self.head.signal(Signal::Watermark(MAX_WATERMARK))?;
        }
        self.head.signal(Signal::EndOfInput)?;
        self.head.flush()?;
        let final_state = match &cursor {
            Some(_) => Some(
                self.reader
                    .snapshot()
                    .map_err(|e| io_error(&self.ctx, "cannot snapshot the source", e))?,
            ),
            None => None,
        };
        task_finished(&cursor, &mut *self.head, &self.ctx, final_state)?;
        Ok(stats)
    }
}

pub(crate) struct InputTask<T> {
    pub gate: InputGate<T>,
    pub head: Box<dyn Output<T>>,
    pub ctx: SubtaskContext,
}

impl<T> InputTask<T> {
    /// Pushes a batch's records into the chain, each with its timestamp and key hash.
    fn process(&mut self, batch: Batch<T>) -> Result<(), TaskError> {
        let Batch {
            records,
            timestamps,
            key_hashes,
        } = batch;
        let timed = !timestamps.is_empty();
        if !timed {
            set_current_timestamp(NO_TIMESTAMP);
        }
        if key_hashes.is_empty() {
            if timed {
                for (item, ts) in records.into_iter().zip(timestamps) {
                    set_current_timestamp(ts);
                    self.head.emit(item)?;
                }
            } else {
                for item in records {
                    self.head.emit(item)?;
                }
            }
        } else {
            for (i, (item, hash)) in records.into_iter().zip(key_hashes).enumerate() {
                if timed {
                    set_current_timestamp(timestamps[i]);
                }
                self.head.emit_keyed(item, hash)?;
            }
        }
        Ok(())
    }
}

impl<T: Send> Task for InputTask<T> {
    fn run(mut self: Box<Self>) -> Result<TaskStats, TaskError> {
        let who = endpoint(&self.ctx);
        let metrics = crate::runtime::metrics::enter_task(&self.ctx);
        let mut stats = TaskStats::default();
        let mut last_flush = Instant::now();
        let mut cursor = CheckpointCursor::of(&self.ctx);
        loop {
            announce_complete(&mut cursor, &mut *self.head)?;
            let msg = match self.gate.try_next()? {
                Some(m) => m,
                None => {
                    // Input is idle: send what we have so latency stays low, then wait.
                    self.head.flush()?;
                    last_flush = Instant::now();
                    let _idle = metrics.idle_scope();
                    loop {
                        if self.ctx.is_cancelled() {
                            return Err(cancelled(&who));
                        }
                        if let Some(m) = self.gate.next_timeout(CANCEL_POLL)? {
                            break m;
                        }
                        // Keep ticking while idle: time-driven work downstream (a Kafka
                        // transaction due for commit, delivery reports, a completed
                        // checkpoint to commit) must not wait for the next record.
                        // Flushing empty buffers costs nothing.
                        announce_complete(&mut cursor, &mut *self.head)?;
                        self.head.flush()?;
                    }
                }
            };
            match msg {
                Message::Batch(batch) => {
                    stats.records_in += batch.len() as u64;
                    metrics.records_in(batch.len() as u64);
                    self.process(batch)?;
                }
                Message::Signal(Signal::EndOfInput) => {
                    await_stop(&cursor, &self.ctx)?;
                    announce_complete(&mut cursor, &mut *self.head)?;
                    self.head.signal(Signal::EndOfInput)?;
                    self.head.flush()?;
                    task_finished(&cursor, &mut *self.head, &self.ctx, None)?;
                    return Ok(stats);
                }
                Message::Signal(Signal::Barrier(b)) => {
                    // Operators of the chain snapshot as the barrier passes through them.
                    self.head.signal(Signal::Barrier(b))?;
                    if let Some(c) = &mut cursor {
                        c.coordinator
                            .ack(b.id)
                            .map_err(|e| io_error(&self.ctx, "cannot complete a checkpoint", e))?;
                        c.barrier = b.id;
                    }
                }
                Message::Signal(s) => {
                    if let Signal::Watermark(w) = s {
                        metrics.watermark(w);
                    }
                    self.head.signal(s)?
                }
            }
            if last_flush.elapsed() >= self.ctx.buffer_timeout {
                self.head.flush()?;
                last_flush = Instant::now();
            }
        }
    }
}

pub(crate) fn endpoint(ctx: &SubtaskContext) -> Endpoint {
    Endpoint {
        operator: ctx.operator.to_string(),
        subtask: ctx.subtask,
        cancel: ctx.cancel.clone(),
    }
}
