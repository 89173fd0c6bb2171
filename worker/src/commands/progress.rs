//! What `streamjob run` tells the terminal while a job runs: a progress bar (indicatif) when
//! stderr is a terminal and the input is bounded (bytes of the total for files, records of
//! the total for collections, with records/s and ETA), a periodic one-line rate for unbounded
//! input, and a one-line summary at the end (records, wall and CPU time, peak RSS). `--quiet`
//! turns off all but the summary; `STREAMJOB_PROGRESS=always` draws the bar even when stderr
//! is not a terminal (as plain lines, for logs and tests).

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
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

/// What the bar counts: bytes of the files, records of the collections, or (totals not
/// known yet) nothing but a spinner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    Spinner,
    Bytes(u64),
    Records(u64),
}

fn measure(s: &Summary) -> Measure {
    match (s.source_bytes_total, s.source_records_total) {
        (Some(b), _) => Measure::Bytes(b),
        (None, Some(r)) => Measure::Records(r),
        (None, None) => Measure::Spinner,
    }
}

fn style(m: Measure) -> ProgressStyle {
    let template = match m {
        Measure::Spinner => "{spinner} {msg}",
        Measure::Bytes(_) => {
            "{spinner} [{bar:30}] {bytes} of {total_bytes} ({percent}%), {msg}, ETA {eta}"
        }
        Measure::Records(_) => {
            "{spinner} [{bar:30}] {human_pos} of {human_len} records ({percent}%), {msg}, ETA {eta}"
        }
    };
    ProgressStyle::with_template(template)
        .expect("a valid template")
        .progress_chars("=> ")
}

/// Updates the bar from the job's summary.
fn draw(bar: &ProgressBar, shown: &mut Measure, s: &Summary, elapsed: Duration) {
    let m = measure(s);
    if m != *shown {
        bar.set_style(style(m));
        match m {
            Measure::Bytes(n) | Measure::Records(n) => bar.set_length(n),
            Measure::Spinner => {}
        }
        *shown = m;
    }
    match m {
        Measure::Bytes(_) => bar.set_position(s.source_bytes_read),
        Measure::Records(_) => bar.set_position(s.records_in),
        Measure::Spinner => {}
    }
    bar.set_message(rate_line(s, elapsed));
    bar.tick();
}

/// Draws on stderr as plain lines, terminal or not (`STREAMJOB_PROGRESS=always`).
#[derive(Debug)]
struct PlainStderr;

impl TermLike for PlainStderr {
    fn width(&self) -> u16 {
        120
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        writeln!(std::io::stderr(), "{s}")
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        write!(std::io::stderr(), "{s}")
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        use std::io::Write as _;
        std::io::stderr().flush()
    }
}

impl Progress {
    pub fn start(bounded: bool, quiet: bool) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let forced = std::env::var("STREAMJOB_PROGRESS").is_ok_and(|v| v == "always");
        let terminal = std::io::stderr().is_terminal() || forced;
        let thread = match (quiet, bounded, terminal) {
            (true, _, _) | (false, true, false) => None,
            (false, true, true) => {
                let stop = stop.clone();
                Some(std::thread::spawn(move || {
                    let bar = ProgressBar::new_spinner();
                    if forced {
                        bar.set_draw_target(ProgressDrawTarget::term_like_with_hz(
                            Box::new(PlainStderr),
                            2,
                        ));
                    }
                    bar.set_style(style(Measure::Spinner));
                    let mut shown = Measure::Spinner;
                    while !stop.load(Ordering::Relaxed) {
                        metrics::global().sample();
                        draw(&bar, &mut shown, &metrics::summary(), started.elapsed());
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    // The final state (shown where nothing clears lines: a forced bar).
                    metrics::global().sample();
                    draw(&bar, &mut shown, &metrics::summary(), started.elapsed());
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
    fn the_bar_counts_bytes_of_files_and_records_of_collections() {
        let files = Summary {
            source_bytes_total: Some(1000),
            source_records_total: Some(5),
            ..Summary::default()
        };
        assert_eq!(measure(&files), Measure::Bytes(1000));
        let collection = Summary {
            source_records_total: Some(5),
            ..Summary::default()
        };
        assert_eq!(measure(&collection), Measure::Records(5));
        assert_eq!(measure(&Summary::default()), Measure::Spinner);
        let bar = ProgressBar::hidden();
        let mut shown = Measure::Spinner;
        let read = Summary {
            source_bytes_read: 250,
            ..files
        };
        draw(&bar, &mut shown, &read, Duration::from_secs(1));
        assert_eq!(shown, Measure::Bytes(1000));
        assert_eq!((bar.position(), bar.length()), (250, Some(1000)));
    }

    #[test]
    fn this_process_has_used_cpu_and_memory() {
        let (cpu, rss) = cpu_and_peak_rss().expect("/proc is readable");
        assert!(cpu >= 0.0);
        assert!(rss > 0);
    }
}
