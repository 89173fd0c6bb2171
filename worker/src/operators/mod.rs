//! The chained operators behind `map`, `filter`, `flat_map`, `reduce` and sinks. Each wraps
//! the next link of its chain and calls it directly. Time-related operators have their own
//! files: [`watermark`] (timestamp assigner and watermark generator), [`window`].

pub(crate) mod count_window;
pub mod keyed_state;
pub(crate) mod process;
pub mod process_fn;
pub(crate) mod side_output;
pub mod state_handles;
pub mod state_ttl;
pub(crate) mod timed_state;
pub(crate) mod watermark;
pub mod watermark_strategy;
pub(crate) mod window;
#[cfg(test)]
pub(crate) mod window_test_support;
pub mod windows;

use std::borrow::{Borrow, Cow};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use streamjob_crds::keygroup::key_group_of_hash;

use crate::codec::key_hash::stable_hash;
use crate::codec::state::{KeyedStateWriter, Restore, StateError, read_keyed_state};
use crate::error::{BoxError, JobError, TaskError, panic_message};
use crate::runtime::checkpoint::Coordinator;
use crate::runtime::context::SubtaskContext;
use crate::runtime::functions::{Collector, Sink, SinkWriter};
use crate::runtime::message::{FINAL_CHECKPOINT, Signal};
use crate::runtime::output::Output;
use crate::state::{HashMapValueState, ValueState};

/// Key selector as stored by a `KeyedStream`: borrows the key from the record when it can.
pub(crate) type KeyFn<T, K> = Arc<dyn for<'a> Fn(&'a T) -> Cow<'a, K> + Send + Sync>;

/// Identity of an operator instance, for errors.
#[derive(Clone)]
pub(crate) struct OpId {
    pub name: Arc<str>,
    pub subtask: u32,
}

impl OpId {
    pub fn of(ctx: &SubtaskContext) -> Self {
        OpId {
            name: ctx.operator.clone(),
            subtask: ctx.subtask,
        }
    }

    /// Runs user code; a panic becomes an error naming this operator.
    #[inline]
    pub fn guard<R>(&self, f: impl FnOnce() -> R) -> Result<R, TaskError> {
        catch_unwind(AssertUnwindSafe(f))
            .map_err(|p| TaskError::user(&self.name, self.subtask, panic_message(&*p)))
    }

    pub fn fail(&self, e: impl std::fmt::Display) -> TaskError {
        TaskError::user(&self.name, self.subtask, e.to_string())
    }
}

macro_rules! forward_control {
    () => {
        fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
            self.next.signal(signal)
        }
        fn flush(&mut self) -> Result<(), TaskError> {
            self.next.flush()
        }
    };
}

pub(crate) struct Map<F, O> {
    pub f: Arc<F>,
    pub next: Box<dyn Output<O>>,
    pub id: OpId,
}

impl<I, O, F: Fn(I) -> O + Send + Sync> Output<I> for Map<F, O> {
    #[inline]
    fn emit(&mut self, item: I) -> Result<(), TaskError> {
        let out = self.id.guard(|| (self.f)(item))?;
        self.next.emit(out)
    }
    forward_control!();
}

pub(crate) struct TryMap<F, O> {
    pub f: Arc<F>,
    pub next: Box<dyn Output<O>>,
    pub id: OpId,
}

impl<I, O, E, F> Output<I> for TryMap<F, O>
where
    F: Fn(I) -> Result<O, E> + Send + Sync,
    E: std::fmt::Display,
{
    #[inline]
    fn emit(&mut self, item: I) -> Result<(), TaskError> {
        match self.id.guard(|| (self.f)(item))? {
            Ok(out) => self.next.emit(out),
            Err(e) => Err(self.id.fail(e)),
        }
    }
    forward_control!();
}

pub(crate) struct Filter<F, T> {
    pub f: Arc<F>,
    pub next: Box<dyn Output<T>>,
    pub id: OpId,
}

impl<T, F: Fn(&T) -> bool + Send + Sync> Output<T> for Filter<F, T> {
    #[inline]
    fn emit(&mut self, item: T) -> Result<(), TaskError> {
        if self.id.guard(|| (self.f)(&item))? {
            self.next.emit(item)
        } else {
            Ok(())
        }
    }
    forward_control!();
}

pub(crate) struct FlatMap<F, O> {
    pub f: Arc<F>,
    pub next: Box<dyn Output<O>>,
    pub id: OpId,
}

impl<I, O, F: Fn(I, &mut Collector<'_, O>) + Send + Sync> Output<I> for FlatMap<F, O> {
    #[inline]
    fn emit(&mut self, item: I) -> Result<(), TaskError> {
        let mut out = Collector::new(&mut *self.next);
        self.id.guard(|| (self.f)(item, &mut out))?;
        out.into_result()
    }
    forward_control!();
}

/// Flink's keyed reduce: the first record of a key becomes its value; each later record
/// replaces it with `f(value, record)`; every new value is emitted.
pub(crate) struct Reduce<T, K: ?Sized + ToOwned, F> {
    pub key: KeyFn<T, K>,
    pub f: Arc<F>,
    pub state: HashMapValueState<K, Option<T>>,
    pub max_parallelism: u32,
    pub next: Box<dyn Output<T>>,
    pub id: OpId,
    /// With checkpointing: how the state is written and where.
    pub checkpoint: Option<ReduceCheckpoint>,
}

/// Where the snapshots of a Rust-API reduce go.
pub(crate) struct ReduceCheckpoint {
    pub coordinator: Arc<Coordinator>,
    pub uid: Arc<str>,
    pub subtask: u32,
}

impl<T, K, F> Reduce<T, K, F>
where
    T: Clone + Send + Serialize + DeserializeOwned,
    K: ?Sized + ToOwned + Eq + Serialize + Send + Sync,
    K::Owned: Borrow<K> + Serialize + DeserializeOwned + Send,
{
    /// The state in the keyed-state format (`codec::state`). Taken at the barrier,
    /// synchronously: the task pauses for the encoding.
    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        let mut w = KeyedStateWriter::new();
        for g in self.state.key_groups().as_range() {
            for (k, v) in self.state.iter_group(g) {
                let v = v.as_ref().expect("reduce state slot is filled");
                w.push(g, k.borrow(), v)?;
            }
        }
        Ok(w.finish())
    }

    /// Loads this subtask's key groups from every old subtask's snapshot (any parallelism).
    pub fn restore(&mut self, snapshots: &[(u32, Vec<u8>)]) -> Result<(), String> {
        let restore = Restore {
            owned: self.state.key_groups(),
            max_parallelism: self.max_parallelism,
            hash: |key: &K::Owned| stable_hash(key.borrow()),
        };
        for (subtask, snap) in snapshots {
            let state = &mut self.state;
            read_keyed_state(snap, &restore, |g, hash, key, value: T| {
                state.put(g, hash, key, Some(value))
            })
            .map_err(|e| format!("state of old subtask {subtask}: {e}"))?;
        }
        Ok(())
    }
}

impl<T, K, F> Reduce<T, K, F>
where
    T: Clone + Send + Serialize + DeserializeOwned,
    K: ?Sized + ToOwned + Eq + Serialize + Send + Sync,
    K::Owned: Borrow<K> + Serialize + DeserializeOwned + Send,
    F: Fn(T, T) -> T + Send + Sync,
{
    /// `key_hash`: the key's hash as the router of a hash edge computed it, if it did.
    #[inline]
    fn reduce(&mut self, item: T, key_hash: Option<u64>) -> Result<(), TaskError> {
        let key = self.id.guard(|| (self.key)(&item))?;
        debug_assert!(
            key_hash.is_none_or(|h| h == stable_hash(&*key)),
            "the router hashed this key differently"
        );
        let hash = key_hash.unwrap_or_else(|| stable_hash(&*key));
        let group = key_group_of_hash(hash, self.max_parallelism);
        if !self.state.owns(group) {
            return Err(self.id.fail(format!(
                "internal error: key group {group} reached a subtask owning {:?}",
                self.state.key_groups()
            )));
        }
        match self.state.get_mut(group, hash, &key) {
            Some(slot) => {
                // The slot is only empty while `f` runs; a panic there fails the job anyway.
                let acc = slot.take().expect("reduce state slot is filled");
                let f = &self.f;
                let next = self.id.guard(move || f(acc, item))?;
                *slot = Some(next.clone());
                self.next.emit(next)
            }
            None => {
                let key = key.into_owned();
                self.state.put(group, hash, key, Some(item.clone()));
                self.next.emit(item)
            }
        }
    }
}

impl<T, K, F> Output<T> for Reduce<T, K, F>
where
    T: Clone + Send + Serialize + DeserializeOwned,
    K: ?Sized + ToOwned + Eq + Serialize + Send + Sync,
    K::Owned: Borrow<K> + Serialize + DeserializeOwned + Send,
    F: Fn(T, T) -> T + Send + Sync,
{
    #[inline]
    fn emit(&mut self, item: T) -> Result<(), TaskError> {
        self.reduce(item, None)
    }
    #[inline]
    fn emit_keyed(&mut self, item: T, key_hash: u64) -> Result<(), TaskError> {
        self.reduce(item, Some(key_hash))
    }
    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        if let Some(cp) = &self.checkpoint {
            match signal {
                Signal::Barrier(b) => {
                    let bytes = self.snapshot().map_err(|e| {
                        self.id.fail(format!(
                            "cannot snapshot state for checkpoint {}: {e}",
                            b.id
                        ))
                    })?;
                    cp.coordinator
                        .write_state(b.id, &cp.uid, cp.subtask, &bytes)
                        .map_err(|e| {
                            self.id
                                .fail(format!("cannot write checkpoint {}: {e}", b.id))
                        })?;
                }
                // What a run started later from the final checkpoint restores.
                Signal::EndOfInput => {
                    let bytes = self.snapshot().map_err(|e| {
                        self.id
                            .fail(format!("cannot snapshot the final state: {e}"))
                    })?;
                    cp.coordinator.register_final(&cp.uid, cp.subtask, bytes)
                }
                _ => {}
            }
        }
        self.next.signal(signal)
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        self.next.flush()
    }
}

pub(crate) struct SinkOp<T> {
    pub writer: Box<dyn SinkWriter<T>>,
    pub id: OpId,
    checkpoints: Option<(Arc<Coordinator>, Arc<str>)>,
    /// Records written since the last flush (metrics hook).
    written: u64,
}

impl<T: 'static> SinkOp<T> {
    /// The writer of one sink subtask, restored if the job restarts from a checkpoint.
    pub fn create(sink: &dyn Sink<T>, ctx: &SubtaskContext) -> Result<Self, JobError> {
        let setup = |e: &dyn std::fmt::Display| JobError::Setup {
            operator: ctx.operator.to_string(),
            message: e.to_string(),
        };
        let mut writer = sink.create_writer(ctx).map_err(|e| setup(&e))?;
        if let Some(c) = &ctx.checkpoints
            && c.restored().is_some()
        {
            // Every old subtask's snapshot: after a rescale, someone must finish what the
            // subtasks that no longer exist left (e.g. pending Kafka transactions).
            let mut all = c.restored_states(&ctx.uid).map_err(|e| setup(&e))?;
            all.sort_unstable_by_key(|(subtask, _)| *subtask);
            if !writer.restore_from_all(&all).map_err(|e| setup(&e))?
                && let Some((_, own)) = all.iter().find(|(s, _)| *s == ctx.subtask)
            {
                writer.restore(own).map_err(|e| setup(&e))?;
            }
        }
        Ok(SinkOp {
            writer,
            id: OpId::of(ctx),
            checkpoints: ctx.checkpoints.clone().map(|c| (c, ctx.uid.clone())),
            written: 0,
        })
    }
}

impl<T> SinkOp<T> {
    /// Runs a writer call; a panic or an error fails the job naming this sink.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut dyn SinkWriter<T>) -> Result<R, BoxError>,
    ) -> Result<R, TaskError> {
        let (id, writer) = (&self.id, &mut *self.writer);
        id.guard(|| f(writer))?.map_err(|e| id.fail(e))
    }
}

impl<T: Send> Output<T> for SinkOp<T> {
    #[inline]
    fn emit(&mut self, item: T) -> Result<(), TaskError> {
        self.written += 1;
        self.call(|w| w.write(item))
    }
    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        crate::runtime::metrics::records_out(std::mem::take(&mut self.written));
        match signal {
            Signal::EndOfInput => {
                self.call(|w| w.finish())?;
                // What a run started later from the final checkpoint restores.
                if let Some((c, uid)) = self.checkpoints.clone() {
                    let state = self.call(|w| w.snapshot(FINAL_CHECKPOINT))?;
                    c.register_final(&uid, self.id.subtask, state);
                }
                Ok(())
            }
            Signal::Barrier(b) => {
                let state = self.call(|w| w.snapshot(b.id))?;
                if let Some((c, uid)) = &self.checkpoints {
                    c.write_state(b.id, uid, self.id.subtask, &state)
                        .map_err(|e| {
                            self.id
                                .fail(format!("cannot write checkpoint {}: {e}", b.id))
                        })?;
                }
                Ok(())
            }
            Signal::CheckpointComplete(n) => self.call(|w| w.notify_checkpoint_complete(n)),
            Signal::Watermark(_) | Signal::Idle => Ok(()),
        }
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        crate::runtime::metrics::records_out(std::mem::take(&mut self.written));
        self.call(|w| w.flush())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::output::Discard;
    use streamjob_crds::KeyGroupRange;

    type Pair = (String, u64);

    fn reduce() -> Reduce<Pair, str, fn(Pair, Pair) -> Pair> {
        Reduce {
            key: Arc::new(|r: &(String, u64)| Cow::Borrowed(r.0.as_str())),
            f: Arc::new(|(w, a), (_, b)| (w, a + b)),
            state: HashMapValueState::new(KeyGroupRange::for_subtask(0, 1, 16)),
            max_parallelism: 16,
            next: Box::new(Discard),
            id: OpId {
                name: "count".into(),
                subtask: 0,
            },
            checkpoint: None,
        }
    }

    #[test]
    fn a_snapshot_restores_into_another_instance() {
        let mut a = reduce();
        for w in ["x", "y", "x"] {
            a.emit((w.to_string(), 1)).unwrap();
        }
        let mut b = reduce();
        b.restore(&[(0, a.snapshot().unwrap())]).unwrap();
        let h = stable_hash("x");
        let g = key_group_of_hash(h, 16);
        assert_eq!(
            b.state.get_mut(g, h, "x").cloned(),
            Some(Some(("x".into(), 2)))
        );
        assert_eq!(b.state.len(), 2);
    }

    #[test]
    fn state_of_an_unknown_format_version_is_refused_naming_it() {
        let mut a = reduce();
        a.emit(("x".to_string(), 1)).unwrap();
        let mut snap = a.snapshot().unwrap();
        snap[4] = 9; // the version byte after the 4-byte header
        let err = reduce().restore(&[(1, snap)]).unwrap_err();
        assert!(
            err.contains("old subtask 1") && err.contains("format version 9 is not supported"),
            "{err}"
        );
        // The unversioned snapshot of earlier releases (count, groups, keys, values).
        let err = reduce()
            .restore(&[(0, vec![1, 3, 1, 1, b'x', 1, 1, b'x', 1])])
            .unwrap_err();
        assert!(err.contains("header is missing"), "{err}");
    }
}
