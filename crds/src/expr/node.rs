//! The compiled expression tree that [`super::compile`] builds and [`super::eval`] runs.

use std::sync::Arc;

use super::functions::Func;
use super::value::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

impl BinOp {
    pub(super) fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::In => "in",
        }
    }
}

/// The compiled expression tree.
#[derive(Debug, Clone)]
pub(super) enum Node {
    Const(Value),
    /// A variable given to [`Program::eval`], by position.
    Arg(usize),
    /// A comprehension variable.
    Local(usize),
    List(Vec<Node>),
    Map(Vec<(Node, Node)>),
    Field {
        operand: Box<Node>,
        field: Arc<str>,
        path: Arc<str>,
    },
    Has {
        operand: Box<Node>,
        field: Arc<str>,
        path: Arc<str>,
    },
    Index {
        operand: Box<Node>,
        index: Box<Node>,
        path: Arc<str>,
    },
    /// `Index` of a variable by a constant (`value[0]`, `value.f` is `Field`): the most
    /// common operand of keys and reduces, resolved without recursion.
    ArgIndex {
        arg: usize,
        index: Value,
        path: Arc<str>,
    },
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
    NotStrictlyFalse(Box<Node>),
    Loop(Box<Comprehension>),
}

#[derive(Debug, Clone)]
pub(super) struct Comprehension {
    pub(super) range: Node,
    pub(super) iter: usize,
    pub(super) iter2: Option<usize>,
    pub(super) accu: usize,
    pub(super) init: Node,
    pub(super) cond: Node,
    pub(super) step: Node,
    pub(super) result: Node,
    /// Cost units charged per iteration: the nodes of `cond` and `step`, plus one.
    pub(super) iteration_cost: u64,
}
