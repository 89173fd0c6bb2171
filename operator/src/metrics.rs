//! The operator's metrics (prometheus-client) and health, served by one axum server:
//! `/metrics` (Prometheus text format), `/healthz` (the process answers) and `/readyz` (a
//! standby is ready; the leader is ready while every watch it runs has listed its objects and
//! is not failing).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Counter,
    duration: Histogram,
    leader_gauge: Gauge,
    watches_down: Gauge,
    in_flight: Gauge,
    queue_depth: Gauge,
    /// Jobs (namespace, name) a change was seen for since their last reconcile started.
    queued: Mutex<HashSet<(String, String)>>,
    /// This replica holds the leader lease (or leader election is off).
    leader: AtomicBool,
    /// Each watch the controller runs, and whether it is listed and not failing.
    watches: Mutex<BTreeMap<String, bool>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamjob_operator");
        let reconciles = Counter::default();
        let failures = Counter::default();
        let duration = Histogram::new(BUCKETS);
        let leader_gauge = Gauge::default();
        let watches_down = Gauge::default();
        let in_flight = Gauge::default();
        let queue_depth = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now",
            in_flight.clone(),
        );
        registry.register(
            "reconcile_queue_depth",
            "Jobs waiting for a reconcile: changed (they, their children or pods) since their \
             last reconcile started (timed requeues and retries not counted)",
            queue_depth.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 if this replica is the leader",
            leader_gauge.clone(),
        );
        registry.register(
            "watches_down",
            "Watches of the API server that are failing or not yet listed",
            watches_down.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            leader_gauge,
            watches_down,
            in_flight,
            queue_depth,
            queued: Mutex::new(HashSet::new()),
            leader: AtomicBool::new(false),
            watches: Mutex::new(BTreeMap::new()),
        }
    }
}

/// A reconcile counted as in flight until dropped.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Counts a reconcile as running until the guard drops.
    pub fn reconciling(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// A change that triggers a reconcile of job `ns/name` was seen (the controller's queue
    /// deduplicates per job, and so does this count).
    pub fn queued(&self, ns: &str, name: &str) {
        let mut q = self.queued.lock().unwrap();
        q.insert((ns.to_string(), name.to_string()));
        self.queue_depth.set(q.len() as i64);
    }

    /// The controller took job `ns/name` off its queue: a reconcile starts, or the job is
    /// gone and none will.
    pub fn dequeued(&self, ns: &str, name: &str) {
        let mut q = self.queued.lock().unwrap();
        q.remove(&(ns.to_string(), name.to_string()));
        self.queue_depth.set(q.len() as i64);
    }

    pub fn observe(&self, took: Duration, failed: bool) {
        self.reconciles.inc();
        if failed {
            self.failures.inc();
        }
        self.duration.observe(took.as_secs_f64());
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
        self.leader_gauge.set(i64::from(leader));
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Records whether the watch `name` is up (listed and not failing).
    pub fn set_watch(&self, name: &str, up: bool) {
        let mut watches = self.watches.lock().unwrap();
        watches.insert(name.to_string(), up);
        self.watches_down
            .set(watches.values().filter(|up| !**up).count() as i64);
    }

    /// `Err(why)` while this replica leads but a watch is down or none runs yet.
    pub fn ready(&self) -> Result<(), String> {
        if !self.is_leader() {
            return Ok(());
        }
        let watches = self.watches.lock().unwrap();
        if watches.is_empty() {
            return Err("the controller has not started its watches".into());
        }
        let down: Vec<&str> = watches
            .iter()
            .filter(|(_, up)| !**up)
            .map(|(n, _)| n.as_str())
            .collect();
        match down.is_empty() {
            true => Ok(()),
            false => Err(format!("watch down: {}", down.join(", "))),
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }
}

async fn metrics(State(m): State<std::sync::Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

async fn readyz(State(m): State<std::sync::Arc<Metrics>>) -> impl IntoResponse {
    match m.ready() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// The routes of the metrics and health server.
pub fn router(metrics: std::sync::Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) -> std::io::Result<()> {
    axum::serve(listener, router(metrics)).await
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
        assert!(
            text.contains("streamjob_operator_reconciles_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("streamjob_operator_reconcile_errors_total 1\n"),
            "{text}"
        );
        assert!(text.contains("_bucket{le=\"0.05\"} 1\n"), "{text}");
        assert!(text.contains("_bucket{le=\"10.0\"} 2\n"), "{text}");
        assert!(text.contains("_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("streamjob_operator_leader 0\n"), "{text}");
        let running = m.reconciling();
        assert!(
            m.render()
                .contains("streamjob_operator_reconciles_in_flight 1\n"),
            "{}",
            m.render()
        );
        drop(running);
        assert!(
            m.render()
                .contains("streamjob_operator_reconciles_in_flight 0\n")
        );
    }

    #[test]
    fn the_queue_depth_counts_each_waiting_job_once() {
        let m = Metrics::default();
        let depth = |m: &Metrics| {
            let text = m.render();
            text.lines()
                .find_map(|l| l.strip_prefix("streamjob_operator_reconcile_queue_depth "))
                .unwrap_or_else(|| panic!("no queue depth in\n{text}"))
                .to_string()
        };
        assert_eq!(depth(&m), "0");
        m.queued("a", "job");
        // The job's StatefulSet and a pod changed too: still one job waiting.
        m.queued("a", "job");
        m.queued("a", "job");
        m.queued("b", "job");
        assert_eq!(depth(&m), "2");
        m.dequeued("a", "job");
        assert_eq!(depth(&m), "1");
        // Changed again while its reconcile runs: waiting again.
        m.queued("a", "job");
        assert_eq!(depth(&m), "2");
        m.dequeued("a", "job");
        m.dequeued("b", "job");
        // A job taken off twice (gone, then its reconcile) does not go negative.
        m.dequeued("b", "job");
        assert_eq!(depth(&m), "0");
    }

    #[test]
    fn a_leader_is_ready_only_while_its_watches_are_up() {
        let m = Metrics::default();
        // A standby is ready: it waits for the lease.
        assert_eq!(m.ready(), Ok(()));
        m.set_leader(true);
        assert!(m.ready().is_err(), "no watch yet");
        m.set_watch("streamjobs", false);
        assert_eq!(m.ready(), Err("watch down: streamjobs".into()));
        m.set_watch("streamjobs", true);
        assert_eq!(m.ready(), Ok(()));
        m.set_watch("streamjobs", false);
        assert!(m.ready().is_err());
        assert!(
            m.render().contains("streamjob_operator_watches_down 1\n"),
            "{}",
            m.render()
        );
    }

    #[test]
    fn worker_0s_summary_is_the_jobs_only_when_it_covers_every_worker() {
        let s = WorkerSummary {
            records_in_per_second: 10.4,
            records_out_per_second: 20.6,
            kafka_lag: Some(7),
            workers: 3,
        };
        // Worker 0's lag already includes its peers' (it adds them like the rates).
        let rates = Some(JobRates {
            records_in_per_second: 10,
            records_out_per_second: 21,
            kafka_lag: Some(7),
        });
        assert_eq!(job_wide(&s, 3), rates);
        assert_eq!(job_wide(&WorkerSummary { workers: 2, ..s }, 3), None);
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn one_server_answers_metrics_health_and_readiness() {
        let m = std::sync::Arc::new(Metrics::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, m.clone()));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        m.set_leader(true);
        m.set_watch("streamjobs", false);
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("watch down: streamjobs\n"), "{r}");
        m.set_watch("streamjobs", true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let r = get(addr, "/metrics").await;
        assert!(r.contains("streamjob_operator_leader 1"), "{r}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }
}

/// What a worker's `/api/summary` answers (the fields the status needs).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct WorkerSummary {
    pub records_in_per_second: f64,
    pub records_out_per_second: f64,
    /// Records this worker's Kafka sources are behind; absent without a Kafka source.
    #[serde(default)]
    pub kafka_lag: Option<u64>,
    /// Workers the numbers cover: worker 0 adds the other workers' (0: an older worker).
    #[serde(default)]
    pub workers: u32,
}

/// A job's record rates (records per second, rounded), summed over its workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobRates {
    pub records_in_per_second: u64,
    pub records_out_per_second: u64,
    /// Records the Kafka sources are behind, summed over the workers that have one.
    pub kafka_lag: Option<u64>,
}

/// Time one worker gets to answer.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(3);

impl JobRates {
    /// Worker 0's summary when it covers the whole job, else the sum of every worker's;
    /// `None` (logged) when any cannot be read or worker 0 covers only some of the others,
    /// so a partial sum never shows as the job's rate.
    pub async fn fetch(target: &crate::control::Target, workers: u32) -> Option<JobRates> {
        let (mut records_in, mut records_out) = (0.0, 0.0);
        let mut kafka_lag: Option<u64> = None;
        for i in 0..workers {
            let addr = crate::resources::worker_metrics_address(&target.job, &target.namespace, i);
            match tokio::time::timeout(SUMMARY_TIMEOUT, get_summary(&addr)).await {
                Ok(Ok(s)) if i == 0 && s.workers > 1 => {
                    let whole = job_wide(&s, workers);
                    if whole.is_none() {
                        tracing::info!(covered = s.workers, workers, "worker 0 reads only some");
                    }
                    return whole;
                }
                Ok(Ok(s)) => {
                    records_in += s.records_in_per_second;
                    records_out += s.records_out_per_second;
                    if let Some(lag) = s.kafka_lag {
                        kafka_lag = Some(kafka_lag.unwrap_or(0) + lag);
                    }
                }
                Ok(Err(e)) => {
                    tracing::info!(worker = i, %addr, error = %e, "no metrics summary");
                    return None;
                }
                Err(_) => {
                    tracing::info!(worker = i, %addr, "metrics summary timed out");
                    return None;
                }
            }
        }
        Some(JobRates {
            records_in_per_second: records_in.round() as u64,
            records_out_per_second: records_out.round() as u64,
            kafka_lag,
        })
    }
}

/// Worker 0's summary as the job's rates when it covers every worker; `None` when it covers
/// some other workers but not all (adding the others' would count some twice).
fn job_wide(s: &WorkerSummary, workers: u32) -> Option<JobRates> {
    (s.workers >= workers).then(|| JobRates {
        records_in_per_second: s.records_in_per_second.round() as u64,
        records_out_per_second: s.records_out_per_second.round() as u64,
        kafka_lag: s.kafka_lag,
    })
}

/// GET `/api/summary` from a worker's metrics port.
// The worker's web module holds the same few lines of hyper client (`http_get`): left apart on
// purpose, as the one crate both depend on (crds) is kept free of network code and the
// operator does not depend on the worker.
pub async fn get_summary(addr: &str) -> Result<WorkerSummary, String> {
    use http_body_util::{BodyExt as _, Empty};
    use hyper::body::Bytes;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/api/summary")
        .header(header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("unreadable summary: {e}"))
}
