//! Semantic validation of a `StreamJob`, shared by the CLI (`streamjob validate`) and the
//! operator, plus manifest parsing.
//!
//! [`validate`] checks everything that can be known before running: the step graph (inputs,
//! kinds, sources and sinks, keyed steps), parallelism, connector settings and the CEL
//! expressions, which it compiles. It returns **all** problems at once, each with the path of
//! the offending field (`spec.steps[2].keyBy.expr`) and what is expected, or on success a
//! [`ValidatedJob`] holding the compiled expressions, ready for the runtime.

use std::collections::HashMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::expr::{Program, ValueType, excerpt};
use crate::keygroup::MAX_MAX_PARALLELISM;
mod time;
pub use time::{
    Aggregate, DEFAULT_WATERMARK_INTERVAL, WINDOW_REDUCE_VARS, Watermarks, WindowAggregation,
    WindowAssigner, WindowOp, upstream_sources,
};

use crate::spec::{
    DeliveryGuarantee, KafkaSink, KafkaSource, OnError, SecretKeyRef, SinkSpec, SourceSpec,
    StartingOffsets, StreamJob, StreamJobSpec, StreamJobStatus,
};

/// Variables of `map`, `filter`, `flatMap`, `keyBy` expressions and of the Kafka sink `key`
/// and `headers`.
pub const VALUE_VARS: &[&str] = &["value"];
/// Variables of a Kafka source's `value` and `watermarks.timestamp` expressions: the decoded
/// payload and the Kafka record (`key`, `headers`, `timestamp`, `topic`, `partition`,
/// `offset`), which exists only there: later steps see only what the value carries.
pub const KAFKA_RECORD_VARS: &[&str] = &["value", "record"];
/// Variables of `reduce` expressions, in binding order.
pub const REDUCE_VARS: &[&str] = &["acc", "value", "key"];

/// Longest job name: pods are named `<job>-worker-<i>` and the StatefulSet controller adds a
/// revision-hash label built from `<job>-worker`, which must stay within 63 characters.
pub const MAX_JOB_NAME_LEN: usize = 45;
/// Time a restarted worker may take to come back and commit a pending Kafka transaction,
/// beyond the restart strategy's delay (pod scheduling, image pull, broker reconnect).
pub const RESTART_ALLOWANCE_MS: u64 = 60_000;

/// One problem with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Path of the offending field, e.g. `spec.steps[2].keyBy.expr`.
    pub path: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ValidationError {}

/// A step of a validated job, with its inputs resolved and its expressions compiled.
#[derive(Debug, Clone)]
pub struct ValidatedStep {
    pub name: String,
    /// Indices (into `spec.steps`) of the steps it reads.
    pub inputs: Vec<usize>,
    /// Effective parallelism (its own or the job's).
    pub parallelism: u32,
    pub op: StepOp,
    /// A source's compiled `watermarks`.
    pub watermarks: Option<Watermarks>,
}

/// What a step does, with compiled expressions.
#[derive(Debug, Clone)]
pub enum StepOp {
    Source(SourceSpec),
    /// Variables: `value`.
    Map(Program),
    /// Variables: `value`; result is a bool.
    Filter(Program),
    /// Variables: `value`; result is a list.
    FlatMap(Program),
    /// Variables: `value`; result is a string or an int.
    KeyBy(Program),
    /// Variables: `acc`, `value`, `key` ([`REDUCE_VARS`]).
    Reduce(Program),
    Window(Box<WindowOp>),
    Rebalance,
    /// `key` is the compiled Kafka record-key expression (variables: `value`).
    Sink {
        spec: SinkSpec,
        key: Option<Program>,
    },
}

/// A job that passed [`validate`]: `steps[i]` is `spec.steps[i]`, compiled.
#[derive(Debug, Clone)]
pub struct ValidatedJob {
    pub steps: Vec<ValidatedStep>,
    /// The dead-letter sink (with its compiled key expression) when `onError: deadLetter`.
    pub dead_letter: Option<(SinkSpec, Option<Program>)>,
}

impl ValidatedJob {
    /// The compiled step a graph node came from (`node_step` from [`crate::graph::JobGraph`]).
    pub fn step(&self, step_index: usize) -> &ValidatedStep {
        &self.steps[step_index]
    }

    /// The key expression of a `keyBy` step (e.g. from [`crate::graph::JobGraph::key_by_of`]).
    pub fn key_program(&self, key_by_step: usize) -> Option<&Program> {
        match &self.steps.get(key_by_step)?.op {
            StepOp::KeyBy(p) => Some(p),
            _ => None,
        }
    }
}

/// Validates a spec. `Ok` carries the compiled job; `Err` carries every problem found
/// (never empty), in spec order.
pub fn validate(spec: &StreamJobSpec) -> Result<ValidatedJob, Vec<ValidationError>> {
    let mut v = Validator::default();
    let job = v.spec(spec);
    if v.errors.is_empty() {
        Ok(job)
    } else {
        Err(v.errors)
    }
}

/// [`validate`] plus the checks on the resource itself (`metadata.name`).
pub fn validate_job(job: &StreamJob) -> Result<ValidatedJob, Vec<ValidationError>> {
    let mut errors = Vec::new();
    match job.metadata.name.as_deref() {
        None | Some("") => errors.push(err("metadata.name", "the job needs a name")),
        Some(name) => {
            if !is_dns_label(name) || name.len() > MAX_JOB_NAME_LEN {
                errors.push(err(
                    "metadata.name",
                    format!(
                        "'{name}' is not a valid job name: use lowercase letters, digits and '-', \
                         starting with a letter, ending with a letter or digit, at most \
                         {MAX_JOB_NAME_LEN} characters"
                    ),
                ));
            } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                errors.push(err(
                    "metadata.name",
                    format!("'{name}' must start with a lowercase letter"),
                ));
            }
        }
    }
    match validate(&job.spec) {
        Ok(v) if errors.is_empty() => Ok(v),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.extend(e);
            Err(errors)
        }
    }
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        path: path.into(),
        message: message.into(),
    }
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Kafka client properties that hold credentials and must come from `secretProperties`.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.contains("jaas")
        || k == "ssl.key.pem"
        || k == "ssl.keystore.key"
        || k == "sasl.oauthbearer.config"
}

/// Inputs of each step as spec indices, resolved best-effort: explicit `input` names that
/// exist and come earlier, else the previous step (none for sources and the first step).
pub fn resolve_inputs(spec: &StreamJobSpec) -> Vec<Vec<usize>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::with_capacity(spec.steps.len());
    let late = late_output_targets(spec);
    for (i, step) in spec.steps.iter().enumerate() {
        let inputs = match (&step.input, step.source.is_some() || late.contains_key(&i)) {
            (Some(names), _) => names
                .iter()
                .filter_map(|n| index.get(n.as_str()).copied())
                .collect(),
            (None, true) => Vec::new(),
            (None, false) if i > 0 => vec![i - 1],
            (None, false) => Vec::new(),
        };
        out.push(inputs);
        index.entry(step.name.as_str()).or_insert(i);
    }
    out
}

/// Steps named by a window's `lateOutput` (step index -> window step index). They read the
/// late records, and the step before them only if their `input` says so.
pub fn late_output_targets(spec: &StreamJobSpec) -> HashMap<usize, usize> {
    let mut out = HashMap::new();
    for (i, step) in spec.steps.iter().enumerate() {
        if let Some(name) = step.window.as_ref().and_then(|w| w.late_output.as_ref())
            && let Some(k) = spec.steps.iter().position(|s| &s.name == name)
            && k > i
        {
            out.entry(k).or_insert(i);
        }
    }
    out
}

#[derive(Default)]
struct Validator {
    errors: Vec<ValidationError>,
}

impl Validator {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(err(path, message));
    }

    fn spec(&mut self, spec: &StreamJobSpec) -> ValidatedJob {
        let max = spec.max_parallelism;
        let max_ok = (1..=MAX_MAX_PARALLELISM).contains(&max);
        if !max_ok {
            self.push(
                "spec.maxParallelism",
                format!("must be between 1 and {MAX_MAX_PARALLELISM}, got {max}"),
            );
        }
        if spec.parallelism == 0 {
            self.push("spec.parallelism", "must be at least 1, got 0");
        } else if max_ok && spec.parallelism > max {
            self.push(
                "spec.parallelism",
                format!(
                    "{} exceeds maxParallelism {max} (the number of key groups); \
                     raise maxParallelism or lower parallelism",
                    spec.parallelism
                ),
            );
        }
        if let Some(c) = &spec.checkpointing {
            self.checkpointing(c);
            for (i, step) in spec.steps.iter().enumerate() {
                let eo = step
                    .sink
                    .as_ref()
                    .and_then(|s| s.kafka.as_ref())
                    .filter(|k| {
                        k.delivery_guarantee == crate::spec::DeliveryGuarantee::ExactlyOnce
                    });
                // A transaction stays open until the checkpoint after it completes and, after
                // a crash, until the restarted job commits it: a broker that expires it first
                // aborts committed output.
                let needed = c
                    .interval_ms
                    .saturating_mul(2)
                    .saturating_add(spec.restart_strategy.max_delay_ms)
                    .saturating_add(RESTART_ALLOWANCE_MS);
                // `streamjob run` refuses what the sink's transaction-coordinator client
                // cannot speak: refusing it here too keeps the operator from deploying pods
                // that crash-loop. Only the names of secretProperties are known here: what
                // depends on their values the shared check leaves to run.
                if let Some(k) = eo
                    && let Some((key, why)) =
                        crate::kafka_security::transaction_client_refusal(|p| {
                            crate::kafka_security::Property::of(
                                k.properties.get(p).map(String::as_str),
                                k.secret_properties.contains_key(p),
                            )
                        })
                {
                    let field = if k.secret_properties.contains_key(key) {
                        "secretProperties"
                    } else {
                        "properties"
                    };
                    self.push(format!("spec.steps[{i}].sink.kafka.{field}.{key}"), why);
                }
                if let Some(k) = eo
                    && k.transaction_timeout_ms <= needed
                {
                    self.push(
                        format!("spec.steps[{i}].sink.kafka.transactionTimeoutMs"),
                        format!(
                            "{} ms is too short: it must exceed twice the checkpoint interval plus \
                             restartStrategy.maxDelayMs plus {RESTART_ALLOWANCE_MS} ms to restart \
                             (more than {needed} ms), or the broker may abort a transaction that \
                             belongs to a complete checkpoint",
                            k.transaction_timeout_ms
                        ),
                    );
                }
            }
        } else if spec.upgrade_mode != crate::spec::UpgradeMode::Stateless {
            self.push(
                "spec.upgradeMode",
                format!(
                    "{} needs spec.checkpointing (savepoints and checkpoints are written there); \
                     set checkpointing or use upgradeMode: stateless",
                    serde_json::to_value(spec.upgrade_mode)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
            );
        }
        for (i, e) in spec.env.iter().enumerate() {
            if e.name.starts_with("STREAMJOB_") || e.name.starts_with("POD_") {
                self.push(
                    format!("spec.env[{i}].name"),
                    format!(
                        "'{}' is reserved: the operator sets STREAMJOB_* and POD_* variables",
                        e.name
                    ),
                );
            }
        }
        let r = &spec.restart_strategy;
        if r.max_delay_ms < r.initial_delay_ms {
            self.push(
                "spec.restartStrategy.maxDelayMs",
                format!(
                    "{} is below initialDelayMs {}",
                    r.max_delay_ms, r.initial_delay_ms
                ),
            );
        }
        if let Some(p) = &spec.initial_savepoint_path {
            self.storage_url(p, "spec.initialSavepointPath");
        }
        if let Some(image) = &spec.image
            && image.trim().is_empty()
        {
            self.push(
                "spec.image",
                "must not be empty; omit it to use the default image",
            );
        }

        let dead_letter = match (spec.on_error, &spec.dead_letter) {
            (OnError::DeadLetter, None) => {
                self.push(
                    "spec.deadLetter",
                    "onError is deadLetter, so a deadLetter sink is required (e.g. deadLetter: {kafka: {...}})",
                );
                None
            }
            (OnError::DeadLetter, Some(sink)) => {
                let key = self.sink(sink, "spec.deadLetter");
                Some((sink.clone(), key))
            }
            (other, Some(_)) => {
                self.push(
                    "spec.deadLetter",
                    format!(
                        "a deadLetter sink is set but onError is {}; set onError: deadLetter or remove it",
                        match other {
                            OnError::Fail => "fail",
                            _ => "skip",
                        }
                    ),
                );
                None
            }
            (_, None) => None,
        };

        let steps = self.steps(spec);
        ValidatedJob { steps, dead_letter }
    }

    fn steps(&mut self, spec: &StreamJobSpec) -> Vec<ValidatedStep> {
        if spec.steps.is_empty() {
            self.push(
                "spec.steps",
                "the job has no steps: it needs at least a source and a sink",
            );
            return Vec::new();
        }
        if !spec.steps.iter().any(|s| s.source.is_some()) {
            self.push(
                "spec.steps",
                "the job has no source step (add a step with source: ...)",
            );
        }
        if !spec.steps.iter().any(|s| s.sink.is_some()) {
            self.push(
                "spec.steps",
                "the job has no sink step (add a step with sink: ...)",
            );
        }

        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut uids: HashMap<&str, usize> = HashMap::new();
        let mut consumed = vec![false; spec.steps.len()];
        let mut out = Vec::with_capacity(spec.steps.len());
        let kinds: Vec<Option<&'static str>> = spec.steps.iter().map(|s| s.kind()).collect();
        let late = late_output_targets(spec);
        let all_inputs = resolve_inputs(spec);
        for (&target, &window) in &late {
            if all_inputs[target].contains(&window) {
                self.push(
                    format!("spec.steps[{window}].window.lateOutput"),
                    format!(
                        "step '{}' reads this window's results too; late records go to a step \
                         that does not read the window",
                        spec.steps[target].name
                    ),
                );
            }
            if matches!(kinds[target], Some("keyBy" | "rebalance")) {
                self.push(
                    format!("spec.steps[{window}].window.lateOutput"),
                    format!(
                        "step '{}' is a {} step; late records go to a step that processes them \
                         (a sink, map, filter, ...)",
                        spec.steps[target].name,
                        kinds[target].unwrap_or("?")
                    ),
                );
            }
        }

        for (i, step) in spec.steps.iter().enumerate() {
            let at = format!("spec.steps[{i}]");
            // Name.
            if !is_dns_label(&step.name) {
                self.push(
                    format!("{at}.name"),
                    format!(
                        "'{}' is not a valid step name: use 1-63 lowercase letters, digits and '-', \
                         starting and ending with a letter or digit",
                        step.name
                    ),
                );
            }
            if let Some(&first) = names.get(step.name.as_str()) {
                self.push(
                    format!("{at}.name"),
                    format!(
                        "duplicate step name '{}' (already used by spec.steps[{first}]); step names must be unique",
                        step.name
                    ),
                );
            }
            if let Some(uid) = &step.uid {
                if uid.is_empty() {
                    self.push(
                        format!("{at}.uid"),
                        "must not be empty; omit it for a derived uid",
                    );
                } else if let Some(&first) = uids.get(uid.as_str()) {
                    self.push(
                        format!("{at}.uid"),
                        format!("duplicate uid '{uid}' (already used by spec.steps[{first}])"),
                    );
                } else {
                    uids.insert(uid, i);
                }
            }

            // Kind.
            let all_kinds = step.kinds();
            let kind = kinds[i];
            if all_kinds.is_empty() {
                self.push(
                    at.clone(),
                    "a step must set exactly one of source, map, filter, flatMap, keyBy, reduce, \
                     window, rebalance, sink; none is set",
                );
            } else if all_kinds.len() > 1 {
                self.push(
                    at.clone(),
                    format!(
                        "a step must set exactly one of source, map, filter, flatMap, keyBy, reduce, \
                         window, rebalance, sink; found {}",
                        all_kinds.join(" and ")
                    ),
                );
            }

            // Inputs.
            let mut inputs = Vec::new();
            match (&step.input, step.source.is_some()) {
                (Some(_), true) => {
                    self.push(format!("{at}.input"), "a source step cannot have an input")
                }
                (Some(list), false) => {
                    if list.is_empty() {
                        self.push(
                            format!("{at}.input"),
                            "must name at least one earlier step (omit it to read the previous step)",
                        );
                    }
                    for (j, name) in list.iter().enumerate() {
                        let p = format!("{at}.input[{j}]");
                        match names.get(name.as_str()) {
                            Some(&k) => {
                                if inputs.contains(&k) {
                                    self.push(p, format!("step '{name}' is listed twice"));
                                } else if self.readable(&p, &spec.steps[k].name, kinds[k]) {
                                    inputs.push(k);
                                }
                            }
                            None => {
                                let later = spec.steps[i..].iter().any(|s| &s.name == name);
                                self.push(
                                    p,
                                    if later {
                                        format!(
                                            "step '{name}' is not before this step; inputs must name earlier steps"
                                        )
                                    } else {
                                        format!("unknown step '{name}'")
                                    },
                                );
                            }
                        }
                    }
                }
                (None, true) => {}
                (None, false) if late.contains_key(&i) => {}
                (None, false) => {
                    if i == 0 {
                        if kind.is_some() {
                            self.push(
                                at.clone(),
                                format!(
                                    "the first step is a {} step and has no input: a job must start with a source",
                                    kind.unwrap_or("?")
                                ),
                            );
                        }
                    } else if self.readable(&at, &spec.steps[i - 1].name, kinds[i - 1]) {
                        inputs.push(i - 1);
                    }
                }
            }
            for &k in &inputs {
                consumed[k] = true;
            }

            // Parallelism.
            let parallelism = step.parallelism.unwrap_or(spec.parallelism);
            if let Some(p) = step.parallelism {
                let pp = format!("{at}.parallelism");
                if p == 0 {
                    self.push(pp, "must be at least 1, got 0");
                } else if (1..=MAX_MAX_PARALLELISM).contains(&spec.max_parallelism)
                    && p > spec.max_parallelism
                {
                    self.push(
                        pp,
                        format!(
                            "{p} exceeds maxParallelism {} (the number of key groups)",
                            spec.max_parallelism
                        ),
                    );
                } else if matches!(kind, Some("keyBy" | "rebalance")) {
                    self.push(
                        pp,
                        format!(
                            "a {} step is a partitioning, not an operator: set parallelism on the step that reads it",
                            kind.unwrap_or("?")
                        ),
                    );
                }
            }

            // Kind-specific checks.
            let mut watermarks = None;
            let op = match kind {
                Some("source") => {
                    let src = step.source.as_ref().expect("kind checked");
                    self.source(src, &format!("{at}.source"), step.parallelism, &at);
                    if let Some(w) = &src.watermarks {
                        watermarks = self.watermarks(src, w, &format!("{at}.source.watermarks"));
                    }
                    Some(StepOp::Source(src.clone()))
                }
                Some("window") => self
                    .window(spec, i, &inputs, &kinds)
                    .map(|w| StepOp::Window(Box::new(w))),
                Some("map") => self
                    .expr(&at, "map", step.map.as_ref(), VALUE_VARS, &[])
                    .map(StepOp::Map),
                Some("filter") => self
                    .expr(
                        &at,
                        "filter",
                        step.filter.as_ref(),
                        VALUE_VARS,
                        &[ValueType::Bool],
                    )
                    .map(StepOp::Filter),
                Some("flatMap") => self
                    .expr(
                        &at,
                        "flatMap",
                        step.flat_map.as_ref(),
                        VALUE_VARS,
                        &[ValueType::List],
                    )
                    .map(StepOp::FlatMap),
                Some("keyBy") => self
                    .expr(
                        &at,
                        "keyBy",
                        step.key_by.as_ref(),
                        VALUE_VARS,
                        &[ValueType::String, ValueType::Int, ValueType::UInt],
                    )
                    .map(StepOp::KeyBy),
                Some("reduce") => {
                    let keyed =
                        !inputs.is_empty() && inputs.iter().all(|&k| kinds[k] == Some("keyBy"));
                    if !keyed && (!inputs.is_empty() || step.input.is_none()) && i > 0 {
                        self.push(
                            format!("{at}.reduce"),
                            "reduce needs a keyed input: put a keyBy step directly before it \
                             (or name keyBy steps as its input)",
                        );
                    }
                    self.expr(&at, "reduce", step.reduce.as_ref(), REDUCE_VARS, &[])
                        .map(StepOp::Reduce)
                }
                Some("rebalance") => Some(StepOp::Rebalance),
                Some("sink") => {
                    let sink = step.sink.as_ref().expect("kind checked");
                    let key = self.sink(sink, &format!("{at}.sink"));
                    Some(StepOp::Sink {
                        spec: sink.clone(),
                        key,
                    })
                }
                _ => None,
            };
            if let Some(op) = op {
                out.push(ValidatedStep {
                    name: step.name.clone(),
                    inputs,
                    parallelism,
                    op,
                    watermarks,
                });
            }
            names.entry(step.name.as_str()).or_insert(i);
        }

        for (i, step) in spec.steps.iter().enumerate() {
            if !consumed[i] && kinds[i].is_some() && kinds[i] != Some("sink") {
                self.push(
                    format!("spec.steps[{i}]"),
                    format!(
                        "the output of step '{}' is not used: add a sink or a step that reads it",
                        step.name
                    ),
                );
            }
        }
        out
    }

    /// Whether a step may be read; reports sinks (which have no output).
    fn readable(&mut self, path: &str, name: &str, kind: Option<&str>) -> bool {
        if kind == Some("sink") {
            self.push(
                path,
                format!("step '{name}' is a sink and has no output; name another step as input"),
            );
            false
        } else {
            true
        }
    }

    /// Compiles a step expression and checks its static result type against `expected`
    /// (empty = any).
    fn expr(
        &mut self,
        at: &str,
        kind: &str,
        spec: Option<&crate::spec::ExprSpec>,
        vars: &[&str],
        expected: &[ValueType],
    ) -> Option<Program> {
        let path = format!("{at}.{kind}.expr");
        let src = &spec?.expr;
        self.compile(&path, src, vars, expected, kind)
    }

    fn compile(
        &mut self,
        path: &str,
        src: &str,
        vars: &[&str],
        expected: &[ValueType],
        what: &str,
    ) -> Option<Program> {
        if src.trim().is_empty() {
            self.push(path, "the expression is empty");
            return None;
        }
        match Program::compile(src, vars) {
            Err(e) => {
                let hint = if !vars.contains(&"record")
                    && e.message.starts_with("unknown variable 'record'")
                {
                    "; `record` (a Kafka record's key, headers, timestamp, topic, partition and \
                     offset) exists only in a Kafka source's `value` and `watermarks.timestamp` \
                     expressions: copy what later steps need into the value there, e.g. \
                     value: \"{'v': value, 'trace': record.headers['trace-id']}\""
                } else {
                    ""
                };
                self.push(
                    path,
                    format!("'{}' does not compile: {e}{hint}", excerpt(src)),
                );
                None
            }
            Ok(p) => match p.result_type() {
                Some(t) if !expected.is_empty() && !expected.contains(&t) => {
                    self.push(
                        path,
                        format!(
                            "a {what} expression must return {}, but '{}' returns {t}",
                            expected
                                .iter()
                                .map(|t| t.name())
                                .collect::<Vec<_>>()
                                .join(" or "),
                            excerpt(src)
                        ),
                    );
                    None
                }
                _ => Some(p),
            },
        }
    }

    fn source(&mut self, src: &SourceSpec, at: &str, parallelism: Option<u32>, step_at: &str) {
        let kinds = src.kinds();
        if kinds.len() != 1 {
            self.push(
                at,
                format!(
                    "a source must set exactly one of collection, socket, file, kafka, nexmark; {}",
                    if kinds.is_empty() {
                        "none is set".to_string()
                    } else {
                        format!("found {}", kinds.join(" and "))
                    }
                ),
            );
            return;
        }
        if matches!(kinds[0], "collection" | "socket")
            && let Some(p) = parallelism
            && p > 1
        {
            self.push(
                format!("{step_at}.parallelism"),
                format!(
                    "a {} source is not parallel: parallelism must be 1, got {p}",
                    kinds[0]
                ),
            );
        }
        if let Some(s) = &src.socket {
            if s.host.trim().is_empty() {
                self.push(format!("{at}.socket.host"), "must not be empty");
            }
            if s.port == 0 {
                self.push(
                    format!("{at}.socket.port"),
                    "must be between 1 and 65535, got 0",
                );
            }
        }
        if let Some(f) = &src.file
            && f.path.trim().is_empty()
        {
            self.push(format!("{at}.file.path"), "must not be empty");
        }
        if let Some(k) = &src.kafka {
            self.kafka_source(k, &format!("{at}.kafka"));
        }
        if let Some(n) = &src.nexmark {
            if n.events == Some(0) {
                self.push(
                    format!("{at}.nexmark.events"),
                    "must be at least 1 (omit it for an unbounded source)",
                );
            }
            if n.events_per_second == 0 {
                self.push(
                    format!("{at}.nexmark.eventsPerSecond"),
                    "must be at least 1",
                );
            }
            if n.max_events_per_second == Some(0) {
                self.push(
                    format!("{at}.nexmark.maxEventsPerSecond"),
                    "must be at least 1 (omit it to generate as fast as possible)",
                );
            }
            if n.first_event_time_ms < 0 {
                self.push(
                    format!("{at}.nexmark.firstEventTimeMs"),
                    format!("must not be negative, got {}", n.first_event_time_ms),
                );
            }
        }
    }

    fn kafka_source(&mut self, k: &KafkaSource, at: &str) {
        self.bootstrap(&k.bootstrap_servers, at);
        if k.topics.is_empty() {
            self.push(format!("{at}.topics"), "must list at least one topic");
        }
        for (i, t) in k.topics.iter().enumerate() {
            if t.trim().is_empty() {
                self.push(format!("{at}.topics[{i}]"), "topic name must not be empty");
            }
        }
        if k.group_id.trim().is_empty() {
            self.push(format!("{at}.groupId"), "must not be empty");
        }
        match (k.starting_offsets, k.starting_timestamp_ms) {
            (StartingOffsets::Timestamp, None) => self.push(
                format!("{at}.startingTimestampMs"),
                "startingOffsets is timestamp, so startingTimestampMs (ms since the epoch) is required",
            ),
            (StartingOffsets::Timestamp, Some(t)) if t < 0 => self.push(
                format!("{at}.startingTimestampMs"),
                format!("must not be negative, got {t}"),
            ),
            (StartingOffsets::Timestamp, Some(_)) | (_, None) => {}
            (_, Some(_)) => self.push(
                format!("{at}.startingTimestampMs"),
                "is only used with startingOffsets: timestamp",
            ),
        }
        self.interval(
            k.partition_discovery_interval_ms,
            100,
            u64::MAX,
            &format!("{at}.partitionDiscoveryIntervalMs"),
        );
        self.interval(
            k.commit_interval_ms,
            100,
            u64::MAX,
            &format!("{at}.commitIntervalMs"),
        );
        self.properties(&k.properties, &k.secret_properties, at);
        if let Some(v) = &k.value {
            if k.include_metadata {
                self.push(
                    format!("{at}.includeMetadata"),
                    "includeMetadata and value are alternatives: the value expression reads the \
                     metadata from `record` (e.g. value: \"{'key': record.key, 'value': value}\")",
                );
            }
            self.compile(&format!("{at}.value"), v, KAFKA_RECORD_VARS, &[], "value");
        }
    }

    fn checkpointing(&mut self, c: &crate::spec::Checkpointing) {
        self.interval(c.interval_ms, 10, u64::MAX, "spec.checkpointing.intervalMs");
        if c.retained == 0 {
            self.push("spec.checkpointing.retained", "must be at least 1");
        }
        self.storage_url(&c.directory, "spec.checkpointing.directory");
        if let Some(d) = &c.savepoint_directory {
            self.storage_url(d, "spec.checkpointing.savepointDirectory");
        }
    }

    fn storage_url(&mut self, url: &str, at: &str) {
        let dir = url.strip_prefix("file://").unwrap_or(url);
        if dir.trim().is_empty() {
            self.push(at, "must not be empty");
        } else if let Some(rest) = url.strip_prefix("s3://") {
            if rest.split('/').next().is_none_or(str::is_empty) {
                self.push(
                    at,
                    format!("'{url}': s3:// needs a bucket (s3://bucket/prefix)"),
                );
            }
        } else if url.contains("://") && !url.starts_with("file://") {
            self.push(
                at,
                format!("'{url}': storage must be file:///path, a path, or s3://bucket/prefix"),
            );
        }
    }

    fn interval(&mut self, ms: u64, min: u64, max: u64, at: &str) {
        if ms < min {
            self.push(
                at.to_string(),
                format!("must be at least {min} ms, got {ms}"),
            );
        } else if ms > max {
            self.push(
                at.to_string(),
                format!(
                    "must be at most {max} ms (within the brokers' transaction timeout), got {ms}"
                ),
            );
        }
    }

    fn bootstrap(&mut self, servers: &str, at: &str) {
        if servers.trim().is_empty() {
            self.push(
                format!("{at}.bootstrapServers"),
                "must not be empty: give host:port[,host:port...]",
            );
        } else if servers.split(',').any(|s| s.trim().is_empty()) {
            self.push(
                format!("{at}.bootstrapServers"),
                format!("'{servers}' has an empty entry: give host:port[,host:port...]"),
            );
        }
    }

    fn properties(
        &mut self,
        props: &std::collections::BTreeMap<String, String>,
        secrets: &std::collections::BTreeMap<String, SecretKeyRef>,
        at: &str,
    ) {
        for key in props.keys() {
            if is_secret_property(key) {
                self.push(
                    format!("{at}.properties[\"{key}\"]"),
                    format!(
                        "'{key}' holds a credential: give it via secretProperties (a Secret reference), not inline"
                    ),
                );
            } else if secrets.contains_key(key) {
                self.push(
                    format!("{at}.properties[\"{key}\"]"),
                    format!("'{key}' is set both here and in secretProperties"),
                );
            }
        }
        for (key, r) in secrets {
            if r.name.trim().is_empty() {
                self.push(
                    format!("{at}.secretProperties[\"{key}\"].name"),
                    "Secret name must not be empty",
                );
            }
            if r.key.trim().is_empty() {
                self.push(
                    format!("{at}.secretProperties[\"{key}\"].key"),
                    "Secret key must not be empty",
                );
            }
        }
    }

    /// Checks a sink; returns the compiled Kafka key expression if any.
    fn sink(&mut self, sink: &SinkSpec, at: &str) -> Option<Program> {
        let kinds = sink.kinds();
        if kinds.len() != 1 {
            self.push(
                at,
                format!(
                    "a sink must set exactly one of print, file, blackhole, kafka; {}",
                    if kinds.is_empty() {
                        "none is set".to_string()
                    } else {
                        format!("found {}", kinds.join(" and "))
                    }
                ),
            );
            return None;
        }
        if let Some(f) = &sink.file
            && f.path.trim().is_empty()
        {
            self.push(format!("{at}.file.path"), "must not be empty");
        }
        sink.kafka
            .as_ref()
            .and_then(|k| self.kafka_sink(k, &format!("{at}.kafka")))
    }

    fn kafka_sink(&mut self, k: &KafkaSink, at: &str) -> Option<Program> {
        self.bootstrap(&k.bootstrap_servers, at);
        if k.topic.trim().is_empty() {
            self.push(format!("{at}.topic"), "must not be empty");
        }
        match (&k.delivery_guarantee, &k.transactional_id_prefix) {
            (DeliveryGuarantee::ExactlyOnce, None) => self.push(
                format!("{at}.transactionalIdPrefix"),
                "deliveryGuarantee exactly-once requires a transactionalIdPrefix, unique to this job in the Kafka cluster",
            ),
            (_, Some(p)) if p.trim().is_empty() => {
                self.push(format!("{at}.transactionalIdPrefix"), "must not be empty")
            }
            _ => {}
        }
        self.interval(
            k.commit_interval_ms,
            100,
            300_000,
            &format!("{at}.commitIntervalMs"),
        );
        self.properties(&k.properties, &k.secret_properties, at);
        if let Some(h) = &k.headers {
            // Compiled again by the worker; here for its errors.
            self.compile(
                &format!("{at}.headers"),
                h,
                VALUE_VARS,
                &[ValueType::Map],
                "Kafka headers",
            );
        }
        let key = k.key.as_deref()?;
        self.compile(
            &format!("{at}.key"),
            key,
            VALUE_VARS,
            &[
                ValueType::String,
                ValueType::Int,
                ValueType::UInt,
                ValueType::Bytes,
            ],
            "Kafka key",
        )
    }
}

/// Why a manifest could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    /// 1-based position of the problem, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Manifest {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    spec: StreamJobSpec,
    #[serde(default)]
    status: Option<StreamJobStatus>,
}

/// Reads one `StreamJob` manifest (YAML or JSON). Malformed YAML, unknown or misspelt
/// fields and wrong types are reported with their line and column; the `apiVersion` and
/// `kind` must be `streamjob.dev/v1alpha1` and `StreamJob`. Does not run [`validate`].
pub fn parse_job(yaml: &str) -> Result<StreamJob, ParseError> {
    let m: Manifest = serde_yaml::from_str(yaml).map_err(|e| {
        let loc = e.location();
        ParseError {
            message: e.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
        }
    })?;
    let want = "streamjob.dev/v1alpha1";
    if m.api_version != want {
        return Err(ParseError {
            message: format!("apiVersion is '{}', expected '{want}'", m.api_version),
            line: None,
            column: None,
        });
    }
    if m.kind != "StreamJob" {
        return Err(ParseError {
            message: format!("kind is '{}', expected 'StreamJob'", m.kind),
            line: None,
            column: None,
        });
    }
    let mut job = StreamJob::new(m.metadata.name.as_deref().unwrap_or(""), m.spec);
    job.metadata = m.metadata;
    job.status = m.status;
    Ok(job)
}
