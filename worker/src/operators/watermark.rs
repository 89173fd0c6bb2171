//! `assign_timestamps_and_watermarks`: stamps each record with its event timestamp and
//! emits watermarks periodically (by the strategy's clock), never going backwards.
//! Watermarks from upstream are replaced by this operator's own, except the final
//! `MAX_WATERMARK` of a bounded input, which passes.

use std::sync::Arc;

use crate::error::TaskError;
use crate::operators::OpId;
use crate::operators::watermark_strategy::WatermarkStrategy;
use crate::runtime::checkpoint::Coordinator;
use crate::runtime::message::Signal;
use crate::runtime::output::Output;
use crate::runtime::time::{MAX_WATERMARK, NO_TIMESTAMP, current_timestamp, set_current_timestamp};

/// Records between two looks at the clock while records keep coming.
const CLOCK_CHECK_EVERY: u32 = 1024;

pub(crate) struct TimestampsAndWatermarks<T> {
    pub strategy: WatermarkStrategy<T>,
    pub next: Box<dyn Output<T>>,
    pub id: OpId,
    pub checkpoint: Option<(Arc<Coordinator>, Arc<str>)>,
    max_timestamp: i64,
    emitted: i64,
    next_emit_ms: i64,
    since_check: u32,
    /// Records seen since the last periodic check (for idleness).
    active: bool,
    last_active_ms: i64,
    idle: bool,
    /// After `EndOfInput` nothing more goes downstream: the chain is still flushed while
    /// it waits for the final checkpoint, but the subtasks it feeds may be gone.
    ended: bool,
}

impl<T> TimestampsAndWatermarks<T> {
    pub fn new(
        strategy: WatermarkStrategy<T>,
        next: Box<dyn Output<T>>,
        id: OpId,
        checkpoint: Option<(Arc<Coordinator>, Arc<str>)>,
        restored_watermark: Option<i64>,
    ) -> Self {
        let now = strategy.clock.now_ms();
        TimestampsAndWatermarks {
            next_emit_ms: now.saturating_add(strategy.interval_ms),
            strategy,
            next,
            id,
            checkpoint,
            max_timestamp: i64::MIN,
            emitted: restored_watermark.unwrap_or(i64::MIN),
            since_check: 0,
            active: false,
            last_active_ms: now,
            idle: false,
            ended: false,
        }
    }

    /// The watermark as of now; restores take the minimum over the old subtasks' values
    /// (with aligned barriers they are equal), so event time never goes back.
    pub fn decode_state(snapshots: &[(u32, Vec<u8>)]) -> Result<Option<i64>, String> {
        let mut min: Option<i64> = None;
        for (subtask, bytes) in snapshots {
            let w: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                format!(
                    "watermark state of old subtask {subtask} has {} bytes, expected 8",
                    bytes.len()
                )
            })?;
            let w = i64::from_le_bytes(w);
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        Ok(min)
    }

    /// Periodic work: emit a watermark when due, announce idleness.
    fn tick(&mut self) -> Result<(), TaskError> {
        if self.ended {
            return Ok(());
        }
        let now = self.strategy.clock.now_ms();
        if self.active {
            self.active = false;
            self.last_active_ms = now;
            self.idle = false;
        } else if let Some(idle) = self.strategy.idleness_ms
            && !self.idle
            && now.saturating_sub(self.last_active_ms) >= idle
        {
            self.idle = true;
            self.next.signal(Signal::Idle)?;
        }
        if now >= self.next_emit_ms {
            self.next_emit_ms = now.saturating_add(self.strategy.interval_ms);
            self.emit_watermark()?;
        }
        Ok(())
    }

    fn emit_watermark(&mut self) -> Result<(), TaskError> {
        let Some(bound) = self.strategy.out_of_orderness_ms else {
            return Ok(());
        };
        if self.max_timestamp == i64::MIN {
            return Ok(());
        }
        let w = self.max_timestamp.saturating_sub(bound).saturating_sub(1);
        if w > self.emitted {
            self.emitted = w;
            self.next.signal(Signal::Watermark(w))?;
        }
        Ok(())
    }
}

impl<T: Send> Output<T> for TimestampsAndWatermarks<T> {
    #[inline]
    fn emit(&mut self, item: T) -> Result<(), TaskError> {
        let ts = match &self.strategy.assigner {
            Some(f) => {
                let ts = self.id.guard(|| f(&item, current_timestamp()))?;
                set_current_timestamp(ts);
                ts
            }
            None => current_timestamp(),
        };
        if ts != NO_TIMESTAMP && ts > self.max_timestamp {
            self.max_timestamp = ts;
        }
        self.active = true;
        if self.idle {
            // Records again: the watermark status is active from this record on.
            self.idle = false;
        }
        if self.strategy.per_record {
            self.next.emit(item)?;
            return self.emit_watermark();
        }
        self.since_check += 1;
        if self.since_check >= CLOCK_CHECK_EVERY {
            self.since_check = 0;
            self.next.emit(item)?;
            return self.tick();
        }
        self.next.emit(item)
    }

    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        match signal {
            Signal::Watermark(MAX_WATERMARK) => {
                self.emitted = MAX_WATERMARK;
                self.next.signal(signal)
            }
            // This operator's watermarks replace upstream's.
            Signal::Watermark(_) | Signal::Idle => Ok(()),
            Signal::EndOfInput => {
                self.ended = true;
                self.next.signal(signal)
            }
            Signal::Barrier(b) => {
                if let Some((c, uid)) = &self.checkpoint {
                    c.write_state(b.id, uid, self.id.subtask, &self.emitted.to_le_bytes())
                        .map_err(|e| {
                            self.id
                                .fail(format!("cannot write checkpoint {}: {e}", b.id))
                        })?;
                }
                self.next.signal(signal)
            }
            _ => self.next.signal(signal),
        }
    }

    fn flush(&mut self) -> Result<(), TaskError> {
        self.tick()?;
        self.next.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::runtime::time::ManualClock;

    /// Records (value, timestamp) and signals, in order.
    #[derive(Default, Clone)]
    pub(crate) struct Log(pub Arc<Mutex<Vec<String>>>);

    impl<T: std::fmt::Debug + Send> Output<T> for Log {
        fn emit(&mut self, item: T) -> Result<(), TaskError> {
            let ts = current_timestamp();
            self.0.lock().unwrap().push(format!("{item:?}@{ts}"));
            Ok(())
        }
        fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
            self.0.lock().unwrap().push(format!("{signal:?}"));
            Ok(())
        }
        fn flush(&mut self) -> Result<(), TaskError> {
            Ok(())
        }
    }

    fn op(
        strategy: WatermarkStrategy<i64>,
        restored: Option<i64>,
    ) -> (TimestampsAndWatermarks<i64>, Log) {
        let log = Log::default();
        let op = TimestampsAndWatermarks::new(
            strategy,
            Box::new(log.clone()),
            OpId {
                name: "wm".into(),
                subtask: 0,
            },
            None,
            restored,
        );
        (op, log)
    }

    #[test]
    fn watermarks_are_periodic_bounded_and_never_go_back() {
        let clock = ManualClock::new(0);
        let s = WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(5))
            .with_timestamp_assigner(|v: &i64, _| *v)
            .with_clock(Arc::new(clock.clone()));
        let (mut op, log) = op(s, None);
        op.emit(100).unwrap();
        op.emit(90).unwrap();
        op.flush().unwrap(); // not due yet
        clock.set(200);
        op.flush().unwrap();
        op.emit(50).unwrap();
        clock.set(400);
        op.flush().unwrap(); // max is still 100: nothing new
        op.emit(120).unwrap();
        op.signal(Signal::Watermark(1_000)).unwrap(); // upstream's: replaced
        clock.set(600);
        op.flush().unwrap();
        op.signal(Signal::Watermark(MAX_WATERMARK)).unwrap();
        assert_eq!(
            *log.0.lock().unwrap(),
            vec![
                "100@100",
                "90@90",
                "Watermark(94)",
                "50@50",
                "120@120",
                "Watermark(114)",
                "Watermark(9223372036854775807)",
            ]
        );
    }

    /// Regression: a source stopped by a savepoint (or waiting for the final checkpoint)
    /// flushes its chain after the end of input; a watermark or idle status then went out
    /// after `EndOfInput` to downstream subtasks that had already finished, failing the
    /// job with "a downstream subtask stopped" (a distributed stop-with-savepoint then
    /// restarted instead of stopping).
    #[test]
    fn nothing_is_emitted_after_the_end_of_input() {
        let clock = ManualClock::new(0);
        let s = WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(5))
            .with_timestamp_assigner(|v: &i64, _| *v)
            .with_idleness(Duration::from_millis(1000))
            .with_clock(Arc::new(clock.clone()));
        let (mut op, log) = op(s, None);
        op.emit(100).unwrap();
        op.signal(Signal::EndOfInput).unwrap();
        clock.set(5000);
        op.flush().unwrap();
        assert_eq!(*log.0.lock().unwrap(), vec!["100@100", "EndOfInput"]);
    }

    #[test]
    fn an_input_without_records_becomes_idle_until_the_next_one() {
        let clock = ManualClock::new(0);
        let s = WatermarkStrategy::for_monotonous_timestamps()
            .with_timestamp_assigner(|v: &i64, _| *v)
            .with_idleness(Duration::from_millis(1000))
            .with_emit_interval(Duration::from_millis(100))
            .with_clock(Arc::new(clock.clone()));
        let (mut op, log) = op(s, Some(3));
        op.emit(1).unwrap(); // below the restored watermark: no watermark
        clock.set(100);
        op.flush().unwrap();
        clock.set(1099);
        op.flush().unwrap();
        clock.set(1100);
        op.flush().unwrap();
        clock.set(1500);
        op.flush().unwrap(); // idle once
        op.emit(10).unwrap();
        clock.set(1600);
        op.flush().unwrap();
        assert_eq!(
            *log.0.lock().unwrap(),
            vec!["1@1", "Idle", "10@10", "Watermark(9)"]
        );
    }
}
