//! Compiles the `cel` crate's AST into our [`Node`] tree: resolves variables to slots,
//! infers static types where they are certain (and rejects certain type errors), and
//! folds constants.

use std::cell::RefCell;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};

use super::eval::{Env, binary, eval};
use super::functions::{Func, STR};
use super::limits::{Budget, MAX_DEPTH, node_count};
use super::node::{BinOp, Comprehension, Node};
use super::small_str::Str;
use super::value::{Value, ValueType};
use super::{ExprError, cerr};

use ValueType as T;

pub(super) struct Compiler<'v> {
    pub(super) vars: &'v [&'v str],
    /// Comprehension variables in scope: name, slot, static type.
    pub(super) scopes: Vec<(String, usize, Option<ValueType>)>,
    pub(super) locals: usize,
    /// Levels of the tree being compiled above the current node.
    pub(super) depth: u32,
}

pub(super) type Compiled = (Node, Option<ValueType>);

pub(super) fn literal(lit: &LiteralValue) -> Value {
    match lit {
        LiteralValue::Boolean(b) => Value::Bool(*b.inner()),
        LiteralValue::Bytes(b) => Value::Bytes(Arc::from(b.inner())),
        LiteralValue::Double(d) => Value::Double(*d.inner()),
        LiteralValue::Int(i) => Value::Int(*i.inner()),
        LiteralValue::Null => Value::Null,
        LiteralValue::String(s) => Value::String(Str::new(s.inner())),
        LiteralValue::UInt(u) => Value::UInt(*u.inner()),
    }
}

/// Source-like rendering of a (sub)expression, for error messages.
pub(super) fn render(e: &IdedExpr) -> String {
    match &e.expr {
        Expr::Ident(n) => n.clone(),
        Expr::Select(s) => format!("{}.{}", render(&s.operand), s.field),
        Expr::Literal(l) => literal(l).to_json_string(),
        Expr::Call(c) if c.func_name == "_[_]" && c.args.len() == 2 => {
            format!("{}[{}]", render(&c.args[0]), render(&c.args[1]))
        }
        Expr::Call(c) if c.target.is_some() => {
            format!(
                "{}.{}(..)",
                render(c.target.as_deref().expect("checked")),
                c.func_name
            )
        }
        Expr::Call(c) if !c.func_name.starts_with('_') && !c.func_name.starts_with('@') => {
            format!("{}(..)", c.func_name)
        }
        _ => "(..)".to_string(),
    }
}

pub(super) fn check_type(
    what: &str,
    got: Option<ValueType>,
    allowed: &[ValueType],
) -> Result<(), ExprError> {
    match got {
        Some(t) if !allowed.is_empty() && !allowed.contains(&t) => Err(cerr(format!(
            "{what} expects {}, got {t}",
            allowed
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(" or ")
        ))),
        _ => Ok(()),
    }
}

pub(super) fn numeric_result(
    op: BinOp,
    a: ValueType,
    b: ValueType,
) -> Result<ValueType, ExprError> {
    if a.is_numeric() && b.is_numeric() {
        if op == BinOp::Rem && (a == T::Double || b == T::Double) {
            return Err(cerr("'%' is not defined on doubles"));
        }
        Ok(if a == b {
            a
        } else if a == T::Double || b == T::Double {
            T::Double
        } else {
            T::Int
        })
    } else {
        Err(cerr(format!(
            "no operator '{}' for {a} and {b}",
            op.symbol()
        )))
    }
}

impl Compiler<'_> {
    fn resolve(&self, name: &str) -> Result<Compiled, ExprError> {
        if let Some((_, slot, ty)) = self.scopes.iter().rev().find(|(n, _, _)| n == name) {
            return Ok((Node::Local(*slot), *ty));
        }
        if let Some(i) = self.vars.iter().position(|v| *v == name) {
            return Ok((Node::Arg(i), None));
        }
        Err(cerr(format!(
            "unknown variable '{name}' (available: {})",
            if self.vars.is_empty() {
                "none".to_string()
            } else {
                self.vars.join(", ")
            }
        )))
    }

    fn new_local(&mut self, name: &str, ty: Option<ValueType>) -> usize {
        let slot = self.locals;
        self.locals += 1;
        self.scopes.push((name.to_string(), slot, ty));
        slot
    }

    /// Compiles `e`, within [`MAX_DEPTH`] levels (the parser's depth check already keeps
    /// the tree within it; this guards the recursion here on its own).
    pub(super) fn compile(&mut self, e: &IdedExpr) -> Result<Compiled, ExprError> {
        if self.depth >= MAX_DEPTH {
            return Err(cerr(format!(
                "expression nests deeper than the limit of {MAX_DEPTH} levels"
            )));
        }
        self.depth += 1;
        let r = self.compile_node(e);
        self.depth -= 1;
        r
    }

    fn compile_node(&mut self, e: &IdedExpr) -> Result<Compiled, ExprError> {
        match &e.expr {
            Expr::Literal(l) => {
                let v = literal(l);
                let t = v.value_type();
                Ok((Node::Const(v), Some(t)))
            }
            Expr::Ident(name) => self.resolve(name),
            Expr::List(l) => {
                if !l.optional_indices.is_empty() {
                    return Err(cerr("optional list elements are not supported"));
                }
                let items = l
                    .elements
                    .iter()
                    .map(|x| self.compile(x).map(|c| c.0))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((fold_list(items), Some(T::List)))
            }
            Expr::Map(m) => {
                let mut entries = Vec::with_capacity(m.entries.len());
                for entry in &m.entries {
                    let EntryExpr::MapEntry(me) = &entry.expr else {
                        return Err(cerr("struct fields are not supported in map literals"));
                    };
                    if me.optional {
                        return Err(cerr("optional map entries are not supported"));
                    }
                    let (k, kt) = self.compile(&me.key)?;
                    check_type("a map key", kt, STR)?;
                    let (v, _) = self.compile(&me.value)?;
                    entries.push((k, v));
                }
                Ok((fold_map(entries), Some(T::Map)))
            }
            Expr::Select(s) => {
                let (operand, ot) = self.compile(&s.operand)?;
                let path: Arc<str> = Arc::from(render(e).as_str());
                check_type(&format!("field selection '{path}'"), ot, &[T::Map])?;
                let field = Arc::from(s.field.as_str());
                if s.test {
                    Ok((
                        Node::Has {
                            operand: Box::new(operand),
                            field,
                            path: Arc::from(render(&s.operand).as_str()),
                        },
                        Some(T::Bool),
                    ))
                } else {
                    Ok((
                        Node::Field {
                            operand: Box::new(operand),
                            field,
                            path,
                        },
                        None,
                    ))
                }
            }
            Expr::Call(call) => self.compile_call(e, call),
            Expr::Comprehension(c) => {
                let (range, rt) = self.compile(&c.iter_range)?;
                check_type("a comprehension range", rt, &[T::List, T::Map])?;
                let (init, it) = self.compile(&c.accu_init)?;
                let depth = self.scopes.len();
                let accu = self.new_local(&c.accu_var, it);
                let iter = self.new_local(&c.iter_var, None);
                let iter2 = c.iter_var2.as_deref().map(|v| self.new_local(v, None));
                let (cond, _) = self.compile(&c.loop_cond)?;
                let (step, _) = self.compile(&c.loop_step)?;
                self.scopes.truncate(depth + 1);
                let (result, ty) = self.compile(&c.result)?;
                self.scopes.truncate(depth);
                Ok((
                    Node::Loop(Box::new(Comprehension {
                        iteration_cost: 1 + node_count(&cond) + node_count(&step),
                        range,
                        iter,
                        iter2,
                        accu,
                        init,
                        cond,
                        step,
                        result,
                    })),
                    ty,
                ))
            }
            Expr::Struct(s) => Err(cerr(format!(
                "message construction '{} {{..}}' is not supported",
                s.type_name
            ))),
            Expr::Unspecified => Err(cerr("empty expression")),
        }
    }

    fn compile_call(
        &mut self,
        e: &IdedExpr,
        call: &cel::common::ast::CallExpr,
    ) -> Result<Compiled, ExprError> {
        let name = call.func_name.as_str();
        let mut args = Vec::with_capacity(call.args.len() + 1);
        if let Some(t) = &call.target {
            args.push(t.as_ref());
        }
        args.extend(call.args.iter());
        let bin = match name {
            "_+_" => Some(BinOp::Add),
            "_-_" => Some(BinOp::Sub),
            "_*_" => Some(BinOp::Mul),
            "_/_" => Some(BinOp::Div),
            "_%_" => Some(BinOp::Rem),
            "_==_" => Some(BinOp::Eq),
            "_!=_" => Some(BinOp::Ne),
            "_<_" => Some(BinOp::Lt),
            "_<=_" => Some(BinOp::Le),
            "_>_" => Some(BinOp::Gt),
            "_>=_" => Some(BinOp::Ge),
            "@in" => Some(BinOp::In),
            _ => None,
        };
        if let (Some(op), [a, b]) = (bin, args.as_slice()) {
            let (l, lt) = self.compile(a)?;
            let (r, rt) = self.compile(b)?;
            let ty = bin_type(op, lt, rt)?;
            return Ok((fold_bin(op, l, r), ty));
        }
        match (name, args.as_slice()) {
            ("_&&_" | "_||_", [a, b]) => {
                let (l, lt) = self.compile(a)?;
                let (r, rt) = self.compile(b)?;
                let sym = if name == "_&&_" { "&&" } else { "||" };
                check_type(&format!("'{sym}'"), lt, &[T::Bool])?;
                check_type(&format!("'{sym}'"), rt, &[T::Bool])?;
                let node = if name == "_&&_" {
                    Node::And(Box::new(l), Box::new(r))
                } else {
                    Node::Or(Box::new(l), Box::new(r))
                };
                Ok((node, Some(T::Bool)))
            }
            ("!_", [a]) => {
                let (x, t) = self.compile(a)?;
                check_type("'!'", t, &[T::Bool])?;
                Ok((Node::Not(Box::new(x)), Some(T::Bool)))
            }
            ("-_", [a]) => {
                let (x, t) = self.compile(a)?;
                check_type("unary '-'", t, &[T::Int, T::Double])?;
                if let Node::Const(v) = &x {
                    let env = Env {
                        args: &[],
                        locals: RefCell::new(Vec::new()),
                        budget: Budget::new(),
                    };
                    let neg = Node::Neg(Box::new(Node::Const(v.clone())));
                    if let Ok(v) = eval(&neg, &env) {
                        return Ok((Node::Const(v.into_owned()), t));
                    }
                }
                Ok((Node::Neg(Box::new(x)), t))
            }
            ("_?_:_", [c, a, b]) => {
                let (c, ct) = self.compile(c)?;
                check_type("the condition of '?:'", ct, &[T::Bool])?;
                let (a, at) = self.compile(a)?;
                let (b, bt) = self.compile(b)?;
                let ty = if at == bt { at } else { None };
                Ok((Node::Cond(Box::new(c), Box::new(a), Box::new(b)), ty))
            }
            ("_[_]", [a, i]) => {
                let (operand, ot) = self.compile(a)?;
                let (index, it) = self.compile(i)?;
                let path: Arc<str> = Arc::from(render(e).as_str());
                check_type(&format!("indexing '{path}'"), ot, &[T::List, T::Map])?;
                match ot {
                    Some(T::List) => {
                        check_type(&format!("the index of '{path}'"), it, &[T::Int, T::UInt])?
                    }
                    Some(T::Map) => check_type(&format!("the key of '{path}'"), it, STR)?,
                    _ => check_type(
                        &format!("the index of '{path}'"),
                        it,
                        &[T::Int, T::UInt, T::String],
                    )?,
                }
                let node = match (operand, index) {
                    (Node::Arg(arg), Node::Const(index)) => Node::ArgIndex { arg, index, path },
                    (operand, index) => Node::Index {
                        operand: Box::new(operand),
                        index: Box::new(index),
                        path,
                    },
                };
                Ok((node, None))
            }
            ("@not_strictly_false", [a]) => {
                let (x, _) = self.compile(a)?;
                Ok((Node::NotStrictlyFalse(Box::new(x)), Some(T::Bool)))
            }
            _ => {
                let Some(f) = Func::lookup(name) else {
                    return Err(cerr(format!("unknown function '{name}'")));
                };
                let params = f.params();
                if args.len() < f.min_args() || args.len() > params.len() {
                    return Err(cerr(format!(
                        "{}() takes {} argument(s) including the receiver, got {}",
                        f.name(),
                        params.len(),
                        args.len()
                    )));
                }
                let mut nodes = Vec::with_capacity(args.len());
                for (i, a) in args.iter().enumerate() {
                    let (n, t) = self.compile(a)?;
                    let what = if i == 0 {
                        format!("{}() receiver", f.name())
                    } else {
                        format!("{}() argument {i}", f.name())
                    };
                    check_type(&what, t, params[i])?;
                    nodes.push(n);
                }
                Ok((Node::Call(f, nodes), f.result()))
            }
        }
    }
}

pub(super) fn bin_type(
    op: BinOp,
    lt: Option<ValueType>,
    rt: Option<ValueType>,
) -> Result<Option<ValueType>, ExprError> {
    match op {
        BinOp::Eq | BinOp::Ne => Ok(Some(T::Bool)),
        BinOp::In => {
            check_type("the right side of 'in'", rt, &[T::List, T::Map])?;
            Ok(Some(T::Bool))
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            if let (Some(a), Some(b)) = (lt, rt)
                && !(a.is_numeric() && b.is_numeric() || a == b && comparable(a))
            {
                return Err(cerr(format!(
                    "cannot compare {a} and {b} with '{}'",
                    op.symbol()
                )));
            }
            Ok(Some(T::Bool))
        }
        BinOp::Add => match (lt, rt) {
            (Some(a), Some(b)) if a == b && matches!(a, T::String | T::Bytes | T::List) => {
                Ok(Some(a))
            }
            (Some(a), Some(b)) => numeric_result(op, a, b).map(Some),
            (Some(t), None) | (None, Some(t)) => {
                if matches!(t, T::String | T::Bytes | T::List) {
                    Ok(Some(t))
                } else if t.is_numeric() {
                    Ok(None)
                } else {
                    Err(cerr(format!("no operator '+' for {t}")))
                }
            }
            (None, None) => Ok(None),
        },
        _ => match (lt, rt) {
            (Some(a), Some(b)) => numeric_result(op, a, b).map(Some),
            (Some(t), None) | (None, Some(t)) => {
                if !t.is_numeric() || (op == BinOp::Rem && t == T::Double) {
                    Err(cerr(format!("no operator '{}' for {t}", op.symbol())))
                } else {
                    Ok(None)
                }
            }
            (None, None) => Ok(None),
        },
    }
}

pub(super) fn comparable(t: ValueType) -> bool {
    matches!(t, T::String | T::Bytes | T::Bool) || t.is_numeric()
}

/// A list literal of constants is built once.
pub(super) fn fold_list(items: Vec<Node>) -> Node {
    if items.iter().all(|n| matches!(n, Node::Const(_))) {
        let values = items
            .into_iter()
            .map(|n| match n {
                Node::Const(v) => v,
                _ => unreachable!(),
            })
            .collect();
        Node::Const(Value::List(values))
    } else {
        Node::List(items)
    }
}

pub(super) fn fold_map(entries: Vec<(Node, Node)>) -> Node {
    let all_const = entries
        .iter()
        .all(|(k, v)| matches!((k, v), (Node::Const(Value::String(_)), Node::Const(_))));
    if all_const {
        let map = entries
            .into_iter()
            .map(|e| match e {
                (Node::Const(Value::String(k)), Node::Const(v)) => (k.into_arc(), v),
                _ => unreachable!(),
            })
            .collect();
        Node::Const(Value::Map(Arc::new(map)))
    } else {
        Node::Map(entries)
    }
}

/// Constant operands are folded at compile time when that succeeds (a failing constant
/// expression, such as `1 / 0`, is left to fail at runtime with its usual message).
pub(super) fn fold_bin(op: BinOp, l: Node, r: Node) -> Node {
    if let (Node::Const(a), Node::Const(b)) = (&l, &r)
        && let Ok(v) = binary(op, a, b)
    {
        return Node::Const(v);
    }
    Node::Bin(op, Box::new(l), Box::new(r))
}
