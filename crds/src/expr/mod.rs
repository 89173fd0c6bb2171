//! CEL expressions of declarative jobs, compiled once into a tree evaluator.
//!
//! The `cel` crate parses (and expands the standard macros such as `exists`, `all`, `map`,
//! `filter`, `has`); this module compiles its AST into its own [`Node`] tree over [`Value`]:
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
//! of a list or map gives its JSON text. Map keys are strings.

mod small_str;
mod value;
mod value_serde;

use std::borrow::Cow;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};

pub use small_str::{INLINE_CAP, Str};
pub use value::{Value, ValueMap, ValueType};

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

fn cerr(message: impl Into<String>) -> ExprError {
    ExprError {
        message: message.into(),
        position: None,
    }
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

fn rerr<T>(message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError {
        message: message.into(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
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
    fn symbol(self) -> &'static str {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
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

const ANY: &[ValueType] = &[];
const STR: &[ValueType] = &[T::String];
const NUMERIC_OR_STR: &[ValueType] = &[T::Int, T::UInt, T::Double, T::String];

impl Func {
    fn lookup(name: &str) -> Option<Func> {
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
    fn params(self) -> &'static [&'static [ValueType]] {
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
    fn min_args(self) -> usize {
        match self {
            Func::Join => 1,
            f => f.params().len(),
        }
    }

    fn result(self) -> Option<ValueType> {
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

    fn name(self) -> &'static str {
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

/// The compiled expression tree.
#[derive(Debug, Clone)]
enum Node {
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
struct Comprehension {
    range: Node,
    iter: usize,
    iter2: Option<usize>,
    accu: usize,
    init: Node,
    cond: Node,
    step: Node,
    result: Node,
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
}

impl Program {
    /// Parses and compiles `source` with the variables `vars` (e.g. `&["value"]`, or
    /// `&["acc", "value", "key"]` for `reduce`).
    pub fn compile(source: &str, vars: &[&str]) -> Result<Program, ExprError> {
        let ast = cel::parser::Parser::new().parse(source).map_err(|e| {
            let first = e.errors.first();
            ExprError {
                message: first.map_or_else(|| e.to_string(), |p| p.msg.clone()),
                position: first.map(|p| (p.pos.0.max(0) as u32, p.pos.1.max(0) as u32 + 1)),
            }
        })?;
        let mut c = Compiler {
            vars,
            scopes: Vec::new(),
            locals: 0,
        };
        let (root, ty) = c.compile(&ast)?;
        Ok(Program {
            root,
            source: Arc::from(source),
            vars: vars.iter().map(|v| Arc::from(*v)).collect(),
            locals: c.locals,
            ty,
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
                self.source,
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
                self.source,
                self.vars.len(),
                args.len()
            ));
        }
        // Most expressions have no comprehension: skip building an empty vector per record.
        let locals = if self.locals == 0 {
            Vec::new()
        } else {
            vec![Value::Null; self.locals]
        };
        Ok(Env {
            args,
            locals: RefCell::new(locals),
        })
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

// ---------------------------------------------------------------------------------------
// Compiler
// ---------------------------------------------------------------------------------------

struct Compiler<'v> {
    vars: &'v [&'v str],
    /// Comprehension variables in scope: name, slot, static type.
    scopes: Vec<(String, usize, Option<ValueType>)>,
    locals: usize,
}

type Compiled = (Node, Option<ValueType>);

fn literal(lit: &LiteralValue) -> Value {
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
fn render(e: &IdedExpr) -> String {
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

fn check_type(what: &str, got: Option<ValueType>, allowed: &[ValueType]) -> Result<(), ExprError> {
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

fn numeric_result(op: BinOp, a: ValueType, b: ValueType) -> Result<ValueType, ExprError> {
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

    fn compile(&mut self, e: &IdedExpr) -> Result<Compiled, ExprError> {
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

fn bin_type(
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

fn comparable(t: ValueType) -> bool {
    matches!(t, T::String | T::Bytes | T::Bool) || t.is_numeric()
}

/// A list literal of constants is built once.
fn fold_list(items: Vec<Node>) -> Node {
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

fn fold_map(entries: Vec<(Node, Node)>) -> Node {
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
fn fold_bin(op: BinOp, l: Node, r: Node) -> Node {
    if let (Node::Const(a), Node::Const(b)) = (&l, &r)
        && let Ok(v) = binary(op, a, b)
    {
        return Node::Const(v);
    }
    Node::Bin(op, Box::new(l), Box::new(r))
}

// ---------------------------------------------------------------------------------------
// Evaluator
// ---------------------------------------------------------------------------------------

struct Env<'a> {
    args: &'a [&'a Value],
    locals: RefCell<Vec<Value>>,
}

/// [`eval`] for an operand: constants and variables, the usual leaves (`value[0]`,
/// `acc[1] + value[1]`), are resolved here without a call into the (large) evaluator.
#[inline(always)]
fn operand_of<'a>(node: &'a Node, env: &Env<'a>) -> Result<Cow<'a, Value>, EvalError> {
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
fn is_leaf(node: &Node) -> bool {
    matches!(node, Node::Const(_) | Node::Arg(_) | Node::ArgIndex { .. })
}

/// [`operand_of`] for a node [`is_leaf`] accepted, without the `Cow` (these are copied
/// several times per record on the hot paths).
#[inline(always)]
fn leaf_of<'a>(node: &'a Node, env: &Env<'a>) -> Result<&'a Value, EvalError> {
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
fn element_of<'a>(node: &'a Node, env: &Env<'a>) -> Result<Value, EvalError> {
    if let Node::Bin(op, l, r) = node
        && is_leaf(l)
        && is_leaf(r)
    {
        let (a, b) = (leaf_of(l, env)?, leaf_of(r, env)?);
        if let (Value::Int(x), Value::Int(y), BinOp::Add | BinOp::Sub | BinOp::Mul) = (a, b, op) {
            return int_op(*op, *x, *y).map(Value::Int);
        }
        return binary(*op, a, b);
    }
    operand_of(node, env).map(Cow::into_owned)
}

fn eval<'a>(node: &'a Node, env: &Env<'a>) -> Result<Cow<'a, Value>, EvalError> {
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
fn eval_list<'a>(items: &'a [Node], env: &Env<'a>) -> Result<Arc<[Value]>, EvalError> {
    let item = |i: usize| {
        let node = &items[i];
        if is_leaf(node) {
            leaf_of(node, env).cloned()
        } else {
            operand_of(node, env).map(Cow::into_owned)
        }
    };
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

fn comprehension(c: &Comprehension, env: &Env<'_>) -> Result<Value, EvalError> {
    let range = eval(&c.range, env)?.into_owned();
    let init = eval(&c.init, env)?.into_owned();
    env.locals.borrow_mut()[c.accu] = init;
    let step = |iter: Value, iter2: Option<Value>| -> Result<bool, EvalError> {
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

/// `&&` (`short == false`) and `||` (`short == true`) with CEL's commutative error handling:
/// a deciding operand wins over an error on the other side.
fn logic<'a>(a: &'a Node, b: &'a Node, env: &Env<'a>, short: bool) -> Result<bool, EvalError> {
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

fn select<'v>(v: &'v Value, field: &str, path: &str) -> Result<&'v Value, EvalError> {
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

fn index_of<'v>(v: &'v Value, index: &Value, path: &str) -> Result<&'v Value, EvalError> {
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

fn num_cmp(a: &Value, b: &Value) -> Option<Ordering> {
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

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Double(d) => Some(*d),
        _ => None,
    }
}

fn overload<T>(op: BinOp, a: &Value, b: &Value) -> Result<T, EvalError> {
    rerr(format!(
        "no operator '{}' for {} and {}",
        op.symbol(),
        a.value_type(),
        b.value_type()
    ))
}

fn binary(op: BinOp, a: &Value, b: &Value) -> Result<Value, EvalError> {
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
        (Value::UInt(x), Value::UInt(y)) => uint_op(op, *x, *y).map(Value::UInt),
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

#[inline]
fn int_op(op: BinOp, x: i64, y: i64) -> Result<i64, EvalError> {
    let r = match op {
        BinOp::Add => x.checked_add(y),
        BinOp::Sub => x.checked_sub(y),
        BinOp::Mul => x.checked_mul(y),
        BinOp::Div | BinOp::Rem if y == 0 => {
            return rerr(if op == BinOp::Div {
                "division by zero"
            } else {
                "modulus by zero"
            });
        }
        BinOp::Div => x.checked_div(y),
        BinOp::Rem => x.checked_rem(y),
        _ => unreachable!("not arithmetic"),
    };
    r.ok_or_else(|| EvalError {
        message: format!("integer overflow in {x} {} {y}", op.symbol()),
    })
}

fn uint_op(op: BinOp, x: u64, y: u64) -> Result<u64, EvalError> {
    let r = match op {
        BinOp::Add => x.checked_add(y),
        BinOp::Sub => x.checked_sub(y),
        BinOp::Mul => x.checked_mul(y),
        BinOp::Div | BinOp::Rem if y == 0 => {
            return rerr(if op == BinOp::Div {
                "division by zero"
            } else {
                "modulus by zero"
            });
        }
        BinOp::Div => x.checked_div(y),
        BinOp::Rem => x.checked_rem(y),
        _ => unreachable!("not arithmetic"),
    };
    r.ok_or_else(|| EvalError {
        message: format!("unsigned overflow in {x} {} {y}", op.symbol()),
    })
}

fn arg_type_error<T>(f: Func, i: usize, v: &Value) -> Result<T, EvalError> {
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

fn str_arg(f: Func, i: usize, v: &Value) -> Result<&str, EvalError> {
    match v {
        Value::String(s) => Ok(s),
        other => arg_type_error(f, i, other),
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

/// A string on its way through string functions (`value.trim().lower().words()`): borrowed
/// from a record or constant while unchanged, and owned once a function rewrote it, so the
/// intermediate results never become `Value`s (no shared allocation, no copy into one).
enum Text<'a> {
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
fn is_text_fn(f: Func) -> bool {
    matches!(
        f,
        Func::Lower | Func::Upper | Func::LowerAscii | Func::UpperAscii | Func::Trim
    )
}

/// Evaluates the string receiver of `consumer` (a one-argument string function); the error
/// for a non-string is the one `consumer` reports.
fn eval_text<'a>(node: &'a Node, env: &Env<'a>, consumer: Func) -> Result<Text<'a>, EvalError> {
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
fn text_call<'a>(f: Func, args: &'a [Node], env: &Env<'a>) -> Result<Text<'a>, EvalError> {
    let t = eval_text(&args[0], env, f)?;
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

fn call<'a>(f: Func, args: &'a [Node], env: &Env<'a>) -> Result<Value, EvalError> {
    if is_text_fn(f) {
        return text_call(f, args, env).map(Text::into_value);
    }
    if f == Func::Words {
        let t = eval_text(&args[0], env, f)?;
        return Ok(Value::List(t.split_whitespace().map(Value::from).collect()));
    }
    let recv = operand_of(&args[0], env)?;
    let r: &Value = &recv;
    let second = match args.get(1) {
        Some(n) => Some(operand_of(n, env)?),
        None => None,
    };
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
                return Ok(Value::List(
                    s.chars()
                        .map(|c| Value::from(c.encode_utf8(&mut [0; 4]) as &str))
                        .collect(),
                ));
            }
            Ok(Value::List(s.split(sep).map(Value::from).collect()))
        }
        Func::Join => {
            let Value::List(items) = r else {
                return arg_type_error(f, 0, r);
            };
            let sep = match second.as_deref() {
                Some(v) => str_arg(f, 1, v)?,
                None => "",
            };
            let mut out = String::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                match item {
                    Value::String(s) => out.push_str(s),
                    other => {
                        return rerr(format!(
                            "join(): list element {i} is a {}, not a string",
                            other.value_type()
                        ));
                    }
                }
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
        Func::ToJson => Ok(Value::String(Str::from(r.to_json_string()))),
        Func::String => Ok(match r {
            Value::String(_) => r.clone(),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => Value::from(s),
                Err(_) => return rerr("string(): bytes are not valid UTF-8"),
            },
            Value::Null => Value::from("null"),
            other => Value::String(Str::from(other.to_json_string())),
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

#[cfg(test)]
mod tests;
