//! Turns a plan into running subtasks: creates the channels of every chain edge, assembles
//! each subtask's chain from its tail (routers) to its head (source or input gate), and runs
//! each on its own thread. The first failing task cancels the others.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use streamjob_crds::KeyGroupRange;
use streamjob_crds::plan::PhysicalPlan;
use tracing::{info, info_span};

use crate::api::environment::JobExecutionResult;
use crate::api::graph::{AnyBox, GraphBuilder, NodeRuntime};
use crate::error::{JobError, TaskError, panic_message};
use crate::runtime::context::{CancelFlag, SubtaskContext};
use crate::runtime::task::Task;

pub(crate) fn run_local(
    graph: &GraphBuilder,
    job_name: &str,
) -> Result<JobExecutionResult, JobError> {
    let plan = graph.logical(job_name).plan()?;
    let started = Instant::now();
    let cancel = CancelFlag::default();
    let tasks = build_tasks(graph, &plan, &cancel)?;
    info!(
        job = job_name,
        chains = plan.chains.len(),
        subtasks = tasks.len(),
        "job started"
    );

    let errors: Mutex<Vec<TaskError>> = Mutex::new(Vec::new());
    let stats = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (chain_name, subtask, task) in tasks {
            let (cancel, errors, stats) = (&cancel, &errors, &stats);
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
    let errors = errors.into_inner().unwrap();
    // Report the root cause, not the tasks that stopped because of it.
    if let Some(e) = errors.iter().find(|e| e.is_root_cause()).or(errors.first()) {
        return Err(JobError::Task(e.clone()));
    }
    let duration = started.elapsed();
    info!(job = job_name, ?duration, "job finished");
    Ok(JobExecutionResult {
        job_name: job_name.to_string(),
        duration,
        tasks: stats.into_inner().unwrap(),
    })
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

type Built = (String, u32, Box<dyn Task>);

fn build_tasks(
    graph: &GraphBuilder,
    plan: &PhysicalPlan,
    cancel: &CancelFlag,
) -> Result<Vec<Built>, JobError> {
    let kind_of = |from: usize, to: usize| {
        graph
            .edges
            .iter()
            .find(|e| e.logical.from == from && e.logical.to == to)
            .map(|e| e.kind.clone())
            .expect("every plan edge comes from a graph edge")
    };
    // (plan edge index, subtask) -> senders / receivers
    let mut senders: HashMap<(usize, u32), AnyBox> = HashMap::new();
    let mut receivers: HashMap<(usize, u32), AnyBox> = HashMap::new();
    for (ei, e) in plan.edges.iter().enumerate() {
        let up = plan.chains[e.from_chain].parallelism;
        let down = plan.chains[e.to_chain].parallelism;
        let (ups, downs) = kind_of(e.from_node, e.to_node).channels(
            e.partitioning,
            up,
            down,
            graph.channel_capacity,
        );
        for (i, s) in ups.into_iter().enumerate() {
            senders.insert((ei, i as u32), s);
        }
        for (i, r) in downs.into_iter().enumerate() {
            receivers.insert((ei, i as u32), r);
        }
    }

    let job_name: Arc<str> = Arc::from(plan.job_name.as_str());
    let mut tasks = Vec::new();
    for chain in &plan.chains {
        for index in 0..chain.parallelism {
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
    Ok(tasks)
}
