//! Limits that keep any expression from crashing or stalling a worker: length and nesting
//! are checked when the expression is compiled, a static cost estimate at validation, and a
//! cost budget per evaluation at run time. docs/expressions.md explains the values.

use std::cell::Cell;

use super::EvalError;
use super::node::Node;

/// Longest expression text, in bytes. Far beyond anything readable, and it keeps the parse
/// (and error messages quoting positions) cheap.
pub const MAX_EXPRESSION_LENGTH: usize = 10_000;

/// Deepest expression tree: nested brackets, operators in a chain (`a + b + c` is 2 deep),
/// field selections, calls. Parsing, checking and evaluating recurse once per level, so this
/// bounds their stack use (tested on a 256 KiB stack; worker threads have 2 MiB or more).
pub const MAX_DEPTH: u32 = 100;

/// Most brackets (`(`, `[`, `{`, calls) and conditionals (`?:`) open around any point of
/// an expression. The `cel` crate's parser recurses through some twenty functions for each,
/// using about 10 KB of stack per level in a release build and 40 KB in a debug build, so
/// this is lower than [`MAX_DEPTH`]: 32 levels stay under 1.5 MB even in a debug build.
pub const MAX_NESTING: u32 = 32;

/// Stack of the thread that parses and compiles an expression: [`MAX_NESTING`] levels of
/// the parser's recursion with room to spare, even in a debug build. Only the pages used
/// are ever backed by memory.
pub const PARSE_STACK: usize = 32 << 20;

/// Cost units one evaluation may spend, and the most a compiled expression may be estimated
/// to spend. One unit is one expression node evaluated inside a macro loop (`map`, `all`,
/// ...), one list element built by `+`, `split` or `words`, or 8 bytes of text read or built
/// by a string function, `+`, `==` or `toJson`. 10 million units take well under a second
/// and bound the memory one evaluation can build to about 80 MB.
pub const MAX_COST: u64 = 10_000_000;

/// Elements a macro is assumed to iterate when its list is not a literal (its size is only
/// known at run time). Only the static estimate uses it; the run-time budget counts real
/// iterations.
pub const ASSUMED_LIST_SIZE: u64 = 100;

/// The run-time cost budget of one evaluation. A `Cell` decremented in place: no
/// allocation, one subtraction and one comparison per charge.
pub(super) struct Budget(Cell<u64>);

impl Budget {
    pub(super) fn new() -> Self {
        Budget(Cell::new(MAX_COST))
    }

    /// Spends `units`, or fails the evaluation when the budget does not cover them. Called
    /// before the work is done (before an allocation of that size).
    #[inline]
    pub(super) fn charge(&self, units: u64, what: &str) -> Result<(), EvalError> {
        let left = self.0.get();
        if units > left {
            return Err(EvalError {
                message: format!(
                    "expression exceeded its cost limit of {MAX_COST} units in {what} \
                     (too many loop iterations or too much text/list data built; see \
                     docs/expressions.md)"
                ),
            });
        }
        self.0.set(left - units);
        Ok(())
    }

    /// Units left.
    pub(super) fn left(&self) -> u64 {
        self.0.get()
    }

    /// [`Budget::charge`] for `bytes` of text.
    #[inline]
    pub(super) fn charge_bytes(&self, bytes: usize, what: &str) -> Result<(), EvalError> {
        self.charge(bytes as u64 / 8, what)
    }
}

/// Number of nodes in `node`'s tree (a comprehension counts its own parts, not their
/// iterations): the cost of evaluating it once, as charged per loop iteration.
pub(super) fn node_count(node: &Node) -> u64 {
    let mut n = 1u64;
    for_children(node, |c| n = n.saturating_add(node_count(c)));
    n
}

/// Static cost estimate of one evaluation: every node costs 1, a macro costs its range
/// size (the literal's, else [`ASSUMED_LIST_SIZE`]) times its body, so nested macros
/// multiply.
pub(super) fn estimate_cost(node: &Node) -> u64 {
    match node {
        Node::Loop(c) => {
            let n = match &c.range {
                Node::Const(v) => v.as_list().map_or(ASSUMED_LIST_SIZE, |l| l.len() as u64),
                Node::List(items) => items.len() as u64,
                _ => ASSUMED_LIST_SIZE,
            };
            let body = 1u64
                .saturating_add(estimate_cost(&c.cond))
                .saturating_add(estimate_cost(&c.step));
            estimate_cost(&c.range)
                .saturating_add(estimate_cost(&c.init))
                .saturating_add(n.saturating_mul(body))
                .saturating_add(estimate_cost(&c.result))
        }
        other => {
            let mut n = 1u64;
            for_children(other, |c| n = n.saturating_add(estimate_cost(c)));
            n
        }
    }
}

fn for_children(node: &Node, mut f: impl FnMut(&Node)) {
    match node {
        Node::Const(_) | Node::Arg(_) | Node::Local(_) | Node::ArgIndex { .. } => {}
        Node::List(items) | Node::Call(_, items) => items.iter().for_each(f),
        Node::Map(entries) => entries.iter().for_each(|(k, v)| {
            f(k);
            f(v);
        }),
        Node::Field { operand, .. } | Node::Has { operand, .. } => f(operand),
        Node::Index { operand, index, .. } => {
            f(operand);
            f(index);
        }
        Node::Not(x) | Node::Neg(x) | Node::NotStrictlyFalse(x) => f(x),
        Node::And(a, b) | Node::Or(a, b) | Node::Bin(_, a, b) => {
            f(a);
            f(b);
        }
        Node::Cond(c, a, b) => {
            f(c);
            f(a);
            f(b);
        }
        Node::Loop(c) => {
            for n in [&c.range, &c.init, &c.cond, &c.step, &c.result] {
                f(n);
            }
        }
    }
}
