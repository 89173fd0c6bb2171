//! Checkpoint coordination across workers, and the job control API.
//!
//! Worker 0 holds the leader [`Coordinator`] and serves `Coordination` (followers join it,
//! follow its progress and report their tasks' acks) and `JobControl` (savepoints and status
//! for the operator and the CLI). Every other worker runs a follower link: it joins before
//! building its tasks — so every worker restores the snapshot the leader chose — then keeps
//! its follower coordinator in step and forwards reports in order.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::net::control_proto::job_control_server::{JobControl, JobControlServer};
use crate::net::control_proto::{
    SavepointReply, SavepointRequest, Snapshot, StatusReply, StatusRequest,
};
use crate::net::coordination_proto::coordination_client::CoordinationClient;
use crate::net::coordination_proto::coordination_server::{Coordination, CoordinationServer};
use crate::net::coordination_proto::{
    EndWrite, FinalState, Finished, FollowRequest, JoinReply, JoinRequest, Progress as Wire,
    ReportReply, ReportRequest, Written, report_request,
};
use crate::net::exchange::{Failures, check_token};
use crate::runtime::checkpoint::format::StateHandle;
use crate::runtime::checkpoint::{Coordinator, Progress, Report, Restored, SnapshotInfo};

/// How long a savepoint may take before the control call gives up waiting.
const SAVEPOINT_TIMEOUT: Duration = Duration::from_secs(600);

fn to_wire(p: &Progress) -> Wire {
    Wire {
        pending: p.pending,
        completed: p.completed,
        stop_at: p.stop_at,
        failed: p.failed.iter().map(|(id, _)| *id).collect(),
        failed_causes: p.failed.iter().map(|(_, c)| c.clone()).collect(),
        final_checkpoint: p.final_checkpoint,
        final_failure: p
            .final_failure
            .as_ref()
            .map_or(String::new(), |f| f.0.clone()),
        final_failure_fatal: p.final_failure.as_ref().is_some_and(|f| f.1),
    }
}

fn from_wire(w: Wire) -> Progress {
    Progress {
        pending: w.pending,
        completed: w.completed,
        stop_at: w.stop_at,
        failed: w.failed.into_iter().zip(w.failed_causes).collect(),
        final_checkpoint: w.final_checkpoint,
        final_failure: (!w.final_failure.is_empty())
            .then_some((w.final_failure, w.final_failure_fatal)),
        ..Progress::default()
    }
}

fn report_to_wire(r: Report) -> report_request::Kind {
    use report_request::Kind;
    match r {
        Report::Ack(id) => Kind::Ack(id),
        Report::Finished {
            last_acked,
            final_state,
        } => Kind::Finished(Finished {
            last_acked,
            final_state: final_state.map(|(uid, subtask, state)| FinalState {
                uid,
                subtask,
                state,
            }),
        }),
        Report::Final(uid, subtask, state) => Kind::FinalState(FinalState {
            uid,
            subtask,
            state,
        }),
        Report::BeginWrite(id) => Kind::BeginWrite(id),
        Report::Written(id, h) => Kind::Written(Written {
            id,
            uid: h.operator,
            subtask: h.subtask,
            file: h.file,
            length: h.length,
            xxh3: h.xxh3,
        }),
        Report::EndWrite(id, error) => Kind::EndWrite(EndWrite {
            id,
            error: error.unwrap_or_default(),
        }),
    }
}

fn report_from_wire(k: report_request::Kind) -> Report {
    use report_request::Kind;
    match k {
        Kind::Ack(id) => Report::Ack(id),
        Kind::Finished(f) => Report::Finished {
            last_acked: f.last_acked,
            final_state: f.final_state.map(|s| (s.uid, s.subtask, s.state)),
        },
        Kind::FinalState(s) => Report::Final(s.uid, s.subtask, s.state),
        Kind::BeginWrite(id) => Report::BeginWrite(id),
        Kind::EndWrite(e) => Report::EndWrite(e.id, (!e.error.is_empty()).then_some(e.error)),
        Kind::Written(w) => Report::Written(
            w.id,
            StateHandle {
                operator: w.uid,
                subtask: w.subtask,
                file: w.file,
                length: w.length,
                xxh3: w.xxh3,
            },
        ),
    }
}

fn snapshot(s: &SnapshotInfo) -> Snapshot {
    Snapshot {
        id: s.id,
        path: s.path.clone(),
        completed_ms: s.completed_ms,
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<Wire, Status>> + Send>>;

/// The leader's side: `Coordination` for followers and `JobControl` for clients.
#[derive(Clone)]
pub(crate) struct LeaderService {
    pub coordinator: Arc<Coordinator>,
    pub token: Arc<str>,
    pub plan_hash: String,
    pub epoch: u64,
    pub failures: Failures,
    /// Set once this worker's share of the job has finished (for `GetStatus`).
    pub finished: Arc<AtomicBool>,
    /// Restarts of the job on this worker before this run.
    pub restarts: u32,
    /// The followers of this run (epoch): every worker joins once, and no worker starts its
    /// data exchange until all have joined, so workers of different runs never meet.
    pub members: Arc<Members>,
    /// How long a join waits for the run to start.
    pub join_timeout: Duration,
}

/// The followers that joined one run of the job, and whether the leader let them start.
///
/// A run starts in two steps: every follower joins (its join call waits), then the leader,
/// with every inbound channel registered, releases them all. So no worker opens a data
/// stream to a worker still in an earlier run (which would refuse it and fail this one too,
/// over and over), and no stream reaches the leader before its channels are ready.
pub(crate) struct Members {
    /// Workers other than the leader.
    expected: u32,
    state: std::sync::Mutex<MembersState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct MembersState {
    joined: std::collections::BTreeSet<u32>,
    released: bool,
}

impl Members {
    pub fn new(workers: u32) -> Members {
        Members {
            expected: workers.saturating_sub(1),
            state: Default::default(),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Adds `worker`; false when it already joined this run.
    fn join(&self, worker: u32) -> bool {
        let added = self.state.lock().unwrap().joined.insert(worker);
        self.changed.notify_waiters();
        added
    }

    /// Followers that have not joined yet.
    fn missing(&self) -> Vec<u32> {
        let s = self.state.lock().unwrap();
        (1..=self.expected)
            .filter(|w| !s.joined.contains(w))
            .collect()
    }

    /// Lets the joined followers start (the leader's channels are ready).
    pub fn release(&self) {
        self.state.lock().unwrap().released = true;
        self.changed.notify_waiters();
    }

    fn released(&self) -> bool {
        self.state.lock().unwrap().released
    }

    /// Wakes every waiter to look at the run again (it failed).
    pub fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// Waits (the leader) until every follower has joined, the run fails (`cancel`), or
    /// `timeout` passes; logs who it waits for. The error names the workers missing.
    pub async fn all_joined(
        &self,
        epoch: u64,
        timeout: Duration,
        cancel: &crate::runtime::context::CancelFlag,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next_log = tokio::time::Instant::now() + LOG_WAIT_EVERY;
        loop {
            // Registered before looking, so a join between the look and the wait wakes it.
            let changed = self.changed.notified();
            let missing = self.missing();
            if missing.is_empty() {
                return Ok(());
            }
            if cancel.is_set() {
                return Err(format!(
                    "run {epoch} failed while waiting for worker(s) {missing:?} to join"
                ));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(format!(
                    "worker(s) {missing:?} did not join run {epoch} of the job within \
                     {timeout:?}: every worker must start (or restart) and join worker 0"
                ));
            }
            if now >= next_log {
                tracing::info!(epoch, ?missing, "waiting for workers to join this run");
                next_log = now + LOG_WAIT_EVERY;
            }
            // Short ticks: a cancel does not notify.
            let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
        }
    }

    /// Waits (a follower's join) until the leader releases the run; false if the run
    /// failed first or `timeout` passed.
    async fn until_released(
        &self,
        timeout: Duration,
        cancel: &crate::runtime::context::CancelFlag,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            if self.released() {
                return true;
            }
            if cancel.is_set() || tokio::time::Instant::now() >= deadline {
                return false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
        }
    }
}

/// The plan and the run (epoch) in a handshake's plan hash (`<plan>-e<epoch>`, see
/// `cluster`).
fn plan_and_run(hash: &str) -> Option<(&str, u64)> {
    let (plan, epoch) = hash.rsplit_once("-e")?;
    Some((plan, epoch.parse().ok()?))
}

/// Whether `theirs` is the plan hash of an earlier run of the same job as `ours`: a worker
/// still winding down that run. Refusing it must not fail this run.
pub(crate) fn earlier_run(theirs: &str, ours: &str) -> bool {
    matches!((plan_and_run(theirs), plan_and_run(ours)),
        (Some((p1, e1)), Some((p2, e2))) if p1 == p2 && e1 < e2)
}

/// Why worker `from` (plan hash `theirs`) and worker `me` (`ours`) cannot exchange data when
/// they run the same plan but different runs of the job; `None` when that is not the case.
pub(crate) fn other_run(from: u32, theirs: &str, me: u32, ours: &str) -> Option<String> {
    let ((p1, e1), (p2, e2)) = (plan_and_run(theirs)?, plan_and_run(ours)?);
    if p1 != p2 || e1 == e2 {
        return None;
    }
    Some(if e1 < e2 {
        format!(
            "worker {from} is still in run {e1} of the job, worker {me} in run {e2}: worker \
             {from} restarts and joins run {e2}"
        )
    } else {
        format!(
            "worker {from} is in run {e1} of the job, worker {me} still in run {e2}: worker \
             {me} restarts and joins run {e1}"
        )
    })
}

/// How often a wait for other workers says what it waits for.
pub(crate) const LOG_WAIT_EVERY: Duration = Duration::from_secs(5);

impl LeaderService {
    fn check_epoch(&self, epoch: u64) -> Result<(), Status> {
        if epoch != self.epoch {
            return Err(Status::failed_precondition(format!(
                "coordinator epoch {} expected, got {epoch}: the job restarted since this worker joined",
                self.epoch
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Coordination for LeaderService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        check_token(&self.token, request.metadata())?;
        let r = request.into_inner();
        if r.plan_hash != self.plan_hash {
            return Err(Status::failed_precondition(format!(
                "worker {} runs plan {} but the coordinator (worker 0) runs {}: every worker \
                 must run the same StreamJob",
                r.worker, r.plan_hash, self.plan_hash
            )));
        }
        if self.finished.load(Ordering::Acquire) {
            return Err(Status::failed_precondition(format!(
                "worker {} joins, but the job has finished (run {})",
                r.worker, self.epoch
            )));
        }
        if self.failures.cancel.is_set() {
            return Err(Status::unavailable(format!(
                "run {} of the job is failing on worker 0; join the run it restarts",
                self.epoch
            )));
        }
        if !self.members.join(r.worker) {
            // Its previous incarnation left this run (it failed, or its pod restarted):
            // this run cannot complete, and waiting for it to notice on its own may take
            // until a channel times out. Restart now; the worker joins the next run.
            self.failures.fail(format!(
                "worker {} joined run {} a second time: it restarted, so this run cannot \
                 complete; restarting the job",
                r.worker, self.epoch
            ));
            self.members.wake();
            return Err(Status::unavailable(format!(
                "worker {} already joined run {} of the job; join again once worker 0 has \
                 restarted it",
                r.worker, self.epoch
            )));
        }
        tracing::info!(worker = r.worker, epoch = self.epoch, "worker joined");
        if !self
            .members
            .until_released(self.join_timeout, &self.failures.cancel)
            .await
        {
            return Err(Status::unavailable(format!(
                "run {} of the job did not start (another worker is missing or it failed); \
                 join the run worker 0 restarts",
                self.epoch
            )));
        }
        let restored = self.coordinator.restored_snapshot();
        Ok(Response::new(JoinReply {
            epoch: self.epoch,
            restored: restored.is_some(),
            restored_id: restored.map_or(0, |r| r.id),
            restored_path: restored.map_or(String::new(), |r| r.dir.url().to_string()),
        }))
    }

    type FollowStream = ProgressStream;

    async fn follow(
        &self,
        request: Request<FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        check_token(&self.token, request.metadata())?;
        self.check_epoch(request.get_ref().epoch)?;
        let worker = request.get_ref().worker;
        let mut rx = self.coordinator.subscribe();
        let (coordinator, failures) = (self.coordinator.clone(), self.failures.clone());
        // Once a job has no data channels left open (its tasks wait for the final
        // checkpoint), this stream is the only sign of a lost follower.
        let lost = move || {
            if !coordinator.final_settled() && !failures.cancel.is_set() {
                failures.fail(format!(
                    "lost worker {worker}: its checkpoint coordination stream closed"
                ));
            }
        };
        let stream = async_stream(move |tx| async move {
            loop {
                let p = to_wire(&rx.borrow_and_update().clone());
                if tx.send(Ok(p)).await.is_err() {
                    return lost();
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() {
                        return;
                    },
                    () = tx.closed() => return lost(),
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportReply>, Status> {
        check_token(&self.token, request.metadata())?;
        let r = request.into_inner();
        self.check_epoch(r.epoch)?;
        let kind = r
            .kind
            .ok_or_else(|| Status::invalid_argument("report without a kind"))?;
        if let Err(e) = self.coordinator.apply(report_from_wire(kind)) {
            let message = format!(
                "checkpoint coordinator: {e} (reported by worker {})",
                r.worker
            );
            self.failures.fail(message.clone());
            return Err(Status::internal(message));
        }
        Ok(Response::new(ReportReply {}))
    }
}

/// A stream fed by a task that gets the sending half of a small channel.
fn async_stream<F, Fut>(f: F) -> ProgressStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Wire, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl JobControl for LeaderService {
    async fn trigger_savepoint(
        &self,
        request: Request<SavepointRequest>,
    ) -> Result<Response<SavepointReply>, Status> {
        check_token(&self.token, request.metadata())?;
        let r = request.into_inner();
        let c = &self.coordinator;
        if self.finished.load(Ordering::Acquire) {
            return Err(Status::failed_precondition(
                "the job has finished; there is nothing to take a savepoint of",
            ));
        }
        if c.stop_at() != 0 {
            return Err(Status::failed_precondition(
                "the job is already stopping with a savepoint",
            ));
        }
        let dir = match r.directory.as_str() {
            "" => None,
            d => Some(
                crate::runtime::storage::Location::parse(d)
                    .map_err(|e| Status::invalid_argument(format!("savepoint directory: {e}")))?,
            ),
        };
        let deadline = tokio::time::Instant::now() + SAVEPOINT_TIMEOUT;
        // A periodic checkpoint may be in flight: the savepoint starts once it settles.
        let id = loop {
            if let Some(id) = c.trigger_savepoint(r.stop, dir.clone()) {
                break id;
            }
            if c.stop_at() != 0 {
                return Err(Status::failed_precondition(
                    "the job is already stopping with a savepoint",
                ));
            }
            if tokio::time::Instant::now() > deadline || self.failures.cancel.is_set() {
                return Err(Status::unavailable("no savepoint could be started"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tracing::info!(savepoint = id, stop = r.stop, "savepoint triggered");
        let mut rx = c.subscribe();
        loop {
            let p = rx.borrow_and_update().clone();
            if let Some(sp) = p.last_savepoint.as_ref().filter(|s| s.id == id) {
                return Ok(Response::new(SavepointReply {
                    savepoint: Some(snapshot(sp)),
                }));
            }
            if let Some((_, cause)) = p.failed.iter().find(|(f, _)| *f == id) {
                return Err(Status::aborted(format!("savepoint {id} failed: {cause}")));
            }
            if self.failures.cancel.is_set() {
                return Err(Status::aborted(format!(
                    "savepoint {id} failed: the job failed while taking it"
                )));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::aborted("the coordinator went away")),
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "savepoint {id} did not complete within {SAVEPOINT_TIMEOUT:?}"
                    )));
                }
            }
        }
    }

    async fn get_status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        check_token(&self.token, request.metadata())?;
        let p = self.coordinator.progress();
        let failure = self
            .failures
            .errors
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.is_root_cause())
            .map(|e| e.to_string())
            .or_else(|| {
                p.failed
                    .last()
                    .map(|(id, c)| format!("checkpoint {id} failed: {c}"))
            })
            .unwrap_or_default();
        let state = if self.failures.cancel.is_set() {
            "failed"
        } else if self.finished.load(Ordering::Acquire) {
            "finished"
        } else {
            "running"
        };
        Ok(Response::new(StatusReply {
            state: state.into(),
            last_checkpoint: p.last_checkpoint.as_ref().map(snapshot),
            last_savepoint: p.last_savepoint.as_ref().map(snapshot),
            restored_from: self
                .coordinator
                .restored_snapshot()
                .map_or(String::new(), |r| r.dir.url().to_string()),
            failure,
            restarts: self.restarts,
        }))
    }
}

pub(crate) fn coordination_server(s: LeaderService) -> CoordinationServer<LeaderService> {
    CoordinationServer::new(s)
}

pub(crate) fn control_server(s: LeaderService) -> JobControlServer<LeaderService> {
    JobControlServer::new(s)
}

fn authorized<T>(token: &str, message: T) -> Result<Request<T>, String> {
    let mut request = Request::new(message);
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token is not a valid header value".to_string())?;
    request.metadata_mut().insert("authorization", bearer);
    Ok(request)
}

/// Why a join failed.
#[derive(Debug)]
pub(crate) enum JoinError {
    /// The leader still runs the job this worker left; it restarts soon.
    LeaderBusy(String),
    Failed(String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::LeaderBusy(m) | JoinError::Failed(m) => f.write_str(m),
        }
    }
}

/// A follower's connection to the leader.
pub(crate) struct FollowerLink {
    client: CoordinationClient<Channel>,
    token: Arc<str>,
    pub epoch: u64,
    pub worker: u32,
}

impl FollowerLink {
    /// Joins the leader: the snapshot to restore from, and the leader's epoch.
    pub async fn join(
        channel: Channel,
        token: Arc<str>,
        worker: u32,
        plan_hash: &str,
        timeout: Duration,
    ) -> Result<(FollowerLink, Option<Restored>), JoinError> {
        let mut client = CoordinationClient::new(channel);
        let request = authorized(
            &token,
            JoinRequest {
                worker,
                plan_hash: plan_hash.to_string(),
            },
        )
        .map_err(JoinError::Failed)?;
        // The leader answers once every worker has joined and it started the run.
        let reply = tokio::time::timeout(timeout, client.join(request))
            .await
            .map_err(|_| {
                JoinError::LeaderBusy(format!(
                    "the checkpoint coordinator (worker 0) did not start the run within \
                     {timeout:?}"
                ))
            })?
            .map_err(|s| {
                let m = format!(
                    "cannot join the checkpoint coordinator (worker 0): {}",
                    s.message()
                );
                match s.code() {
                    tonic::Code::Unavailable => JoinError::LeaderBusy(m),
                    _ => JoinError::Failed(m),
                }
            })?
            .into_inner();
        let restored = match reply.restored {
            false => None,
            true => Some(Restored {
                id: reply.restored_id,
                dir: crate::runtime::storage::Location::parse(&reply.restored_path).map_err(
                    |e| JoinError::Failed(format!("cannot open the snapshot to restore: {e}")),
                )?,
            }),
        };
        Ok((
            FollowerLink {
                client,
                token,
                epoch: reply.epoch,
                worker,
            },
            restored,
        ))
    }

    /// Keeps `follower` in step with the leader and forwards its reports, until the job
    /// ends. A lost leader fails the job unless this worker is done.
    pub async fn run(
        self,
        follower: std::sync::Weak<Coordinator>,
        mut reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
        failures: Failures,
        done: Arc<AtomicBool>,
    ) {
        let FollowerLink {
            mut client,
            token,
            epoch,
            worker,
        } = self;
        let follow = {
            let mut client = client.clone();
            let (token, failures, follower, done) = (
                token.clone(),
                failures.clone(),
                follower.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                let request = match authorized(&token, FollowRequest { epoch, worker }) {
                    Ok(r) => r,
                    Err(e) => return failures.fail(e),
                };
                let mut stream = match client.follow(request).await {
                    Ok(s) => s.into_inner(),
                    Err(s) => {
                        return failures.fail(format!(
                            "cannot follow the checkpoint coordinator: {}",
                            s.message()
                        ));
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(p)) => match follower.upgrade() {
                            Some(f) => f.observe(&from_wire(p)),
                            None => return,
                        },
                        Ok(None) | Err(_) if done.load(Ordering::Acquire) => return,
                        Ok(None) => {
                            return failures.fail(
                                "the checkpoint coordinator (worker 0) ended the progress stream"
                                    .into(),
                            );
                        }
                        Err(s) => {
                            return failures.fail(format!(
                                "lost the checkpoint coordinator (worker 0): {}",
                                s.message()
                            ));
                        }
                    }
                }
            })
        };
        while let Some(r) = reports.recv().await {
            let request = match authorized(
                &token,
                ReportRequest {
                    epoch,
                    worker,
                    kind: Some(report_to_wire(r)),
                },
            ) {
                Ok(r) => r,
                Err(e) => return failures.fail(e),
            };
            if let Err(s) = client.report(request).await {
                failures.fail(format!(
                    "cannot report to the checkpoint coordinator (worker 0): {}",
                    s.message()
                ));
                break;
            }
        }
        follow.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::context::CancelFlag;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    const PLAN: &str = "00000000000000aa-00000000000000bb";

    #[test]
    fn runs_of_one_job_are_told_apart_from_other_plans() {
        let (e5, e7) = (format!("{PLAN}-e5"), format!("{PLAN}-e7"));
        assert!(earlier_run(&e5, &e7));
        assert!(!earlier_run(&e7, &e5));
        assert!(!earlier_run(&e5, &e5));
        // Another plan is not an earlier run, whatever its epoch.
        assert!(!earlier_run("00000000000000cc-00000000000000bb-e1", &e7));
        assert_eq!(
            other_run(1, &e5, 0, &e7).unwrap(),
            "worker 1 is still in run 5 of the job, worker 0 in run 7: worker 1 restarts and \
             joins run 7"
        );
        assert_eq!(
            other_run(0, &e7, 1, &e5).unwrap(),
            "worker 0 is in run 7 of the job, worker 1 still in run 5: worker 1 restarts and \
             joins run 7"
        );
        assert_eq!(other_run(1, &e7, 0, &e7), None);
        assert_eq!(other_run(1, PLAN, 0, &e7), None);
    }

    #[test]
    fn the_leader_waits_for_every_follower_and_names_the_missing_ones() {
        let members = Members::new(3);
        let cancel = CancelFlag::default();
        assert!(members.join(2));
        assert!(!members.join(2), "a second join of one worker is reported");
        let err = block_on(members.all_joined(9, Duration::from_millis(300), &cancel)).unwrap_err();
        assert!(
            err.starts_with("worker(s) [1] did not join run 9 of the job within 300ms"),
            "{err}"
        );
        assert!(members.join(1));
        block_on(members.all_joined(9, Duration::from_millis(300), &cancel)).unwrap();
    }

    #[test]
    fn a_join_waits_for_the_release_and_gives_up_when_the_run_fails() {
        let members = Arc::new(Members::new(2));
        let cancel = CancelFlag::default();
        let waiting = {
            let (m, c) = (members.clone(), cancel.clone());
            std::thread::spawn(move || block_on(m.until_released(Duration::from_secs(30), &c)))
        };
        members.release();
        assert!(waiting.join().unwrap());
        let failed = Members::new(2);
        cancel.set();
        assert!(!block_on(
            failed.until_released(Duration::from_secs(30), &cancel)
        ));
        // Without a release or a failure the wait ends at its deadline.
        let stuck = Members::new(2);
        assert!(!block_on(stuck.until_released(
            Duration::from_millis(200),
            &CancelFlag::default()
        )));
    }
}
