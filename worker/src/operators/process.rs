//! The operator behind `KeyedStream::process`: runs a `KeyedProcessFunction` with per-key
//! state and timers. Timers live in the key's entry (checkpointed with its state, by key
//! group); the operator's time-ordered queues are rebuilt from them on restore, and a timer
//! is removed from its key before it fires, so a restore never fires it twice.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use streamjob_crds::keygroup::key_group_of_hash;

use crate::codec::key_hash::stable_hash;
use crate::codec::state::{KeyedStateWriter, Restore, read_keyed_state};
use crate::error::TaskError;
use crate::operators::OpId;
use crate::operators::process_fn::{KeyEntry, KeyedContext, KeyedProcessFunction, TimerDomain};
use crate::operators::timed_state;
use crate::operators::window::WindowKeyFn;
use crate::runtime::checkpoint::Coordinator;
use crate::runtime::functions::Collector;
use crate::runtime::message::Signal;
use crate::runtime::output::Output;
use crate::runtime::time::{Clock, NO_TIMESTAMP, current_timestamp, with_timestamp};
use crate::state::{HashMapValueState, ValueState};

type Queue<KO> = BTreeMap<i64, Vec<(u32, u64, KO)>>;

const MAGIC: &[u8; 5] = b"SJkpf";
const FORMAT_VERSION: u8 = 1;

pub(crate) struct KeyedProcessOperator<T, K: ?Sized + ToOwned, F: KeyedProcessFunction<K, T>> {
    pub key: WindowKeyFn<T, K>,
    pub f: Arc<F>,
    pub state: HashMapValueState<K, KeyEntry<F::State>>,
    pub event_queue: Queue<K::Owned>,
    pub processing_queue: Queue<K::Owned>,
    pub watermark: i64,
    pub clock: Arc<dyn Clock>,
    pub max_parallelism: u32,
    pub next: Box<dyn Output<F::Out>>,
    pub id: OpId,
    pub checkpoint: Option<(Arc<Coordinator>, Arc<str>)>,
}

impl<T, K, F> KeyedProcessOperator<T, K, F>
where
    T: Send + 'static,
    K: ?Sized + ToOwned + Eq + Serialize + Send + Sync + 'static,
    K::Owned: Borrow<K> + Clone + Serialize + DeserializeOwned + Send + 'static,
    F: KeyedProcessFunction<K, T>,
{
    /// Calls the function for one key; `call` gets the context and the collector.
    fn with_key(
        &mut self,
        group: u32,
        hash: u64,
        key: &K::Owned,
        timestamp: Option<i64>,
        domain: Option<TimerDomain>,
        call: impl FnOnce(&F, &mut KeyedContext<'_, K, F::State>, &mut Collector<'_, F::Out>),
    ) -> Result<(), TaskError> {
        if self.state.get_mut(group, hash, key.borrow()).is_none() {
            self.state
                .put(group, hash, key.clone(), KeyEntry::default());
        }
        let processing_time = self.clock.now_ms();
        let entry = self
            .state
            .get_mut(group, hash, key.borrow())
            .expect("inserted above");
        let mut ctx = KeyedContext {
            key: key.borrow(),
            timestamp,
            watermark: self.watermark,
            processing_time,
            domain,
            entry,
            new_timers: Vec::new(),
        };
        let mut out = Collector::new(&mut *self.next);
        let f = &*self.f;
        self.id.guard(|| call(f, &mut ctx, &mut out))?;
        out.into_result()?;
        let new_timers = std::mem::take(&mut ctx.new_timers);
        let empty = ctx.entry.event_timers.is_empty()
            && ctx.entry.processing_timers.is_empty()
            && ctx.entry.state == F::State::default();
        for (d, t) in new_timers {
            let q = match d {
                TimerDomain::EventTime => &mut self.event_queue,
                TimerDomain::ProcessingTime => &mut self.processing_queue,
            };
            q.entry(t).or_default().push((group, hash, key.clone()));
        }
        if empty {
            self.state.remove(group, hash, key.borrow());
        }
        Ok(())
    }

    fn fire_due(&mut self, domain: TimerDomain, upto: i64) -> Result<(), TaskError> {
        loop {
            let queue = match domain {
                TimerDomain::EventTime => &mut self.event_queue,
                TimerDomain::ProcessingTime => &mut self.processing_queue,
            };
            let Some(entry) = queue.first_entry() else {
                return Ok(());
            };
            if *entry.key() > upto {
                return Ok(());
            }
            let (time, keys) = entry.remove_entry();
            for (group, hash, key) in keys {
                // Deleted (or already fired) timers are no longer in the key's set.
                let Some(e) = self.state.get_mut(group, hash, key.borrow()) else {
                    continue;
                };
                let set = match domain {
                    TimerDomain::EventTime => &mut e.event_timers,
                    TimerDomain::ProcessingTime => &mut e.processing_timers,
                };
                if !set.remove(&time) {
                    continue;
                }
                let ts = match domain {
                    TimerDomain::EventTime => Some(time),
                    TimerDomain::ProcessingTime => None,
                };
                with_timestamp(ts.unwrap_or(NO_TIMESTAMP), || {
                    self.with_key(group, hash, &key, ts, Some(domain), |f, ctx, out| {
                        f.on_timer(time, ctx, out)
                    })
                })?;
            }
        }
    }

    pub fn snapshot(&self) -> Result<Vec<u8>, String> {
        let out = timed_state::start(MAGIC, FORMAT_VERSION, self.watermark);
        let mut w = KeyedStateWriter::appending_to(out);
        for g in self.state.key_groups().as_range() {
            for (k, v) in self.state.iter_group(g) {
                w.push(g, k.borrow(), v).map_err(|e| e.to_string())?;
            }
        }
        Ok(w.finish())
    }

    /// Loads this subtask's key groups (any old parallelism) and rebuilds the timer queues.
    pub fn restore(&mut self, snapshots: &[(u32, Vec<u8>)]) -> Result<(), String> {
        let restore = Restore {
            owned: self.state.key_groups(),
            max_parallelism: self.max_parallelism,
            hash: |key: &K::Owned| stable_hash(key.borrow()),
        };
        let mut watermark: Option<i64> = None;
        for (subtask, snap) in snapshots {
            let bad =
                |what: &str| format!("process function state of old subtask {subtask}: {what}");
            let (wm, blob) =
                timed_state::split(snap, MAGIC, FORMAT_VERSION, "process function state")
                    .map_err(|e| bad(&e))?;
            watermark = Some(watermark.map_or(wm, |m| m.min(wm)));
            let (state, eq, pq) = (
                &mut self.state,
                &mut self.event_queue,
                &mut self.processing_queue,
            );
            read_keyed_state(
                blob,
                &restore,
                |g, hash, key: K::Owned, e: KeyEntry<F::State>| {
                    for t in &e.event_timers {
                        eq.entry(*t).or_default().push((g, hash, key.clone()));
                    }
                    for t in &e.processing_timers {
                        pq.entry(*t).or_default().push((g, hash, key.clone()));
                    }
                    state.put(g, hash, key, e);
                },
            )
            .map_err(|e| bad(&e.to_string()))?;
        }
        if let Some(w) = watermark {
            self.watermark = self.watermark.max(w);
        }
        Ok(())
    }

    fn write_snapshot(&self, checkpoint: Option<u64>) -> Result<(), TaskError> {
        let Some((c, uid)) = &self.checkpoint else {
            return Ok(());
        };
        let bytes = self
            .snapshot()
            .map_err(|e| self.id.fail(format!("cannot snapshot state: {e}")))?;
        match checkpoint {
            Some(id) => c
                .write_state(id, uid, self.id.subtask, &bytes)
                .map_err(|e| self.id.fail(format!("cannot write checkpoint {id}: {e}"))),
            None => {
                c.register_final(uid, self.id.subtask, bytes);
                Ok(())
            }
        }
    }
}

impl<T, K, F> Output<T> for KeyedProcessOperator<T, K, F>
where
    T: Send + 'static,
    K: ?Sized + ToOwned + Eq + Serialize + Send + Sync + 'static,
    K::Owned: Borrow<K> + Clone + Serialize + DeserializeOwned + Send + 'static,
    F: KeyedProcessFunction<K, T>,
{
    fn emit(&mut self, item: T) -> Result<(), TaskError> {
        if !self.processing_queue.is_empty() {
            let now = self.clock.now_ms();
            self.fire_due(TimerDomain::ProcessingTime, now)?;
        }
        let key_fn = self.key.clone();
        let key: K::Owned = self
            .id
            .guard(|| key_fn(&item).map(|k| (*k).to_owned()))?
            .map_err(|e| self.id.fail(format!("key selector failed: {e}")))?;
        let hash = stable_hash(key.borrow());
        let group = key_group_of_hash(hash, self.max_parallelism);
        if !self.state.key_groups().contains(group) {
            return Err(self.id.fail(format!(
                "internal error: key group {group} reached a subtask owning {:?}",
                self.state.key_groups()
            )));
        }
        let ts = current_timestamp();
        let ts = (ts != NO_TIMESTAMP).then_some(ts);
        self.with_key(group, hash, &key, ts, None, |f, ctx, out| {
            f.process_element(item, ctx, out)
        })
    }

    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        match signal {
            Signal::Watermark(w) if w > self.watermark => {
                self.watermark = w;
                self.fire_due(TimerDomain::EventTime, w)?;
            }
            Signal::Barrier(b) => self.write_snapshot(Some(b.id))?,
            Signal::EndOfInput => self.write_snapshot(None)?,
            _ => {}
        }
        self.next.signal(signal)
    }

    fn flush(&mut self) -> Result<(), TaskError> {
        if !self.processing_queue.is_empty() {
            let now = self.clock.now_ms();
            self.fire_due(TimerDomain::ProcessingTime, now)?;
        }
        self.next.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Mutex;

    use streamjob_crds::KeyGroupRange;

    use super::*;
    use crate::runtime::time::{MAX_WATERMARK, ManualClock, set_current_timestamp};

    /// On every record: a processing-time timer 100 ms later and an event-time timer at the
    /// record's timestamp + 10; timers emit (key, domain, time, records so far).
    struct Timers;
    impl KeyedProcessFunction<str, String> for Timers {
        type State = u64;
        type Out = (String, &'static str, i64, u64);
        fn process_element(
            &self,
            _value: String,
            ctx: &mut KeyedContext<'_, str, u64>,
            _out: &mut Collector<'_, Self::Out>,
        ) {
            *ctx.state() += 1;
            let now = ctx.current_processing_time();
            ctx.register_processing_time_timer(now + 100);
            let ts = ctx.timestamp().expect("timestamped");
            ctx.register_event_time_timer(ts + 10);
        }
        fn on_timer(
            &self,
            timestamp: i64,
            ctx: &mut KeyedContext<'_, str, u64>,
            out: &mut Collector<'_, Self::Out>,
        ) {
            let d = match ctx.timer_domain() {
                Some(TimerDomain::EventTime) => "event",
                _ => "processing",
            };
            let n = *ctx.state();
            out.collect((ctx.get_current_key().to_string(), d, timestamp, n));
        }
    }

    type Fired = (String, &'static str, i64, u64);

    struct Sink(Arc<Mutex<Vec<Fired>>>);
    impl Output<Fired> for Sink {
        fn emit(&mut self, item: Fired) -> Result<(), TaskError> {
            self.0.lock().unwrap().push(item);
            Ok(())
        }
        fn signal(&mut self, _: Signal) -> Result<(), TaskError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), TaskError> {
            Ok(())
        }
    }

    fn op(
        clock: &ManualClock,
        out: &Arc<Mutex<Vec<Fired>>>,
    ) -> KeyedProcessOperator<String, str, Timers> {
        KeyedProcessOperator {
            key: Arc::new(|s: &String| Ok(Cow::Borrowed(s.as_str()))),
            f: Arc::new(Timers),
            state: HashMapValueState::new(KeyGroupRange::for_subtask(0, 1, 128)),
            event_queue: Default::default(),
            processing_queue: Default::default(),
            watermark: i64::MIN,
            clock: Arc::new(clock.clone()),
            max_parallelism: 128,
            next: Box::new(Sink(out.clone())),
            id: OpId {
                name: "p".into(),
                subtask: 0,
            },
            checkpoint: None,
        }
    }

    #[test]
    fn timers_fire_once_by_clock_and_watermark_and_survive_a_restore() {
        let clock = ManualClock::new(1_000);
        let out = Arc::new(Mutex::new(vec![]));
        let mut p = op(&clock, &out);
        set_current_timestamp(5);
        p.emit("a".into()).unwrap();
        p.emit("a".into()).unwrap(); // same timers: one per key and time
        set_current_timestamp(50);
        p.emit("b".into()).unwrap();
        p.signal(Signal::Watermark(20)).unwrap();
        assert_eq!(
            std::mem::take(&mut *out.lock().unwrap()),
            vec![("a".into(), "event", 15, 2)]
        );
        // Snapshot with b's event timer and both processing timers pending.
        let snap = p.snapshot().unwrap();
        clock.set(1_100);
        p.flush().unwrap();
        let mut fired = std::mem::take(&mut *out.lock().unwrap());
        fired.sort();
        assert_eq!(
            fired,
            vec![
                ("a".into(), "processing", 1100, 2),
                ("b".into(), "processing", 1100, 1)
            ]
        );
        // Restored from before those fired: they fire again there (that run never saw
        // them), a's event timer does not (it fired before the snapshot), b's does.
        let mut q = op(&clock, &out);
        q.restore(&[(0, snap)]).unwrap();
        q.flush().unwrap();
        q.signal(Signal::Watermark(MAX_WATERMARK)).unwrap();
        let mut fired = std::mem::take(&mut *out.lock().unwrap());
        fired.sort();
        assert_eq!(
            fired,
            vec![
                ("a".into(), "processing", 1100, 2),
                ("b".into(), "event", 60, 1),
                ("b".into(), "processing", 1100, 1)
            ]
        );
    }
}
