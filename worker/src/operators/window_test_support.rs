//! Test scaffolding shared by the window operators' tests (`window`, `count_window`): a sum
//! aggregate, an output collecting what fires, and the snapshot-and-restore-at-another-
//! parallelism step their rescaling tests run.

use std::sync::{Arc, Mutex};

use streamjob_crds::KeyGroupRange;

use crate::error::TaskError;
use crate::operators::windows::AggregateFunction;
use crate::runtime::message::Signal;
use crate::runtime::output::Output;

pub(crate) const MAX_P: u32 = 128;

/// Sums the `.1` of `(key, value)` records.
pub(crate) struct Sum;

impl<K> AggregateFunction<(K, i64)> for Sum {
    type Acc = i64;
    type Out = i64;
    fn create_accumulator(&self) -> i64 {
        0
    }
    fn add(&self, v: (K, i64), acc: &mut i64) {
        *acc += v.1;
    }
    fn get_result(&self, acc: &i64) -> i64 {
        *acc
    }
    fn merge(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

/// Collects every record it gets, in arrival order.
pub(crate) struct Collect<R>(pub Arc<Mutex<Vec<R>>>);

impl<R: Send> Output<R> for Collect<R> {
    fn emit(&mut self, item: R) -> Result<(), TaskError> {
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

/// Takes what `out` collected, sorted.
pub(crate) fn take_sorted<R: Ord>(out: &Mutex<Vec<R>>) -> Vec<R> {
    let mut got = std::mem::take(&mut *out.lock().unwrap());
    got.sort();
    got
}

/// An operator whose keyed state is snapshotted and restored by key group.
pub(crate) trait Rescalable {
    fn snapshot_state(&self) -> Result<Vec<u8>, String>;
    fn restore_state(&mut self, snapshots: &[(u32, Vec<u8>)]) -> Result<(), String>;
}

/// One operator per subtask of parallelism `p`, each with its key groups.
pub(crate) fn subtasks<O>(p: u32, make: impl Fn(u32, KeyGroupRange) -> O) -> Vec<O> {
    (0..p)
        .map(|i| make(i, KeyGroupRange::for_subtask(i, p, MAX_P)))
        .collect()
}

/// Snapshots `before` (subtask `i` is `before[i]`) and restores every snapshot into each of
/// `to` new subtasks, as a job restored at parallelism `to` does.
pub(crate) fn rescale<O: Rescalable>(
    before: Vec<O>,
    to: u32,
    make: impl Fn(u32, KeyGroupRange) -> O,
) -> Vec<O> {
    let snapshots: Vec<(u32, Vec<u8>)> = before
        .iter()
        .enumerate()
        .map(|(i, o)| (i as u32, o.snapshot_state().unwrap()))
        .collect();
    drop(before);
    let mut after = subtasks(to, make);
    for o in after.iter_mut() {
        o.restore_state(&snapshots).unwrap();
    }
    after
}

/// The index of the subtask of parallelism `ops.len()` that owns key group `group`.
pub(crate) fn owner(p: usize, group: u32) -> usize {
    (0..p as u32)
        .position(|i| KeyGroupRange::for_subtask(i, p as u32, MAX_P).contains(group))
        .expect("some subtask owns every group")
}
