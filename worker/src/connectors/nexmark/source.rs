//! The Nexmark source: subtask `s` of `p` generates events `s, s + p, s + 2p, ...`, in
//! event-time order. Its checkpoint is the next event number, so a restore (at any
//! parallelism) continues without a gap or a repeat.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::generator::{GeneratorConfig, event_at};
use super::model::Event;
use crate::api::functions::{Collector, Source, SourceReader, SourceStatus};
use crate::connectors::SOURCE_BATCH;
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;
use crate::runtime::time::set_current_timestamp;

type ToRecord<T> = Arc<dyn Fn(Event) -> T + Send + Sync>;

pub struct NexmarkSource<T = Event> {
    config: GeneratorConfig,
    to_record: ToRecord<T>,
}

impl NexmarkSource<Event> {
    pub fn new(config: GeneratorConfig) -> Self {
        NexmarkSource {
            config,
            to_record: Arc::new(|e| e),
        }
    }
}

impl<T> NexmarkSource<T> {
    /// Events become records through `f` (e.g. [`Event::to_value`] for the spec).
    pub fn with_records(
        config: GeneratorConfig,
        f: impl Fn(Event) -> T + Send + Sync + 'static,
    ) -> Self {
        NexmarkSource {
            config,
            to_record: Arc::new(f),
        }
    }
}

impl<T: Send + 'static> Source<T> for NexmarkSource<T> {
    fn kind(&self) -> &'static str {
        "nexmark"
    }
    fn create_reader(&self, ctx: &SubtaskContext) -> Result<Box<dyn SourceReader<T>>, BoxError> {
        Ok(Box::new(NexmarkReader {
            config: self.config,
            to_record: self.to_record.clone(),
            subtask: u64::from(ctx.subtask),
            parallelism: u64::from(ctx.parallelism.max(1)),
            next: u64::from(ctx.subtask),
            done_before: Vec::new(),
            emitted: 0,
            started: Instant::now(),
        }))
    }
}

struct NexmarkReader<T> {
    config: GeneratorConfig,
    to_record: ToRecord<T>,
    subtask: u64,
    parallelism: u64,
    /// The next event number this subtask generates.
    next: u64,
    /// After a restore at another parallelism: event `n` was emitted already when
    /// `n < done_before[n % done_before.len()]` (the old subtasks' positions).
    done_before: Vec<u64>,
    /// Events emitted since the reader started (for pacing).
    emitted: u64,
    started: Instant,
}

impl<T> NexmarkReader<T> {
    fn already_emitted(&self, n: u64) -> bool {
        !self.done_before.is_empty()
            && n < self.done_before[(n % self.done_before.len() as u64) as usize]
    }
}

impl<T: Send> SourceReader<T> for NexmarkReader<T> {
    fn poll_next(&mut self, out: &mut Collector<'_, T>) -> Result<SourceStatus, BoxError> {
        let mut budget = SOURCE_BATCH as u64;
        if let Some(rate) = self.config.max_events_per_second {
            // Only as many as the wall clock allows; wait at most a little for the next.
            // This subtask's share of the rate.
            let due = (self.started.elapsed().as_secs_f64() * rate as f64 / self.parallelism as f64)
                as u64;
            if due <= self.emitted {
                std::thread::sleep(Duration::from_millis(1));
                return Ok(SourceStatus::Idle);
            }
            budget = budget.min(due - self.emitted);
        }
        while budget > 0 {
            if self.config.events.is_some_and(|total| self.next >= total) {
                return Ok(SourceStatus::Finished);
            }
            let n = self.next;
            self.next += self.parallelism;
            if self.already_emitted(n) {
                continue;
            }
            let event = event_at(&self.config, n);
            // The event's own time is the record's timestamp (for event-time windows).
            set_current_timestamp(event.date_time());
            out.collect((self.to_record)(event));
            self.emitted += 1;
            budget -= 1;
        }
        Ok(
            if self.config.events.is_some_and(|total| self.next >= total) {
                SourceStatus::Finished
            } else {
                SourceStatus::MoreAvailable
            },
        )
    }

    /// `[parallelism, subtask, next]`, little-endian u64s.
    fn snapshot(&mut self) -> Result<Vec<u8>, BoxError> {
        let mut v = Vec::with_capacity(24);
        for x in [self.parallelism, self.subtask, self.next] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        // A restore at another parallelism after a restore at another parallelism would
        // need the older positions too; keep them.
        for x in &self.done_before {
            v.extend_from_slice(&x.to_le_bytes());
        }
        Ok(v)
    }

    fn restore_from_all(&mut self, states: &[Vec<u8>]) -> Result<bool, BoxError> {
        let mut old: Vec<(u64, u64, u64, Vec<u64>)> = Vec::new();
        for s in states.iter().filter(|s| !s.is_empty()) {
            if s.len() < 24 || s.len() % 8 != 0 {
                return Err(format!(
                    "nexmark source snapshot of {} bytes is not 3+ u64s",
                    s.len()
                )
                .into());
            }
            let words: Vec<u64> = s
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            old.push((words[0], words[1], words[2], words[3..].to_vec()));
        }
        let Some(&(old_p, ..)) = old.first() else {
            return Ok(true);
        };
        if old.len() as u64 != old_p || old.iter().any(|o| o.0 != old_p) {
            return Err(format!(
                "nexmark source: the checkpoint has {} subtask positions for parallelism {old_p}",
                old.len()
            )
            .into());
        }
        old.sort_by_key(|o| o.1);
        // Event n of the old run was emitted when n < next of its old subtask (n % old_p).
        let done_before: Vec<u64> = old.iter().map(|o| o.2).collect();
        let lowest = done_before.iter().copied().min().unwrap_or(0);
        // Older positions from a restore before this one still hold below `lowest`.
        let older = old[0].3.clone();
        self.done_before = if older.is_empty() {
            done_before
        } else {
            // Rare: two rescales without a full pass in between. Fold both into positions
            // over the least common multiple of the two parallelisms.
            let lcm = lcm(old_p, older.len() as u64);
            (0..lcm)
                .map(|r| {
                    done_before[(r % old_p) as usize].max(older[(r % older.len() as u64) as usize])
                })
                .collect()
        };
        // Start at the first event of this subtask at or after the lowest old position.
        let first = lowest - lowest % self.parallelism + self.subtask;
        self.next = if first < lowest {
            first + self.parallelism
        } else {
            first
        };
        if self.done_before.iter().all(|&d| d <= self.next) {
            self.done_before.clear();
        }
        Ok(true)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TaskError;
    use crate::runtime::message::Signal;
    use crate::runtime::output::Output;

    struct Times(Vec<i64>);

    impl Output<Event> for Times {
        fn emit(&mut self, e: Event) -> Result<(), TaskError> {
            self.0.push(e.date_time());
            Ok(())
        }
        fn signal(&mut self, _: Signal) -> Result<(), TaskError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), TaskError> {
            Ok(())
        }
    }

    fn reader(subtask: u64, parallelism: u64, events: u64) -> NexmarkReader<Event> {
        NexmarkReader {
            config: GeneratorConfig {
                events: Some(events),
                events_per_second: 1000,
                ..GeneratorConfig::default()
            },
            to_record: Arc::new(|e| e),
            subtask,
            parallelism,
            next: subtask,
            done_before: Vec::new(),
            emitted: 0,
            started: Instant::now(),
        }
    }

    /// Polls until `emitted` events came out (whole batches) or the end.
    fn poll(r: &mut NexmarkReader<Event>, polls: usize, out: &mut Times) -> SourceStatus {
        let mut status = SourceStatus::MoreAvailable;
        for _ in 0..polls {
            let mut c = Collector::new(out);
            status = r.poll_next(&mut c).unwrap();
            if status == SourceStatus::Finished {
                break;
            }
        }
        status
    }

    /// A run at parallelism 2 checkpointed after uneven progress, restored at 3 and then
    /// at 1 (two rescales), emits every event exactly once.
    #[test]
    fn restores_at_other_parallelisms_without_gaps_or_repeats() {
        let total = 20_000;
        let mut out = Times(Vec::new());
        let mut old: Vec<NexmarkReader<Event>> = (0..2).map(|s| reader(s, 2, total)).collect();
        poll(&mut old[0], 3, &mut out);
        poll(&mut old[1], 1, &mut out);
        let states: Vec<Vec<u8>> = old.iter_mut().map(|r| r.snapshot().unwrap()).collect();

        let mut mid: Vec<NexmarkReader<Event>> = (0..3).map(|s| reader(s, 3, total)).collect();
        for (s, r) in mid.iter_mut().enumerate() {
            assert!(r.restore_from_all(&states).unwrap());
            poll(r, s + 1, &mut out);
        }
        let states: Vec<Vec<u8>> = mid.iter_mut().map(|r| r.snapshot().unwrap()).collect();

        let mut last = reader(0, 1, total);
        assert!(last.restore_from_all(&states).unwrap());
        assert_eq!(poll(&mut last, 1000, &mut out), SourceStatus::Finished);

        let mut times = out.0;
        times.sort_unstable();
        let expected: Vec<i64> = (0..total as i64).collect();
        assert_eq!(times.len(), expected.len(), "no event twice, none missing");
        assert_eq!(times, expected);
    }
}
