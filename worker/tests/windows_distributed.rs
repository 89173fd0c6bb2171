//! The same event-time windowed job in one process and on 2 and 3 worker processes (records,
//! timestamps and watermarks crossing the gRPC exchange) gives byte-identical output, equal
//! to an oracle written here: out-of-order input with a keyBy, bounded inputs whose end fires
//! every window, and an idle Kafka partition that must not hold event time back.
//!
//! Records arrive at most `JITTER` ms out of order and the watermark bound is larger, so no
//! record is late whatever the watermark's timing: each window fires exactly once, with all
//! its records, and the oracle is a plain group-by.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use streamjob::StreamExecutionEnvironment;
use streamjob::api::watermark::WatermarkStrategy;
use streamjob::api::windows::{AggregateFunction, TumblingEventTimeWindows};
use streamjob::connectors::file_sink::FileSink;

mod common;

use common::cluster::MiniCluster;
use common::kafka_topics::{broker, create_topic, produce_to, unique};
use common::workers::cluster_config;
use common::{BIN, free_ports, lazy, sorted_lines, succeed, wait_for};

const JITTER: i64 = 2000;
const BOUND: &str = "3s";
const WINDOW: i64 = 5000;
const KEYS: u64 = 7;

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("windist", name)
}

/// (key, timestamp, value): timestamps 50 ms apart, each up to `JITTER` ms early.
fn records(n: usize, seed: u64) -> Vec<(String, i64, i64)> {
    let mut x = seed;
    (0..n)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = x >> 33;
            (
                format!("k{}", r % KEYS),
                1_000_000 + 50 * i as i64 - (r >> 3) as i64 % JITTER,
                (r >> 16) as i64 % 100,
            )
        })
        .collect()
}

/// Tumbling windows of `WINDOW` ms per key: `["key",start,end,count,sum]`, sorted, as the
/// jobs write them.
fn oracle(recs: &[(String, i64, i64)]) -> Vec<String> {
    let mut windows: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for (k, ts, v) in recs {
        let w = windows
            .entry((k.clone(), ts - ts.rem_euclid(WINDOW)))
            .or_default();
        w.0 += 1;
        w.1 += v;
    }
    let mut out: Vec<String> = windows
        .into_iter()
        .map(|((k, start), (n, s))| {
            serde_json::to_string(&(k, start, start + WINDOW, n, s)).unwrap()
        })
        .collect();
    out.sort();
    out
}

/// The records as lines `key ts value`.
fn text(recs: &[(String, i64, i64)]) -> String {
    recs.iter()
        .map(|(k, ts, v)| format!("{k} {ts} {v}\n"))
        .collect()
}

/// The spec job: `source` (a source step's body, with its watermarks) -> fields -> keyBy
/// -> tumbling window (count, sum) -> file sink at `out`.
fn window_spec(dir: &Path, name: &str, parallelism: u32, source: &str, out: &Path) -> PathBuf {
    window_spec_with(
        dir,
        name,
        parallelism,
        source,
        &format!("tumbling: {{size: {WINDOW}ms}}"),
        out,
    )
}

/// [`window_spec`] with another window assigner (`assigner`: its spec line).
fn window_spec_with(
    dir: &Path,
    name: &str,
    parallelism: u32,
    source: &str,
    assigner: &str,
    out: &Path,
) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}}}
spec:
  parallelism: {parallelism}
  steps:
{source}
    - name: by-key
      keyBy: {{expr: 'value[0]'}}
    - name: w
      window:
        {assigner}
        aggregates:
          - {{name: n, function: count}}
          - {{name: s, function: sum, expr: 'int(value[2])'}}
        output: '[key, window.start, window.end, n, s]'
    - name: out
      sink: {{file: {{path: {out}}}}}
",
            out = out.display()
        ),
    )
    .unwrap();
    path
}

/// A file source over `input` cut into 3 byte ranges (3 subtasks, each reading its part of
/// the input in timestamp order within `JITTER`), then `value.split(' ')`.
fn file_source(input: &Path) -> String {
    format!(
        "    - name: lines
      parallelism: 3
      source:
        file: {{path: {}}}
        watermarks: {{timestamp: \"int(value.split(' ')[1])\", maxOutOfOrderness: {BOUND}, idleness: 500ms, interval: 20ms}}
    - name: fields
      map: {{expr: \"value.split(' ')\"}}",
        input.display()
    )
}

fn run_ok(args: &[&str], spec: &Path) {
    succeed(Command::new(BIN).args(args).arg(spec));
}

/// A bounded file source ends with a watermark at +infinity on every worker: the last
/// windows (which no later record would close) fire, and the output is the same bytes in
/// one process and on 2 and 3 worker processes.
#[test]
fn a_spec_window_gives_identical_output_in_one_process_and_on_2_and_3_workers() {
    let dir = tmp("spec-file");
    let recs = records(6000, 1);
    std::fs::write(dir.join("input.txt"), text(&recs)).unwrap();
    let want = oracle(&recs);
    assert!(want.len() > 300, "{} windows", want.len());
    let mut outputs = Vec::new();
    for workers in [None, Some(2), Some(3)] {
        let out = dir.join(format!("out-{workers:?}"));
        std::fs::create_dir_all(&out).unwrap();
        let spec = window_spec(
            &dir,
            "windist",
            3,
            &file_source(&dir.join("input.txt")),
            &out.join("windows"),
        );
        match workers {
            None => run_ok(&["run"], &spec),
            Some(n) => run_ok(&["run", "--workers", &n.to_string()], &spec),
        }
        let got = sorted_lines(&out, "windows");
        assert_eq!(got, want, "workers {workers:?}");
        outputs.push(got.join("\n"));
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
}

/// Session windows of `gap` ms per key: a session is a run of a key's timestamps (sorted)
/// each within `gap` of the previous (Flink merges windows that touch), ending `gap` after
/// its last record.
fn session_oracle(recs: &[(String, i64, i64)], gap: i64) -> Vec<String> {
    let mut per_key: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    for (k, ts, v) in recs {
        per_key.entry(k).or_default().push((*ts, *v));
    }
    let mut out = Vec::new();
    for (k, mut rs) in per_key {
        rs.sort_unstable();
        let mut session: Option<(i64, i64, i64, i64)> = None; // start, last, n, sum
        for (ts, v) in rs {
            session = match session {
                Some((start, last, n, s)) if ts <= last + gap => Some((start, ts, n + 1, s + v)),
                done => {
                    if let Some((start, last, n, s)) = done {
                        out.push(serde_json::to_string(&(k, start, last + gap, n, s)).unwrap());
                    }
                    Some((ts, ts, 1, v))
                }
            };
        }
        let (start, last, n, s) = session.unwrap();
        out.push(serde_json::to_string(&(k, start, last + gap, n, s)).unwrap());
    }
    out.sort();
    out
}

/// Session windows merge out-of-order records the same way whichever worker process holds
/// a key: identical output in one process and on 2 and 3 workers.
#[test]
fn session_windows_merge_identically_in_one_process_and_on_2_and_3_workers() {
    let dir = tmp("session");
    let recs = records(4000, 4);
    std::fs::write(dir.join("input.txt"), text(&recs)).unwrap();
    let want = session_oracle(&recs, 400);
    let merged = want.iter().filter(|l| !l.ends_with(",1,0]")).count();
    assert!(
        want.len() > 200 && want.len() < recs.len() / 2,
        "sessions merge records: {} sessions of {} records, {merged} with more than one",
        want.len(),
        recs.len()
    );
    for workers in [None, Some(2), Some(3)] {
        let out = dir.join(format!("out-{workers:?}"));
        std::fs::create_dir_all(&out).unwrap();
        let spec = window_spec_with(
            &dir,
            "session",
            3,
            &file_source(&dir.join("input.txt")),
            "session: {gap: 400ms}",
            &out.join("windows"),
        );
        match workers {
            None => run_ok(&["run"], &spec),
            Some(n) => run_ok(&["run", "--workers", &n.to_string()], &spec),
        }
        assert_eq!(sorted_lines(&out, "windows"), want, "workers {workers:?}");
    }
}

/// Count and sum of the values of a window.
struct CountSum;

impl AggregateFunction<(String, i64, i64)> for CountSum {
    type Acc = (i64, i64);
    type Out = (i64, i64);
    fn create_accumulator(&self) -> (i64, i64) {
        (0, 0)
    }
    fn add(&self, value: (String, i64, i64), acc: &mut (i64, i64)) {
        acc.0 += 1;
        acc.1 += value.2;
    }
    fn get_result(&self, acc: &(i64, i64)) -> (i64, i64) {
        *acc
    }
    fn merge(&self, a: (i64, i64), b: (i64, i64)) -> (i64, i64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// The Rust API job of the spec job above: file source (3 subtasks) -> timestamps and
/// watermarks -> key_by -> tumbling window aggregate -> file sink.
fn rust_job(env: &StreamExecutionEnvironment, input: &Path, out: &Path) {
    env.set_parallelism(3);
    let strategy = WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_secs(3))
        .with_timestamp_assigner(|line: &String, _| {
            line.split(' ').nth(1).unwrap().parse::<i64>().unwrap()
        })
        .with_idleness(Duration::from_millis(500))
        .with_emit_interval(Duration::from_millis(20));
    env.read_text_file(input)
        .assign_timestamps_and_watermarks(strategy)
        .map(|line: String| {
            let f: Vec<&str> = line.split(' ').collect();
            (
                f[0].to_string(),
                f[1].parse::<i64>().unwrap(),
                f[2].parse::<i64>().unwrap(),
            )
        })
        .key_by(|r: &(String, i64, i64)| r.0.clone())
        .window(TumblingEventTimeWindows::of(Duration::from_millis(
            WINDOW as u64,
        )))
        .aggregate_with_process(CountSum, |k: &String, ctx, (n, s): (i64, i64), out| {
            out.collect(
                serde_json::to_string(&(k, ctx.window.start, ctx.window.end, n, s)).unwrap(),
            )
        })
        .sink_to(FileSink::new(out));
}

const WORKER_ENV: &str = "SJ_WINDOWS_DISTRIBUTED_WORKER";

/// One worker process of the Rust API test (this test binary run again with
/// `WORKER_ENV` = `index,workers,input,out,peer0,peer1,...`).
fn run_rust_worker(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let [index, workers, input, out, peers @ ..] = &parts[..] else {
        panic!("bad worker spec {spec}");
    };
    let (index, workers): (u32, u32) = (index.parse().unwrap(), workers.parse().unwrap());
    let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    let cluster = cluster_config(index, &peers, 3u32.div_ceil(workers), "windows-distributed");
    let env = StreamExecutionEnvironment::get_execution_environment();
    rust_job(&env, Path::new(input), Path::new(out));
    env.execute_as_worker("windows-distributed", &cluster)
        .unwrap();
}

#[test]
fn a_rust_api_window_gives_identical_output_in_one_process_and_on_2_and_3_worker_processes() {
    const NAME: &str =
        "a_rust_api_window_gives_identical_output_in_one_process_and_on_2_and_3_worker_processes";
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        return run_rust_worker(&spec);
    }
    let dir = tmp("rust");
    let recs = records(5000, 2);
    let input = dir.join("input.txt");
    std::fs::write(&input, text(&recs)).unwrap();
    let want = oracle(&recs);

    let one = dir.join("out-1");
    std::fs::create_dir_all(&one).unwrap();
    let env = StreamExecutionEnvironment::get_execution_environment();
    rust_job(&env, &input, &one.join("windows"));
    env.execute("windows-distributed").unwrap();
    assert_eq!(sorted_lines(&one, "windows"), want, "one process");

    for workers in [2u32, 3] {
        let out = dir.join(format!("out-{workers}"));
        std::fs::create_dir_all(&out).unwrap();
        let peers = free_ports(workers as usize);
        let children: Vec<_> = (0..workers)
            .map(|i| {
                let spec = format!(
                    "{i},{workers},{},{},{}",
                    input.display(),
                    out.join("windows").display(),
                    peers.join(",")
                );
                Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", NAME, "--nocapture"])
                    .env(WORKER_ENV, spec)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (i, c) in children.into_iter().enumerate() {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "worker {i} of {workers} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(sorted_lines(&out, "windows"), want, "{workers} workers");
    }
}

/// Kafka records `{"k":..,"ts":..,"v":..}` in partitions 0 and 1 of a 3-partition topic;
/// partition 2 stays empty, so one source subtask (on its own worker) never sees a record.
fn kafka_input(recs: &[(String, i64, i64)]) -> (String, Vec<(i32, String)>) {
    let topic = unique("windows-idle");
    create_topic(&topic, 3);
    // Records alternate between the two partitions: each holds an ordered-within-JITTER
    // half of the input.
    let rows: Vec<(i32, String)> = recs
        .iter()
        .enumerate()
        .map(|(i, (k, ts, v))| {
            (
                (i % 2) as i32,
                serde_json::json!({"k": k, "ts": ts, "v": v}).to_string(),
            )
        })
        .collect();
    produce_to(&topic, &rows);
    (topic, rows)
}

fn kafka_source(topic: &str, group: &str, bounded: bool) -> String {
    format!(
        "    - name: records
      parallelism: 3
      source:
        kafka:
          bootstrapServers: {broker}
          topics: [{topic}]
          groupId: {group}
          startingOffsets: earliest
          format: json{bounded}
        watermarks: {{timestamp: value.ts, maxOutOfOrderness: {BOUND}, idleness: 1s, interval: 20ms}}
    - name: fields
      map: {{expr: '[value.k, value.ts, value.v]'}}",
        broker = broker(),
        bounded = if bounded { "\n          bounded: true" } else { "" },
    )
}

/// The windows an unbounded run fires: those whose end the watermark passed. Once read to
/// the end, the two partitions with records go idle too (the empty one is idle from the
/// start), and the watermark is that of the one that went idle last (as in Flink, an idle
/// input stops holding it back): its largest timestamp minus the bound (3 s) minus 1. Which
/// one goes idle last depends on timing, so both are right; `last` picks the partition.
fn fired_while_running(recs: &[(String, i64, i64)], last: usize) -> Vec<String> {
    let max_of = |p: usize| {
        recs.iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == p)
            .map(|(_, r)| r.1)
            .max()
            .unwrap()
    };
    let watermark = max_of(last) - 3000 - 1;
    let closed: Vec<_> = recs
        .iter()
        .filter(|r| r.1 - r.1.rem_euclid(WINDOW) + WINDOW - 1 <= watermark)
        .cloned()
        .collect();
    oracle(&closed)
}

/// An idle partition across workers: partition 2 of the input is empty and its source
/// subtask runs on a worker of its own. With `idleness` it stops holding back the watermark
/// on every window subtask (the idle status crosses the gRPC exchange), so an unbounded job
/// fires every window the two live partitions closed; a bounded read of the same topic ends
/// with +infinity and fires them all.
#[test]
fn an_empty_kafka_partition_on_another_worker_does_not_stall_windows_when_idle() {
    let dir = tmp("kafka-idle");
    let recs = records(3000, 3);
    let (topic, _) = kafka_input(&recs);

    let running = [fired_while_running(&recs, 0), fired_while_running(&recs, 1)];
    for r in &running {
        assert!(r.len() > 100 && r.len() < oracle(&recs).len());
    }
    let out = dir.join("unbounded");
    std::fs::create_dir_all(&out).unwrap();
    let spec = window_spec(
        &dir,
        "idle-unbounded",
        3,
        &kafka_source(&topic, &unique("g"), false),
        &out.join("windows"),
    );
    let mut cluster = MiniCluster::start(&spec, &["--workers", "3"]);
    // The job never ends: wait until exactly the closed windows are out.
    wait_for(
        Duration::from_secs(90),
        lazy(|| {
            let got = sorted_lines(&out, "windows");
            format!(
                "the closed windows did not all fire: {} windows, expected {} or {} \
                 (missing: {:?}); worker 0 status: {}; log: {}",
                got.len(),
                running[0].len(),
                running[1].len(),
                running[0]
                    .iter()
                    .filter(|w| !got.contains(w))
                    .take(5)
                    .collect::<Vec<_>>(),
                cluster.status(),
                cluster.log()
            )
        }),
        || {
            running
                .contains(&sorted_lines(&out, "windows"))
                .then_some(())
        },
    );
    assert!(
        cluster.child.try_wait().unwrap().is_none(),
        "{}",
        cluster.log()
    );
    drop(cluster);

    let out = dir.join("bounded");
    std::fs::create_dir_all(&out).unwrap();
    let spec = window_spec(
        &dir,
        "idle-bounded",
        3,
        &kafka_source(&topic, &unique("g"), true),
        &out.join("windows"),
    );
    let mut cluster = MiniCluster::start(&spec, &["--workers", "3"]);
    let (ok, log) = cluster.wait(Duration::from_secs(120));
    assert!(ok, "{log}");
    assert_eq!(sorted_lines(&out, "windows"), oracle(&recs));
}
