//! What `streamjob run` tells the terminal while a job runs: a live line of records and
//! rates (indicatif) when stderr is a terminal and the input is bounded, a periodic one-line
//! rate for unbounded input, and a one-line summary at the end (records, wall and CPU time,
//! peak RSS). `--quiet` turns off all but the summary.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use streamjob::crds::spec::StreamJob;
use streamjob::runtime::metrics::{self, Summary};

/// How often an unbounded run prints its rate.
const RATE_EVERY: Duration = Duration::from_secs(10);

/// Reports while alive; stops (and clears its line) when dropped.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    started: Instant,
}

/// Whether every source of the job ends by itself (files and fixed collections).
pub fn bounded(job: &StreamJob) -> bool {
    job.spec
        .steps
        .iter()
        .filter_map(|s| s.source.as_ref())
        .all(|s| s.socket.is_none() && s.kafka.is_none())
}

fn rate_line(s: &Summary, elapsed: Duration) -> String {
    format!(
        "records in {} ({:.0}/s), out {} ({:.0}/s), {:.0?} elapsed",
        s.records_in,
        s.records_in_per_second,
        s.records_out,
        s.records_out_per_second,
        Duration::from_secs(elapsed.as_secs())
    )
}

impl Progress {
    pub fn start(bounded: bool, quiet: bool) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let terminal = std::io::stderr().is_terminal();
        let thread = match (quiet, bounded, terminal) {
            (true, _, _) | (false, true, false) => None,
            (false, true, true) => {
                let stop = stop.clone();
                Some(std::thread::spawn(move || {
                    let bar = ProgressBar::new_spinner();
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"),
                    );
                    while !stop.load(Ordering::Relaxed) {
                        metrics::global().sample();
                        bar.set_message(rate_line(&metrics::summary(), started.elapsed()));
                        bar.tick();
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    bar.finish_and_clear();
                }))
            }
            (false, false, _) => {
                let stop = stop.clone();
                Some(std::thread::spawn(move || {
                    let mut last = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        if last.elapsed() >= RATE_EVERY {
                            last = Instant::now();
                            metrics::global().sample();
                            eprintln!("{}", rate_line(&metrics::summary(), started.elapsed()));
                        }
                    }
                }))
            }
        };
        Progress {
            stop,
            thread,
            started,
        }
    }

    /// The one-line summary of a finished run. Wall time counts from the process start
    /// (see [`mark_process_start`]) so that it compares with the process's CPU time.
    pub fn summary(&self) -> String {
        let s = metrics::summary();
        let started = PROCESS_START.get().copied().unwrap_or(self.started);
        let mut line = format!(
            "records in {}, out {}; wall {:.3}s",
            s.records_in,
            s.records_out,
            started.elapsed().as_secs_f64()
        );
        if let Some((cpu, rss)) = cpu_and_peak_rss() {
            line.push_str(&format!(
                ", CPU {cpu:.3}s, peak RSS {:.1} MiB",
                rss as f64 / (1024.0 * 1024.0)
            ));
        }
        line
    }
}

static PROCESS_START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Remembers when the process started (call first thing in `main`).
pub fn mark_process_start() {
    let _ = PROCESS_START.set(Instant::now());
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// User + system CPU seconds and peak resident set size (bytes) of this process, from
/// /proc (Linux); None elsewhere.
fn cpu_and_peak_rss() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let cpu = ticks as f64 / rustix::param::clock_ticks_per_second() as f64;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((cpu, kib * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_cpu_and_memory() {
        let (cpu, rss) = cpu_and_peak_rss().expect("/proc is readable");
        assert!(cpu >= 0.0);
        assert!(rss > 0);
    }
}
