//! Turns a plan into running subtasks: creates the channels of every chain edge, assembles
//! each subtask's chain from its tail (routers) to its head (source or input gate), and runs
//! each on its own thread. The first failing task cancels the others.
//!
//! In a distributed run each worker builds only the subtasks of its slots; channels with one
//! end on another worker get a network half (`net::exchange`) instead of the other end.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamjob_crds::plan::PhysicalPlan;
use streamjob_crds::{KeyGroupRange, Partitioning};
use tracing::{Instrument as _, info, info_span};

use crate::api::environment::JobExecutionResult;
use crate::api::graph::{AnyBox, GraphBuilder, NodeRuntime};
use crate::error::{JobError, TaskError, panic_message};
use crate::net::cluster::ClusterConfig;
use crate::net::coordination::{FollowerLink, JoinError, LeaderService};
use crate::net::exchange::{
    self, ChannelId, ExchangeService, Failures, Handshake, InboundSlot, OutboundChannel,
};
use crate::runtime::checkpoint::Coordinator;
use crate::runtime::context::{CancelFlag, SubtaskContext};
use crate::runtime::task::Task;

pub(crate) fn run_local(
    graph: &GraphBuilder,
    job_name: &str,
) -> Result<JobExecutionResult, JobError> {
    let plan = graph.logical(job_name).plan()?;
    let started = Instant::now();
    let cancel = CancelFlag::default();
    let coordinator = match &graph.checkpointing {
        Some(config) => {
            let shape = crate::runtime::checkpoint::JobShape::of(&plan);
            Some(Arc::new(Coordinator::for_job(config, &shape).map_err(
                |e| JobError::Setup {
                    operator: "checkpoints".into(),
                    message: format!("cannot restore or checkpoint: {e}"),
                },
            )?))
        }
        None => None,
    };
    let built = build_tasks(graph, &plan, &cancel, None, coordinator.clone())?;
    info!(
        job = job_name,
        chains = plan.chains.len(),
        subtasks = built.tasks.len(),
        restored = ?coordinator.as_ref().and_then(|c| c.restored()),
        "job started"
    );
    let errors = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trigger = coordinator
        .clone()
        .zip(graph.checkpointing.as_ref())
        .map(|(c, config)| spawn_trigger(c, config.interval, stop.clone(), cancel.clone()));
    let stats = run_tasks(built.tasks, &cancel, &errors);
    stop.store(true, Ordering::Release);
    if let Some(t) = trigger {
        let _ = t.join();
    }
    // The final checkpoint is written when the last task reports finished (the tasks wait
    // for it); a failure to write it fails that task.
    finish(job_name, started, &errors, stats, 0)
}

/// Runs this worker's share of the job and exchanges records with the other workers.
pub(crate) fn run_distributed(
    graph: &GraphBuilder,
    job_name: &str,
    cluster: &ClusterConfig,
) -> Result<JobExecutionResult, JobError> {
    let plan = graph.logical(job_name).plan()?;
    let setup = |message: String| JobError::Setup {
        operator: "worker".into(),
        message,
    };
    plan.assignment(cluster.workers, cluster.slots)?;
    if cluster.index >= cluster.workers {
        return Err(setup(format!(
            "worker index {} is out of range for {} workers",
            cluster.index, cluster.workers
        )));
    }
    if cluster.peers.len() != cluster.workers as usize {
        return Err(setup(format!(
            "{} peer addresses given for {} workers",
            cluster.peers.len(),
            cluster.workers
        )));
    }
    let started = Instant::now();
    let cancel = CancelFlag::default();
    let placement = Placement {
        worker: cluster.index,
        slots: cluster.slots,
    };
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("exchange")
        .enable_all()
        .build()
        .map_err(|e| setup(format!("cannot start the network runtime: {e}")))?;
    // Checkpoints: worker 0 leads; the others join it before building their tasks, so
    // every worker restores the snapshot the leader chose.
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut leader = None;
    let mut follower = None;
    let coordinator = match &graph.checkpointing {
        None => None,
        Some(config) => {
            let tasks = plan.chains.iter().map(|c| c.parallelism as usize).sum();
            let chk_error = |e: String| JobError::Setup {
                operator: "checkpoints".into(),
                message: e,
            };
            if cluster.index == 0 {
                let shape = crate::runtime::checkpoint::JobShape::of(&plan);
                let c = Arc::new(
                    Coordinator::for_job(config, &shape)
                        .map_err(|e| chk_error(format!("cannot restore or checkpoint: {e}")))?,
                );
                let epoch = crate::runtime::checkpoint::now_ms();
                c.mark_leader(epoch)
                    .map_err(|e| chk_error(format!("cannot write to checkpoint storage: {e}")))?;
                leader = Some(LeaderService {
                    coordinator: c.clone(),
                    token: handshake.token.clone(),
                    plan_hash: handshake.plan_hash.clone(),
                    epoch,
                    failures: failures.clone(),
                    finished: finished.clone(),
                    restarts: cluster.restarts,
                    joined: Default::default(),
                });
                // Workers of different incarnations of the job (one restarted, one not yet)
                // must refuse each other's channels.
                handshake.plan_hash = format!("{}-e{epoch}", handshake.plan_hash);
                Some(c)
            } else {
                let (link, restored) = runtime
                    .block_on(async {
                        let ch = exchange::connect(
                            0,
                            &cluster.peers[0],
                            cluster.connect_timeout,
                            &cancel,
                            cluster.tls.as_ref(),
                        )
                        .await?;
                        // A leader still running the job this worker left refuses the join
                        // until it has restarted itself: wait for that.
                        let started = Instant::now();
                        loop {
                            match FollowerLink::join(
                                ch.clone(),
                                handshake.token.clone(),
                                cluster.index,
                                &handshake.plan_hash,
                            )
                            .await
                            {
                                Err(JoinError::LeaderBusy(e))
                                    if started.elapsed() < cluster.connect_timeout
                                        && !cancel.is_set() =>
                                {
                                    tracing::debug!(reason = %e, "coordinator busy; joining again");
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                other => break other.map_err(|e| e.to_string()),
                            }
                        }
                    })
                    .map_err(JobError::Coordination)?;
                handshake.plan_hash = format!("{}-e{}", handshake.plan_hash, link.epoch);
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let c = Arc::new(
                    Coordinator::follower(config, tasks, restored, tx)
                        .map_err(|e| chk_error(format!("cannot use checkpoint storage: {e}")))?,
                );
                let shared = c
                    .sees_leader(link.epoch)
                    .map_err(|e| chk_error(format!("cannot use checkpoint storage: {e}")))?;
                if !shared {
                    return Err(chk_error(format!(
                        "worker {} cannot see the checkpoint storage of worker 0 at {}: every \
                         worker must share it (s3://, or a volume all pods mount); a plain \
                         path on each pod's own disk is not shared",
                        cluster.index,
                        c.storage_url()
                    )));
                }
                follower = Some((link, rx));
                Some(c)
            }
        }
    };
    let built = build_tasks(graph, &plan, &cancel, Some(placement), coordinator.clone())?;
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
    let listener = std::net::TcpListener::bind(cluster.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| setup(format!("cannot listen on {}: {e}", cluster.listen)))?;
    let waiting: Arc<Mutex<HashMap<ChannelId, InboundSlot>>> =
        Arc::new(Mutex::new(built.inbound.into_iter().collect()));
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let service = ExchangeService {
        handshake: handshake.clone(),
        credit: cluster.credit.max(1),
        slots: waiting.clone(),
        failures: failures.clone(),
    };
    let health = cluster.health.clone();
    let leader_services = leader.map(|l| {
        (
            crate::net::coordination::coordination_server(l.clone()),
            crate::net::coordination::control_server(l),
        )
    });
    let server = {
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| setup(format!("cannot listen on {}: {e}", cluster.listen)))?;
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
                .map_err(|e| setup(format!("TLS setup: {e}")))?;
        }
        runtime.spawn(async move {
            let (coordination, control) = leader_services.unzip();
            let served = builder
                .tcp_nodelay(true)
                .http2_keepalive_interval(Some(Duration::from_secs(5)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .initial_stream_window_size(Some(1 << 20))
                .initial_connection_window_size(Some(8 << 20))
                .add_service(exchange::server(service))
                .add_service(crate::net::health::server(health))
                .add_optional_service(coordination)
                .add_optional_service(control)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = server_stopped.await;
                })
                .await;
            if let Err(e) = served {
                failures.fail(format!("exchange server failed: {e}"));
            }
        })
    };
    // Peers that never open their channels would leave this worker waiting forever. Give
    // them longer than the connect timeout, so an unreachable peer is reported as such.
    let watchdog = {
        let (waiting, failures) = (waiting.clone(), failures.clone());
        let timeout = cluster.connect_timeout * 2 + Duration::from_secs(2);
        runtime.spawn(async move {
            tokio::time::sleep(timeout).await;
            let missing: Vec<String> = waiting
                .lock()
                .unwrap()
                .values()
                .map(|s| format!("worker {} never opened channel {}", s.peer, s.label))
                .collect();
            if let Some(first) = missing.first() {
                failures.fail(format!(
                    "{first} within {timeout:?} ({} channel(s) missing)",
                    missing.len()
                ));
            }
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let mut by_peer: HashMap<u32, Vec<OutboundChannel>> = HashMap::new();
    for ch in built.outbound {
        by_peer.entry(ch.peer).or_default().push(ch);
    }
    let senders: Vec<_> = by_peer
        .into_iter()
        .map(|(peer, channels)| {
            let addr = cluster.peers[peer as usize].clone();
            let (failures, handshake, sent) = (failures.clone(), handshake.clone(), sent.clone());
            let (timeout, worker) = (cluster.connect_timeout, cluster.index);
            let tls = cluster.tls.clone();
            let span = info_span!("exchange-out", peer, %addr);
            runtime.spawn(
                async move {
                    let conn = match exchange::connect(
                        peer,
                        &addr,
                        timeout,
                        &failures.cancel,
                        tls.as_ref(),
                    )
                    .await
                    {
                        Ok(c) => c,
                        // Once cancelled, the reason is already reported.
                        Err(_) if failures.cancel.is_set() => return,
                        Err(e) => return failures.fail(e),
                    };
                    let streams: Vec<_> = channels
                        .into_iter()
                        .map(|ch| {
                            let (conn, handshake) = (conn.clone(), handshake.clone());
                            tokio::spawn(exchange::send(conn, ch, handshake, worker))
                        })
                        .collect();
                    for s in streams {
                        match s.await {
                            Ok(Ok(bytes)) => {
                                sent.fetch_add(bytes, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => failures.fail(e),
                            Err(e) => failures.fail(format!("exchange sender panicked: {e}")),
                        }
                    }
                }
                .instrument(span),
            )
        })
        .collect();

    let link = follower.map(|(link, reports)| {
        let weak = Arc::downgrade(coordinator.as_ref().expect("a follower has a coordinator"));
        runtime.spawn(link.run(weak, reports, failures.clone(), finished.clone()))
    });
    let stop_trigger = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trigger = coordinator
        .clone()
        .filter(|c| c.is_leader())
        .zip(graph.checkpointing.as_ref())
        .map(|(c, config)| spawn_trigger(c, config.interval, stop_trigger.clone(), cancel.clone()));

    cluster.health.ready.store(true, Ordering::Release);
    // Tasks end only once the job's final checkpoint is complete, which needs every
    // worker's tasks to have finished: when they return here, the whole job is done.
    let stats = run_tasks(built.tasks, &cancel, &errors);
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
    // Local tasks are done; wait for the senders to deliver what they still hold, unless the
    // job is failing (then give them a moment to report why, no more).
    let mut failing_since: Option<Instant> = None;
    while senders.iter().any(|h| !h.is_finished()) {
        if cancel.is_set() {
            let since = *failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    watchdog.abort();
    let result = finish(
        job_name,
        started,
        &errors,
        stats,
        sent.load(Ordering::Relaxed),
    );
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
    let _ = stop_server.send(());
    let _ = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(2), server).await });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

type Stats = Vec<(String, u32, crate::runtime::task::TaskStats)>;

fn run_tasks(tasks: Vec<Built>, cancel: &CancelFlag, errors: &Mutex<Vec<TaskError>>) -> Stats {
    let stats = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (chain_name, subtask, task) in tasks {
            let (cancel, errors, stats) = (cancel, errors, &stats);
            let thread_name = format!("{}#{}", truncate(&chain_name, 10), subtask);
            std::thread::Builder::new()
                .name(thread_name)
                .spawn_scoped(scope, move || {
                    let _span = info_span!("task", chain = %chain_name, subtask).entered();
                    let result =
                        catch_unwind(AssertUnwindSafe(|| task.run())).unwrap_or_else(|p| {
                            Err(TaskError::user(&chain_name, subtask, panic_message(&*p)))
                        });
                    match result {
                        Ok(s) => stats.lock().unwrap().push((chain_name, subtask, s)),
                        Err(e) => {
                            cancel.set();
                            errors.lock().unwrap().push(e);
                        }
                    }
                })
                .expect("spawn task thread");
        }
    });
    stats.into_inner().unwrap()
}

/// Triggers checkpoints at the configured interval while the job runs.
fn spawn_trigger(
    c: Arc<Coordinator>,
    interval: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
    cancel: CancelFlag,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("checkpoints".into())
        .spawn(move || {
            // The coordinator decides when (interval, minimum pause, timeout).
            while !stop.load(Ordering::Acquire) && !cancel.is_set() {
                std::thread::sleep(Duration::from_millis(5).min(interval));
                c.tick();
            }
        })
        .expect("spawn checkpoint thread")
}

fn finish(
    job_name: &str,
    started: Instant,
    errors: &Mutex<Vec<TaskError>>,
    stats: Stats,
    bytes_sent: u64,
) -> Result<JobExecutionResult, JobError> {
    let errors = errors.lock().unwrap();
    // Report the root cause, not the tasks that stopped because of it.
    if let Some(e) = errors.iter().find(|e| e.is_root_cause()).or(errors.first()) {
        return Err(JobError::Task(e.clone()));
    }
    let duration = started.elapsed();
    info!(job = job_name, ?duration, bytes_sent, "job finished");
    Ok(JobExecutionResult {
        job_name: job_name.to_string(),
        duration,
        tasks: stats,
        bytes_sent,
    })
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

type Built = (String, u32, Box<dyn Task>);

/// Which subtasks run in this process: all of them, or one worker's slots.
#[derive(Clone, Copy)]
pub(crate) struct Placement {
    pub worker: u32,
    pub slots: u32,
}

fn is_local(placement: Option<Placement>, index: u32) -> bool {
    placement.is_none_or(|p| PhysicalPlan::worker_of(index, p.slots) == p.worker)
}

/// The local tasks, and the channels that cross to other workers.
pub(crate) struct BuiltJob {
    pub tasks: Vec<Built>,
    pub outbound: Vec<OutboundChannel>,
    pub inbound: Vec<(ChannelId, InboundSlot)>,
}

fn build_tasks(
    graph: &GraphBuilder,
    plan: &PhysicalPlan,
    cancel: &CancelFlag,
    placement: Option<Placement>,
    checkpoints: Option<Arc<Coordinator>>,
) -> Result<BuiltJob, JobError> {
    let kind_of = |from: usize, to: usize| {
        graph
            .edges
            .iter()
            .find(|e| e.logical.from == from && e.logical.to == to)
            .map(|e| e.kind.clone())
            .expect("every plan edge comes from a graph edge")
    };
    let worker_of = |index: u32| placement.map_or(0, |p| PhysicalPlan::worker_of(index, p.slots));
    // (plan edge index, subtask) -> its routers' senders / its input gate's receivers
    let mut senders: HashMap<(usize, u32), AnyBox> = HashMap::new();
    let mut receivers: HashMap<(usize, u32), AnyBox> = HashMap::new();
    let mut outbound = Vec::new();
    let mut inbound = Vec::new();
    for (ei, e) in plan.edges.iter().enumerate() {
        let up = plan.chains[e.from_chain].parallelism;
        let down = plan.chains[e.to_chain].parallelism;
        let kind = kind_of(e.from_node, e.to_node);
        let forward = e.partitioning == Partitioning::Forward;
        assert!(
            !forward || up == down,
            "forward edges join equal parallelism (planner invariant)"
        );
        let label = |u: u32, d: u32| {
            format!(
                "'{}' -> '{}' (subtask {u} -> {d})",
                plan.nodes[e.from_node].name, plan.nodes[e.to_node].name
            )
        };
        let mut tx_of: Vec<Vec<AnyBox>> = (0..up).map(|_| Vec::new()).collect();
        let mut rx_of: Vec<Vec<AnyBox>> = (0..down).map(|_| Vec::new()).collect();
        for u in 0..up {
            for d in 0..down {
                if forward && u != d {
                    continue;
                }
                let (up_local, down_local) = (is_local(placement, u), is_local(placement, d));
                if !up_local && !down_local {
                    continue;
                }
                let id = ChannelId {
                    edge: ei as u32,
                    from: u,
                    to: d,
                };
                let (tx, rx) = kind.pair(graph.channel_capacity);
                let no_wire = || JobError::Setup {
                    operator: plan.nodes[e.from_node].name.clone(),
                    message: format!(
                        "records of type {} cannot cross the network (no wire format); \
                         run this job in one process",
                        kind.record_type()
                    ),
                };
                if up_local {
                    tx_of[u as usize].push(tx);
                } else {
                    let inbound_half = kind.inbound(tx).ok_or_else(no_wire)?;
                    inbound.push((
                        id,
                        InboundSlot {
                            inbound: inbound_half,
                            label: label(u, d),
                            peer: worker_of(u),
                        },
                    ));
                }
                if down_local {
                    rx_of[d as usize].push(rx);
                } else {
                    outbound.push(OutboundChannel {
                        id,
                        outbound: kind.outbound(rx).ok_or_else(no_wire)?,
                        label: label(u, d),
                        peer: worker_of(d),
                    });
                }
            }
        }
        for (u, txs) in tx_of.into_iter().enumerate() {
            if !txs.is_empty() {
                senders.insert((ei, u as u32), kind.senders(txs));
            }
        }
        for (d, rxs) in rx_of.into_iter().enumerate() {
            if !rxs.is_empty() {
                receivers.insert((ei, d as u32), kind.receivers(rxs));
            }
        }
    }

    let job_name: Arc<str> = Arc::from(plan.job_name.as_str());
    let mut tasks = Vec::new();
    for chain in &plan.chains {
        for index in (0..chain.parallelism).filter(|&i| is_local(placement, i)) {
            let ctx_for = |node: usize| {
                let n = &plan.nodes[node];
                SubtaskContext {
                    job_name: job_name.clone(),
                    operator: Arc::from(n.name.as_str()),
                    uid: Arc::from(n.uid.as_str()),
                    subtask: index,
                    parallelism: chain.parallelism,
                    max_parallelism: plan.max_parallelism,
                    key_groups: KeyGroupRange::for_subtask(
                        index,
                        chain.parallelism,
                        plan.max_parallelism,
                    ),
                    batch_size: graph.batch_size,
                    buffer_timeout: graph.buffer_timeout,
                    cancel: cancel.clone(),
                    checkpoints: checkpoints.clone(),
                }
            };
            let tail = *chain.nodes.last().expect("chains are never empty");
            let tail_ctx = ctx_for(tail);
            let mut outs: Vec<AnyBox> = plan
                .edges
                .iter()
                .enumerate()
                .filter(|(_, e)| e.from_node == tail)
                .map(|(ei, e)| {
                    let tx = senders
                        .remove(&(ei, index))
                        .expect("senders exist per subtask");
                    kind_of(e.from_node, e.to_node).router(tx, e.partitioning, &tail_ctx)
                })
                .collect();
            let node_out = &graph.nodes[tail].output;
            let out = match outs.len() {
                0 => node_out.discard(),
                1 => outs.pop().expect("one output"),
                _ => node_out.fan_out(outs),
            };
            let mut out = Some(out);
            let mut source_task: Option<Box<dyn Task>> = None;
            for &n in chain.nodes.iter().rev() {
                let ctx = ctx_for(n);
                match &graph.nodes[n].runtime {
                    NodeRuntime::Transform(build) => {
                        out = Some(build(out.take().expect("output"), &ctx)?)
                    }
                    NodeRuntime::Sink(build) => out = Some(build(&ctx)?),
                    NodeRuntime::Source(build) => {
                        // Sources are always chain heads (they have no input).
                        source_task = Some(build(out.take().expect("output"), ctx)?);
                        break;
                    }
                }
            }
            let task = match source_task {
                Some(t) => t,
                None => {
                    let head = chain.nodes[0];
                    let inputs: Vec<(usize, AnyBox)> = plan
                        .edges
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.to_node == head)
                        .map(|(ei, e)| {
                            (
                                e.from_node,
                                receivers
                                    .remove(&(ei, index))
                                    .expect("receivers exist per subtask"),
                            )
                        })
                        .collect();
                    let kind = kind_of(inputs[0].0, head);
                    kind.input_task(
                        inputs.into_iter().map(|(_, r)| r).collect(),
                        out.take().expect("chain head"),
                        ctx_for(head),
                    )
                }
            };
            tasks.push((chain.name.clone(), index, task));
        }
    }
    Ok(BuiltJob {
        tasks,
        outbound,
        inbound,
    })
}
