//! Helpers of the observability tests: a `streamjob` process that prints its job page URL,
//! and plain HTTP GETs against it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::BIN;

/// A running `streamjob` process; killed when dropped.
pub struct Proc {
    pub child: Child,
    /// `host:port` of its metrics / job page server.
    pub web: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `streamjob <args>` and waits for the line naming its job page.
pub fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start streamjob");
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("[streamjob] {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let web = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("streamjob printed no job page URL");
        if let Some(rest) = line.strip_prefix("job page and metrics: http://") {
            break rest.trim_end_matches('/').to_string();
        }
        // A worker other than 0 serves metrics only (in a mini-cluster, wait for worker 0).
        if let Some((_, rest)) = line.split_once(" metrics: http://")
            && line.starts_with("worker ")
            && args.first() == Some(&"worker")
        {
            break rest.trim_end_matches("/metrics").to_string();
        }
    };
    Proc { child, web }
}

/// A one-worker cluster running `manifest` (what a pod runs), serving metrics on a free port
/// and staying up after the job so the final numbers can be read.
pub fn one_worker(manifest: &std::path::Path, token: &str) -> Proc {
    only_worker(
        manifest,
        &["--idle-after-finish"],
        &[("STREAMJOB_TOKEN", token)],
    )
}

/// `streamjob worker <manifest>` as the only worker of its job, serving metrics on a free
/// port, with `extra` arguments and `env`.
pub fn only_worker(manifest: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let peer = super::free_ports(1).remove(0);
    let mut args = vec![
        "worker",
        manifest.to_str().unwrap(),
        "--index",
        "0",
        "--workers",
        "1",
        "--peers",
        &peer,
        // Its own exchange port: the default (6121) would collide with another test's.
        "--listen",
        &peer,
        "--metrics-port",
        "0",
    ];
    args.extend_from_slice(extra);
    start(&args, env)
}

/// GET `path`: (status, body).
pub fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        true => dechunk(body),
        false => body.to_string(),
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET a JSON document.
pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let (status, body) = get(addr, path).expect("GET");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// The sum of every sample of `name` whose labels contain all of `labels`.
pub fn sample_sum(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n == name && labels.iter().all(|l| rest.contains(l)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    found
}
