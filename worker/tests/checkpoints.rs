//! Checkpoints and recovery with real processes: a job killed with SIGKILL at arbitrary
//! points and started again continues from its latest complete checkpoint, and its file
//! output ends up exactly once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_streamjob");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sj-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(lines: usize) -> (String, BTreeMap<String, u64>) {
    let mut counts = BTreeMap::new();
    let mut s = String::new();
    let mut x: u64 = 99;
    for _ in 0..lines {
        for k in 0..6 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let w = format!("w{}", (x >> 33) % 500);
            *counts.entry(w.clone()).or_insert(0) += 1;
            if k > 0 {
                s.push(' ');
            }
            s.push_str(&w);
        }
        s.push('\n');
    }
    (s, counts)
}

fn spec(dir: &Path, parallelism: u32, interval_ms: u64) -> PathBuf {
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
  steps:
    - {{name: lines, source: {{file: {{path: {input}}}}}}}
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
    let out = Command::new(BIN).arg("run").arg(spec).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_job_killed_at_random_points_ends_with_exactly_once_output() {
    let dir = tmp("kill");
    let (input, expected) = text(300_000);
    std::fs::write(dir.join("input.txt"), input).unwrap();
    let spec = spec(&dir, 2, 40);
    let mut x: u64 = 7;
    let mut kills = 0;
    let started = Instant::now();
    while kills < 10 {
        let mut job = Command::new(BIN)
            .arg("run")
            .arg(&spec)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        std::thread::sleep(Duration::from_millis(150 + (x >> 33) % 400));
        if job.try_wait().unwrap().is_some() {
            break; // finished before this kill
        }
        job.kill().unwrap(); // SIGKILL: no cleanup of any kind
        job.wait().unwrap();
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
    let dir = tmp("again");
    let (input, expected) = text(20_000);
    std::fs::write(dir.join("input.txt"), input).unwrap();
    let spec = spec(&dir, 2, 20);
    run_to_end(&spec);
    assert_eq!(exactly_once_finals(&dir.join("out")), expected);
    // Restores the last checkpoint, cuts the files back to it and redoes the rest.
    run_to_end(&spec);
    assert_eq!(exactly_once_finals(&dir.join("out")), expected);
}

#[test]
fn restoring_a_file_source_at_another_parallelism_is_refused_clearly() {
    let dir = tmp("rescale-file");
    let (input, _) = text(20_000);
    std::fs::write(dir.join("input.txt"), input).unwrap();
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
