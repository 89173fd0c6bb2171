//! The operator's side of the job control API (`worker/proto/control.proto`): worker 0 of a
//! job serves it on the exchange port. The reconciler talks to it through the [`JobControl`]
//! trait, so tests can script the job's answers; [`GrpcJobControl`] is the real client.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use streamjob_crds::spec::SnapshotInfo;

use crate::resources::{EXCHANGE_PORT, service_name, statefulset_name};

/// Generated client code.
pub mod proto {
    tonic::include_proto!("streamjob.control.v1");
}

/// Which job to talk to, and the bearer token it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub job: String,
    pub token: String,
}

impl Target {
    /// Worker 0's stable DNS name through the job's headless Service.
    pub fn address(&self) -> String {
        format!(
            "{}-0.{}.{}.svc:{EXCHANGE_PORT}",
            statefulset_name(&self.job),
            service_name(&self.job),
            self.namespace
        )
    }
}

/// A complete checkpoint or savepoint as the job reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: u64,
    pub path: String,
    /// Completion time, ms since the Unix epoch.
    pub completed_ms: u64,
}

impl Snapshot {
    /// The status form (completion time as RFC 3339).
    pub fn info(&self) -> SnapshotInfo {
        let time = i64::try_from(self.completed_ms)
            .ok()
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        SnapshotInfo {
            id: self.id,
            time: time.to_string(),
            path: self.path.clone(),
        }
    }
}

/// Run state of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// Every source ended (or a stop-with-savepoint completed); the workers idle.
    Finished,
    /// The restart strategy gave up.
    Failed,
    /// Restarting from the latest checkpoint after a failure.
    Restarting,
    /// A state this operator does not know (a newer worker).
    Other(String),
}

/// What `GetStatus` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    pub state: RunState,
    pub last_checkpoint: Option<Snapshot>,
    pub last_savepoint: Option<Snapshot>,
    /// Snapshot path this run restored from; `None` when it started empty.
    pub restored_from: Option<String>,
    /// Cause of the last failure, if any.
    pub failure: Option<String>,
    pub restarts: u32,
    /// Rates summed over every worker's metrics endpoint; `None` when any did not answer.
    pub metrics: Option<crate::metrics::JobRates>,
}

impl JobReport {
    /// The most recent of the last checkpoint and the last savepoint.
    pub fn latest_snapshot(&self) -> Option<&Snapshot> {
        match (&self.last_checkpoint, &self.last_savepoint) {
            (Some(c), Some(s)) => Some(if s.completed_ms >= c.completed_ms {
                s
            } else {
                c
            }),
            (c, s) => c.as_ref().or(s.as_ref()),
        }
    }
}

/// Why a control call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Worker 0 could not be reached (not running, not resolvable, connection refused, timeout).
    #[error("worker 0 at {address} is unreachable: {cause}")]
    Unreachable { address: String, cause: String },
    /// The job answered with an error (e.g. the savepoint failed).
    #[error("{0}")]
    Failed(String),
}

/// The calls the reconciler makes on a job.
pub trait JobControl: Send + Sync {
    /// Takes a savepoint and returns it once complete; with `stop` the job finishes right
    /// after it (stop-with-savepoint).
    fn trigger_savepoint<'a>(
        &'a self,
        target: &'a Target,
        stop: bool,
    ) -> BoxFuture<'a, Result<Snapshot, ControlError>>;

    /// Run and checkpoint state of the job.
    fn status<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<JobReport, ControlError>>;

    /// Record rates of the job's `workers` workers, from their metrics endpoints; `None`
    /// when unknown (a client without access to them).
    fn rates<'a>(
        &'a self,
        _target: &'a Target,
        _workers: u32,
    ) -> BoxFuture<'a, Option<crate::metrics::JobRates>> {
        Box::pin(async { None })
    }
}

/// The real client: a fresh gRPC connection to worker 0 per call (calls are rare: one status
/// poll per job every few tens of seconds, and savepoints).
#[derive(Debug, Clone)]
pub struct GrpcJobControl {
    /// Connect here instead of worker 0's in-cluster name ([`Target::address`]): an operator
    /// run outside the cluster through a port-forward, or a test.
    pub address: Option<String>,
    pub connect_timeout: Duration,
    pub status_timeout: Duration,
    /// Longest wait for a savepoint to complete.
    pub savepoint_timeout: Duration,
}

impl Default for GrpcJobControl {
    fn default() -> Self {
        GrpcJobControl {
            address: None,
            connect_timeout: Duration::from_secs(5),
            status_timeout: Duration::from_secs(10),
            savepoint_timeout: Duration::from_secs(300),
        }
    }
}

fn snapshot(s: Option<proto::Snapshot>) -> Option<Snapshot> {
    s.filter(|s| !s.path.is_empty()).map(|s| Snapshot {
        id: s.id,
        path: s.path,
        completed_ms: s.completed_ms,
    })
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl GrpcJobControl {
    fn address_of(&self, target: &Target) -> String {
        self.address.clone().unwrap_or_else(|| target.address())
    }

    async fn client(
        &self,
        target: &Target,
    ) -> Result<proto::job_control_client::JobControlClient<tonic::transport::Channel>, ControlError>
    {
        let address = self.address_of(target);
        let unreachable = |cause: String| ControlError::Unreachable {
            address: address.clone(),
            cause,
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .connect()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        Ok(proto::job_control_client::JobControlClient::new(channel))
    }

    fn request<T>(
        &self,
        target: &Target,
        message: T,
        timeout: Duration,
    ) -> Result<tonic::Request<T>, ControlError> {
        let mut request = tonic::Request::new(message);
        let bearer = format!("Bearer {}", target.token)
            .parse()
            .map_err(|_| ControlError::Failed("the job token is not a valid header".into()))?;
        request.metadata_mut().insert("authorization", bearer);
        request.set_timeout(timeout);
        Ok(request)
    }
}

/// An error with its sources (tonic's transport errors hide the cause one level down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn call_error(address: String, status: tonic::Status) -> ControlError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ControlError::Unreachable {
            address,
            cause: status.message().to_string(),
        },
        code => ControlError::Failed(format!("{code:?}: {}", status.message())),
    }
}

impl JobControl for GrpcJobControl {
    fn trigger_savepoint<'a>(
        &'a self,
        target: &'a Target,
        stop: bool,
    ) -> BoxFuture<'a, Result<Snapshot, ControlError>> {
        Box::pin(async move {
            let mut client = self.client(target).await?;
            let request = self.request(
                target,
                proto::SavepointRequest {
                    stop,
                    directory: String::new(),
                },
                self.savepoint_timeout,
            )?;
            let reply =
                tokio::time::timeout(self.savepoint_timeout, client.trigger_savepoint(request))
                    .await
                    .map_err(|_| {
                        ControlError::Failed(format!(
                            "the savepoint did not complete within {} s",
                            self.savepoint_timeout.as_secs()
                        ))
                    })?
                    .map_err(|s| call_error(self.address_of(target), s))?;
            snapshot(reply.into_inner().savepoint)
                .ok_or_else(|| ControlError::Failed("the job answered without a savepoint".into()))
        })
    }

    fn rates<'a>(
        &'a self,
        target: &'a Target,
        workers: u32,
    ) -> BoxFuture<'a, Option<crate::metrics::JobRates>> {
        // Through a port-forward (`address` set) the workers' metrics ports are not reachable.
        match self.address {
            Some(_) => Box::pin(async { None }),
            None => Box::pin(crate::metrics::JobRates::fetch(target, workers)),
        }
    }

    fn status<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<JobReport, ControlError>> {
        Box::pin(async move {
            let mut client = self.client(target).await?;
            let request = self.request(target, proto::StatusRequest {}, self.status_timeout)?;
            let r = tokio::time::timeout(self.status_timeout, client.get_status(request))
                .await
                .map_err(|_| ControlError::Unreachable {
                    address: self.address_of(target),
                    cause: "GetStatus timed out".into(),
                })?
                .map_err(|s| call_error(self.address_of(target), s))?
                .into_inner();
            let state = match r.state.as_str() {
                "running" => RunState::Running,
                "finished" => RunState::Finished,
                "failed" => RunState::Failed,
                "restarting" => RunState::Restarting,
                other => RunState::Other(other.to_string()),
            };
            Ok(JobReport {
                state,
                last_checkpoint: snapshot(r.last_checkpoint),
                last_savepoint: snapshot(r.last_savepoint),
                restored_from: non_empty(r.restored_from),
                failure: non_empty(r.failure),
                restarts: r.restarts,
                metrics: None,
            })
        })
    }
}
