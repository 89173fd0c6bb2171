//! The tree-walking evaluator: operators, field and index access, comprehensions.

use std::borrow::Cow;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::sync::Arc;

use super::functions::call;
use super::limits::Budget;
use super::node::{BinOp, Comprehension, Node};
use super::small_str::Str;
use super::value::{Value, ValueMap};
use super::{EvalError, rerr};

pub(super) struct Env<'a> {
    pub(super) args: &'a [&'a Value],
    pub(super) locals: RefCell<Vec<Value>>,
    pub(super) budget: Budget,
}

/// [`eval`] for an operand: constants and variables, the usual leaves (`value[0]`,
/// `acc[1] + value[1]`), are resolved here without a call into the (large) evaluator.
#[inline(always)]
pub(super) fn operand_of<'a>(node: &'a Node, env: &Env<'a>) -> Result<Cow<'a, Value>, EvalError> {
    match node {
        Node::Const(v) => Ok(Cow::Borrowed(v)),
        Node::Arg(i) => Ok(Cow::Borrowed(env.args[*i])),
        Node::ArgIndex { arg, index, path } => {
            index_of(env.args[*arg], index, path).map(Cow::Borrowed)
        }
        other => eval(other, env),
    }
}

/// Whether `node` is a constant, a variable or a constant index of a variable: always a
/// borrowed value, resolved by [`leaf_of`].
pub(super) fn is_leaf(node: &Node) -> bool {
    matches!(node, Node::Const(_) | Node::Arg(_) | Node::ArgIndex { .. })
}

/// [`operand_of`] for a node [`is_leaf`] accepted, without the `Cow` (these are copied
/// several times per record on the hot paths).
#[inline(always)]
pub(super) fn leaf_of<'a>(node: &'a Node, env: &Env<'a>) -> Result<&'a Value, EvalError> {
    match node {
        Node::Const(v) => Ok(v),
        Node::Arg(i) => Ok(env.args[*i]),
        Node::ArgIndex { arg, index, path } => index_of(env.args[*arg], index, path),
        _ => unreachable!("not a leaf"),
    }
}

/// [`eval`] for a changed element of an accumulator: the usual one, `acc[1] + value[1]`,
/// is a binary operation on two leaves, computed here without a call into the (large)
/// evaluator and without wrapping its result.
#[inline(always)]
pub(super) fn element_of<'a>(node: &'a Node, env: &Env<'a>) -> Result<Value, EvalError> {
    if let Node::Bin(op, l, r) = node
        && is_leaf(l)
        && is_leaf(r)
    {
        let (a, b) = (leaf_of(l, env)?, leaf_of(r, env)?);
        if let (Value::Int(x), Value::Int(y), BinOp::Add | BinOp::Sub | BinOp::Mul) = (a, b, op) {
            return int_op(*op, *x, *y).map(Value::Int);
        }
        charge_binary(env, *op, a, b)?;
        return binary(*op, a, b);
    }
    operand_of(node, env).map(Cow::into_owned)
}

pub(super) fn eval<'a>(node: &'a Node, env: &Env<'a>) -> Result<Cow<'a, Value>, EvalError> {
    Ok(match node {
        Node::Const(v) => Cow::Borrowed(v),
        Node::Arg(i) => Cow::Borrowed(env.args[*i]),
        Node::Local(i) => Cow::Owned(env.locals.borrow()[*i].clone()),
        Node::List(items) => Cow::Owned(Value::List(eval_list(items, env)?)),
        Node::Map(entries) => {
            let mut out = ValueMap::new();
            for (k, v) in entries {
                let key = match eval(k, env)?.into_owned() {
                    Value::String(s) => s.into_arc(),
                    other => {
                        return rerr(format!(
                            "map keys must be strings, got {}",
                            other.value_type()
                        ));
                    }
                };
                out.insert(key, eval(v, env)?.into_owned());
            }
            Cow::Owned(Value::Map(Arc::new(out)))
        }
        Node::Field {
            operand,
            field,
            path,
        } => match operand_of(operand, env)? {
            Cow::Borrowed(v) => Cow::Borrowed(select(v, field, path)?),
            Cow::Owned(v) => Cow::Owned(select(&v, field, path)?.clone()),
        },
        Node::Has {
            operand,
            field,
            path,
        } => match &*eval(operand, env)? {
            Value::Map(m) => Cow::Owned(Value::Bool(m.contains_key(&**field))),
            other => {
                return rerr(format!(
                    "has({path}.{field}): {path} is a {}, not a map",
                    other.value_type()
                ));
            }
        },
        Node::ArgIndex { arg, index, path } => {
            Cow::Borrowed(index_of(env.args[*arg], index, path)?)
        }
        Node::Index {
            operand,
            index,
            path,
        } => {
            let i = operand_of(index, env)?;
            match operand_of(operand, env)? {
                Cow::Borrowed(v) => Cow::Borrowed(index_of(v, &i, path)?),
                Cow::Owned(v) => Cow::Owned(index_of(&v, &i, path)?.clone()),
            }
        }
        Node::Not(x) => match &*eval(x, env)? {
            Value::Bool(b) => Cow::Owned(Value::Bool(!b)),
            other => return rerr(format!("'!' needs a bool, got {}", other.value_type())),
        },
        Node::Neg(x) => match &*eval(x, env)? {
            Value::Int(i) => match i.checked_neg() {
                Some(n) => Cow::Owned(Value::Int(n)),
                None => return rerr("integer overflow in unary '-'"),
            },
            Value::Double(d) => Cow::Owned(Value::Double(-d)),
            other => {
                return rerr(format!(
                    "unary '-' needs an int or a double, got {}",
                    other.value_type()
                ));
            }
        },
        Node::And(a, b) => Cow::Owned(Value::Bool(logic(a, b, env, false)?)),
        Node::Or(a, b) => Cow::Owned(Value::Bool(logic(a, b, env, true)?)),
        Node::Cond(c, a, b) => match &*eval(c, env)? {
            Value::Bool(true) => eval(a, env)?,
            Value::Bool(false) => eval(b, env)?,
            other => {
                return rerr(format!(
                    "the condition of '?:' must be a bool, got {}",
                    other.value_type()
                ));
            }
        },
        Node::Bin(op, a, b) => {
            let l = operand_of(a, env)?;
            let r = operand_of(b, env)?;
            charge_binary(env, *op, &l, &r)?;
            Cow::Owned(binary(*op, &l, &r)?)
        }
        Node::Call(f, args) => Cow::Owned(call(*f, args, env)?),
        Node::NotStrictlyFalse(x) => Cow::Owned(Value::Bool(!matches!(
            eval(x, env).as_deref(),
            Ok(Value::Bool(false))
        ))),
        Node::Loop(c) => Cow::Owned(comprehension(c, env)?),
    })
}

/// Evaluates the elements of a list literal into one allocation: short lists (pairs,
/// triples) go through the stack so the shared slice is allocated at its exact size once.
pub(super) fn eval_list<'a>(items: &'a [Node], env: &Env<'a>) -> Result<Arc<[Value]>, EvalError> {
    let item = |i: usize| {
        let node = &items[i];
        if is_leaf(node) {
            leaf_of(node, env).cloned()
        } else {
            operand_of(node, env).map(Cow::into_owned)
        }
    };
    // Lists of variables, their elements and constants (`[value, 1]`, once per record of
    // a map): the elements are found first, then cloned straight into the allocation.
    // Passing each through a `Result` on the stack first wrote it in small pieces and read
    // it back whole, which stalled the CPU's store forwarding on every element.
    const DIRECT: usize = 4;
    static NULL: Value = Value::Null;
    if items.len() <= DIRECT && items.iter().all(is_leaf) {
        let mut refs = [&NULL; DIRECT];
        for (r, node) in refs.iter_mut().zip(items) {
            *r = leaf_of(node, env)?;
        }
        return Ok(refs[..items.len()].iter().map(|v| (*v).clone()).collect());
    }
    // Short lists (pairs above all) from fixed-size arrays: one allocation and a copy of
    // known size, no intermediate buffer.
    match items.len() {
        1 => return Ok(Arc::from([item(0)?])),
        2 => return Ok(Arc::from([item(0)?, item(1)?])),
        3 => return Ok(Arc::from([item(0)?, item(1)?, item(2)?])),
        _ => {}
    }
    let mut out = Vec::with_capacity(items.len());
    for n in items {
        out.push(operand_of(n, env)?.into_owned());
    }
    Ok(Arc::from(out))
}

pub(super) fn comprehension(c: &Comprehension, env: &Env<'_>) -> Result<Value, EvalError> {
    let range = eval(&c.range, env)?.into_owned();
    let init = eval(&c.init, env)?.into_owned();
    env.locals.borrow_mut()[c.accu] = init;
    let step = |iter: Value, iter2: Option<Value>| -> Result<bool, EvalError> {
        env.budget.charge(c.iteration_cost, "a macro loop")?;
        {
            let mut locals = env.locals.borrow_mut();
            locals[c.iter] = iter;
            if let (Some(slot), Some(v)) = (c.iter2, iter2) {
                locals[slot] = v;
            }
        }
        match &*eval(&c.cond, env)? {
            Value::Bool(false) => return Ok(false),
            Value::Bool(true) => {}
            other => {
                return rerr(format!(
                    "loop condition must be a bool, got {}",
                    other.value_type()
                ));
            }
        }
        let next = eval(&c.step, env)?.into_owned();
        env.locals.borrow_mut()[c.accu] = next;
        Ok(true)
    };
    match &range {
        Value::List(items) => {
            for (i, v) in items.iter().enumerate() {
                let go = if c.iter2.is_some() {
                    step(Value::Int(i as i64), Some(v.clone()))?
                } else {
                    step(v.clone(), None)?
                };
                if !go {
                    break;
                }
            }
        }
        Value::Map(m) => {
            for (k, v) in m.iter() {
                if !step(Value::String(Str::from(k)), Some(v.clone()))? {
                    break;
                }
            }
        }
        other => {
            return rerr(format!(
                "cannot iterate over a {} (macros need a list or a map)",
                other.value_type()
            ));
        }
    }
    Ok(eval(&c.result, env)?.into_owned())
}

/// Charges, before [`binary`] runs, for the text or list data it builds (`+`) or scans
/// (`==`, `<`, `in`); numbers cost nothing here.
#[inline]
pub(super) fn charge_binary(
    env: &Env<'_>,
    op: BinOp,
    a: &Value,
    b: &Value,
) -> Result<(), EvalError> {
    let what = op.symbol();
    match (a, b) {
        (Value::String(x), Value::String(y)) => env.budget.charge_bytes(x.len() + y.len(), what),
        (Value::Bytes(x), Value::Bytes(y)) => env.budget.charge_bytes(x.len() + y.len(), what),
        (Value::List(x), Value::List(y)) => env.budget.charge((x.len() + y.len()) as u64, what),
        (Value::Map(x), Value::Map(y)) => env.budget.charge((x.len() + y.len()) as u64, what),
        (_, Value::List(y)) if op == BinOp::In => env.budget.charge(y.len() as u64, what),
        _ => Ok(()),
    }
}

/// `&&` (`short == false`) and `||` (`short == true`) with CEL's commutative error handling:
/// a deciding operand wins over an error on the other side.
pub(super) fn logic<'a>(
    a: &'a Node,
    b: &'a Node,
    env: &Env<'a>,
    short: bool,
) -> Result<bool, EvalError> {
    let sym = if short { "||" } else { "&&" };
    let left = match eval(a, env).as_deref() {
        Ok(Value::Bool(x)) if *x == short => return Ok(short),
        Ok(Value::Bool(_)) => Ok(()),
        Ok(other) => rerr(format!("'{sym}' needs bools, got {}", other.value_type())),
        Err(e) => Err(e.clone()),
    };
    match eval(b, env).as_deref() {
        Ok(Value::Bool(x)) if *x == short => Ok(short),
        Ok(Value::Bool(x)) => left.map(|_| *x),
        Ok(other) => {
            left?;
            rerr(format!("'{sym}' needs bools, got {}", other.value_type()))
        }
        Err(e) => {
            left?;
            Err(e.clone())
        }
    }
}

pub(super) fn select<'v>(v: &'v Value, field: &str, path: &str) -> Result<&'v Value, EvalError> {
    match v {
        Value::Map(m) => match m.get(field) {
            Some(x) => Ok(x),
            None => rerr(format!("{path}: no such key '{field}'")),
        },
        other => rerr(format!(
            "{path}: cannot select field '{field}' of a {}",
            other.value_type()
        )),
    }
}

pub(super) fn index_of<'v>(
    v: &'v Value,
    index: &Value,
    path: &str,
) -> Result<&'v Value, EvalError> {
    match (v, index) {
        (Value::List(l), Value::Int(_) | Value::UInt(_) | Value::Double(_)) => {
            let i = match index {
                Value::Int(i) => *i,
                Value::UInt(u) => i64::try_from(*u).unwrap_or(i64::MAX),
                Value::Double(d) if d.fract() == 0.0 => *d as i64,
                _ => {
                    return rerr(format!(
                        "{path}: list index must be an integer, got {index}"
                    ));
                }
            };
            if i < 0 || i as u64 >= l.len() as u64 {
                return rerr(format!(
                    "{path}: index {i} out of range for a list of size {}",
                    l.len()
                ));
            }
            Ok(&l[i as usize])
        }
        (Value::Map(m), Value::String(k)) => match m.get(&**k) {
            Some(x) => Ok(x),
            None => rerr(format!("{path}: no such key '{k}'")),
        },
        (Value::List(_), other) => rerr(format!(
            "{path}: list index must be an int, got {}",
            other.value_type()
        )),
        (Value::Map(_), other) => rerr(format!(
            "{path}: map key must be a string, got {}",
            other.value_type()
        )),
        (other, _) => rerr(format!("{path}: cannot index a {}", other.value_type())),
    }
}

/// CEL `==`: numbers compare by value across int, uint and double; lists and maps
/// element-wise; values of different types are unequal.
pub fn cel_equals(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| cel_equals(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| cel_equals(v, w)))
        }
        (Value::Double(x), Value::Double(y)) => x == y,
        _ if a.value_type().is_numeric() && b.value_type().is_numeric() => {
            num_cmp(a, b) == Some(Ordering::Equal)
        }
        _ => a == b,
    }
}

pub(super) fn num_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::UInt(x), Value::UInt(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::UInt(y)) => Some(if *x < 0 {
            Ordering::Less
        } else {
            (*x as u64).cmp(y)
        }),
        (Value::UInt(_), Value::Int(_)) => num_cmp(b, a).map(Ordering::reverse),
        _ => as_f64(a)?.partial_cmp(&as_f64(b)?),
    }
}

pub(super) fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Double(d) => Some(*d),
        _ => None,
    }
}

pub(super) fn overload<T>(op: BinOp, a: &Value, b: &Value) -> Result<T, EvalError> {
    rerr(format!(
        "no operator '{}' for {} and {}",
        op.symbol(),
        a.value_type(),
        b.value_type()
    ))
}

pub(super) fn binary(op: BinOp, a: &Value, b: &Value) -> Result<Value, EvalError> {
    // Counters and sums: int arithmetic first, before the general dispatch below.
    if let (Value::Int(x), Value::Int(y), BinOp::Add | BinOp::Sub | BinOp::Mul) = (a, b, op) {
        return int_op(op, *x, *y).map(Value::Int);
    }
    match op {
        BinOp::Eq => return Ok(Value::Bool(cel_equals(a, b))),
        BinOp::Ne => return Ok(Value::Bool(!cel_equals(a, b))),
        BinOp::In => {
            return match b {
                Value::List(l) => Ok(Value::Bool(l.iter().any(|x| cel_equals(a, x)))),
                Value::Map(m) => Ok(Value::Bool(a.as_str().is_some_and(|k| m.contains_key(k)))),
                _ => overload(op, a, b),
            };
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ord = match (a, b) {
                (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
                (Value::Bytes(x), Value::Bytes(y)) => Some(x.cmp(y)),
                (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
                _ if a.value_type().is_numeric() && b.value_type().is_numeric() => num_cmp(a, b),
                _ => return overload(op, a, b),
            };
            let r = match ord {
                None => false, // NaN
                Some(o) => match op {
                    BinOp::Lt => o.is_lt(),
                    BinOp::Le => o.is_le(),
                    BinOp::Gt => o.is_gt(),
                    _ => o.is_ge(),
                },
            };
            return Ok(Value::Bool(r));
        }
        _ => {}
    }
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => int_op(op, *x, *y).map(Value::Int),
        (Value::UInt(x), Value::UInt(y)) => int_op(op, *x, *y).map(Value::UInt),
        (Value::Int(_) | Value::UInt(_), Value::Int(_) | Value::UInt(_)) => {
            match (a.as_i64(), b.as_i64()) {
                (Some(x), Some(y)) => int_op(op, x, y).map(Value::Int),
                _ => rerr(format!("integer overflow in '{}'", op.symbol())),
            }
        }
        (Value::Double(_), _) | (_, Value::Double(_))
            if a.value_type().is_numeric() && b.value_type().is_numeric() =>
        {
            let (x, y) = (as_f64(a).unwrap_or(0.0), as_f64(b).unwrap_or(0.0));
            Ok(Value::Double(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div => x / y,
                _ => return overload(op, a, b),
            }))
        }
        (Value::String(x), Value::String(y)) if op == BinOp::Add => {
            let mut s = String::with_capacity(x.len() + y.len());
            s.push_str(x);
            s.push_str(y);
            Ok(Value::String(Str::from(s)))
        }
        (Value::Bytes(x), Value::Bytes(y)) if op == BinOp::Add => {
            Ok(Value::Bytes(x.iter().chain(y.iter()).copied().collect()))
        }
        (Value::List(x), Value::List(y)) if op == BinOp::Add => {
            if y.is_empty() {
                return Ok(a.clone());
            }
            if x.is_empty() {
                return Ok(b.clone());
            }
            Ok(Value::List(x.iter().chain(y.iter()).cloned().collect()))
        }
        _ => overload(op, a, b),
    }
}

/// Checked integer arithmetic, one body for `int` and `uint` (monomorphised: as fast as
/// two hand-written copies).
pub(super) trait CheckedInt: Copy + Default + PartialEq + std::fmt::Display {
    /// "integer" or "unsigned", for overflow errors.
    const WHAT: &'static str;
    fn checked(op: BinOp, x: Self, y: Self) -> Option<Self>;
}

macro_rules! checked_int {
    ($($t:ty => $what:literal),*) => {$(
        impl CheckedInt for $t {
            const WHAT: &'static str = $what;
            #[inline]
            fn checked(op: BinOp, x: Self, y: Self) -> Option<Self> {
                match op {
                    BinOp::Add => x.checked_add(y),
                    BinOp::Sub => x.checked_sub(y),
                    BinOp::Mul => x.checked_mul(y),
                    BinOp::Div => x.checked_div(y),
                    BinOp::Rem => x.checked_rem(y),
                    _ => unreachable!("not arithmetic"),
                }
            }
        }
    )*};
}
checked_int!(i64 => "integer", u64 => "unsigned");

#[inline]
pub(super) fn int_op<N: CheckedInt>(op: BinOp, x: N, y: N) -> Result<N, EvalError> {
    if y == N::default() && matches!(op, BinOp::Div | BinOp::Rem) {
        return rerr(if op == BinOp::Div {
            "division by zero"
        } else {
            "modulus by zero"
        });
    }
    N::checked(op, x, y).ok_or_else(|| EvalError {
        message: format!("{} overflow in {x} {} {y}", N::WHAT, op.symbol()),
    })
}
