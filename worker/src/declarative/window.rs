//! The spec's `window` step and a source's `watermarks`, built on the runtime's window
//! operators ([`WindowOperator`], [`CountWindowOperator`]) and watermark operator
//! ([`TimestampsAndWatermarks`]), with CEL inside.
//!
//! A record on its way into a window is evaluated once: its key (from the keyBy step) and
//! its aggregate inputs. A record whose expression fails follows the job's `onError`
//! policy and stays out of every window. The operator then sees `(key, record, inputs)`.
//! With a `lateOutput`, the window node's output carries results and late records
//! together ([`WindowOutput`]) and [`LateSplit`] sends each kind to its own edges.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamjob_crds::expr::{EvalError, Program, Value};
use streamjob_crds::spec::TimeCharacteristic;
use streamjob_crds::validate::{Watermarks, WindowAssigner, WindowOp};

use super::errors::{ErrorPolicy, Handler};
use super::window_fn::{Acc, WindowFunction, count_window_value, window_value};
use crate::api::functions::Collector;
use crate::api::graph::{AnyBox, NodeRuntime, OutputKind, unbox};
use crate::api::watermark::WatermarkStrategy;
use crate::api::windows::{
    EmitFn, TimeDomain, WindowAggregator, WindowAssigner as RuntimeAssigner, WindowContext,
    WindowOutput,
};
use crate::error::{BoxError, JobError, TaskError};
use crate::operators::OpId;
use crate::operators::count_window::CountWindowOperator;
use crate::operators::watermark::TimestampsAndWatermarks;
use crate::operators::window::{WindowOperator, WindowOutputs, WindowSetup, WindowSpec};
use crate::runtime::context::SubtaskContext;
use crate::runtime::message::Signal;
use crate::runtime::output::Output;
use crate::runtime::time::{clock, set_current_timestamp};
use crate::state::HashMapValueState;

/// What a window operator receives: (key, record, aggregate inputs).
type Keyed = (Value, Value, Value);

type SharedHandler = Arc<Mutex<Handler>>;

fn setup_error(ctx: &SubtaskContext, message: String) -> JobError {
    JobError::Setup {
        operator: ctx.operator.to_string(),
        message,
    }
}

fn restored_states(ctx: &SubtaskContext) -> Result<Vec<(u32, Vec<u8>)>, JobError> {
    match &ctx.checkpoints {
        Some(c) if c.restored().is_some() => c
            .restored_states(&ctx.uid)
            .map_err(|e| setup_error(ctx, format!("cannot read checkpoint: {e}"))),
        _ => Ok(Vec::new()),
    }
}

fn failed(handler: &SharedHandler, record: &Value, e: EvalError) -> Result<(), TaskError> {
    handler
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .failed(record, e)
}

/// The node of a source's `watermarks`: evaluates the timestamp expression (if any), then
/// Flink's bounded-out-of-orderness watermarks with idleness.
pub(super) fn watermarks_runtime(w: &Watermarks, policy: &Arc<ErrorPolicy>) -> NodeRuntime {
    let mut strategy =
        WatermarkStrategy::<Value>::for_bounded_out_of_orderness(w.max_out_of_orderness);
    if let Some(idle) = w.idleness {
        strategy = strategy.with_idleness(idle);
    }
    strategy = if w.interval.is_zero() {
        strategy.with_watermark_per_record()
    } else {
        strategy.with_emit_interval(w.interval)
    };
    let timestamp = w.timestamp.clone();
    let policy = policy.clone();
    NodeRuntime::Transform(Arc::new(move |next: AnyBox, ctx: &SubtaskContext| {
        let restored = TimestampsAndWatermarks::<Value>::decode_state(&restored_states(ctx)?)
            .map_err(|e| setup_error(ctx, format!("cannot restore from checkpoint: {e}")))?;
        let watermarks: Box<dyn Output<Value>> = Box::new(TimestampsAndWatermarks::new(
            strategy.clone(),
            unbox(next),
            OpId::of(ctx),
            ctx.checkpoints.clone().map(|c| (c, ctx.uid.clone())),
            restored,
        ));
        let out: Box<dyn Output<Value>> = match &timestamp {
            Some(program) => Box::new(AssignTimestamps {
                program: program.clone(),
                handler: Handler::new(policy.clone(), ctx)?,
                next: watermarks,
            }),
            // The source set the timestamps (Kafka, Nexmark).
            None => watermarks,
        };
        Ok(Box::new(out) as AnyBox)
    }))
}

/// Sets each record's timestamp from the `timestamp` expression; a record whose
/// expression fails (or gives no int) follows the onError policy.
struct AssignTimestamps {
    program: Program,
    handler: Handler,
    next: Box<dyn Output<Value>>,
}

impl Output<Value> for AssignTimestamps {
    fn emit(&mut self, item: Value) -> Result<(), TaskError> {
        match self.program.eval_cow(&[&item]).map(|v| v.as_i64()) {
            Ok(Some(ts)) => {
                set_current_timestamp(ts);
                self.next.emit(item)
            }
            Ok(None) => {
                let message = "the timestamp expression must return an int (ms since the epoch)";
                self.handler.failed(
                    &item,
                    EvalError {
                        message: message.into(),
                    },
                )
            }
            Err(e) => self.handler.failed(&item, e),
        }
    }
    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        self.handler.flush()?;
        self.next.signal(signal)
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        self.handler.flush()?;
        self.next.flush()
    }
}

/// Evaluates the key and the aggregate inputs once per record.
struct Prepare {
    key: Option<(Program, Arc<str>)>,
    function: WindowFunction,
    handler: SharedHandler,
    next: Box<dyn Output<Keyed>>,
}

impl Output<Value> for Prepare {
    fn emit(&mut self, item: Value) -> Result<(), TaskError> {
        let key = match &self.key {
            None => Value::Null,
            Some((program, step)) => match program.eval(&[&item]) {
                Ok(k @ (Value::String(_) | Value::Int(_) | Value::UInt(_))) => k,
                Ok(k) => {
                    let message = format!(
                        "keyBy step '{step}' returned a {} ({k}); a key must be a string, int or uint",
                        k.value_type().name()
                    );
                    return failed(&self.handler, &item, EvalError { message });
                }
                Err(e) => return failed(&self.handler, &item, e),
            },
        };
        match self.function.inputs(&item) {
            Ok(inputs) => self.next.emit((key, item, inputs)),
            Err(e) => failed(&self.handler, &item, e),
        }
    }
    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        self.handler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()?;
        self.next.signal(signal)
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        self.handler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()?;
        self.next.flush()
    }
}

/// The CEL aggregation as the window operators' plug-in. A record the aggregation fails on
/// follows the onError policy and leaves the window's accumulator as it was.
struct SpecAggregator {
    function: WindowFunction,
    handler: SharedHandler,
}

impl WindowAggregator<Keyed> for SpecAggregator {
    type Acc = Acc;
    type Out = Acc;
    fn create(&self) -> Result<Acc, BoxError> {
        Ok(self.function.create())
    }
    fn add(&self, acc: &mut Acc, (_, record, inputs): Keyed) -> Result<(), BoxError> {
        match self.function.add(acc, &record, &inputs) {
            Ok(()) => Ok(()),
            Err(e) => failed(&self.handler, &record, e).map_err(|e| BoxError::from(e.to_string())),
        }
    }
    fn result(&self, acc: &Acc) -> Result<Acc, BoxError> {
        Ok(acc.clone())
    }
    fn merge(&self, a: Acc, b: Acc) -> Result<Acc, BoxError> {
        Ok(self.function.merge(a, b)?)
    }
}

/// Splits a window's output into its result edges and its late edges (`late[i]` tells
/// which output is which, in the executor's order of the node's outgoing plan edges).
pub(super) struct LateSplit {
    pub late: Vec<bool>,
}

impl OutputKind for LateSplit {
    fn fan_out(&self, outputs: Vec<AnyBox>) -> AnyBox {
        assert_eq!(
            outputs.len(),
            self.late.len(),
            "a window with a lateOutput has one output per planned edge"
        );
        let (mut results, mut late) = (Vec::new(), Vec::new());
        for (out, is_late) in outputs.into_iter().zip(&self.late) {
            let out: Box<dyn Output<Value>> = unbox(out);
            if *is_late {
                late.push(out);
            } else {
                results.push(out);
            }
        }
        Box::new(Box::new(Split { results, late }) as Box<dyn Output<WindowOutput<Value, Keyed>>>)
    }
    fn discard(&self) -> AnyBox {
        Box::new(Box::new(Split {
            results: Vec::new(),
            late: Vec::new(),
        }) as Box<dyn Output<WindowOutput<Value, Keyed>>>)
    }
}

struct Split {
    results: Vec<Box<dyn Output<Value>>>,
    late: Vec<Box<dyn Output<Value>>>,
}

fn send(outs: &mut [Box<dyn Output<Value>>], v: Value) -> Result<(), TaskError> {
    if let Some((last, rest)) = outs.split_last_mut() {
        for o in rest {
            o.emit(v.clone())?;
        }
        last.emit(v)?;
    }
    Ok(())
}

impl Output<WindowOutput<Value, Keyed>> for Split {
    fn emit(&mut self, item: WindowOutput<Value, Keyed>) -> Result<(), TaskError> {
        match item {
            WindowOutput::Result(r) => send(&mut self.results, r),
            // Late records leave as they came in, without the key and inputs.
            WindowOutput::Late((_, record, _)) => send(&mut self.late, record),
        }
    }
    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        for o in self.results.iter_mut().chain(self.late.iter_mut()) {
            o.signal(signal)?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        for o in self.results.iter_mut().chain(self.late.iter_mut()) {
            o.flush()?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn runtime_assigner(a: WindowAssigner, time: TimeCharacteristic) -> Option<RuntimeAssigner> {
    let domain = match time {
        TimeCharacteristic::Event => TimeDomain::EventTime,
        TimeCharacteristic::Processing => TimeDomain::ProcessingTime,
    };
    Some(match a {
        WindowAssigner::Tumbling { size } => RuntimeAssigner::Tumbling {
            size_ms: ms(size),
            offset_ms: 0,
            domain,
        },
        WindowAssigner::Sliding { size, slide } => RuntimeAssigner::Sliding {
            size_ms: ms(size),
            slide_ms: ms(slide),
            offset_ms: 0,
            domain,
        },
        WindowAssigner::Session { gap } => RuntimeAssigner::Session {
            gap_ms: ms(gap),
            domain,
        },
        WindowAssigner::Count { .. } => return None,
    })
}

/// The node of a `window` step. `key` is the keyBy step's program and name (none for a
/// window over all records); `with_late` when the step has a `lateOutput`.
pub(super) fn window_runtime(
    op: &WindowOp,
    key: Option<(Program, Arc<str>)>,
    with_late: bool,
    policy: &Arc<ErrorPolicy>,
) -> NodeRuntime {
    let function = WindowFunction::new(op);
    let op = op.clone();
    let policy = policy.clone();
    NodeRuntime::Transform(Arc::new(move |next: AnyBox, ctx: &SubtaskContext| {
        let handler: SharedHandler = Arc::new(Mutex::new(Handler::new(policy.clone(), ctx)?));
        let emit_handler = handler.clone();
        let emit_function = function.clone();
        let counted = matches!(op.assigner, WindowAssigner::Count { .. });
        let emit: EmitFn<Value, Acc, Value> = Arc::new(
            move |key: &Value, wctx: &WindowContext, acc: Acc, out: &mut Collector<'_, Value>| {
                let window = if counted {
                    count_window_value()
                } else {
                    window_value(wctx.window.start, wctx.window.end)
                };
                match emit_function.output(key, &window, &acc) {
                    Ok(v) => {
                        out.collect(v);
                        Ok(())
                    }
                    Err(e) => {
                        // The failing "record" is the window: its key, bounds and aggregates.
                        let what = Value::map([
                            ("key", key.clone()),
                            ("window", window),
                            ("aggregates", Value::list(emit_function.results(&acc))),
                        ]);
                        failed(&emit_handler, &what, e).map_err(|e| BoxError::from(e.to_string()))
                    }
                }
            },
        );
        let outputs: WindowOutputs<Value, Keyed> = if with_late {
            WindowOutputs::WithLate(unbox(next))
        } else {
            WindowOutputs::Plain(unbox(next))
        };
        let aggregator = SpecAggregator {
            function: function.clone(),
            handler: handler.clone(),
        };
        let key_fn: crate::operators::window::WindowKeyFn<Keyed, Value> =
            Arc::new(|(k, _, _): &Keyed| Ok(Cow::Borrowed(k)));
        let checkpoint = ctx.checkpoints.clone().map(|c| (c, ctx.uid.clone()));
        let restored = restored_states(ctx)?;
        let restore_error =
            |e: String| setup_error(ctx, format!("cannot restore window state: {e}"));
        let window: Box<dyn Output<Keyed>> = match op.assigner {
            WindowAssigner::Count { size, slide } => {
                let mut w = CountWindowOperator {
                    key: key_fn,
                    size,
                    slide,
                    agg: aggregator,
                    emit,
                    state: HashMapValueState::new(ctx.key_groups),
                    max_parallelism: ctx.max_parallelism,
                    out: outputs,
                    id: OpId::of(ctx),
                    checkpoint,
                };
                w.restore(&restored).map_err(restore_error)?;
                Box::new(w)
            }
            assigner => {
                let assigner = runtime_assigner(assigner, op.time).expect("a time window");
                let mut w = WindowOperator::new(
                    WindowSetup {
                        spec: WindowSpec {
                            assigner,
                            allowed_lateness_ms: ms(op.allowed_lateness),
                            clock: clock::system(),
                        },
                        key_groups: ctx.key_groups,
                        max_parallelism: ctx.max_parallelism,
                        id: OpId::of(ctx),
                        checkpoint,
                    },
                    key_fn,
                    aggregator,
                    emit,
                    outputs,
                );
                w.restore(&restored).map_err(restore_error)?;
                Box::new(w)
            }
        };
        let prepare: Box<dyn Output<Value>> = Box::new(Prepare {
            key: key.clone(),
            function: function.clone(),
            handler,
            next: window,
        });
        Ok(Box::new(prepare) as AnyBox)
    }))
}
