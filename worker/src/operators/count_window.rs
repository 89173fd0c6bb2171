//! Count windows on the global window (Flink's `countWindow`): `count_window(n)` fires every
//! `n` records of a key with those records and starts over; `count_window(n, slide)` fires
//! every `slide` records with the last `n` (fewer at the start).

use std::borrow::{Borrow, Cow};
use std::collections::VecDeque;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use streamjob_crds::keygroup::key_group_of_hash;

use crate::codec::key_hash::stable_hash;
use crate::codec::state::{KeyedStateWriter, Restore, read_keyed_state};
use crate::error::{BoxError, TaskError};
use crate::operators::OpId;
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

    pub fn snapshot(&self) -> Result<Vec<u8>, String> {
        let mut w = KeyedStateWriter::new();
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
            let state = &mut self.state;
            read_keyed_state(snap, &restore, |g, hash, key, slot| {
                state.put(g, hash, key, slot)
            })
            .map_err(|e| format!("count window state of old subtask {subtask}: {e}"))?;
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
