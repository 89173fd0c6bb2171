//! The time methods of the DataStream API: `assign_timestamps_and_watermarks`, keyed and
//! non-keyed windows (`window`, `window_all`, `count_window`), and `WindowedStream` with its
//! window functions.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use streamjob_crds::{NodeKind, Partitioning};

use crate::Data;
use crate::api::datastream::{DataStream, KeyedStream, NewNode, Split, add_node, boxed};
use crate::api::functions::Collector;
use crate::api::graph::{EdgeKind, NodeRuntime, TransformBuild, TypedEdge, unbox};
use crate::api::process::{CoProcess, KeyedCoProcessFunction, KeyedProcessFunction, TwoInput};
use crate::api::watermark::WatermarkStrategy;
use crate::api::windows::{
    Aggregate, AggregateFunction, EmitFn, ListAggregator, OutputTag, ReduceAggregator,
    WindowAggregator, WindowAssigner, WindowContext, WindowOutput,
};
use crate::codec::key_hash::stable_hash;
use crate::error::{BoxError, JobError};
use crate::operators::OpId;
use crate::operators::count_window::CountWindowOperator;
use crate::operators::process::{KeyedProcessOperator, ProcessSetup};
use crate::operators::side_output::ProcessOutput;
use crate::operators::watermark::TimestampsAndWatermarks;
use crate::operators::window::{
    WindowKeyFn, WindowOperator, WindowOutputs, WindowSetup, WindowSpec,
};
use crate::runtime::context::SubtaskContext;

use crate::runtime::time::{self, Clock};
use crate::state::HashMapValueState;

impl<T: Data> DataStream<T> {
    /// Gives every record an event timestamp and emits watermarks as `strategy` says
    /// (Flink's `assignTimestampsAndWatermarks`). Applied to a source's stream it chains
    /// into the source task.
    pub fn assign_timestamps_and_watermarks(
        &self,
        strategy: WatermarkStrategy<T>,
    ) -> DataStream<T> {
        self.transform(
            "timestamps/watermarks",
            Arc::new(move |next, ctx| {
                let restored = restored_states(ctx)?;
                let restored = TimestampsAndWatermarks::<T>::decode_state(&restored)
                    .map_err(|e| setup(ctx, format!("cannot restore from checkpoint: {e}")))?;
                Ok(boxed::<T>(TimestampsAndWatermarks::new(
                    strategy.clone(),
                    unbox(next),
                    OpId::of(ctx),
                    checkpoint_of(ctx),
                    restored,
                )))
            }),
        )
    }

    /// Windows over all records (Flink's `windowAll`): one subtask sees every record.
    pub fn window_all(&self, assigner: WindowAssigner) -> WindowedStream<T, ()> {
        WindowedStream::new(self.clone(), all_key(), WindowKind::Time(assigner), true)
    }

    /// Count windows over all records: fires every `size` records (Flink's `countWindowAll`).
    pub fn count_window_all(&self, size: u64) -> WindowedStream<T, ()> {
        self.count_window_all_sliding(size, size)
    }

    /// Fires every `slide` records with the last `size` records.
    pub fn count_window_all_sliding(&self, size: u64, slide: u64) -> WindowedStream<T, ()> {
        WindowedStream::new(
            self.clone(),
            all_key(),
            WindowKind::Count { size, slide },
            true,
        )
    }
}

fn all_key<T>() -> WindowKeyFn<T, ()> {
    Arc::new(|_: &T| Ok(Cow::Owned(())))
}

impl<T, K> KeyedStream<T, K>
where
    T: Data,
    K: ?Sized + ToOwned + Serialize + Eq + Send + Sync + 'static,
    K::Owned: std::borrow::Borrow<K> + Clone + Serialize + DeserializeOwned + Send + 'static,
{
    /// Windows per key (Flink's `KeyedStream.window`).
    pub fn window(&self, assigner: WindowAssigner) -> WindowedStream<T, K> {
        WindowedStream::new(
            self.stream.clone(),
            self.window_key(),
            WindowKind::Time(assigner),
            false,
        )
    }

    /// Tumbling count windows per key: fires every `size` records of a key with them.
    pub fn count_window(&self, size: u64) -> WindowedStream<T, K> {
        self.count_window_sliding(size, size)
    }

    /// Sliding count windows per key: fires every `slide` records of a key with its last
    /// `size` records (Flink's `countWindow(size, slide)`).
    pub fn count_window_sliding(&self, size: u64, slide: u64) -> WindowedStream<T, K> {
        WindowedStream::new(
            self.stream.clone(),
            self.window_key(),
            WindowKind::Count { size, slide },
            false,
        )
    }

    /// Runs a [`KeyedProcessFunction`] per record and timer of each key (Flink's
    /// `KeyedStream.process`).
    pub fn process<F>(&self, f: F) -> DataStream<F::Out>
    where
        F: KeyedProcessFunction<K, T>,
        F::Out: Data,
    {
        self.process_with_clock(f, time::clock::system())
    }

    /// [`KeyedStream::process`] with an injected processing-time clock (tests).
    pub fn process_with_clock<F>(&self, f: F, clock: Arc<dyn Clock>) -> DataStream<F::Out>
    where
        F: KeyedProcessFunction<K, T>,
        F::Out: Data,
    {
        let f = Arc::new(f);
        let key = self.window_key();
        let build: TransformBuild = Arc::new(move |next, ctx| {
            let process = ProcessSetup {
                key_groups: ctx.key_groups,
                max_parallelism: ctx.max_parallelism,
                clock: clock.clone(),
                id: OpId::of(ctx),
                checkpoint: checkpoint_of(ctx),
            };
            let mut op = KeyedProcessOperator::new(key.clone(), f.clone(), process, unbox(next))
                .map_err(|e| setup(ctx, e))?;
            op.restore(&restored_states(ctx)?)
                .map_err(|e| setup(ctx, format!("cannot restore from checkpoint: {e}")))?;
            Ok(boxed::<T>(op))
        });
        let key = self.key.clone();
        let edge: Arc<dyn EdgeKind> =
            Arc::new(TypedEdge::<T>::new(Some(Arc::new(move |t: &T| {
                stable_hash(&*key(t))
            }))));
        let s = &self.stream;
        let id = add_node::<ProcessOutput<F::Out>>(
            &s.env,
            &s.nodes,
            Partitioning::Hash,
            edge,
            NewNode {
                kind: NodeKind::Transform,
                operator: "process",
                max_parallelism: None,
                runtime: NodeRuntime::Transform(build),
            },
        );
        // Main and side records share the operator's output; side outputs are split off
        // when `get_side_output` asks for them.
        let both = DataStream::<ProcessOutput<F::Out>>::from_node(s.env.clone(), id);
        let main = both.flat_map(|o, out: &mut Collector<'_, F::Out>| {
            if let ProcessOutput::Main(x) = o {
                out.collect(x)
            }
        });
        DataStream {
            split: Some(Rc::new(Split {
                origin: id,
                sides: RefCell::new(Vec::new()),
                on_request: true,
            })),
            ..main
        }
    }

    fn window_key(&self) -> WindowKeyFn<T, K> {
        let key = self.key.clone();
        Arc::new(move |t: &T| Ok(key(t)))
    }
}

#[derive(Clone, Copy)]
enum WindowKind {
    Time(WindowAssigner),
    Count { size: u64, slide: u64 },
}

/// A keyed (or all-records) stream with windows, waiting for its window function.
pub struct WindowedStream<T, K: ?Sized + ToOwned> {
    stream: DataStream<T>,
    key: WindowKeyFn<T, K>,
    kind: WindowKind,
    allowed_lateness_ms: i64,
    late_tag: Option<String>,
    clock: Arc<dyn Clock>,
    all: bool,
}

fn setup(ctx: &SubtaskContext, message: String) -> JobError {
    JobError::Setup {
        operator: ctx.operator.to_string(),
        message,
    }
}

fn restored_states(ctx: &SubtaskContext) -> Result<Vec<(u32, Vec<u8>)>, JobError> {
    match &ctx.checkpoints {
        Some(c) if c.restored().is_some() => c
            .restored_states(&ctx.uid)
            .map_err(|e| setup(ctx, format!("cannot read checkpoint: {e}"))),
        _ => Ok(Vec::new()),
    }
}

fn checkpoint_of(
    ctx: &SubtaskContext,
) -> Option<(Arc<crate::runtime::checkpoint::Coordinator>, Arc<str>)> {
    ctx.checkpoints.clone().map(|c| (c, ctx.uid.clone()))
}

impl<T, K> WindowedStream<T, K>
where
    T: Data,
    K: ?Sized + ToOwned + Serialize + Eq + Send + Sync + 'static,
    K::Owned: std::borrow::Borrow<K> + Clone + Serialize + DeserializeOwned + Send + 'static,
{
    fn new(stream: DataStream<T>, key: WindowKeyFn<T, K>, kind: WindowKind, all: bool) -> Self {
        match kind {
            WindowKind::Time(a) => {
                if let Err(e) = a.validate() {
                    panic!("invalid window: {e}");
                }
            }
            WindowKind::Count { size, slide } => {
                assert!(
                    size > 0 && slide > 0 && slide <= size,
                    "count windows need 0 < slide <= size, got size {size} and slide {slide}"
                );
            }
        }
        WindowedStream {
            stream,
            key,
            kind,
            allowed_lateness_ms: 0,
            late_tag: None,
            clock: time::clock::system(),
            all,
        }
    }

    /// Event time: records up to `lateness` behind the watermark still update their
    /// windows, each firing the window again with the updated result.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness_ms = i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Records later than the allowed lateness go to the side output `tag` (read it with
    /// `get_side_output` on the result) instead of being dropped.
    pub fn side_output_late_data(mut self, tag: &OutputTag<T>) -> Self {
        self.late_tag = Some(tag.id.clone());
        self
    }

    /// The processing-time clock (tests inject a `runtime::time::ManualClock`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Per window, `f` folds its records into one (Flink's `reduce`).
    pub fn reduce<F>(self, f: F) -> DataStream<T>
    where
        F: Fn(T, T) -> T + Send + Sync + 'static,
    {
        self.apply(
            ReduceAggregator::new(f),
            Arc::new(|_: &K, _: &WindowContext, v, out: &mut Collector<'_, T>| {
                out.collect(v);
                Ok(())
            }),
        )
    }

    /// Reduce, then a process function that sees the key, the window and the reduced value.
    pub fn reduce_with_process<R: Data, F, P>(self, f: F, process: P) -> DataStream<R>
    where
        F: Fn(T, T) -> T + Send + Sync + 'static,
        P: Fn(&K, &WindowContext, T, &mut Collector<'_, R>) + Send + Sync + 'static,
    {
        self.apply(ReduceAggregator::new(f), infallible(process))
    }

    /// Per window, an accumulator (Flink's `aggregate`).
    pub fn aggregate<A>(self, agg: A) -> DataStream<A::Out>
    where
        A: AggregateFunction<T>,
        A::Out: Data,
    {
        self.apply(
            Aggregate(agg),
            Arc::new(
                |_: &K, _: &WindowContext, v, out: &mut Collector<'_, A::Out>| {
                    out.collect(v);
                    Ok(())
                },
            ),
        )
    }

    /// Aggregate, then a process function that sees the key, the window and the result.
    pub fn aggregate_with_process<A, R: Data, P>(self, agg: A, process: P) -> DataStream<R>
    where
        A: AggregateFunction<T>,
        P: Fn(&K, &WindowContext, A::Out, &mut Collector<'_, R>) + Send + Sync + 'static,
    {
        self.apply(Aggregate(agg), infallible(process))
    }

    /// Per window, all its records with the key and window (Flink's `process` with a
    /// `ProcessWindowFunction`); records are kept in state until the window fires.
    pub fn process<R: Data, P>(self, process: P) -> DataStream<R>
    where
        P: Fn(&K, &WindowContext, Vec<T>, &mut Collector<'_, R>) + Send + Sync + 'static,
    {
        self.apply(ListAggregator::default(), infallible(process))
    }

    /// The general form every window function above is built on: any [`WindowAggregator`]
    /// and an emit function turning its result into records (may fail).
    pub fn apply<A, R>(self, agg: A, emit: EmitFn<K, A::Out, R>) -> DataStream<R>
    where
        A: WindowAggregator<T>,
        R: Data,
    {
        let agg = Arc::new(agg);
        let kind = self.kind;
        let key = self.key.clone();
        let late = self.late_tag.is_some();
        let lateness = self.allowed_lateness_ms;
        let clock = self.clock.clone();
        let build: TransformBuild = Arc::new(move |next, ctx| {
            let out: WindowOutputs<R, T> = if late {
                WindowOutputs::WithLate(unbox(next))
            } else {
                WindowOutputs::Plain(unbox(next))
            };
            let restored = restored_states(ctx)?;
            let restore_err =
                |e: String| setup(ctx, format!("cannot restore from checkpoint: {e}"));
            let agg = SharedAgg(agg.clone());
            Ok(match kind {
                WindowKind::Time(assigner) => {
                    let mut op = WindowOperator::new(
                        WindowSetup {
                            spec: WindowSpec {
                                assigner,
                                allowed_lateness_ms: lateness,
                                clock: clock.clone(),
                            },
                            key_groups: ctx.key_groups,
                            max_parallelism: ctx.max_parallelism,
                            id: OpId::of(ctx),
                            checkpoint: checkpoint_of(ctx),
                        },
                        key.clone(),
                        agg,
                        emit.clone(),
                        out,
                    );
                    op.restore(&restored).map_err(restore_err)?;
                    boxed::<T>(op)
                }
                WindowKind::Count { size, slide } => {
                    let mut op = CountWindowOperator {
                        key: key.clone(),
                        size,
                        slide,
                        agg,
                        emit: emit.clone(),
                        state: HashMapValueState::new(ctx.key_groups),
                        max_parallelism: ctx.max_parallelism,
                        out,
                        id: OpId::of(ctx),
                        checkpoint: checkpoint_of(ctx),
                    };
                    op.restore(&restored).map_err(restore_err)?;
                    boxed::<T>(op)
                }
            })
        });
        let key = self.key.clone();
        let edge: Arc<dyn EdgeKind> =
            Arc::new(TypedEdge::<T>::new(Some(Arc::new(move |t: &T| {
                key(t).map(|k| stable_hash(&*k)).unwrap_or(0)
            }))));
        let s = &self.stream;
        let operator = match (kind, self.all) {
            (WindowKind::Time(_), false) => "window",
            (WindowKind::Time(_), true) => "window_all",
            (WindowKind::Count { .. }, false) => "count_window",
            (WindowKind::Count { .. }, true) => "count_window_all",
        };
        let node = |runtime| NewNode {
            kind: NodeKind::Transform,
            operator,
            max_parallelism: None,
            runtime,
        };
        let id = if late {
            add_node::<WindowOutput<R, T>>(
                &s.env,
                &s.nodes,
                Partitioning::Hash,
                edge,
                node(NodeRuntime::Transform(build)),
            )
        } else {
            add_node::<R>(
                &s.env,
                &s.nodes,
                Partitioning::Hash,
                edge,
                node(NodeRuntime::Transform(build)),
            )
        };
        if self.all {
            let mut g = s.env.borrow_mut();
            g.nodes[id].logical.parallelism = Some(1);
            g.nodes[id].logical.max_parallelism = Some(1);
        }
        if !late {
            return DataStream::from_node(s.env.clone(), id);
        }
        let both: DataStream<WindowOutput<R, T>> = DataStream::from_node(s.env.clone(), id);
        let main = both.flat_map(|o, out: &mut Collector<'_, R>| {
            if let WindowOutput::Result(r) = o {
                out.collect(r)
            }
        });
        let side = both.flat_map(|o, out: &mut Collector<'_, T>| {
            if let WindowOutput::Late(t) = o {
                out.collect(t)
            }
        });
        let tag = self.late_tag.clone().expect("late is set");
        if self.all {
            let mut g = s.env.borrow_mut();
            for n in [main.nodes[0], side.nodes[0]] {
                g.nodes[n].logical.parallelism = Some(1);
                g.nodes[n].logical.max_parallelism = Some(1);
            }
        }
        let side_node = side.nodes[0];
        DataStream {
            split: Some(Rc::new(Split {
                origin: id,
                sides: RefCell::new(vec![(tag, side_node, Box::new(side))]),
                on_request: false,
            })),
            ..main
        }
    }
}

fn infallible<K: ?Sized, O, R, P>(p: P) -> EmitFn<K, O, R>
where
    P: Fn(&K, &WindowContext, O, &mut Collector<'_, R>) + Send + Sync + 'static,
{
    Arc::new(
        move |k: &K, w: &WindowContext, v: O, out: &mut Collector<'_, R>| {
            p(k, w, v, out);
            Ok::<(), BoxError>(())
        },
    )
}

/// One aggregator shared by every subtask's operator.
struct SharedAgg<A>(Arc<A>);

impl<T, A: WindowAggregator<T>> WindowAggregator<T> for SharedAgg<A> {
    type Acc = A::Acc;
    type Out = A::Out;
    fn create(&self) -> Result<A::Acc, BoxError> {
        self.0.create()
    }
    #[inline]
    fn add(&self, acc: &mut A::Acc, value: T) -> Result<(), BoxError> {
        self.0.add(acc, value)
    }
    fn result(&self, acc: &A::Acc) -> Result<A::Out, BoxError> {
        self.0.result(acc)
    }
    fn final_result(&self, acc: A::Acc) -> Result<A::Out, BoxError> {
        self.0.final_result(acc)
    }
    fn merge(&self, a: A::Acc, b: A::Acc) -> Result<A::Acc, BoxError> {
        self.0.merge(a, b)
    }
}

/// Two streams of possibly different types, processed together (Flink's `connect`).
pub struct ConnectedStreams<A, B> {
    first: DataStream<A>,
    second: DataStream<B>,
}

impl<A: Data> DataStream<A> {
    /// Connects this stream with `other`; key both sides alike with
    /// [`ConnectedStreams::key_by`] and process them with a `KeyedCoProcessFunction`.
    pub fn connect<B: Data>(&self, other: &DataStream<B>) -> ConnectedStreams<A, B> {
        ConnectedStreams {
            first: self.clone(),
            second: other.clone(),
        }
    }
}

impl<A: Data, B: Data> ConnectedStreams<A, B> {
    /// Keys both inputs: records of either side with equal keys meet in the same state.
    pub fn key_by<K, FA, FB>(&self, first: FA, second: FB) -> KeyedStream<TwoInput<A, B>, K>
    where
        K: Serialize + DeserializeOwned + Eq + Clone + Send + Sync + 'static,
        FA: Fn(&A) -> K + Send + Sync + 'static,
        FB: Fn(&B) -> K + Send + Sync + 'static,
    {
        // Both sides travel as one record type, so the input gate's watermark is the
        // minimum over both inputs' channels, as a two-input operator needs.
        let a = self.first.map(TwoInput::First);
        let b = self.second.map(TwoInput::Second);
        a.union(&[b]).key_by(move |r: &TwoInput<A, B>| match r {
            TwoInput::First(x) => first(x),
            TwoInput::Second(y) => second(y),
        })
    }
}

impl<A, B, K> KeyedStream<TwoInput<A, B>, K>
where
    A: Data,
    B: Data,
    K: Serialize + DeserializeOwned + Eq + Clone + Send + Sync + 'static,
{
    /// Runs a [`KeyedCoProcessFunction`] over connected, keyed streams.
    pub fn co_process<F>(&self, f: F) -> DataStream<F::Out>
    where
        F: KeyedCoProcessFunction<K, A, B>,
        F::Out: Data,
    {
        self.process(CoProcess(f))
    }
}
