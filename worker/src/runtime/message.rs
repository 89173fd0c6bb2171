//! What travels on a channel between two subtasks: batches of records, and control signals
//! in order with them (Flink's stream elements).

/// A checkpoint barrier: everything before it belongs to checkpoint `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointBarrier {
    pub id: u64,
    pub timestamp_ms: u64,
}

/// Control signals. They pass through a chain by direct calls and across channels in order
/// with the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Event time has reached this value (ms) on this input.
    Watermark(i64),
    /// This input has no records and no watermarks for now (Flink's idle watermark
    /// status): it does not hold back the minimum watermark until its next record or
    /// watermark.
    Idle,
    /// Aligned checkpoint barrier.
    Barrier(CheckpointBarrier),
    /// No more records will come on this input (end of a bounded stream).
    EndOfInput,
    /// Checkpoint `n` is complete and durable: sinks commit what they pre-committed for it,
    /// sources may commit their positions. Passed down a chain by its task; never sent
    /// over a channel (every task learns it from the coordinator). After the end of input,
    /// `CheckpointComplete(FINAL_CHECKPOINT)` says the job's final checkpoint (which covers
    /// everything) is complete: sinks commit all they hold.
    CheckpointComplete(u64),
}

/// The id a finished task announces for the job's final checkpoint (see
/// [`Signal::CheckpointComplete`]); sinks snapshot at the end of input with the same id.
pub const FINAL_CHECKPOINT: u64 = u64::MAX;

/// A batch of records, with what the producer knew about each one.
#[derive(Debug)]
pub struct Batch<T> {
    pub records: Vec<T>,
    /// Event timestamps (ms), `timestamps[i]` for record `i`
    /// (`runtime::time::NO_TIMESTAMP` for a record without one); empty if no record has one.
    pub timestamps: Vec<i64>,
    /// The stable hash of each record's key (see `streamjob_crds::StableKey`), as the
    /// router of a hash edge computed it to pick the channel; empty on other edges. The
    /// keyed operator at the other end gets it with the record
    /// ([`crate::runtime::output::Output::emit_keyed`]) instead of hashing the key again.
    pub key_hashes: Vec<u64>,
}

impl<T> Batch<T> {
    /// Records without timestamps or key hashes.
    pub fn of(records: Vec<T>) -> Self {
        Batch {
            records,
            timestamps: Vec::new(),
            key_hashes: Vec::new(),
        }
    }

    /// Records with their event timestamps.
    pub fn timed(records: Vec<T>, timestamps: Vec<i64>) -> Self {
        Batch {
            timestamps,
            ..Batch::of(records)
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One element on a channel. Records always travel in batches: one channel operation
/// moves many records.
#[derive(Debug)]
pub enum Message<T> {
    Batch(Batch<T>),
    Signal(Signal),
}
