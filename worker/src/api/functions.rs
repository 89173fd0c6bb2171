//! Extension points: sources, sinks, and the collector that `flat_map` and sources emit into.

use crate::error::{BoxError, TaskError};
use crate::runtime::context::SubtaskContext;
use crate::runtime::output::Output;

/// Where a `flat_map` function or a source reader puts its records. Records go straight
/// into the next chained operator.
pub struct Collector<'a, T> {
    out: &'a mut dyn Output<T>,
    error: Option<TaskError>,
    count: u64,
}

impl<'a, T> Collector<'a, T> {
    pub(crate) fn new(out: &'a mut dyn Output<T>) -> Self {
        Collector {
            out,
            error: None,
            count: 0,
        }
    }

    /// Emits one record. If downstream has failed the record is dropped and the failure is
    /// reported when the calling function returns; check [`Collector::is_closed`] to stop early.
    #[inline]
    pub fn collect(&mut self, item: T) {
        if self.error.is_none() {
            self.count += 1;
            if let Err(e) = self.out.emit(item) {
                self.error = Some(e);
            }
        }
    }

    /// Emits a record with its event timestamp (ms), e.g. a Kafka record's timestamp.
    #[inline]
    pub fn collect_with_timestamp(&mut self, item: T, timestamp: i64) {
        crate::runtime::time::set_current_timestamp(timestamp);
        self.collect(item);
    }

    /// Sources that track event time themselves (per split, see
    /// `runtime::time::SplitWatermarks`): the watermark after the records emitted so far.
    pub fn emit_watermark(&mut self, watermark: i64) {
        self.signal(crate::runtime::message::Signal::Watermark(watermark));
    }

    /// Sources: no records for now; downstream stops waiting for this input's watermark
    /// until its next record or watermark.
    pub fn mark_idle(&mut self) {
        self.signal(crate::runtime::message::Signal::Idle);
    }

    fn signal(&mut self, signal: crate::runtime::message::Signal) {
        if self.error.is_none()
            && let Err(e) = self.out.signal(signal)
        {
            self.error = Some(e);
        }
    }

    /// True once downstream failed; further records are dropped.
    pub fn is_closed(&self) -> bool {
        self.error.is_some()
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn into_result(self) -> Result<(), TaskError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A source of records, instantiated once per subtask (Flink's `Source`).
pub trait Source<T>: Send + Sync + 'static {
    /// Largest parallelism the source supports: `Some(1)` for a non-parallel source.
    fn max_parallelism(&self) -> Option<u32> {
        None
    }

    /// Kind shown in plans, e.g. `file` or `kafka`.
    fn kind(&self) -> &'static str {
        "custom"
    }

    /// Creates the reader of one subtask; `ctx.subtask` and `ctx.parallelism` tell it which
    /// share of the input is its own.
    fn create_reader(&self, ctx: &SubtaskContext) -> Result<Box<dyn SourceReader<T>>, BoxError>;
}

/// What a poll of a source reader found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// Records were emitted and more may be ready immediately.
    MoreAvailable,
    /// Nothing is available right now (the reader waited briefly); partial batches are
    /// flushed so downstream sees what was emitted.
    Idle,
    /// The (bounded) input is exhausted.
    Finished,
}

/// One subtask's reader. `poll_next` should emit a bounded number of records (a batch) and
/// never block for longer than the job's buffer timeout, so the task can flush and notice
/// cancellation.
pub trait SourceReader<T>: Send {
    fn poll_next(&mut self, out: &mut Collector<'_, T>) -> Result<SourceStatus, BoxError>;

    /// Position to resume from after the records emitted so far (taken at a checkpoint
    /// barrier). Sources that cannot replay keep the default: nothing.
    fn snapshot(&mut self) -> Result<Vec<u8>, BoxError> {
        Ok(Vec::new())
    }

    /// Resumes from a [`SourceReader::snapshot`] of the checkpoint the job restarts from
    /// (called before the first poll).
    fn restore(&mut self, _state: &[u8]) -> Result<(), BoxError> {
        Ok(())
    }

    /// Restores from the snapshots of every subtask of the checkpointed run, for sources
    /// whose splits can move between subtasks (e.g. Kafka partitions when the parallelism
    /// changed). Returns false if the source does not do this, and then gets
    /// [`SourceReader::restore`] with its own snapshot instead.
    fn restore_from_all(&mut self, _states: &[Vec<u8>]) -> Result<bool, BoxError> {
        Ok(false)
    }

    /// Checkpoint `n` is complete (e.g. commit the offsets it recorded).
    fn notify_checkpoint_complete(&mut self, _checkpoint: u64) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A sink, instantiated once per subtask (Flink's `Sink`).
pub trait Sink<T>: Send + Sync + 'static {
    fn max_parallelism(&self) -> Option<u32> {
        None
    }

    /// Kind shown in plans, e.g. `print`.
    fn kind(&self) -> &'static str {
        "custom"
    }

    fn create_writer(&self, ctx: &SubtaskContext) -> Result<Box<dyn SinkWriter<T>>, BoxError>;
}

/// One subtask's writer.
pub trait SinkWriter<T>: Send {
    fn write(&mut self, item: T) -> Result<(), BoxError>;

    /// Make written records visible (called when the input is idle and every buffer timeout).
    fn flush(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    /// End of input: flush and release resources.
    fn finish(&mut self) -> Result<(), BoxError> {
        self.flush()
    }

    /// Checkpoint barrier: make what was written so far durable or pre-committed, and return
    /// what a restore needs (e.g. a file length). Default: flush, nothing to restore.
    fn snapshot(&mut self, _checkpoint: u64) -> Result<Vec<u8>, BoxError> {
        self.flush()?;
        Ok(Vec::new())
    }

    /// Resumes from the snapshot of the checkpoint the job restarts from (called before the
    /// first write), e.g. dropping output written after that checkpoint.
    fn restore(&mut self, _state: &[u8]) -> Result<(), BoxError> {
        Ok(())
    }

    /// Restores from the snapshots of every subtask of the checkpointed run, as (old subtask,
    /// snapshot), for sinks that must also finish what subtasks which no longer exist left
    /// (e.g. commit their pre-committed transactions after the parallelism shrank). Returns
    /// false if the sink does not do this, and then gets [`SinkWriter::restore`] with its own
    /// snapshot instead.
    fn restore_from_all(&mut self, _states: &[(u32, Vec<u8>)]) -> Result<bool, BoxError> {
        Ok(false)
    }

    /// Checkpoint `n` is complete: commit what was pre-committed for it.
    fn notify_checkpoint_complete(&mut self, _checkpoint: u64) -> Result<(), BoxError> {
        Ok(())
    }
}
