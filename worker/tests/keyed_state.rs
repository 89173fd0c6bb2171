//! Keyed state handles and side outputs of process functions, end to end: every state kind
//! against an oracle at parallelism 1 and 3, side outputs routed exactly (from records and
//! from timers), and a job whose states are checkpointed and restored at parallelism
//! 2 -> 3 and 3 -> 1 giving the uninterrupted run's output. TTL with a manual clock and
//! snapshot/job mismatches are tested next to the operator (operators/process_state_tests.rs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use streamjob::api::process::{
    KeyedCoProcessFunction, KeyedContext, KeyedProcessFunction, ListStateDescriptor,
    MapStateDescriptor, ReducingStateDescriptor, StateDeclarations, StateTtlConfig,
    ValueStateDescriptor,
};
use streamjob::api::windows::OutputTag;
use streamjob::{Collector, StreamExecutionEnvironment};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Visit {
    user: String,
    page: u32,
    amount: i64,
}

/// Per record: (user, visits so far, pages since the last visit of page 0, visits of this
/// page, largest amount, distinct pages held).
type Out = (String, u64, Vec<u32>, u64, i64, usize);

struct AllStates {
    count: ValueStateDescriptor<u64>,
    recent: ListStateDescriptor<u32>,
    per_page: MapStateDescriptor<u32, u64>,
    max_amount: ReducingStateDescriptor<i64>,
}

impl AllStates {
    fn new() -> Self {
        // A TTL far beyond the test's run: the TTL bookkeeping is exercised, nothing expires.
        let ttl = StateTtlConfig::new(Duration::from_secs(3600));
        AllStates {
            count: ValueStateDescriptor::new("count"),
            recent: ListStateDescriptor::new("recent").enable_time_to_live(ttl),
            per_page: MapStateDescriptor::new("per page"),
            max_amount: ReducingStateDescriptor::new("max amount", i64::max),
        }
    }
}

impl KeyedProcessFunction<String, Visit> for AllStates {
    type State = ();
    type Out = Out;

    fn declare_state(&self, states: &mut StateDeclarations) {
        states
            .add(&self.count)
            .add(&self.recent)
            .add(&self.per_page)
            .add(&self.max_amount);
    }

    fn process_element(
        &self,
        v: Visit,
        ctx: &mut KeyedContext<'_, String, ()>,
        out: &mut Collector<'_, Out>,
    ) {
        let mut count = ctx.get_state(&self.count);
        let n = count.value().copied().unwrap_or(0) + 1;
        count.update(n);

        let mut recent = ctx.get_state(&self.recent);
        if v.page == 0 {
            recent.clear();
        } else {
            recent.add(v.page);
        }
        let recent: Vec<u32> = recent.get().copied().collect();

        let mut pages = ctx.get_state(&self.per_page);
        let visits = pages.get(&v.page).copied().unwrap_or(0) + 1;
        pages.put(v.page, visits);
        if v.page % 7 == 3 {
            pages.remove(&((v.page + 1) % 10));
        }
        let distinct = pages.keys().count();

        let mut max = ctx.get_state(&self.max_amount);
        max.add(v.amount);
        let max = *max.get().expect("just added");

        out.collect((v.user.clone(), n, recent, visits, max, distinct));
    }
}

#[derive(Default)]
struct OracleKey {
    count: u64,
    recent: Vec<u32>,
    pages: BTreeMap<u32, u64>,
    max: Option<i64>,
}

fn oracle(visits: &[Visit]) -> Vec<Out> {
    let mut keys: BTreeMap<String, OracleKey> = BTreeMap::new();
    let mut out = vec![];
    for v in visits {
        let k = keys.entry(v.user.clone()).or_default();
        k.count += 1;
        if v.page == 0 {
            k.recent.clear();
        } else {
            k.recent.push(v.page);
        }
        let visits = k.pages.get(&v.page).copied().unwrap_or(0) + 1;
        k.pages.insert(v.page, visits);
        if v.page % 7 == 3 {
            k.pages.remove(&((v.page + 1) % 10));
        }
        k.max = Some(k.max.map_or(v.amount, |m| m.max(v.amount)));
        out.push((
            v.user.clone(),
            k.count,
            k.recent.clone(),
            visits,
            k.max.unwrap(),
            k.pages.len(),
        ));
    }
    out.sort();
    out
}

fn visits(n: usize, seed: u64) -> Vec<Visit> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            Visit {
                user: format!("u{}", (x >> 33) % 13),
                page: ((x >> 45) % 10) as u32,
                amount: ((x >> 20) % 201) as i64 - 100,
            }
        })
        .collect()
}

#[test]
fn value_list_map_and_reducing_state_match_the_oracle_at_parallelism_1_and_3() {
    let input = visits(3_000, 5);
    let want = oracle(&input);
    assert!(want.iter().any(|o| o.2.is_empty()), "lists get cleared");
    assert!(want.iter().any(|o| o.2.len() > 5), "lists grow");
    for p in [1, 3] {
        let env = StreamExecutionEnvironment::get_execution_environment();
        env.set_parallelism(p);
        let out = env
            .from_collection(input.clone())
            .key_by(|v: &Visit| v.user.clone())
            .process(AllStates::new())
            .collect_sink();
        env.execute("all states").unwrap();
        let mut got = out.take();
        got.sort();
        assert_eq!(got, want, "parallelism {p}");
    }
}

/// Big amounts to one side output, negative ones to another, the rest to the main output;
/// every user's event-time timer (fired by the final watermark) to a third.
struct Router {
    big: OutputTag<(String, i64)>,
    negative: OutputTag<i64>,
    ended: OutputTag<String>,
}

impl KeyedProcessFunction<String, Visit> for Router {
    type State = ();
    type Out = i64;

    fn process_element(
        &self,
        v: Visit,
        ctx: &mut KeyedContext<'_, String, ()>,
        out: &mut Collector<'_, i64>,
    ) {
        ctx.register_event_time_timer(0);
        if v.amount > 50 {
            ctx.output(&self.big, (v.user, v.amount));
        } else if v.amount < 0 {
            ctx.output(&self.negative, v.amount);
        } else {
            out.collect(v.amount);
        }
    }

    fn on_timer(
        &self,
        _t: i64,
        ctx: &mut KeyedContext<'_, String, ()>,
        _: &mut Collector<'_, i64>,
    ) {
        let user = ctx.get_current_key().clone();
        ctx.output(&self.ended, user);
    }
}

#[test]
fn side_outputs_of_a_process_function_get_exactly_their_records() {
    let input = visits(2_000, 9);
    let mut want_main: Vec<i64> = input
        .iter()
        .map(|v| v.amount)
        .filter(|a| (0..=50).contains(a))
        .collect();
    let mut want_big: Vec<(String, i64)> = input
        .iter()
        .filter(|v| v.amount > 50)
        .map(|v| (v.user.clone(), v.amount))
        .collect();
    let mut want_negative: Vec<i64> = input.iter().map(|v| v.amount).filter(|a| *a < 0).collect();
    let mut want_ended: Vec<String> = input.iter().map(|v| v.user.clone()).collect();
    want_ended.sort();
    want_ended.dedup();
    want_main.sort();
    want_big.sort();
    want_negative.sort();
    for p in [1, 2] {
        let env = StreamExecutionEnvironment::get_execution_environment();
        env.set_parallelism(p);
        let router = Router {
            big: OutputTag::new("big"),
            negative: OutputTag::new("negative"),
            ended: OutputTag::new("ended"),
        };
        let (big, negative, ended) = (
            router.big.clone(),
            router.negative.clone(),
            router.ended.clone(),
        );
        let main = env
            .from_collection(input.clone())
            .key_by(|v: &Visit| v.user.clone())
            .process(router)
            .uid("router");
        let big = main.get_side_output(&big).collect_sink();
        // Asking twice gives the same stream, not a second copy of the records.
        let negative_stream = main.get_side_output(&negative);
        let _ = main.get_side_output(&negative);
        let negative = negative_stream.collect_sink();
        let ended = main.get_side_output(&ended).collect_sink();
        let main = main.collect_sink();
        env.execute("side outputs").unwrap();
        assert_eq!(sorted(main.take()), want_main, "main, parallelism {p}");
        assert_eq!(sorted(big.take()), want_big, "big, parallelism {p}");
        assert_eq!(
            sorted(negative.take()),
            want_negative,
            "negative, parallelism {p}"
        );
        assert_eq!(sorted(ended.take()), want_ended, "ended, parallelism {p}");
    }
}

struct WritesStrings(OutputTag<String>);

impl KeyedProcessFunction<String, Visit> for WritesStrings {
    type State = ();
    type Out = i64;
    fn process_element(
        &self,
        v: Visit,
        ctx: &mut KeyedContext<'_, String, ()>,
        _: &mut Collector<'_, i64>,
    ) {
        ctx.output(&self.0, v.user);
    }
}

#[test]
fn a_side_output_read_as_another_type_fails_the_job_naming_the_tag() {
    let env = StreamExecutionEnvironment::get_execution_environment();
    let main = env
        .from_collection(visits(10, 1))
        .key_by(|v: &Visit| v.user.clone())
        .process(WritesStrings(OutputTag::new("names")));
    let _ = main
        .get_side_output(&OutputTag::<u64>::new("names"))
        .collect_sink();
    let err = env.execute("wrong side type").unwrap_err().to_string();
    assert!(
        err.contains("side output \"names\" is read as u64 but was written with another type"),
        "{err}"
    );
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sj-keyed-state-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `AllStates` over `input` at parallelism `p`, checkpointing into `chk` (restoring
/// from the newest checkpoint there, e.g. the previous run's final one).
fn run_checkpointed(input: Vec<Visit>, p: u32, chk: &std::path::Path) -> Vec<Out> {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(p)
        .enable_checkpointing(Duration::from_secs(3600), chk, 3);
    let out = env
        .from_collection(input)
        .key_by(|v: &Visit| v.user.clone())
        .process(AllStates::new())
        .uid("all-states")
        .collect_sink();
    env.execute("all states, checkpointed").unwrap();
    out.take()
}

#[test]
fn keyed_states_restored_at_another_parallelism_continue_exactly() {
    let input = visits(2_000, 21);
    let want = oracle(&input);
    let (first, second) = input.split_at(900);
    for (from, to) in [(2, 3), (3, 1)] {
        let chk = tmp(&format!("{from}-{to}"));
        // The first run's final checkpoint holds every key's states; the second run restores
        // them at another parallelism and reads the rest of the input.
        let mut got = run_checkpointed(first.to_vec(), from, &chk);
        got.extend(run_checkpointed(second.to_vec(), to, &chk));
        got.sort();
        assert_eq!(got, want, "{from} -> {to}");
        let _ = std::fs::remove_dir_all(&chk);
    }
}

/// Enrichment with a control stream: amounts wait in list state until their user's factor
/// arrives in value state; the final watermark's timer flushes users that never got one.
struct Enrich {
    factor: ValueStateDescriptor<i64>,
    pending: ListStateDescriptor<i64>,
}

impl KeyedCoProcessFunction<String, (String, i64), (String, i64)> for Enrich {
    type State = ();
    type Out = (String, i64);

    fn declare_state(&self, states: &mut StateDeclarations) {
        states.add(&self.factor).add(&self.pending);
    }

    fn process_element1(
        &self,
        (user, amount): (String, i64),
        ctx: &mut KeyedContext<'_, String, ()>,
        out: &mut Collector<'_, (String, i64)>,
    ) {
        match ctx.get_state(&self.factor).value().copied() {
            Some(f) => out.collect((user, amount * f)),
            None => {
                ctx.get_state(&self.pending).add(amount);
                ctx.register_event_time_timer(0);
            }
        }
    }

    fn process_element2(
        &self,
        (user, f): (String, i64),
        ctx: &mut KeyedContext<'_, String, ()>,
        out: &mut Collector<'_, (String, i64)>,
    ) {
        ctx.get_state(&self.factor).update(f);
        let mut pending = ctx.get_state(&self.pending);
        for a in pending.get() {
            out.collect((user.clone(), a * f));
        }
        pending.clear();
    }

    fn on_timer(
        &self,
        _: i64,
        ctx: &mut KeyedContext<'_, String, ()>,
        out: &mut Collector<'_, (String, i64)>,
    ) {
        let user = ctx.get_current_key().clone();
        let mut pending = ctx.get_state(&self.pending);
        for a in pending.get() {
            out.collect((user.clone(), *a));
        }
        pending.clear();
    }
}

#[test]
fn a_co_process_function_shares_named_state_between_its_inputs() {
    let amounts: Vec<(String, i64)> = (0..400)
        .map(|i| (format!("u{}", i % 9), i as i64))
        .collect();
    let factors: Vec<(String, i64)> = (0..6).map(|i| (format!("u{i}"), 10 + i)).collect();
    let factor_of: BTreeMap<String, i64> = factors.iter().cloned().collect();
    let want = sorted(
        amounts
            .iter()
            .map(|(u, a)| (u.clone(), a * factor_of.get(u).copied().unwrap_or(1)))
            .collect(),
    );
    for p in [1, 3] {
        let env = StreamExecutionEnvironment::get_execution_environment();
        env.set_parallelism(p);
        let out = env
            .from_collection(amounts.clone())
            .connect(&env.from_collection(factors.clone()))
            .key_by(
                |a: &(String, i64)| a.0.clone(),
                |f: &(String, i64)| f.0.clone(),
            )
            .co_process(Enrich {
                factor: ValueStateDescriptor::new("factor"),
                pending: ListStateDescriptor::new("pending"),
            })
            .collect_sink();
        env.execute("enrich").unwrap();
        assert_eq!(sorted(out.take()), want, "parallelism {p}");
    }
}

/// `AllStates` with its `count` retyped.
struct RetypedCount(ValueStateDescriptor<String>, AllStates);

impl KeyedProcessFunction<String, Visit> for RetypedCount {
    type State = ();
    type Out = Out;
    fn declare_state(&self, states: &mut StateDeclarations) {
        states
            .add(&self.0)
            .add(&self.1.recent)
            .add(&self.1.per_page)
            .add(&self.1.max_amount);
    }
    fn process_element(
        &self,
        _: Visit,
        _: &mut KeyedContext<'_, String, ()>,
        _: &mut Collector<'_, Out>,
    ) {
    }
}

#[test]
fn a_job_restoring_states_it_declares_differently_fails_naming_the_state() {
    let chk = tmp("retyped");
    run_checkpointed(visits(100, 3), 2, &chk);
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2)
        .enable_checkpointing(Duration::from_secs(3600), &chk, 3);
    env.from_collection(visits(10, 4))
        .key_by(|v: &Visit| v.user.clone())
        .process(RetypedCount(
            ValueStateDescriptor::new("count"),
            AllStates::new(),
        ))
        .uid("all-states")
        .collect_sink();
    let err = env.execute("retyped").unwrap_err().to_string();
    assert!(
        err.contains("cannot restore from checkpoint")
            && err.contains(
                "the snapshot holds value state 'count' of u64, the job declares value state \
                 'count' of alloc::string::String"
            ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&chk);
}
