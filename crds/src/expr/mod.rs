//! CEL expressions of declarative jobs, compiled once into a tree evaluator.
//!
//! The `cel` crate parses (and expands the standard macros such as `exists`, `all`, `map`,
//! `filter`, `has`); this module compiles its AST into its own `Node` tree over [`Value`]:
//! variables are resolved to positional slots at compile time (no per-record map of
//! variables, no name lookups), literals are pre-built values, and evaluation borrows from
//! the input records where it can (`value.user_id` or `value[0]` do not clone the record).
//! Static result types are inferred where they can be known, so validation can reject e.g.
//! a `filter` whose expression is `value + 1`.
//!
//! Supported: null/bool/int/uint/double/string/bytes literals, lists, maps (string keys),
//! `a.f`, `a["f"]`, `a[0]`, `+ - * / %`, comparisons, `&& || !`, `?:`, `in`, `has()`, the
//! standard macros (`all`, `exists`, `exists_one`, `map`, `filter`), and the functions
//! `size`, `lower`, `upper`, `lowerAscii`, `upperAscii`, `trim`, `split`, `words`, `join`,
//! `contains`, `startsWith`, `endsWith`, `parseJson`, `toJson`, `string`, `int`, `uint`,
//! `double` (each callable as `f(x, ...)` or `x.f(...)`).
//!
//! Deviations from CEL, chosen for JSON data: arithmetic and comparisons mix int, uint and
//! double (`1 + 2.5 == 3.5`), ints promote to double when a double is involved; `string()`
//! of a list or map gives its JSON text. Map keys are strings. docs/expressions.md is the
//! user's reference.
//!
//! Files: `parse` (text -> the `cel` crate's AST, after the length and depth checks),
//! `compile` (AST -> `node` tree, with static type checks), `eval` (operators and
//! comprehensions), `functions` (named functions), `limits` (the limits, the static cost
//! estimate and the run-time budget), `slots` (reduce updates on an accumulator held as its
//! elements), `value`/`small_str` (the record type).

mod small_str;
mod value;
mod value_serde;

mod compile;
mod eval;
mod functions;
mod limits;
mod node;
mod parse;
mod slots;

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use compile::Compiler;
use eval::{Env, element_of, eval, eval_list, operand_of};
use functions::{Func, eval_text};
use limits::Budget;
use node::Node;
use slots::{MAX_SLOTS, SlotPlan};

pub use eval::cel_equals;
pub use limits::{
    ASSUMED_LIST_SIZE, MAX_COST, MAX_DEPTH, MAX_EXPRESSION_LENGTH, MAX_NESTING, PARSE_STACK,
};

pub use small_str::{INLINE_CAP, Str};
pub use value::{Value, ValueMap, ValueType};
pub use value_serde::SERDE_ENUM_NAME;

/// An expression that does not compile: syntax error, unknown variable or function, or a
/// type error that is certain at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub message: String,
    /// 1-based line and column of a syntax error, when known.
    pub position: Option<(u32, u32)>,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((l, c)) => write!(f, "syntax error at {l}:{c}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ExprError {}

pub(super) fn cerr(message: impl Into<String>) -> ExprError {
    ExprError {
        message: message.into(),
        position: None,
    }
}

/// `source` for an error message: whole if it is short, else its start on one line and its
/// length (an error must never echo a 10 KB expression back).
pub fn excerpt(source: &str) -> Cow<'_, str> {
    const SHOWN: usize = 60;
    if source.len() <= SHOWN && !source.contains('\n') {
        return Cow::Borrowed(source);
    }
    let start: String = source
        .chars()
        .take(SHOWN)
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    Cow::Owned(format!("{start}... ({} bytes)", source.len()))
}

/// A runtime failure of an expression on one record (missing field, wrong type, division by
/// zero, overflow, ...). The message names the field or operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    pub message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EvalError {}

/// Why [`Program::eval_each`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EachError<E> {
    /// The expression failed on this record.
    Eval(EvalError),
    /// The expression returned a value of this type instead of a list.
    NotAList(ValueType),
    /// The callback failed.
    Emit(E),
}

pub(super) fn rerr<T>(message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError {
        message: message.into(),
    })
}

/// A compiled expression. Cheap to share (`Send + Sync`); evaluate it with
/// [`Program::eval`], binding the variables positionally in the order given to
/// [`Program::compile`].
#[derive(Debug, Clone)]
pub struct Program {
    root: Node,
    source: Arc<str>,
    vars: Vec<Arc<str>>,
    locals: usize,
    ty: Option<ValueType>,
    /// The program rewritten for [`Program::update_slots`], when its shape allows.
    slots: Option<SlotPlan>,
}

impl Program {
    /// Parses and compiles `source` with the variables `vars` (e.g. `&["value"]`, or
    /// `&["acc", "value", "key"]` for `reduce`).
    ///
    /// Runs on a thread of its own with a [`PARSE_STACK`]-byte stack: the `cel` crate's
    /// parser takes up to 160 KB of stack per nesting level (in a debug build), more than a
    /// worker or operator thread may have left.
    pub fn compile(source: &str, vars: &[&str]) -> Result<Program, ExprError> {
        std::thread::scope(|s| {
            let parser = std::thread::Builder::new()
                .name("expr-compile".into())
                .stack_size(PARSE_STACK)
                .spawn_scoped(s, || Program::compile_here(source, vars));
            match parser {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(e) => Err(cerr(format!(
                    "cannot start a thread to compile the expression: {e}"
                ))),
            }
        })
    }

    fn compile_here(source: &str, vars: &[&str]) -> Result<Program, ExprError> {
        let ast = parse::parse(source)?;
        let mut c = Compiler {
            vars,
            scopes: Vec::new(),
            locals: 0,
            depth: 0,
        };
        let (root, ty) = c.compile(&ast)?;
        let cost = limits::estimate_cost(&root);
        if cost > MAX_COST {
            return Err(ExprError {
                message: format!(
                    "expression's estimated cost {cost} exceeds the limit of {MAX_COST} \
                     units (nested macros multiply: each iterates its list, assumed \
                     {ASSUMED_LIST_SIZE} elements unless it is a literal)"
                ),
                position: None,
            });
        }
        let slots = if vars.is_empty() {
            None
        } else {
            SlotPlan::of(&root, 0, vars.len())
        };
        Ok(Program {
            root,
            source: Arc::from(source),
            vars: vars.iter().map(|v| Arc::from(*v)).collect(),
            locals: c.locals,
            ty,
            slots,
        })
    }

    /// The static result type, when it is known at compile time.
    pub fn result_type(&self) -> Option<ValueType> {
        self.ty
    }

    /// The expression text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The variable names, in binding order.
    pub fn vars(&self) -> &[Arc<str>] {
        &self.vars
    }

    /// Evaluates with `args[i]` bound to the `i`-th variable given to `compile`.
    pub fn eval(&self, args: &[&Value]) -> Result<Value, EvalError> {
        if let Node::List(items) = &self.root {
            // Records built by a list literal (`[value, 1]`, once per record of a map)
            // skip the general evaluator and its borrowed-or-owned result.
            let env = self.env(args)?;
            return eval_list(items, &env).map(Value::List);
        }
        self.eval_cow(args).map(Cow::into_owned)
    }

    /// Evaluates a boolean expression (e.g. a filter) without building a result value.
    pub fn eval_bool(&self, args: &[&Value]) -> Result<bool, EvalError> {
        match &*self.eval_cow(args)? {
            Value::Bool(b) => Ok(*b),
            other => rerr(format!(
                "expression '{}' returned a {}, expected a bool",
                excerpt(&self.source),
                other.value_type()
            )),
        }
    }

    /// Evaluates, borrowing the result from `args` or the program when possible.
    pub fn eval_cow<'a>(&'a self, args: &'a [&'a Value]) -> Result<Cow<'a, Value>, EvalError> {
        let env = self.env(args)?;
        operand_of(&self.root, &env)
    }

    #[inline(always)]
    fn env<'a>(&self, args: &'a [&'a Value]) -> Result<Env<'a>, EvalError> {
        if args.len() != self.vars.len() {
            return rerr(format!(
                "expression '{}' takes {} variable(s), {} given",
                excerpt(&self.source),
                self.vars.len(),
                args.len()
            ));
        }
        Ok(self.env_unchecked(args))
    }

    #[inline(always)]
    fn env_unchecked<'a>(&self, args: &'a [&'a Value]) -> Env<'a> {
        // Most expressions have no comprehension: skip building an empty vector per record.
        let locals = if self.locals == 0 {
            Vec::new()
        } else {
            vec![Value::Null; self.locals]
        };
        Env {
            args,
            locals: RefCell::new(locals),
            budget: Budget::new(),
        }
    }

    /// `Some(n)` when [`Program::update_slots`] can run this program on an accumulator
    /// held as `n` separate elements: the program is a list literal of `n` elements that
    /// reads its first variable only as `acc[k]`, with constant `k < n`.
    pub fn slot_count(&self) -> Option<usize> {
        self.slots.as_ref().map(|p| p.len)
    }

    /// [`Program::eval_update`] for an accumulator list held as its elements: evaluates
    /// with `slots[k]` as `acc[k]` (`acc` being the first variable) and `rest` bound to the
    /// other variables, and stores the elements of the result in `slots`. The result is
    /// that of [`Program::eval`] on the list of `slots`; on error `slots` is left unchanged.
    /// Fails if `slots.len()` is not [`Program::slot_count`].
    pub fn update_slots(&self, slots: &mut [Value], rest: &[&Value]) -> Result<(), EvalError> {
        const MAX_ARGS: usize = 4 + MAX_SLOTS;
        static NULL: Value = Value::Null;
        let vars = self.vars.len();
        let plan = match &self.slots {
            Some(plan) if plan.len == slots.len() && rest.len() + 1 == vars => plan,
            _ => {
                return rerr(format!(
                    "expression '{}' cannot update an accumulator of {} element(s) with {} \
                     variable(s)",
                    excerpt(&self.source),
                    slots.len(),
                    rest.len() + 1
                ));
            }
        };
        if vars + plan.len > MAX_ARGS {
            return self.update_slots_via_list(slots, rest);
        }
        // The accumulator itself is never read (the plan reads its slots): its place holds
        // a null. New elements are all computed before a slot is written, so a failing
        // element leaves the slots as they were.
        let mut all = [&NULL; MAX_ARGS];
        all[1..vars].copy_from_slice(rest);
        for (arg, slot) in all[vars..].iter_mut().zip(slots.iter()) {
            *arg = slot;
        }
        let env = self.env_unchecked(&all[..vars + plan.len]);
        if let [(i, node)] = plan.changed.as_slice() {
            // One changed element (a counter or a sum), the common case: straight into its
            // slot, without a buffer.
            let v = element_of(node, &env)?;
            drop(env);
            slots[*i] = v;
            return Ok(());
        }
        let mut new: [(usize, Value); MAX_SLOTS] = Default::default();
        for (out, (i, node)) in new.iter_mut().zip(&plan.changed) {
            *out = (*i, element_of(node, &env)?);
        }
        drop(env);
        for (i, v) in new.into_iter().take(plan.changed.len()) {
            slots[i] = v;
        }
        Ok(())
    }

    /// [`Program::update_slots`] through a list value, for programs with more variables
    /// than its fixed argument array holds.
    fn update_slots_via_list(&self, slots: &mut [Value], rest: &[&Value]) -> Result<(), EvalError> {
        let mut acc = Value::list(slots.to_vec());
        self.eval_update(&mut acc, rest)?;
        match acc {
            Value::List(items) if items.len() == slots.len() => {
                slots.clone_from_slice(&items);
                Ok(())
            }
            other => rerr(format!(
                "expression '{}' returned a {} instead of a list of {} elements",
                excerpt(&self.source),
                other.value_type(),
                slots.len()
            )),
        }
    }

    /// Evaluates with `acc` bound to the first variable and `rest` to the others, and stores
    /// the result in `acc`; on error `acc` is left unchanged. The result is always that of
    /// [`Program::eval`], but a reduce's running accumulator is usually a list literal over
    /// a list nobody else holds (`[acc[0], acc[1] + value[1]]`): that list is then updated
    /// in place, elements written `acc[i]` at position `i` are not touched, and no list is
    /// allocated per record.
    pub fn eval_update(&self, acc: &mut Value, rest: &[&Value]) -> Result<(), EvalError> {
        const MAX_ARGS: usize = 4;
        static NULL: Value = Value::Null;
        if let (Node::List(items), Value::List(list)) = (&self.root, &*acc)
            && items.len() == list.len()
            && rest.len() < MAX_ARGS
        {
            // New elements are all computed before the list is touched, so a failing
            // element leaves `acc` as it was. `acc` is a list of this length, so an element
            // written `acc[i]` at position `i` cannot fail and is the one already in place.
            let mut all = [&NULL; MAX_ARGS];
            all[0] = &*acc;
            for (slot, v) in all[1..].iter_mut().zip(rest) {
                *slot = v;
            }
            let env = self.env(&all[..=rest.len()])?;
            let mut changed = items
                .iter()
                .enumerate()
                .filter(|(i, node)| !is_arg_element(node, 0, *i));
            let Some((i, node)) = changed.next() else {
                return Ok(());
            };
            let v = element_of(node, &env)?;
            if changed.clone().next().is_none() {
                // One changed element (a counter or a sum), the common case: it goes
                // straight into its slot, without a buffer.
                drop(env);
                let Value::List(list) = acc else {
                    unreachable!("matched above")
                };
                Arc::make_mut(list)[i] = v;
                return Ok(());
            }
            let mut new = vec![(i, v)];
            for (i, node) in changed {
                new.push((i, element_of(node, &env)?));
            }
            drop(env);
            let Value::List(list) = acc else {
                unreachable!("matched above")
            };
            let slots = Arc::make_mut(list);
            for (i, v) in new {
                slots[i] = v;
            }
            return Ok(());
        }
        let next = {
            let mut all = Vec::with_capacity(rest.len() + 1);
            all.push(&*acc);
            all.extend_from_slice(rest);
            self.eval(&all)?
        };
        *acc = next;
        Ok(())
    }

    /// Passes each element of the list the expression returns to `f`, in order, stopping at
    /// the first error of `f`. A `flatMap` that splits a string into words
    /// (`value.lower().words()`) yields the words straight from the string: neither the list
    /// nor the intermediate strings are built. Nothing reaches `f` if the expression fails
    /// or does not return a list.
    pub fn eval_each<E>(
        &self,
        args: &[&Value],
        mut f: impl FnMut(Value) -> Result<(), E>,
    ) -> Result<(), EachError<E>> {
        let env = self.env(args).map_err(EachError::Eval)?;
        if let Node::Call(Func::Words, a) = &self.root {
            let text = eval_text(&a[0], &env, Func::Words).map_err(EachError::Eval)?;
            env.budget
                .charge_bytes(text.len(), Func::Words.name())
                .map_err(EachError::Eval)?;
            for w in text.split_whitespace() {
                f(Value::from(w)).map_err(EachError::Emit)?;
            }
            return Ok(());
        }
        match eval(&self.root, &env).map_err(EachError::Eval)? {
            Cow::Borrowed(Value::List(items)) => items
                .iter()
                .try_for_each(|v| f(v.clone()).map_err(EachError::Emit)),
            Cow::Owned(Value::List(mut items)) => match Arc::get_mut(&mut items) {
                Some(items) => items
                    .iter_mut()
                    .try_for_each(|v| f(std::mem::take(v)).map_err(EachError::Emit)),
                None => items
                    .iter()
                    .try_for_each(|v| f(v.clone()).map_err(EachError::Emit)),
            },
            other => Err(EachError::NotAList(other.value_type())),
        }
    }
}

/// Whether `node` is `args[arg][i]` with a constant index.
fn is_arg_element(node: &Node, arg: usize, i: usize) -> bool {
    match node {
        Node::ArgIndex { arg: a, index, .. } => {
            *a == arg
                && match *index {
                    Value::Int(k) => u64::try_from(k).ok() == Some(i as u64),
                    Value::UInt(k) => k == i as u64,
                    _ => false,
                }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
