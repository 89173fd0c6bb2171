//! `StreamExecutionEnvironment`: job-wide settings, sources, planning and execution.
//! The shortcuts for the built-in sources (`from_collection`, `read_text_file`,
//! `socket_text_stream`) are in `connectors::environment`, and `execute_as_worker` is in
//! `cluster`: both sit above the API, so they add their methods from there.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use streamjob_crds::keygroup::DEFAULT_MAX_PARALLELISM;
use streamjob_crds::plan::PhysicalPlan;
use streamjob_crds::{NodeKind, Partitioning};

use crate::Data;
use crate::api::datastream::{DataStream, NewNode, add_node};
use crate::api::functions::Source;
use crate::api::graph::{GraphBuilder, NodeRuntime, SourceBuild, TypedEdge, unbox};
use crate::error::JobError;
use crate::runtime::executor;
pub use crate::runtime::executor::JobExecutionResult;
use crate::runtime::task::{SourceTask, Task};

/// Default records per channel batch.
pub const DEFAULT_BATCH_SIZE: usize = 1024;
/// Default longest wait of a partially filled batch.
pub const DEFAULT_BUFFER_TIMEOUT: Duration = Duration::from_millis(5);
/// Default batches in flight per channel.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4;

/// Runtime of a source node: each subtask gets a reader and drives the chain below it.
pub(crate) fn source_runtime_of<T: Data, S: Source<T> + ?Sized>(source: Arc<S>) -> NodeRuntime {
    let build: SourceBuild = Arc::new(move |out, ctx| {
        let reader = source.create_reader(&ctx).map_err(|e| JobError::Setup {
            operator: ctx.operator.to_string(),
            message: e.to_string(),
        })?;
        Ok(Box::new(SourceTask {
            reader,
            head: unbox(out),
            ctx,
        }) as Box<dyn Task>)
    });
    NodeRuntime::Source(build)
}

/// Entry point of a job (Flink's `StreamExecutionEnvironment`). Cheap to clone; clones share
/// the same job graph.
#[derive(Clone)]
pub struct StreamExecutionEnvironment {
    graph: Rc<RefCell<GraphBuilder>>,
}

impl Default for StreamExecutionEnvironment {
    fn default() -> Self {
        Self::get_execution_environment()
    }
}

impl StreamExecutionEnvironment {
    /// A local environment: `execute` runs every subtask in this process.
    pub fn get_execution_environment() -> Self {
        StreamExecutionEnvironment {
            graph: Rc::new(RefCell::new(GraphBuilder {
                default_parallelism: 1,
                max_parallelism: DEFAULT_MAX_PARALLELISM,
                batch_size: DEFAULT_BATCH_SIZE,
                buffer_timeout: DEFAULT_BUFFER_TIMEOUT,
                channel_capacity: DEFAULT_CHANNEL_CAPACITY,
                checkpointing: None,
                nodes: Vec::new(),
                edges: Vec::new(),
            })),
        }
    }

    /// Default parallelism of operators that do not set their own.
    pub fn set_parallelism(&self, parallelism: u32) -> &Self {
        self.graph.borrow_mut().default_parallelism = parallelism;
        self
    }

    pub fn get_parallelism(&self) -> u32 {
        self.graph.borrow().default_parallelism
    }

    /// Number of key groups (upper bound for any operator's parallelism; fixed for the life
    /// of a job's state). Default 128.
    pub fn set_max_parallelism(&self, max_parallelism: u32) -> &Self {
        self.graph.borrow_mut().max_parallelism = max_parallelism;
        self
    }

    /// Longest time a partially filled batch waits before it is sent (latency bound).
    pub fn set_buffer_timeout(&self, timeout: Duration) -> &Self {
        self.graph.borrow_mut().buffer_timeout = timeout;
        self
    }

    /// Records per batch on channels between chains.
    pub fn set_batch_size(&self, records: usize) -> &Self {
        self.graph.borrow_mut().batch_size = records.max(1);
        self
    }

    /// Batches in flight per channel before the sender blocks (backpressure).
    pub fn set_channel_capacity(&self, batches: usize) -> &Self {
        self.graph.borrow_mut().channel_capacity = batches.max(1);
        self
    }

    /// Takes an aligned checkpoint every `interval` into `dir` (keeping the last `retained`),
    /// and restores from the latest complete one there when the job starts: a job killed at
    /// any point and started again continues with its state and source positions, and sinks
    /// that support it (files, exactly-once Kafka) drop or abort what came after.
    pub fn enable_checkpointing(
        &self,
        interval: Duration,
        dir: impl AsRef<std::ffi::OsStr>,
        retained: usize,
    ) -> &Self {
        // A path, `file:///path` or `s3://bucket/prefix`.
        let dir = dir.as_ref().to_string_lossy().into_owned();
        self.graph.borrow_mut().checkpointing = Some(
            crate::runtime::checkpoint::CheckpointConfig::new(interval, dir, retained),
        );
        self
    }

    /// Adjusts the checkpoint settings (run directory, restore source, savepoints) after
    /// [`StreamExecutionEnvironment::enable_checkpointing`]; no-op without checkpointing.
    pub fn configure_checkpointing(
        &self,
        f: impl FnOnce(&mut crate::runtime::checkpoint::CheckpointConfig),
    ) -> &Self {
        if let Some(c) = self.graph.borrow_mut().checkpointing.as_mut() {
            f(c);
        }
        self
    }

    /// Adds a source. Each subtask gets its own reader from `source.create_reader`.
    pub fn from_source<T: Data, S: Source<T>>(&self, source: S, name: &str) -> DataStream<T> {
        let source = Arc::new(source);
        let operator = format!("source:{}", source.kind());
        let max = source.max_parallelism();
        let id = add_node::<T>(
            &self.graph,
            &[],
            Partitioning::Forward,
            Arc::new(TypedEdge::<T>::new(None)),
            NewNode {
                kind: NodeKind::Source,
                operator: &operator,
                max_parallelism: max,
                runtime: source_runtime_of(source),
            },
        );
        DataStream::from_node(self.graph.clone(), id).name(name)
    }

    pub(crate) fn graph_builder(&self) -> &Rc<RefCell<GraphBuilder>> {
        &self.graph
    }

    /// Plans the job built so far.
    pub fn plan(&self, job_name: &str) -> Result<PhysicalPlan, JobError> {
        Ok(self.graph.borrow().logical(job_name).plan()?)
    }

    /// The physical plan as text: chains, their operators and parallelism, and the edges
    /// between chains with their partitioning.
    pub fn explain(&self) -> Result<String, JobError> {
        Ok(self.plan("job")?.explain())
    }

    /// Plans and runs the job in this process, one thread per subtask; returns when every
    /// subtask has finished (bounded jobs) or the job fails.
    pub fn execute(&self, job_name: &str) -> Result<JobExecutionResult, JobError> {
        let graph = self.graph.borrow();
        executor::run_local(&graph, job_name)
    }
}
