//! `KeyedProcessFunction` end to end: per-key state and event-time timers (register,
//! delete, fire on the watermark and at the end of input) against an oracle, at
//! parallelism 1 and 3.

use std::collections::BTreeMap;
use std::time::Duration;

use streamjob::api::process::{KeyedContext, KeyedProcessFunction, TimerDomain};
use streamjob::api::watermark::WatermarkStrategy;
use streamjob::{Collector, StreamExecutionEnvironment};

type Rec = (String, i64);
/// (key, records counted, timer time)
type Out = (String, u64, i64);

const TIMEOUT: i64 = 50;
const OOO: i64 = 10;

/// Counts a key's records until it has been quiet for TIMEOUT of event time.
struct Timeout;

#[derive(Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Count {
    n: u64,
    timer: Option<i64>,
}

impl KeyedProcessFunction<String, Rec> for Timeout {
    type State = Count;
    type Out = Out;
    fn process_element(
        &self,
        value: Rec,
        ctx: &mut KeyedContext<'_, String, Count>,
        _out: &mut Collector<'_, Out>,
    ) {
        assert_eq!(ctx.timestamp(), Some(value.1));
        if let Some(t) = ctx.state().timer.take() {
            ctx.delete_event_time_timer(t);
        }
        let t = value.1 + TIMEOUT;
        ctx.register_event_time_timer(t);
        let s = ctx.state();
        s.n += 1;
        s.timer = Some(t);
    }

    fn on_timer(
        &self,
        timestamp: i64,
        ctx: &mut KeyedContext<'_, String, Count>,
        out: &mut Collector<'_, Out>,
    ) {
        assert_eq!(ctx.timer_domain(), Some(TimerDomain::EventTime));
        let key = ctx.get_current_key().clone();
        let n = std::mem::take(ctx.state()).n;
        out.collect((key, n, timestamp));
    }
}

fn input(n: usize) -> Vec<Rec> {
    let mut x: u64 = 77;
    (0..n)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Bursts: keys go quiet for a while now and then.
            let key = format!("k{}", (x >> 40) % 5);
            let ts = (i as i64) * 4 + ((i / 40) as i64) * 60 - ((x >> 60) as i64 % 8);
            (key, ts)
        })
        .collect()
}

fn oracle(records: &[Rec]) -> Vec<Out> {
    let mut state: BTreeMap<String, Count> = BTreeMap::new();
    // time -> keys with a live timer at that time
    let mut out = vec![];
    let (mut max, mut wm) = (i64::MIN, i64::MIN);
    let fire = |state: &mut BTreeMap<String, Count>, out: &mut Vec<Out>, wm: i64| {
        for (k, c) in state.iter_mut() {
            if let Some(t) = c.timer
                && t <= wm
            {
                out.push((k.clone(), c.n, t));
                *c = Count::default();
            }
        }
    };
    for (k, ts) in records {
        let c = state.entry(k.clone()).or_default();
        c.n += 1;
        c.timer = Some(ts + TIMEOUT);
        max = max.max(*ts);
        if max - OOO - 1 > wm {
            wm = max - OOO - 1;
            fire(&mut state, &mut out, wm);
        }
    }
    fire(&mut state, &mut out, i64::MAX);
    out.sort();
    out
}

#[test]
fn timers_and_state_per_key_match_the_oracle_at_any_parallelism() {
    let records = input(2_000);
    let want = oracle(&records);
    assert!(want.len() > 20, "keys time out many times: {}", want.len());
    for p in [1, 3] {
        let env = StreamExecutionEnvironment::get_execution_environment();
        env.set_parallelism(p);
        let out = env
            .from_collection(records.clone())
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(OOO as u64))
                    .with_timestamp_assigner(|r: &Rec, _| r.1)
                    .with_watermark_per_record(),
            )
            .set_parallelism(1)
            .key_by(|r: &Rec| r.0.clone())
            .process(Timeout)
            .collect_sink();
        env.execute("timeouts").unwrap();
        let mut got = out.take();
        got.sort();
        assert_eq!(got, want, "parallelism {p}");
    }
}

/// Sums amounts per user and scales them by the user's factor from a second stream;
/// emits at the end of input (an event-time timer the final watermark fires).
struct Scale;

#[derive(Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Acc {
    sum: i64,
    factor: Option<i64>,
}

impl streamjob::api::process::KeyedCoProcessFunction<String, (String, i64), (String, i64)>
    for Scale
{
    type State = Acc;
    type Out = (String, i64);
    fn process_element1(
        &self,
        value: (String, i64),
        ctx: &mut KeyedContext<'_, String, Acc>,
        _out: &mut Collector<'_, (String, i64)>,
    ) {
        ctx.state().sum += value.1;
        ctx.register_event_time_timer(0);
    }
    fn process_element2(
        &self,
        value: (String, i64),
        ctx: &mut KeyedContext<'_, String, Acc>,
        _out: &mut Collector<'_, (String, i64)>,
    ) {
        ctx.state().factor = Some(value.1);
        ctx.register_event_time_timer(0);
    }
    fn on_timer(
        &self,
        _timestamp: i64,
        ctx: &mut KeyedContext<'_, String, Acc>,
        out: &mut Collector<'_, (String, i64)>,
    ) {
        let key = ctx.get_current_key().clone();
        let acc = std::mem::take(ctx.state());
        out.collect((key, acc.sum * acc.factor.unwrap_or(1)));
    }
}

#[test]
fn connected_streams_share_keyed_state_and_timers() {
    let amounts: Vec<(String, i64)> = (0..300)
        .map(|i| (format!("u{}", i % 7), i as i64))
        .collect();
    let factors: Vec<(String, i64)> = (0..5).map(|i| (format!("u{i}"), 10 + i)).collect();
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for (u, a) in &amounts {
        *want.entry(u.clone()).or_default() += a;
    }
    for (u, f) in &factors {
        *want.get_mut(u).unwrap() *= f;
    }
    for p in [1, 2] {
        let env = StreamExecutionEnvironment::get_execution_environment();
        env.set_parallelism(p);
        let a = env.from_collection(amounts.clone());
        let f = env.from_collection(factors.clone());
        let out = a
            .connect(&f)
            .key_by(
                |x: &(String, i64)| x.0.clone(),
                |y: &(String, i64)| y.0.clone(),
            )
            .co_process(Scale)
            .collect_sink();
        env.execute("connect").unwrap();
        let got = out.take();
        assert_eq!(got.len(), want.len(), "one result per user: {got:?}");
        let got: BTreeMap<String, i64> = got.into_iter().collect();
        assert_eq!(got, want, "parallelism {p}");
    }
}
