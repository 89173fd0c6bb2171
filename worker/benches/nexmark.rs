//! Nexmark benchmark (`make bench-nexmark`): for each query at parallelism 1 and 2, the
//! events per second of wall time, events per CPU-second (getrusage user + sys of the
//! process, all threads) and peak RSS.
//!
//! Input: the built-in generator, bounded (`--events`, default 2,000,000), at 10,000 events
//! per second of event time, as fast as the job takes them. Results go to a discarding sink.
//! Each configuration runs in a child process, so its CPU time and peak RSS are its own;
//! the best of `--runs` (default 3) is printed.
//!
//! Usage: cargo bench -p streamjob-worker --bench nexmark -- [--events N] [--runs R]
//!        [--queries q0,q1,q2,q5,q7] [--parallelism 1,2]

use std::process::Command;
use std::time::Instant;

use nix::sys::resource::{UsageWho, getrusage};
use streamjob::StreamExecutionEnvironment;
use streamjob::connectors::nexmark::{GeneratorConfig, NexmarkSource, queries};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cpu_seconds() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

fn peak_rss_mb() -> f64 {
    // ru_maxrss is in KiB on Linux.
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| u.max_rss() as f64 / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Runs one query in this process; prints `events wall_secs cpu_secs rss_mb results`.
fn child(query: &str, parallelism: u32, events: u64) {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(parallelism);
    let config = GeneratorConfig {
        events: Some(events),
        ..GeneratorConfig::default()
    };
    let source = env.from_source(NexmarkSource::new(config), "nexmark");
    let results = match query {
        "q0" => queries::q0(&source).discard(),
        "q1" => queries::q1(&source).discard(),
        "q2" => queries::q2(&source).discard(),
        "q5" => queries::q5(&source).discard(),
        "q7" => queries::q7(&source).discard(),
        other => panic!("unknown query {other}"),
    };
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    env.execute(query).expect("job runs");
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!("{events} {wall} {cpu} {} {}", peak_rss_mb(), results.get());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(q) = value("--child") {
        let p = value("--p").unwrap().parse().unwrap();
        let n = value("--events").unwrap().parse().unwrap();
        return child(&q, p, n);
    }
    let events: u64 = value("--events").map_or(2_000_000, |v| v.parse().unwrap());
    let runs: usize = value("--runs").map_or(3, |v| v.parse().unwrap());
    let queries_arg = value("--queries").unwrap_or_else(|| "q0,q1,q2,q5,q7".into());
    let parallelism_arg = value("--parallelism").unwrap_or_else(|| "1,2".into());
    let exe = std::env::current_exe().unwrap();
    println!(
        "Nexmark, {events} events, best of {runs} (cores: {})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<6} {:>3} {:>14} {:>16} {:>10} {:>12} {:>10}",
        "query", "p", "events/s", "events/CPU-s", "seconds", "peak RSS MB", "results"
    );
    for q in queries_arg.split(',') {
        for p in parallelism_arg.split(',') {
            let mut best: Option<(f64, f64, f64, u64)> = None;
            for _ in 0..runs {
                let out = Command::new(&exe)
                    .args(["--child", q, "--p", p, "--events", &events.to_string()])
                    .output()
                    .expect("run child");
                assert!(
                    out.status.success(),
                    "{q} p={p}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let line = String::from_utf8_lossy(&out.stdout);
                let f: Vec<&str> = line.split_whitespace().collect();
                let (wall, cpu, rss, results): (f64, f64, f64, u64) = (
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                    f[4].parse().unwrap(),
                );
                if best.is_none_or(|b| wall < b.0) {
                    best = Some((wall, cpu, rss, results));
                }
            }
            let (wall, cpu, rss, results) = best.unwrap();
            println!(
                "{q:<6} {p:>3} {:>14.0} {:>16.0} {wall:>10.3} {rss:>12.1} {results:>10}",
                events as f64 / wall,
                events as f64 / cpu
            );
        }
    }
}
