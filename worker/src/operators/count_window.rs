//! Count windows on the global window (Flink's `countWindow`): `count_window(n)` fires every
//! `n` records of a key with those records and starts over; `count_window(n, slide)` fires
//! every `slide` records with the last `n` (fewer at the start).
//!
//! Snapshot: the shared [`timed_state`] header (magic, format version, a watermark that is
//! always `i64::MIN`: count windows keep no event time), then the keyed state.

use std::borrow::{Borrow, Cow};
use std::collections::VecDeque;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use streamjob_crds::expr::Value;
use streamjob_crds::keygroup::key_group_of_hash;

use crate::codec::key_hash::stable_hash;
use crate::codec::state::{KeyedStateWriter, Restore, read_keyed_state};
use crate::error::{BoxError, TaskError};
use crate::operators::OpId;
use crate::operators::timed_state;
use crate::operators::window::{WindowKeyFn, WindowOutputs};
use crate::operators::windows::{EmitFn, Window, WindowAggregator, WindowContext};
use crate::runtime::checkpoint::Coordinator;
use crate::runtime::message::Signal;
use crate::runtime::output::Output;
use crate::state::{HashMapValueState, ValueState};

/// What a key's count window holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum CountSlot<T, A> {
    Tumbling { count: u64, acc: A },
    Sliding { last: VecDeque<T>, since_fire: u64 },
}

const MAGIC: &[u8; 5] = b"SJcwn";
/// 2: the first version with a header; spec (`Value`) keys are placed by the hash every spec
/// operator uses. Version 1 had no header (the bare keyed state) and hashed spec keys'
/// tagged serde form, so their key groups differ; it is still read when its keys are not
/// `Value`s: their hash did not change.
const FORMAT_VERSION: u8 = 2;
/// Where version 1 (headerless) state starts: the keyed-state codec's own magic.
const V1_START: &[u8] = b"SJks";

/// How to read a count-window snapshot whose keys are `KO`s: `Ok(None)` for version 1
/// (bare keyed state), `Ok(Some(version))` for a headed one, `Err` when this build cannot.
fn readable_version<KO: 'static>(snap: &[u8]) -> Result<Option<u8>, String> {
    if !snap.starts_with(V1_START) {
        return Ok(Some(FORMAT_VERSION)); // `timed_state::split` checks the header
    }
    if std::any::TypeId::of::<KO>() == std::any::TypeId::of::<Value>() {
        return Err(
            "count window state has no format header (version 1, written before this build): \
             it placed spec keys by an older key hash, so their key groups differ in this \
             build; restore it with the streamjob release that wrote it"
                .into(),
        );
    }
    Ok(None)
}

pub struct CountWindowOperator<T, K: ?Sized + ToOwned, A: WindowAggregator<T>, R> {
    pub(crate) key: WindowKeyFn<T, K>,
    pub(crate) size: u64,
    pub(crate) slide: u64,
    pub(crate) agg: A,
    pub(crate) emit: EmitFn<K, A::Out, R>,
    pub(crate) state: HashMapValueState<K, CountSlot<T, A::Acc>>,
    pub(crate) max_parallelism: u32,
    pub(crate) out: WindowOutputs<R, T>,
    pub(crate) id: OpId,
    pub(crate) checkpoint: Option<(Arc<Coordinator>, Arc<str>)>,
}

impl<T, K, A, R> CountWindowOperator<T, K, A, R>
where
    T: Clone + Send + Serialize + DeserializeOwned + 'static,
    K: ?Sized + ToOwned + Eq + Serialize + Send + Sync + 'static,
    K::Owned: Borrow<K> + Clone + Serialize + DeserializeOwned + Send + 'static,
    A: WindowAggregator<T>,
    R: 'static,
{
    fn err(&self, e: BoxError) -> TaskError {
        self.id.fail(format!("window function failed: {e}"))
    }

    fn process(&mut self, item: T) -> Result<(), TaskError> {
        let key_fn = self.key.clone();
        let key: Cow<'_, K> = self
            .id
            .guard(|| key_fn(&item))?
            .map_err(|e| self.id.fail(format!("key selector failed: {e}")))?;
        let hash = stable_hash(&*key);
        let group = key_group_of_hash(hash, self.max_parallelism);
        if !self.state.key_groups().contains(group) {
            return Err(self.id.fail(format!(
                "internal error: key group {group} reached a subtask owning {:?}",
                self.state.key_groups()
            )));
        }
        if self.state.get_mut(group, hash, &key).is_none() {
            let slot = if self.slide == self.size {
                CountSlot::Tumbling {
                    count: 0,
                    acc: self.agg.create().map_err(|e| self.err(e))?,
                }
            } else {
                CountSlot::Sliding {
                    last: VecDeque::new(),
                    since_fire: 0,
                }
            };
            self.state.put(group, hash, key.clone().into_owned(), slot);
        }
        let slot = self
            .state
            .get_mut(group, hash, &key)
            .expect("inserted above");
        let fires = match slot {
            CountSlot::Tumbling { count, .. } => *count + 1 >= self.size,
            CountSlot::Sliding { since_fire, .. } => *since_fire + 1 >= self.slide,
        };
        if !fires {
            match slot {
                CountSlot::Tumbling { count, acc } => {
                    *count += 1;
                    return self
                        .agg
                        .add(acc, item)
                        .map_err(|e| self.id.fail(format!("window function failed: {e}")));
                }
                CountSlot::Sliding { last, since_fire } => {
                    *since_fire += 1;
                    last.push_back(item);
                    if last.len() as u64 > self.size {
                        last.pop_front();
                    }
                    return Ok(());
                }
            }
        }
        // Fires: the key is needed after the record moved into the window.
        let key: K::Owned = (*key).to_owned();
        let slot = self
            .state
            .get_mut(group, hash, key.borrow())
            .expect("present");
        let result = match slot {
            CountSlot::Tumbling { acc, .. } => {
                self.agg
                    .add(acc, item)
                    .map_err(|e| self.id.fail(format!("window function failed: {e}")))?;
                let r = self.agg.result(acc);
                self.state.remove(group, hash, key.borrow());
                r
            }
            CountSlot::Sliding { last, since_fire } => {
                last.push_back(item);
                if last.len() as u64 > self.size {
                    last.pop_front();
                }
                *since_fire = 0;
                let agg = &self.agg;
                (|| {
                    let mut acc = agg.create()?;
                    for v in last.iter() {
                        agg.add(&mut acc, v.clone())?;
                    }
                    agg.result(&acc)
                })()
            }
        };
        let value = result.map_err(|e| self.err(e))?;
        let ctx = WindowContext {
            window: Window::GLOBAL,
            current_watermark: i64::MIN,
            current_processing_time: 0,
        };
        self.out
            .emit_result(&self.emit, key.borrow(), &ctx, value, &self.id)
    }

    /// The state in the count-window format: header, keyed state.
    pub fn snapshot(&self) -> Result<Vec<u8>, String> {
        let out = timed_state::start(MAGIC, FORMAT_VERSION, i64::MIN);
        let mut w = KeyedStateWriter::appending_to(out);
        for g in self.state.key_groups().as_range() {
            for (k, v) in self.state.iter_group(g) {
                w.push(g, k.borrow(), v).map_err(|e| e.to_string())?;
            }
        }
        Ok(w.finish())
    }

    pub fn restore(&mut self, snapshots: &[(u32, Vec<u8>)]) -> Result<(), String> {
        let restore = Restore {
            owned: self.state.key_groups(),
            max_parallelism: self.max_parallelism,
            hash: |key: &K::Owned| stable_hash(key.borrow()),
        };
        for (subtask, snap) in snapshots {
            let bad = |what: &str| {
                format!(
                    "count window `{}` subtask {}: state of old subtask {subtask}: {what}",
                    self.id.name, self.id.subtask
                )
            };
            let blob = match readable_version::<K::Owned>(snap).map_err(|e| bad(&e))? {
                None => &snap[..],
                Some(version) => {
                    timed_state::split(snap, MAGIC, version, "count window state")
                        .map_err(|e| bad(&e))?
                        .1
                }
            };
            let state = &mut self.state;
            read_keyed_state(blob, &restore, |g, hash, key, slot| {
                state.put(g, hash, key, slot)
            })
            .map_err(|e| bad(&e.to_string()))?;
        }
        Ok(())
    }
}

impl<T, K, A, R> Output<T> for CountWindowOperator<T, K, A, R>
where
    T: Clone + Send + Serialize + DeserializeOwned + 'static,
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
        if let Some((c, uid)) = &self.checkpoint {
            match signal {
                Signal::Barrier(b) => {
                    let bytes = self
                        .snapshot()
                        .map_err(|e| self.id.fail(format!("cannot snapshot window state: {e}")))?;
                    c.write_state(b.id, uid, self.id.subtask, &bytes)
                        .map_err(|e| {
                            self.id
                                .fail(format!("cannot write checkpoint {}: {e}", b.id))
                        })?;
                }
                Signal::EndOfInput => {
                    let bytes = self
                        .snapshot()
                        .map_err(|e| self.id.fail(format!("cannot snapshot window state: {e}")))?;
                    c.register_final(uid, self.id.subtask, bytes);
                }
                _ => {}
            }
        }
        self.out.signal(signal)
    }

    fn flush(&mut self) -> Result<(), TaskError> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;
    use std::sync::Mutex;

    use streamjob_crds::KeyGroupRange;

    use super::*;
    use crate::operators::window_test_support::{
        Collect, MAX_P, Rescalable, Sum, owner, rescale, subtasks, take_sorted,
    };
    use crate::operators::windows::Aggregate;
    use crate::runtime::functions::Collector;

    impl<K> Rescalable for CountWindowOperator<(K, i64), K, Aggregate<Sum>, Fired>
    where
        K: Clone + Eq + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        fn snapshot_state(&self) -> Result<Vec<u8>, String> {
            self.snapshot()
        }
        fn restore_state(&mut self, snapshots: &[(u32, Vec<u8>)]) -> Result<(), String> {
            self.restore(snapshots)
        }
    }

    type Fired = (String, i64);

    /// A count window summing `.1` per key `.0`, firing `(key as Debug, sum)`.
    fn op<K>(
        size: u64,
        slide: u64,
        subtask: u32,
        range: KeyGroupRange,
        out: Arc<Mutex<Vec<Fired>>>,
    ) -> CountWindowOperator<(K, i64), K, Aggregate<Sum>, Fired>
    where
        K: Clone + Eq + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        CountWindowOperator {
            key: Arc::new(|r: &(K, i64)| Ok(Cow::Borrowed(&r.0))),
            size,
            slide,
            agg: Aggregate(Sum),
            emit: Arc::new(
                |k: &K, _: &WindowContext, sum, out: &mut Collector<'_, Fired>| {
                    out.collect((format!("{k:?}"), sum));
                    Ok(())
                },
            ),
            state: HashMapValueState::new(range),
            max_parallelism: MAX_P,
            out: WindowOutputs::Plain(Box::new(Collect(out))),
            id: OpId {
                name: "counts".into(),
                subtask,
            },
            checkpoint: None,
        }
    }

    fn spec_key(i: i64) -> Value {
        Value::Int(i)
    }

    /// Records of 40 keys, `n` each; key `k`'s `j`-th record carries `k * 100 + j`.
    fn records(range: std::ops::Range<i64>) -> Vec<(Value, i64)> {
        range
            .flat_map(|j| (0..40).map(move |k| (spec_key(k), k * 100 + j)))
            .collect()
    }

    /// Feeds `first`, snapshots `from` subtasks, restores them into `to` subtasks, feeds
    /// `second`; `to == 0`: no restore. Returns every result, sorted.
    fn rescaled_run(size: u64, slide: u64, from: u32, to: u32) -> Vec<Fired> {
        let out = Arc::new(Mutex::new(vec![]));
        let make = |i, r| op::<Value>(size, slide, i, r, out.clone());
        let feed = |ops: &mut Vec<CountWindowOperator<_, _, _, _>>, recs: Vec<(Value, i64)>| {
            for r in recs {
                let g = key_group_of_hash(stable_hash(&r.0), MAX_P);
                let i = owner(ops.len(), g);
                ops[i].emit(r).unwrap();
            }
        };
        let mut ops = subtasks(from, make);
        feed(&mut ops, records(0..7));
        if to > 0 {
            ops = rescale(ops, to, make);
        }
        feed(&mut ops, records(7..13));
        take_sorted(&out)
    }

    #[test]
    fn a_snapshot_with_open_count_windows_restores_at_another_parallelism() {
        for (size, slide) in [(3, 3), (4, 2)] {
            let uninterrupted = rescaled_run(size, slide, 1, 0);
            let per_key = if size == slide { 13 / 3 } else { 13 / 2 };
            assert_eq!(uninterrupted.len(), 40 * per_key, "{size}/{slide}");
            for (from, to) in [(1, 1), (2, 3), (3, 1)] {
                assert_eq!(
                    rescaled_run(size, slide, from, to),
                    uninterrupted,
                    "count window {size}/{slide}: {from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn a_count_window_snapshot_has_the_versioned_header() {
        let r = KeyGroupRange::for_subtask(0, 1, MAX_P);
        let out = Arc::new(Mutex::new(vec![]));
        let mut a = op::<Value>(3, 3, 0, r, out.clone());
        a.emit((spec_key(1), 5)).unwrap();
        let mut snap = a.snapshot().unwrap();
        assert_eq!(&snap[..6], b"SJcwn\x02");
        snap[5] = 9;
        let err = op::<Value>(3, 3, 1, r, out)
            .restore(&[(4, snap)])
            .unwrap_err();
        assert_eq!(
            err,
            "count window `counts` subtask 1: state of old subtask 4: count window state \
             format version 9 is not supported: this build reads version 2"
        );
    }

    /// What a count window wrote before the header: the bare keyed state.
    fn headerless(keys: &[(u32, impl Serialize)]) -> Vec<u8> {
        let mut w = KeyedStateWriter::new();
        for (g, k) in keys {
            let slot: CountSlot<(), i64> = CountSlot::Tumbling { count: 1, acc: 7 };
            w.push(*g, k, &slot).unwrap();
        }
        w.finish()
    }

    #[test]
    fn headerless_count_window_state_with_spec_keys_is_refused_naming_why() {
        let k = spec_key(3);
        let old = headerless(&[(key_group_of_hash(stable_hash(&k), MAX_P), k)]);
        let r = KeyGroupRange::for_subtask(0, 1, MAX_P);
        let out = Arc::new(Mutex::new(vec![]));
        let mut b = op::<Value>(2, 2, 0, r, out.clone());
        let err = b.restore(&[(1, old)]).unwrap_err();
        assert!(
            err.starts_with(
                "count window `counts` subtask 0: state of old subtask 1: count window state \
                 has no format header (version 1"
            ) && err.contains("older key hash"),
            "{err}"
        );
        assert_eq!(b.state.iter_group(0).count(), 0);
    }

    #[test]
    fn headerless_count_window_state_with_rust_api_keys_is_still_read() {
        // A `String` key hashes as it did before the header: its key group is proven.
        let k = "k".to_string();
        let old = headerless(&[(key_group_of_hash(stable_hash(&k), MAX_P), k)]);
        let r = KeyGroupRange::for_subtask(0, 1, MAX_P);
        let out = Arc::new(Mutex::new(vec![]));
        let mut b = op::<String>(2, 2, 0, r, out.clone());
        b.restore(&[(0, old)]).unwrap();
        b.emit(("k".into(), 5)).unwrap();
        assert_eq!(*out.lock().unwrap(), vec![("\"k\"".to_string(), 12)]);
    }
}
