//! Watermarks of a source that reads several splits (Kafka partitions): one watermark per
//! split, the source's watermark is the minimum over the splits that are not idle.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
struct Split {
    /// Highest timestamp seen, minus the allowed out-of-orderness.
    watermark: i64,
    /// Processing time (ms) of the last record.
    last_record_ms: i64,
    idle: bool,
}

/// Per-split watermark tracking, reusable by any multi-split source.
///
/// `on_record(split, ts, now)` for every record, `current(now)` when emitting (periodically):
/// it returns the minimum over active splits, never less than what it returned before.
/// A split without records for longer than the idleness timeout is left out until its next
/// record; when every split is idle, `current` returns `None` (the source is idle).
#[derive(Debug, Clone)]
pub struct SplitWatermarks {
    splits: BTreeMap<String, Split>,
    out_of_orderness_ms: i64,
    idleness_ms: Option<i64>,
    emitted: i64,
}

impl SplitWatermarks {
    pub fn new(out_of_orderness_ms: i64, idleness_ms: Option<i64>) -> Self {
        SplitWatermarks {
            splits: BTreeMap::new(),
            out_of_orderness_ms,
            idleness_ms,
            emitted: i64::MIN,
        }
    }

    /// A split was assigned (it holds back the watermark until it has records or is idle).
    pub fn add_split(&mut self, split: &str, now_ms: i64) {
        self.splits.entry(split.to_string()).or_insert(Split {
            watermark: i64::MIN,
            last_record_ms: now_ms,
            idle: false,
        });
    }

    /// A split was revoked or finished: it no longer holds back the watermark.
    pub fn remove_split(&mut self, split: &str) {
        self.splits.remove(split);
    }

    pub fn on_record(&mut self, split: &str, timestamp: i64, now_ms: i64) {
        let wm = timestamp
            .saturating_sub(self.out_of_orderness_ms)
            .saturating_sub(1);
        match self.splits.get_mut(split) {
            Some(s) => {
                s.watermark = s.watermark.max(wm);
                s.last_record_ms = now_ms;
                s.idle = false;
            }
            None => {
                self.splits.insert(
                    split.to_string(),
                    Split {
                        watermark: wm,
                        last_record_ms: now_ms,
                        idle: false,
                    },
                );
            }
        }
    }

    /// The watermark to emit now: `Some(w)` (never below an earlier one), or `None` when
    /// every split is idle (or there are none) and the source should announce idleness.
    pub fn current(&mut self, now_ms: i64) -> Option<i64> {
        if let Some(idle) = self.idleness_ms {
            for s in self.splits.values_mut() {
                if now_ms.saturating_sub(s.last_record_ms) >= idle {
                    s.idle = true;
                }
            }
        }
        let min = self
            .splits
            .values()
            .filter(|s| !s.idle)
            .map(|s| s.watermark)
            .min()?;
        self.emitted = self.emitted.max(min);
        Some(self.emitted)
    }

    /// What [`SplitWatermarks::current`] last returned (`i64::MIN` before any); what a
    /// checkpoint keeps so a restored source does not go back.
    pub fn emitted(&self) -> i64 {
        self.emitted
    }

    /// After a restore: never emit below `watermark` again.
    pub fn restore_emitted(&mut self, watermark: i64) {
        self.emitted = self.emitted.max(watermark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_over_splits_never_goes_back() {
        let mut w = SplitWatermarks::new(10, None);
        w.add_split("p0", 0);
        w.add_split("p1", 0);
        w.on_record("p0", 100, 0);
        // p1 has no record yet: it holds the watermark back.
        assert_eq!(w.current(0), Some(i64::MIN));
        w.on_record("p1", 50, 0);
        assert_eq!(w.current(0), Some(39));
        w.on_record("p1", 500, 0);
        assert_eq!(w.current(0), Some(89));
        // A new split starts low: the emitted watermark does not regress.
        w.add_split("p2", 0);
        w.on_record("p2", 0, 0);
        assert_eq!(w.current(0), Some(89));
        w.remove_split("p2");
        w.on_record("p0", 1000, 0);
        assert_eq!(w.current(0), Some(489));
    }

    #[test]
    fn idle_splits_are_left_out_until_their_next_record() {
        let mut w = SplitWatermarks::new(0, Some(1000));
        w.on_record("p0", 100, 0);
        w.on_record("p1", 5, 0);
        assert_eq!(w.current(500), Some(4));
        w.on_record("p0", 200, 900);
        // p1 idle since 0: left out at 1000.
        assert_eq!(w.current(1000), Some(199));
        // Back with an old timestamp: it holds back again, but nothing goes backwards.
        w.on_record("p1", 150, 1100);
        assert_eq!(w.current(1100), Some(199));
        w.on_record("p1", 300, 1200);
        assert_eq!(w.current(1200), Some(199));
        w.on_record("p0", 400, 1300);
        assert_eq!(w.current(1300), Some(299));
        // Everything idle: the source is idle.
        assert_eq!(w.current(5000), None);
    }

    #[test]
    fn a_restored_tracker_does_not_regress() {
        let mut w = SplitWatermarks::new(0, None);
        w.restore_emitted(1000);
        w.on_record("p0", 10, 0);
        assert_eq!(w.current(0), Some(1000));
        assert_eq!(w.emitted(), 1000);
    }
}
