//! Prometheus metrics and health endpoints of the operator, served over plain HTTP/1.1.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tracing::warn;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    failures: AtomicU64,
    /// Cumulative counts per bucket, plus +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of durations in microseconds.
    sum_micros: AtomicU64,
    /// This replica holds the leader lease (or leader election is off).
    pub leader: AtomicBool,
}

impl Metrics {
    pub fn observe(&self, took: Duration, failed: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.buckets[BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        s.push_str("# HELP streamjob_operator_reconciles_total Reconciles run.\n");
        s.push_str("# TYPE streamjob_operator_reconciles_total counter\n");
        s.push_str(&format!(
            "streamjob_operator_reconciles_total {}\n",
            get(&self.reconciles)
        ));
        s.push_str("# HELP streamjob_operator_reconcile_errors_total Reconciles that failed.\n");
        s.push_str("# TYPE streamjob_operator_reconcile_errors_total counter\n");
        s.push_str(&format!(
            "streamjob_operator_reconcile_errors_total {}\n",
            get(&self.failures)
        ));
        s.push_str("# HELP streamjob_operator_reconcile_duration_seconds Reconcile duration.\n");
        s.push_str("# TYPE streamjob_operator_reconcile_duration_seconds histogram\n");
        for (i, b) in BUCKETS.iter().enumerate() {
            s.push_str(&format!(
                "streamjob_operator_reconcile_duration_seconds_bucket{{le=\"{b}\"}} {}\n",
                get(&self.buckets[i])
            ));
        }
        s.push_str(&format!(
            "streamjob_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}\n",
            get(&self.buckets[BUCKETS.len()])
        ));
        s.push_str(&format!(
            "streamjob_operator_reconcile_duration_seconds_sum {}\n",
            get(&self.sum_micros) as f64 / 1e6
        ));
        s.push_str(&format!(
            "streamjob_operator_reconcile_duration_seconds_count {}\n",
            get(&self.reconciles)
        ));
        s.push_str("# HELP streamjob_operator_leader 1 if this replica is the leader.\n");
        s.push_str("# TYPE streamjob_operator_leader gauge\n");
        s.push_str(&format!(
            "streamjob_operator_leader {}\n",
            u8::from(self.leader.load(Ordering::Relaxed))
        ));
        s
    }
}

/// Response to one request path: (status line, body).
pub fn respond(metrics: &Metrics, path: &str) -> (&'static str, String) {
    match path {
        "/metrics" => ("200 OK", metrics.render()),
        "/healthz" => ("200 OK", "ok\n".into()),
        // Ready to serve: every replica is, leader or standby.
        "/readyz" => ("200 OK", "ok\n".into()),
        _ => ("404 Not Found", "not found\n".into()),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = respond(&metrics, path);
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = conn.write_all(response.as_bytes()).await {
                warn!(error = %e, "metrics connection");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_and_bucketed() {
        let m = Metrics::default();
        m.observe(Duration::from_millis(30), false);
        m.observe(Duration::from_secs(3), true);
        let text = m.render();
        assert!(text.contains("streamjob_operator_reconciles_total 2\n"));
        assert!(text.contains("streamjob_operator_reconcile_errors_total 1\n"));
        assert!(text.contains("_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("_bucket{le=\"+Inf\"} 2\n"));
        assert_eq!(respond(&m, "/healthz").0, "200 OK");
        assert_eq!(respond(&m, "/nope").0, "404 Not Found");
    }
}
