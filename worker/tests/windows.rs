//! Event-time windows end to end: out-of-order input with known timestamps gives exactly
//! what an oracle written here computes (late records with and without allowed lateness,
//! session merging, count windows), at parallelism 1, 2 and 3.
//!
//! Watermarks are emitted after every record (`with_watermark_per_record`) so the oracle
//! knows exactly which watermark each record meets at the window operator.

use std::collections::BTreeMap;
use std::time::Duration;

use streamjob::StreamExecutionEnvironment;
use streamjob::api::watermark::WatermarkStrategy;
use streamjob::api::windows::{
    AggregateFunction, EventTimeSessionWindows, OutputTag, SlidingEventTimeWindows,
    TumblingEventTimeWindows, WindowAssigner,
};

/// (key, timestamp, value)
type Rec = (String, i64, i64);
/// (key, window start, window end, sum)
type Out = (String, i64, i64, i64);

/// Deterministic out-of-order input: timestamps wander forward with jitter up to `jitter`.
fn input(n: usize, keys: usize, jitter: i64, seed: u64) -> Vec<Rec> {
    let mut x = seed;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    (0..n)
        .map(|i| {
            let key = format!("k{}", next() % keys as u64);
            let ts = (i as i64) * 7 - (next() % (jitter as u64 + 1)) as i64;
            (key, ts, (next() % 100) as i64)
        })
        .collect()
}

const OOO: i64 = 20;

/// The watermark after each record, as the strategy below computes it.
fn watermarks(records: &[Rec]) -> Vec<i64> {
    let mut max = i64::MIN;
    let mut wm = i64::MIN;
    records
        .iter()
        .map(|r| {
            max = max.max(r.1);
            wm = wm.max(max - OOO - 1);
            wm
        })
        .collect()
}

/// Oracle for tumbling and sliding windows with a sum: returns (results, late records).
fn oracle_fixed(
    records: &[Rec],
    assign: impl Fn(i64) -> Vec<(i64, i64)>,
    lateness: i64,
) -> (Vec<Out>, Vec<Rec>) {
    // (key, start, end) -> (sum, fired)
    let mut open: BTreeMap<(String, i64, i64), (i64, bool)> = BTreeMap::new();
    let (mut out, mut late) = (vec![], vec![]);
    let mut wm = i64::MIN;
    let wms = watermarks(records);
    for (r, new_wm) in records.iter().zip(wms) {
        let live: Vec<_> = assign(r.1)
            .into_iter()
            .filter(|&(_, e)| e - 1 + lateness > wm)
            .collect();
        if live.is_empty() {
            late.push(r.clone());
        }
        for (s, e) in live {
            let slot = open.entry((r.0.clone(), s, e)).or_insert((0, false));
            slot.0 += r.2;
            if slot.1 || e - 1 <= wm {
                slot.1 = true;
                out.push((r.0.clone(), s, e, slot.0));
            }
        }
        if new_wm > wm {
            wm = new_wm;
            fire(&mut open, &mut out, wm, lateness);
        }
    }
    fire(&mut open, &mut out, i64::MAX, lateness);
    out.sort();
    late.sort();
    (out, late)
}

fn fire(
    open: &mut BTreeMap<(String, i64, i64), (i64, bool)>,
    out: &mut Vec<Out>,
    wm: i64,
    lateness: i64,
) {
    for ((k, s, e), (sum, fired)) in open.iter_mut() {
        if !*fired && e - 1 <= wm {
            *fired = true;
            out.push((k.clone(), *s, *e, *sum));
        }
    }
    open.retain(|(_, _, e), _| (e - 1).saturating_add(lateness) > wm);
}

fn tumbling(size: i64) -> impl Fn(i64) -> Vec<(i64, i64)> {
    move |ts| {
        let s = ts - ts.rem_euclid(size);
        vec![(s, s + size)]
    }
}

fn sliding(size: i64, slide: i64) -> impl Fn(i64) -> Vec<(i64, i64)> {
    move |ts| {
        let mut v = vec![];
        let mut s = ts - ts.rem_euclid(slide);
        while s > ts - size {
            v.push((s, s + size));
            s -= slide;
        }
        v
    }
}

struct Sum;
impl AggregateFunction<Rec> for Sum {
    type Acc = i64;
    type Out = i64;
    fn create_accumulator(&self) -> i64 {
        0
    }
    fn add(&self, value: Rec, acc: &mut i64) {
        *acc += value.2;
    }
    fn get_result(&self, acc: &i64) -> i64 {
        *acc
    }
    fn merge(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

fn strategy() -> WatermarkStrategy<Rec> {
    WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(OOO as u64))
        .with_timestamp_assigner(|r: &Rec, _| r.1)
        .with_watermark_per_record()
}

/// How the test job computes its windows.
#[derive(Clone, Copy)]
enum Function {
    Reduce,
    Aggregate,
    Process,
}

/// Runs keyed windows with a sum, returning sorted (results, late records).
fn run(
    records: &[Rec],
    assigner: WindowAssigner,
    lateness: i64,
    parallelism: u32,
    function: Function,
) -> (Vec<Out>, Vec<Rec>) {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(parallelism);
    let tag = OutputTag::<Rec>::new("late");
    let windowed = env
        .from_collection(records.to_vec())
        // One watermark generator: the oracle follows its watermark record by record.
        .assign_timestamps_and_watermarks(strategy())
        .set_parallelism(1)
        .key_by(|r: &Rec| r.0.clone())
        .window(assigner)
        .allowed_lateness(Duration::from_millis(lateness as u64))
        .side_output_late_data(&tag);
    let results = match function {
        Function::Reduce => windowed.reduce_with_process(
            |a: Rec, b: Rec| (a.0, a.1.max(b.1), a.2 + b.2),
            |k: &String, ctx, r: Rec, out| {
                out.collect((k.clone(), ctx.window.start, ctx.window.end, r.2))
            },
        ),
        Function::Aggregate => windowed.aggregate_with_process(Sum, |k: &String, ctx, sum, out| {
            out.collect((k.clone(), ctx.window.start, ctx.window.end, sum))
        }),
        Function::Process => windowed.process(|k: &String, ctx, all: Vec<Rec>, out| {
            out.collect((
                k.clone(),
                ctx.window.start,
                ctx.window.end,
                all.iter().map(|r| r.2).sum(),
            ))
        }),
    };
    let late = results.get_side_output(&tag).collect_sink();
    let out = results.collect_sink();
    env.execute("windows").unwrap();
    let (mut out, mut late) = (out.take(), late.take());
    out.sort();
    late.sort();
    (out, late)
}

/// The input exercises what the test is about: late records are dropped without allowed
/// lateness, and windows fire again with updates within it.
fn check_oracle_covers_lateness(results: &[Out], late: &[Rec], lateness: i64) {
    if lateness == 0 {
        assert!(!late.is_empty(), "the input has late records");
    } else {
        let mut fired: BTreeMap<(&str, i64, i64), usize> = BTreeMap::new();
        for r in results {
            *fired.entry((&r.0, r.1, r.2)).or_default() += 1;
        }
        assert!(fired.values().any(|n| *n > 1), "some window fired again");
    }
}

#[test]
fn tumbling_windows_match_the_oracle_with_and_without_lateness_at_any_parallelism() {
    let records = input(3000, 7, 60, 1);
    for lateness in [0, 30] {
        let (want, want_late) = oracle_fixed(&records, tumbling(50), lateness);
        check_oracle_covers_lateness(&want, &want_late, lateness);
        for (p, f) in [
            (1, Function::Reduce),
            (2, Function::Aggregate),
            (3, Function::Process),
        ] {
            let got = run(
                &records,
                TumblingEventTimeWindows::of(Duration::from_millis(50)),
                lateness,
                p,
                f,
            );
            assert_eq!(got.0, want, "results, lateness {lateness}, parallelism {p}");
            assert_eq!(got.1, want_late, "late records, lateness {lateness}");
        }
    }
}

#[test]
fn sliding_windows_match_the_oracle() {
    let records = input(2000, 5, 150, 2);
    for lateness in [0, 25] {
        let (want, want_late) = oracle_fixed(&records, sliding(60, 20), lateness);
        check_oracle_covers_lateness(&want, &want_late, lateness);
        for p in [1, 3] {
            let got = run(
                &records,
                SlidingEventTimeWindows::of(Duration::from_millis(60), Duration::from_millis(20)),
                lateness,
                p,
                Function::Aggregate,
            );
            assert_eq!(got.0, want, "lateness {lateness}, parallelism {p}");
            assert_eq!(got.1, want_late);
        }
    }
}

/// Oracle for session windows with a sum.
fn oracle_sessions(records: &[Rec], gap: i64, lateness: i64) -> (Vec<Out>, Vec<Rec>) {
    // key -> sessions (start, end, sum, fired)
    let mut open: BTreeMap<String, Vec<(i64, i64, i64, bool)>> = BTreeMap::new();
    let (mut out, mut late) = (vec![], vec![]);
    let mut wm = i64::MIN;
    let wms = watermarks(records);
    let fire_all =
        |open: &mut BTreeMap<String, Vec<(i64, i64, i64, bool)>>, out: &mut Vec<Out>, wm: i64| {
            for (k, sessions) in open.iter_mut() {
                for s in sessions.iter_mut() {
                    if !s.3 && s.1 - 1 <= wm {
                        s.3 = true;
                        out.push((k.clone(), s.0, s.1, s.2));
                    }
                }
                sessions.retain(|s| (s.1 - 1).saturating_add(lateness) > wm);
            }
        };
    for (r, new_wm) in records.iter().zip(wms) {
        let sessions = open.entry(r.0.clone()).or_default();
        let (mut start, mut end, mut sum) = (r.1, r.1 + gap, r.2);
        let touching = |s: &(i64, i64, i64, bool)| s.0 <= r.1 + gap && s.1 >= r.1;
        for s in sessions.iter().filter(|s| touching(s)) {
            start = start.min(s.0);
            end = end.max(s.1);
        }
        if end - 1 + lateness <= wm {
            late.push(r.clone());
        } else {
            sum += sessions
                .iter()
                .filter(|s| touching(s))
                .map(|s| s.2)
                .sum::<i64>();
            sessions.retain(|s| !touching(s));
            let fired = end - 1 <= wm;
            if fired {
                out.push((r.0.clone(), start, end, sum));
            }
            sessions.push((start, end, sum, fired));
        }
        if new_wm > wm {
            wm = new_wm;
            fire_all(&mut open, &mut out, wm);
        }
    }
    fire_all(&mut open, &mut out, i64::MAX);
    out.sort();
    late.sort();
    (out, late)
}

#[test]
fn session_windows_merge_and_match_the_oracle() {
    // Sparse keys so that sessions form, get bridged by late records, and close.
    let records = input(1500, 11, 150, 3);
    for lateness in [0, 40] {
        let (want, want_late) = oracle_sessions(&records, 30, lateness);
        check_oracle_covers_lateness(&want, &want_late, lateness);
        assert!(
            want.iter().any(|o| o.2 - o.1 > 60),
            "some sessions merged several records"
        );
        for p in [1, 2] {
            let got = run(
                &records,
                EventTimeSessionWindows::with_gap(Duration::from_millis(30)),
                lateness,
                p,
                Function::Process,
            );
            assert_eq!(got.0, want, "lateness {lateness}, parallelism {p}");
            assert_eq!(got.1, want_late);
        }
    }
}

#[test]
fn late_records_without_a_side_output_are_dropped_and_the_rest_is_exact() {
    let records = input(1000, 3, 60, 4);
    let (want, want_late) = oracle_fixed(&records, tumbling(40), 0);
    assert!(!want_late.is_empty());
    let env = StreamExecutionEnvironment::get_execution_environment();
    let out = env
        .from_collection(records)
        .assign_timestamps_and_watermarks(strategy())
        .key_by(|r: &Rec| r.0.clone())
        .window(TumblingEventTimeWindows::of(Duration::from_millis(40)))
        .aggregate_with_process(Sum, |k: &String, ctx, sum, out| {
            out.collect((k.clone(), ctx.window.start, ctx.window.end, sum))
        })
        .collect_sink();
    env.execute("drop-late").unwrap();
    let mut got = out.take();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn count_windows_fire_every_n_records_per_key() {
    let records = input(500, 4, 0, 5);
    // Oracle: per key in arrival order.
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &records {
        per_key.entry(r.0.clone()).or_default().push(r.2);
    }
    let mut tumbling_want = vec![];
    let mut sliding_want = vec![];
    for (k, vs) in &per_key {
        for chunk in vs.chunks(5).filter(|c| c.len() == 5) {
            tumbling_want.push((k.clone(), chunk.iter().sum::<i64>()));
        }
        for i in (2..=vs.len()).step_by(2) {
            let from = i.saturating_sub(5);
            sliding_want.push((k.clone(), vs[from..i].iter().sum::<i64>()));
        }
    }
    tumbling_want.sort();
    sliding_want.sort();
    for p in [1, 2] {
        let env = StreamExecutionEnvironment::get_execution_environment();
        env.set_parallelism(p);
        let keyed = env
            .from_collection(records.clone())
            .key_by(|r: &Rec| r.0.clone());
        let t = keyed
            .count_window(5)
            .aggregate_with_process(Sum, |k: &String, _, s, out| out.collect((k.clone(), s)))
            .collect_sink();
        let s = keyed
            .count_window_sliding(5, 2)
            .aggregate_with_process(Sum, |k: &String, _, s, out| out.collect((k.clone(), s)))
            .collect_sink();
        env.execute("count").unwrap();
        let (mut t, mut s) = (t.take(), s.take());
        t.sort();
        s.sort();
        assert_eq!(t, tumbling_want, "parallelism {p}");
        assert_eq!(s, sliding_want, "parallelism {p}");
    }
}

#[test]
fn window_all_sees_every_record() {
    let records = input(800, 5, 30, 6);
    let mut want: BTreeMap<i64, i64> = BTreeMap::new();
    for r in &records {
        *want.entry(r.1 - r.1.rem_euclid(100)).or_default() += r.2;
    }
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(3);
    let out = env
        .from_collection(records)
        .assign_timestamps_and_watermarks(
            // No watermark before the end: nothing is late, every window fires at the end.
            WatermarkStrategy::no_watermarks().with_timestamp_assigner(|r: &Rec, _| r.1),
        )
        .window_all(TumblingEventTimeWindows::of(Duration::from_millis(100)))
        .aggregate_with_process(Sum, |_: &(), ctx, s, out| {
            out.collect((ctx.window.start, s))
        })
        .collect_sink();
    env.execute("all").unwrap();
    let got: BTreeMap<i64, i64> = out.take().into_iter().collect();
    assert_eq!(got, want);
}

#[test]
fn an_event_time_window_without_timestamps_fails_naming_the_fix() {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.from_collection(vec![("a".to_string(), 1i64, 1i64)])
        .key_by(|r: &Rec| r.0.clone())
        .window(TumblingEventTimeWindows::of(Duration::from_millis(10)))
        .reduce(|a, _| a)
        .collect_sink();
    let err = env.execute("no-ts").unwrap_err().to_string();
    assert!(
        err.contains("without a timestamp") && err.contains("assign_timestamps_and_watermarks"),
        "{err}"
    );
}

/// A two-split source tracking watermarks per split, as the Kafka source does: split 1
/// goes quiet and is left out after the idleness timeout, so split 0's records advance
/// event time alone and a record behind that watermark is late.
struct SplitSource;

struct SplitReader {
    step: usize,
    tracker: streamjob::runtime::time::SplitWatermarks,
}

impl streamjob::Source<Rec> for SplitSource {
    fn max_parallelism(&self) -> Option<u32> {
        Some(1)
    }
    fn create_reader(
        &self,
        _ctx: &streamjob::SubtaskContext,
    ) -> Result<Box<dyn streamjob::SourceReader<Rec>>, streamjob::BoxError> {
        Ok(Box::new(SplitReader {
            step: 0,
            tracker: streamjob::runtime::time::SplitWatermarks::new(0, Some(1_000)),
        }))
    }
}

impl streamjob::SourceReader<Rec> for SplitReader {
    fn poll_next(
        &mut self,
        out: &mut streamjob::Collector<'_, Rec>,
    ) -> Result<streamjob::SourceStatus, streamjob::BoxError> {
        // (split, key, timestamp, processing time now)
        const STEPS: [(&str, &str, i64, i64); 6] = [
            ("p0", "a", 10, 0),
            ("p1", "b", 5, 0),
            ("p0", "a", 120, 500),
            ("p0", "a", 230, 1_600), // p1 idle since 0: left out, watermark 229
            ("p1", "b", 20, 1_700),  // behind the watermark: late
            ("p0", "a", 240, 1_800),
        ];
        let Some(&(split, key, ts, now)) = STEPS.get(self.step) else {
            return Ok(streamjob::SourceStatus::Finished);
        };
        self.step += 1;
        self.tracker.on_record(split, ts, now);
        out.collect_with_timestamp((key.to_string(), ts, 1), ts);
        match self.tracker.current(now) {
            Some(w) => out.emit_watermark(w),
            None => out.mark_idle(),
        }
        Ok(streamjob::SourceStatus::MoreAvailable)
    }
}

#[test]
fn a_source_with_per_split_watermarks_leaves_idle_splits_out() {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2);
    let tag = OutputTag::<Rec>::new("late");
    let results = env
        .from_source(SplitSource, "splits")
        .key_by(|r: &Rec| r.0.clone())
        .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
        .side_output_late_data(&tag)
        .aggregate_with_process(Sum, |k: &String, ctx, s, out| {
            out.collect((k.clone(), ctx.window.start, ctx.window.end, s))
        });
    let late = results.get_side_output(&tag).collect_sink();
    let out = results.collect_sink();
    env.execute("splits").unwrap();
    let mut got = out.take();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a".to_string(), 0, 100, 1),
            ("a".to_string(), 100, 200, 1),
            ("a".to_string(), 200, 300, 2),
            ("b".to_string(), 0, 100, 1),
        ]
    );
    assert_eq!(late.take(), vec![("b".to_string(), 20, 1)]);
}
