//! Expression text to the `cel` crate's AST, within the length and depth limits.
//!
//! The `cel` crate's parser and its AST builder recurse once per level of the tree, and
//! a chain such as `a + 1 + 1 + ...` is a level per operator, so a long enough input
//! overflows the stack before the crate's own limit (nested brackets only) applies. Before
//! handing the text over, [`tree_depth`] therefore measures the depth of the tree the text
//! will parse into, with a single pass over its tokens and explicit stacks (no recursion),
//! and rejects anything deeper than [`MAX_DEPTH`] with the position where the limit was
//! crossed.

use cel::common::ast::IdedExpr;

use super::ExprError;
use super::limits::{MAX_DEPTH, MAX_EXPRESSION_LENGTH, MAX_NESTING};

/// Parses `source`; macros (`map`, `all`, `has`, ...) come back expanded.
pub(super) fn parse(source: &str) -> Result<IdedExpr, ExprError> {
    if source.len() > MAX_EXPRESSION_LENGTH {
        return Err(ExprError {
            message: format!(
                "expression is {} bytes long, the limit is {MAX_EXPRESSION_LENGTH}",
                source.len()
            ),
            position: None,
        });
    }
    if let Err(at) = nesting(source) {
        return Err(ExprError {
            message: format!(
                "brackets and conditionals (`?:`) nest deeper than the limit of {MAX_NESTING}"
            ),
            position: Some(line_col(source, at)),
        });
    }
    if let Err(at) = tree_depth(source) {
        return Err(ExprError {
            message: format!(
                "expression nests deeper than the limit of {MAX_DEPTH} levels (brackets, \
                 calls, field selections and chained operators such as `a + b + c` each \
                 add a level)"
            ),
            position: Some(line_col(source, at)),
        });
    }
    cel::parser::Parser::new()
        .max_recursion_depth(MAX_DEPTH as u16)
        .parse(source)
        .map_err(|e| {
            let first = e.errors.first();
            ExprError {
                message: first.map_or_else(|| e.to_string(), |p| p.msg.clone()),
                position: first.map(|p| (p.pos.0.max(0) as u32, p.pos.1.max(0) as u32 + 1)),
            }
        })
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(source: &str, at: usize) -> (u32, u32) {
    let before = &source[..at.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line as u32, col as u32)
}

/// Checks that brackets and conditionals nest at most [`MAX_NESTING`] deep; `Err` holds
/// the byte offset of the first one too many. Unbalanced text passes: the parser reports it.
pub(super) fn nesting(source: &str) -> Result<(), usize> {
    let b = source.as_bytes();
    // Per open bracket, the conditionals in its current element: the parser recurses into
    // the `else` side of each, until the element ends.
    let mut open: Vec<u32> = vec![0];
    let mut i = 0;
    while i < b.len() {
        let at = i;
        match b[i] {
            b'\'' | b'"' | b'`' => {
                i = skip_string(b, i, false);
                continue;
            }
            b'r' | b'R' | b'b' | b'B' if starts_string(b, i) => {
                let raw_end = i + prefix_len(b, i);
                let raw = b[i..raw_end].iter().any(|x| matches!(x, b'r' | b'R'));
                i = skip_string(b, raw_end, raw);
                continue;
            }
            x if x.is_ascii_alphanumeric() || x == b'_' => {
                // Skip the whole word (`br` inside `abr'x'` is not a prefix).
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => open.push(0),
            b')' | b']' | b'}' if open.len() > 1 => {
                open.pop();
            }
            b'?' => *open.last_mut().expect("never empty") += 1,
            b',' => *open.last_mut().expect("never empty") = 0,
            _ => {}
        }
        i += 1;
        let depth = open.len() as u32 - 1 + open.iter().sum::<u32>();
        if depth > MAX_NESTING {
            return Err(at);
        }
    }
    Ok(())
}

/// Whether a string prefix (`r`, `b`, `rb`, `br`, any case) followed by a quote starts at
/// `i`.
fn starts_string(b: &[u8], i: usize) -> bool {
    let n = prefix_len(b, i);
    n > 0 && matches!(b.get(i + n), Some(b'\'' | b'"'))
}

fn prefix_len(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .take(2)
        .take_while(|x| matches!(x, b'r' | b'R' | b'b' | b'B'))
        .count()
}

/// Levels a call adds: the call itself, and the comprehension a macro call (`map`,
/// `filter`, ...) expands into wraps its arguments about three levels deeper.
const CALL_LEVELS: u32 = 4;

#[derive(Clone, Copy, PartialEq)]
enum Group {
    /// The whole expression.
    Top,
    /// `( ... )` around an operand: no level of its own.
    Paren,
    /// A list `[...]` or map `{...}` literal.
    Literal,
    /// Arguments of a call `f(...)`, an index `x[...]` or a message `T{...}`: the levels
    /// are added to the operand before the bracket.
    Postfix(u32),
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Unary,
    /// A binary operator of this precedence; `?` and `:` are 0 (right associative).
    Binary(u8),
}

/// The open bracket being scanned: a shunting-yard of operand depths and pending operators.
struct Frame {
    group: Group,
    operands: Vec<u32>,
    ops: Vec<Op>,
    /// Deepest completed element (comma-separated) so far.
    deepest: u32,
}

impl Frame {
    fn new(group: Group) -> Self {
        Frame {
            group,
            operands: Vec::new(),
            ops: Vec::new(),
            deepest: 0,
        }
    }

    fn apply(&mut self, op: Op) -> u32 {
        let d = match op {
            Op::Unary => self.operands.pop().unwrap_or(0) + 1,
            Op::Binary(_) => {
                let r = self.operands.pop().unwrap_or(0);
                let l = self.operands.pop().unwrap_or(0);
                l.max(r) + 1
            }
        };
        self.operands.push(d);
        d
    }

    /// Applies pending operators that bind at least as tightly as precedence `prec`
    /// (`None`: all of them); returns the deepest result.
    fn reduce(&mut self, prec: Option<u8>) -> u32 {
        let mut deepest = 0;
        while let Some(&top) = self.ops.last() {
            let binds = match (top, prec) {
                (_, None) | (Op::Unary, _) => true,
                // `?:` is right associative: `a ? b : c ? d : e` waits for its right side.
                (Op::Binary(t), Some(p)) => t >= p && !(t == 0 && p == 0),
            };
            if !binds {
                break;
            }
            self.ops.pop();
            deepest = deepest.max(self.apply(top));
        }
        deepest
    }

    /// Closes the current comma-separated element.
    fn finish_element(&mut self) {
        self.reduce(None);
        let d = self.operands.drain(..).max().unwrap_or(0);
        self.deepest = self.deepest.max(d);
    }

    fn has_pending_conditional(&self) -> bool {
        self.ops.contains(&Op::Binary(0))
    }
}

/// Depth of the expression tree `source` parses into (an upper bound: `a ? b : c` counts
/// 2, macros count [`CALL_LEVELS`]), or the byte offset where it first exceeds
/// [`MAX_DEPTH`]. Text that is not valid CEL gets some answer; the parser then reports it.
pub(super) fn tree_depth(source: &str) -> Result<u32, usize> {
    let b = source.as_bytes();
    let mut frames = vec![Frame::new(Group::Top)];
    let mut expect_operand = true;
    let mut i = 0;
    // The deepest level reached so far, counting the levels of the enclosing frames.
    let check = |frames: &Vec<Frame>, local: u32, at: usize| -> Result<(), usize> {
        // Each open bracket is a level of the parser's recursion; a call is also the
        // levels its macro expansion may add.
        let enclosing: u32 = frames
            .iter()
            .map(|f| match f.group {
                Group::Paren | Group::Literal => 1,
                Group::Postfix(n) => n,
                Group::Top => 0,
            })
            .sum();
        if local.saturating_add(enclosing) > MAX_DEPTH {
            Err(at)
        } else {
            Ok(())
        }
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        let top = frames.last_mut().expect("the top frame is never popped");
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'\'' | b'"' | b'`' => {
                i = skip_string(b, i, false);
                top.operands.push(1);
                expect_operand = false;
            }
            b'0'..=b'9' => {
                i = skip_number(b, i);
                top.operands.push(1);
                expect_operand = false;
            }
            b'.' if expect_operand && b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = skip_number(b, i + 1);
                top.operands.push(1);
                expect_operand = false;
            }
            b'.' => {
                // A field selection (or the receiver of a method call) deepens the operand.
                i += 1;
                if let Some(d) = top.operands.last_mut() {
                    *d += 1;
                    let d = *d;
                    check(&frames, d, start)?;
                }
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                let word = &source[i..j];
                let is_prefix = word.len() <= 2 && word.bytes().all(|x| b"rRbB".contains(&x));
                if is_prefix && matches!(b.get(j), Some(b'\'' | b'"')) {
                    let raw = word.bytes().any(|x| x == b'r' || x == b'R');
                    i = skip_string(b, j, raw);
                    top.operands.push(1);
                    expect_operand = false;
                } else if word == "in" && !expect_operand {
                    i = j;
                    binary(top, 3);
                    expect_operand = true;
                } else {
                    i = j;
                    if expect_operand {
                        top.operands.push(1);
                    }
                    expect_operand = false;
                }
            }
            b'(' | b'[' | b'{' => {
                i += 1;
                let group = if expect_operand {
                    if c == b'(' {
                        Group::Paren
                    } else {
                        Group::Literal
                    }
                } else if c == b'(' {
                    Group::Postfix(CALL_LEVELS)
                } else {
                    Group::Postfix(1)
                };
                frames.push(Frame::new(group));
                check(&frames, 1, start)?;
                expect_operand = true;
            }
            b')' | b']' | b'}' => {
                i += 1;
                if frames.len() == 1 {
                    // Unbalanced: the parser reports it.
                    continue;
                }
                let mut f = frames.pop().expect("more than one frame");
                f.finish_element();
                let parent = frames.last_mut().expect("the top frame stays");
                let d = match f.group {
                    Group::Paren => {
                        parent.operands.push(f.deepest);
                        f.deepest
                    }
                    Group::Literal => {
                        parent.operands.push(f.deepest + 1);
                        f.deepest + 1
                    }
                    Group::Postfix(n) => {
                        let operand = parent.operands.pop().unwrap_or(0);
                        let d = operand.max(f.deepest) + n;
                        parent.operands.push(d);
                        d
                    }
                    Group::Top => unreachable!("the top frame is never popped"),
                };
                check(&frames, d, start)?;
                expect_operand = false;
            }
            b',' => {
                i += 1;
                top.finish_element();
                expect_operand = true;
            }
            b':' if matches!(top.group, Group::Literal | Group::Postfix(_))
                && !top.has_pending_conditional() =>
            {
                // A map entry's key/value separator.
                i += 1;
                top.finish_element();
                expect_operand = true;
            }
            _ => {
                let two = b.get(i..i + 2).unwrap_or(&[]);
                let (len, prec) = match two {
                    b"||" => (2, 1),
                    b"&&" => (2, 2),
                    b"==" | b"!=" | b"<=" | b">=" => (2, 3),
                    _ => match c {
                        b'?' | b':' => (1, 0),
                        b'<' | b'>' => (1, 3),
                        b'+' | b'-' => (1, 4),
                        b'*' | b'/' | b'%' => (1, 5),
                        _ => (1, u8::MAX),
                    },
                };
                i += len;
                if expect_operand && (c == b'!' || c == b'-') {
                    top.ops.push(Op::Unary);
                } else if prec != u8::MAX {
                    let d = binary(top, prec);
                    check(&frames, d, start)?;
                    expect_operand = true;
                }
                // Anything else is not CEL; the parser reports it.
            }
        }
        let top = frames.last_mut().expect("the top frame stays");
        // Depth of what is pending in this frame: its operators will each add a level.
        let pending = top.operands.iter().copied().max().unwrap_or(0) + top.ops.len() as u32;
        check(&frames, pending, start)?;
    }
    // Close brackets left open (the parser reports them) and the top level.
    while frames.len() > 1 {
        let mut f = frames.pop().expect("more than one frame");
        f.finish_element();
        let parent = frames.last_mut().expect("the top frame stays");
        parent.operands.push(f.deepest + 1);
    }
    let mut top = frames.pop().expect("the top frame");
    top.finish_element();
    if top.deepest > MAX_DEPTH {
        return Err(source.len());
    }
    Ok(top.deepest)
}

/// Pushes binary operator `prec` after applying what binds tighter; returns the depth
/// reached by that.
fn binary(top: &mut Frame, prec: u8) -> u32 {
    let d = top.reduce(Some(prec));
    top.ops.push(Op::Binary(prec));
    d
}

/// Index just past the string literal whose opening quote is at `i` (triple quotes, escapes
/// and raw strings as CEL lexes them); the end of the text when it is not closed.
fn skip_string(b: &[u8], i: usize, raw: bool) -> usize {
    let q = b[i];
    let triple = q != b'`' && b.get(i..i + 3) == Some(&[q, q, q][..]);
    let mut j = if triple { i + 3 } else { i + 1 };
    while j < b.len() {
        match b[j] {
            b'\\' if !raw => j += 2,
            x if x == q => {
                if !triple {
                    return j + 1;
                }
                if b.get(j..j + 3) == Some(&[q, q, q][..]) {
                    return j + 3;
                }
                j += 1;
            }
            _ => j += 1,
        }
    }
    b.len()
}

/// Index just past the number starting at `i` (digits, hex, `u` suffix, fraction,
/// exponent with its sign).
fn skip_number(b: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < b.len() {
        let x = b[j];
        let exp_sign = (x == b'+' || x == b'-')
            && j > i
            && matches!(b[j - 1], b'e' | b'E')
            && !b[i..j].starts_with(b"0x");
        let fraction = x == b'.' && b.get(j + 1).is_some_and(u8::is_ascii_digit);
        if x.is_ascii_alphanumeric() || exp_sign || fraction {
            j += 1;
        } else {
            break;
        }
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(s: &str) -> u32 {
        tree_depth(s).unwrap_or_else(|at| panic!("{s}: too deep at {at}"))
    }

    #[test]
    fn depth_follows_precedence_and_brackets() {
        assert_eq!(depth("1"), 1);
        assert_eq!(depth("a + b"), 2);
        assert_eq!(depth("a + b + c"), 3);
        assert_eq!(depth("a + b * c"), 3);
        assert_eq!(depth("a * b + c * d"), 3);
        assert_eq!(depth("((a))"), 1);
        assert_eq!(depth("[a, b + c]"), 3);
        assert_eq!(depth("{'k': a + b}"), 3);
        assert_eq!(depth("value.a.b"), 3);
        assert_eq!(depth("-a"), 2);
        assert_eq!(depth("!a && b"), 3);
        assert_eq!(depth("size(a)"), 1 + CALL_LEVELS);
        assert_eq!(depth("a ? b : c"), 3);
        assert_eq!(depth("a in [1]"), 3);
        assert_eq!(depth("'a + (b' + \"c\\\" ((\" + r'\\' + '''x'y'''"), 4);
        assert_eq!(depth("1.5e-3 + 0x1F + 2u"), 3);
        assert_eq!(depth("a // comment (((\n + b"), 2);
    }

    #[test]
    fn nesting_counts_brackets_and_conditionals_outside_strings() {
        let deep = |n: usize| format!("{}1{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(nesting(&deep(MAX_NESTING as usize)), Ok(()));
        assert_eq!(
            nesting(&deep(MAX_NESTING as usize + 1)),
            Err(MAX_NESTING as usize)
        );
        let ternaries = |n: usize| format!("{}0", "a ? 1 : ".repeat(n));
        assert_eq!(nesting(&ternaries(MAX_NESTING as usize)), Ok(()));
        assert!(nesting(&ternaries(MAX_NESTING as usize + 1)).is_err());
        // A comma ends the conditionals of a list element; strings and comments hide
        // brackets.
        let elements = format!("[{}]", vec!["a ? 1 : 2"; 100].join(", "));
        assert_eq!(nesting(&elements), Ok(()));
        let quoted = format!(
            r#"'{0}' + "{0}" + r'{0}\' + b'''{0}''' + x // {0}"#,
            "(".repeat(100)
        );
        assert_eq!(nesting(&quoted), Ok(()));
        assert!(nesting(&format!("abr{}", deep(40))).is_err());
    }

    #[test]
    fn long_chains_and_deep_nesting_are_rejected_without_recursion() {
        let chain = format!("size(value){}", " + 1".repeat(30_000));
        // Rejected at the operator that makes the chain 101 levels deep.
        let at = tree_depth(&chain).unwrap_err();
        assert!(at < 500, "{at}");
        assert!(tree_depth(&chain[..at - 1]).is_ok());
        let parens = format!("{}1{}", "(".repeat(50_000), ")".repeat(50_000));
        assert_eq!(tree_depth(&parens), Err(MAX_DEPTH as usize - 1));
        let lists = format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000));
        assert!(tree_depth(&lists).is_err());
        let unclosed = "[".repeat(50_000);
        assert!(tree_depth(&unclosed).is_err());
        let ternaries = format!("{}1", "true ? 1 : ".repeat(50_000));
        assert!(tree_depth(&ternaries).is_err());
    }
}
