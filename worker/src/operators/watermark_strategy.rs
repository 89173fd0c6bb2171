//! `WatermarkStrategy`, as in Flink: where a record's event timestamp comes from, how far
//! out of order records may arrive, when an input counts as idle, and how often watermarks
//! are emitted. Applied with `DataStream::assign_timestamps_and_watermarks` (on a source's
//! stream it chains into the source task, which is what Flink's `fromSource(source,
//! strategy, name)` does).

use std::sync::Arc;
use std::time::Duration;

use crate::runtime::time::{Clock, SystemClock};

/// Extracts a record's event timestamp (ms): `(record, timestamp it already has or
/// runtime::time::NO_TIMESTAMP)`, like Flink's `TimestampAssigner.extractTimestamp`.
pub type TimestampAssignerFn<T> = Arc<dyn Fn(&T, i64) -> i64 + Send + Sync>;

/// Default interval between periodic watermarks (Flink's `autoWatermarkInterval`).
pub const DEFAULT_WATERMARK_INTERVAL: Duration = Duration::from_millis(200);

pub struct WatermarkStrategy<T> {
    /// `None`: no watermarks; `Some(d)`: bounded out-of-orderness `d` (0 = monotonous).
    pub(crate) out_of_orderness_ms: Option<i64>,
    pub(crate) assigner: Option<TimestampAssignerFn<T>>,
    pub(crate) idleness_ms: Option<i64>,
    pub(crate) interval_ms: i64,
    pub(crate) per_record: bool,
    pub(crate) clock: Arc<dyn Clock>,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        WatermarkStrategy {
            out_of_orderness_ms: self.out_of_orderness_ms,
            assigner: self.assigner.clone(),
            idleness_ms: self.idleness_ms,
            interval_ms: self.interval_ms,
            per_record: self.per_record,
            clock: self.clock.clone(),
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<T> WatermarkStrategy<T> {
    fn with_bound(bound: Option<i64>) -> Self {
        WatermarkStrategy {
            out_of_orderness_ms: bound,
            assigner: None,
            idleness_ms: None,
            interval_ms: ms(DEFAULT_WATERMARK_INTERVAL),
            per_record: false,
            clock: Arc::new(SystemClock),
        }
    }

    /// Timestamps but no watermarks (event-time windows fire only at the end of a bounded
    /// input).
    pub fn no_watermarks() -> Self {
        Self::with_bound(None)
    }

    /// Timestamps never decrease: watermark = highest timestamp seen - 1.
    pub fn for_monotonous_timestamps() -> Self {
        Self::with_bound(Some(0))
    }

    /// Records arrive at most `max_out_of_orderness` late: watermark = highest timestamp
    /// seen - bound - 1.
    pub fn for_bounded_out_of_orderness(max_out_of_orderness: Duration) -> Self {
        Self::with_bound(Some(ms(max_out_of_orderness)))
    }

    /// Where the timestamp comes from: `f(record, timestamp it already has)`. Without an
    /// assigner, records keep the timestamp their source gave them (Kafka: the record
    /// timestamp).
    pub fn with_timestamp_assigner<F>(mut self, f: F) -> Self
    where
        F: Fn(&T, i64) -> i64 + Send + Sync + 'static,
    {
        self.assigner = Some(Arc::new(f));
        self
    }

    /// An input without records for `timeout` (processing time) is idle: it stops holding
    /// back the watermark downstream until its next record.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness_ms = Some(ms(timeout));
        self
    }

    /// How often watermarks are emitted (default 200 ms).
    pub fn with_emit_interval(mut self, interval: Duration) -> Self {
        self.interval_ms = ms(interval).max(1);
        self
    }

    /// Emits the watermark after every record that advances it instead of periodically
    /// (Flink's punctuated watermarks): deterministic, for tests and low-rate inputs.
    pub fn with_watermark_per_record(mut self) -> Self {
        self.per_record = true;
        self
    }

    /// The processing-time clock for the emit interval and idleness (tests inject a
    /// `runtime::time::ManualClock`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}
