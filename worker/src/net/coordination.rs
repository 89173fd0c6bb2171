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
    /// Workers that joined this run. A worker joins once per run: a second join means it
    /// restarted while this leader still runs the job it left, which is about to fail too.
    /// Admitting it would restore a stale checkpoint (the one this run started from) and let
    /// its sinks abort transactions of a later complete checkpoint.
    pub joined: Arc<std::sync::Mutex<std::collections::HashSet<u32>>>,
}

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
        if !self.joined.lock().unwrap().insert(r.worker) {
            return Err(Status::unavailable(format!(
                "worker {} already joined this run of the job (epoch {}); it is restarting: \
                 join again once the coordinator has restarted",
                r.worker, self.epoch
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
        let reply = client
            .join(request)
            .await
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
