//! Checkpoints and recovery with real processes: a job killed with SIGKILL at arbitrary
//! points and started again continues from its latest complete checkpoint, and its file
//! output ends up exactly once. Distributed runs (worker processes shuffling over gRPC,
//! worker 0 coordinating) recover from killed workers the same way, and stop-with-savepoint
//! lets a job continue exactly at another parallelism.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::cluster::MiniCluster;
use common::{BIN, kill9, succeed, workers_of};

/// `lines` lines of six words over a 500-word vocabulary, and the exact count of each word.
fn text(lines: usize) -> (String, BTreeMap<String, u64>) {
    common::word_text(lines, 99, 500)
}

/// A fresh directory `name` holding `input.txt` of `lines` lines ([`text`]), and the exact
/// count of each word.
fn input(name: &str, lines: usize) -> (PathBuf, BTreeMap<String, u64>) {
    let dir = common::tmp_dir("ckpt", name);
    let (input, expected) = text(lines);
    std::fs::write(dir.join("input.txt"), input).unwrap();
    (dir, expected)
}

fn spec(dir: &Path, parallelism: u32, interval_ms: u64) -> PathBuf {
    spec_with(dir, parallelism, interval_ms, "", "")
}

/// The word count with extra spec lines (`extra`) and source step settings (`source`).
fn spec_with(dir: &Path, parallelism: u32, interval_ms: u64, extra: &str, source: &str) -> PathBuf {
    let path = dir.join(format!("job-p{parallelism}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {{name: ckpt}}
spec:
  parallelism: {parallelism}
  checkpointing: {{intervalMs: {interval_ms}, directory: {chk}, retained: 2}}
{extra}  steps:
    - {{name: lines, {source}source: {{file: {{path: {input}}}}}}}
    - {{name: words, flatMap: {{expr: value.words()}}}}
    - {{name: pairs, map: {{expr: '[value, 1]'}}}}
    - {{name: by, keyBy: {{expr: 'value[0]'}}}}
    - {{name: counts, reduce: {{expr: '[acc[0], acc[1] + value[1]]'}}}}
    - {{name: out, sink: {{file: {{path: {out}}}}}}}
",
            chk = dir.join("chk").display(),
            input = dir.join("input.txt").display(),
            out = dir.join("out/counts").display(),
        ),
    )
    .unwrap();
    path
}

/// Checks that every word's running counts are exactly 1, 2, ..., n across the sink files
/// (exactly once: no count missing, none repeated) and returns the finals.
fn exactly_once_finals(out: &Path) -> BTreeMap<String, u64> {
    let mut per_word: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in std::fs::read_dir(out).unwrap() {
        for line in std::fs::read_to_string(e.unwrap().path()).unwrap().lines() {
            let (w, c): (String, u64) = serde_json::from_str(line).unwrap();
            per_word.entry(w).or_default().push(c);
        }
    }
    per_word
        .into_iter()
        .map(|(w, mut counts)| {
            counts.sort_unstable();
            let n = counts.len() as u64;
            assert!(
                counts.iter().copied().eq(1..=n),
                "{w}: running counts are not exactly 1..={n}: {:?}",
                &counts[..counts.len().min(20)]
            );
            (w, n)
        })
        .collect()
}

fn run_to_end(spec: &Path) {
    succeed(Command::new(BIN).arg("run").arg(spec));
}

/// Runs `spec` and SIGKILLs it (no cleanup of any kind) after `after`; false when it
/// finished before.
fn run_and_kill_after(spec: &Path, after: Duration) -> bool {
    let mut job = Command::new(BIN)
        .arg("run")
        .arg(spec)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    if job.try_wait().unwrap().is_some() {
        return false;
    }
    job.kill().unwrap();
    job.wait().unwrap();
    true
}

#[test]
fn a_job_killed_at_random_points_ends_with_exactly_once_output() {
    let (dir, expected) = input("kill", 300_000);
    let spec = spec(&dir, 2, 40);
    let mut x: u64 = 7;
    let mut kills = 0;
    let started = Instant::now();
    while kills < 10 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        // A kill at a pseudo-random point; the exact-once result must hold wherever it lands.
        if !run_and_kill_after(&spec, Duration::from_millis(150 + (x >> 33) % 400)) {
            break; // finished before this kill
        }
        kills += 1;
        assert!(started.elapsed() < Duration::from_secs(240));
    }
    assert!(
        kills >= 3,
        "the job must have been killed mid-run (got {kills})"
    );
    run_to_end(&spec);
    assert_eq!(exactly_once_finals(&dir.join("out")), expected);
}

#[test]
fn a_finished_job_run_again_reproduces_the_same_output() {
    let (dir, expected) = input("again", 20_000);
    let spec = spec(&dir, 2, 20);
    run_to_end(&spec);
    assert_eq!(exactly_once_finals(&dir.join("out")), expected);
    // Restores the last checkpoint, cuts the files back to it and redoes the rest.
    run_to_end(&spec);
    assert_eq!(exactly_once_finals(&dir.join("out")), expected);
}

#[test]
fn restoring_a_file_source_at_another_parallelism_is_refused_clearly() {
    let (dir, _) = input("rescale-file", 20_000);
    run_to_end(&spec(&dir, 2, 10));
    let out = Command::new(BIN)
        .arg("run")
        .arg(spec(&dir, 3, 10))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "the file source was checkpointed at parallelism 2; restoring it at 3 is not supported"
        ),
        "{err}"
    );
}

const RESTARTS: &str = "  restartStrategy: {attempts: 100, initialDelayMs: 100, maxDelayMs: 500}\n";

#[test]
fn a_distributed_job_whose_workers_are_killed_at_random_points_ends_with_exactly_once_output() {
    let (dir, expected) = input("dist-kill", 150_000);
    let spec = spec_with(&dir, 2, 50, RESTARTS, "");
    let mut cluster = Command::new(BIN)
        .args(["run", "--workers", "2"])
        .arg(&spec)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut x: u64 = 11;
    let mut kills = 0;
    let started = Instant::now();
    while kills < 10 && cluster.try_wait().unwrap().is_none() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        // A kill at a pseudo-random point; the exact-once result must hold wherever it lands.
        std::thread::sleep(Duration::from_millis(300 + (x >> 33) % 700));
        let workers = workers_of(cluster.id());
        if workers.len() < 2 {
            continue; // one is being started again
        }
        // Worker 0 (the coordinator) is as fair a target as the others.
        let victim = workers[(x >> 40) as usize % workers.len()];
        kill9(victim);
        kills += 1;
        assert!(started.elapsed() < Duration::from_secs(300));
    }
    let status = cluster.wait().unwrap();
    assert!(
        status.success(),
        "the mini-cluster failed after {kills} kills"
    );
    assert!(
        kills >= 5,
        "workers must have been killed mid-run (got {kills})"
    );
    assert_eq!(exactly_once_finals(&dir.join("out")), expected);
}

/// Starts a mini-cluster with `args`, takes a stop-with-savepoint through worker 0's control
/// API after `after`, and returns the savepoint's path once the cluster has stopped.
fn stop_with_savepoint(spec: &Path, args: &[&str], after: Duration) -> String {
    let cluster = MiniCluster::start(spec, args);
    let address = cluster.address.clone();
    // Called once the job has completed a checkpoint (it is running and restored).
    cluster.stop_with_savepoint_when(|status| {
        assert_eq!(status["state"], "running", "{status}");
        // Lets the job work on a little; the counts must be exact however far it got.
        std::thread::sleep(after);
        let wrong = Command::new(BIN)
            .args(["status", "--address", &address])
            .env("STREAMJOB_TOKEN", "not-the-token")
            .output()
            .unwrap();
        assert!(!wrong.status.success());
        assert!(
            String::from_utf8_lossy(&wrong.stderr).contains("without the job's token"),
            "{}",
            String::from_utf8_lossy(&wrong.stderr)
        );
        true
    })
}

fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().sum()
}

#[test]
fn stop_with_savepoint_then_rescaling_2_to_3_to_1_continues_the_counts_exactly() {
    let (dir, expected) = input("savepoint-rescale", 600_000);
    // The file source stays at parallelism 1; the keyed count and the sink rescale. Each
    // deployment writes checkpoints under its own run id, as the operator's upgrades do.
    let source = "parallelism: 1, ";
    let sp1 = stop_with_savepoint(
        &spec_with(&dir, 2, 100, "", source),
        &["--workers", "2", "--run-id", "one"],
        Duration::from_millis(200),
    );
    assert!(Path::new(&sp1).join("_metadata").is_file(), "{sp1}");
    let first = total(&exactly_once_finals(&dir.join("out")));
    assert!(
        first > 0 && first < total(&expected),
        "stopped mid-run: {first}"
    );

    let sp2 = stop_with_savepoint(
        &spec_with(&dir, 3, 100, "", source),
        &["--workers", "3", "--run-id", "two", "--restore-from", &sp1],
        Duration::from_millis(200),
    );
    let second = total(&exactly_once_finals(&dir.join("out")));
    assert!(
        second > first && second < total(&expected),
        "stopped mid-run: {second}"
    );

    succeed(
        Command::new(BIN)
            .args([
                "run",
                "--workers",
                "1",
                "--run-id",
                "three",
                "--restore-from",
                &sp2,
            ])
            .arg(spec_with(&dir, 1, 100, "", source)),
    );
    // Running counts are 1..n per word across the three deployments: nothing lost or
    // repeated, and each key's state followed its key group to its new owner.
    assert_eq!(exactly_once_finals(&dir.join("out")), expected);
}

/// The S3 bucket the test harness started (scripts/with-s3.sh).
fn s3() -> String {
    std::env::var("STREAMJOB_TEST_S3").expect(
        "STREAMJOB_TEST_S3 is not set: run the tests with `make test`, which starts an S3 \
         server (scripts/with-s3.sh), or point it and the AWS_* variables at a bucket",
    )
}

/// Object keys under `prefix` in the test bucket (S3 ListObjectsV2 over plain HTTP).
fn s3_keys(prefix: &str) -> Vec<String> {
    use std::io::{Read as _, Write as _};
    let endpoint = std::env::var("AWS_ENDPOINT").expect("AWS_ENDPOINT");
    let host = endpoint.trim_start_matches("http://");
    let bucket = s3().trim_start_matches("s3://").to_string();
    let mut conn = std::net::TcpStream::connect(host).unwrap();
    write!(
        conn,
        "GET /{bucket}?list-type=2&prefix={prefix} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next().map(str::to_string))
        .collect()
}

#[test]
fn checkpoints_in_an_s3_bucket_survive_kills_exactly_once() {
    let (dir, expected) = input("s3", 200_000);
    let prefix = format!("kill-{}", std::process::id());
    let spec = spec(&dir, 2, 40);
    let yaml = std::fs::read_to_string(&spec).unwrap().replace(
        &format!("directory: {}", dir.join("chk").display()),
        &format!("directory: '{}/{prefix}/chk'", s3()),
    );
    std::fs::write(&spec, yaml).unwrap();
    let mut kills = 0;
    for wait_ms in [400, 300, 500] {
        // A kill at a fixed-but-arbitrary point; the result must hold wherever it lands.
        if !run_and_kill_after(&spec, Duration::from_millis(wait_ms)) {
            break;
        }
        kills += 1;
    }
    assert!(kills >= 1, "the job must have been killed mid-run");
    run_to_end(&spec);
    assert_eq!(exactly_once_finals(&dir.join("out")), expected);
    // The checkpoints are in the bucket, not on the local disk.
    assert!(!dir.join("chk").exists());
    let keys = s3_keys(&prefix);
    assert!(
        keys.iter().any(|k| k.ends_with("/_metadata"))
            && keys.iter().any(|k| k.ends_with(".state")),
        "no checkpoint in the bucket: {keys:?}"
    );
}
