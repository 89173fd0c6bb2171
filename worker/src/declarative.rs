//! Runs a `StreamJob` spec: the validated steps become the same runtime graph the Rust API
//! builds, with CEL programs inside the operators and `Value` records on every edge. Node
//! ids and logical nodes are copied from `streamjob_crds::graph`, so the plan here is exactly
//! the plan the operator computes for the same spec.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use streamjob_crds::Partitioning;

use streamjob_crds::expr::{EachError, EvalError, Program, Value};
use streamjob_crds::graph::{JobGraph, WATERMARKS_OPERATOR, to_job_graph};
use streamjob_crds::keygroup::{StableKey, key_group_of_hash};
use streamjob_crds::spec::{SinkSpec, SourceSpec, StreamJob};
use streamjob_crds::validate::{StepOp, ValidatedJob, ValidationError, validate_job};

use crate::StreamExecutionEnvironment;
use crate::api::environment::source_runtime_of;
use crate::api::functions::{Sink, SinkWriter, Source};
use crate::api::graph::{AnyBox, EdgeDef, EdgeKind, NodeDef, NodeRuntime, Typed, TypedEdge, unbox};
use crate::codec::key_hash::stable_hash;
use crate::codec::state::{KeyedStateWriter, Restore, read_keyed_state};
use crate::connectors::blackhole::RecordCounter;
use crate::connectors::collection::CollectionSource;
use crate::connectors::file::FileSource;
use crate::connectors::file_sink::FileSink;
use crate::connectors::kafka;
use crate::connectors::nexmark::{GeneratorConfig, NexmarkSource};
use crate::connectors::print::PrintSink;
use crate::connectors::socket::SocketSource;
use crate::error::{BoxError, JobError, TaskError};

mod errors;
mod window;
pub mod window_fn;
use crate::operators::SinkOp;
use crate::runtime::checkpoint::Coordinator;
use crate::runtime::context::SubtaskContext;
use crate::runtime::message::Signal;
use crate::runtime::output::Output;
use crate::state::{HashMapValueState, ValueState};
use errors::{DeadLetterSink, ErrorPolicy, Handler};

/// Why a spec could not be turned into a runnable job.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ValidationError>),
    #[error("{path}: {message}")]
    Unsupported { path: String, message: String },
}

/// Counters of a declarative run, readable after `execute`.
#[derive(Debug, Clone, Default)]
pub struct SpecRun {
    /// Records dropped by `onError: skip`.
    pub skipped: Arc<AtomicU64>,
    /// Records sent to the dead-letter sink.
    pub dead_lettered: Arc<AtomicU64>,
    /// Records received by blackhole sinks.
    pub blackhole: RecordCounter,
}

/// Adds the job's steps to `env` (which must be empty) and sets its parallelism settings.
/// Relative file paths are resolved against `base_dir` (the manifest's directory).
pub fn build_job(
    env: &StreamExecutionEnvironment,
    job: &StreamJob,
    base_dir: &Path,
) -> Result<SpecRun, SpecError> {
    let validated = validate_job(job).map_err(SpecError::Invalid)?;
    let graph = to_job_graph(job);
    let spec = &job.spec;
    env.set_parallelism(spec.parallelism)
        .set_max_parallelism(spec.max_parallelism)
        .set_buffer_timeout(std::time::Duration::from_millis(spec.buffer_timeout_ms));
    if let Some(c) = &spec.checkpointing {
        // Relative local paths resolve against the manifest; URLs stay as they are.
        let local = |url: &str| {
            if url.starts_with("s3://") {
                url.to_string()
            } else {
                let path = resolve(base_dir, url.strip_prefix("file://").unwrap_or(url));
                path.display().to_string()
            }
        };
        env.enable_checkpointing(
            std::time::Duration::from_millis(c.interval_ms),
            local(&c.directory),
            c.retained as usize,
        );
        // Each source's input, by uid: a restore with another input is refused. Uids that
        // cannot be derived fail planning later with a clearer error.
        let uids = graph.graph.uids().unwrap_or_default();
        let sources = graph
            .graph
            .nodes
            .iter()
            .zip(&uids)
            .filter(|(node, _)| node.kind == streamjob_crds::NodeKind::Source)
            .filter_map(
                |(node, uid)| match &validated.step(graph.step_of(node.id)).op {
                    StepOp::Source(src) => Some((uid.clone(), source_identity(src, base_dir))),
                    _ => None,
                },
            )
            .collect();
        env.configure_checkpointing(|config| {
            config.savepoint_dir = c.savepoint_directory.as_deref().map(local);
            config.restore_from = spec.initial_savepoint_path.as_deref().map(local);
            config.allow_non_restored_state = spec.allow_non_restored_state;
            config.sources = sources;
            config.timeout = std::time::Duration::from_millis(c.checkpoint_timeout_ms());
            config.min_pause =
                std::time::Duration::from_millis(c.min_pause_between_checkpoints_ms());
            // Unset keeps running through failed checkpoints (they are logged and retried at
            // the next interval); a number fails the run after that many in a row.
            config.tolerable_failures = c.tolerable_checkpoint_failure_number;
        });
    }
    let run = SpecRun::default();
    let dead_letter = match &validated.dead_letter {
        Some((sink, _)) if let Some(f) = &sink.file => Some(DeadLetterSink::File(FileSink::new(
            resolve(base_dir, &f.path),
        ))),
        Some((sink, key)) => Some(DeadLetterSink::Other(sink_for(
            sink,
            key.clone(),
            base_dir,
            "spec.deadLetter",
            &run,
        )?)),
        None => None,
    };
    let policy = Arc::new(ErrorPolicy::new(spec.on_error, dead_letter, run.clone()));
    let builder = env.graph_builder();
    let mut g = builder.borrow_mut();
    assert!(g.nodes.is_empty(), "build_job needs an empty environment");
    // Which outgoing channels of each window node carry late records, in the order the
    // executor hands them to the node's output (its plan edges).
    let plan = graph.graph.plan().map_err(|e| SpecError::Unsupported {
        path: "spec.steps".into(),
        message: e.to_string(),
    })?;
    for (id, node) in graph.graph.nodes.iter().enumerate() {
        let step_index = graph.step_of(id);
        let step = validated.step(step_index);
        let path = format!("spec.steps[{step_index}]");
        let late_edges: Vec<bool> = plan
            .edges
            .iter()
            .filter(|e| e.from_node == id)
            .map(|e| {
                graph
                    .graph
                    .edges
                    .iter()
                    .zip(&graph.edge_late)
                    .any(|(l, late)| *late && l.from == e.from_node && l.to == e.to_node)
            })
            .collect();
        let with_late = late_edges.iter().any(|l| *l);
        let runtime = if node.operator == WATERMARKS_OPERATOR {
            let w = step
                .watermarks
                .as_ref()
                .expect("validated: watermarks compiled");
            match &step.op {
                // The Kafka source tracks watermarks per partition itself.
                StepOp::Source(src) if src.kafka.is_some() => {
                    NodeRuntime::Transform(Arc::new(|next: AnyBox, _: &SubtaskContext| Ok(next)))
                }
                _ => window::watermarks_runtime(w, &policy),
            }
        } else if let StepOp::Window(w) = &step.op {
            let key = graph.key_by_of(id).and_then(|k| {
                Some((
                    validated.key_program(k)?.clone(),
                    Arc::from(validated.step(k).name.as_str()),
                ))
            });
            window::window_runtime(w, key, with_late, &policy)
        } else {
            node_runtime(
                &step.op, &graph, &validated, id, base_dir, &path, &policy, &run,
            )?
        };
        let output: Arc<dyn crate::api::graph::OutputKind> = if with_late {
            Arc::new(window::LateSplit { late: late_edges })
        } else {
            Arc::new(Typed::<Value>::new())
        };
        g.nodes.push(NodeDef {
            logical: node.clone(),
            runtime,
            output,
        });
    }
    for (e, key_by) in graph.graph.edges.iter().zip(&graph.edge_key_by) {
        let key_hash = match (e.partitioning, key_by) {
            (Partitioning::Hash, Some(k)) => {
                let program = validated
                    .key_program(*k)
                    .expect("keyBy steps carry a program")
                    .clone();
                // A key that fails to evaluate is routed anywhere: the keyed operator
                // evaluates it again and applies the onError policy there. Every keyed
                // operator (reduce, window) places keys by this same hash: `Value`'s own
                // stable hash, which is the codec's (codec::key_hash's tests assert it)
                // without its serde walk.
                Some(Arc::new(move |v: &Value| {
                    program.eval_cow(&[v]).map(|k| k.stable_hash()).unwrap_or(0)
                })
                    as Arc<dyn Fn(&Value) -> u64 + Send + Sync>)
            }
            _ => None,
        };
        let kind: Arc<dyn EdgeKind> = Arc::new(TypedEdge::<Value>::new(key_hash));
        g.edges.push(EdgeDef { logical: *e, kind });
    }
    Ok(run)
}

/// Builds an expression operator around its downstream output and error handler.
type MakeOp = Arc<dyn Fn(Box<dyn Output<Value>>, Handler) -> Box<dyn Output<Value>> + Send + Sync>;

#[allow(clippy::too_many_arguments)]
fn node_runtime(
    op: &StepOp,
    graph: &JobGraph,
    validated: &ValidatedJob,
    node: usize,
    base_dir: &Path,
    path: &str,
    policy: &Arc<ErrorPolicy>,
    run: &SpecRun,
) -> Result<NodeRuntime, SpecError> {
    let transform = |make: MakeOp| {
        let policy = policy.clone();
        NodeRuntime::Transform(Arc::new(move |next: AnyBox, ctx: &SubtaskContext| {
            let handler = Handler::new(policy.clone(), ctx)?;
            Ok(Box::new(make(unbox(next), handler)) as AnyBox)
        }))
    };
    let expr_op = |kind: Kind, program: &Program| {
        let program = program.clone();
        transform(Arc::new(move |next, handler| {
            Box::new(ExprOp {
                kind,
                program: program.clone(),
                next,
                handler,
            })
        }))
    };
    Ok(match op {
        StepOp::Source(src) => {
            let watermarks = validated.step(graph.step_of(node)).watermarks.as_ref();
            source_runtime(src, watermarks, base_dir, path, policy)?
        }
        StepOp::Map(p) => expr_op(Kind::Map, p),
        StepOp::Filter(p) => expr_op(Kind::Filter, p),
        StepOp::FlatMap(p) => expr_op(Kind::FlatMap, p),
        StepOp::Reduce(p) => {
            let key_step = graph.key_by_of(node);
            let key = key_step
                .and_then(|k| validated.key_program(k))
                .ok_or_else(|| SpecError::Unsupported {
                    path: format!("{path}.reduce"),
                    message: "reduce needs a keyBy step as its input".into(),
                })?
                .clone();
            let key_step: Arc<str> = key_step.map_or("keyBy".into(), |k| {
                Arc::from(validated.step(k).name.as_str())
            });
            let p = p.clone();
            let policy = policy.clone();
            NodeRuntime::Transform(Arc::new(move |next: AnyBox, ctx: &SubtaskContext| {
                let mut op = ExprReduce {
                    key: key.clone(),
                    key_step: key_step.clone(),
                    last_snapshot: 0,
                    pairs: p.slot_count() == Some(2),
                    program: p.clone(),
                    state: HashMapValueState::new(ctx.key_groups),
                    max_parallelism: ctx.max_parallelism,
                    next: unbox(next),
                    handler: Handler::new(policy.clone(), ctx)?,
                    checkpoints: ctx
                        .checkpoints
                        .clone()
                        .map(|c| (c, ctx.uid.clone(), ctx.subtask)),
                };
                if let Some(c) = &ctx.checkpoints {
                    let restore_error = |e: String| JobError::Setup {
                        operator: ctx.operator.to_string(),
                        message: format!("cannot restore keyed state: {e}"),
                    };
                    let snapshots = c
                        .restored_states(&ctx.uid)
                        .map_err(|e| restore_error(e.to_string()))?;
                    op.restore(&snapshots).map_err(restore_error)?;
                }
                Ok(Box::new(Box::new(op) as Box<dyn Output<Value>>) as AnyBox)
            }))
        }
        StepOp::Sink { spec, key } => {
            let sink = sink_for(spec, key.clone(), base_dir, &format!("{path}.sink"), run)?;
            NodeRuntime::Sink(Arc::new(move |ctx: &SubtaskContext| {
                Ok(
                    Box::new(Box::new(SinkOp::create(&*sink, ctx)?) as Box<dyn Output<Value>>)
                        as AnyBox,
                )
            }))
        }
        StepOp::Window(_) => unreachable!("window nodes are built by window_runtime"),
        StepOp::KeyBy(_) | StepOp::Rebalance => {
            unreachable!("keyBy and rebalance are edges, not nodes")
        }
    })
}

fn resolve(base_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

fn source_runtime(
    src: &SourceSpec,
    watermarks: Option<&streamjob_crds::validate::Watermarks>,
    base_dir: &Path,
    path: &str,
    policy: &Arc<ErrorPolicy>,
) -> Result<NodeRuntime, SpecError> {
    /// Lines of a text source that are not UTF-8 follow the job's onError policy: the job
    /// fails naming the source and offset, the line is skipped and counted, or its raw bytes
    /// go to the dead-letter sink.
    fn invalid_line_policy(
        policy: &Arc<ErrorPolicy>,
    ) -> impl Fn(&SubtaskContext) -> Result<crate::connectors::lines::InvalidLineHandler, BoxError>
    + Send
    + Sync
    + 'static {
        let policy = policy.clone();
        move |ctx| {
            let mut handler = Handler::new(policy.clone(), ctx)?;
            Ok(
                Box::new(move |line: &crate::connectors::lines::InvalidLine<'_>| {
                    let raw = Value::Bytes(line.bytes.into());
                    let message = line.describe();
                    handler
                        .failed(&raw, EvalError { message })
                        .and_then(|()| handler.flush())
                        .map_err(|e| BoxError::from(e.message))
                }) as crate::connectors::lines::InvalidLineHandler,
            )
        }
    }
    let source: Arc<dyn Source<Value>> = if let Some(c) = &src.collection {
        Arc::new(CollectionSource::new(
            c.values.iter().cloned().map(Value::from).collect(),
        ))
    } else if let Some(s) = &src.socket {
        let retry = if s.max_retry == 0 {
            0
        } else {
            i64::from(s.max_retry)
        };
        let mut source = SocketSource::with_records(&s.host, s.port, retry, string_value)
            .on_invalid_utf8(invalid_line_policy(policy));
        if let Some(ms) = s.connect_timeout_ms {
            source = source.connect_timeout(std::time::Duration::from_millis(ms));
        }
        Arc::new(source)
    } else if let Some(f) = &src.file {
        Arc::new(
            FileSource::with_records(resolve(base_dir, &f.path), string_value)
                .on_invalid_utf8(invalid_line_policy(policy)),
        )
    } else if let Some(k) = &src.kafka {
        let at = format!("{path}.source.kafka");
        let policy = policy.clone();
        let source = kafka::spec::source(
            k,
            &at,
            src.watermarks
                .as_ref()
                .is_some_and(|w| w.timestamp.is_none()),
        )
        .map_err(|message| SpecError::Unsupported { path: at, message })?;
        let source = match watermarks {
            Some(w) => source.with_spec_watermarks(w),
            None => source,
        };
        Arc::new(source.on_malformed(move |ctx| {
            // Payloads that do not decode follow the job's onError policy.
            let mut handler = Handler::new(policy.clone(), ctx)?;
            Ok(Box::new(move |r: &kafka::KafkaRecord<'_>, e: BoxError| {
                let message = format!("record {}: {e}", r.position());
                handler
                    .failed(&kafka::spec::describe_malformed(r), EvalError { message })
                    .map_err(|e| BoxError::from(e.message))
            }) as kafka::MalformedHandler)
        }))
    } else if let Some(n) = &src.nexmark {
        Arc::new(NexmarkSource::with_records(
            nexmark_config(n),
            |e: crate::connectors::nexmark::Event| e.to_value(),
        ))
    } else {
        unreachable!("validated: a source sets exactly one kind")
    };
    Ok(source_runtime_of(source))
}

/// The settings that decide what a source's checkpointed position refers to: which file,
/// topics on which cluster, which address, which values. Other settings (retries, offsets
/// used only on a fresh start, consumer properties) may change across a restore.
fn source_identity(src: &SourceSpec, base_dir: &Path) -> serde_json::Value {
    use serde_json::json;
    if let Some(f) = &src.file {
        json!({"file": {"path": resolve(base_dir, &f.path).display().to_string()}})
    } else if let Some(k) = &src.kafka {
        let mut servers: Vec<&str> = k.bootstrap_servers.split(',').map(str::trim).collect();
        servers.sort_unstable();
        let mut topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
        topics.sort_unstable();
        json!({"kafka": {"bootstrapServers": servers.join(","), "topics": topics.join(",")}})
    } else if let Some(s) = &src.socket {
        json!({"socket": {"host": s.host, "port": s.port}})
    } else if let Some(n) = &src.nexmark {
        // Positions are event numbers: the same numbers mean the same events only with
        // the same rate and start.
        json!({"nexmark": {
            "eventsPerSecond": n.events_per_second,
            "firstEventTimeMs": n.first_event_time_ms,
        }})
    } else if let Some(c) = &src.collection {
        let bytes = serde_json::to_vec(&c.values).unwrap_or_default();
        json!({"collection": {
            "values": c.values.len(),
            "xxh3": format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)),
        }})
    } else {
        serde_json::Value::Null
    }
}

fn sink_for(
    spec: &SinkSpec,
    key: Option<Program>,
    base_dir: &Path,
    path: &str,
    run: &SpecRun,
) -> Result<Arc<dyn Sink<Value>>, SpecError> {
    Ok(if spec.print.is_some() {
        Arc::new(PrintSink::<Value>::with_format(|v, s| {
            use std::fmt::Write as _;
            let _ = write!(s, "{v}");
        }))
    } else if let Some(f) = &spec.file {
        Arc::new(FileSink::<Value>::new(resolve(base_dir, &f.path)))
    } else if spec.blackhole.is_some() {
        Arc::new(SharedBlackhole(run.blackhole.clone()))
    } else if let Some(k) = &spec.kafka {
        let at = format!("{path}.kafka");
        Arc::new(
            kafka::spec::sink(k, key, &at)
                .map_err(|message| SpecError::Unsupported { path: at, message })?,
        )
    } else {
        unreachable!("validated: a sink sets exactly one kind")
    })
}

fn nexmark_config(n: &streamjob_crds::spec::NexmarkSource) -> GeneratorConfig {
    GeneratorConfig {
        events: n.events,
        events_per_second: n.events_per_second,
        first_event_time_ms: n.first_event_time_ms,
        max_events_per_second: n.max_events_per_second,
    }
}

/// A line of a text source as a record.
fn string_value(line: &str) -> Value {
    Value::from(line)
}

/// Blackhole that counts into the run's shared counter.
struct SharedBlackhole(RecordCounter);

impl Sink<Value> for SharedBlackhole {
    fn kind(&self) -> &'static str {
        "blackhole"
    }
    fn create_writer(&self, _ctx: &SubtaskContext) -> Result<Box<dyn SinkWriter<Value>>, BoxError> {
        let _ = &self.0;
        Ok(Box::new(CountingWriter {
            local: 0,
            counter: self.0.clone(),
        }))
    }
}

struct CountingWriter {
    local: u64,
    counter: RecordCounter,
}

impl SinkWriter<Value> for CountingWriter {
    fn write(&mut self, _item: Value) -> Result<(), BoxError> {
        self.local += 1;
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BoxError> {
        self.counter.add(std::mem::take(&mut self.local));
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Map,
    Filter,
    FlatMap,
}

/// `map`, `filter` and `flatMap` steps.
struct ExprOp {
    kind: Kind,
    program: Program,
    next: Box<dyn Output<Value>>,
    handler: Handler,
}

impl Output<Value> for ExprOp {
    fn emit(&mut self, item: Value) -> Result<(), TaskError> {
        match self.kind {
            Kind::Map => match self.program.eval(&[&item]) {
                Ok(v) => self.next.emit(v),
                Err(e) => self.handler.failed(&item, e),
            },
            Kind::Filter => match self.program.eval_bool(&[&item]) {
                Ok(true) => self.next.emit(item),
                Ok(false) => Ok(()),
                Err(e) => self.handler.failed(&item, e),
            },
            Kind::FlatMap => {
                let next = &mut self.next;
                match self.program.eval_each(&[&item], |v| next.emit(v)) {
                    Ok(()) => Ok(()),
                    Err(EachError::Emit(e)) => Err(e),
                    Err(EachError::Eval(e)) => self.handler.failed(&item, e),
                    Err(EachError::NotAList(t)) => {
                        let e = EvalError {
                            message: format!("flatMap must return a list, got {t}"),
                        };
                        self.handler.failed(&item, e)
                    }
                }
            }
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

/// A reduce's accumulator in its state entry.
enum Acc {
    /// A two-element list (`[word, count]`, `[key, sum]`) whose program reads it only
    /// element by element ([`Program::update_slots`]), held as its elements: the update
    /// reads and writes them inside the table entry instead of behind the list's shared
    /// allocation, a cache miss per record in the word count's profile.
    Pair([Value; 2]),
    /// Any other accumulator.
    Whole(Value),
}

impl Acc {
    fn new(value: Value, pairs: bool) -> Acc {
        match &value {
            Value::List(items) if pairs && items.len() == 2 => {
                Acc::Pair([items[0].clone(), items[1].clone()])
            }
            _ => Acc::Whole(value),
        }
    }

    /// The accumulator as a value (snapshots).
    fn to_value(&self) -> Value {
        match self {
            Acc::Pair(items) => Value::list(items.to_vec()),
            Acc::Whole(v) => v.clone(),
        }
    }
}

/// A list of `items`, written into `reuse`'s allocation when that is a list of the same
/// length nobody else holds (the record being reduced, as a chained map built it).
fn list_into(reuse: Value, items: &[Value]) -> Value {
    if let Value::List(mut list) = reuse
        && list.len() == items.len()
        && let Some(slots) = Arc::get_mut(&mut list)
    {
        slots.clone_from_slice(items);
        return Value::List(list);
    }
    Value::list(items.to_vec())
}

/// `reduce` step: per key (from the keyBy expression) `acc = expr(acc, value, key)`; the
/// first record of a key becomes its accumulator. Every new accumulator is emitted.
struct ExprReduce {
    key: Program,
    /// Name of the keyBy step, for errors about its keys.
    key_step: Arc<str>,
    /// Bytes of the last snapshot, to size the next one's buffer.
    last_snapshot: usize,
    program: Program,
    /// Whether two-element accumulators are held as [`Acc::Pair`].
    pairs: bool,
    state: HashMapValueState<Value, Acc>,
    max_parallelism: u32,
    next: Box<dyn Output<Value>>,
    handler: Handler,
    /// Where snapshots go: (coordinator, operator uid, subtask).
    checkpoints: Option<(Arc<Coordinator>, Arc<str>, u32)>,
}

impl ExprReduce {
    /// Appends the keyed state in the versioned keyed-state format (`codec::state`, the
    /// same as the Rust API's reduce), key group by key group, to `out`. Encoding straight
    /// from the table keeps one compact copy of the state while it is written, not a second
    /// table of cloned entries.
    fn encode_state(&self, out: &mut Vec<u8>) {
        let mut w = KeyedStateWriter::appending_to(std::mem::take(out));
        for g in self.state.key_groups().as_range() {
            self.state
                .for_each_in_group(g, &mut |k: &Value, acc: &Acc| {
                    let v = match acc {
                        Acc::Whole(v) => Cow::Borrowed(v),
                        pair => Cow::Owned(pair.to_value()),
                    };
                    w.push(g, k, &*v).expect("a Value always encodes");
                });
        }
        *out = w.finish();
    }

    /// An empty state file for this subtask with room for the whole state: growing the
    /// buffer while encoding would hold the old and the new buffer at once.
    fn state_file(&self, uid: &str, subtask: u32) -> Vec<u8> {
        let want = (self.last_snapshot + self.last_snapshot / 4).max(self.state.len() * 24);
        crate::runtime::checkpoint::format::envelope(uid, subtask, want)
    }

    /// Loads the entries of this subtask's key groups from every old subtask's snapshot, so
    /// a restore may use another parallelism.
    fn restore(&mut self, snapshots: &[(u32, Vec<u8>)]) -> Result<(), String> {
        let restore = Restore {
            owned: self.state.key_groups(),
            max_parallelism: self.max_parallelism,
            hash: |key: &Value| stable_hash(key),
        };
        let pairs = self.pairs;
        for (subtask, snap) in snapshots {
            let state = &mut self.state;
            read_keyed_state(snap, &restore, |g, hash, key: Value, acc: Value| {
                state.put(g, hash, key, Acc::new(acc, pairs))
            })
            .map_err(|e| format!("state of old subtask {subtask}: {e}"))?;
        }
        Ok(())
    }
}

impl ExprReduce {
    /// `key_hash` is the router's hash of this record's key when it came over a hash edge
    /// keyed by the same program: `Value::stable_hash`, as below, so it is not computed twice.
    fn reduce(&mut self, item: Value, key_hash: Option<u64>) -> Result<(), TaskError> {
        let args = [&item];
        let key: Cow<'_, Value> = match self.key.eval_cow(&args) {
            Ok(k) => k,
            Err(e) => return self.handler.failed(&item, e),
        };
        // The static check admits an expression whose type it cannot know (`parseJson`);
        // grouping by a list, map, null or double would be grouping by something no key
        // type means, so such a record follows the onError policy.
        if !matches!(&*key, Value::String(_) | Value::Int(_) | Value::UInt(_)) {
            let message = format!(
                "keyBy step '{}' returned a {} ({}); a key must be a string, int or uint",
                self.key_step,
                key.value_type().name(),
                key
            );
            return self.handler.failed(&item, EvalError { message });
        }
        // `Value`'s own stable hash, equal to the codec's (the router's and a restore's).
        debug_assert!(
            key_hash.is_none_or(|h| h == key.stable_hash()),
            "the router hashed key {key} differently"
        );
        let hash = key_hash.unwrap_or_else(|| key.stable_hash());
        let group = key_group_of_hash(hash, self.max_parallelism);
        match self.state.get_mut(group, hash, &key) {
            Some(Acc::Pair(slots)) => match self.program.update_slots(slots, &[&item, &key]) {
                Ok(()) => {
                    drop(key);
                    // The record's own list, when nobody else holds it, carries the new
                    // accumulator on: no allocation per record.
                    self.next.emit(list_into(item, slots))
                }
                Err(e) => self.handler.failed(&item, e),
            },
            Some(Acc::Whole(acc)) => {
                // In place: when the emitted copy of the previous accumulator has been
                // dropped downstream (a chained sink), the list is reused, not reallocated.
                match self.program.eval_update(acc, &[&item, &key]) {
                    Ok(()) => self.next.emit(acc.clone()),
                    Err(e) => self.handler.failed(&item, e),
                }
            }
            None => {
                let key = key.into_owned();
                self.state
                    .put(group, hash, key, Acc::new(item.clone(), self.pairs));
                self.next.emit(item)
            }
        }
    }
}

impl Output<Value> for ExprReduce {
    fn emit(&mut self, item: Value) -> Result<(), TaskError> {
        self.reduce(item, None)
    }
    fn emit_keyed(&mut self, item: Value, key_hash: u64) -> Result<(), TaskError> {
        self.reduce(item, Some(key_hash))
    }
    fn signal(&mut self, signal: Signal) -> Result<(), TaskError> {
        self.handler.flush()?;
        if let (Signal::EndOfInput, Some((c, uid, subtask))) = (signal, self.checkpoints.clone()) {
            let mut file = self.state_file(&uid, subtask);
            self.encode_state(&mut file);
            c.register_final_file(&uid, subtask, file);
        }
        if let (Signal::Barrier(b), Some((c, uid, subtask))) = (signal, self.checkpoints.clone()) {
            // Processing pauses while the state is encoded (into its state file's envelope,
            // so it is not copied again); the write happens on another thread and the
            // checkpoint completes when it is done.
            let started = std::time::Instant::now();
            let mut file = self.state_file(&uid, subtask);
            self.encode_state(&mut file);
            self.last_snapshot = file.len();
            let paused = started.elapsed();
            c.begin_write(b.id);
            let keys = self.state.len();
            std::thread::spawn(move || {
                let bytes = file.len();
                let written = c.write_file(b.id, &uid, subtask, file);
                tracing::debug!(checkpoint = b.id, keys, bytes, ?paused, took = ?started.elapsed(), "reduce state snapshot");
                let _ = c.end_write(b.id, written);
            });
        }
        self.next.signal(signal)
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        self.handler.flush()?;
        self.next.flush()
    }
}
