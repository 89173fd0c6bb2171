//! Task drivers: the loop that runs one subtask of a chain, either pulling from a source
//! reader or from the input gate, and pushing into the chain's head.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use tracing::debug;

use crate::api::functions::{Collector, SourceReader, SourceStatus};
use crate::error::{TaskError, panic_message};
use crate::runtime::channel::{Endpoint, InputGate, cancelled};
use crate::runtime::context::{CANCEL_POLL, SubtaskContext};
use crate::runtime::message::{Message, Signal};
use crate::runtime::output::Output;

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

impl<T: Send> Task for SourceTask<T> {
    fn run(mut self: Box<Self>) -> Result<TaskStats, TaskError> {
        let who = endpoint(&self.ctx);
        let mut stats = TaskStats::default();
        let mut last_flush = Instant::now();
        loop {
            if self.ctx.is_cancelled() {
                return Err(cancelled(&who));
            }
            let mut out = Collector::new(&mut *self.head);
            let polled = catch_unwind(AssertUnwindSafe(|| self.reader.poll_next(&mut out)));
            stats.records_in += out.count();
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
                SourceStatus::Finished => {
                    debug!(operator = %self.ctx.operator, subtask = self.ctx.subtask, records = stats.records_in, "source finished");
                    self.head.signal(Signal::EndOfInput)?;
                    self.head.flush()?;
                    return Ok(stats);
                }
            }
        }
    }
}

pub(crate) struct InputTask<T> {
    pub gate: InputGate<T>,
    pub head: Box<dyn Output<T>>,
    pub ctx: SubtaskContext,
}

impl<T: Send> Task for InputTask<T> {
    fn run(mut self: Box<Self>) -> Result<TaskStats, TaskError> {
        let who = endpoint(&self.ctx);
        let mut stats = TaskStats::default();
        let mut last_flush = Instant::now();
        loop {
            let msg = match self.gate.try_next()? {
                Some(m) => m,
                None => {
                    // Input is idle: send what we have so latency stays low, then wait.
                    self.head.flush()?;
                    last_flush = Instant::now();
                    loop {
                        if self.ctx.is_cancelled() {
                            return Err(cancelled(&who));
                        }
                        if let Some(m) = self.gate.next_timeout(CANCEL_POLL)? {
                            break m;
                        }
                        // Keep ticking while idle: time-driven work downstream (a Kafka
                        // transaction due for commit, delivery reports) must not wait for
                        // the next record. Flushing empty buffers costs nothing.
                        self.head.flush()?;
                    }
                }
            };
            match msg {
                Message::Data(batch) => {
                    stats.records_in += batch.len() as u64;
                    for item in batch {
                        self.head.emit(item)?;
                    }
                }
                Message::Signal(Signal::EndOfInput) => {
                    self.head.signal(Signal::EndOfInput)?;
                    self.head.flush()?;
                    return Ok(stats);
                }
                Message::Signal(s) => self.head.signal(s)?,
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
