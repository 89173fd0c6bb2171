//! The text sources (file, socket) never skip or rewrite data without saying so: directories
//! are read recursively through symlinks, lines that are not UTF-8 follow one policy, and a
//! socket that waits says so.

mod common;

use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::wait_for;
use streamjob::StreamExecutionEnvironment;
use streamjob::connectors::socket::SocketSource;
use streamjob::crds::expr::Value;
use streamjob::crds::validate::parse_job;
use streamjob::declarative::{SpecRun, build_job};

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("text", name)
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_directory_is_read_with_nested_and_symlinked_files_and_without_hidden_ones() {
    let base = tmp("tree");
    let root = base.join("in");
    write(&root.join("top.txt"), b"1\n2\n");
    write(&root.join("nested/deeper/n.txt"), b"3\n");
    write(&root.join(".hidden"), b"no\n");
    write(&base.join("elsewhere/linked.txt"), b"4\n5\n");
    symlink(base.join("elsewhere/linked.txt"), root.join("linked")).unwrap();
    symlink(base.join("elsewhere"), root.join("linked-dir")).unwrap();
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2);
    let out = env.read_text_file(&root).collect_sink();
    env.execute("tree").unwrap();
    let mut lines = out.take();
    lines.sort();
    // linked.txt is reached twice: as a symlinked file and inside a symlinked directory.
    assert_eq!(lines, vec!["1", "2", "3", "4", "4", "5", "5"]);
}

#[test]
fn invalid_utf8_in_a_file_fails_the_rust_api_job_naming_file_and_offset() {
    let dir = tmp("rust-utf8");
    let file = dir.join("in.txt");
    write(&file, b"good\nba\xffd\nlater\n");
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.read_text_file(&file).collect_sink();
    let err = env.execute("utf8").unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "{}: the line at byte offset 5 is not valid UTF-8 (bad byte at offset 7",
            file.display()
        )),
        "{err}"
    );
}

/// A spec reading `input` (file or socket source YAML) into a file sink.
fn spec(on_error: &str, source: &str, out: &Path, dead: Option<&Path>) -> String {
    let dl = dead
        .map(|d| format!("  deadLetter:\n    file:\n      path: {}\n", d.display()))
        .unwrap_or_default();
    format!(
        r#"apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata:
  name: text
spec:
  parallelism: 1
  onError: {on_error}
{dl}  steps:
    - name: lines
      source:
        {source}
    - name: out
      sink:
        file:
          path: {}
"#,
        out.display()
    )
}

fn run_spec(yaml: &str, base: &Path) -> (Result<(), String>, SpecRun) {
    let job = parse_job(yaml).unwrap();
    let env = StreamExecutionEnvironment::get_execution_environment();
    let run = build_job(&env, &job, base).unwrap();
    let result = env.execute("text").map(|_| ()).map_err(|e| e.to_string());
    (result, run)
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

const BAD: &[u8] = b"ba\xffd \xc3(";

fn bad_file(dir: &Path) -> PathBuf {
    let file = dir.join("in.txt");
    let mut bytes = b"one\n".to_vec();
    bytes.extend_from_slice(BAD);
    bytes.extend_from_slice(b"\r\ntwo\n");
    write(&file, &bytes);
    file
}

#[test]
fn spec_on_error_fail_names_the_file_and_offset() {
    let dir = tmp("spec-fail");
    let file = bad_file(&dir);
    let source = format!("file: {{path: {}}}", file.display());
    let (result, _) = run_spec(&spec("fail", &source, &dir.join("out"), None), &dir);
    let err = result.unwrap_err();
    assert!(err.contains("operator 'lines'"), "{err}");
    assert!(
        err.contains(&format!(
            "{}: the line at byte offset 4 is not valid UTF-8",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn spec_on_error_skip_counts_an_invalid_line_of_a_file() {
    let dir = tmp("spec-skip");
    let file = bad_file(&dir);
    let out = dir.join("out");
    let source = format!("file: {{path: {}}}", file.display());
    let (result, run) = run_spec(&spec("skip", &source, &out, None), &dir);
    result.unwrap();
    assert_eq!(lines_of(&out), vec!["one", "two"]);
    assert_eq!(run.skipped.load(Ordering::Relaxed), 1);
}

#[test]
fn spec_dead_letter_keeps_the_raw_bytes_of_an_invalid_line() {
    let dir = tmp("spec-dead");
    let file = bad_file(&dir);
    let (out, dead) = (dir.join("out"), dir.join("dead"));
    let source = format!("file: {{path: {}}}", file.display());
    let (result, run) = run_spec(&spec("deadLetter", &source, &out, Some(&dead)), &dir);
    result.unwrap();
    assert_eq!(lines_of(&out), vec!["one", "two"]);
    assert_eq!(run.dead_lettered.load(Ordering::Relaxed), 1);
    let letters: Vec<serde_json::Value> = lines_of(&dead)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["step"], "lines");
    // The raw bytes, base64 as every bytes value in JSON.
    assert_eq!(letters[0]["record"], Value::Bytes(BAD.into()).to_json());
    let error = letters[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "{}: the line at byte offset 4 is not valid UTF-8",
            file.display()
        )),
        "{error}"
    );
}

/// A server on a free port that sends `bytes` to the first client and closes.
fn serve_once(bytes: &'static [u8]) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.write_all(bytes).unwrap();
    });
    (port, server)
}

#[test]
fn invalid_utf8_from_a_socket_fails_instead_of_being_replaced() {
    let (port, server) = serve_once(b"fine\nno\xfft fine\n");
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.socket_text_stream("127.0.0.1", port).collect_sink();
    let err = env.execute("socket utf8").unwrap_err().to_string();
    server.join().unwrap();
    assert!(
        err.contains(&format!(
            "socket 127.0.0.1:{port}: the line at byte offset 5 is not valid UTF-8 (bad byte at offset 7"
        )),
        "{err}"
    );
}

#[test]
fn spec_on_error_skip_applies_to_the_socket_source() {
    let (port, server) = serve_once(b"fine\nno\xfft fine\nlast");
    let dir = tmp("socket-skip");
    let out = dir.join("out");
    let source = format!("socket: {{host: 127.0.0.1, port: {port}}}");
    let (result, run) = run_spec(&spec("skip", &source, &out, None), &dir);
    server.join().unwrap();
    result.unwrap();
    assert_eq!(lines_of(&out), vec!["fine", "last"]);
    assert_eq!(run.skipped.load(Ordering::Relaxed), 1);
}

/// Everything logged in this test binary (tests filter by their own port).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter("streamjob=info")
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .init();
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until a log line contains every one of `parts`.
fn wait_for_log(parts: &[&str]) -> String {
    let logs = logs();
    wait_for(
        Duration::from_secs(20),
        format!("no log line with {parts:?}"),
        || {
            let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
            text.lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_string)
        },
    )
}

#[test]
fn a_connected_server_that_sends_nothing_is_reported_with_its_address() {
    logs();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let port = listener.local_addr().unwrap().port();
    let job = std::thread::spawn(move || {
        let env = StreamExecutionEnvironment::get_execution_environment();
        env.from_source(
            SocketSource::new("127.0.0.1", port, 0)
                .report_waiting_every(Duration::from_millis(100)),
            "quiet socket",
        )
        .collect_sink();
        env.execute("quiet")
    });
    let (conn, _) = listener.accept().unwrap();
    wait_for_log(&["socket source connecting", &addr]);
    wait_for_log(&["socket source connected", &addr]);
    wait_for_log(&["connected but has received no data", &addr]);
    drop(conn);
    job.join().unwrap().unwrap();
}

#[test]
fn a_server_that_is_not_up_is_reported_while_the_source_retries() {
    logs();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    // Retries for up to 5 s, before the server is up and after it has gone.
    let job = std::thread::spawn(move || {
        let env = StreamExecutionEnvironment::get_execution_environment();
        let out = env
            .from_source(
                SocketSource::new("127.0.0.1", port, 5)
                    .report_waiting_every(Duration::from_millis(100)),
                "absent socket",
            )
            .collect_sink();
        env.execute("absent").map(|_| out.take())
    });
    wait_for_log(&["still waiting to connect", &addr]);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (mut c, _) = listener.accept().unwrap();
    c.write_all(b"hello\n").unwrap();
    drop(c);
    drop(listener);
    wait_for_log(&["socket source lost its connection", &addr]);
    // A stream that was up ends when reconnecting gives up.
    assert_eq!(job.join().unwrap().unwrap(), vec!["hello".to_string()]);
}

/// A listener whose accept queue is full: further connection attempts get no answer. The
/// returned connections keep it full.
fn full_listener() -> (TcpListener, Vec<std::net::TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    while let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        held.push(s);
        assert!(held.len() < 10_000, "the accept queue never filled");
    }
    (listener, held)
}

/// Runs `env` and checks it failed to connect to `addr` after about 300 ms (the old fixed
/// attempt timeout was 1 s).
fn fails_after_300ms(run: impl FnOnce() -> Result<(), String>, addr: std::net::SocketAddr) {
    let started = Instant::now();
    let err = run().unwrap_err();
    let took = started.elapsed();
    assert!(err.contains(&format!("cannot connect to {addr}")), "{err}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(900),
        "took {took:?}"
    );
}

#[test]
fn the_connect_timeout_bounds_an_attempt_to_a_server_that_never_accepts() {
    let (listener, _held) = full_listener();
    let addr = listener.local_addr().unwrap();
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.from_source(
        SocketSource::new("127.0.0.1", addr.port(), 0).connect_timeout(Duration::from_millis(300)),
        "full socket",
    )
    .collect_sink();
    fails_after_300ms(
        || env.execute("full").map(|_| ()).map_err(|e| e.to_string()),
        addr,
    );
}

#[test]
fn spec_connect_timeout_ms_sets_the_socket_connect_timeout() {
    let (listener, _held) = full_listener();
    let addr = listener.local_addr().unwrap();
    let dir = tmp("socket-timeout");
    let source = format!(
        "socket: {{host: 127.0.0.1, port: {}, connectTimeoutMs: 300}}",
        addr.port()
    );
    let yaml = spec("fail", &source, &dir.join("out"), None);
    fails_after_300ms(|| run_spec(&yaml, &dir).0, addr);
}
