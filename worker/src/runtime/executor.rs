//! Turns a plan into running subtasks: creates the channels of every chain edge, assembles
//! each subtask's chain from its tail (routers) to its head (source or input gate), and runs
//! each on its own thread. The first failing task cancels the others.
//!
//! In a distributed run (`crate::cluster`) each worker builds only the subtasks of its
//! slots; channels with one end on another worker get a network half
//! (`runtime::transport`) instead of the other end, which a [`Transport`] carries.
//!
//! [`Transport`]: crate::runtime::transport::Transport

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamjob_crds::plan::PhysicalPlan;
use streamjob_crds::{KeyGroupRange, Partitioning};
use tracing::{info, info_span};

use crate::error::{JobError, TaskError, panic_message};
use crate::runtime::checkpoint::Coordinator;
use crate::runtime::context::{CancelFlag, SubtaskContext};
use crate::runtime::graph::{AnyBox, GraphBuilder, NodeRuntime};
use crate::runtime::task::{Task, TaskStats};
use crate::runtime::transport::{ChannelId, InboundSlot, OutboundChannel};

/// What `execute` reports for a job that finished.
#[derive(Debug, Clone)]
pub struct JobExecutionResult {
    pub job_name: String,
    pub duration: Duration,
    /// Per subtask: chain name, subtask index, stats.
    pub tasks: Vec<(String, u32, TaskStats)>,
    /// Record bytes this process sent to other workers (distributed runs).
    pub bytes_sent: u64,
}

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

pub(crate) type Stats = Vec<(String, u32, TaskStats)>;

pub(crate) fn run_tasks(
    tasks: Vec<Built>,
    cancel: &CancelFlag,
    errors: &Mutex<Vec<TaskError>>,
) -> Stats {
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
pub(crate) fn spawn_trigger(
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

pub(crate) fn finish(
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

pub(crate) type Built = (String, u32, Box<dyn Task>);

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

pub(crate) fn build_tasks(
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
                if up_local {
                    tx_of[u as usize].push(tx);
                } else {
                    let inbound_half = kind.inbound(tx);
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
                        outbound: kind.outbound(rx),
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
