//! Workers that fail or restart agree on one run (epoch) of the job and start it together
//! from the last complete checkpoint, within seconds: never a worker waiting for a run the
//! others have left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::workers::both_succeed;
use common::{Worker, free_ports, has_complete_checkpoint, kill9, signal, wait_until};

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("epochs", name)
}

/// `lines` lines of six words over a 200-word vocabulary, and the exact count of each word.
fn text(lines: usize) -> (String, BTreeMap<String, u64>) {
    common::word_text(lines, 7, 200)
}

/// A word count over `dir/in.txt` on two workers with checkpoints under `chk` (relative to
/// the manifest) and running counts written under `dir/out`.
fn spec(dir: &Path, lines: usize) -> (String, BTreeMap<String, u64>) {
    let (input, expected) = text(lines);
    std::fs::write(dir.join("in.txt"), input).unwrap();
    let yaml = format!(
        r#"apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata:
  name: epochs
spec:
  parallelism: 2
  checkpointing: {{intervalMs: 200, directory: chk}}
  restartStrategy: {{attempts: 5, initialDelayMs: 200, maxDelayMs: 1000}}
  steps:
    - name: lines
      source:
        file:
          path: {input}
    - name: words
      flatMap:
        expr: value.words()
    - name: pairs
      map:
        expr: "[value, 1]"
    - name: by-word
      keyBy:
        expr: value[0]
    - name: counts
      reduce:
        expr: "[acc[0], acc[1] + value[1]]"
    - name: out
      sink:
        file:
          path: {out}
"#,
        input = dir.join("in.txt").display(),
        out = dir.join("out").join("counts").display(),
    );
    (yaml, expected)
}

/// A fresh directory `name` with [`spec`]'s job in `job.yaml`: (directory, manifest,
/// expected final counts).
fn job(name: &str, lines: usize) -> (PathBuf, PathBuf, BTreeMap<String, u64>) {
    let dir = tmp(name);
    let (yaml, expected) = spec(&dir, lines);
    let path = dir.join("job.yaml");
    std::fs::write(&path, &yaml).unwrap();
    (dir, path, expected)
}

/// Final count per word from the running counts the file sinks wrote, checking every word
/// counts 1, 2, 3, ... with no gap or repeat (a restart must resume exactly).
fn final_counts(dir: &Path) -> BTreeMap<String, u64> {
    let mut finals = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let (w, c): (String, u64) = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: bad line {line:?}: {e}", path.display()));
            let prev = finals.insert(w.clone(), c).unwrap_or(0);
            assert_eq!(
                c,
                prev + 1,
                "{w}: count {c} after {prev} in {}",
                path.display()
            );
        }
    }
    finals
}

/// Worker 1 joins run 1, then fails before it opens a single channel (its storage is not
/// worker 0's) and comes back as a new process (its pod restarted). Worker 0 used to refuse
/// it ("already joined this run") while itself waiting for the channels of the worker that
/// left: minutes of silence before a timeout. A second join proves the first incarnation
/// left the run, so worker 0 restarts at once and both run the job to its exact end.
#[test]
fn a_worker_that_rejoins_the_run_it_left_restarts_the_job_at_once() {
    let dir = tmp("rejoin");
    let (yaml, expected) = spec(&dir, 3000);
    let specs: Vec<PathBuf> = ["pod-0", "pod-1"]
        .iter()
        .map(|pod| {
            std::fs::create_dir_all(dir.join(pod)).unwrap();
            let path = dir.join(pod).join("job.yaml");
            std::fs::write(&path, &yaml).unwrap();
            path
        })
        .collect();
    let peers = free_ports(2);
    let w0 = Worker::start(&specs[0], 0, &peers, "t", &[]);
    let first = Worker::start(&specs[1], 1, &peers, "t", &[]);
    let (ok, err) = first.wait(Duration::from_secs(30));
    assert!(!ok);
    assert!(
        err.contains("worker 1 cannot see the checkpoint storage of worker 0"),
        "{err}"
    );
    // The pod comes back, now mounting the shared storage.
    let restarted = Instant::now();
    let w1 = Worker::start(&specs[0], 1, &peers, "t", &[]);
    let (err0, _) = both_succeed(w1, Duration::from_secs(40), w0, Duration::from_secs(10));
    assert!(
        restarted.elapsed() < Duration::from_secs(40),
        "took {:?}",
        restarted.elapsed()
    );
    assert!(
        err0.contains("worker 1 joined run") && err0.contains("a second time"),
        "worker 0 must say why it restarted: {err0}"
    );
    assert_eq!(final_counts(&dir.join("out")), expected);
}

/// Worker 1 is killed mid-run, after a complete checkpoint, and its pod starts it again
/// while worker 0 is failing and restarting: both agree on worker 0's next run and finish
/// from the checkpoint with exact counts.
#[test]
fn a_killed_follower_started_again_rejoins_and_the_counts_stay_exact() {
    let (dir, path, expected) = job("follower", 200_000);
    let peers = free_ports(2);
    let w0 = Worker::start(&path, 0, &peers, "t", &[]);
    let mut w1 = Worker::start(&path, 1, &peers, "t", &[]);
    wait_until(Duration::from_secs(60), "no complete checkpoint", || {
        has_complete_checkpoint(&dir.join("chk"))
    });
    kill9(w1.child.id());
    let _ = w1.child.wait();
    let w1 = Worker::start(&path, 1, &peers, "t", &[]);
    let (err0, _) = both_succeed(w1, Duration::from_secs(90), w0, Duration::from_secs(10));
    assert!(
        err0.contains("restart 1"),
        "worker 0 restarted once: {err0}"
    );
    assert_eq!(final_counts(&dir.join("out")), expected);
}

/// The run worker 0 leads, as it marks it in the checkpoint storage.
fn leader_mark(chk: &Path) -> Option<String> {
    let mut dirs = vec![chk.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.file_name().is_some_and(|n| n == "_leader") {
                return std::fs::read_to_string(path).ok();
            }
            if path.is_dir() {
                dirs.push(path);
            }
        }
    }
    None
}

/// The restarts a worker announced ("job 'x' failed: ...; restart n in ...").
fn restarts(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains("' failed: ") && l.contains("; restart "))
        .count()
}

/// Worker 1 freezes mid-run (SIGSTOP): worker 0 loses it and restarts its run while worker 1
/// still holds the old one. When worker 1 resumes, both meet in worker 0's new run and each
/// restarts exactly once. Before, worker 0's new run opened channels to worker 1's old one,
/// they refused each other ("plan hash mismatch") and failed again and again.
#[test]
fn a_frozen_worker_that_resumes_joins_the_run_worker_0_restarted() {
    let (dir, path, expected) = job("frozen", 200_000);
    let peers = free_ports(2);
    let w0 = Worker::start(&path, 0, &peers, "t", &[]);
    let w1 = Worker::start(&path, 1, &peers, "t", &[]);
    let chk = dir.join("chk");
    let started = Instant::now();
    wait_until(Duration::from_secs(60), "no complete checkpoint", || {
        has_complete_checkpoint(&chk)
    });
    let first = leader_mark(&chk).expect("worker 0 marks its run");
    let mut w1 = w1;
    signal("STOP", w1.child.id());
    assert!(
        w1.child.try_wait().unwrap().is_none(),
        "the job ended before worker 1 was frozen: give it more input"
    );
    wait_until(
        Duration::from_secs(60),
        "worker 0 did not restart its run",
        || leader_mark(&chk).is_some_and(|m| m != first),
    );
    eprintln!(
        "worker 0 restarted its run {:?} after the start",
        started.elapsed()
    );
    signal("CONT", w1.child.id());
    let (err0, err1) = both_succeed(w1, Duration::from_secs(90), w0, Duration::from_secs(10));
    assert_eq!(
        (restarts(&err0), restarts(&err1)),
        (1, 1),
        "worker 0:\n{err0}\nworker 1:\n{err1}"
    );
    assert_eq!(final_counts(&dir.join("out")), expected);
}

/// Worker 0 is killed mid-run and its pod starts it again at once, while worker 1 may still
/// be failing out of the old run: the new worker 0 waits for worker 1 to join its run before
/// it opens any channel, so worker 1 restarts once and the new worker 0 never. (A guard for
/// the join barrier: the old code passed this too, worker 1 leaving its run fast enough.)
#[test]
fn a_killed_leader_started_again_is_joined_and_the_counts_stay_exact() {
    let (dir, path, expected) = job("leader", 200_000);
    let peers = free_ports(2);
    let mut w0 = Worker::start(&path, 0, &peers, "t", &[]);
    let w1 = Worker::start(&path, 1, &peers, "t", &[]);
    wait_until(Duration::from_secs(60), "no complete checkpoint", || {
        has_complete_checkpoint(&dir.join("chk"))
    });
    kill9(w0.child.id());
    let _ = w0.child.wait();
    let w0 = Worker::start(&path, 0, &peers, "t", &[]);
    let (err0, err1) = both_succeed(w0, Duration::from_secs(90), w1, Duration::from_secs(10));
    assert_eq!(
        (restarts(&err0), restarts(&err1)),
        (0, 1),
        "worker 0:\n{err0}\nworker 1:\n{err1}"
    );
    assert_eq!(final_counts(&dir.join("out")), expected);
}
