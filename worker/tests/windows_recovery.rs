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
use common::{BIN, has_complete_checkpoint_below, kill9, sorted_lines, wait_until, workers_of};

const EVENTS: u64 = 60_000;
const FIRST_MS: i64 = 1_000_000;
const WINDOW: i64 = 2000;
const KEYS: i64 = 5;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sj-winrec-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
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

/// Nexmark (paced at `rate` events/s; unpaced when 0) -> keyBy -> tumbling event-time
/// window (count, sum) -> `sink`, checkpointing every `interval_ms` into `dir/chk`.
fn spec(dir: &Path, name: &str, parallelism: u32, rate: u64, sink: &str) -> PathBuf {
    let pace = if rate > 0 {
        format!(", maxEventsPerSecond: {rate}")
    } else {
        String::new()
    };
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
    - name: events
      source:
        nexmark: {{events: {EVENTS}, eventsPerSecond: 1000, firstEventTimeMs: {FIRST_MS}{pace}}}
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
            chk = dir.join("chk").display(),
        ),
    )
    .unwrap();
    path
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
    let run = Command::new(BIN)
        .args(["run", "--workers", "2"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
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
/// 3 and stop again, restore at 1 and run to the end. Returns the savepoint paths.
fn savepoint_2_3_1(dir: &Path, sink: &str, count: impl Fn() -> usize) {
    let want = oracle().len();
    let one = MiniCluster::start(
        &spec(dir, "sp", 2, RATE, sink),
        &["--workers", "2", "--run-id", "one"],
    );
    let sp1 = one.stop_with_savepoint_when(|| count() > 0);
    assert!(Path::new(&sp1).join("_metadata").is_file(), "{sp1}");
    let first = count();
    assert!(
        first > 0 && first < want,
        "stopped mid-run: {first} of {want} results"
    );

    let two = MiniCluster::start(
        &spec(dir, "sp", 3, RATE, sink),
        &["--workers", "3", "--run-id", "two", "--restore-from", &sp1],
    );
    let sp2 = two.stop_with_savepoint_when(|| count() > first + 5);
    let second = count();
    assert!(
        second > first && second < want,
        "stopped mid-run: {second} of {want} results, {first} after the first savepoint"
    );

    let mut three = MiniCluster::start(
        &spec(dir, "sp", 1, 0, sink),
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
    savepoint_2_3_1(&dir, &file_sink(&out), || {
        sorted_lines(&out, "windows").len()
    });
    assert_eq!(sorted_lines(&out, "windows"), oracle());
}

#[test]
fn a_savepoint_restored_at_2_then_3_then_1_shows_each_window_once_through_the_exactly_once_kafka_sink()
 {
    let dir = tmp("savepoint-kafka");
    let topic = unique("windows-sp");
    create_topic(&topic, 3);
    savepoint_2_3_1(&dir, &kafka_sink(&topic), || {
        payloads_until_quiet(&topic, true, Duration::from_millis(500)).len()
    });
    assert_exactly_once(payloads(&topic, true));
}
