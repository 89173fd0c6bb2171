//! Windows: what a window is, how records are assigned to windows, and the functions that
//! turn a window's records into results (Flink's `WindowAssigner`, `AggregateFunction`,
//! `ReduceFunction`, `ProcessWindowFunction`). The operator is `operators::window`; the
//! stream methods (`KeyedStream::window`, `DataStream::window_all`, ...) build it.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::BoxError;

/// A time window `[start, end)` in ms. Count windows report the global window
/// (`start = i64::MIN`, `end = i64::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    pub const GLOBAL: Window = Window {
        start: i64::MIN,
        end: i64::MAX,
    };

    /// The largest timestamp inside the window; results carry it as their timestamp.
    pub fn max_timestamp(&self) -> i64 {
        self.end.saturating_sub(1)
    }

    /// Session windows that overlap or touch are merged (Flink's `TimeWindow.intersects`).
    pub fn intersects(&self, other: &Window) -> bool {
        self.start <= other.end && self.end >= other.start
    }

    pub fn cover(&self, other: &Window) -> Window {
        Window {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// Which clock a window assigner uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeDomain {
    /// The records' timestamps; windows fire when the watermark passes their end.
    EventTime,
    /// The operator's clock when the record arrives; windows fire when the clock passes
    /// their end.
    ProcessingTime,
}

/// How records are assigned to time windows. Build one with the Flink-named helpers
/// ([`TumblingEventTimeWindows::of`], [`SlidingEventTimeWindows::of`],
/// [`EventTimeSessionWindows::with_gap`] and their processing-time twins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowAssigner {
    Tumbling {
        size_ms: i64,
        offset_ms: i64,
        domain: TimeDomain,
    },
    Sliding {
        size_ms: i64,
        slide_ms: i64,
        offset_ms: i64,
        domain: TimeDomain,
    },
    /// Windows `[t, t + gap)` per record, merged while they overlap.
    Session { gap_ms: i64, domain: TimeDomain },
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Start of the window of `size` (shifted by `offset`) that contains `ts`
/// (Flink's `TimeWindow.getWindowStartWithOffset`).
fn window_start(ts: i64, offset: i64, size: i64) -> i64 {
    ts - (ts - offset).rem_euclid(size)
}

impl WindowAssigner {
    pub fn domain(&self) -> TimeDomain {
        match self {
            WindowAssigner::Tumbling { domain, .. }
            | WindowAssigner::Sliding { domain, .. }
            | WindowAssigner::Session { domain, .. } => *domain,
        }
    }

    pub fn is_merging(&self) -> bool {
        matches!(self, WindowAssigner::Session { .. })
    }

    /// Checks sizes (positive, slide not above size); called when the job is built.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            WindowAssigner::Tumbling { size_ms, .. } if size_ms <= 0 => Err(format!(
                "tumbling window size must be positive, got {size_ms} ms"
            )),
            WindowAssigner::Sliding {
                size_ms, slide_ms, ..
            } if size_ms <= 0 || slide_ms <= 0 => Err(format!(
                "sliding window size and slide must be positive, got {size_ms} ms and {slide_ms} ms"
            )),
            WindowAssigner::Sliding {
                size_ms, slide_ms, ..
            } if size_ms / slide_ms > 10_000 => Err(format!(
                "a sliding window of {size_ms} ms sliding by {slide_ms} ms puts every record \
                 into {} windows; at most 10000 are allowed",
                size_ms / slide_ms
            )),
            WindowAssigner::Session { gap_ms, .. } if gap_ms <= 0 => {
                Err(format!("session gap must be positive, got {gap_ms} ms"))
            }
            _ => Ok(()),
        }
    }

    /// The windows a record with timestamp `ts` belongs to (before session merging).
    pub fn assign(&self, ts: i64, out: &mut Vec<Window>) {
        out.clear();
        match *self {
            WindowAssigner::Tumbling {
                size_ms, offset_ms, ..
            } => {
                let start = window_start(ts, offset_ms, size_ms);
                out.push(Window {
                    start,
                    end: start.saturating_add(size_ms),
                });
            }
            WindowAssigner::Sliding {
                size_ms,
                slide_ms,
                offset_ms,
                ..
            } => {
                let last = window_start(ts, offset_ms, slide_ms);
                let mut start = last;
                while start > ts.saturating_sub(size_ms) {
                    out.push(Window {
                        start,
                        end: start.saturating_add(size_ms),
                    });
                    start -= slide_ms;
                }
            }
            WindowAssigner::Session { gap_ms, .. } => out.push(Window {
                start: ts,
                end: ts.saturating_add(gap_ms),
            }),
        }
    }
}

/// Flink's `TumblingEventTimeWindows`.
pub struct TumblingEventTimeWindows;
impl TumblingEventTimeWindows {
    pub fn of(size: Duration) -> WindowAssigner {
        Self::of_with_offset(size, Duration::ZERO)
    }
    pub fn of_with_offset(size: Duration, offset: Duration) -> WindowAssigner {
        WindowAssigner::Tumbling {
            size_ms: ms(size),
            offset_ms: ms(offset),
            domain: TimeDomain::EventTime,
        }
    }
}

/// Flink's `TumblingProcessingTimeWindows`.
pub struct TumblingProcessingTimeWindows;
impl TumblingProcessingTimeWindows {
    pub fn of(size: Duration) -> WindowAssigner {
        WindowAssigner::Tumbling {
            size_ms: ms(size),
            offset_ms: 0,
            domain: TimeDomain::ProcessingTime,
        }
    }
}

/// Flink's `SlidingEventTimeWindows`.
pub struct SlidingEventTimeWindows;
impl SlidingEventTimeWindows {
    pub fn of(size: Duration, slide: Duration) -> WindowAssigner {
        WindowAssigner::Sliding {
            size_ms: ms(size),
            slide_ms: ms(slide),
            offset_ms: 0,
            domain: TimeDomain::EventTime,
        }
    }
}

/// Flink's `SlidingProcessingTimeWindows`.
pub struct SlidingProcessingTimeWindows;
impl SlidingProcessingTimeWindows {
    pub fn of(size: Duration, slide: Duration) -> WindowAssigner {
        WindowAssigner::Sliding {
            size_ms: ms(size),
            slide_ms: ms(slide),
            offset_ms: 0,
            domain: TimeDomain::ProcessingTime,
        }
    }
}

/// Flink's `EventTimeSessionWindows`.
pub struct EventTimeSessionWindows;
impl EventTimeSessionWindows {
    pub fn with_gap(gap: Duration) -> WindowAssigner {
        WindowAssigner::Session {
            gap_ms: ms(gap),
            domain: TimeDomain::EventTime,
        }
    }
}

/// Flink's `ProcessingTimeSessionWindows`.
pub struct ProcessingTimeSessionWindows;
impl ProcessingTimeSessionWindows {
    pub fn with_gap(gap: Duration) -> WindowAssigner {
        WindowAssigner::Session {
            gap_ms: ms(gap),
            domain: TimeDomain::ProcessingTime,
        }
    }
}

/// Flink's `AggregateFunction`: an accumulator per window, created, added to, merged (for
/// session windows) and read out when the window fires. The accumulator is checkpointed.
pub trait AggregateFunction<T>: Send + Sync + 'static {
    type Acc: Clone + Send + Serialize + DeserializeOwned + 'static;
    type Out;
    fn create_accumulator(&self) -> Self::Acc;
    fn add(&self, value: T, acc: &mut Self::Acc);
    fn get_result(&self, acc: &Self::Acc) -> Self::Out;
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
}

/// What the window operator runs per window: [`AggregateFunction`] with errors. Reduce,
/// aggregate and process windows of the Rust API are all one of these; the StreamJob spec
/// plugs its expression aggregates in here (an `Err` fails the job naming the operator).
pub trait WindowAggregator<T>: Send + Sync + 'static {
    type Acc: Clone + Send + Serialize + DeserializeOwned + 'static;
    type Out;
    fn create(&self) -> Result<Self::Acc, BoxError>;
    fn add(&self, acc: &mut Self::Acc, value: T) -> Result<(), BoxError>;
    fn result(&self, acc: &Self::Acc) -> Result<Self::Out, BoxError>;
    /// The result of a window that closes (its accumulator is dropped right after), so
    /// an aggregator may move it out instead of cloning.
    fn final_result(&self, acc: Self::Acc) -> Result<Self::Out, BoxError> {
        self.result(&acc)
    }
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Result<Self::Acc, BoxError>;
}

/// An [`AggregateFunction`] as a [`WindowAggregator`].
pub struct Aggregate<A>(pub A);

impl<T, A: AggregateFunction<T>> WindowAggregator<T> for Aggregate<A> {
    type Acc = A::Acc;
    type Out = A::Out;
    fn create(&self) -> Result<A::Acc, BoxError> {
        Ok(self.0.create_accumulator())
    }
    #[inline]
    fn add(&self, acc: &mut A::Acc, value: T) -> Result<(), BoxError> {
        self.0.add(value, acc);
        Ok(())
    }
    fn result(&self, acc: &A::Acc) -> Result<A::Out, BoxError> {
        Ok(self.0.get_result(acc))
    }
    fn merge(&self, a: A::Acc, b: A::Acc) -> Result<A::Acc, BoxError> {
        Ok(self.0.merge(a, b))
    }
}

/// A reduce function as a [`WindowAggregator`]: the window keeps one value.
pub struct ReduceAggregator<T, F> {
    pub f: F,
    _t: PhantomData<fn() -> T>,
}

impl<T, F> ReduceAggregator<T, F> {
    pub fn new(f: F) -> Self {
        ReduceAggregator { f, _t: PhantomData }
    }
}

impl<T, F> WindowAggregator<T> for ReduceAggregator<T, F>
where
    T: Clone + Send + Serialize + DeserializeOwned + 'static,
    F: Fn(T, T) -> T + Send + Sync + 'static,
{
    type Acc = Option<T>;
    type Out = T;
    fn create(&self) -> Result<Option<T>, BoxError> {
        Ok(None)
    }
    #[inline]
    fn add(&self, acc: &mut Option<T>, value: T) -> Result<(), BoxError> {
        *acc = Some(match acc.take() {
            Some(a) => (self.f)(a, value),
            None => value,
        });
        Ok(())
    }
    fn result(&self, acc: &Option<T>) -> Result<T, BoxError> {
        acc.clone()
            .ok_or_else(|| "internal error: a window fired without records".into())
    }
    fn final_result(&self, acc: Option<T>) -> Result<T, BoxError> {
        acc.ok_or_else(|| "internal error: a window fired without records".into())
    }
    fn merge(&self, a: Option<T>, b: Option<T>) -> Result<Option<T>, BoxError> {
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some((self.f)(a, b)),
            (a, b) => a.or(b),
        })
    }
}

/// Keeps every record of the window, for process window functions.
pub struct ListAggregator<T>(PhantomData<fn() -> T>);

impl<T> Default for ListAggregator<T> {
    fn default() -> Self {
        ListAggregator(PhantomData)
    }
}

impl<T> WindowAggregator<T> for ListAggregator<T>
where
    T: Clone + Send + Serialize + DeserializeOwned + 'static,
{
    type Acc = Vec<T>;
    type Out = Vec<T>;
    fn create(&self) -> Result<Vec<T>, BoxError> {
        Ok(Vec::new())
    }
    #[inline]
    fn add(&self, acc: &mut Vec<T>, value: T) -> Result<(), BoxError> {
        acc.push(value);
        Ok(())
    }
    fn result(&self, acc: &Vec<T>) -> Result<Vec<T>, BoxError> {
        Ok(acc.clone())
    }
    fn merge(&self, mut a: Vec<T>, b: Vec<T>) -> Result<Vec<T>, BoxError> {
        a.extend(b);
        Ok(a)
    }
}

/// What a process window function sees besides the key and the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowContext {
    pub window: Window,
    /// The operator's watermark when the window fired.
    pub current_watermark: i64,
    /// The operator's clock when the window fired.
    pub current_processing_time: i64,
}

/// Turns a window's aggregate into output records: `(key, context, aggregate, out)`.
pub type EmitFn<K, O, R> = Arc<
    dyn Fn(
            &K,
            &WindowContext,
            O,
            &mut crate::runtime::functions::Collector<'_, R>,
        ) -> Result<(), BoxError>
        + Send
        + Sync,
>;

/// Names a side output (Flink's `OutputTag`): e.g. where late records go.
pub struct OutputTag<T> {
    pub id: String,
    _t: PhantomData<fn() -> T>,
}

impl<T> OutputTag<T> {
    pub fn new(id: &str) -> Self {
        OutputTag {
            id: id.to_string(),
            _t: PhantomData,
        }
    }
}

impl<T> Clone for OutputTag<T> {
    fn clone(&self) -> Self {
        OutputTag::new(&self.id)
    }
}

/// Output of a window operator that sends late records to a side output: both travel on
/// the operator's one output and are split right after it (in the same chain).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WindowOutput<R, T> {
    Result(R),
    Late(T),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(a: WindowAssigner, ts: i64) -> Vec<(i64, i64)> {
        let mut out = vec![];
        a.assign(ts, &mut out);
        let mut v: Vec<_> = out.iter().map(|w| (w.start, w.end)).collect();
        v.sort();
        v
    }

    #[test]
    fn assigners_place_records_like_flink() {
        let t = TumblingEventTimeWindows::of(Duration::from_millis(10));
        assert_eq!(assigned(t, 0), vec![(0, 10)]);
        assert_eq!(assigned(t, 19), vec![(10, 20)]);
        assert_eq!(assigned(t, -1), vec![(-10, 0)]);
        let o = TumblingEventTimeWindows::of_with_offset(
            Duration::from_millis(10),
            Duration::from_millis(3),
        );
        assert_eq!(assigned(o, 2), vec![(-7, 3)]);
        let s = SlidingEventTimeWindows::of(Duration::from_millis(10), Duration::from_millis(5));
        assert_eq!(assigned(s, 7), vec![(0, 10), (5, 15)]);
        assert_eq!(assigned(s, 10), vec![(5, 15), (10, 20)]);
        let g = EventTimeSessionWindows::with_gap(Duration::from_millis(4));
        assert_eq!(assigned(g, 7), vec![(7, 11)]);
        assert!(
            SlidingEventTimeWindows::of(Duration::from_secs(1), Duration::ZERO)
                .validate()
                .is_err()
        );
    }
}
