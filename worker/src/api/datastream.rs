//! `DataStream`, `KeyedStream` and `DataStreamSink`: lazy handles that add operators to the
//! job graph. Nothing runs until `StreamExecutionEnvironment::execute`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use streamjob_crds::{LogicalEdge, LogicalNode, NodeKind, Partitioning};

use crate::Data;
use crate::api::functions::{Collector, Sink};
use crate::api::graph::{
    AnyBox, EdgeDef, EdgeKind, GraphBuilder, NodeDef, NodeRuntime, SinkBuild, TransformBuild,
    Typed, TypedEdge, unbox,
};
use crate::api::sinks::blackhole::{BlackholeSink, RecordCounter};
use crate::api::sinks::collect::{CollectSink, Collected};
use crate::api::sinks::print::PrintSink;
use crate::codec::key_hash::stable_hash;
use crate::operators::{Filter, FlatMap, KeyFn, Map, OpId, Reduce, SinkOp, TryMap};
use crate::runtime::context::SubtaskContext;
use crate::runtime::output::Output;
use crate::state::HashMapValueState;

pub(crate) fn boxed<T: 'static>(o: impl Output<T> + 'static) -> AnyBox {
    Box::new(Box::new(o) as Box<dyn Output<T>>)
}

/// A stream of `T` records: the output of one operator (or the union of several).
pub struct DataStream<T> {
    pub(crate) env: Rc<RefCell<GraphBuilder>>,
    /// Nodes whose output forms this stream.
    pub(crate) nodes: Vec<usize>,
    /// Partitioning of the edges to the next operator.
    pub(crate) partitioning: Partitioning,
    /// Set when this stream is the main output of an operator with side outputs.
    pub(crate) split: Option<Rc<Split>>,
    pub(crate) _t: PhantomData<fn() -> T>,
}

/// A side output of a split: (tag id, node, the side `DataStream<X>`).
pub(crate) type SideStream = (String, usize, Box<dyn std::any::Any>);

/// An operator whose output is split into a main stream and side outputs: settings on the
/// main stream apply to the operator itself (`origin`) and to every split node.
pub(crate) struct Split {
    pub origin: usize,
    pub sides: RefCell<Vec<SideStream>>,
    /// A process function's split: the operator emits `ProcessOutput<T>` and the node of a
    /// side output is added when `get_side_output` first asks for its tag.
    pub on_request: bool,
}

impl<T> Clone for DataStream<T> {
    fn clone(&self) -> Self {
        DataStream {
            env: self.env.clone(),
            nodes: self.nodes.clone(),
            partitioning: self.partitioning,
            split: self.split.clone(),
            _t: PhantomData,
        }
    }
}

/// A node about to be added to the graph.
pub(crate) struct NewNode<'a> {
    pub kind: NodeKind,
    pub operator: &'a str,
    pub max_parallelism: Option<u32>,
    pub runtime: NodeRuntime,
}

/// Adds a node producing `U`, fed by `inputs` over edges of kind `edge`.
pub(crate) fn add_node<U: Data>(
    env: &Rc<RefCell<GraphBuilder>>,
    inputs: &[usize],
    partitioning: Partitioning,
    edge: Arc<dyn EdgeKind>,
    node: NewNode<'_>,
) -> usize {
    let NewNode {
        kind,
        operator,
        max_parallelism,
        runtime,
    } = node;
    let mut g = env.borrow_mut();
    let id = g.nodes.len();
    g.nodes.push(NodeDef {
        logical: LogicalNode {
            id,
            kind,
            operator: operator.to_string(),
            name: operator.to_string(),
            uid: None,
            parallelism: None,
            max_parallelism,
        },
        runtime,
        output: Arc::new(Typed::<U>::new()),
    });
    for &from in inputs {
        g.edges.push(EdgeDef {
            logical: LogicalEdge {
                from,
                to: id,
                partitioning,
            },
            kind: edge.clone(),
        });
    }
    id
}

impl<T: Data> DataStream<T> {
    pub(crate) fn from_node(env: Rc<RefCell<GraphBuilder>>, node: usize) -> Self {
        DataStream {
            env,
            nodes: vec![node],
            partitioning: Partitioning::Forward,
            split: None,
            _t: PhantomData,
        }
    }

    pub(crate) fn transform<U: Data>(
        &self,
        operator: &str,
        build: TransformBuild,
    ) -> DataStream<U> {
        let edge: Arc<dyn EdgeKind> = Arc::new(TypedEdge::<T>::new(None));
        let id = add_node::<U>(
            &self.env,
            &self.nodes,
            self.partitioning,
            edge,
            NewNode {
                kind: NodeKind::Transform,
                operator,
                max_parallelism: None,
                runtime: NodeRuntime::Transform(build),
            },
        );
        DataStream::from_node(self.env.clone(), id)
    }

    fn node_mut<R>(&self, what: &str, f: impl FnOnce(&mut LogicalNode) -> R) -> R {
        let [node] = self.nodes.as_slice() else {
            panic!("{what} applies to one operator, not to a union of streams");
        };
        f(&mut self.env.borrow_mut().nodes[*node].logical)
    }

    /// Nodes that run with this stream's operator (its split outputs), without it.
    fn split_nodes(&self) -> Vec<usize> {
        self.split.as_ref().map_or_else(Vec::new, |s| {
            std::iter::once(s.origin)
                .chain(s.sides.borrow().iter().map(|(_, n, _)| *n))
                .collect()
        })
    }

    /// Parallelism of the operator that produces this stream (Flink's `setParallelism`).
    pub fn set_parallelism(self, parallelism: u32) -> Self {
        self.node_mut("set_parallelism", |n| n.parallelism = Some(parallelism));
        for n in self.split_nodes() {
            self.env.borrow_mut().nodes[n].logical.parallelism = Some(parallelism);
        }
        self
    }

    /// Display name of the operator that produces this stream.
    pub fn name(self, name: &str) -> Self {
        match &self.split {
            Some(s) => self.env.borrow_mut().nodes[s.origin].logical.name = name.to_string(),
            None => self.node_mut("name", |n| n.name = name.to_string()),
        }
        self
    }

    /// Stable id of the operator, used to match its state when restoring a savepoint.
    pub fn uid(self, uid: &str) -> Self {
        match &self.split {
            // The state is the operator's, not its output splitter's.
            Some(s) => {
                let mut g = self.env.borrow_mut();
                g.nodes[s.origin].logical.uid = Some(uid.to_string());
                let main = self.nodes[0];
                g.nodes[main].logical.uid = Some(format!("{uid}/main"));
                for (tag, n, _) in s.sides.borrow().iter() {
                    g.nodes[*n].logical.uid = Some(format!("{uid}/side/{tag}"));
                }
            }
            None => self.node_mut("uid", |n| n.uid = Some(uid.to_string())),
        }
        self
    }

    /// The side output `tag` of this stream's operator (late records of a window, records
    /// a process function sent with `ctx.output(&tag, ..)`). Panics if the operator has no
    /// such side output, or it has another type: a mistake in the job's code, found when
    /// the job is built.
    pub fn get_side_output<X: Data>(
        &self,
        tag: &crate::api::windows::OutputTag<X>,
    ) -> DataStream<X> {
        if let Some(s) = &self.split {
            let found = s
                .sides
                .borrow()
                .iter()
                .find(|(id, _, _)| *id == tag.id)
                .map(|(_, _, d)| d.downcast_ref::<DataStream<X>>().cloned());
            match found {
                Some(Some(d)) => return d,
                Some(None) => panic!(
                    "side output {:?} is read as {} but has another type",
                    tag.id,
                    std::any::type_name::<X>()
                ),
                None if s.on_request => return self.process_side_output(s, tag),
                None => {}
            }
        }
        panic!(
            "no side output {:?} of type {} on this stream",
            tag.id,
            std::any::type_name::<X>()
        )
    }

    /// Adds the node that reads side output `tag` from a process operator's output, with the
    /// operator's parallelism and uid (so it chains to it).
    fn process_side_output<X: Data>(
        &self,
        s: &Split,
        tag: &crate::api::windows::OutputTag<X>,
    ) -> DataStream<X> {
        use crate::operators::side_output::{ProcessOutput, read_side, tag_hash};
        let both: DataStream<ProcessOutput<T>> = DataStream::from_node(self.env.clone(), s.origin);
        let (id, hash) = (tag.id.clone(), tag_hash(&tag.id));
        let side = both.flat_map(move |o: ProcessOutput<T>, out: &mut Collector<'_, X>| {
            match read_side::<X>(&id, hash, o) {
                Ok(Some(x)) => out.collect(x),
                Ok(None) => {}
                // A job reading one tag id as two types; fails the job naming the tag.
                Err(e) => panic!("{e}"),
            }
        });
        {
            let mut g = self.env.borrow_mut();
            let origin = g.nodes[s.origin].logical.clone();
            let n = &mut g.nodes[side.nodes[0]].logical;
            n.name = format!("side output {}", tag.id);
            n.parallelism = origin.parallelism;
            n.max_parallelism = origin.max_parallelism;
            n.uid = origin.uid.map(|u| format!("{u}/side/{}", tag.id));
        }
        s.sides
            .borrow_mut()
            .push((tag.id.clone(), side.nodes[0], Box::new(side.clone())));
        side
    }

    /// One output record per input record.
    pub fn map<U: Data, F>(&self, f: F) -> DataStream<U>
    where
        F: Fn(T) -> U + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.transform(
            "map",
            Arc::new(move |next, ctx| {
                let next: Box<dyn Output<U>> = unbox(next);
                Ok(boxed::<T>(Map {
                    f: f.clone(),
                    next,
                    id: OpId::of(ctx),
                }))
            }),
        )
    }

    /// Like `map`, but an `Err` fails the job with a message naming this operator.
    pub fn try_map<U: Data, E, F>(&self, f: F) -> DataStream<U>
    where
        F: Fn(T) -> Result<U, E> + Send + Sync + 'static,
        E: std::fmt::Display + 'static,
    {
        let f = Arc::new(f);
        self.transform(
            "map",
            Arc::new(move |next, ctx| {
                let next: Box<dyn Output<U>> = unbox(next);
                Ok(boxed::<T>(TryMap {
                    f: f.clone(),
                    next,
                    id: OpId::of(ctx),
                }))
            }),
        )
    }

    /// Keeps the records for which `f` is true.
    pub fn filter<F>(&self, f: F) -> DataStream<T>
    where
        F: Fn(&T) -> bool + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.transform(
            "filter",
            Arc::new(move |next, ctx| {
                let next: Box<dyn Output<T>> = unbox(next);
                Ok(boxed::<T>(Filter {
                    f: f.clone(),
                    next,
                    id: OpId::of(ctx),
                }))
            }),
        )
    }

    /// Zero or more output records per input record, emitted through the collector.
    pub fn flat_map<U: Data, F>(&self, f: F) -> DataStream<U>
    where
        F: Fn(T, &mut Collector<'_, U>) + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.transform(
            "flat_map",
            Arc::new(move |next, ctx| {
                let next: Box<dyn Output<U>> = unbox(next);
                Ok(boxed::<T>(FlatMap {
                    f: f.clone(),
                    next,
                    id: OpId::of(ctx),
                }))
            }),
        )
    }

    /// Partitions by key: records with the same key go to the same subtask (by key group).
    /// Any serde type can be a key; its key group comes from `codec::key_hash`.
    pub fn key_by<K, F>(&self, f: F) -> KeyedStream<T, K>
    where
        K: Serialize + DeserializeOwned + Eq + Clone + Send + Sync + 'static,
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        KeyedStream {
            stream: self.clone(),
            key: Arc::new(move |t: &T| Cow::Owned(f(t))),
        }
    }

    /// Like `key_by` for a key that lives inside the record (`|r| &r.0`): no copy of the key
    /// is made per record.
    pub fn key_by_ref<K, F>(&self, f: F) -> KeyedStream<T, K>
    where
        K: ?Sized + ToOwned + Serialize + Eq + Send + Sync + 'static,
        K::Owned: std::borrow::Borrow<K> + Serialize + DeserializeOwned + Send + 'static,
        F: for<'a> Fn(&'a T) -> &'a K + Send + Sync + 'static,
    {
        KeyedStream {
            stream: self.clone(),
            key: Arc::new(move |t: &T| Cow::Borrowed(f(t))),
        }
    }

    /// Round-robin records over the next operator's subtasks (breaks the chain).
    pub fn rebalance(&self) -> DataStream<T> {
        DataStream {
            partitioning: Partitioning::Rebalance,
            ..self.clone()
        }
    }

    /// Every record to every subtask of the next operator.
    pub fn broadcast(&self) -> DataStream<T> {
        DataStream {
            partitioning: Partitioning::Broadcast,
            ..self.clone()
        }
    }

    /// Merges streams of the same type; the next operator reads all of them.
    pub fn union(&self, others: &[DataStream<T>]) -> DataStream<T> {
        let mut nodes = self.nodes.clone();
        for o in others {
            assert!(
                Rc::ptr_eq(&self.env, &o.env),
                "union of streams from different environments"
            );
            nodes.extend(&o.nodes);
        }
        DataStream {
            nodes,
            ..self.clone()
        }
    }

    /// Writes every record to `sink`.
    pub fn sink_to<S: Sink<T>>(&self, sink: S) -> DataStreamSink {
        let sink = Arc::new(sink);
        let operator = format!("sink:{}", sink.kind());
        let max = sink.max_parallelism();
        let build: SinkBuild =
            Arc::new(move |ctx: &SubtaskContext| Ok(boxed::<T>(SinkOp::create(&*sink, ctx)?)));
        let edge: Arc<dyn EdgeKind> = Arc::new(TypedEdge::<T>::new(None));
        let node = add_node::<T>(
            &self.env,
            &self.nodes,
            self.partitioning,
            edge,
            NewNode {
                kind: NodeKind::Sink,
                operator: &operator,
                max_parallelism: max,
                runtime: NodeRuntime::Sink(build),
            },
        );
        DataStreamSink {
            env: self.env.clone(),
            node,
        }
    }

    /// Prints every record to stdout with `{:?}`, prefixed by `subtask> ` (1-based) when the
    /// sink runs with parallelism > 1, as Flink's `print()` does.
    pub fn print(&self) -> DataStreamSink
    where
        T: std::fmt::Debug,
    {
        self.sink_to(PrintSink::debug())
    }

    /// Collects every record in memory (tests and small jobs); read it after `execute`.
    pub fn collect_sink(&self) -> Collected<T> {
        let (sink, handle) = CollectSink::new();
        self.sink_to(sink);
        handle
    }

    /// Discards records and counts them (Flink's `DiscardingSink`, for benchmarks).
    pub fn discard(&self) -> RecordCounter {
        let (sink, counter) = BlackholeSink::new();
        self.sink_to(sink);
        counter
    }
}

/// A stream partitioned by key. Created by [`DataStream::key_by`].
pub struct KeyedStream<T, K: ?Sized + ToOwned> {
    pub(crate) stream: DataStream<T>,
    pub(crate) key: KeyFn<T, K>,
}

impl<T, K> KeyedStream<T, K>
where
    T: Data,
    K: ?Sized + ToOwned + Serialize + Eq + Send + Sync + 'static,
    K::Owned: std::borrow::Borrow<K> + Serialize + DeserializeOwned + Send + 'static,
{
    /// Flink's rolling reduce: per key, the first record becomes the value, every later
    /// record replaces it with `f(value, record)`, and each new value is emitted.
    pub fn reduce<F>(&self, f: F) -> DataStream<T>
    where
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let key = self.key.clone();
        let build: TransformBuild = Arc::new(move |next, ctx| {
            let setup = |message: String| crate::error::JobError::Setup {
                operator: ctx.operator.to_string(),
                message,
            };
            let checkpoint = ctx
                .checkpoints
                .as_ref()
                .map(|c| crate::operators::ReduceCheckpoint {
                    coordinator: c.clone(),
                    uid: ctx.uid.clone(),
                    subtask: ctx.subtask,
                });
            let next: Box<dyn Output<T>> = unbox(next);
            let mut reduce = Reduce {
                key: key.clone(),
                f: f.clone(),
                state: HashMapValueState::new(ctx.key_groups),
                max_parallelism: ctx.max_parallelism,
                next,
                id: OpId::of(ctx),
                checkpoint,
            };
            if let Some(c) = &ctx.checkpoints
                && c.restored().is_some()
            {
                let snapshots = c
                    .restored_states(&ctx.uid)
                    .map_err(|e| setup(format!("cannot read checkpoint: {e}")))?;
                reduce
                    .restore(&snapshots)
                    .map_err(|e| setup(format!("cannot restore from checkpoint: {e}")))?;
            }
            Ok(boxed::<T>(reduce))
        });
        let key = self.key.clone();
        let edge: Arc<dyn EdgeKind> =
            Arc::new(TypedEdge::<T>::new(Some(Arc::new(move |t: &T| {
                stable_hash(&*key(t))
            }))));
        let s = &self.stream;
        let id = add_node::<T>(
            &s.env,
            &s.nodes,
            Partitioning::Hash,
            edge,
            NewNode {
                kind: NodeKind::Transform,
                operator: "reduce",
                max_parallelism: None,
                runtime: NodeRuntime::Transform(build),
            },
        );
        DataStream::from_node(s.env.clone(), id)
    }
}

/// Handle on a sink operator, to set its parallelism, name and uid.
pub struct DataStreamSink {
    env: Rc<RefCell<GraphBuilder>>,
    node: usize,
}

impl DataStreamSink {
    pub fn set_parallelism(self, parallelism: u32) -> Self {
        self.env.borrow_mut().nodes[self.node].logical.parallelism = Some(parallelism);
        self
    }
    pub fn name(self, name: &str) -> Self {
        self.env.borrow_mut().nodes[self.node].logical.name = name.to_string();
        self
    }
    pub fn uid(self, uid: &str) -> Self {
        self.env.borrow_mut().nodes[self.node].logical.uid = Some(uid.to_string());
        self
    }
}
