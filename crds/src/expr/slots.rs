//! Reduce updates over an accumulator held as separate slots, not as one list.
//!
//! A reduce's program is usually a list literal that reads its accumulator element by
//! element, `[acc[0], acc[1] + value[1]]`. A keyed operator can then keep the elements in
//! its state entry instead of behind the list's shared allocation: the update reads and
//! writes them in place, with no pointer to follow to a cold allocation per record (in the
//! word count that load was the largest single cost of the reduce) and no reference count
//! to check.
//!
//! [`SlotPlan::of`] recognises such programs and rewrites them: `acc[k]` (a constant,
//! in-range index) becomes the extra variable `slot k`, passed after the program's own. A
//! program that uses its accumulator any other way (`size(acc)`, `acc[i]` with a computed
//! `i`, `acc` itself) gets no plan and runs as before.

use super::node::Node;
use super::value::Value;

/// The elements of a list-literal reduce program, rewritten to read `acc[k]` from slot
/// `k`. Built by [`SlotPlan::of`].
#[derive(Debug, Clone)]
pub(super) struct SlotPlan {
    /// Number of elements of the list the program builds (and slots of the accumulator).
    pub(super) len: usize,
    /// The elements that change, with their position; an element written `acc[i]` at
    /// position `i` keeps its slot and is not listed.
    pub(super) changed: Vec<(usize, Node)>,
}

/// Most slots a plan has: accumulators are pairs and triples; longer ones are rare enough
/// to keep the general path.
pub(super) const MAX_SLOTS: usize = 4;

impl SlotPlan {
    /// The plan of `root` with variable `acc` (its index) among `vars` variables, if every
    /// use of `acc` is a constant, in-range index.
    pub(super) fn of(root: &Node, acc: usize, vars: usize) -> Option<SlotPlan> {
        let Node::List(items) = root else {
            return None;
        };
        if items.is_empty() || items.len() > MAX_SLOTS {
            return None;
        }
        let len = items.len();
        let mut changed = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if slot_of(item, acc, len) == Some(i) {
                continue;
            }
            let mut node = item.clone();
            if !rewrite(&mut node, acc, len, vars) {
                return None;
            }
            changed.push((i, node));
        }
        Some(SlotPlan { len, changed })
    }
}

/// `k` if `node` is `acc[k]` with a constant `k < len`.
fn slot_of(node: &Node, acc: usize, len: usize) -> Option<usize> {
    match node {
        Node::ArgIndex { arg, index, .. } if *arg == acc => {
            let k = match *index {
                Value::Int(k) => usize::try_from(k).ok()?,
                Value::UInt(k) => usize::try_from(k).ok()?,
                _ => return None,
            };
            (k < len).then_some(k)
        }
        _ => None,
    }
}

/// Replaces each `acc[k]` in `node` with the variable `vars + k`; false if `acc` is used
/// any other way (then `node` is left half rewritten: the caller drops it).
fn rewrite(node: &mut Node, acc: usize, len: usize, vars: usize) -> bool {
    if let Some(k) = slot_of(node, acc, len) {
        *node = Node::Arg(vars + k);
        return true;
    }
    let go = |n: &mut Node| rewrite(n, acc, len, vars);
    match node {
        Node::Arg(i) => *i != acc,
        Node::ArgIndex { arg, .. } => *arg != acc,
        Node::Const(_) | Node::Local(_) => true,
        Node::List(items) | Node::Call(_, items) => items.iter_mut().all(go),
        Node::Map(entries) => entries.iter_mut().all(|(k, v)| go(k) && go(v)),
        Node::Field { operand, .. } | Node::Has { operand, .. } => go(operand),
        Node::Index { operand, index, .. } => go(operand) && go(index),
        Node::Not(x) | Node::Neg(x) | Node::NotStrictlyFalse(x) => go(x),
        Node::And(a, b) | Node::Or(a, b) | Node::Bin(_, a, b) => go(a) && go(b),
        Node::Cond(c, a, b) => go(c) && go(a) && go(b),
        Node::Loop(c) => {
            go(&mut c.range) && go(&mut c.init) && go(&mut c.cond) && go(&mut c.step) && {
                go(&mut c.result)
            }
        }
    }
}
