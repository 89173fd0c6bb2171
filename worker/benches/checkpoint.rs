//! Checkpoint cost with large keyed state: a keyed count over 1M distinct keys (then more
//! records over the same keys), run with and without checkpoints, as `streamjob run`
//! processes. Prints records/s for both, the overhead, and for every checkpoint taken with
//! the full 1M keys: how long the reduce task paused (copying its entries), how long the
//! snapshot took to encode and write, its size, and trigger-to-complete time.
//!
//! `cargo bench -p streamjob-worker --bench checkpoint -- [--keys N] [--repeat R] [--interval-ms MS]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_streamjob");

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spec(dir: &Path, checkpoint_ms: Option<u64>) -> PathBuf {
    let checkpointing = checkpoint_ms.map_or(String::new(), |ms| {
        format!(
            "  checkpointing: {{intervalMs: {ms}, directory: \"{}\", retained: 1000}}\n",
            dir.join("chk").display()
        )
    });
    let path = dir.join(if checkpoint_ms.is_some() {
        "ckpt.yaml"
    } else {
        "plain.yaml"
    });
    std::fs::write(
        &path,
        format!(
            "apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {{name: keyed-state}}
spec:
{checkpointing}  steps:
    - {{name: lines, source: {{file: {{path: \"{}\"}}}}}}
    - {{name: pairs, map: {{expr: '[value, 1]'}}}}
    - {{name: by-key, keyBy: {{expr: 'value[0]'}}}}
    - {{name: counts, reduce: {{expr: '[acc[0], acc[1] + value[1]]'}}}}
    - {{name: out, sink: {{blackhole: {{}}}}}}
",
            dir.join("input.txt").display()
        ),
    )
    .unwrap();
    path
}

/// Runs the job; returns its wall time and its stderr.
fn run(spec: &Path) -> (f64, String) {
    let started = Instant::now();
    let out = Command::new(BIN)
        .arg("run")
        .arg(spec)
        .env("STREAMJOB_LOG", "streamjob::declarative=debug,warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `name=value` of a log line, e.g. `paused=95.1ms`.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..].split_whitespace().next()
}

fn millis(d: &str) -> f64 {
    let num = |s: &str| s.trim().parse::<f64>().unwrap_or(f64::NAN);
    if let Some(v) = d.strip_suffix("ms") {
        num(v)
    } else if let Some(v) = d.strip_suffix("µs") {
        num(v) / 1000.0
    } else if let Some(v) = d.strip_suffix("ns") {
        num(v) / 1e6
    } else if let Some(v) = d.strip_suffix('s') {
        num(v) * 1000.0
    } else {
        f64::NAN
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keys = arg(&args, "--keys", 1_000_000);
    let repeat = arg(&args, "--repeat", 4);
    let interval = arg(&args, "--interval-ms", 1000);
    let dir = std::env::temp_dir().join(format!("sj-bench-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut input = String::with_capacity((keys * (repeat + 1) * 9) as usize);
    for round in 0..=repeat {
        for k in 0..keys {
            // The first round creates every key; later rounds update them in another order.
            let k = (k * (2 * round + 1)) % keys;
            input.push_str(&format!("key{k}\n"));
        }
    }
    std::fs::write(dir.join("input.txt"), input).unwrap();
    let records = keys * (repeat + 1);
    println!(
        "keyed count: {keys} distinct keys, {records} records, checkpoint every {interval} ms"
    );
    let (plain, _) = run(&spec(&dir, None));
    let (ckpt, log) = run(&spec(&dir, Some(interval)));
    println!(
        "  no checkpoints   {:>12.0} records/s\n  with checkpoints {:>12.0} records/s  (cost {:+.1}%)",
        records as f64 / plain,
        records as f64 / ckpt,
        (ckpt / plain - 1.0) * 100.0
    );
    let mut full = 0;
    for line in log.lines().filter(|l| l.contains("reduce state snapshot")) {
        let n: u64 = field(line, "keys")
            .and_then(|k| k.parse().ok())
            .unwrap_or(0);
        if n < keys {
            continue;
        }
        full += 1;
        let id = field(line, "checkpoint").unwrap_or("?");
        let meta: serde_json::Value = std::fs::read(dir.join(format!("chk/chk-{id}/_metadata")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let total = meta["completedMs"].as_u64().unwrap_or(0) as i64
            - meta["triggeredMs"].as_u64().unwrap_or(0) as i64;
        println!(
            "  checkpoint {id:>3}: {n} keys, {:.1} MB, task paused {:.1} ms, encode+write {:.1} ms, trigger->complete {total} ms",
            field(line, "bytes")
                .and_then(|b| b.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1e6,
            field(line, "paused").map_or(f64::NAN, millis),
            field(line, "took").map_or(f64::NAN, millis),
        );
    }
    if full == 0 {
        println!("  no checkpoint was taken with all {keys} keys: raise --repeat");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
