//! Event time and processing time in the runtime: the timestamp of the record being
//! processed, the processing-time clock, and the per-split watermark tracker.
//!
//! A record's event timestamp does not live in the record: while a chain processes one
//! record, its timestamp sits in a per-thread cell ([`current_timestamp`]). Every operator
//! of a chain runs on its task's thread and calls the next one directly, so whatever an
//! operator emits while handling a record inherits that record's timestamp (Flink's
//! semantics for map, filter and flat_map) at no cost; operators that change it (the
//! timestamp assigner, windows emitting results) set it before they emit. Routers copy it
//! into a timestamp vector parallel to the batch, only once a timestamp was seen, so jobs
//! without event time send the same batches as before.

pub mod clock;
mod splits;

pub use clock::{Clock, ManualClock, SystemClock};
pub use splits::SplitWatermarks;

use std::cell::Cell;

/// "This record has no event timestamp."
pub const NO_TIMESTAMP: i64 = i64::MIN;

/// The watermark a bounded input ends with: every event-time window and timer fires.
pub const MAX_WATERMARK: i64 = i64::MAX;

thread_local! {
    static CURRENT: Cell<i64> = const { Cell::new(NO_TIMESTAMP) };
}

/// Event timestamp (ms) of the record the current task is processing, or [`NO_TIMESTAMP`].
#[inline]
pub fn current_timestamp() -> i64 {
    CURRENT.with(|c| c.get())
}

/// Sets the event timestamp of the records emitted from now on by this task's chain
/// (until the next record arrives). Sources call it before emitting a timestamped record
/// (e.g. the Kafka source with the record's timestamp).
#[inline]
pub fn set_current_timestamp(ts: i64) {
    CURRENT.with(|c| c.set(ts))
}

/// Runs `f` with the current timestamp set to `ts`, then restores the previous one
/// (an operator emitting on a timer or a watermark in the middle of a chain).
#[inline]
pub fn with_timestamp<R>(ts: i64, f: impl FnOnce() -> R) -> R {
    let before = current_timestamp();
    set_current_timestamp(ts);
    let r = f();
    set_current_timestamp(before);
    r
}
