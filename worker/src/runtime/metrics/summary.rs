//! The JSON view of a job for the job page and the operator: the plan with each subtask's
//! counters and rates, checkpoints, exceptions. Rates come from a sample taken every second
//! ([`JobMetrics::sample`]), so every reader sees the same numbers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{CheckpointRecord, Exception, JobMetrics, TaskSnapshot, global};
use crate::runtime::checkpoint::now_ms;

#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct Rates {
    pub records_in_per_second: f64,
    pub records_out_per_second: f64,
    /// Shares of the last second (0..=1).
    pub busy: f64,
    pub backpressured: f64,
}

#[derive(Debug, Serialize)]
pub struct SubtaskView {
    pub subtask: u32,
    pub worker: u32,
    /// None: runs on another worker (its counters are there).
    pub metrics: Option<TaskSnapshot>,
    pub rates: Option<Rates>,
}

#[derive(Debug, Serialize)]
pub struct ChainView {
    pub id: usize,
    pub name: String,
    pub operators: Vec<String>,
    pub parallelism: u32,
    pub subtasks: Vec<SubtaskView>,
}

#[derive(Debug, Serialize)]
pub struct EdgeView {
    pub from: usize,
    pub to: usize,
    pub partitioning: String,
}

#[derive(Debug, Serialize)]
pub struct CheckpointView {
    pub triggered: u64,
    pub completed: u64,
    pub failed: u64,
    pub last_completed_id: Option<u64>,
    pub last_completed_ms: Option<u64>,
    pub history: Vec<CheckpointRecord>,
}

/// What the job page shows.
#[derive(Debug, Serialize)]
pub struct JobSummary {
    pub job: String,
    /// "running", "finished" or "failed".
    pub state: &'static str,
    pub worker: u32,
    pub started_ms: u64,
    pub now_ms: u64,
    pub chains: Vec<ChainView>,
    pub edges: Vec<EdgeView>,
    pub checkpoints: CheckpointView,
    pub exceptions: Vec<Exception>,
    pub restarts: u64,
    pub records_skipped: u64,
    pub records_dead_lettered: u64,
    pub totals: Summary,
    /// The other workers worker 0 reads the counters of (empty elsewhere).
    pub peers: Vec<PeerView>,
}

/// How worker 0 last heard from another worker's `/api/job`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    pub worker: u32,
    pub address: String,
    /// Milliseconds since the last answer (None: none yet).
    pub age_ms: Option<u64>,
    pub error: Option<String>,
}

/// The few numbers the operator copies into the StreamJob status.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    /// Records read by the sources of this process, and their rate over the last second.
    pub records_in: u64,
    pub records_in_per_second: f64,
    /// Records written by the sinks (chains with no outgoing edge) of this process.
    pub records_out: u64,
    pub records_out_per_second: f64,
    pub restarts: u64,
    pub checkpoints_completed: u64,
    /// When the last checkpoint completed (ms since the epoch).
    pub last_checkpoint_ms: Option<u64>,
    /// Records the Kafka sources of this process are behind the end of their partitions.
    #[serde(default)]
    pub kafka_lag: Option<u64>,
    /// Workers whose counters these numbers include: worker 0 adds those of the peers it
    /// could read in the last few seconds, so it equals the job's workers when job-wide.
    #[serde(default)]
    pub workers: u32,
    /// Bytes the bounded sources read, and their input's total (for progress and ETA).
    #[serde(default)]
    pub source_bytes_read: u64,
    #[serde(default)]
    pub source_bytes_total: Option<u64>,
    /// Records of the bounded collection sources.
    #[serde(default)]
    pub source_records_total: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Sampler {
    last: Mutex<Option<(Instant, Vec<TaskSnapshot>)>>,
    rates: Mutex<HashMap<(String, u32), Rates>>,
    peers: Mutex<Vec<PeerReport>>,
}

/// Another worker's answer is merged for this long; older ones (a peer gone quiet) are not,
/// so the page never shows stale rates as current.
const PEER_FRESH: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct PeerReport {
    worker: u32,
    address: String,
    answered: Option<(Instant, PeerJob)>,
    error: Option<String>,
}

/// The part of another worker's `/api/job` that worker 0 merges: its own subtasks.
#[derive(Debug, serde::Deserialize)]
struct PeerJob {
    chains: Vec<PeerChain>,
    /// The peer's own totals: its Kafka lag is summed into worker 0's.
    #[serde(default)]
    totals: Option<Summary>,
}

#[derive(Debug, serde::Deserialize)]
struct PeerChain {
    id: usize,
    subtasks: Vec<PeerSubtask>,
}

#[derive(Debug, serde::Deserialize)]
struct PeerSubtask {
    subtask: u32,
    metrics: Option<TaskSnapshot>,
    rates: Option<Rates>,
}

impl JobMetrics {
    /// Takes the sample rates are computed from; called about once a second.
    pub fn sample(&self) {
        let now = Instant::now();
        let tasks = self.snapshots();
        let s = &self.sampler;
        let mut last = s.last.lock().unwrap();
        if let Some((at, before)) = &*last {
            let dt = now.duration_since(*at).as_secs_f64();
            if dt > 0.0 {
                let mut rates = s.rates.lock().unwrap();
                for t in &tasks {
                    let Some(b) = before
                        .iter()
                        .find(|b| b.operator == t.operator && b.subtask == t.subtask)
                    else {
                        continue;
                    };
                    let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
                    let share = |a: f64, b: f64| ((a - b) / dt).clamp(0.0, 1.0);
                    rates.insert(
                        (t.operator.clone(), t.subtask),
                        Rates {
                            records_in_per_second: per_s(t.records_in, b.records_in),
                            records_out_per_second: per_s(t.records_out, b.records_out),
                            busy: share(t.busy_seconds, b.busy_seconds),
                            backpressured: share(t.backpressured_seconds, b.backpressured_seconds),
                        },
                    );
                }
            }
        }
        *last = Some((now, tasks));
    }

    /// Records what worker `worker` at `address` answered on `/api/job` (or why not).
    pub fn peer_report(&self, worker: u32, address: &str, answer: Result<&[u8], String>) {
        let mut peers = self.sampler.peers.lock().unwrap();
        let i = match peers.iter().position(|p| p.worker == worker) {
            Some(i) => i,
            None => {
                peers.push(PeerReport {
                    worker,
                    address: address.to_string(),
                    answered: None,
                    error: None,
                });
                peers.len() - 1
            }
        };
        let p = &mut peers[i];
        match answer.and_then(|body| {
            serde_json::from_slice::<PeerJob>(body).map_err(|e| format!("unreadable answer: {e}"))
        }) {
            Ok(job) => {
                p.answered = Some((Instant::now(), job));
                p.error = None;
            }
            Err(e) => p.error = Some(e),
        }
    }

    /// Counters and rates of a subtask another worker runs, from its last fresh answer.
    fn peer_subtask(
        &self,
        worker: u32,
        chain: usize,
        subtask: u32,
    ) -> Option<(TaskSnapshot, Rates)> {
        let peers = self.sampler.peers.lock().unwrap();
        let (at, job) = peers
            .iter()
            .find(|p| p.worker == worker)?
            .answered
            .as_ref()?;
        if at.elapsed() > PEER_FRESH {
            return None;
        }
        let s = job
            .chains
            .iter()
            .find(|c| c.id == chain)?
            .subtasks
            .iter()
            .find(|s| s.subtask == subtask)?;
        Some((s.metrics.clone()?, s.rates.unwrap_or_default()))
    }

    /// The Kafka lag of each peer that answered recently and has a Kafka source: the
    /// operator reads worker 0 alone when it covers every worker, so its lag must too.
    fn peer_kafka_lags(&self) -> Vec<u64> {
        let peers = self.sampler.peers.lock().unwrap();
        peers
            .iter()
            .filter_map(|p| p.answered.as_ref())
            .filter(|(at, _)| at.elapsed() <= PEER_FRESH)
            .filter_map(|(_, job)| job.totals.as_ref()?.kafka_lag)
            .collect()
    }

    fn peer_views(&self) -> (Vec<PeerView>, u32) {
        let peers = self.sampler.peers.lock().unwrap();
        let fresh = |p: &PeerReport| {
            p.answered
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() <= PEER_FRESH)
        };
        let views = peers
            .iter()
            .map(|p| PeerView {
                worker: p.worker,
                address: p.address.clone(),
                age_ms: p
                    .answered
                    .as_ref()
                    .map(|(at, _)| at.elapsed().as_millis() as u64),
                error: p.error.clone(),
            })
            .collect();
        (views, peers.iter().filter(|p| fresh(p)).count() as u32)
    }

    fn rates(&self, operator: &str, subtask: u32) -> Option<Rates> {
        self.sampler
            .rates
            .lock()
            .unwrap()
            .get(&(operator.to_string(), subtask))
            .copied()
    }

    pub fn job_summary(&self) -> JobSummary {
        let layout = self.layout.read().unwrap().clone();
        let tasks = self.snapshots();
        let mut chains = Vec::new();
        let mut edges = Vec::new();
        let mut totals = Summary::default();
        if let Some(l) = &layout {
            let plan = &l.plan;
            for c in &plan.chains {
                let head = &plan.nodes[c.nodes[0]].name;
                let is_source = !plan.edges.iter().any(|e| e.to_chain == c.id);
                let is_sink = !plan.edges.iter().any(|e| e.from_chain == c.id);
                let subtasks = (0..c.parallelism)
                    .map(|i| {
                        let worker = l.worker_of(i);
                        let mut metrics = tasks
                            .iter()
                            .find(|t| &t.operator == head && t.subtask == i)
                            .cloned();
                        let mut rates = self.rates(head, i);
                        if metrics.is_none()
                            && worker != l.worker
                            && let Some((m, r)) = self.peer_subtask(worker, c.id, i)
                        {
                            metrics = Some(m);
                            rates = Some(r);
                        }
                        if let Some(m) = &metrics {
                            let r = rates.unwrap_or_default();
                            if is_source {
                                totals.records_in += m.records_in;
                                totals.records_in_per_second += r.records_in_per_second;
                                // Only sources that know their size: the bar's bytes read
                                // must be of the same total (a Kafka or socket source's bytes
                                // would push it past 100%).
                                if let Some(b) = m.source_total_bytes {
                                    totals.source_bytes_read += m.source_bytes_read;
                                    *totals.source_bytes_total.get_or_insert(0) += b;
                                }
                                if let Some(n) = m.source_total_records {
                                    *totals.source_records_total.get_or_insert(0) += n;
                                }
                            }
                            if is_sink {
                                totals.records_out += m.records_out;
                                totals.records_out_per_second += r.records_out_per_second;
                            }
                        }
                        SubtaskView {
                            subtask: i,
                            worker,
                            metrics,
                            rates,
                        }
                    })
                    .collect();
                chains.push(ChainView {
                    id: c.id,
                    name: c.name.clone(),
                    operators: c
                        .nodes
                        .iter()
                        .map(|&n| plan.nodes[n].name.clone())
                        .collect(),
                    parallelism: c.parallelism,
                    subtasks,
                });
            }
            edges = plan
                .edges
                .iter()
                .map(|e| EdgeView {
                    from: e.from_chain,
                    to: e.to_chain,
                    partitioning: format!("{:?}", e.partitioning).to_lowercase(),
                })
                .collect();
        }
        let c = &self.checkpoints;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let nonzero = |v: u64| (v != 0).then_some(v);
        let (skipped, dead) = self.on_error_counts();
        totals.restarts = self.restarts.load(Ordering::Relaxed);
        totals.checkpoints_completed = load(&c.completed);
        totals.last_checkpoint_ms = nonzero(load(&c.last_completed_ms));
        totals.kafka_lag = super::kafka::snapshot().total_lag();
        for lag in self.peer_kafka_lags() {
            *totals.kafka_lag.get_or_insert(0) += lag;
        }
        let (peers, fresh) = self.peer_views();
        totals.workers = 1 + fresh;
        JobSummary {
            job: self.job_name(),
            state: self.state(),
            worker: layout.as_ref().map_or(0, |l| l.worker),
            started_ms: self.started_ms,
            now_ms: now_ms(),
            chains,
            edges,
            checkpoints: CheckpointView {
                triggered: load(&c.triggered),
                completed: load(&c.completed),
                failed: load(&c.failed),
                last_completed_id: nonzero(load(&c.last_completed_id)),
                last_completed_ms: nonzero(load(&c.last_completed_ms)),
                history: self.history.lock().unwrap().iter().cloned().collect(),
            },
            exceptions: self.exceptions.lock().unwrap().iter().cloned().collect(),
            restarts: totals.restarts,
            records_skipped: skipped,
            records_dead_lettered: dead,
            totals,
            peers,
        }
    }
}

/// The operator's view of the process's job.
pub fn summary() -> Summary {
    global().job_summary().totals
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator reads worker 0's summary alone once it covers every worker, so worker 0's
    /// Kafka lag must include what its peers' sources are behind.
    #[test]
    fn worker_0s_kafka_lag_includes_its_peers() {
        let m = JobMetrics::default();
        let peer = serde_json::json!({
            "chains": [],
            "totals": Summary { kafka_lag: Some(5), ..Summary::default() },
        });
        let body = serde_json::to_vec(&peer).unwrap();
        let own = super::super::kafka::snapshot().total_lag().unwrap_or(0);
        m.peer_report(1, "127.0.0.1:1", Ok(&body));
        let totals = m.job_summary().totals;
        assert_eq!(totals.kafka_lag, Some(own + 5));
        assert_eq!(totals.workers, 2);
    }
}
