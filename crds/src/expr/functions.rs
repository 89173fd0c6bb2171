//! The named functions (`size`, `lower`, `split`, `parseJson`, ...): their signatures for
//! the compiler and their implementations for the evaluator.

use std::borrow::Cow;

use super::eval::{Env, operand_of};
use super::node::Node;
use super::small_str::Str;
use super::value::{Value, ValueType};
use super::{EvalError, rerr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Func {
    Size,
    Lower,
    Upper,
    LowerAscii,
    UpperAscii,
    Trim,
    Split,
    Words,
    Join,
    Contains,
    StartsWith,
    EndsWith,
    ParseJson,
    ToJson,
    String,
    Int,
    UInt,
    Double,
}

use ValueType as T;

pub(super) const ANY: &[ValueType] = &[];
pub(super) const STR: &[ValueType] = &[T::String];
pub(super) const NUMERIC_OR_STR: &[ValueType] = &[T::Int, T::UInt, T::Double, T::String];

impl Func {
    pub(super) fn lookup(name: &str) -> Option<Func> {
        Some(match name {
            "size" => Func::Size,
            "lower" => Func::Lower,
            "upper" => Func::Upper,
            "lowerAscii" => Func::LowerAscii,
            "upperAscii" => Func::UpperAscii,
            "trim" => Func::Trim,
            "split" => Func::Split,
            "words" => Func::Words,
            "join" => Func::Join,
            "contains" => Func::Contains,
            "startsWith" => Func::StartsWith,
            "endsWith" => Func::EndsWith,
            "parseJson" => Func::ParseJson,
            "toJson" => Func::ToJson,
            "string" => Func::String,
            "int" => Func::Int,
            "uint" => Func::UInt,
            "double" => Func::Double,
            _ => return None,
        })
    }

    /// Accepted types of each argument (the receiver first); an empty slice accepts any.
    pub(super) fn params(self) -> &'static [&'static [ValueType]] {
        match self {
            Func::Size => &[&[T::String, T::Bytes, T::List, T::Map]],
            Func::Lower
            | Func::Upper
            | Func::LowerAscii
            | Func::UpperAscii
            | Func::Trim
            | Func::Words => &[STR],
            Func::Split | Func::Contains | Func::StartsWith | Func::EndsWith => &[STR, STR],
            Func::Join => &[&[T::List], STR],
            Func::ParseJson => &[&[T::String, T::Bytes]],
            Func::ToJson | Func::String => &[ANY],
            Func::Int | Func::UInt | Func::Double => &[NUMERIC_OR_STR],
        }
    }

    /// Minimum number of arguments (`join`'s separator is optional).
    pub(super) fn min_args(self) -> usize {
        match self {
            Func::Join => 1,
            f => f.params().len(),
        }
    }

    pub(super) fn result(self) -> Option<ValueType> {
        match self {
            Func::Size | Func::Int => Some(T::Int),
            Func::UInt => Some(T::UInt),
            Func::Double => Some(T::Double),
            Func::Lower
            | Func::Upper
            | Func::LowerAscii
            | Func::UpperAscii
            | Func::Trim
            | Func::Join
            | Func::ToJson
            | Func::String => Some(T::String),
            Func::Split | Func::Words => Some(T::List),
            Func::Contains | Func::StartsWith | Func::EndsWith => Some(T::Bool),
            Func::ParseJson => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Func::Size => "size",
            Func::Lower => "lower",
            Func::Upper => "upper",
            Func::LowerAscii => "lowerAscii",
            Func::UpperAscii => "upperAscii",
            Func::Trim => "trim",
            Func::Split => "split",
            Func::Words => "words",
            Func::Join => "join",
            Func::Contains => "contains",
            Func::StartsWith => "startsWith",
            Func::EndsWith => "endsWith",
            Func::ParseJson => "parseJson",
            Func::ToJson => "toJson",
            Func::String => "string",
            Func::Int => "int",
            Func::UInt => "uint",
            Func::Double => "double",
        }
    }
}

pub(super) fn arg_type_error<T>(f: Func, i: usize, v: &Value) -> Result<T, EvalError> {
    let what = if i == 0 {
        "receiver".to_string()
    } else {
        format!("argument {i}")
    };
    let expected = f
        .params()
        .get(i)
        .map(|p| p.iter().map(|t| t.name()).collect::<Vec<_>>().join(" or "))
        .unwrap_or_default();
    rerr(format!(
        "{}(): {what} must be {expected}, got {}",
        f.name(),
        v.value_type()
    ))
}

pub(super) fn str_arg(f: Func, i: usize, v: &Value) -> Result<&str, EvalError> {
    match v {
        Value::String(s) => Ok(s),
        other => arg_type_error(f, i, other),
    }
}

/// A string on its way through string functions (`value.trim().lower().words()`): borrowed
/// from a record or constant while unchanged, and owned once a function rewrote it, so the
/// intermediate results never become `Value`s (no shared allocation, no copy into one).
pub(super) enum Text<'a> {
    /// A whole string value, unchanged.
    Whole(&'a Str),
    /// A string value computed by a nested expression, unchanged.
    Shared(Str),
    /// Part of a borrowed string (`trim`).
    Slice(&'a str),
    Owned(String),
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Text::Whole(s) => s,
            Text::Shared(s) => s,
            Text::Slice(s) => s,
            Text::Owned(s) => s,
        }
    }
}

impl Text<'_> {
    fn into_value(self) -> Value {
        match self {
            Text::Whole(s) => Value::String(s.clone()),
            Text::Shared(s) => Value::String(s),
            Text::Slice(s) => Value::from(s),
            Text::Owned(s) => Value::from(s),
        }
    }

    /// Replaces the text by `f(text)` when `changes(text)`; an owned ASCII text is rewritten
    /// in place by `ascii` instead (the ASCII mappings keep every byte's position).
    fn rewrite(
        self,
        changes: impl Fn(&str) -> bool,
        f: impl FnOnce(&str) -> String,
        ascii: impl FnOnce(&mut str),
    ) -> Self {
        if !changes(&self) {
            return self;
        }
        match self {
            Text::Owned(mut s) if s.is_ascii() => {
                ascii(&mut s);
                Text::Owned(s)
            }
            other => Text::Owned(f(&other)),
        }
    }
}

/// Whether `f` takes only a string and returns a string.
pub(super) fn is_text_fn(f: Func) -> bool {
    matches!(
        f,
        Func::Lower | Func::Upper | Func::LowerAscii | Func::UpperAscii | Func::Trim
    )
}

/// Evaluates the string receiver of `consumer` (a one-argument string function); the error
/// for a non-string is the one `consumer` reports.
pub(super) fn eval_text<'a>(
    node: &'a Node,
    env: &Env<'a>,
    consumer: Func,
) -> Result<Text<'a>, EvalError> {
    if let Node::Call(g, a) = node
        && is_text_fn(*g)
    {
        return text_call(*g, a, env);
    }
    match operand_of(node, env)? {
        Cow::Borrowed(Value::String(s)) => Ok(Text::Whole(s)),
        Cow::Owned(Value::String(s)) => Ok(Text::Shared(s)),
        other => arg_type_error(consumer, 0, &other),
    }
}

/// `lower`, `upper`, `lowerAscii`, `upperAscii` and `trim`. A string that does not change is
/// returned as it is.
pub(super) fn text_call<'a>(
    f: Func,
    args: &'a [Node],
    env: &Env<'a>,
) -> Result<Text<'a>, EvalError> {
    let t = eval_text(&args[0], env, f)?;
    env.budget.charge_bytes(t.len(), f.name())?;
    Ok(match f {
        Func::Lower => t.rewrite(
            |s| {
                if s.is_ascii() {
                    s.bytes().any(|b| b.is_ascii_uppercase())
                } else {
                    s.chars().any(char::is_uppercase)
                }
            },
            str::to_lowercase,
            str::make_ascii_lowercase,
        ),
        Func::Upper => t.rewrite(
            |s| {
                if s.is_ascii() {
                    s.bytes().any(|b| b.is_ascii_lowercase())
                } else {
                    s.chars().any(char::is_lowercase)
                }
            },
            str::to_uppercase,
            str::make_ascii_uppercase,
        ),
        Func::LowerAscii => t.rewrite(
            |s| s.bytes().any(|b| b.is_ascii_uppercase()),
            str::to_ascii_lowercase,
            str::make_ascii_lowercase,
        ),
        Func::UpperAscii => t.rewrite(
            |s| s.bytes().any(|b| b.is_ascii_lowercase()),
            str::to_ascii_uppercase,
            str::make_ascii_uppercase,
        ),
        Func::Trim => {
            let trimmed = t.trim();
            if trimmed.len() == t.len() {
                t
            } else {
                match t {
                    Text::Whole(s) => Text::Slice(s.trim()),
                    Text::Slice(s) => Text::Slice(s.trim()),
                    other => Text::Owned(other.trim().to_string()),
                }
            }
        }
        _ => unreachable!("not a text function"),
    })
}

pub(super) fn call<'a>(f: Func, args: &'a [Node], env: &Env<'a>) -> Result<Value, EvalError> {
    if is_text_fn(f) {
        return text_call(f, args, env).map(Text::into_value);
    }
    if f == Func::Words {
        let t = eval_text(&args[0], env, f)?;
        env.budget.charge_bytes(t.len(), f.name())?;
        return pieces(t.split_whitespace(), env, f);
    }
    let recv = operand_of(&args[0], env)?;
    let r: &Value = &recv;
    let second = match args.get(1) {
        Some(n) => Some(operand_of(n, env)?),
        None => None,
    };
    // Text the function reads (every function but `join` and `toJson` reads its string
    // arguments whole, at most once).
    for v in std::iter::once(r).chain(second.as_deref()) {
        match v {
            Value::String(s) => env.budget.charge_bytes(s.len(), f.name())?,
            Value::Bytes(b) => env.budget.charge_bytes(b.len(), f.name())?,
            _ => {}
        }
    }
    match f {
        Func::Size => Ok(Value::Int(match r {
            Value::String(s) => s.chars().count() as i64,
            Value::Bytes(b) => b.len() as i64,
            Value::List(l) => l.len() as i64,
            Value::Map(m) => m.len() as i64,
            other => return arg_type_error(f, 0, other),
        })),
        Func::Lower
        | Func::Upper
        | Func::LowerAscii
        | Func::UpperAscii
        | Func::Trim
        | Func::Words => unreachable!("handled above"),
        Func::Split => {
            let s = str_arg(f, 0, r)?;
            let sep = str_arg(f, 1, second.as_deref().expect("arity checked"))?;
            if sep.is_empty() {
                return pieces(s.matches(|_: char| true), env, f);
            }
            pieces(s.split(sep), env, f)
        }
        Func::Join => {
            let Value::List(items) = r else {
                return arg_type_error(f, 0, r);
            };
            let sep = match second.as_deref() {
                Some(v) => str_arg(f, 1, v)?,
                None => "",
            };
            // The size first: the budget is charged before the text is built.
            let mut len = sep.len().saturating_mul(items.len().saturating_sub(1));
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => len = len.saturating_add(s.len()),
                    other => {
                        return rerr(format!(
                            "join(): list element {i} is a {}, not a string",
                            other.value_type()
                        ));
                    }
                }
            }
            env.budget.charge_bytes(len, f.name())?;
            let mut out = String::with_capacity(len);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                out.push_str(item.as_str().unwrap_or_default());
            }
            Ok(Value::String(Str::from(out)))
        }
        Func::Contains | Func::StartsWith | Func::EndsWith => {
            let s = str_arg(f, 0, r)?;
            let p = str_arg(f, 1, second.as_deref().expect("arity checked"))?;
            Ok(Value::Bool(match f {
                Func::Contains => s.contains(p),
                Func::StartsWith => s.starts_with(p),
                _ => s.ends_with(p),
            }))
        }
        Func::ParseJson => {
            // The values built take several times the text's size: a unit per byte.
            if let Value::String(s) = r {
                env.budget.charge(s.len() as u64, f.name())?;
            }
            let parsed: Result<serde_json::Value, _> = match r {
                Value::String(s) => serde_json::from_str(s),
                Value::Bytes(b) => serde_json::from_slice(b),
                other => return arg_type_error(f, 0, other),
            };
            match parsed {
                Ok(j) => Ok(Value::from(j)),
                Err(e) => rerr(format!("parseJson(): invalid JSON: {e}")),
            }
        }
        Func::ToJson => Ok(Value::String(Str::from(json_text(r, env, f)?))),
        Func::String => Ok(match r {
            Value::String(_) => r.clone(),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => Value::from(s),
                Err(_) => return rerr("string(): bytes are not valid UTF-8"),
            },
            Value::Null => Value::from("null"),
            other => Value::String(Str::from(json_text(other, env, f)?)),
        }),
        Func::Int => match r {
            Value::Int(_) => Ok(r.clone()),
            Value::UInt(u) => i64::try_from(*u)
                .map(Value::Int)
                .or_else(|_| rerr(format!("int(): {u} is out of range"))),
            Value::Double(d) => {
                if d.is_finite() && *d >= -9.223_372_036_854_776e18 && *d < 9.223_372_036_854_776e18
                {
                    Ok(Value::Int(*d as i64))
                } else {
                    rerr(format!("int(): {d} is out of range"))
                }
            }
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(Value::Int)
                .or_else(|_| rerr(format!("int(): cannot parse '{s}' as an integer"))),
            other => arg_type_error(f, 0, other),
        },
        Func::UInt => {
            match r {
                Value::UInt(_) => Ok(r.clone()),
                Value::Int(i) => u64::try_from(*i)
                    .map(Value::UInt)
                    .or_else(|_| rerr(format!("uint(): {i} is out of range"))),
                Value::Double(d) => {
                    if d.is_finite() && *d >= 0.0 && *d < 1.844_674_407_370_955_2e19 {
                        Ok(Value::UInt(*d as u64))
                    } else {
                        rerr(format!("uint(): {d} is out of range"))
                    }
                }
                Value::String(s) => s.trim().parse::<u64>().map(Value::UInt).or_else(|_| {
                    rerr(format!("uint(): cannot parse '{s}' as an unsigned integer"))
                }),
                other => arg_type_error(f, 0, other),
            }
        }
        Func::Double => match r {
            Value::Double(_) => Ok(r.clone()),
            Value::Int(i) => Ok(Value::Double(*i as f64)),
            Value::UInt(u) => Ok(Value::Double(*u as f64)),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map(Value::Double)
                .or_else(|_| rerr(format!("double(): cannot parse '{s}' as a number"))),
            other => arg_type_error(f, 0, other),
        },
    }
}

/// A list of the `pieces` of a string (`split`, `words`), charging a unit per element as it
/// grows, so an oversized result fails before it is built.
fn pieces<'s>(
    pieces: impl Iterator<Item = &'s str>,
    env: &Env<'_>,
    f: Func,
) -> Result<Value, EvalError> {
    let mut out = Vec::new();
    for p in pieces {
        env.budget.charge(1, f.name())?;
        out.push(Value::from(p));
    }
    Ok(Value::List(out.into()))
}

/// `v`'s JSON text, charged to the budget as it is written: writing stops when the text
/// outgrows what the budget has left.
fn json_text(v: &Value, env: &Env<'_>, f: Func) -> Result<String, EvalError> {
    struct Capped {
        out: String,
        cap: u64,
    }
    impl std::fmt::Write for Capped {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if (self.out.len() + s.len()) as u64 > self.cap {
                return Err(std::fmt::Error);
            }
            self.out.push_str(s);
            Ok(())
        }
    }
    let mut w = Capped {
        out: String::new(),
        cap: env.budget.left().saturating_mul(8),
    };
    let written = v.write_json(&mut w);
    // Charged in full either way: an oversized text fails here with the budget's message.
    env.budget.charge_bytes(
        if written.is_ok() {
            w.out.len()
        } else {
            usize::MAX
        },
        f.name(),
    )?;
    Ok(w.out)
}
