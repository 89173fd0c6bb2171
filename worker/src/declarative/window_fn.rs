//! What a spec `window` computes: the built-in aggregates (count, sum, min, max, avg) or
//! the reduce expression as an accumulator (create, add, merge, result), and the `output`
//! expression that turns a fired window into a record.

use std::cmp::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use streamjob_crds::expr::{EvalError, Program, Value};
use streamjob_crds::spec::AggregateFunction;
use streamjob_crds::validate::{Aggregate, WindowAggregation, WindowOp};

/// One aggregate's running value. Serializable: it lives in keyed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Slot {
    Count(u64),
    /// Sum, min, max and reduce: `None` before the first record.
    Value(Option<Value>),
    Avg {
        sum: f64,
        n: u64,
    },
}

/// A window's accumulator: one slot per aggregate (one for a reduce).
pub type Acc = Vec<Slot>;

/// The aggregation of one window step.
#[derive(Clone)]
pub struct WindowFunction {
    kind: Kind,
    output: Option<Program>,
    names: Arc<[Arc<str>]>,
}

#[derive(Clone)]
enum Kind {
    Aggregates(Arc<[Aggregate]>),
    Reduce(Program),
}

fn err(message: String) -> EvalError {
    EvalError { message }
}

impl WindowFunction {
    pub fn new(op: &WindowOp) -> Self {
        let (kind, names): (Kind, Vec<Arc<str>>) = match &op.aggregation {
            WindowAggregation::Aggregates(a) => (
                Kind::Aggregates(a.clone().into()),
                a.iter().map(|a| Arc::from(a.name.as_str())).collect(),
            ),
            WindowAggregation::Reduce(p) => (Kind::Reduce(p.clone()), vec![Arc::from("value")]),
        };
        WindowFunction {
            kind,
            output: op.output.clone(),
            names: names.into(),
        }
    }

    pub fn create(&self) -> Acc {
        match &self.kind {
            Kind::Aggregates(a) => a
                .iter()
                .map(|a| match a.function {
                    AggregateFunction::Count => Slot::Count(0),
                    AggregateFunction::Avg => Slot::Avg { sum: 0.0, n: 0 },
                    _ => Slot::Value(None),
                })
                .collect(),
            Kind::Reduce(_) => vec![Slot::Value(None)],
        }
    }

    /// The aggregate expressions evaluated on a record (a list, null for `count`; null for
    /// a reduce), once per record however many windows it is in.
    pub fn inputs(&self, record: &Value) -> Result<Value, EvalError> {
        match &self.kind {
            Kind::Reduce(_) => Ok(Value::Null),
            Kind::Aggregates(aggs) => {
                let mut inputs = Vec::with_capacity(aggs.len());
                for a in aggs.iter() {
                    inputs.push(match &a.expr {
                        Some(p) => p
                            .eval(&[record])
                            .map_err(|e| err(format!("aggregate '{}': {}", a.name, e.message)))?,
                        None => Value::Null,
                    });
                }
                Ok(Value::list(inputs))
            }
        }
    }

    /// Adds a record with its [`WindowFunction::inputs`]. On an error the accumulator is
    /// unchanged.
    pub fn add(&self, acc: &mut Acc, record: &Value, inputs: &Value) -> Result<(), EvalError> {
        match &self.kind {
            Kind::Reduce(p) => {
                let next = match &acc[0] {
                    Slot::Value(Some(a)) => p.eval(&[a, record])?,
                    _ => record.clone(),
                };
                acc[0] = Slot::Value(Some(next));
                Ok(())
            }
            Kind::Aggregates(aggs) => {
                let inputs = inputs.as_list().unwrap_or(&[]);
                let mut next = acc.clone();
                for (i, (slot, a)) in next.iter_mut().zip(aggs.iter()).enumerate() {
                    let v = a.expr.as_ref().map(|_| &inputs[i]);
                    add_one(slot, a, v)
                        .map_err(|e| err(format!("aggregate '{}': {}", a.name, e.message)))?;
                }
                *acc = next;
                Ok(())
            }
        }
    }

    /// Combines the accumulators of two merged (session) windows.
    pub fn merge(&self, a: Acc, b: Acc) -> Result<Acc, EvalError> {
        let mut out = Vec::with_capacity(a.len());
        for (i, (x, y)) in a.into_iter().zip(b).enumerate() {
            out.push(match (x, y) {
                (Slot::Count(x), Slot::Count(y)) => Slot::Count(x + y),
                (Slot::Avg { sum: s1, n: n1 }, Slot::Avg { sum: s2, n: n2 }) => Slot::Avg {
                    sum: s1 + s2,
                    n: n1 + n2,
                },
                (Slot::Value(None), y) => y,
                (x, Slot::Value(None)) => x,
                (Slot::Value(Some(x)), Slot::Value(Some(y))) => {
                    Slot::Value(Some(match &self.kind {
                        Kind::Reduce(p) => p.eval(&[&x, &y])?,
                        Kind::Aggregates(aggs) => combine(aggs[i].function, x, &y)?,
                    }))
                }
                (x, y) => return Err(err(format!("cannot merge {x:?} with {y:?}"))),
            });
        }
        Ok(out)
    }

    /// The aggregates' values, in declaration order (for a reduce: the reduced record).
    pub fn results(&self, acc: &Acc) -> Vec<Value> {
        acc.iter()
            .map(|s| match s {
                Slot::Count(n) => Value::Int(*n as i64),
                Slot::Value(v) => v.clone().unwrap_or(Value::Null),
                Slot::Avg { sum, n } if *n > 0 => Value::Double(sum / *n as f64),
                Slot::Avg { .. } => Value::Null,
            })
            .collect()
    }

    /// The record a fired window emits. `window` is `{start, end}` in ms (nulls for count
    /// windows); `key` is null for a window over all records.
    pub fn output(&self, key: &Value, window: &Value, acc: &Acc) -> Result<Value, EvalError> {
        let results = self.results(acc);
        match (&self.output, &self.kind) {
            (Some(p), _) => {
                let mut args: Vec<&Value> = vec![key, window];
                args.extend(results.iter());
                p.eval(&args)
            }
            (None, Kind::Reduce(_)) => Ok(results.into_iter().next().unwrap_or(Value::Null)),
            (None, Kind::Aggregates(_)) => {
                let field = |name: &str| window.as_map().and_then(|m| m.get(name)).cloned();
                let mut entries: Vec<(Arc<str>, Value)> = vec![
                    ("key".into(), key.clone()),
                    ("start".into(), field("start").unwrap_or(Value::Null)),
                    ("end".into(), field("end").unwrap_or(Value::Null)),
                ];
                entries.extend(self.names.iter().cloned().zip(results));
                Ok(Value::map(entries))
            }
        }
    }
}

/// `{start, end}` of a time window.
pub fn window_value(start: i64, end: i64) -> Value {
    Value::map([("start", Value::Int(start)), ("end", Value::Int(end))])
}

/// `{start: null, end: null}`: count windows have no time bounds.
pub fn count_window_value() -> Value {
    Value::map([("start", Value::Null), ("end", Value::Null)])
}

fn add_one(slot: &mut Slot, a: &Aggregate, v: Option<&Value>) -> Result<(), EvalError> {
    match (slot, a.function) {
        (Slot::Count(n), _) => *n += 1,
        (Slot::Avg { sum, n }, _) => {
            let v = v.expect("validated: avg has an expr");
            *sum += as_f64(v).ok_or_else(|| err(format!("avg needs a number, got {v}")))?;
            *n += 1;
        }
        (Slot::Value(cur), f) => {
            let v = v.expect("validated: sum, min and max have an expr");
            let next = match cur.take() {
                None => {
                    if f == AggregateFunction::Sum && as_f64(v).is_none() {
                        return Err(err(format!("sum needs a number, got {v}")));
                    }
                    v.clone()
                }
                Some(c) => combine(f, c, v)?,
            };
            *cur = Some(next);
        }
    }
    Ok(())
}

fn combine(f: AggregateFunction, acc: Value, v: &Value) -> Result<Value, EvalError> {
    Ok(match f {
        AggregateFunction::Sum => add(&acc, v)?,
        AggregateFunction::Min => {
            if compare(v, &acc)? == Ordering::Less {
                v.clone()
            } else {
                acc
            }
        }
        AggregateFunction::Max => {
            if compare(v, &acc)? == Ordering::Greater {
                v.clone()
            } else {
                acc
            }
        }
        AggregateFunction::Count | AggregateFunction::Avg => {
            unreachable!("count and avg have slots of their own")
        }
    })
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Double(d) => Some(*d),
        _ => None,
    }
}

fn as_i128(v: &Value) -> Option<i128> {
    match v {
        Value::Int(i) => Some(i128::from(*i)),
        Value::UInt(u) => Some(i128::from(*u)),
        _ => None,
    }
}

/// Ints and uints add exactly (an overflow is an error, not a wrap); a double makes the
/// sum a double.
fn add(a: &Value, b: &Value) -> Result<Value, EvalError> {
    match (a, b) {
        (Value::UInt(x), Value::UInt(y)) => x
            .checked_add(*y)
            .map(Value::UInt)
            .ok_or_else(|| err("sum overflows uint".into())),
        _ => match (as_i128(a), as_i128(b)) {
            (Some(x), Some(y)) => i64::try_from(x + y)
                .map(Value::Int)
                .map_err(|_| err("sum overflows int".into())),
            _ => match (as_f64(a), as_f64(b)) {
                (Some(x), Some(y)) => Ok(Value::Double(x + y)),
                _ => Err(err(format!("sum needs numbers, got {a} and {b}"))),
            },
        },
    }
}

/// Numbers compare by value, strings by their bytes; other pairs cannot be ordered.
fn compare(a: &Value, b: &Value) -> Result<Ordering, EvalError> {
    if let (Some(x), Some(y)) = (as_i128(a), as_i128(b)) {
        return Ok(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (as_f64(a), as_f64(b)) {
        return x
            .partial_cmp(&y)
            .ok_or_else(|| err(format!("cannot order {a} and {b}")));
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        _ => Err(err(format!(
            "cannot order a {} and a {}",
            a.value_type().name(),
            b.value_type().name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamjob_crds::validate::{StepOp, parse_job, validate_job};

    fn function(window: &str) -> WindowFunction {
        let text = format!(
            "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: t}}\nspec:\n  steps:\n  - name: s\n    source: {{collection: {{values: [1]}}}}\n  - name: w\n    window:\n      count: {{size: 2}}\n{window}\n  - name: o\n    sink: {{print: {{}}}}\n"
        );
        let v = validate_job(&parse_job(&text).unwrap()).unwrap();
        match &v.steps[1].op {
            StepOp::Window(w) => WindowFunction::new(w),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn built_in_aggregates_add_merge_and_output() {
        let f = function(
            "      aggregates:\n      - {name: n, function: count}\n      - {name: s, function: sum, expr: value}\n      - {name: lo, function: min, expr: value}\n      - {name: hi, function: max, expr: value}\n      - {name: mean, function: avg, expr: value}\n      output: \"[key, n, s, lo, hi, mean]\"",
        );
        let add = |acc: &mut Acc, v: Value| {
            let inputs = f.inputs(&v)?;
            f.add(acc, &v, &inputs)
        };
        let mut a = f.create();
        for v in [3, -1, 7] {
            add(&mut a, Value::Int(v)).unwrap();
        }
        let mut b = f.create();
        add(&mut b, Value::Int(10)).unwrap();
        let merged = f.merge(a.clone(), b).unwrap();
        let out = f
            .output(&Value::from("k"), &count_window_value(), &merged)
            .unwrap();
        assert_eq!(out.to_string(), r#"["k",4,19,-1,10,4.75]"#);
        // A record the sum cannot take leaves every slot as it was.
        let before = a.clone();
        assert!(add(&mut a, Value::from("x")).is_err());
        assert_eq!(a, before);
        assert!(
            add(&mut a, Value::Int(i64::MAX)).is_err(),
            "overflow is an error"
        );
    }

    #[test]
    fn reduce_and_default_outputs() {
        let f = function("      reduce: \"acc > value ? acc : value\"");
        let mut a = f.create();
        for v in [3, 9, 4] {
            f.add(&mut a, &Value::Int(v), &Value::Null).unwrap();
        }
        assert_eq!(
            f.output(&Value::Null, &window_value(0, 10), &a).unwrap(),
            Value::Int(9)
        );
        let f = function("      aggregates: [{name: n, function: count}]");
        let mut a = f.create();
        f.add(&mut a, &Value::Int(1), &f.inputs(&Value::Int(1)).unwrap())
            .unwrap();
        assert_eq!(
            f.output(&Value::from("u"), &window_value(0, 60000), &a)
                .unwrap()
                .to_string(),
            r#"{"end":60000,"key":"u","n":1,"start":0}"#
        );
    }
}
