//! The graph a job builds before it runs: logical nodes and edges (plain data, planned by
//! `streamjob_crds::plan`) plus, per node and edge, typed factories behind `dyn Any` that the
//! executor uses to instantiate each subtask. Types are checked when the job is built, so
//! the downcasts in here cannot fail for graphs made through the public API.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use streamjob_crds::{LogicalEdge, LogicalGraph, LogicalNode, Partitioning};

use crate::codec::record::Wire;
use crate::error::JobError;
use crate::runtime::channel::{InputGate, Receiver, Sender, channel};
use crate::runtime::context::SubtaskContext;
use crate::runtime::output::{Discard, FanOut, Output};
use crate::runtime::router::{KeyHashFn, Route, Router};
use crate::runtime::task::{InputTask, Task, endpoint};
use crate::runtime::transport::{Inbound, Outbound, TypedInbound, TypedOutbound};

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
    /// One bounded channel: (`Sender<T>`, `Receiver<T>`).
    fn pair(&self, capacity: usize) -> (AnyBox, AnyBox);
    /// `Sender<T>`s (one per downstream subtask, in order) into the `Vec` a router takes.
    fn senders(&self, senders: Vec<AnyBox>) -> AnyBox;
    /// `Receiver<T>`s of one downstream subtask into the `Vec` an input task takes.
    fn receivers(&self, receivers: Vec<AnyBox>) -> AnyBox;
    /// The network half of a channel whose receiver is on another worker (every record
    /// type has a wire format: `Data` requires serde).
    fn outbound(&self, receiver: AnyBox) -> Box<dyn Outbound>;
    /// The network half of a channel whose sender is on another worker.
    fn inbound(&self, sender: AnyBox) -> Box<dyn Inbound>;
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
    /// How records cross the network.
    pub wire: Wire<T>,
}

impl<T: crate::Data> TypedEdge<T> {
    pub fn new(key_hash: Option<KeyHashFn<T>>) -> Self {
        TypedEdge {
            key_hash,
            wire: Wire::of(),
        }
    }
}

impl<T: crate::Data> EdgeKind for TypedEdge<T> {
    fn pair(&self, capacity: usize) -> (AnyBox, AnyBox) {
        let (tx, rx) = channel::<T>(capacity);
        (Box::new(tx), Box::new(rx))
    }

    fn senders(&self, senders: Vec<AnyBox>) -> AnyBox {
        Box::new(
            senders
                .into_iter()
                .map(unbox::<Sender<T>>)
                .collect::<Vec<_>>(),
        )
    }

    fn receivers(&self, receivers: Vec<AnyBox>) -> AnyBox {
        Box::new(
            receivers
                .into_iter()
                .map(unbox::<Receiver<T>>)
                .collect::<Vec<_>>(),
        )
    }

    fn outbound(&self, receiver: AnyBox) -> Box<dyn Outbound> {
        Box::new(TypedOutbound {
            rx: unbox::<Receiver<T>>(receiver),
            wire: self.wire,
            last_len: 0,
        })
    }

    fn inbound(&self, sender: AnyBox) -> Box<dyn Inbound> {
        Box::new(TypedInbound {
            tx: unbox::<Sender<T>>(sender),
            wire: self.wire,
        })
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
    /// Periodic checkpoints, when enabled.
    pub checkpointing: Option<crate::runtime::checkpoint::CheckpointConfig>,
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
