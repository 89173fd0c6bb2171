//! Distributed runs with real worker processes talking gRPC over loopback: exact results,
//! backpressure across processes, failure of a peer, and refused handshakes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::workers::both_succeed;
use common::{BIN, Worker, free_ports, wait_until};

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("dist", name)
}

/// A text of `lines` lines over a 300-word vocabulary, and its exact word counts. The first
/// word of each line is upper case (the job lower-cases).
fn text(lines: usize) -> (String, BTreeMap<String, u64>) {
    let (s, counts) = common::word_text(lines, 42, 300);
    let s = s
        .lines()
        .map(|line| {
            let (first, rest) = line.split_once(' ').unwrap();
            format!("{} {rest}\n", first.to_uppercase())
        })
        .collect();
    (s, counts)
}

fn wordcount_spec(name: &str, input: &Path, sink: &str, parallelism: u32) -> String {
    format!(
        r#"apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata:
  name: {name}
spec:
  parallelism: {parallelism}
  steps:
    - name: lines
      source:
        file:
          path: {input}
    - name: words
      flatMap:
        expr: value.lower().words()
    - name: pairs
      map:
        expr: "[value, 1]"
    - name: by-word
      keyBy:
        expr: value[0]
    - name: counts
      reduce:
        expr: "[acc[0], acc[1] + value[1]]"
    - name: out
      sink:
{sink}
"#,
        input = input.display()
    )
}

fn file_sink(path: &Path) -> String {
    format!("        file:\n          path: {}", path.display())
}

/// Writes `lines` lines of input and a word-count spec whose file sink writes under
/// `dir/out`; returns (spec, output directory, expected final counts).
fn file_job(
    dir: &Path,
    name: &str,
    lines: usize,
    parallelism: u32,
) -> (PathBuf, PathBuf, BTreeMap<String, u64>) {
    let (input, expected) = text(lines);
    std::fs::write(dir.join("input.txt"), input).unwrap();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let spec = dir.join("job.yaml");
    std::fs::write(
        &spec,
        wordcount_spec(
            name,
            &dir.join("input.txt"),
            &file_sink(&out.join("counts")),
            parallelism,
        ),
    )
    .unwrap();
    (spec, out, expected)
}

/// Final count per word from the running counts the file sinks wrote (`["w1",3]` lines),
/// checking that every word's counts arrive in order 1, 2, 3, ... within its subtask file.
fn final_counts(dir: &Path) -> BTreeMap<String, u64> {
    let mut finals = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("counts")
        {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let (w, c): (String, u64) = serde_json::from_str(line).unwrap();
            let prev = finals.insert(w.clone(), c).unwrap_or(0);
            assert_eq!(
                c,
                prev + 1,
                "{w}: count {c} after {prev} in {}",
                path.display()
            );
        }
    }
    finals
}

fn run(args: &[&str], file: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg(file)
        .output()
        .expect("run streamjob")
}

#[test]
fn word_count_across_workers_matches_the_in_process_run() {
    let dir = tmp("wc");
    let (input, expected) = text(20_000);
    std::fs::write(dir.join("input.txt"), input).unwrap();
    for workers in [None, Some(2), Some(3)] {
        let out = dir.join(format!("out-{workers:?}"));
        std::fs::create_dir_all(&out).unwrap();
        let spec = dir.join("job.yaml");
        std::fs::write(
            &spec,
            wordcount_spec(
                "wc",
                &dir.join("input.txt"),
                &file_sink(&out.join("counts")),
                4,
            ),
        )
        .unwrap();
        let result = match workers {
            None => run(&["run"], &spec),
            Some(n) => run(&["run", "--workers", &n.to_string()], &spec),
        };
        assert!(
            result.status.success(),
            "workers {workers:?}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        assert_eq!(final_counts(&out), expected, "workers {workers:?}");
        // one file per sink subtask, whichever worker ran it
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 4);
    }
}

#[test]
fn a_slow_sink_on_one_worker_keeps_the_other_workers_memory_bounded() {
    let dir = tmp("slow");
    // ~46 MB of text: buffering it as records would take several hundred MB.
    let (spec, out, expected) = file_job(&dir, "slow", 1_200_000, 2);
    // Sink subtask 1 (on worker 1) writes into a pipe nobody reads yet.
    let fifo = out.join("counts.1");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let peers = free_ports(2);
    let mut w0 = Worker::start(&spec, 0, &peers, "t", &[]);
    let w1 = Worker::start(&spec, 1, &peers, "t", &[]);
    // Hold the pipe open without reading: once its 64 KiB buffer is full, sink 1 blocks.
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::File::open(fifo).unwrap()
    });
    let mut pipe = reader.join().unwrap();
    // Stalled, not finished: worker 0 is held back by credit. Wait until its own output has
    // stopped growing for a while (however long a slow machine takes to get there), and
    // watch its memory all along.
    let mut peak = 0;
    let mut last = (u64::MAX, Instant::now());
    wait_until(Duration::from_secs(120), "worker 0 never stalled", || {
        peak = peak.max(w0.rss_kib());
        let len = std::fs::metadata(out.join("counts.0")).map_or(0, |m| m.len());
        if len != last.0 {
            last = (len, Instant::now());
        }
        len > 0 && last.1.elapsed() > Duration::from_millis(800)
    });
    assert!(w0.child.try_wait().unwrap().is_none(), "worker 0 finished");
    eprintln!("worker 0 peak RSS while stalled: {peak} KiB");
    assert!(
        peak < 120 * 1024,
        "worker 0 grew to {peak} KiB while its peer was stalled"
    );
    // Draining the pipe lets the job finish with exact counts.
    let drain = std::thread::spawn(move || {
        let mut all = Vec::new();
        pipe.read_to_end(&mut all).unwrap();
        all
    });
    both_succeed(w0, Duration::from_secs(120), w1, Duration::from_secs(120));
    let drained = drain.join().unwrap();
    std::fs::remove_file(&fifo).unwrap();
    std::fs::write(&fifo, drained).unwrap();
    assert_eq!(final_counts(&out), expected);
}

/// A job that never ends: lines from a TCP server the test keeps open.
fn socket_spec(dir: &Path, port: u16) -> PathBuf {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let spec = dir.join("job.yaml");
    let yaml = wordcount_spec(
        "live",
        Path::new("unused"),
        &file_sink(&out.join("counts")),
        2,
    )
    .replace(
        "        file:\n          path: unused",
        &format!("        socket:\n          host: 127.0.0.1\n          port: {port}"),
    );
    std::fs::write(&spec, yaml).unwrap();
    spec
}

#[test]
fn a_killed_worker_stops_the_others_promptly_with_a_clear_error() {
    let dir = tmp("kill");
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = socket_spec(&dir, server.local_addr().unwrap().port());
    let peers = free_ports(2);
    let w0 = Worker::start(&spec, 0, &peers, "t", &[]);
    let mut w1 = Worker::start(&spec, 1, &peers, "t", &[]);
    let (mut conn, _) = server.accept().unwrap();
    for i in 0..2000 {
        writeln!(conn, "alpha beta gamma{i}").unwrap();
    }
    wait_until(Duration::from_secs(20), "no output on both workers", || {
        ["counts.0", "counts.1"]
            .iter()
            .all(|f| std::fs::metadata(dir.join("out").join(f)).map_or(0, |m| m.len()) > 0)
    });
    w1.child.kill().unwrap();
    let killed = Instant::now();
    let (ok, err) = w0.wait(Duration::from_secs(15));
    assert!(!ok, "worker 0 must fail when its peer dies");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "took {:?}",
        killed.elapsed()
    );
    assert!(
        err.contains("worker 1"),
        "error must name the lost peer: {err}"
    );
    drop(conn);
}

#[test]
fn a_wrong_token_is_refused() {
    let dir = tmp("token");
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = socket_spec(&dir, server.local_addr().unwrap().port());
    let peers = free_ports(2);
    let w0 = Worker::start(&spec, 0, &peers, "right", &["--connect-timeout-secs", "5"]);
    let w1 = Worker::start(&spec, 1, &peers, "wrong", &["--connect-timeout-secs", "5"]);
    // The socket source may connect (the listener's backlog accepts it) or not: the
    // workers can fail on each other before it starts. Never block on it.
    let (ok0, err0) = w0.wait(Duration::from_secs(20));
    let (ok1, err1) = w1.wait(Duration::from_secs(20));
    assert!(!ok0 && !ok1);
    let both = format!("{err0}\n{err1}");
    assert!(both.contains("without the job's token"), "{both}");
    drop(server);
}

#[test]
fn a_different_spec_is_refused_by_its_plan_hash() {
    let dir = tmp("hash");
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = socket_spec(&dir, server.local_addr().unwrap().port());
    // Same job name and shape, different expression.
    let other = dir.join("other.yaml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&spec)
            .unwrap()
            .replace("value.lower().words()", "value.words()"),
    )
    .unwrap();
    let peers = free_ports(2);
    let w0 = Worker::start(&spec, 0, &peers, "t", &["--connect-timeout-secs", "5"]);
    let w1 = Worker::start(&other, 1, &peers, "t", &["--connect-timeout-secs", "5"]);
    // The socket source may connect (the listener's backlog accepts it) or not: the
    // workers can fail on each other before it starts. Never block on it.
    let (ok0, err0) = w0.wait(Duration::from_secs(20));
    let (ok1, err1) = w1.wait(Duration::from_secs(20));
    assert!(!ok0 && !ok1);
    let both = format!("{err0}\n{err1}");
    assert!(both.contains("plan hash mismatch"), "{both}");
    assert!(
        both.contains("every worker must run the same spec"),
        "{both}"
    );
    drop(server);
}

#[test]
fn an_unreachable_peer_is_named_after_the_connect_timeout() {
    let dir = tmp("unreachable");
    let (spec, _, _) = file_job(&dir, "lonely", 100, 2);
    let peers = free_ports(2);
    let started = Instant::now();
    let w0 = Worker::start(&spec, 0, &peers, "t", &["--connect-timeout-secs", "2"]);
    let (ok, err) = w0.wait(Duration::from_secs(20));
    assert!(!ok);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        err.contains(&format!("worker 1 at {} is unreachable", peers[1])),
        "{err}"
    );
}

/// `streamjob worker <spec> --index 0 --workers <workers> <args>`.
fn worker_0(spec: &Path, workers: u32, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("worker")
        .arg(spec)
        .args(["--index", "0", "--workers", &workers.to_string()])
        .args(args);
    cmd
}

#[test]
fn worker_arguments_are_checked() {
    let dir = tmp("args");
    let spec = dir.join("job.yaml");
    std::fs::write(
        &spec,
        wordcount_spec("a", &dir.join("x"), &file_sink(&dir.join("o")), 2),
    )
    .unwrap();
    let no_token = worker_0(&spec, 2, &["--peers", "a:1,b:2"])
        .env_remove("STREAMJOB_TOKEN")
        .output()
        .unwrap();
    assert!(!no_token.status.success());
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("STREAMJOB_TOKEN is not set"));
    let few_peers = worker_0(&spec, 2, &["--peers", "a:1"])
        .env("STREAMJOB_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&few_peers.stderr).contains("1 peer address(es) for 2 workers")
    );
    let pod_name = Command::new(BIN)
        .args(["worker", spec.to_str().unwrap(), "--workers", "2"])
        .args([
            "--peer-pattern",
            "{job}-worker-{i}.{job}-workers.{namespace}.svc:{port}",
        ])
        .env("STREAMJOB_TOKEN", "t")
        .env("POD_NAME", "a-worker-7")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&pod_name.stderr);
    assert!(
        err.contains("worker index 7 is out of range for 2 workers"),
        "{err}"
    );
    let too_few_workers = worker_0(&spec, 1, &["--peers", "a:1", "--slots", "1"])
        .env("STREAMJOB_TOKEN", "t")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&too_few_workers.stderr);
    assert!(
        err.contains("plan needs 2 workers (1 slot(s) each for parallelism 2), only 1 given"),
        "{err}"
    );
}

/// A CA and one certificate for 127.0.0.1 signed by it, made with the openssl CLI.
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let sh = |args: &str| {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    };
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem",
    );
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=worker -keyout worker.key -out worker.csr");
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    sh(
        "openssl x509 -req -in worker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out worker.pem",
    );
    (
        dir.join("worker.pem"),
        dir.join("worker.key"),
        dir.join("ca.pem"),
    )
}

#[test]
fn workers_exchange_over_mutual_tls() {
    let dir = tmp("tls");
    let (cert, key, ca) = tls_files(&dir);
    let (spec, out, expected) = file_job(&dir, "tls", 5_000, 2);
    let tls = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-ca",
        ca.to_str().unwrap(),
    ];
    let peers = free_ports(2);
    let w0 = Worker::start(&spec, 0, &peers, "t", &tls);
    let w1 = Worker::start(&spec, 1, &peers, "t", &tls);
    both_succeed(w0, Duration::from_secs(60), w1, Duration::from_secs(60));
    assert_eq!(final_counts(&out), expected);

    // A worker without TLS cannot join a TLS peer.
    let out2 = dir.join("out2");
    std::fs::create_dir_all(&out2).unwrap();
    std::fs::write(
        &spec,
        wordcount_spec(
            "tls",
            &dir.join("input.txt"),
            &file_sink(&out2.join("counts")),
            2,
        ),
    )
    .unwrap();
    let peers = free_ports(2);
    let mut tls_short = tls.to_vec();
    tls_short.extend(["--connect-timeout-secs", "3"]);
    let w0 = Worker::start(&spec, 0, &peers, "t", &tls_short);
    let w1 = Worker::start(&spec, 1, &peers, "t", &["--connect-timeout-secs", "3"]);
    let (ok0, _) = w0.wait(Duration::from_secs(30));
    let (ok1, _) = w1.wait(Duration::from_secs(30));
    assert!(
        !ok0 && !ok1,
        "plaintext and TLS workers must not exchange records"
    );

    // Unreadable files are named.
    let bad = worker_0(
        &spec,
        1,
        &["--peers", "127.0.0.1:1", "--tls-cert", "/nope.pem"],
    )
    .args(["--tls-key", key.to_str().unwrap()])
    .args(["--tls-ca", ca.to_str().unwrap()])
    .env("STREAMJOB_TOKEN", "t")
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("cannot read TLS certificate /nope.pem"),
        "{err}"
    );
}

/// Checkpoint storage must be shared by every worker: a follower that cannot see what
/// worker 0 wrote (here: a relative directory resolved next to each worker's own copy of the
/// manifest, like a plain path on each pod's own disk) refuses to run, instead of restoring
/// its subtasks empty later.
#[test]
fn checkpoint_storage_that_workers_do_not_share_is_refused() {
    let dir = tmp("unshared");
    let input = dir.join("in.txt");
    std::fs::write(&input, "a b c\n").unwrap();
    let spec = wordcount_spec("unshared", &input, &file_sink(&dir.join("out/c")), 2).replace(
        "  steps:",
        "  checkpointing: {intervalMs: 100, directory: chk}\n  steps:",
    );
    let specs: Vec<PathBuf> = ["pod-0", "pod-1"]
        .iter()
        .map(|pod| {
            std::fs::create_dir_all(dir.join(pod)).unwrap();
            let path = dir.join(pod).join("job.yaml");
            std::fs::write(&path, &spec).unwrap();
            path
        })
        .collect();
    let peers = free_ports(2);
    let args = ["--connect-timeout-secs", "5"];
    let w0 = Worker::start(&specs[0], 0, &peers, "t", &args);
    let w1 = Worker::start(&specs[1], 1, &peers, "t", &args);
    let (ok1, err1) = w1.wait(Duration::from_secs(30));
    assert!(!ok1);
    assert!(
        err1.contains(&format!(
            "worker 1 cannot see the checkpoint storage of worker 0 at {}",
            dir.join("pod-1/chk").display()
        )),
        "{err1}"
    );
    drop(w0);
}
