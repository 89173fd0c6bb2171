//! Distributed execution: one worker's share of a job, wired to the other workers. This
//! sits above the API (it runs the graph a `StreamExecutionEnvironment` recorded) and above
//! `net` (the gRPC transport, checkpoint coordination and health it starts), so neither the
//! runtime nor the API depends on the network.
//!
//! A run goes through named steps: check the placement, start the network runtime, join the
//! checkpoint coordination (worker 0 leads), build this worker's subtasks, open the
//! transport, serve the gRPC services, run the tasks, then wind down (final reports, drain
//! the senders, stop or idle).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamjob_crds::plan::PhysicalPlan;
use tokio::runtime::Runtime;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::info;

use crate::api::environment::{JobExecutionResult, StreamExecutionEnvironment};
use crate::error::JobError;
use crate::net::cluster::ClusterConfig;
use crate::net::coordination::{FollowerLink, JoinError, LOG_WAIT_EVERY, LeaderService, Members};
use crate::net::exchange::{self, ExchangeService, Failures, Handshake};
use crate::net::transport::GrpcTransport;
use crate::runtime::checkpoint::{CheckpointConfig, Coordinator, JobShape, Report, now_ms};
use crate::runtime::context::CancelFlag;
use crate::runtime::executor::{self, Placement};
use crate::runtime::graph::GraphBuilder;
use crate::runtime::transport::Transport;

impl StreamExecutionEnvironment {
    /// Runs this process's share of the job as one worker of `cluster`: the subtasks in its
    /// slots, exchanging records with the other workers over gRPC. Every worker must build
    /// the same job (their plans are compared when they connect).
    pub fn execute_as_worker(
        &self,
        job_name: &str,
        cluster: &ClusterConfig,
    ) -> Result<JobExecutionResult, JobError> {
        let graph = self.graph_builder().borrow();
        run_distributed(&graph, job_name, cluster)
    }
}

fn setup_error(message: String) -> JobError {
    JobError::Setup {
        operator: "worker".into(),
        message,
    }
}

fn checkpoint_error(message: String) -> JobError {
    JobError::Setup {
        operator: "checkpoints".into(),
        message,
    }
}

/// The run failed before its tasks started: the first failure reported (e.g. a worker
/// that rejoined), else `why`.
fn run_failed(failures: &Failures, why: String) -> JobError {
    let errors = failures.errors.lock().unwrap();
    match errors.iter().find(|e| e.is_root_cause()).or(errors.first()) {
        Some(e) => JobError::Task(e.clone()),
        None => JobError::Coordination(why),
    }
}

/// Runs this worker's share of the job and exchanges records with the other workers.
pub(crate) fn run_distributed(
    graph: &GraphBuilder,
    job_name: &str,
    cluster: &ClusterConfig,
) -> Result<JobExecutionResult, JobError> {
    let plan = graph.logical(job_name).plan()?;
    check_placement(&plan, cluster)?;
    let started = Instant::now();
    let cancel = CancelFlag::default();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let failures = Failures {
        cancel: cancel.clone(),
        errors: errors.clone(),
        worker: cluster.index,
    };
    let mut handshake = Handshake {
        job: job_name.to_string(),
        plan_hash: format!("{:016x}-{:016x}", plan.fingerprint(), cluster.job_hash),
        token: Arc::from(cluster.token.as_str()),
    };
    let runtime = network_runtime()?;
    let finished = Arc::new(AtomicBool::new(false));
    let mut checkpoints = match &graph.checkpointing {
        None => Checkpoints::default(),
        Some(config) => {
            let setup = CheckpointSetup {
                config,
                plan: &plan,
                cluster,
                cancel: &cancel,
                failures: &failures,
                finished: &finished,
            };
            if cluster.index == 0 {
                lead_checkpoints(setup, &mut handshake)?
            } else {
                follow_leader(setup, &runtime, &mut handshake)?
            }
        }
    };
    let placement = Placement {
        worker: cluster.index,
        slots: cluster.slots,
    };
    let mut transport = GrpcTransport::new(
        runtime.handle().clone(),
        handshake.clone(),
        failures.clone(),
        cluster.peers.clone(),
        cluster.connect_timeout,
        cluster.tls.clone(),
        cluster.credit,
    );
    // The leader serves first (the followers join it), then waits for all of them before
    // it builds its tasks and opens its channels. A follower is served once its inbound
    // halves are registered, so a peer's stream never finds its channel missing.
    let members = checkpoints
        .leader
        .as_ref()
        .map(|l| (l.members.clone(), l.epoch));
    let mut server = match checkpoints.leader.take() {
        Some(leader) => Some(serve(
            &runtime,
            cluster,
            transport.service(),
            Some(leader),
            &failures,
        )?),
        None => None,
    };
    let opened = (|| {
        if let Some((members, epoch)) = &members {
            runtime
                .block_on(members.all_joined(*epoch, cluster.connect_timeout, &cancel))
                .map_err(|e| {
                    if !cancel.is_set() {
                        failures.fail(e.clone());
                    }
                    // Followers waiting in their join hear that this run will not start.
                    members.wake();
                    run_failed(&failures, e)
                })?;
        }
        let built = executor::build_tasks(
            graph,
            &plan,
            &cancel,
            Some(placement),
            checkpoints.coordinator.clone(),
        )?;
        info!(
            job = job_name,
            worker = cluster.index,
            workers = cluster.workers,
            plan = %handshake.plan_hash,
            subtasks = built.tasks.len(),
            outbound = built.outbound.len(),
            inbound = built.inbound.len(),
            "worker started"
        );
        transport
            .open(built.outbound, built.inbound)
            .map_err(setup_error)?;
        Ok(built.tasks)
    })();
    let tasks = match opened {
        Ok(tasks) => tasks,
        Err(e) => {
            // Followers waiting in their join hear at once that this run will not start.
            cancel.set();
            if let Some((members, _)) = &members {
                members.wake();
            }
            // The next attempt listens on the same port.
            if let Some(s) = server {
                s.stop(runtime);
            }
            return Err(e);
        }
    };
    if server.is_none() {
        server = Some(serve(
            &runtime,
            cluster,
            transport.service(),
            None,
            &failures,
        )?);
    }
    let server = server.expect("served above");
    if let Some((members, _)) = &members {
        members.release();
    }
    let Checkpoints {
        coordinator,
        follower,
        ..
    } = checkpoints;
    let link = follower.map(|(link, reports)| {
        let weak = Arc::downgrade(coordinator.as_ref().expect("a follower has a coordinator"));
        runtime.spawn(link.run(weak, reports, failures.clone(), finished.clone()))
    });
    let stop_trigger = Arc::new(AtomicBool::new(false));
    let trigger = coordinator
        .clone()
        .filter(|c| c.is_leader())
        .zip(graph.checkpointing.as_ref())
        .map(|(c, config)| {
            executor::spawn_trigger(c, config.interval, stop_trigger.clone(), cancel.clone())
        });

    cluster.health.set_ready();
    // Tasks end only once the job's final checkpoint is complete, which needs every
    // worker's tasks to have finished: when they return here, the whole job is done.
    let stats = executor::run_tasks(tasks, &cancel, &errors);
    stop_trigger.store(true, Ordering::Release);
    if let Some(t) = trigger {
        let _ = t.join();
    }
    finished.store(!cancel.is_set(), Ordering::Release);
    // A follower's last reports (its tasks finished) must reach the leader before it exits:
    // the link ends once its queue is drained and the coordinator is gone.
    drop(coordinator);
    if let Some(link) = link {
        let _ =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(30), link).await });
    }
    let bytes_sent = transport.drain(&cancel);
    let result = executor::finish(job_name, started, &errors, stats, bytes_sent);
    if result.is_ok() && cluster.idle_after_finish {
        // In a pod: exiting would make the StatefulSet run the job again. Keep answering
        // the probes until the pod is deleted.
        info!(
            job = job_name,
            "job finished; idling until the pod is stopped"
        );
        loop {
            std::thread::park();
        }
    }
    server.stop(runtime);
    result
}

/// The job must fit the cluster, and this worker must be one of it.
fn check_placement(plan: &PhysicalPlan, cluster: &ClusterConfig) -> Result<(), JobError> {
    plan.assignment(cluster.workers, cluster.slots)?;
    if cluster.index >= cluster.workers {
        return Err(setup_error(format!(
            "worker index {} is out of range for {} workers",
            cluster.index, cluster.workers
        )));
    }
    if cluster.peers.len() != cluster.workers as usize {
        return Err(setup_error(format!(
            "{} peer addresses given for {} workers",
            cluster.peers.len(),
            cluster.workers
        )));
    }
    Ok(())
}

/// The async runtime of the exchange, coordination and health services (tasks run on
/// threads of their own).
fn network_runtime() -> Result<Runtime, JobError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("exchange")
        .enable_all()
        .build()
        .map_err(|e| setup_error(format!("cannot start the network runtime: {e}")))
}

/// This worker's part in checkpointing.
#[derive(Default)]
struct Checkpoints {
    coordinator: Option<Arc<Coordinator>>,
    /// Worker 0: the services the followers join and the operator controls.
    leader: Option<LeaderService>,
    /// Other workers: the link to the leader and the local reports it forwards.
    follower: Option<(FollowerLink, UnboundedReceiver<Report>)>,
}

struct CheckpointSetup<'a> {
    config: &'a CheckpointConfig,
    plan: &'a PhysicalPlan,
    cluster: &'a ClusterConfig,
    cancel: &'a CancelFlag,
    failures: &'a Failures,
    finished: &'a Arc<AtomicBool>,
}

/// Worker 0 chooses the snapshot to restore and leads the checkpoints of this incarnation.
fn lead_checkpoints(
    s: CheckpointSetup<'_>,
    handshake: &mut Handshake,
) -> Result<Checkpoints, JobError> {
    let shape = JobShape::of(s.plan);
    let c = Arc::new(
        Coordinator::for_job(s.config, &shape)
            .map_err(|e| checkpoint_error(format!("cannot restore or checkpoint: {e}")))?,
    );
    let epoch = now_ms();
    c.mark_leader(epoch)
        .map_err(|e| checkpoint_error(format!("cannot write to checkpoint storage: {e}")))?;
    let leader = LeaderService {
        coordinator: c.clone(),
        token: handshake.token.clone(),
        plan_hash: handshake.plan_hash.clone(),
        epoch,
        failures: s.failures.clone(),
        finished: s.finished.clone(),
        restarts: s.cluster.restarts,
        members: Arc::new(Members::new(s.cluster.workers)),
        join_timeout: s.cluster.connect_timeout,
    };
    // Workers of different incarnations of the job (one restarted, one not yet) must refuse
    // each other's channels.
    handshake.plan_hash = format!("{}-e{epoch}", handshake.plan_hash);
    Ok(Checkpoints {
        coordinator: Some(c),
        leader: Some(leader),
        follower: None,
    })
}

/// The other workers join the leader before building their tasks, so every worker
/// restores the snapshot the leader chose.
fn follow_leader(
    s: CheckpointSetup<'_>,
    runtime: &Runtime,
    handshake: &mut Handshake,
) -> Result<Checkpoints, JobError> {
    let cluster = s.cluster;
    let (link, restored) = runtime
        .block_on(async {
            let ch = exchange::connect(
                0,
                &cluster.peers[0],
                cluster.connect_timeout,
                s.cancel,
                cluster.tls.as_ref(),
            )
            .await?;
            // The leader answers once every worker has joined its run. A leader still in a
            // run that is failing (or that this worker left) refuses with "busy" until it
            // has restarted: join the new run then. The leader's restart takes its restart
            // delay, so wait longer than a connect.
            let started = tokio::time::Instant::now();
            let deadline = started + cluster.connect_timeout * 2;
            let mut next_log = started + LOG_WAIT_EVERY;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match FollowerLink::join(
                    ch.clone(),
                    handshake.token.clone(),
                    cluster.index,
                    &handshake.plan_hash,
                    left,
                )
                .await
                {
                    Err(JoinError::LeaderBusy(e))
                        if tokio::time::Instant::now() < deadline && !s.cancel.is_set() =>
                    {
                        if tokio::time::Instant::now() >= next_log {
                            info!(reason = %e, waited = ?started.elapsed(), "waiting to join a run of worker 0");
                            next_log += LOG_WAIT_EVERY;
                        } else {
                            tracing::debug!(reason = %e, "coordinator busy; joining again");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(JoinError::LeaderBusy(e)) => {
                        break Err(format!(
                            "{e} (still refused after {:?} of trying)",
                            started.elapsed()
                        ));
                    }
                    other => break other.map_err(|e| e.to_string()),
                }
            }
        })
        .map_err(JobError::Coordination)?;
    handshake.plan_hash = format!("{}-e{}", handshake.plan_hash, link.epoch);
    let tasks = s.plan.chains.iter().map(|c| c.parallelism as usize).sum();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let c = Arc::new(
        Coordinator::follower(s.config, tasks, restored, tx)
            .map_err(|e| checkpoint_error(format!("cannot use checkpoint storage: {e}")))?,
    );
    let shared = c
        .sees_leader(link.epoch)
        .map_err(|e| checkpoint_error(format!("cannot use checkpoint storage: {e}")))?;
    if !shared {
        return Err(checkpoint_error(format!(
            "worker {} cannot see the checkpoint storage of worker 0 at {}: every worker must \
             share it (s3://, or a volume all pods mount); a plain path on each pod's own disk \
             is not shared",
            cluster.index,
            c.storage_url()
        )));
    }
    Ok(Checkpoints {
        coordinator: Some(c),
        leader: None,
        follower: Some((link, rx)),
    })
}

/// The running gRPC server of this worker.
struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

impl Server {
    fn stop(self, runtime: Runtime) {
        let _ = self.stop.send(());
        let handle = self.handle;
        let _ =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(2), handle).await });
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Serves the exchange, the health service and, on the leader, checkpoint coordination and
/// job control, on the worker's one port.
fn serve(
    runtime: &Runtime,
    cluster: &ClusterConfig,
    exchange_service: ExchangeService,
    leader: Option<LeaderService>,
    failures: &Failures,
) -> Result<Server, JobError> {
    let listener = std::net::TcpListener::bind(cluster.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| setup_error(format!("cannot listen on {}: {e}", cluster.listen)))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let leader_services = leader.map(|l| {
        (
            crate::net::coordination::coordination_server(l.clone()),
            crate::net::coordination::control_server(l),
        )
    });
    let health = crate::net::health::server(&cluster.health);
    let _guard = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| setup_error(format!("cannot listen on {}: {e}", cluster.listen)))?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let failures = failures.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = &cluster.tls {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        builder = builder
            .tls_config(
                ServerTlsConfig::new()
                    .identity(Identity::from_pem(&t.cert, &t.key))
                    .client_ca_root(Certificate::from_pem(&t.ca)),
            )
            .map_err(|e| setup_error(format!("TLS setup: {e}")))?;
    }
    let handle = runtime.spawn(async move {
        let (coordination, control) = leader_services.unzip();
        let served = builder
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(8 << 20))
            .add_service(exchange::server(exchange_service))
            .add_service(health)
            .add_optional_service(coordination)
            .add_optional_service(control)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            failures.fail(format!("exchange server failed: {e}"));
        }
    });
    Ok(Server { stop, handle })
}
