//! The live job page in a real headless browser (Debian's chromium, installed by
//! scripts/browser-deps.sh): during a real two-worker `streamjob run` of an unbounded job,
//! worker 0's page draws the job's chains with non-zero rates, including those of subtasks
//! worker 1 runs; a screenshot is kept as a test artifact and as docs/job-page.png.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::http::{get, get_json, sample_sum, start};
use common::wait_for;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless chromium on `url` with `mode` (`--dump-dom` or `--screenshot=...`); the
/// virtual time budget lets the page's polling run before the DOM is read.
fn chromium(url: &str, mode: &str, profile: &Path) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/browser-deps.sh (make test does)"
    );
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=4000",
            &format!("--user-data-dir={}", profile.display()),
            mode,
            url,
        ])
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `data-rate-in` values of the vertices in a dumped DOM, by their operators.
fn vertices(dom: &str) -> Vec<(String, f64)> {
    dom.split("class=\"vertex\"")
        .skip(1)
        .map(|v| {
            let attr = |name: &str| {
                let at = v.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
                v[at..at + v[at..].find('"').unwrap()].to_string()
            };
            (
                attr("data-operators"),
                attr("data-rate-in").parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_job_page_draws_the_running_job_in_a_headless_browser() {
    let dir = common::tmp_dir("page", "live");
    // The job reads lines from this server until it closes the connection.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let manifest = dir.join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {{name: live}}
spec:
  parallelism: 2
  checkpointing: {{intervalMs: 300, directory: {chk}}}
  steps:
    - {{name: lines, source: {{socket: {{host: 127.0.0.1, port: {port}, maxRetry: 0}}}}}}
    - {{name: words, flatMap: {{expr: value.lower().words()}}}}
    - {{name: by-word, keyBy: {{expr: value}}}}
    - {{name: counts, reduce: {{expr: acc}}}}
    - {{name: out, sink: {{blackhole: {{}}}}}}
",
            chk = dir.join("chk").display()
        ),
    )
    .unwrap();
    let mut p = start(
        &[
            "run",
            manifest.to_str().unwrap(),
            "--workers",
            "2",
            "--web-port",
            "0",
        ],
        &[],
    );
    let (mut conn, _) = server.accept().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let batch: String = (0..500)
                .map(|i| format!("the quick brown fox {} jumps\n", i % 97))
                .collect();
            while !stop.load(Ordering::Relaxed) {
                if conn.write_all(batch.as_bytes()).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Dropping the connection ends the job's input.
        })
    };
    let url = format!("http://{}/", p.web);
    // Rates need two samples of the server (one second apart).
    wait_for(Duration::from_secs(30), "a non-zero input rate", || {
        let job = get_json(&p.web, "/api/job");
        (job["totals"]["records_in_per_second"].as_f64() > Some(0.0)).then_some(())
    });
    // Worker 0 shows the rates of subtasks worker 1 runs (it reads worker 1's counters).
    wait_for(Duration::from_secs(30), "a rate from worker 1", || {
        let job = get_json(&p.web, "/api/job");
        let remote_rate = job["chains"].as_array()?.iter().any(|c| {
            c["subtasks"].as_array().unwrap().iter().any(|s| {
                s["worker"] == 1 && s["rates"]["records_in_per_second"].as_f64() > Some(0.0)
            })
        });
        remote_rate.then_some(())
    });
    // Barriers are aligned at the two-input gates of `counts`: once n checkpoints
    // completed, a later scrape shows at least n alignments at each of them.
    let completed = wait_for(Duration::from_secs(60), "3 checkpoints", || {
        let m = get(&p.web, "/metrics").unwrap().1;
        let n = sample_sum(&m, "streamjob_checkpoints_completed_total", &[])?;
        (n >= 3.0).then_some(n)
    });
    let m = get(&p.web, "/metrics").unwrap().1;
    // Worker 0 runs counts[0] (its gate merges words[0] and words[1]).
    let labels = [r#"operator="counts""#, r#"subtask="0""#];
    let aligned = sample_sum(&m, "streamjob_checkpoint_alignments_total", &labels);
    assert!(
        aligned >= Some(completed),
        "{aligned:?} < {completed}:\n{m}"
    );
    let secs = sample_sum(&m, "streamjob_checkpoint_alignment_seconds_total", &labels);
    assert!(secs >= Some(0.0), "{m}");
    assert!(
        sample_sum(&m, "streamjob_checkpoint_alignment_last_seconds", &labels).is_some(),
        "{m}"
    );
    let profile = dir.join("profile");
    let v = wait_for(
        Duration::from_secs(60),
        "the page to show a non-zero rate",
        || {
            let v = vertices(&chromium(&url, "--dump-dom", &profile));
            v.iter().any(|(_, rate)| *rate > 0.0).then_some(v)
        },
    );
    let ops: Vec<&str> = v.iter().map(|(o, _)| o.as_str()).collect();
    // The socket source runs alone (parallelism 1), so it is a chain of its own.
    assert_eq!(ops, ["lines", "words", "counts,out"], "{v:?}");
    let shot: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("job-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&url, &format!("--screenshot={}", shot.display()), &profile);
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    eprintln!("job page screenshot: {}", shot.display());
    // The README shows it.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/job-page.png");
    std::fs::copy(&shot, &docs).expect("copy the screenshot to docs/");

    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    let status = wait_for(Duration::from_secs(60), "the job to end", || {
        p.child.try_wait().unwrap()
    });
    assert!(status.success(), "streamjob run failed: {status}");
    let _ = std::fs::remove_dir_all(&dir);
}
