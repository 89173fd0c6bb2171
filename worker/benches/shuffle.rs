//! Distributed execution benchmark: the declarative word count and a pure keyed shuffle,
//! each at parallelism 2 in one process and across two `streamjob worker` processes on
//! loopback (gRPC exchange). Prints records/s, records per CPU-second (all processes' user +
//! system time) and the bytes that crossed between the processes.
//!
//! `cargo bench -p streamjob-worker --bench shuffle -- [--lines N] [--runs R]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_streamjob");
const WORDS_PER_LINE: usize = 8;

fn generate(path: &Path, lines: usize) {
    let mut s = String::with_capacity(lines * 48);
    let mut x: u64 = 7;
    for _ in 0..lines {
        for k in 0..WORDS_PER_LINE {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if k > 0 {
                s.push(' ');
            }
            // skewed like text: low ids are far more frequent
            let r = (x >> 40) as f64 / (1u64 << 24) as f64;
            s.push_str(&format!("w{}", (10_000f64.powf(r)) as u32));
        }
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn spec(name: &str, input: &Path, steps: &str) -> String {
    format!(
        "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: {name}\nspec:\n  \
         parallelism: 2\n  steps:\n    - {{name: lines, source: {{file: {{path: \"{}\"}}}}}}\n{steps}    \
         - {{name: out, sink: {{blackhole: {{}}}}}}\n",
        input.display()
    )
}

/// CPU seconds (user + system) of this process's reaped children, from /proc/self/stat.
fn children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // cutime and cstime are fields 16 and 17 (1-based), i.e. 13 and 14 after the name
    let ticks: f64 = fields[13].parse::<f64>().unwrap() + fields[14].parse::<f64>().unwrap();
    ticks / 100.0
}

struct Sample {
    secs: f64,
    cpu: f64,
    records: u64,
    bytes: u64,
}

fn run(spec: &Path, workers: Option<u32>) -> Sample {
    let cpu0 = children_cpu_secs();
    let start = Instant::now();
    let mut cmd = Command::new(BIN);
    cmd.arg("run");
    if let Some(n) = workers {
        cmd.args(["--workers", &n.to_string()]);
    }
    let out = cmd.arg(spec).output().expect("run streamjob");
    let secs = start.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let sum = |key: &str| -> u64 {
        err.lines()
            .filter_map(|l| l.split(key).nth(1))
            .filter_map(|v| v.split([',', ')']).next()?.trim().parse::<u64>().ok())
            .sum()
    };
    Sample {
        secs,
        cpu: children_cpu_secs() - cpu0,
        records: sum("blackhole records:"),
        bytes: sum("bytes sent to peers:"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (lines, runs) = (arg("--lines", 2_000_000), arg("--runs", 2));
    let dir: PathBuf = std::env::temp_dir().join("streamjob-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join(format!("shuffle-{lines}.txt"));
    if !input.exists() {
        generate(&input, lines);
    }
    let jobs = [
        (
            "word count",
            spec(
                "wc",
                &input,
                "    - {name: words, flatMap: {expr: \"value.lower().words()\"}}\n    \
                 - {name: pairs, map: {expr: \"[value, 1]\"}}\n    \
                 - {name: by-word, keyBy: {expr: \"value[0]\"}}\n    \
                 - {name: counts, reduce: {expr: \"[acc[0], acc[1] + value[1]]\"}}\n",
            ),
            (lines * WORDS_PER_LINE) as u64,
        ),
        (
            "shuffle lines",
            spec(
                "shuffle",
                &input,
                "    - {name: by-line, keyBy: {expr: value}}\n    \
                 - {name: keep, filter: {expr: \"true\"}}\n",
            ),
            lines as u64,
        ),
    ];
    println!(
        "{lines} lines x {WORDS_PER_LINE} words, parallelism 2, best of {runs} (by wall time)"
    );
    println!(
        "{:<36} {:>12} {:>14} {:>10} {:>10}",
        "configuration", "records/s", "records/CPU-s", "MB/s", "seconds"
    );
    for (name, yaml, expected) in jobs {
        let path = dir.join(format!("{}.yaml", name.replace(' ', "-")));
        std::fs::write(&path, yaml).unwrap();
        let mut per_cpu = Vec::new();
        for (label, workers) in [("1 process", None), ("2 worker processes", Some(2))] {
            let best = (0..runs)
                .map(|_| run(&path, workers))
                .min_by(|a, b| a.secs.total_cmp(&b.secs))
                .unwrap();
            assert_eq!(
                best.records, expected,
                "{name} {label}: every record arrives"
            );
            let mbps = best.bytes as f64 / 1e6 / best.secs;
            println!(
                "{:<36} {:>12.0} {:>14.0} {:>10.1} {:>10.3}",
                format!("{name}, {label}"),
                best.records as f64 / best.secs,
                best.records as f64 / best.cpu,
                mbps,
                best.secs
            );
            per_cpu.push(best.records as f64 / best.cpu);
        }
        println!(
            "{name}: 2-process throughput per core = {:.0}% of in-process",
            100.0 * per_cpu[1] / per_cpu[0]
        );
    }
}
