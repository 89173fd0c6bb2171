//! Named keyed state of the process operator: TTL under a manual clock (expired entries are
//! never returned, both update types, cleanup on access, in snapshots and by the sweep),
//! and restores that refuse a snapshot whose states the job does not declare alike.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamjob_crds::KeyGroupRange;

use super::*;
use crate::operators::keyed_state::{
    ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor, ValueStateDescriptor,
};
use crate::operators::state_ttl::{StateTtlConfig, UpdateType};
use crate::runtime::time::ManualClock;

struct Collect<O>(Arc<Mutex<Vec<O>>>);

impl<O: Send> Output<ProcessOutput<O>> for Collect<O> {
    fn emit(&mut self, item: ProcessOutput<O>) -> Result<(), TaskError> {
        if let ProcessOutput::Main(o) = item {
            self.0.lock().unwrap().push(o);
        }
        Ok(())
    }
    fn signal(&mut self, _: Signal) -> Result<(), TaskError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
}

type Op<F> = KeyedProcessOperator<(String, Cmd), str, F>;

fn op<F, O>(f: F, clock: &ManualClock, out: &Arc<Mutex<Vec<O>>>) -> Result<Op<F>, String>
where
    F: KeyedProcessFunction<str, (String, Cmd), Out = O>,
    O: Send + 'static,
{
    KeyedProcessOperator::new(
        Arc::new(|r: &(String, Cmd)| Ok(Cow::Borrowed(r.0.as_str()))),
        Arc::new(f),
        ProcessSetup {
            key_groups: KeyGroupRange::for_subtask(0, 1, 128),
            max_parallelism: 128,
            clock: Arc::new(clock.clone()),
            id: OpId {
                name: "states".into(),
                subtask: 0,
            },
            checkpoint: None,
        },
        Box::new(Collect(out.clone())),
    )
}

/// What the test function does with the current key's states.
#[derive(Debug, Clone, Copy)]
enum Cmd {
    Set(i64),
    Read,
}

/// Writes (`Set`) or reads (`Read`) all four kinds of state, each with the same TTL:
/// `Set(v)` updates the value, appends v to the list, puts (v % 2 -> v) into the map and adds
/// v to a sum; `Read` emits what is visible.
struct Ttl {
    value: ValueStateDescriptor<i64>,
    list: ListStateDescriptor<i64>,
    map: MapStateDescriptor<i64, i64>,
    sum: ReducingStateDescriptor<i64>,
}

/// (value, list, map entries, sum) as seen by a `Read`.
type Seen = (Option<i64>, Vec<i64>, Vec<(i64, i64)>, Option<i64>);

impl Ttl {
    fn new(ttl_ms: u64, update: UpdateType) -> Self {
        let ttl = StateTtlConfig::new(Duration::from_millis(ttl_ms)).with_update_type(update);
        Ttl {
            value: ValueStateDescriptor::new("value").enable_time_to_live(ttl),
            list: ListStateDescriptor::new("list").enable_time_to_live(ttl),
            map: MapStateDescriptor::new("map").enable_time_to_live(ttl),
            sum: ReducingStateDescriptor::new("sum", |a, b| a + b).enable_time_to_live(ttl),
        }
    }
}

impl KeyedProcessFunction<str, (String, Cmd)> for Ttl {
    type State = ();
    type Out = Seen;
    fn declare_state(&self, s: &mut StateDeclarations) {
        s.add(&self.value)
            .add(&self.list)
            .add(&self.map)
            .add(&self.sum);
    }
    fn process_element(
        &self,
        (_, cmd): (String, Cmd),
        ctx: &mut KeyedContext<'_, str, ()>,
        out: &mut Collector<'_, Seen>,
    ) {
        match cmd {
            Cmd::Set(v) => {
                ctx.get_state(&self.value).update(v);
                ctx.get_state(&self.list).add(v);
                ctx.get_state(&self.map).put(v % 2, v);
                ctx.get_state(&self.sum).add(v);
            }
            Cmd::Read => {
                let value = ctx.get_state(&self.value).value().copied();
                let list = ctx.get_state(&self.list).get().copied().collect();
                let map = ctx
                    .get_state(&self.map)
                    .entries()
                    .map(|(k, v)| (*k, *v))
                    .collect();
                let sum = ctx.get_state(&self.sum).get().copied();
                out.collect((value, list, map, sum));
            }
        }
    }
}

fn at(clock: &ManualClock, p: &mut Op<Ttl>, t: i64, cmd: Cmd) {
    clock.set(t);
    p.emit(("k".into(), cmd)).unwrap();
}

fn seen(out: &Arc<Mutex<Vec<Seen>>>) -> Seen {
    out.lock().unwrap().pop().expect("a read")
}

#[test]
fn ttl_on_create_and_write_hides_entries_ttl_after_their_last_write() {
    let clock = ManualClock::new(1_000);
    let out = Arc::new(Mutex::new(vec![]));
    let mut p = op(Ttl::new(100, UpdateType::OnCreateAndWrite), &clock, &out).unwrap();
    at(&clock, &mut p, 1_000, Cmd::Set(4));
    at(&clock, &mut p, 1_050, Cmd::Set(7));
    at(&clock, &mut p, 1_099, Cmd::Read);
    assert_eq!(
        seen(&out),
        (Some(7), vec![4, 7], vec![(0, 4), (1, 7)], Some(11))
    );
    // Reads do not extend the TTL: the first write's entries expire at 1100.
    at(&clock, &mut p, 1_100, Cmd::Read);
    assert_eq!(seen(&out), (Some(7), vec![7], vec![(1, 7)], Some(11)));
    at(&clock, &mut p, 1_149, Cmd::Read);
    assert_eq!(seen(&out), (Some(7), vec![7], vec![(1, 7)], Some(11)));
    at(&clock, &mut p, 1_150, Cmd::Read);
    assert_eq!(seen(&out), (None, vec![], vec![], None));
    // Reading expired entries removed them: nothing is left for the key.
    assert_eq!(p.state.len(), 0);
    // An expired reducing value is not folded into the next add.
    at(&clock, &mut p, 1_200, Cmd::Set(5));
    at(&clock, &mut p, 1_200, Cmd::Read);
    assert_eq!(seen(&out), (Some(5), vec![5], vec![(1, 5)], Some(5)));
}

#[test]
fn ttl_on_read_and_write_extends_entries_on_every_read() {
    let clock = ManualClock::new(1_000);
    let out = Arc::new(Mutex::new(vec![]));
    let mut p = op(Ttl::new(100, UpdateType::OnReadAndWrite), &clock, &out).unwrap();
    at(&clock, &mut p, 1_000, Cmd::Set(4));
    at(&clock, &mut p, 1_090, Cmd::Read);
    assert_eq!(seen(&out), (Some(4), vec![4], vec![(0, 4)], Some(4)));
    // Read at 1090: alive until 1190, though written at 1000.
    at(&clock, &mut p, 1_189, Cmd::Read);
    assert_eq!(seen(&out), (Some(4), vec![4], vec![(0, 4)], Some(4)));
    at(&clock, &mut p, 1_289, Cmd::Read);
    assert_eq!(seen(&out), (None, vec![], vec![], None));
}

#[test]
fn expired_entries_are_swept_and_left_out_of_snapshots() {
    let clock = ManualClock::new(1_000);
    let out = Arc::new(Mutex::new(vec![]));
    let mut p = op(Ttl::new(100, UpdateType::OnCreateAndWrite), &clock, &out).unwrap();
    for k in 0..50 {
        clock.set(1_000 + k);
        p.emit((format!("k{k}"), Cmd::Set(k))).unwrap();
    }
    assert_eq!(p.state.len(), 50);
    // Snapshot at 1125: keys written up to 1025 have expired and are dropped.
    clock.set(1_125);
    let snap = p.snapshot().unwrap();
    assert_eq!(p.state.len(), 24);
    let mut q = op(Ttl::new(100, UpdateType::OnCreateAndWrite), &clock, &out).unwrap();
    q.restore(&[(0, snap)]).unwrap();
    assert_eq!(q.state.len(), 24);
    // With the clock back before they expired, the dropped keys still have nothing: they
    // are gone, not hidden.
    clock.set(1_010);
    q.emit(("k3".into(), Cmd::Read)).unwrap();
    assert_eq!(seen(&out), (None, vec![], vec![], None));
    q.emit(("k30".into(), Cmd::Read)).unwrap();
    assert_eq!(seen(&out), (Some(30), vec![30], vec![(0, 30)], Some(30)));
    // Without snapshots or reads, the sweep (every shortest TTL, at least a second, of
    // processing time) drops keys nobody touches again; the snapshot's sweep at 1125 makes
    // the next one due at 2125.
    clock.set(2_124);
    p.emit(("other".into(), Cmd::Set(1))).unwrap();
    assert_eq!(p.state.len(), 25, "no sweep yet");
    clock.set(2_125);
    p.emit(("other".into(), Cmd::Set(1))).unwrap();
    assert_eq!(p.state.len(), 1, "only the key just written is left");
}

/// Declares `count` (value of u64) and `seen` (list of String) unless told otherwise, and
/// writes whatever it declares.
struct Declares {
    decl: fn(&mut StateDeclarations),
}

impl KeyedProcessFunction<str, (String, Cmd)> for Declares {
    type State = ();
    type Out = ();
    fn declare_state(&self, s: &mut StateDeclarations) {
        (self.decl)(s)
    }
    fn process_element(
        &self,
        (key, _): (String, Cmd),
        ctx: &mut KeyedContext<'_, str, ()>,
        _: &mut Collector<'_, ()>,
    ) {
        ctx.get_state(&ValueStateDescriptor::<u64>::new("count"))
            .update(1);
        ctx.get_state(&ListStateDescriptor::<String>::new("seen"))
            .add(key);
    }
}

fn standard(s: &mut StateDeclarations) {
    s.add(&ValueStateDescriptor::<u64>::new("count"))
        .add(&ListStateDescriptor::<String>::new("seen"));
}

fn restore_into(decl: fn(&mut StateDeclarations)) -> Result<(), String> {
    let clock = ManualClock::new(0);
    let out = Arc::new(Mutex::new(vec![]));
    let mut a = op(Declares { decl: standard }, &clock, &out).unwrap();
    for k in ["a", "b"] {
        a.emit((k.into(), Cmd::Read)).unwrap();
    }
    let snap = a.snapshot().unwrap();
    let mut b = op(Declares { decl }, &clock, &out)?;
    b.restore(&[(4, snap)])?;
    assert_eq!(b.state.len(), 2);
    Ok(())
}

#[test]
fn a_snapshot_whose_states_differ_from_the_job_is_refused_naming_the_state() {
    restore_into(standard).unwrap();
    // A new state is fine: keys have none of it yet.
    restore_into(|s| {
        standard(s);
        s.add(&MapStateDescriptor::<u32, u32>::new("new"));
    })
    .unwrap();
    let err = restore_into(|s| {
        s.add(&ValueStateDescriptor::<String>::new("count"))
            .add(&ListStateDescriptor::<String>::new("seen"));
    })
    .unwrap_err();
    assert!(
        err.contains("old subtask 4")
            && err.contains(
                "the snapshot holds value state 'count' of u64, the job declares value \
                 state 'count' of alloc::string::String"
            ),
        "{err}"
    );
    let err = restore_into(|s| {
        s.add(&ReducingStateDescriptor::<u64>::new("count", |a, b| a + b))
            .add(&ListStateDescriptor::<String>::new("seen"));
    })
    .unwrap_err();
    assert!(
        err.contains("the job declares reducing state 'count' of u64"),
        "{err}"
    );
    let err = restore_into(|s| {
        s.add(&ValueStateDescriptor::<u64>::new("count"));
    })
    .unwrap_err();
    assert!(
        err.contains(
            "the snapshot holds list state 'seen' of alloc::string::String, which the process \
             function does not declare"
        ),
        "{err}"
    );
    let err = restore_into(|s| {
        standard(s);
        s.add(&ValueStateDescriptor::<u8>::new("count"));
    })
    .unwrap_err();
    assert!(err.contains("state 'count' is declared twice"), "{err}");
}

/// Keeps a `u64` in its `State` instead of named states.
struct Counts;

impl KeyedProcessFunction<str, (String, Cmd)> for Counts {
    type State = u64;
    type Out = ();
    fn process_element(
        &self,
        _: (String, Cmd),
        ctx: &mut KeyedContext<'_, str, u64>,
        _: &mut Collector<'_, ()>,
    ) {
        *ctx.state() += 1;
    }
}

#[test]
fn a_snapshot_of_another_function_state_type_is_refused() {
    let clock = ManualClock::new(0);
    let out = Arc::new(Mutex::new(vec![]));
    let mut a = op(Counts, &clock, &out).unwrap();
    a.emit(("a".into(), Cmd::Read)).unwrap();
    let snap = a.snapshot().unwrap();
    let err = op(Declares { decl: standard }, &clock, &out)
        .unwrap()
        .restore(&[(0, snap)])
        .unwrap_err();
    assert!(
        err.contains("the function's State type differs: the snapshot holds u64, the job has ()"),
        "{err}"
    );
}

#[test]
fn using_an_undeclared_or_mistyped_state_fails_naming_it() {
    let clock = ManualClock::new(0);
    let out = Arc::new(Mutex::new(vec![]));
    let mut p = op(
        Declares {
            decl: |s| {
                s.add(&ValueStateDescriptor::<u64>::new("count"));
            },
        },
        &clock,
        &out,
    )
    .unwrap();
    let err = p.emit(("a".into(), Cmd::Read)).unwrap_err().to_string();
    assert!(
        err.contains("state 'seen' is used but not declared"),
        "{err}"
    );
    let mut p = op(
        Declares {
            decl: |s| {
                s.add(&ValueStateDescriptor::<u64>::new("count"))
                    .add(&ListStateDescriptor::<u64>::new("seen"));
            },
        },
        &clock,
        &out,
    )
    .unwrap();
    let err = p.emit(("a".into(), Cmd::Read)).unwrap_err().to_string();
    assert!(
        err.contains(
            "list state 'seen' of u64 is used as list state 'seen' of alloc::string::String"
        ),
        "{err}"
    );
}
