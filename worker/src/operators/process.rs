//! The operator behind `KeyedStream::process`: runs a `KeyedProcessFunction` with per-key
//! state and timers. Timers live in the key's entry (checkpointed with its state, by key
//! group); the operator's time-ordered queues are rebuilt from them on restore, and a timer
//! is removed from its key before it fires, so a restore never fires it twice.
//!
//! A snapshot names the function's states (name, kind, type) before the keyed entries, so a
//! restore into a job that declares them differently fails naming the state instead of
//! misreading it. Expired TTL entries are swept at every snapshot (and left out of it) and
//! once per shortest TTL (at least a second) of processing time.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use streamjob_crds::KeyGroupRange;
use streamjob_crds::keygroup::key_group_of_hash;

use crate::codec::key_hash::stable_hash;
use crate::codec::state::{KeyedStateWriter, Restore, read_keyed_state};
use crate::error::TaskError;
use crate::operators::OpId;
use crate::operators::keyed_state::{StateDeclarations, StateKind, StateTable, describe};
use crate::operators::process_fn::{KeyEntry, KeyedContext, KeyedProcessFunction, TimerDomain};
use crate::operators::side_output::{ProcessOutput, SideBuffer};
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
/// Shortest time between two sweeps of expired TTL entries.
const MIN_SWEEP_INTERVAL_MS: i64 = 1_000;
/// 2: the state table after the header and named states in each key's entry.
const FORMAT_VERSION: u8 = 2;

/// The states a snapshot holds, checked against the job's before any entry is read.
#[derive(Serialize, Deserialize)]
struct SnapshotStates {
    /// Type name of the function's `State`.
    function_state: String,
    states: Vec<(String, StateKind, String)>,
}

/// A key's entry in a snapshot: named states as (index in `SnapshotStates`, encoding).
#[derive(Serialize)]
struct EntryOut<'a, S> {
    state: &'a S,
    event_timers: &'a BTreeSet<i64>,
    processing_timers: &'a BTreeSet<i64>,
    named: Vec<(u32, Vec<u8>)>,
}

#[derive(Deserialize)]
struct EntryIn<S> {
    state: S,
    event_timers: BTreeSet<i64>,
    processing_timers: BTreeSet<i64>,
    named: Vec<(u32, Vec<u8>)>,
}

/// Emits main records of a process function as `ProcessOutput::Main`.
struct MainOutput<'a, O>(&'a mut dyn Output<ProcessOutput<O>>);

impl<O> Output<O> for MainOutput<'_, O> {
    #[inline]
    fn emit(&mut self, item: O) -> Result<(), TaskError> {
        self.0.emit(ProcessOutput::Main(item))
    }
    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        self.0.signal(signal)
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        self.0.flush()
    }
}

pub(crate) struct KeyedProcessOperator<T, K: ?Sized + ToOwned, F: KeyedProcessFunction<K, T>> {
    key: WindowKeyFn<T, K>,
    f: Arc<F>,
    state: HashMapValueState<K, KeyEntry<F::State>>,
    states: StateTable,
    side: SideBuffer,
    event_queue: Queue<K::Owned>,
    processing_queue: Queue<K::Owned>,
    watermark: i64,
    clock: Arc<dyn Clock>,
    /// Processing time of the next sweep of expired TTL entries.
    next_sweep: i64,
    max_parallelism: u32,
    next: Box<dyn Output<ProcessOutput<F::Out>>>,
    id: OpId,
    checkpoint: Option<(Arc<Coordinator>, Arc<str>)>,
}

/// Where and how a process operator runs.
pub(crate) struct ProcessSetup {
    pub key_groups: KeyGroupRange,
    pub max_parallelism: u32,
    pub clock: Arc<dyn Clock>,
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
    /// Fails if the function declares a state name twice.
    pub fn new(
        key: WindowKeyFn<T, K>,
        f: Arc<F>,
        setup: ProcessSetup,
        next: Box<dyn Output<ProcessOutput<F::Out>>>,
    ) -> Result<Self, String> {
        let mut declared = StateDeclarations::default();
        f.declare_state(&mut declared);
        Ok(KeyedProcessOperator {
            key,
            f,
            state: HashMapValueState::new(setup.key_groups),
            states: StateTable::new(declared)?,
            side: SideBuffer::default(),
            event_queue: Default::default(),
            processing_queue: Default::default(),
            watermark: i64::MIN,
            clock: setup.clock,
            next_sweep: i64::MIN,
            max_parallelism: setup.max_parallelism,
            next,
            id: setup.id,
            checkpoint: setup.checkpoint,
        })
    }

    /// Calls the function for one key; `call` gets the context and the collector.
    #[allow(clippy::too_many_arguments)]
    fn with_key(
        &mut self,
        group: u32,
        hash: u64,
        key: &K::Owned,
        timestamp: Option<i64>,
        domain: Option<TimerDomain>,
        processing_time: i64,
        call: impl FnOnce(&F, &mut KeyedContext<'_, K, F::State>, &mut Collector<'_, F::Out>),
    ) -> Result<(), TaskError> {
        let entry = self
            .state
            .get_or_insert_with(group, hash, key.borrow(), || {
                (key.clone(), KeyEntry::default())
            });
        let mut ctx = KeyedContext {
            key: key.borrow(),
            timestamp,
            watermark: self.watermark,
            processing_time,
            domain,
            entry,
            states: &self.states,
            side: &mut self.side,
            new_timers: Vec::new(),
        };
        let mut main = MainOutput(&mut *self.next);
        let mut out = Collector::new(&mut main);
        let f = &*self.f;
        self.id.guard(|| call(f, &mut ctx, &mut out))?;
        out.into_result()?;
        let new_timers = std::mem::take(&mut ctx.new_timers);
        let empty = ctx.entry.is_empty();
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
        if let Some(e) = self.side.error.take() {
            self.side.records.clear();
            return Err(self.id.fail(e));
        }
        for r in self.side.records.drain(..) {
            self.next.emit(ProcessOutput::Side(r))?;
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
                let now = self.clock.now_ms();
                with_timestamp(ts.unwrap_or(NO_TIMESTAMP), || {
                    self.with_key(group, hash, &key, ts, Some(domain), now, |f, ctx, out| {
                        f.on_timer(time, ctx, out)
                    })
                })?;
            }
        }
    }

    /// Drops expired TTL entries of every key (and keys left with nothing).
    fn sweep_expired(&mut self, now: i64) {
        let Some(ttl) = self.states.min_ttl_ms() else {
            return;
        };
        // A sweep visits every key: at most once a second, whatever the TTL.
        self.next_sweep = now.saturating_add(ttl.max(MIN_SWEEP_INTERVAL_MS));
        let mut expired = Vec::new();
        for g in self.state.key_groups().as_range() {
            for (k, e) in self.state.iter_group(g) {
                if self.states.any_expired(&e.named, now) {
                    expired.push((g, k.clone()));
                }
            }
        }
        for (g, k) in expired {
            let hash = stable_hash(k.borrow());
            let Some(e) = self.state.get_mut(g, hash, k.borrow()) else {
                continue;
            };
            self.states.purge(&mut e.named, now);
            if e.is_empty() {
                self.state.remove(g, hash, k.borrow());
            }
        }
    }

    /// Sweeps expired entries once per shortest TTL (at least a second) of processing time.
    fn maybe_sweep(&mut self, now: i64) {
        if self.states.min_ttl_ms().is_some() && now >= self.next_sweep {
            self.sweep_expired(now);
        }
    }

    /// The operator's state (expired TTL entries are dropped first, so they are not in it).
    pub fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        self.sweep_expired(self.clock.now_ms());
        let mut out = timed_state::start(MAGIC, FORMAT_VERSION, self.watermark);
        let table = SnapshotStates {
            function_state: std::any::type_name::<F::State>().to_string(),
            states: self
                .states
                .iter()
                .map(|d| (d.name.to_string(), d.kind, d.type_name.clone()))
                .collect(),
        };
        crate::codec::append(&table, &mut out).map_err(|e| e.to_string())?;
        let mut w = KeyedStateWriter::appending_to(out);
        for g in self.state.key_groups().as_range() {
            for (k, e) in self.state.iter_group(g) {
                let mut named = Vec::new();
                for (i, slot) in e.named.iter().enumerate() {
                    if let Some(s) = slot {
                        let d = self.states.get(i);
                        let bytes = (d.encode)(&**s)
                            .map_err(|err| format!("cannot encode {}: {err}", d.describe()))?;
                        named.push((i as u32, bytes));
                    }
                }
                let entry = EntryOut {
                    state: &e.state,
                    event_timers: &e.event_timers,
                    processing_timers: &e.processing_timers,
                    named,
                };
                w.push(g, k.borrow(), &entry).map_err(|e| e.to_string())?;
            }
        }
        Ok(w.finish())
    }

    /// Maps a snapshot's states to the declared ones (by name): an error names the first
    /// state that the job does not declare alike.
    fn match_states(&self, snap: &SnapshotStates) -> Result<Vec<usize>, String> {
        let ours = std::any::type_name::<F::State>();
        if snap.function_state != ours {
            return Err(format!(
                "the function's State type differs: the snapshot holds {}, the job has {ours}",
                snap.function_state
            ));
        }
        snap.states
            .iter()
            .map(|(name, kind, type_name)| {
                let theirs = describe(*kind, name, type_name);
                let Some(i) = self.states.index_of(name) else {
                    return Err(format!(
                        "the snapshot holds {theirs}, which the process function does not \
                         declare (declare it in declare_state to restore it)"
                    ));
                };
                let d = self.states.get(i);
                if d.kind != *kind || d.type_name != *type_name {
                    return Err(format!(
                        "the snapshot holds {theirs}, the job declares {}",
                        d.describe()
                    ));
                }
                Ok(i)
            })
            .collect()
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
            let (wm, rest) =
                timed_state::split(snap, MAGIC, FORMAT_VERSION, "process function state")
                    .map_err(|e| bad(&e))?;
            let (table, blob) = postcard::take_from_bytes::<SnapshotStates>(rest)
                .map_err(|e| bad(&format!("cannot read its list of states: {e}")))?;
            let index = self.match_states(&table).map_err(|e| bad(&e))?;
            watermark = Some(watermark.map_or(wm, |m| m.min(wm)));
            let (state, eq, pq, states) = (
                &mut self.state,
                &mut self.event_queue,
                &mut self.processing_queue,
                &self.states,
            );
            let mut failed: Option<String> = None;
            read_keyed_state(
                blob,
                &restore,
                |g, hash, key: K::Owned, e: EntryIn<F::State>| {
                    if failed.is_some() {
                        return;
                    }
                    let mut named = Vec::new();
                    for (i, bytes) in e.named {
                        let Some(&ours) = index.get(i as usize) else {
                            failed = Some(format!("a key has state number {i}, not in the list"));
                            return;
                        };
                        let d = states.get(ours);
                        match (d.decode)(&bytes) {
                            Ok(slot) => {
                                if named.len() <= ours {
                                    named.resize_with(states.len(), || None);
                                }
                                named[ours] = Some(slot);
                            }
                            Err(err) => {
                                failed = Some(format!(
                                    "cannot decode {} of key group {g}: {err}",
                                    d.describe()
                                ));
                                return;
                            }
                        }
                    }
                    for t in &e.event_timers {
                        eq.entry(*t).or_default().push((g, hash, key.clone()));
                    }
                    for t in &e.processing_timers {
                        pq.entry(*t).or_default().push((g, hash, key.clone()));
                    }
                    let entry = KeyEntry {
                        state: e.state,
                        event_timers: e.event_timers,
                        processing_timers: e.processing_timers,
                        named,
                    };
                    state.put(g, hash, key, entry);
                },
            )
            .map_err(|e| bad(&e.to_string()))?;
            if let Some(e) = failed {
                return Err(bad(&e));
            }
        }
        if let Some(w) = watermark {
            self.watermark = self.watermark.max(w);
        }
        Ok(())
    }

    fn write_snapshot(&mut self, checkpoint: Option<u64>) -> Result<(), TaskError> {
        if self.checkpoint.is_none() {
            return Ok(());
        }
        let bytes = self
            .snapshot()
            .map_err(|e| self.id.fail(format!("cannot snapshot state: {e}")))?;
        let (c, uid) = self.checkpoint.as_ref().expect("checked above");
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
        let now = self.clock.now_ms();
        if !self.processing_queue.is_empty() {
            self.fire_due(TimerDomain::ProcessingTime, now)?;
        }
        self.maybe_sweep(now);
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
        self.with_key(group, hash, &key, ts, None, now, |f, ctx, out| {
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
            Signal::EndOfInput => {
                self.write_snapshot(None)?;
                // As in the window operator: processing-time timers do not fire after the end
                // of input. The task still flushes its chain while it waits for the final
                // checkpoint, and a timer firing then would send output after `EndOfInput`
                // to a subtask that may have finished. The snapshot above keeps them.
                self.processing_queue = Default::default();
            }
            _ => {}
        }
        self.next.signal(signal)
    }

    fn flush(&mut self) -> Result<(), TaskError> {
        let now = self.clock.now_ms();
        if !self.processing_queue.is_empty() {
            self.fire_due(TimerDomain::ProcessingTime, now)?;
        }
        self.maybe_sweep(now);
        self.next.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Mutex;

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
    impl Output<ProcessOutput<Fired>> for Sink {
        fn emit(&mut self, item: ProcessOutput<Fired>) -> Result<(), TaskError> {
            let ProcessOutput::Main(item) = item else {
                panic!("no side outputs here")
            };
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
        KeyedProcessOperator::new(
            Arc::new(|s: &String| Ok(Cow::Borrowed(s.as_str()))),
            Arc::new(Timers),
            ProcessSetup {
                key_groups: KeyGroupRange::for_subtask(0, 1, 128),
                max_parallelism: 128,
                clock: Arc::new(clock.clone()),
                id: OpId {
                    name: "p".into(),
                    subtask: 0,
                },
                checkpoint: None,
            },
            Box::new(Sink(out.clone())),
        )
        .unwrap()
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

    /// Regression: a processing-time timer fired from the flush after `EndOfInput`.
    #[test]
    fn processing_time_timers_do_not_fire_after_the_end_of_input() {
        let clock = ManualClock::new(1_000);
        let out = Arc::new(Mutex::new(vec![]));
        let mut p = op(&clock, &out);
        set_current_timestamp(5);
        p.emit("a".into()).unwrap();
        p.signal(Signal::EndOfInput).unwrap();
        clock.set(1_100);
        p.flush().unwrap();
        assert!(out.lock().unwrap().is_empty());
    }
}

#[cfg(test)]
#[path = "process_state_tests.rs"]
mod state_tests;
