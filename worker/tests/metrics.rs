//! A real `streamjob worker` run scraped over its metrics port: exact counts of a bounded
//! job, checkpoints, health endpoints.

mod common;

use std::time::Duration;

use common::http::{get, get_json, one_worker, sample_sum, start};
use common::{free_ports, wait_for};

#[test]
fn a_bounded_job_reports_exact_record_counts_and_checkpoints() {
    let dir = common::tmp_dir("metrics", "counts");
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
    let p = one_worker(&manifest, "metrics-test");
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
    let dir = common::tmp_dir("metrics", "skip");
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
    let p = one_worker(&manifest, "metrics-test");
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

/// A bounded word count on two workers: every channel counts the same bytes and batches on
/// both ends, the tasks' bytes add up to their channels', and worker 0's page and summary
/// cover the subtasks worker 1 runs.
#[test]
fn two_workers_count_the_exchange_on_both_ends_and_worker_0_reports_the_whole_job() {
    let dir = common::tmp_dir("metrics", "two");
    let lines = 2000;
    let text: String = (0..lines)
        .map(|i| format!("w{} w{} w{}\n", i % 31, i % 17, i % 5))
        .collect();
    std::fs::write(dir.join("in.txt"), &text).unwrap();
    let manifest = dir.join("job.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {name: spread}
spec:
  parallelism: 2
  steps:
    - {name: lines, source: {file: {path: in.txt}}}
    - {name: words, flatMap: {expr: value.words()}}
    - {name: by-word, keyBy: {expr: value}}
    - {name: counts, reduce: {expr: acc}}
    - {name: out, sink: {blackhole: {}}}
",
    )
    .unwrap();
    let exchange = free_ports(2);
    let web1 = free_ports(1).remove(0);
    let port1 = web1.rsplit(':').next().unwrap();
    let token = [("STREAMJOB_TOKEN", "metrics-two")];
    let worker = |index: &str, metrics_port: &str, extra: &[&str]| {
        let i: usize = index.parse().unwrap();
        let mut args = vec![
            "worker",
            manifest.to_str().unwrap(),
            "--index",
            index,
            "--workers",
            "2",
            "--peers",
            &exchange.join(","),
            "--listen",
            &exchange[i],
            "--metrics-port",
            metrics_port,
            "--idle-after-finish",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        start(&args, &token)
    };
    let w1 = worker("1", port1, &[]);
    let w0 = worker("0", "0", &[&format!("--peer-metrics=-,{web1}")]);
    for w in [&w0, &w1] {
        wait_for(Duration::from_secs(60), "the job to finish", || {
            (get_json(&w.web, "/api/job")["state"] == "finished").then_some(())
        });
    }
    // Worker 0 reads worker 1 once a second: its summary becomes job-wide, and its final
    // counts arrive with the first answer worker 1 gives after it finished (an answer cached
    // from just before stays fresh for a few seconds).
    let s = wait_for(Duration::from_secs(30), "a job-wide summary", || {
        let s = get_json(&w0.web, "/api/summary");
        (s["workers"] == 2 && s["records_out"] == 3 * lines).then_some(s)
    });
    assert_eq!(s["records_in"], lines, "{s}");
    assert_eq!(s["records_out"], 3 * lines, "{s}");
    assert_eq!(s["source_bytes_read"], text.len(), "{s}");
    assert_eq!(s["source_bytes_total"], text.len(), "{s}");
    // The page's data has worker 1's subtasks with their counters.
    let job = get_json(&w0.web, "/api/job");
    let remote: Vec<&serde_json::Value> = job["chains"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["subtasks"].as_array().unwrap())
        .filter(|s| s["worker"] == 1)
        .collect();
    assert_eq!(remote.len(), 2, "{job}");
    for s in &remote {
        assert!(s["metrics"]["records_in"].as_u64() > Some(0), "{s}");
        assert!(s["rates"].is_object(), "{s}");
    }

    let m0 = get(&w0.web, "/metrics").unwrap().1;
    let m1 = get(&w1.web, "/metrics").unwrap().1;
    let job = r#"job="spread""#;
    // Each direction: worker 0's subtask 0 sends to subtask 1 on worker 1, and back.
    for (sender, receiver, from, to, to_peer, from_peer) in [
        (&m0, &m1, "0", "1", "1", "0"),
        (&m1, &m0, "1", "0", "0", "1"),
    ] {
        let channel = [
            job,
            r#"from_operator="lines""#,
            &format!(r#"from_subtask="{from}""#),
            r#"to_operator="counts""#,
            &format!(r#"to_subtask="{to}""#),
        ];
        let on = |m: &str, name: &str, peer: &str| {
            let mut labels = channel.to_vec();
            let peer = format!(r#"peer="{peer}""#);
            labels.push(&peer);
            sample_sum(m, name, &labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{m}"))
        };
        let sent = on(sender, "streamjob_exchange_sent_bytes_total", to_peer);
        assert!(sent > 0.0);
        assert_eq!(
            sent,
            on(
                receiver,
                "streamjob_exchange_received_bytes_total",
                from_peer
            )
        );
        let batches = on(sender, "streamjob_exchange_sent_batches_total", to_peer);
        assert!(batches > 0.0);
        assert_eq!(
            batches,
            on(
                receiver,
                "streamjob_exchange_received_batches_total",
                from_peer
            )
        );
        // The sender reports the credit it holds.
        assert!(on(sender, "streamjob_exchange_credits_outstanding", to_peer) >= 0.0);
        // The tasks at the two ends carry the channel's bytes.
        let task = |m: &str, name: &str, op: &str, subtask: &str| {
            sample_sum(
                m,
                name,
                &[
                    job,
                    &format!(r#"operator="{op}""#),
                    &format!(r#"subtask="{subtask}""#),
                ],
            )
            .unwrap_or_else(|| panic!("no {name} in\n{m}"))
        };
        assert_eq!(
            task(sender, "streamjob_task_output_bytes_total", "lines", from),
            sent
        );
        assert_eq!(
            task(receiver, "streamjob_task_input_bytes_total", "counts", to),
            sent
        );
    }
    // The file was read once, all of it, by the two source subtasks.
    let read: f64 = [&m0, &m1]
        .iter()
        .map(|m| sample_sum(m, "streamjob_source_read_bytes_total", &[job]).unwrap())
        .sum();
    assert_eq!(read, text.len() as f64);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A socket source counts the bytes it received as input, a file sink the bytes it wrote as
/// output: exactly what was sent (a last line without its end included) and the file's size.
#[test]
fn socket_input_and_file_output_bytes_are_exact() {
    use std::io::Write as _;
    let dir = common::tmp_dir("metrics", "bytes");
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let mut sent: String = (0..3000)
        .map(|i| format!("line {i} {}\n", "x".repeat(i % 17)))
        .collect();
    sent.push_str("no line end");
    let feeder = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let (mut conn, _) = server.accept().unwrap();
            conn.write_all(sent.as_bytes()).unwrap();
            // Closing ends the source (maxRetry 0): the job is bounded.
        })
    };
    let out = dir.join("out.txt");
    let manifest = dir.join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {{name: bytes}}
spec:
  steps:
    - {{name: lines, source: {{socket: {{host: 127.0.0.1, port: {port}}}}}}}
    - {{name: longer, map: {{expr: value + '!'}}}}
    - {{name: out, sink: {{file: {{path: '{out}'}}}}}}
",
            out = out.display()
        ),
    )
    .unwrap();
    let p = one_worker(&manifest, "metrics-test");
    wait_for(Duration::from_secs(60), "the job to finish", || {
        (get_json(&p.web, "/api/job")["state"] == "finished").then_some(())
    });
    feeder.join().unwrap();
    let (_, m) = get(&p.web, "/metrics").unwrap();
    let job = r#"job="bytes""#;
    let written = std::fs::metadata(&out).unwrap().len();
    // Every line got a '!' and a line end: the file is 3001 + 1 bytes longer than the input.
    assert_eq!(written, sent.len() as u64 + 3002);
    assert_eq!(
        sample_sum(&m, "streamjob_task_input_bytes_total", &[job]),
        Some(sent.len() as f64),
        "{m}"
    );
    assert_eq!(
        sample_sum(&m, "streamjob_source_read_bytes_total", &[job]),
        Some(sent.len() as f64),
        "{m}"
    );
    assert_eq!(
        sample_sum(&m, "streamjob_task_output_bytes_total", &[job]),
        Some(written as f64),
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `STREAMJOB_PROGRESS=always` draws the bar without a terminal: a file counts bytes of its
/// total, a collection records of its total, each with an ETA.
#[test]
fn progress_shows_the_total_and_an_eta_when_forced() {
    let dir = common::tmp_dir("metrics", "progress");
    std::fs::write(dir.join("in.txt"), "a b\nc d\ne\n").unwrap();
    let run = |name: &str, source: &str| {
        let manifest = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}}}
spec:
  steps:
    - {{name: input, source: {source}}}
    - {{name: out, sink: {{blackhole: {{}}}}}}
"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(common::BIN)
            .args(["run", manifest.to_str().unwrap(), "--web-port", "off"])
            .env("STREAMJOB_PROGRESS", "always")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let err = run("fromfile", "{file: {path: in.txt}}");
    assert!(err.contains("10 B of 10 B (100%)"), "{err}");
    assert!(err.contains("ETA"), "{err}");
    let err = run("fromlist", r#"{collection: {values: ["1", "2", "3"]}}"#);
    assert!(err.contains("3 of 3 records (100%)"), "{err}");
    assert!(err.contains("ETA"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
