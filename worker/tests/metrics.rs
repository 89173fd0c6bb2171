//! A real `streamjob worker` run scraped over its metrics port: exact counts of a bounded
//! job, checkpoints, health endpoints.

mod common;

use std::time::Duration;

use common::http::{get, get_json, sample_sum, start};
use common::{free_ports, wait_for};

#[test]
fn a_bounded_job_reports_exact_record_counts_and_checkpoints() {
    let dir = std::env::temp_dir().join(format!("sj-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let lines = 1000;
    let text: String = (0..lines)
        .map(|i| {
            let words: Vec<String> = (0..8)
                .map(|k| format!("w{}", (i * 7 + k * 3) % 50))
                .collect();
            words.join(" ") + "\n"
        })
        .collect();
    std::fs::write(dir.join("in.txt"), text).unwrap();
    let manifest = dir.join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {{name: metered}}
spec:
  parallelism: 2
  checkpointing: {{intervalMs: 20, directory: {chk}}}
  steps:
    - {{name: lines, source: {{file: {{path: in.txt}}}}}}
    - {{name: words, flatMap: {{expr: value.words()}}}}
    - {{name: by-word, keyBy: {{expr: value}}}}
    - {{name: counts, reduce: {{expr: acc}}}}
    - {{name: out, sink: {{blackhole: {{}}}}}}
",
            chk = dir.join("chk").display()
        ),
    )
    .unwrap();
    let p = one_worker(&manifest);
    assert_eq!(get(&p.web, "/healthz").unwrap().0, 200);
    // The worker keeps serving after the job (as in a pod): read the final numbers.
    wait_for(Duration::from_secs(60), "the job to finish", || {
        let job = get_json(&p.web, "/api/job");
        (job["state"] == "finished").then_some(())
    });
    assert_eq!(get(&p.web, "/readyz").unwrap().0, 200);
    let (status, m) = get(&p.web, "/metrics").unwrap();
    assert_eq!(status, 200);
    let sum = |name: &str, labels: &[&str]| {
        sample_sum(&m, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{m}"))
    };
    let job = r#"job="metered""#;
    // Every word leaves the reduce as a running count, and the blackhole writes each.
    assert_eq!(
        sum("streamjob_records_in_total", &[job, r#"operator="lines""#]),
        lines as f64
    );
    assert_eq!(
        sum("streamjob_records_out_total", &[job, r#"operator="lines""#]),
        8.0 * lines as f64
    );
    assert_eq!(
        sum("streamjob_records_in_total", &[job, r#"operator="counts""#]),
        8.0 * lines as f64
    );
    assert_eq!(
        sum(
            "streamjob_records_out_total",
            &[job, r#"operator="counts""#]
        ),
        8.0 * lines as f64
    );
    // Both subtasks of both chains report.
    for op in ["lines", "counts"] {
        for s in 0..2 {
            let labels = [
                job,
                &format!(r#"operator="{op}""#),
                &format!(r#"subtask="{s}""#),
            ];
            sum("streamjob_task_busy_seconds_total", &labels);
            sum("streamjob_task_idle_seconds_total", &labels);
            sum("streamjob_task_backpressured_seconds_total", &labels);
        }
    }
    // At least the final checkpoint completed; none failed.
    let completed = sum("streamjob_checkpoints_completed_total", &[job]);
    assert!(completed >= 1.0, "{m}");
    assert_eq!(sum("streamjob_checkpoints_failed_total", &[job]), 0.0);
    assert!(sum("streamjob_checkpoint_last_completed_id", &[job]) > 0.0);
    assert_eq!(sum("streamjob_restarts_total", &[job]), 0.0);
    assert_eq!(sum("streamjob_records_skipped_total", &[job]), 0.0);
    // The operator's summary agrees.
    let s = get_json(&p.web, "/api/summary");
    assert_eq!(s["records_in"], lines);
    assert_eq!(s["records_out"], 8 * lines);
    assert_eq!(s["checkpoints_completed"].as_f64(), Some(completed));
    assert!(s["last_checkpoint_ms"].as_u64().is_some());
    // The operator's client reads the same endpoint (the field names are the contract).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let read = runtime.block_on(streamjob_operator::metrics::get_summary(&p.web));
    let read = read.expect("the operator reads the worker's summary");
    assert!(read.records_in_per_second >= 0.0 && read.records_out_per_second >= 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn records_skipped_by_the_on_error_policy_are_counted() {
    let dir = std::env::temp_dir().join(format!("sj-metrics-skip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("job.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {name: skipping}
spec:
  onError: skip
  steps:
    - {name: numbers, source: {collection: {values: ["1", "2", "oops", "4", "{", "6"]}}}
    - {name: parse, map: {expr: parseJson(value) * 10}}
    - {name: out, sink: {blackhole: {}}}
"#,
    )
    .unwrap();
    let p = one_worker(&manifest);
    wait_for(Duration::from_secs(60), "the job to finish", || {
        (get_json(&p.web, "/api/job")["state"] == "finished").then_some(())
    });
    let (_, m) = get(&p.web, "/metrics").unwrap();
    let job = r#"job="skipping""#;
    assert_eq!(
        sample_sum(&m, "streamjob_records_skipped_total", &[job]),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample_sum(&m, "streamjob_records_out_total", &[job]),
        Some(4.0),
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A one-worker cluster running `manifest` (what a pod runs), serving metrics on a free port
/// and staying up after the job so the final numbers can be read.
fn one_worker(manifest: &std::path::Path) -> common::http::Proc {
    let peer = free_ports(1).remove(0);
    start(
        &[
            "worker",
            manifest.to_str().unwrap(),
            "--index",
            "0",
            "--workers",
            "1",
            "--peers",
            &peer,
            // Its own exchange port: the default (6121) would collide with the other test.
            "--listen",
            &peer,
            "--metrics-port",
            "0",
            "--idle-after-finish",
        ],
        &[("STREAMJOB_TOKEN", "metrics-test")],
    )
}
