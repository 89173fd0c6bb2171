//! Validation of event time: a source's `watermarks` and the `window` step.

use std::time::Duration;

use super::{KAFKA_RECORD_VARS, VALUE_VARS, Validator};
use crate::duration::parse_duration;
use crate::expr::{Program, ValueType};
use crate::spec::{
    AggregateFunction, SourceSpec, StreamJobSpec, TimeCharacteristic, WatermarksSpec, WindowSpec,
};

/// Variables of a window's `reduce` expression, in binding order.
pub const WINDOW_REDUCE_VARS: &[&str] = &["acc", "value"];
/// Names an aggregate cannot take: the other variables of `output`.
const RESERVED: &[&str] = &["key", "window", "value", "acc"];

/// A source's compiled `watermarks`.
#[derive(Debug, Clone)]
pub struct Watermarks {
    /// Event time of a record (variables: `value`, and `record` for a Kafka source
    /// ([`super::KAFKA_RECORD_VARS`])); `None`: the source's own timestamps
    /// (Kafka record timestamps, Nexmark `dateTime`).
    pub timestamp: Option<Program>,
    pub max_out_of_orderness: Duration,
    pub idleness: Option<Duration>,
    /// Between periodic watermarks; zero: after every record.
    pub interval: Duration,
}

/// Default of `watermarks.interval` (Flink's `autoWatermarkInterval`).
pub const DEFAULT_WATERMARK_INTERVAL: Duration = Duration::from_millis(200);

/// Which windows a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAssigner {
    Tumbling { size: Duration },
    Sliding { size: Duration, slide: Duration },
    Session { gap: Duration },
    Count { size: u64, slide: u64 },
}

/// One built-in aggregate.
#[derive(Debug, Clone)]
pub struct Aggregate {
    pub name: String,
    pub function: AggregateFunction,
    /// Variables: `value`; `None` for `count`.
    pub expr: Option<Program>,
}

/// What a window computes.
#[derive(Debug, Clone)]
pub enum WindowAggregation {
    Aggregates(Vec<Aggregate>),
    /// Variables: [`WINDOW_REDUCE_VARS`].
    Reduce(Program),
}

/// A compiled `window` step.
#[derive(Debug, Clone)]
pub struct WindowOp {
    pub assigner: WindowAssigner,
    pub time: TimeCharacteristic,
    pub allowed_lateness: Duration,
    pub aggregation: WindowAggregation,
    /// Variables: [`WindowOp::output_vars`]; `None`: the default result.
    pub output: Option<Program>,
    /// Step index of the `lateOutput` step.
    pub late_output: Option<usize>,
    /// Whether the window reads a keyBy (else it sees all records, at parallelism 1).
    pub keyed: bool,
}

impl WindowOp {
    /// Variables of the `output` expression, in binding order: `key`, `window`, then the
    /// aggregates by name (or `value` for a reduce).
    pub fn output_vars(&self) -> Vec<&str> {
        output_vars(&self.aggregation_names())
    }

    fn aggregation_names(&self) -> Vec<&str> {
        match &self.aggregation {
            WindowAggregation::Aggregates(a) => a.iter().map(|a| a.name.as_str()).collect(),
            WindowAggregation::Reduce(_) => vec!["value"],
        }
    }
}

fn output_vars<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["key", "window"];
    v.extend_from_slice(names);
    v
}

impl Validator {
    fn duration(&mut self, at: String, text: &str, allow_zero: bool) -> Option<Duration> {
        match parse_duration(text) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.push(at, format!("'{text}' must be longer than 0"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.push(at, e);
                None
            }
        }
    }

    pub(super) fn watermarks(
        &mut self,
        src: &SourceSpec,
        w: &WatermarksSpec,
        at: &str,
    ) -> Option<Watermarks> {
        let own_timestamps = src.kafka.is_some() || src.nexmark.is_some();
        // A Kafka source evaluates it with the record at hand.
        let vars = match src.kafka {
            Some(_) => KAFKA_RECORD_VARS,
            None => VALUE_VARS,
        };
        let timestamp = match &w.timestamp {
            Some(t) => Some(self.compile(
                &format!("{at}.timestamp"),
                t,
                vars,
                &[ValueType::Int],
                "timestamp",
            )?),
            None if own_timestamps => None,
            None => {
                self.push(
                    format!("{at}.timestamp"),
                    "required: only kafka and nexmark sources carry timestamps of their own; \
                     give a CEL expression for the event time in ms, e.g. value.ts",
                );
                return None;
            }
        };
        let max_out_of_orderness = match &w.max_out_of_orderness {
            Some(d) => self.duration(format!("{at}.maxOutOfOrderness"), d, true)?,
            None => Duration::ZERO,
        };
        let idleness = match &w.idleness {
            Some(d) => Some(self.duration(format!("{at}.idleness"), d, false)?),
            None => None,
        };
        let interval = match &w.interval {
            Some(d) => self.duration(format!("{at}.interval"), d, true)?,
            None => DEFAULT_WATERMARK_INTERVAL,
        };
        Some(Watermarks {
            timestamp,
            max_out_of_orderness,
            idleness,
            interval,
        })
    }

    /// Checks a `window` step at `spec.steps[i]` whose resolved inputs are `inputs`.
    pub(super) fn window(
        &mut self,
        spec: &StreamJobSpec,
        i: usize,
        inputs: &[usize],
        kinds: &[Option<&'static str>],
    ) -> Option<WindowOp> {
        let step = &spec.steps[i];
        let w = step.window.as_ref().expect("kind checked");
        let at = format!("spec.steps[{i}].window");
        let mut ok = true;

        let assigners = [
            (w.tumbling.is_some(), "tumbling"),
            (w.sliding.is_some(), "sliding"),
            (w.session.is_some(), "session"),
            (w.count.is_some(), "count"),
        ];
        let set: Vec<&str> = assigners
            .iter()
            .filter_map(|(s, n)| s.then_some(*n))
            .collect();
        if set.len() != 1 {
            self.push(
                at.clone(),
                format!(
                    "a window must set exactly one of tumbling, sliding, session, count; {}",
                    if set.is_empty() {
                        "none is set".to_string()
                    } else {
                        format!("found {}", set.join(" and "))
                    }
                ),
            );
            ok = false;
        }
        let assigner = self.assigner(w, &at);
        let counted = w.count.is_some();
        if counted && w.time.is_some() {
            self.push(
                format!("{at}.time"),
                "count windows fire on record counts; time does not apply",
            );
            ok = false;
        }
        let time = w.time.unwrap_or_default();
        let allowed_lateness = match &w.allowed_lateness {
            Some(_) if counted => {
                self.push(
                    format!("{at}.allowedLateness"),
                    "count windows have no lateness; remove it",
                );
                ok = false;
                Duration::ZERO
            }
            Some(_) if time == TimeCharacteristic::Processing => {
                self.push(
                    format!("{at}.allowedLateness"),
                    "in processing time no record is late; allowedLateness needs time: event",
                );
                ok = false;
                Duration::ZERO
            }
            Some(d) => match self.duration(format!("{at}.allowedLateness"), d, true) {
                Some(d) => d,
                None => {
                    ok = false;
                    Duration::ZERO
                }
            },
            None => Duration::ZERO,
        };

        // Keyed when every input is a keyBy; all records (at parallelism 1) when none is.
        let keyed_inputs = inputs
            .iter()
            .filter(|&&k| kinds[k] == Some("keyBy"))
            .count();
        let keyed = keyed_inputs > 0;
        if keyed && keyed_inputs != inputs.len() {
            self.push(
                at.clone(),
                "a window reads either keyBy steps only (a window per key) or no keyBy step \
                 (one window over all records); its inputs mix both",
            );
            ok = false;
        }
        if !keyed && let Some(p) = step.parallelism.filter(|&p| p > 1) {
            self.push(
                format!("spec.steps[{i}].parallelism"),
                format!(
                    "a window without keyBy sees all records in one subtask: parallelism must be 1, \
                     got {p} (put a keyBy step before it to window per key in parallel)"
                ),
            );
            ok = false;
        }

        // Event time needs every source that feeds the window to say where it comes from.
        if !counted && time == TimeCharacteristic::Event {
            for s in upstream_sources(spec, i) {
                let src = spec.steps[s].source.as_ref().expect("a source");
                if src.watermarks.is_none() {
                    self.push(
                        format!("{at}.time"),
                        format!(
                            "event-time windows need event timestamps, but source '{}' has no \
                             watermarks (set spec.steps[{s}].source.watermarks, or time: processing)",
                            spec.steps[s].name
                        ),
                    );
                    ok = false;
                }
            }
        }

        let aggregation = match (&w.aggregates, &w.reduce) {
            (Some(_), Some(_)) | (None, None) => {
                self.push(
                    at.clone(),
                    "a window needs exactly one of aggregates (count, sum, min, max, avg) or reduce",
                );
                None
            }
            (Some(list), None) => self
                .aggregates(list, &format!("{at}.aggregates"))
                .map(WindowAggregation::Aggregates),
            (None, Some(r)) => self
                .compile(
                    &format!("{at}.reduce"),
                    r,
                    WINDOW_REDUCE_VARS,
                    &[],
                    "reduce",
                )
                .map(WindowAggregation::Reduce),
        };
        let output = match (&w.output, &aggregation) {
            (Some(src), Some(agg)) => {
                let names: Vec<&str> = match agg {
                    WindowAggregation::Aggregates(a) => a.iter().map(|a| a.name.as_str()).collect(),
                    WindowAggregation::Reduce(_) => vec!["value"],
                };
                let vars = output_vars(&names);
                match self.compile(&format!("{at}.output"), src, &vars, &[], "output") {
                    Some(p) => Some(p),
                    None => {
                        ok = false;
                        None
                    }
                }
            }
            _ => None,
        };

        let late_output = match &w.late_output {
            None => None,
            Some(_) if counted || time == TimeCharacteristic::Processing => {
                self.push(
                    format!("{at}.lateOutput"),
                    "only event-time windows have late records",
                );
                ok = false;
                None
            }
            Some(name) => match spec.steps.iter().position(|s| &s.name == name) {
                Some(k) if k > i => {
                    if kinds[k] == Some("source") {
                        self.push(
                            format!("{at}.lateOutput"),
                            format!("step '{name}' is a source and cannot read late records"),
                        );
                        ok = false;
                    }
                    Some(k)
                }
                Some(_) => {
                    self.push(
                        format!("{at}.lateOutput"),
                        format!(
                            "step '{name}' is not after this step; late records go to a later step"
                        ),
                    );
                    ok = false;
                    None
                }
                None => {
                    self.push(format!("{at}.lateOutput"), format!("unknown step '{name}'"));
                    ok = false;
                    None
                }
            },
        };
        Some(WindowOp {
            assigner: assigner?,
            time,
            allowed_lateness,
            aggregation: aggregation?,
            output,
            late_output,
            keyed,
        })
        .filter(|_| ok)
    }

    fn assigner(&mut self, w: &WindowSpec, at: &str) -> Option<WindowAssigner> {
        if let Some(t) = &w.tumbling {
            let size = self.duration(format!("{at}.tumbling.size"), &t.size, false)?;
            return Some(WindowAssigner::Tumbling { size });
        }
        if let Some(s) = &w.sliding {
            let size = self.duration(format!("{at}.sliding.size"), &s.size, false);
            let slide = self.duration(format!("{at}.sliding.slide"), &s.slide, false);
            let (size, slide) = (size?, slide?);
            if slide > size {
                self.push(
                    format!("{at}.sliding.slide"),
                    format!(
                        "'{}' is longer than size '{}': records between windows would be lost \
                         (use a slide up to the size)",
                        s.slide, s.size
                    ),
                );
                return None;
            }
            if size.as_millis() / slide.as_millis() > 1000 {
                self.push(
                    format!("{at}.sliding.slide"),
                    format!(
                        "'{}' puts every record in more than 1000 windows of '{}'; use a longer slide",
                        s.slide, s.size
                    ),
                );
                return None;
            }
            return Some(WindowAssigner::Sliding { size, slide });
        }
        if let Some(s) = &w.session {
            let gap = self.duration(format!("{at}.session.gap"), &s.gap, false)?;
            return Some(WindowAssigner::Session { gap });
        }
        if let Some(c) = &w.count {
            let slide = c.slide.unwrap_or(c.size);
            if c.size == 0 {
                self.push(format!("{at}.count.size"), "must be at least 1, got 0");
                return None;
            }
            if slide == 0 || slide > c.size {
                self.push(
                    format!("{at}.count.slide"),
                    format!("must be between 1 and size ({}), got {slide}", c.size),
                );
                return None;
            }
            if c.size > 1_000_000 {
                self.push(
                    format!("{at}.count.size"),
                    format!(
                        "{} records per window per key is more than the 1000000 a window may hold",
                        c.size
                    ),
                );
                return None;
            }
            return Some(WindowAssigner::Count {
                size: c.size,
                slide,
            });
        }
        None
    }

    fn aggregates(
        &mut self,
        list: &[crate::spec::AggregateSpec],
        at: &str,
    ) -> Option<Vec<Aggregate>> {
        let mut out = Vec::with_capacity(list.len());
        let mut ok = true;
        if list.is_empty() {
            self.push(at, "must list at least one aggregate");
            return None;
        }
        for (j, a) in list.iter().enumerate() {
            let p = format!("{at}[{j}]");
            let ident = a
                .name
                .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && a.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ident {
                self.push(
                    format!("{p}.name"),
                    format!(
                        "'{}' is not a CEL identifier (letters, digits and '_', not starting with a digit)",
                        a.name
                    ),
                );
                ok = false;
            } else if RESERVED.contains(&a.name.as_str()) {
                self.push(
                    format!("{p}.name"),
                    format!(
                        "'{}' is taken by a variable of output; choose another name",
                        a.name
                    ),
                );
                ok = false;
            } else if list[..j].iter().any(|b| b.name == a.name) {
                self.push(
                    format!("{p}.name"),
                    format!("duplicate aggregate '{}'", a.name),
                );
                ok = false;
            }
            let expr = match (a.function, &a.expr) {
                (AggregateFunction::Count, None) => None,
                (AggregateFunction::Count, Some(_)) => {
                    self.push(
                        format!("{p}.expr"),
                        "count takes no expr: it counts records",
                    );
                    ok = false;
                    None
                }
                (f, None) => {
                    self.push(
                        format!("{p}.expr"),
                        format!("{} needs an expr over value, e.g. value.price", name_of(f)),
                    );
                    ok = false;
                    None
                }
                (f, Some(src)) => {
                    let numeric: &[ValueType] = match f {
                        AggregateFunction::Sum | AggregateFunction::Avg => {
                            &[ValueType::Int, ValueType::UInt, ValueType::Double]
                        }
                        _ => &[],
                    };
                    let p =
                        self.compile(&format!("{p}.expr"), src, VALUE_VARS, numeric, name_of(f));
                    ok &= p.is_some();
                    p
                }
            };
            out.push(Aggregate {
                name: a.name.clone(),
                function: a.function,
                expr,
            });
        }
        ok.then_some(out)
    }
}

fn name_of(f: AggregateFunction) -> &'static str {
    match f {
        AggregateFunction::Count => "count",
        AggregateFunction::Sum => "sum",
        AggregateFunction::Min => "min",
        AggregateFunction::Max => "max",
        AggregateFunction::Avg => "avg",
    }
}

/// Indices of the source steps that (transitively) feed step `i`.
pub fn upstream_sources(spec: &StreamJobSpec, i: usize) -> Vec<usize> {
    let inputs = super::resolve_inputs(spec);
    let mut seen = vec![false; spec.steps.len()];
    let mut stack = vec![i];
    let mut out = Vec::new();
    while let Some(s) = stack.pop() {
        if std::mem::replace(&mut seen[s], true) {
            continue;
        }
        if spec.steps[s].source.is_some() {
            out.push(s);
        }
        stack.extend(inputs[s].iter().copied());
    }
    out.sort_unstable();
    out
}
