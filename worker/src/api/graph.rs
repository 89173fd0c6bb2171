//! The graph a job builds before it runs: logical nodes and edges (plain data, planned by
//! `streamjob_crds::plan`) plus, per node and edge, typed factories behind `dyn Any` that the
//! executor uses to instantiate each subtask. Types are checked when the job is built, so
//! the downcasts in here cannot fail for graphs made through the public API.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use streamjob_crds::{LogicalEdge, LogicalGraph, LogicalNode, Partitioning};

use crate::error::JobError;
use crate::runtime::channel::{InputGate, Receiver, Sender, channel};
use crate::runtime::context::SubtaskContext;
use crate::runtime::output::{Discard, FanOut, Output};
use crate::runtime::router::{KeyHashFn, Route, Router};
use crate::runtime::task::{InputTask, Task, endpoint};

pub(crate) type AnyBox = Box<dyn Any + Send>;

pub(crate) type SourceBuild =
    Arc<dyn Fn(AnyBox, SubtaskContext) -> Result<Box<dyn Task>, JobError> + Send + Sync>;
pub(crate) type TransformBuild =
    Arc<dyn Fn(AnyBox, &SubtaskContext) -> Result<AnyBox, JobError> + Send + Sync>;
pub(crate) type SinkBuild = Arc<dyn Fn(&SubtaskContext) -> Result<AnyBox, JobError> + Send + Sync>;

/// How to instantiate a node for one subtask. `AnyBox`es hold `Box<dyn Output<X>>`.
#[derive(Clone)]
pub(crate) enum NodeRuntime {
    /// Given the chain below it, returns the subtask's task.
    Source(SourceBuild),
    /// Given its downstream output, returns its own input.
    Transform(TransformBuild),
    /// Returns its input.
    Sink(SinkBuild),
}

pub(crate) struct NodeDef {
    pub logical: LogicalNode,
    pub runtime: NodeRuntime,
    /// Typed helpers for the node's output type.
    pub output: Arc<dyn OutputKind>,
}

pub(crate) struct EdgeDef {
    pub logical: LogicalEdge,
    pub kind: Arc<dyn EdgeKind>,
}

pub(crate) trait OutputKind: Send + Sync {
    fn fan_out(&self, outputs: Vec<AnyBox>) -> AnyBox;
    fn discard(&self) -> AnyBox;
}

/// Channels, routers and input tasks for an edge carrying `T`.
pub(crate) trait EdgeKind: Send + Sync {
    /// Creates the channels of one edge: per upstream subtask its senders (one per
    /// downstream subtask it feeds), per downstream subtask its receivers.
    fn channels(
        &self,
        partitioning: Partitioning,
        upstream: u32,
        downstream: u32,
        capacity: usize,
    ) -> (Vec<AnyBox>, Vec<AnyBox>);
    fn router(&self, senders: AnyBox, partitioning: Partitioning, ctx: &SubtaskContext) -> AnyBox;
    /// Task that feeds `head` from the receivers of all its input edges (same record type).
    fn input_task(
        &self,
        receivers: Vec<AnyBox>,
        head: AnyBox,
        ctx: SubtaskContext,
    ) -> Box<dyn Task>;
}

pub(crate) struct Typed<T>(PhantomData<fn() -> T>);

impl<T> Typed<T> {
    pub fn new() -> Self {
        Typed(PhantomData)
    }
}

pub(crate) fn unbox<X: 'static>(b: AnyBox) -> X {
    *b.downcast::<X>().unwrap_or_else(|_| {
        panic!(
            "graph type mismatch: expected {}",
            std::any::type_name::<X>()
        )
    })
}

impl<T: crate::Data> OutputKind for Typed<T> {
    fn fan_out(&self, outputs: Vec<AnyBox>) -> AnyBox {
        let outputs: Vec<Box<dyn Output<T>>> = outputs.into_iter().map(unbox).collect();
        Box::new(Box::new(FanOut { outputs }) as Box<dyn Output<T>>)
    }
    fn discard(&self) -> AnyBox {
        Box::new(Box::new(Discard) as Box<dyn Output<T>>)
    }
}

pub(crate) struct TypedEdge<T> {
    pub key_hash: Option<KeyHashFn<T>>,
}

impl<T: crate::Data> EdgeKind for TypedEdge<T> {
    fn channels(
        &self,
        partitioning: Partitioning,
        upstream: u32,
        downstream: u32,
        capacity: usize,
    ) -> (Vec<AnyBox>, Vec<AnyBox>) {
        let (up, down) = (upstream as usize, downstream as usize);
        let mut senders: Vec<Vec<Sender<T>>> = (0..up).map(|_| Vec::new()).collect();
        let mut receivers: Vec<Vec<Receiver<T>>> = (0..down).map(|_| Vec::new()).collect();
        if partitioning == Partitioning::Forward {
            assert_eq!(
                up, down,
                "forward edges join equal parallelism (planner invariant)"
            );
            for i in 0..up {
                let (tx, rx) = channel(capacity);
                senders[i].push(tx);
                receivers[i].push(rx);
            }
        } else {
            for s in senders.iter_mut() {
                for r in receivers.iter_mut() {
                    let (tx, rx) = channel(capacity);
                    s.push(tx);
                    r.push(rx);
                }
            }
        }
        (
            senders.into_iter().map(|s| Box::new(s) as AnyBox).collect(),
            receivers
                .into_iter()
                .map(|r| Box::new(r) as AnyBox)
                .collect(),
        )
    }

    fn router(&self, senders: AnyBox, partitioning: Partitioning, ctx: &SubtaskContext) -> AnyBox {
        let senders: Vec<Sender<T>> = unbox(senders);
        let route = match partitioning {
            Partitioning::Forward => Route::Forward,
            Partitioning::Rebalance => Route::Rebalance,
            Partitioning::Broadcast => Route::Broadcast,
            Partitioning::Hash => Route::Hash(
                self.key_hash
                    .clone()
                    .expect("hash edges carry a key selector"),
            ),
        };
        let router = Router::new(
            senders,
            route,
            ctx.batch_size,
            ctx.max_parallelism,
            ctx.subtask as usize,
            endpoint(ctx),
        );
        Box::new(Box::new(router) as Box<dyn Output<T>>)
    }

    fn input_task(
        &self,
        receivers: Vec<AnyBox>,
        head: AnyBox,
        ctx: SubtaskContext,
    ) -> Box<dyn Task> {
        let inputs: Vec<Receiver<T>> = receivers
            .into_iter()
            .flat_map(unbox::<Vec<Receiver<T>>>)
            .collect();
        let head: Box<dyn Output<T>> = unbox(head);
        Box::new(InputTask {
            gate: InputGate::new(inputs, endpoint(&ctx)),
            head,
            ctx,
        })
    }
}

/// Everything `StreamExecutionEnvironment` records before `execute`.
pub(crate) struct GraphBuilder {
    pub default_parallelism: u32,
    pub max_parallelism: u32,
    pub batch_size: usize,
    pub buffer_timeout: Duration,
    /// Batches in flight per channel (the local credit).
    pub channel_capacity: usize,
    pub nodes: Vec<NodeDef>,
    pub edges: Vec<EdgeDef>,
}

impl GraphBuilder {
    pub fn logical(&self, job_name: &str) -> LogicalGraph {
        LogicalGraph {
            job_name: job_name.to_string(),
            default_parallelism: self.default_parallelism,
            max_parallelism: self.max_parallelism,
            nodes: self.nodes.iter().map(|n| n.logical.clone()).collect(),
            edges: self.edges.iter().map(|e| e.logical).collect(),
        }
    }
}
