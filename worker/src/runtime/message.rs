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
    /// Aligned checkpoint barrier.
    Barrier(CheckpointBarrier),
    /// No more records will come on this input (end of a bounded stream).
    EndOfInput,
    /// Checkpoint `n` is complete and durable: sinks commit what they pre-committed for it,
    /// sources may commit their positions. Passed down a chain by its task; never sent
    /// over a channel (every task learns it from the coordinator).
    CheckpointComplete(u64),
}

/// One element on a channel. Records always travel in batches: one channel operation
/// moves many records.
#[derive(Debug)]
pub enum Message<T> {
    Data(Vec<T>),
    Signal(Signal),
}
