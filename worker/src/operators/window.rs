//! The keyed window operator: time windows (tumbling, sliding, session) in event or
//! processing time, with allowed lateness and a late-data side output, generic over the
//! record type and the per-window aggregation ([`WindowAggregator`]). Count windows are
//! [`super::count_window`]'s.
//!
//! State: per key (in its key group) the key's open windows, each with its accumulator and
//! whether it has fired (a fired window is kept until the watermark passes its end plus the
//! allowed lateness, so late records update it). Timers are not stored: they follow from the
//! windows (fire at the window's max timestamp unless fired, clean up at max timestamp +
//! allowed lateness), so a restore rebuilds them and never fires a window twice. The
//! operator's watermark is stored too, so a restored job treats late records as the
//! uninterrupted one did.

use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use streamjob_crds::expr::Value;
use streamjob_crds::keygroup::key_group_of_hash;
use tracing::{info, warn};

use crate::codec::key_hash::stable_hash;
use crate::codec::state::{KeyedStateWriter, Restore, read_keyed_state};
use crate::error::{BoxError, TaskError};
use crate::operators::OpId;
use crate::operators::timed_state;
use crate::operators::windows::{
    EmitFn, TimeDomain, Window, WindowAggregator, WindowAssigner, WindowContext, WindowOutput,
};
use crate::runtime::checkpoint::Coordinator;
use crate::runtime::functions::Collector;
use crate::runtime::message::Signal;
use crate::runtime::output::Output;
use crate::runtime::time::{Clock, NO_TIMESTAMP, current_timestamp, with_timestamp};
use crate::state::{HashMapValueState, ValueState};

/// Key selector of a window operator; an `Err` fails the job naming the operator.
pub(crate) type WindowKeyFn<T, K> =
    Arc<dyn for<'a> Fn(&'a T) -> Result<Cow<'a, K>, BoxError> + Send + Sync>;

/// How a window operator's windows are defined.
#[derive(Clone)]
pub struct WindowSpec {
    pub assigner: WindowAssigner,
    /// Event time only: how long after the watermark passed a window's end late records
    /// still update it (each fires the window again).
    pub allowed_lateness_ms: i64,
    /// Processing time (and `WindowContext::current_processing_time`).
    pub clock: Arc<dyn Clock>,
}

/// Where a window operator's results (and late records) go.
pub enum WindowOutputs<R, T> {
    /// Results only; late records are dropped, counted and logged.
    Plain(Box<dyn Output<R>>),
    /// Results and late records on one output, split downstream (side output).
    WithLate(Box<dyn Output<WindowOutput<R, T>>>),
}

/// Results into a [`WindowOutputs::WithLate`] output.
struct AsResult<'a, R, T>(&'a mut dyn Output<WindowOutput<R, T>>);

impl<R, T> Output<R> for AsResult<'_, R, T> {
    fn emit(&mut self, item: R) -> Result<(), TaskError> {
        self.0.emit(WindowOutput::Result(item))
    }
    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        self.0.signal(signal)
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        self.0.flush()
    }
}

impl<R, T> WindowOutputs<R, T> {
    pub(crate) fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        match self {
            WindowOutputs::Plain(n) => n.signal(signal),
            WindowOutputs::WithLate(n) => n.signal(signal),
        }
    }

    pub(crate) fn flush(&mut self) -> Result<(), TaskError> {
        match self {
            WindowOutputs::Plain(n) => n.flush(),
            WindowOutputs::WithLate(n) => n.flush(),
        }
    }

    /// Runs the emit function of a fired window into the results output.
    pub(crate) fn emit_result<K: ?Sized, O>(
        &mut self,
        emit: &EmitFn<K, O, R>,
        key: &K,
        ctx: &WindowContext,
        value: O,
        id: &OpId,
    ) -> Result<(), TaskError> {
        let run = |out: &mut dyn Output<R>| -> Result<(), TaskError> {
            let mut c = Collector::new(out);
            let r = id.guard(|| emit(key, ctx, value, &mut c))?;
            c.into_result()?;
            r.map_err(|e| id.fail(format!("window function failed: {e}")))
        };
        with_timestamp(ctx.window.max_timestamp(), || match self {
            WindowOutputs::Plain(n) => run(&mut **n),
            WindowOutputs::WithLate(n) => run(&mut AsResult(&mut **n)),
        })
    }
}

/// One open window of a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Slot<A> {
    pub window: Window,
    pub fired: bool,
    pub acc: A,
}

struct Timer<KO> {
    group: u32,
    hash: u64,
    key: KO,
    window: Window,
}

/// A key's open windows: one inline (tumbling windows, one session), more on the heap,
/// so the common case costs no extra cache miss per record.
type Slots<A> = smallvec::SmallVec<[Slot<A>; 1]>;

/// The windows a record created, and those that fire right away: inline, as a record
/// rarely creates more than one window and rarely fires any, so no allocation per record.
type Created = smallvec::SmallVec<[Window; 2]>;
type FireNow<O> = smallvec::SmallVec<[(Window, Result<O, BoxError>); 1]>;

/// Timers by time; one timer per (key, window, time) is enough because a window registers
/// its timers once, when it is created.
type Timers<KO> = BTreeMap<i64, Vec<Timer<KO>>>;

/// How many keys without open windows a subtask keeps at least before dropping them
/// (`sweep_emptied`).
const KEEP_EMPTIED: usize = 65_536;

const MAGIC: &[u8; 5] = b"SJwin";
/// 2: spec (`Value`) keys are placed by the hash every spec operator uses (version 1 hashed
/// their tagged serde form, so their key groups differ). Version 1 state is still read when
/// its keys are not `Value`s: their hash did not change.
const FORMAT_VERSION: u8 = 2;

/// The format version of a window snapshot whose keys are `KO`s, if this build reads it.
fn readable_version<KO: 'static>(snap: &[u8]) -> Result<u8, String> {
    let found = snap
        .strip_prefix(&MAGIC[..])
        .and_then(|r| r.first().copied());
    match found {
        Some(1) if std::any::TypeId::of::<KO>() == std::any::TypeId::of::<Value>() => Err(
            "window state format version 1 placed spec keys by an older key hash (their key \
             groups differ in this build): restore it with the streamjob release that wrote it"
                .into(),
        ),
        Some(1) => Ok(1),
        _ => Ok(FORMAT_VERSION),
    }
}

pub struct WindowOperator<T, K: ?Sized + ToOwned, A: WindowAggregator<T>, R> {
    key: WindowKeyFn<T, K>,
    spec: WindowSpec,
    agg: A,
    emit: EmitFn<K, A::Out, R>,
    state: HashMapValueState<K, Slots<A::Acc>>,
    event_timers: Timers<K::Owned>,
    processing_timers: Timers<K::Owned>,
    watermark: i64,
    max_parallelism: u32,
    out: WindowOutputs<R, T>,
    id: OpId,
    checkpoint: Option<(Arc<Coordinator>, Arc<str>)>,
    late_dropped: u64,
    /// Keys in `state` without open windows (see `sweep_emptied`).
    emptied: usize,
    scratch: Vec<Window>,
}

/// Everything a window operator needs besides its functions.
pub struct WindowSetup {
    pub spec: WindowSpec,
    pub key_groups: streamjob_crds::KeyGroupRange,
    pub max_parallelism: u32,
    pub id: OpId,
    pub checkpoint: Option<(Arc<Coordinator>, Arc<str>)>,
}

impl<T, K, A, R> WindowOperator<T, K, A, R>
where
    T: Clone + Send + 'static,
    K: ?Sized + ToOwned + Eq + Serialize + Send + Sync + 'static,
    K::Owned: Borrow<K> + Clone + Serialize + DeserializeOwned + Send + 'static,
    A: WindowAggregator<T>,
    R: 'static,
{
    pub fn new(
        setup: WindowSetup,
        key: WindowKeyFn<T, K>,
        agg: A,
        emit: EmitFn<K, A::Out, R>,
        out: WindowOutputs<R, T>,
    ) -> Self {
        WindowOperator {
            key,
            spec: setup.spec,
            agg,
            emit,
            state: HashMapValueState::new(setup.key_groups),
            event_timers: BTreeMap::new(),
            processing_timers: BTreeMap::new(),
            watermark: i64::MIN,
            max_parallelism: setup.max_parallelism,
            out,
            id: setup.id,
            checkpoint: setup.checkpoint,
            late_dropped: 0,
            emptied: 0,
            scratch: Vec::new(),
        }
    }

    fn event_time(&self) -> bool {
        self.spec.assigner.domain() == TimeDomain::EventTime
    }

    fn lateness(&self) -> i64 {
        if self.event_time() {
            self.spec.allowed_lateness_ms.max(0)
        } else {
            0
        }
    }

    fn fail(&self, e: impl std::fmt::Display) -> TaskError {
        self.id.fail(e)
    }

    /// Registers the timers of a new window; returns true if it must fire now (event time:
    /// the watermark already passed its end, i.e. a late record within the lateness).
    fn register(&mut self, group: u32, hash: u64, key: &K, window: Window) -> bool {
        let max = window.max_timestamp();
        let timer = |key: &K| Timer {
            group,
            hash,
            key: key.to_owned(),
            window,
        };
        if !self.event_time() {
            self.processing_timers
                .entry(max)
                .or_default()
                .push(timer(key));
            return false;
        }
        let lateness = self.lateness();
        if lateness > 0 {
            self.event_timers
                .entry(max.saturating_add(lateness))
                .or_default()
                .push(timer(key));
        }
        if max <= self.watermark {
            return true;
        }
        self.event_timers.entry(max).or_default().push(timer(key));
        false
    }

    fn context(&self, window: Window) -> WindowContext {
        WindowContext {
            window,
            current_watermark: self.watermark,
            current_processing_time: self.spec.clock.now_ms(),
        }
    }

    /// A record later than every window it belongs to.
    fn late(&mut self, item: T, ts: i64) -> Result<(), TaskError> {
        match &mut self.out {
            WindowOutputs::WithLate(next) => next.emit(WindowOutput::Late(item)),
            WindowOutputs::Plain(_) => {
                self.late_dropped += 1;
                if self.late_dropped.is_power_of_two() {
                    warn!(
                        operator = %self.id.name,
                        subtask = self.id.subtask,
                        timestamp = ts,
                        watermark = self.watermark,
                        dropped = self.late_dropped,
                        "dropped a record later than the allowed lateness \
                         (side_output_late_data keeps late records)"
                    );
                }
                Ok(())
            }
        }
    }

    fn fire(&mut self, key: &K, window: Window, value: A::Out) -> Result<(), TaskError> {
        let ctx = self.context(window);
        self.out.emit_result(&self.emit, key, &ctx, value, &self.id)
    }

    /// A timer of `timer.window` at `time`: fire (at the window's max timestamp) or clean up.
    fn on_timer(&mut self, time: i64, timer: Timer<K::Owned>) -> Result<(), TaskError> {
        let Timer {
            group,
            hash,
            key,
            window,
        } = timer;
        let keep_fired = self.event_time() && self.lateness() > 0;
        let Some(slots) = self.state.get_mut(group, hash, key.borrow()) else {
            return Ok(()); // purged earlier
        };
        let Some(pos) = slots.iter().position(|s| s.window == window) else {
            return Ok(()); // merged into another session window
        };
        let result = if time == window.max_timestamp() && !slots[pos].fired {
            if keep_fired {
                slots[pos].fired = true;
                Some(self.agg.result(&slots[pos].acc))
            } else {
                Some(self.agg.final_result(slots.swap_remove(pos).acc))
            }
        } else if time != window.max_timestamp() {
            slots.swap_remove(pos);
            None
        } else {
            None
        };
        if slots.is_empty() {
            self.emptied += 1;
            self.sweep_emptied();
        }
        match result {
            Some(r) => {
                let value = r.map_err(|e| self.fail(format!("window function failed: {e}")))?;
                self.fire(key.borrow(), window, value)
            }
            None => Ok(()),
        }
    }

    fn advance_watermark(&mut self, watermark: i64) -> Result<(), TaskError> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        while let Some(entry) = self.event_timers.first_entry() {
            if *entry.key() > watermark {
                break;
            }
            let (time, timers) = entry.remove_entry();
            for t in timers {
                self.on_timer(time, t)?;
            }
        }
        Ok(())
    }

    fn advance_processing_time(&mut self, now: i64) -> Result<(), TaskError> {
        while let Some(entry) = self.processing_timers.first_entry() {
            if *entry.key() > now {
                break;
            }
            let (time, timers) = entry.remove_entry();
            for t in timers {
                self.on_timer(time, t)?;
            }
        }
        Ok(())
    }

    fn process(&mut self, item: T) -> Result<(), TaskError> {
        let key_fn = &self.key;
        let key = self
            .id
            .guard(|| key_fn(&item))?
            .map_err(|e| self.fail(format!("key selector failed: {e}")))?;
        let hash = stable_hash(&*key);
        let group = key_group_of_hash(hash, self.max_parallelism);
        if !self.state.owns(group) {
            return Err(self.fail(format!(
                "internal error: key group {group} reached a subtask owning {:?}",
                self.state.key_groups()
            )));
        }
        let ts = if self.event_time() {
            let ts = current_timestamp();
            if ts == NO_TIMESTAMP {
                return Err(self.fail(
                    "an event-time window got a record without a timestamp: \
                     call assign_timestamps_and_watermarks before the window",
                ));
            }
            ts
        } else {
            let now = self.spec.clock.now_ms();
            self.advance_processing_time(now)?;
            now
        };
        let mut windows = std::mem::take(&mut self.scratch);
        self.spec.assigner.assign(ts, &mut windows);
        if self.spec.assigner.is_merging() {
            let new = windows[0];
            self.scratch = windows;
            let key = (*key).to_owned();
            return self.add_merging(item, ts, key.borrow(), group, hash, new);
        }
        windows.retain(|w| !self.is_late(w));
        if windows.is_empty() {
            self.scratch = windows;
            return self.late(item, ts);
        }
        let mut inserted = false;
        let slots = self.state.get_or_insert_with(group, hash, &key, || {
            inserted = true;
            ((*key).to_owned(), Slots::new())
        });
        if slots.is_empty() && !inserted {
            self.emptied -= 1; // a kept entry reused
        }
        // Every record but the first of a key's window: one window, open and not fired yet.
        // Add and return, without the bookkeeping below (one scan of the slots).
        if let [w] = windows[..]
            && let Some(slot) = slots.iter_mut().find(|s| s.window == w)
            && !slot.fired
        {
            let added = self.agg.add(&mut slot.acc, item);
            self.scratch = windows;
            return added.map_err(|e| self.id.fail(format!("window function failed: {e}")));
        }
        // The key is copied only when a window is created or fires now (timers and the
        // window function need it after the record moved into the accumulator).
        let needs_key = windows.iter().any(|w| {
            slots
                .iter()
                .find(|s| s.window == *w)
                .is_none_or(|s| s.fired)
        });
        let owned = needs_key.then(|| (*key).to_owned());
        let mut item = Some(item);
        let mut fire_now = FireNow::<A::Out>::new();
        let mut created = Created::new();
        let err = |e: BoxError| format!("window function failed: {e}");
        for (i, w) in windows.iter().enumerate() {
            let v = if i + 1 == windows.len() {
                item.take().expect("taken once")
            } else {
                item.clone().expect("present")
            };
            match slots.iter_mut().find(|s| s.window == *w) {
                Some(slot) => {
                    self.agg
                        .add(&mut slot.acc, v)
                        .map_err(|e| self.id.fail(err(e)))?;
                    if slot.fired {
                        fire_now.push((*w, self.agg.result(&slot.acc)));
                    }
                }
                None => {
                    let mut acc = self.agg.create().map_err(|e| self.id.fail(err(e)))?;
                    self.agg
                        .add(&mut acc, v)
                        .map_err(|e| self.id.fail(err(e)))?;
                    slots.push(Slot {
                        window: *w,
                        fired: false,
                        acc,
                    });
                    created.push(*w);
                }
            }
        }
        self.scratch = windows;
        match owned {
            // The usual new window: without lateness it gets one timer (and is not late, or
            // it would have been dropped above), which takes the key instead of a copy.
            Some(key) if created.len() == 1 && fire_now.is_empty() && self.lateness() == 0 => {
                let window = created[0];
                let timers = if self.event_time() {
                    &mut self.event_timers
                } else {
                    &mut self.processing_timers
                };
                timers
                    .entry(window.max_timestamp())
                    .or_default()
                    .push(Timer {
                        group,
                        hash,
                        key,
                        window,
                    });
                Ok(())
            }
            Some(key) => self.after_add(group, hash, key.borrow(), created, fire_now),
            None => Ok(()),
        }
    }

    /// A key whose last window closed keeps its (empty) entry, so its next window reuses
    /// it instead of copying the key, inserting and later removing it once per window and
    /// key. Such entries are dropped once they outnumber both the keys with open windows
    /// and `KEEP_EMPTIED`, which bounds what they hold.
    fn sweep_emptied(&mut self) {
        let live = self.state.len() - self.emptied;
        if self.emptied <= KEEP_EMPTIED.max(live) {
            return;
        }
        let mut dead: Vec<(u32, K::Owned)> = Vec::with_capacity(self.emptied);
        for g in self.state.key_groups().as_range() {
            for (k, v) in self.state.iter_group(g) {
                if v.is_empty() {
                    dead.push((g, k.clone()));
                }
            }
        }
        for (g, k) in dead {
            self.state.remove(g, stable_hash(k.borrow()), k.borrow());
        }
        self.emptied = 0;
    }

    fn is_late(&self, window: &Window) -> bool {
        self.event_time()
            && window.max_timestamp().saturating_add(self.lateness()) <= self.watermark
    }

    /// Timers of the windows a record created, and the windows that fire right away (late
    /// records within the allowed lateness).
    fn after_add(
        &mut self,
        group: u32,
        hash: u64,
        key: &K,
        created: Created,
        mut fire_now: FireNow<A::Out>,
    ) -> Result<(), TaskError> {
        for w in created {
            if self.register(group, hash, key, w) {
                let slots = self.state.get_mut(group, hash, key).expect("present");
                if let Some(slot) = slots.iter_mut().find(|s| s.window == w) {
                    slot.fired = true;
                    fire_now.push((w, self.agg.result(&slot.acc)));
                }
            }
        }
        for (w, r) in fire_now {
            let value = r.map_err(|e| self.fail(format!("window function failed: {e}")))?;
            self.fire(key, w, value)?;
        }
        Ok(())
    }

    fn add_merging(
        &mut self,
        item: T,
        ts: i64,
        key: &K,
        group: u32,
        hash: u64,
        new: Window,
    ) -> Result<(), TaskError> {
        let mut merged = new;
        if let Some(slots) = self.state.get_mut(group, hash, key) {
            for s in slots.iter() {
                if s.window.intersects(&new) {
                    merged = merged.cover(&s.window);
                }
            }
        }
        if self.is_late(&merged) {
            return self.late(item, ts);
        }
        let err = |e: BoxError| format!("window function failed: {e}");
        let mut acc: Option<A::Acc> = None;
        if let Some(slots) = self.state.get_mut(group, hash, key) {
            if slots.is_empty() {
                self.emptied -= 1; // a kept entry reused
            }
            let mut i = 0;
            while i < slots.len() {
                if slots[i].window.intersects(&new) {
                    let s = slots.swap_remove(i);
                    acc = Some(match acc {
                        None => s.acc,
                        Some(a) => self.agg.merge(a, s.acc).map_err(|e| self.id.fail(err(e)))?,
                    });
                } else {
                    i += 1;
                }
            }
        } else {
            self.state.put(group, hash, key.to_owned(), Slots::new());
        }
        let mut acc = match acc {
            Some(a) => a,
            None => self.agg.create().map_err(|e| self.id.fail(err(e)))?,
        };
        self.agg
            .add(&mut acc, item)
            .map_err(|e| self.id.fail(err(e)))?;
        let fire_now = self.register(group, hash, key, merged);
        let result = fire_now.then(|| self.agg.result(&acc));
        self.state
            .get_mut(group, hash, key)
            .expect("present")
            .push(Slot {
                window: merged,
                fired: fire_now,
                acc,
            });
        if let Some(r) = result {
            let value = r.map_err(|e| self.fail(err(e)))?;
            self.fire(key, merged, value)?;
        }
        Ok(())
    }

    /// The state in the window-state format: header, watermark, keyed state.
    pub fn snapshot(&self) -> Result<Vec<u8>, String> {
        let out = timed_state::start(MAGIC, FORMAT_VERSION, self.watermark);
        let mut w = KeyedStateWriter::appending_to(out);
        for g in self.state.key_groups().as_range() {
            for (k, v) in self.state.iter_group(g).filter(|(_, v)| !v.is_empty()) {
                w.push(g, k.borrow(), &v[..]).map_err(|e| e.to_string())?;
            }
        }
        Ok(w.finish())
    }

    /// Loads this subtask's key groups from every old subtask's snapshot (any parallelism)
    /// and rebuilds the timers of the restored windows.
    pub fn restore(&mut self, snapshots: &[(u32, Vec<u8>)]) -> Result<(), String> {
        let restore = Restore {
            owned: self.state.key_groups(),
            max_parallelism: self.max_parallelism,
            hash: |key: &K::Owned| stable_hash(key.borrow()),
        };
        let mut watermark: Option<i64> = None;
        // (key group, key hash, key, its windows)
        type Restored<KO, Acc> = Vec<(u32, u64, KO, Vec<Slot<Acc>>)>;
        let mut windows: Restored<K::Owned, A::Acc> = Vec::new();
        for (subtask, snap) in snapshots {
            let bad = |what: &str| format!("window state of old subtask {subtask}: {what}");
            let version = readable_version::<K::Owned>(snap).map_err(|e| bad(&e))?;
            let (wm, blob) =
                timed_state::split(snap, MAGIC, version, "window state").map_err(|e| bad(&e))?;
            // With aligned barriers every subtask had the same watermark; the minimum is
            // the safe choice either way (nothing is considered late that was not).
            watermark = Some(watermark.map_or(wm, |m| m.min(wm)));
            read_keyed_state(blob, &restore, |g, hash, key, slots| {
                windows.push((g, hash, key, slots))
            })
            .map_err(|e| bad(&e.to_string()))?;
        }
        if let Some(w) = watermark {
            self.watermark = self.watermark.max(w);
        }
        for (g, hash, key, slots) in windows {
            for s in &slots {
                let max = s.window.max_timestamp();
                let timer = || Timer {
                    group: g,
                    hash,
                    key: key.clone(),
                    window: s.window,
                };
                if !self.event_time() {
                    self.processing_timers.entry(max).or_default().push(timer());
                    continue;
                }
                if !s.fired {
                    self.event_timers.entry(max).or_default().push(timer());
                }
                if self.lateness() > 0 {
                    self.event_timers
                        .entry(max.saturating_add(self.lateness()))
                        .or_default()
                        .push(timer());
                }
            }
            match self.state.get_mut(g, hash, key.borrow()) {
                Some(existing) => {
                    if existing.is_empty() && !slots.is_empty() {
                        self.emptied -= 1;
                    }
                    existing.extend(slots)
                }
                None => self.state.put(g, hash, key, Slots::from_vec(slots)),
            }
        }
        Ok(())
    }

    fn write_snapshot(&self, checkpoint: Option<u64>) -> Result<(), TaskError> {
        let Some((c, uid)) = &self.checkpoint else {
            return Ok(());
        };
        let bytes = self
            .snapshot()
            .map_err(|e| self.fail(format!("cannot snapshot window state: {e}")))?;
        match checkpoint {
            Some(id) => c
                .write_state(id, uid, self.id.subtask, &bytes)
                .map_err(|e| self.fail(format!("cannot write checkpoint {id}: {e}"))),
            None => {
                c.register_final(uid, self.id.subtask, bytes);
                Ok(())
            }
        }
    }
}

impl<T, K, A, R> Output<T> for WindowOperator<T, K, A, R>
where
    T: Clone + Send + 'static,
    K: ?Sized + ToOwned + Eq + Serialize + Send + Sync + 'static,
    K::Owned: Borrow<K> + Clone + Serialize + DeserializeOwned + Send + 'static,
    A: WindowAggregator<T>,
    R: 'static,
{
    #[inline]
    fn emit(&mut self, item: T) -> Result<(), TaskError> {
        self.process(item)
    }

    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        match signal {
            Signal::Watermark(w) => self.advance_watermark(w)?,
            Signal::Barrier(b) => self.write_snapshot(Some(b.id))?,
            Signal::EndOfInput => {
                if self.late_dropped > 0 {
                    info!(
                        operator = %self.id.name,
                        subtask = self.id.subtask,
                        dropped = self.late_dropped,
                        "late records dropped by this window operator"
                    );
                }
                self.write_snapshot(None)?;
                // As in Flink, processing-time timers do not fire after the end of input:
                // the chain is still flushed, but nothing may follow `EndOfInput`.
                self.processing_timers.clear();
            }
            _ => {}
        }
        self.out.signal(signal)
    }

    fn flush(&mut self) -> Result<(), TaskError> {
        if !self.processing_timers.is_empty() {
            let now = self.spec.clock.now_ms();
            self.advance_processing_time(now)?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use streamjob_crds::KeyGroupRange;

    use super::*;
    use crate::operators::window_test_support::{
        Collect, MAX_P, Rescalable, Sum, owner, rescale, subtasks, take_sorted,
    };
    use crate::operators::windows::{
        Aggregate, EventTimeSessionWindows, TumblingEventTimeWindows, TumblingProcessingTimeWindows,
    };
    use crate::runtime::time::{MAX_WATERMARK, ManualClock, set_current_timestamp};

    type Rec = (String, i64);
    type Fired = (String, i64, i64, i64);

    type TestOp = WindowOperator<Rec, str, Aggregate<Sum>, Fired>;

    impl Rescalable for TestOp {
        fn snapshot_state(&self) -> Result<Vec<u8>, String> {
            self.snapshot()
        }
        fn restore_state(&mut self, snapshots: &[(u32, Vec<u8>)]) -> Result<(), String> {
            self.restore(snapshots)
        }
    }

    fn op(
        assigner: WindowAssigner,
        lateness: i64,
        clock: Arc<dyn Clock>,
        range: KeyGroupRange,
        out: Arc<Mutex<Vec<Fired>>>,
    ) -> TestOp {
        WindowOperator::new(
            WindowSetup {
                spec: WindowSpec {
                    assigner,
                    allowed_lateness_ms: lateness,
                    clock,
                },
                key_groups: range,
                max_parallelism: MAX_P,
                id: OpId {
                    name: "window".into(),
                    subtask: 0,
                },
                checkpoint: None,
            },
            Arc::new(|r: &Rec| Ok(Cow::Borrowed(r.0.as_str()))),
            Aggregate(Sum),
            Arc::new(
                |k: &str, ctx: &WindowContext, sum, out: &mut Collector<'_, Fired>| {
                    out.collect((k.to_string(), ctx.window.start, ctx.window.end, sum));
                    Ok(())
                },
            ),
            WindowOutputs::Plain(Box::new(Collect(out))),
        )
    }

    #[test]
    fn processing_time_windows_fire_by_the_injected_clock() {
        let clock = ManualClock::new(1_000);
        let out = Arc::new(Mutex::new(vec![]));
        let mut w = op(
            TumblingProcessingTimeWindows::of(Duration::from_millis(100)),
            0,
            Arc::new(clock.clone()),
            KeyGroupRange::for_subtask(0, 1, MAX_P),
            out.clone(),
        );
        w.emit(("a".into(), 1)).unwrap();
        clock.set(1_050);
        w.emit(("a".into(), 2)).unwrap();
        w.emit(("b".into(), 5)).unwrap();
        w.flush().unwrap();
        assert!(
            out.lock().unwrap().is_empty(),
            "nothing before the window ends"
        );
        clock.set(1_099);
        w.flush().unwrap();
        let mut got = std::mem::take(&mut *out.lock().unwrap());
        got.sort();
        assert_eq!(
            got,
            vec![("a".into(), 1000, 1100, 3), ("b".into(), 1000, 1100, 5)]
        );
        // The clock jumps past the next window: it fires when the next record arrives
        // (its timer is due before that record is assigned).
        clock.set(1_150);
        w.emit(("a".into(), 7)).unwrap();
        clock.set(1_300);
        w.emit(("a".into(), 1)).unwrap();
        assert_eq!(*out.lock().unwrap(), vec![("a".into(), 1100, 1200, 7)]);
    }

    /// Regression: the task flushes its chain after the end of input (while it waits for
    /// the final checkpoint); a processing-time window firing then sent its result after
    /// `EndOfInput`, to a downstream subtask that may have finished (lost, or a failed job).
    #[test]
    fn processing_time_windows_do_not_fire_after_the_end_of_input() {
        let clock = ManualClock::new(1_000);
        let out = Arc::new(Mutex::new(vec![]));
        let mut w = op(
            TumblingProcessingTimeWindows::of(Duration::from_millis(100)),
            0,
            Arc::new(clock.clone()),
            KeyGroupRange::for_subtask(0, 1, MAX_P),
            out.clone(),
        );
        w.emit(("a".into(), 1)).unwrap();
        w.signal(Signal::EndOfInput).unwrap();
        clock.set(1_200);
        w.flush().unwrap();
        assert!(out.lock().unwrap().is_empty());
    }

    /// Records (key, value, timestamp) in arrival order, with the watermark after each.
    fn workload(n: usize) -> Vec<(Rec, i64, i64)> {
        let mut x: u64 = 9;
        let mut max = i64::MIN;
        (0..n)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let ts = i as i64 * 5 - (x >> 60) as i64 * 9;
                max = max.max(ts);
                let key = format!("k{}", (x >> 40) % 13);
                ((key, ((x >> 20) % 50) as i64), ts, max - 30)
            })
            .collect()
    }

    /// Routes records by key group; the watermark reaches every subtask after every 7th
    /// record, so records right after a restore meet the restored watermark.
    fn feed(ops: &mut [TestOp], part: &[(Rec, i64, i64)]) {
        for (i, (rec, ts, wm)) in part.iter().enumerate() {
            let g = key_group_of_hash(stable_hash(rec.0.as_str()), MAX_P);
            set_current_timestamp(*ts);
            ops[owner(ops.len(), g)].emit(rec.clone()).unwrap();
            if i % 7 == 6 {
                for op in ops.iter_mut() {
                    op.signal(Signal::Watermark(*wm)).unwrap();
                }
            }
        }
    }

    /// Runs at parallelism `from`, snapshots halfway and restores at `to` (0: no restore).
    fn rescaled_run(assigner: WindowAssigner, lateness: i64, from: u32, to: u32) -> Vec<Fired> {
        let records = workload(2_000);
        let (first, second) = records.split_at(1_000);
        let out = Arc::new(Mutex::new(vec![]));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        let make = |_, r| op(assigner, lateness, clock.clone(), r, out.clone());
        let mut ops = subtasks(from, make);
        feed(&mut ops, first);
        if to > 0 {
            ops = rescale(ops, to, make);
        }
        feed(&mut ops, second);
        for o in ops.iter_mut() {
            o.signal(Signal::Watermark(MAX_WATERMARK)).unwrap();
        }
        take_sorted(&out)
    }

    #[test]
    fn a_snapshot_with_open_windows_restores_at_another_parallelism_with_identical_results() {
        for (assigner, lateness) in [
            (TumblingEventTimeWindows::of(Duration::from_millis(40)), 0),
            (TumblingEventTimeWindows::of(Duration::from_millis(40)), 25),
            (
                EventTimeSessionWindows::with_gap(Duration::from_millis(12)),
                20,
            ),
        ] {
            let uninterrupted = rescaled_run(assigner, lateness, 1, 0);
            assert!(uninterrupted.len() > 50, "{}", uninterrupted.len());
            for (from, to) in [(1, 1), (2, 3), (3, 1)] {
                assert_eq!(
                    rescaled_run(assigner, lateness, from, to),
                    uninterrupted,
                    "{assigner:?} lateness {lateness}: {from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn window_state_of_another_format_is_refused_naming_it() {
        let out = Arc::new(Mutex::new(vec![]));
        let r = KeyGroupRange::for_subtask(0, 1, MAX_P);
        let a = TumblingEventTimeWindows::of(Duration::from_millis(10));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        let mut snap = op(a, 0, clock.clone(), r, out.clone()).snapshot().unwrap();
        snap[5] = 7;
        let err = op(a, 0, clock.clone(), r, out.clone())
            .restore(&[(2, snap)])
            .unwrap_err();
        assert!(
            err.contains("old subtask 2") && err.contains("version 7"),
            "{err}"
        );
        let err = op(a, 0, clock, r, out)
            .restore(&[(0, b"SJks\x01".to_vec())])
            .unwrap_err();
        assert!(err.contains("SJwin header is missing"), "{err}");
    }

    #[test]
    fn version_1_state_is_read_unless_its_keys_are_spec_values() {
        // Rust-API keys hash as they did in version 1: such state still restores.
        let out = Arc::new(Mutex::new(vec![]));
        let r = KeyGroupRange::for_subtask(0, 1, MAX_P);
        let a = TumblingEventTimeWindows::of(Duration::from_millis(10));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        let mut w = op(a, 0, clock.clone(), r, out.clone());
        set_current_timestamp(3);
        w.emit(("k".into(), 4)).unwrap();
        let mut snap = w.snapshot().unwrap();
        assert_eq!(snap[5], FORMAT_VERSION);
        snap[5] = 1;
        let mut b = op(a, 0, clock, r, out.clone());
        b.restore(&[(0, snap.clone())]).unwrap();
        b.signal(Signal::Watermark(MAX_WATERMARK)).unwrap();
        assert_eq!(*out.lock().unwrap(), vec![("k".to_string(), 0, 10, 4)]);
        // Spec keys were placed by another hash in version 1: refused, naming why.
        let err = readable_version::<Value>(&snap).unwrap_err();
        assert!(
            err.contains("version 1") && err.contains("key hash"),
            "{err}"
        );
        assert_eq!(readable_version::<String>(&snap), Ok(1));
    }

    #[test]
    fn a_key_keeps_its_entry_between_windows_within_a_bound() {
        let out = Arc::new(Mutex::new(vec![]));
        let r = KeyGroupRange::for_subtask(0, 1, MAX_P);
        let a = TumblingEventTimeWindows::of(Duration::from_millis(10));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        let mut w = op(a, 0, clock.clone(), r, out.clone());
        set_current_timestamp(3);
        w.emit(("k".into(), 4)).unwrap();
        w.signal(Signal::Watermark(20)).unwrap();
        assert_eq!((w.state.len(), w.emptied), (1, 1));
        // A kept entry is no state: the snapshot holds no key.
        let mut b = op(a, 0, clock.clone(), r, out.clone());
        b.restore(&[(0, w.snapshot().unwrap())]).unwrap();
        assert_eq!(b.state.len(), 0);
        set_current_timestamp(25);
        w.emit(("k".into(), 5)).unwrap();
        assert_eq!((w.state.len(), w.emptied), (1, 0));
        w.signal(Signal::Watermark(30)).unwrap();
        assert_eq!(
            *out.lock().unwrap(),
            vec![("k".to_string(), 0, 10, 4), ("k".to_string(), 20, 30, 5)]
        );
        // Past the bound, the kept entries are dropped.
        let n = KEEP_EMPTIED + 4_000;
        set_current_timestamp(41);
        for i in 0..n {
            w.emit((i.to_string(), 1)).unwrap();
        }
        w.signal(Signal::Watermark(MAX_WATERMARK)).unwrap();
        // "k" and the first KEEP_EMPTIED keys to close were dropped at the next one.
        assert_eq!(w.state.len(), n + 1 - (KEEP_EMPTIED + 1));
        assert_eq!(w.emptied, w.state.len());
        assert_eq!(out.lock().unwrap().len(), 2 + n);
    }
}
