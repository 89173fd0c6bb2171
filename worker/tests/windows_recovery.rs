//! Event time across failures: a worker SIGKILLed mid-window (checkpoints every second), and
//! a stop-with-savepoint taken with open windows and pending timers then restored at
//! parallelism 2 -> 3 -> 1, end with exactly the output of an uninterrupted run: every
//! window result once, none lost, none repeated (with the exactly-once Kafka sink, as a
//! read_committed reader sees it).
//!
//! The input is the Nexmark generator, paced in wall-clock time so the job is mid-run when
//! it is killed or stopped, with event times made out of order (up to 600 ms early) by the
//! timestamp expression; the watermark bound (1 s) covers that, so no record is late
//! whatever the timing, and the oracle is a plain group-by over the generator's events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use streamjob::connectors::nexmark::{GeneratorConfig, event_time_of};

mod common;

use common::cluster::MiniCluster;
use common::kafka_topics::{broker, create_topic, payloads, payloads_until_quiet, unique};
use common::{
    BIN, has_complete_checkpoint_below, kill9, sorted_lines, succeed, wait_until, workers_of,
};

const EVENTS: u64 = 60_000;
const FIRST_MS: i64 = 1_000_000;
const WINDOW: i64 = 2000;
const KEYS: i64 = 5;

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("winrec", name)
}

/// The event time the job's timestamp expression gives an event of generator time `t`.
fn jittered(t: i64) -> i64 {
    t - (t % 7) * 100
}

/// Every window result of the uninterrupted job: `[key,start,end,count,sum]`, sorted.
fn oracle() -> Vec<String> {
    let config = GeneratorConfig {
        events: Some(EVENTS),
        events_per_second: 1000,
        first_event_time_ms: FIRST_MS,
        max_events_per_second: None,
    };
    let mut windows: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
    for n in 0..EVENTS {
        let t = event_time_of(&config, n);
        let ts = jittered(t);
        let w = windows
            .entry((t % KEYS, ts - ts.rem_euclid(WINDOW)))
            .or_default();
        w.0 += 1;
        w.1 += t % 1000;
    }
    let mut out: Vec<String> = windows
        .into_iter()
        .map(|((k, start), (n, s))| format!("[{k},{start},{},{n},{s}]", start + WINDOW))
        .collect();
    out.sort();
    out
}

/// Writes `dir/<name>-p<parallelism>.yaml`: a job of `parallelism` with `steps`,
/// checkpointing every second into `dir/chk` and restarting when a worker fails.
fn write_spec(dir: &Path, name: &str, parallelism: u32, steps: &str) -> PathBuf {
    let path = dir.join(format!("{name}-p{parallelism}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}}}
spec:
  parallelism: {parallelism}
  checkpointing: {{intervalMs: 1000, directory: {chk}, retained: 2}}
  restartStrategy: {{attempts: 20, initialDelayMs: 100, maxDelayMs: 500}}
  steps:
{steps}",
            chk = dir.join("chk").display(),
        ),
    )
    .unwrap();
    path
}

/// The Nexmark source's settings: `EVENTS` events, paced at `rate` events/s (unpaced when
/// 0).
fn nexmark(rate: u64) -> String {
    let pace = if rate > 0 {
        format!(", maxEventsPerSecond: {rate}")
    } else {
        String::new()
    };
    format!("{{events: {EVENTS}, eventsPerSecond: 1000, firstEventTimeMs: {FIRST_MS}{pace}}}")
}

/// Nexmark (paced at `rate` events/s; unpaced when 0) -> keyBy -> tumbling event-time
/// window (count, sum) -> `sink`, checkpointing every second into `dir/chk`.
fn spec(dir: &Path, name: &str, parallelism: u32, rate: u64, sink: &str) -> PathBuf {
    let steps = format!(
        "    - name: events
      source:
        nexmark: {nexmark}
        watermarks: {{timestamp: 'value.dateTime - (value.dateTime % 7) * 100', maxOutOfOrderness: 1s, interval: 50ms}}
    - name: by-key
      keyBy: {{expr: 'value.dateTime % {KEYS}'}}
    - name: w
      window:
        tumbling: {{size: {WINDOW}ms}}
        aggregates:
          - {{name: n, function: count}}
          - {{name: s, function: sum, expr: 'value.dateTime % 1000'}}
        output: '[key, window.start, window.end, n, s]'
    - name: out
      sink:
{sink}
",
        nexmark = nexmark(rate),
    );
    write_spec(dir, name, parallelism, &steps)
}

fn file_sink(out: &Path) -> String {
    format!("        file: {{path: {}}}", out.join("windows").display())
}

fn kafka_sink(topic: &str) -> String {
    format!(
        "        kafka:
          bootstrapServers: {}
          topic: {topic}
          format: json
          deliveryGuarantee: exactly-once
          transactionalIdPrefix: {topic}",
        broker()
    )
}

/// The paced run takes ~15 s of wall time at 4000 events/s: long enough for checkpoints,
/// kills and savepoints mid-run.
const RATE: u64 = 4000;

#[test]
fn the_uninterrupted_run_matches_the_oracle() {
    let dir = tmp("plain");
    let out = dir.join("out");
    let spec = spec(&dir, "plain", 2, 0, &file_sink(&out));
    succeed(Command::new(BIN).args(["run", "--workers", "2"]).arg(&spec));
    assert_eq!(sorted_lines(&out, "windows"), oracle());
}

/// Kills worker 1 and then worker 0 (the checkpoint coordinator) of a 2-worker run, each
/// once a complete checkpoint and some output exist, and waits for the run to finish.
fn kill_both_workers_mid_run(cluster: &mut MiniCluster, dir: &Path, output: impl Fn() -> usize) {
    let chk = dir.join("chk");
    for victim in [1, 0] {
        let before = output();
        wait_until(
            Duration::from_secs(60),
            format_args!("no new checkpoint and output before killing worker {victim}"),
            || {
                has_complete_checkpoint_below(&chk)
                    && output() > before
                    && workers_of(cluster.child.id()).len() == 2
            },
        );
        assert!(
            cluster.child.try_wait().unwrap().is_none(),
            "the job ended before worker {victim} was killed: {}",
            cluster.log()
        );
        let workers = workers_of(cluster.child.id());
        // Workers are started in index order.
        let mut sorted = workers.clone();
        sorted.sort_unstable();
        kill9(sorted[victim]);
    }
    let (ok, log) = cluster.wait(Duration::from_secs(180));
    assert!(ok, "the job did not recover: {log}");
    assert!(
        log.matches("restart").count() > 0 || log.contains("restor"),
        "no restart in the log: {log}"
    );
}

#[test]
fn workers_killed_mid_window_end_with_the_uninterrupted_output() {
    let dir = tmp("kill-file");
    let out = dir.join("out");
    let spec = spec(&dir, "kill-file", 2, RATE, &file_sink(&out));
    let mut cluster = MiniCluster::start(&spec, &["--workers", "2"]);
    kill_both_workers_mid_run(&mut cluster, &dir, || sorted_lines(&out, "windows").len());
    assert_eq!(sorted_lines(&out, "windows"), oracle());
}

#[test]
fn workers_killed_mid_window_with_the_exactly_once_kafka_sink_show_each_window_once() {
    let dir = tmp("kill-kafka");
    let topic = unique("windows-eo");
    create_topic(&topic, 3);
    let spec = spec(&dir, "kill-kafka", 2, RATE, &kafka_sink(&topic));
    let mut cluster = MiniCluster::start(&spec, &["--workers", "2"]);
    kill_both_workers_mid_run(&mut cluster, &dir, || {
        payloads_until_quiet(&topic, true, Duration::from_millis(500)).len()
    });
    assert_exactly_once(payloads(&topic, true));
}

/// `seen` (what a read_committed reader got) is every window result exactly once.
fn assert_exactly_once(mut seen: Vec<String>) {
    seen.sort();
    let want = oracle();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &seen {
        *counts.entry(s).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "windows seen more than once: {repeated:?}"
    );
    assert_eq!(seen, want);
}

/// Stop-with-savepoint at parallelism 2 (once `count` says some output exists), restore at
/// 3 and stop again, restore at 1 and run to the end; `want` results in all.
fn savepoint_2_3_1(
    make_spec: impl Fn(u32, u64) -> PathBuf,
    want: usize,
    count: impl Fn() -> usize,
) {
    let one = MiniCluster::start(&make_spec(2, RATE), &["--workers", "2", "--run-id", "one"]);
    let sp1 = one.stop_with_savepoint_when(|_| count() > 0);
    assert!(Path::new(&sp1).join("_metadata").is_file(), "{sp1}");
    let first = count();
    assert!(
        first > 0 && first < want,
        "stopped mid-run: {first} of {want} results"
    );

    let two = MiniCluster::start(
        &make_spec(3, RATE),
        &["--workers", "3", "--run-id", "two", "--restore-from", &sp1],
    );
    let sp2 = two.stop_with_savepoint_when(|_| count() > first + 5);
    let second = count();
    assert!(
        second > first && second < want,
        "stopped mid-run: {second} of {want} results, {first} after the first savepoint"
    );

    let mut three = MiniCluster::start(
        &make_spec(1, 0),
        &[
            "--workers",
            "1",
            "--run-id",
            "three",
            "--restore-from",
            &sp2,
        ],
    );
    let (ok, log) = three.wait(Duration::from_secs(120));
    assert!(ok, "{log}");
}

#[test]
fn a_savepoint_with_open_windows_restores_at_2_then_3_then_1_with_the_uninterrupted_output() {
    let dir = tmp("savepoint");
    let out = dir.join("out");
    savepoint_2_3_1(
        |p, rate| spec(&dir, "sp", p, rate, &file_sink(&out)),
        oracle().len(),
        || sorted_lines(&out, "windows").len(),
    );
    assert_eq!(sorted_lines(&out, "windows"), oracle());
}

#[test]
fn a_savepoint_restored_at_2_then_3_then_1_shows_each_window_once_through_the_exactly_once_kafka_sink()
 {
    let dir = tmp("savepoint-kafka");
    let topic = unique("windows-sp");
    create_topic(&topic, 3);
    savepoint_2_3_1(
        |p, rate| spec(&dir, "sp", p, rate, &kafka_sink(&topic)),
        oracle().len(),
        || payloads_until_quiet(&topic, true, Duration::from_millis(500)).len(),
    );
    assert_exactly_once(payloads(&topic, true));
}

/// The lateness job: one source subtask with a watermark after every record (`interval:
/// 0s`), so which records are late, and which windows fire again, depends only on the
/// input's order, not on timing or on how many workers run the windows. Event times are up
/// to 1 s early, the bound 300 ms, the allowed lateness 400 ms: some records update fired
/// windows, some are later than that and go to the late output.
const LATE_BOUND: i64 = 300;
const LATENESS: i64 = 400;

fn late_ts(t: i64) -> i64 {
    t - (t % 11) * 100
}

fn late_spec(dir: &Path, name: &str, parallelism: u32, rate: u64) -> PathBuf {
    let steps = format!(
        "    - name: events
      parallelism: 1
      source:
        nexmark: {nexmark}
        watermarks: {{timestamp: 'value.dateTime - (value.dateTime % 11) * 100', maxOutOfOrderness: {LATE_BOUND}ms, interval: 0s}}
    - name: by-key
      keyBy: {{expr: 'value.dateTime % {KEYS}'}}
    - name: w
      window:
        tumbling: {{size: {WINDOW}ms}}
        allowedLateness: {LATENESS}ms
        aggregates:
          - {{name: n, function: count}}
          - {{name: s, function: sum, expr: 'value.dateTime % 1000'}}
        output: '[key, window.start, window.end, n, s]'
        lateOutput: late-times
    - name: out
      sink: {{file: {{path: {out}}}}}
    - name: late-times
      map: {{expr: value.dateTime}}
    - name: late
      sink: {{file: {{path: {late}}}}}
",
        nexmark = nexmark(rate),
        out = dir.join("out/windows").display(),
        late = dir.join("out/late").display(),
    );
    write_spec(dir, name, parallelism, &steps)
}

/// Flink's event-time semantics record by record for [`late_spec`]: (every firing, sorted;
/// the generator times of the late records, sorted).
fn late_oracle() -> (Vec<String>, Vec<String>) {
    let config = GeneratorConfig {
        events: Some(EVENTS),
        events_per_second: 1000,
        first_event_time_ms: FIRST_MS,
        max_events_per_second: None,
    };
    // (key, start) -> (count, sum, fired)
    let mut open: BTreeMap<(i64, i64), (i64, i64, bool)> = BTreeMap::new();
    let (mut fired, mut late) = (Vec::new(), Vec::new());
    let line =
        |k: i64, start: i64, n: i64, s: i64| format!("[{k},{start},{},{n},{s}]", start + WINDOW);
    let (mut wm, mut max_ts) = (i64::MIN, i64::MIN);
    for n in 0..EVENTS {
        let t = event_time_of(&config, n);
        let (ts, key) = (late_ts(t), t % KEYS);
        let start = ts - ts.rem_euclid(WINDOW);
        if start + WINDOW - 1 + LATENESS <= wm {
            late.push(t.to_string());
        } else {
            let w = open.entry((key, start)).or_insert((0, 0, false));
            w.0 += 1;
            w.1 += t % 1000;
            if w.2 {
                fired.push(line(key, start, w.0, w.1));
            }
        }
        max_ts = max_ts.max(ts);
        wm = wm.max(max_ts - LATE_BOUND - 1);
        for (&(k, start), w) in open.iter_mut() {
            if !w.2 && start + WINDOW - 1 <= wm {
                w.2 = true;
                fired.push(line(k, start, w.0, w.1));
            }
        }
        open.retain(|&(_, start), _| start + WINDOW - 1 + LATENESS > wm);
    }
    for (&(k, start), w) in &open {
        if !w.2 {
            fired.push(line(k, start, w.0, w.1));
        }
    }
    fired.sort();
    late.sort();
    (fired, late)
}

fn late_outputs(dir: &Path) -> (Vec<String>, Vec<String>) {
    let out = dir.join("out");
    (sorted_lines(&out, "windows"), sorted_lines(&out, "late"))
}

#[test]
fn late_records_and_updated_windows_are_the_same_in_one_process_and_on_2_and_3_workers() {
    let (fired, late) = late_oracle();
    let windows = oracle().len();
    assert!(
        fired.len() > windows && !late.is_empty(),
        "the input has updates ({} firings of {windows} windows) and late records ({})",
        fired.len(),
        late.len()
    );
    for workers in [1, 2, 3] {
        let dir = tmp(&format!("late-{workers}"));
        let spec = late_spec(&dir, "late", 3, 0);
        succeed(
            Command::new(BIN)
                .args(["run", "--workers", &workers.to_string()])
                .arg(&spec),
        );
        let (got_fired, got_late) = late_outputs(&dir);
        assert_eq!(got_fired, fired, "{workers} workers: window results");
        assert_eq!(got_late, late, "{workers} workers: late records");
    }
}

/// Fired windows kept for their allowed lateness are restored as fired: after a kill, a
/// late record updates them (once), and no window fires its first result twice.
#[test]
fn workers_killed_with_windows_within_their_lateness_end_with_the_uninterrupted_output() {
    let dir = tmp("late-kill");
    let spec = late_spec(&dir, "late-kill", 2, RATE);
    let mut cluster = MiniCluster::start(&spec, &["--workers", "2"]);
    let out = dir.join("out");
    kill_both_workers_mid_run(&mut cluster, &dir, || sorted_lines(&out, "windows").len());
    assert_eq!(late_outputs(&dir), late_oracle());
}

/// Fired windows within their lateness, open windows and their timers move by key group
/// through savepoints at parallelism 2 -> 3 -> 1: late records still update (once) the
/// windows that fired before a savepoint, and later ones still go to the late output.
#[test]
fn a_savepoint_with_fired_windows_within_their_lateness_restores_at_2_then_3_then_1() {
    let dir = tmp("late-savepoint");
    let out = dir.join("out");
    let want = late_oracle();
    savepoint_2_3_1(
        |p, rate| late_spec(&dir, "late-sp", p, rate),
        want.0.len(),
        || sorted_lines(&out, "windows").len(),
    );
    assert_eq!(late_outputs(&dir), want);
}
