//! Our expression evaluator against the `cel` crate's interpreter (issue 13, item 10): every
//! expression of [`AGREE`] must give the same value in both, or fail in both; every one of
//! [`DIFFER`] is a deliberate difference, with our result and the reason (also listed in
//! docs/expressions.md), and must really differ, so the list stays true.
//!
//! Expressions use only what both implement; our own functions (`lower`, `words`,
//! `parseJson`, ...) are covered by the unit tests in crds/src/expr/tests.rs.

use std::collections::HashMap;
use std::sync::Arc;

use streamjob_crds::expr::{Program, Value};

/// The record bound to `value` in every case.
fn record() -> Value {
    Value::from(serde_json::json!({
        "name": "Ada",
        "age": 36,
        "score": 2.5,
        "tags": ["math", "code", "math"],
        "nested": {"x": 1, "y": [1, 2, 3]},
        "empty": [],
        "none": null,
        "flag": true,
        "text": "héllo wörld",
    }))
}

const AGREE: &[&str] = &[
    // Literals.
    "1",
    "-1",
    "0x1F",
    "1u",
    "0xFFu",
    "2.5",
    "1e3",
    "-0.0",
    "'a'",
    "\"double\"",
    "'''tri\nple'''",
    "r'raw\\n'",
    "'esc\\n\\t\\\\'",
    "'\\u00e9'",
    "b'abc'",
    "true",
    "false",
    "null",
    "[]",
    "[1, 'a', null]",
    "{}",
    "{'a': 1, 'b': [true]}",
    // Integer arithmetic, overflow, division by zero.
    "1 + 2",
    "7 - 10",
    "6 * 7",
    "7 / 2",
    "-7 / 2",
    "7 % 3",
    "-7 % 3",
    "7 % -3",
    "9223372036854775807 + 1",
    "-9223372036854775807 - 2",
    "9223372036854775807 * 2",
    "-9223372036854775808 / -1",
    "-9223372036854775808 % -1",
    "1 / 0",
    "1 % 0",
    "-(-9223372036854775807 - 1)",
    "2 + 3 * 4",
    "(2 + 3) * 4",
    "10 - 2 - 3",
    "100 / 10 / 5",
    // Unsigned arithmetic.
    "1u + 2u",
    "3u - 1u",
    "0u - 1u",
    "18446744073709551615u + 1u",
    "7u / 2u",
    "7u % 2u",
    "1u / 0u",
    "4u * 5u",
    // Doubles.
    "1.5 + 2.25",
    "1.0 / 0.0",
    "-1.0 / 0.0",
    "0.5 * 4.0",
    "3.0 - 0.5",
    "-2.5",
    "1e308 * 10.0",
    // Strings and bytes.
    "'ab' + 'cd'",
    "'' + ''",
    "b'ab' + b'cd'",
    "'abc' < 'abd'",
    "'b' > 'abc'",
    "'a' <= 'a'",
    "'' < 'a'",
    "b'a' < b'b'",
    "'abc' == 'abc'",
    "'abc' != 'abd'",
    "'ä' > 'z'",
    // Lists.
    "[1, 2] + [3]",
    "[] + []",
    "[1, 2] == [1, 2]",
    "[1, 2] == [2, 1]",
    "[1, [2, 3]] == [1, [2, 3]]",
    "[1, 2] != [1]",
    "[1, 2, 3][0]",
    "[1, 2, 3][2]",
    "[1, 2, 3][3]",
    "[1, 2, 3][-1]",
    "[[1], [2]][1][0]",
    // Maps.
    "{'a': 1}['a']",
    "{'a': 1}.a",
    "{'a': 1}['b']",
    "{'a': {'b': 2}}.a.b",
    "{'a': 1} == {'a': 1}",
    "{'a': 1} == {'a': 2}",
    "{'a': 1, 'b': 2} == {'b': 2, 'a': 1}",
    "{'a': 1} != {'b': 1}",
    // Equality across and within types.
    "1 == 1",
    "1 != 2",
    "1u == 1u",
    "2.0 == 2.0",
    "'1' == 1",
    "null == null",
    "null == 0",
    "null != 'a'",
    "true == true",
    "true != false",
    "b'a' == b'a'",
    "[] == []",
    "{} == {}",
    "[1] == ['1']",
    // Comparisons.
    "1 < 2",
    "2 <= 2",
    "3 > 2",
    "3 >= 4",
    "1u < 2u",
    "2.5 > 1.5",
    "false < true",
    "true >= true",
    // Logic, including CEL's commutative error absorption.
    "true && false",
    "true || false",
    "!true",
    "!!false",
    "false && (1 / 0 == 1)",
    "(1 / 0 == 1) && false",
    "true || (1 / 0 == 1)",
    "(1 / 0 == 1) || true",
    "(1 / 0 == 1) && true",
    "false || (1 / 0 == 1)",
    "true && true && false",
    "false || false || true",
    // Conditional.
    "true ? 1 : 2",
    "false ? 1 : 2",
    "1 > 2 ? 'a' : 'b'",
    "true ? 1 : 1 / 0",
    "false ? 1 / 0 : 3",
    "true ? false ? 1 : 2 : 3",
    // in.
    "1 in [1, 2]",
    "3 in [1, 2]",
    "'a' in ['a']",
    "'a' in {'a': 1}",
    "'b' in {'a': 1}",
    "[1] in [[1], [2]]",
    "1 in []",
    // size.
    "size('hello')",
    "size('')",
    "size('héllo')",
    "size(b'abc')",
    "size([1, 2, 3])",
    "size({'a': 1})",
    "'abc'.size()",
    "[1].size()",
    // String functions both have.
    "'hello'.contains('ell')",
    "'hello'.contains('')",
    "'hello'.contains('xyz')",
    "'hello'.startsWith('he')",
    "'hello'.startsWith('lo')",
    "'hello'.endsWith('lo')",
    "'hello'.endsWith('')",
    // Conversions.
    "int('42')",
    "int('4.2')",
    "int('x')",
    "int(42u)",
    "int(18446744073709551615u)",
    "int(2.9)",
    "int(-2.9)",
    "int(1e20)",
    "uint(42)",
    "uint(-1)",
    "uint('7')",
    "uint(2.5)",
    "double(1)",
    "double(2u)",
    "double('2.5')",
    "double('x')",
    "string('s')",
    "string(b'abc')",
    // Macros.
    "[1, 2, 3].all(x, x > 0)",
    "[1, 2, 3].all(x, x > 1)",
    "[].all(x, x > 0)",
    "[1, 2, 3].exists(x, x == 2)",
    "[1, 2, 3].exists(x, x == 5)",
    "[].exists(x, true)",
    "[1, 2, 3].exists_one(x, x > 2)",
    "[1, 2, 3].exists_one(x, x > 1)",
    "[1, 2, 3].map(x, x * 2)",
    "[].map(x, x)",
    "[1, 2, 3].filter(x, x % 2 == 1)",
    "[1, 2, 3].filter(x, x > 5)",
    "[1, 2, 3].map(x, [x, x])",
    "[[1, 2], [3]].map(l, l.map(x, x + 1))",
    "[1, 2, 3].all(x, x / 0 > 1)",
    "[1, 0].all(x, 1 / x == 1)",
    "{'a': 1, 'b': 2}.all(k, k != 'c')",
    "{'a': 1, 'b': 2}.exists(k, k == 'b')",
    // Map keys iterate in sorted order here, in no fixed order in CEL: compare contents.
    "{'a': 1, 'b': 2}.map(k, k).exists(x, x == 'b')",
    "{'b': 1, 'a': 2}.map(k, k).size()",
    "{'a': 1}.filter(k, k == 'a')",
    // has().
    "has({'a': 1}.a)",
    "has({'a': 1}.b)",
    "has(value.name)",
    "has(value.missing)",
    "has(value.nested.x)",
    // The record.
    "value.name",
    "value['name']",
    "value.age + 1",
    "value.age * 2 - 2",
    "value.score * 2.0",
    "value.tags",
    "value.tags[1]",
    "value.tags.size()",
    "size(value.tags)",
    "'code' in value.tags",
    "'java' in value.tags",
    "value.tags.filter(t, t == 'math')",
    "value.tags.map(t, t + '!')",
    "value.tags.exists_one(t, t == 'code')",
    "value.nested.y.map(n, n * n)",
    "value.nested.y.all(n, n > 0)",
    "value.nested.x == 1",
    "value.empty.size() == 0",
    "value.none",
    "value.none == null",
    "value.flag && value.age > 30",
    "value.flag ? value.name : 'nobody'",
    "value.missing",
    "value.name.missing",
    "value.tags[5]",
    "value.text",
    "size(value.text)",
    "value.text.startsWith('hé')",
    "value.name + ' L.'",
    "value.name == 'Ada' && value.age >= 18",
    "value.age > 40 || value.tags.exists(t, t == 'code')",
    "[value.name, value.age]",
    "{'n': value.name}",
    "{'n': value.name}.n",
    "value.nested.y[value.nested.x]",
    "value.age / 5",
    "value.age % 5",
    "-value.age",
    "!value.flag",
    // Type errors at run time (no static type of the record's fields).
    "value.name + 1",
    "value.age + 'x'",
    "value.tags + 1",
    "value.name < 1",
    "!value.age",
    "value.age ? 1 : 2",
    "value.name.size() > value.tags.size()",
    // Mixed numbers where CEL already compares across types.
    "1 < 2.5",
    "2u > 1",
    "1 == 1.0",
    "1u == 1",
    "1 in [1.0, 2.0]",
    "value.age == 36.0",
    "value.score > value.age",
    "[1, 2.0] == [1.0, 2]",
    // More edge cases.
    "'abc'[0]",
    "string(1)",
    "string(2.5)",
    "string(true)",
    "string(42u)",
    "int(true)",
    "5.5 % 2.0",
    "[1, 2][true]",
    "{'a': 1}[1]",
    "null < 1",
    "[1] < [2]",
    "{'a': 1}.a.b",
    "size(1)",
    "'abc'.startsWith(1)",
    "[1, 2, 3].map(x, x * x).filter(y, y > 3)",
    "[1, 2, 3].filter(x, x > 1).map(y, y * 10)",
    "[[1, 2], [3, 4]].exists(l, l.all(x, x > 2))",
    "['a', 'b'].map(s, s + s).exists(t, t == 'bb')",
    "value.tags.filter(t, t.startsWith('m')).size()",
    "{'k': [1, 2]}.k.map(x, x + 1)[1]",
];

/// Expressions where we deliberately (or necessarily) differ from the `cel` crate: the
/// expression, our result as JSON (`None`: our evaluation fails), and the reason.
const DIFFER: &[(&str, Option<&str>, &str)] = &[
    (
        "1 + 2.5",
        Some("3.5"),
        "numbers mix: JSON records do not say whether 3 is an int or a double",
    ),
    (
        "1 + 1u",
        Some("2"),
        "numbers mix: int and uint arithmetic gives an int",
    ),
    (
        "2.0 * 3",
        Some("6.0"),
        "numbers mix: an int promotes to double next to a double",
    ),
    (
        "value.age * 1.5",
        Some("54.0"),
        "numbers mix: a JSON integer field times a double",
    ),
    (
        "value.score + value.age",
        Some("38.5"),
        "numbers mix: fields of one JSON record",
    ),
    (
        "string([1, 'a'])",
        Some("\"[1,\\\"a\\\"]\""),
        "string() of a list gives its JSON text; CEL has no such conversion",
    ),
    (
        "string(null)",
        Some("\"null\""),
        "string() of null gives \"null\"",
    ),
    (
        "int(' 42')",
        Some("42"),
        "int(), uint() and double() of a string ignore surrounding whitespace",
    ),
    (
        "[0, 1].exists(x, 1 / x == 1)",
        None,
        "a macro stops at the first error; CEL carries it on and lets a later true decide",
    ),
    (
        "[1, 2][1.0]",
        None,
        "a constant double index is rejected when compiled (a double field with no \
         fraction does index a list at run time)",
    ),
    (
        "{1: 'a'}",
        None,
        "map keys are strings (records are JSON objects)",
    ),
    (
        "value.age + value.score",
        Some("38.5"),
        "numbers mix: fields of one JSON record",
    ),
];

/// Our value as the `cel` crate's.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Int(i) => cel::Value::Int(*i),
        Value::UInt(u) => cel::Value::UInt(*u),
        Value::Double(d) => cel::Value::Float(*d),
        Value::String(s) => cel::Value::String(Arc::new(s.to_string())),
        Value::Bytes(b) => cel::Value::Bytes(Arc::new(b.to_vec())),
        Value::List(l) => cel::Value::List(Arc::new(l.iter().map(to_cel).collect())),
        Value::Map(m) => {
            let map: HashMap<cel::objects::Key, cel::Value> = m
                .iter()
                .map(|(k, v)| {
                    (
                        cel::objects::Key::String(Arc::new(k.to_string())),
                        to_cel(v),
                    )
                })
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

/// The `cel` crate's value as ours; `None` for what we do not have (non-string map keys,
/// functions, ...).
fn from_cel(v: &cel::Value) -> Option<Value> {
    Some(match v {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => Value::Bool(*b),
        cel::Value::Int(i) => Value::Int(*i),
        cel::Value::UInt(u) => Value::UInt(*u),
        cel::Value::Float(d) => Value::Double(*d),
        cel::Value::String(s) => Value::from(s.as_str()),
        cel::Value::Bytes(b) => Value::from(&b[..]),
        cel::Value::List(l) => Value::list(l.iter().map(from_cel).collect::<Option<_>>()?),
        cel::Value::Map(m) => {
            let mut entries = Vec::new();
            for (k, v) in m.map.iter() {
                let cel::objects::Key::String(k) = k else {
                    return None;
                };
                entries.push((k.as_str().to_string(), from_cel(v)?));
            }
            Value::map(entries)
        }
        _ => return None,
    })
}

/// Our result: `Ok(value)`, or `Err` for a compile or evaluation error.
fn ours(src: &str) -> Result<Value, String> {
    let p = Program::compile(src, &["value"]).map_err(|e| format!("compile: {e}"))?;
    p.eval(&[&record()]).map_err(|e| format!("eval: {e}"))
}

/// The `cel` crate's result, converted; `Err` for an error or a value we cannot hold.
fn theirs(src: &str) -> Result<Value, String> {
    let p = cel::Program::compile(src).map_err(|e| format!("compile: {e}"))?;
    let mut ctx = cel::Context::default();
    ctx.add_variable_from_value("value", to_cel(&record()));
    let v = p.execute(&ctx).map_err(|e| format!("eval: {e}"))?;
    from_cel(&v).ok_or_else(|| format!("no equivalent of {v:?}"))
}

/// Same value, or both failed.
fn same(a: &Result<Value, String>, b: &Result<Value, String>) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x == y,
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

#[test]
fn agrees_with_the_cel_crate() {
    let mut mismatches = Vec::new();
    for src in AGREE {
        let (a, b) = (ours(src), theirs(src));
        if !same(&a, &b) {
            mismatches.push(format!("{src}\n    ours: {a:?}\n    cel:  {b:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        AGREE.len(),
        mismatches.join("\n")
    );
    assert!(AGREE.len() >= 250, "{}", AGREE.len());
}

#[test]
fn listed_differences_are_real_and_give_our_documented_result() {
    let mut wrong = Vec::new();
    for (src, expected, reason) in DIFFER {
        let (a, b) = (ours(src), theirs(src));
        let ok = match (expected, &a) {
            (Some(json), Ok(v)) => v.to_json_string() == *json,
            (None, Err(_)) => true,
            _ => false,
        };
        // A value we cannot hold (a map with an int key) is a difference too.
        let cel_has_no_equivalent = matches!(&b, Err(e) if e.starts_with("no equivalent"));
        if !ok || (same(&a, &b) && !cel_has_no_equivalent) {
            wrong.push(format!(
                "{src} ({reason})\n    ours: {a:?} (expected {expected:?})\n    cel:  {b:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_tables_do_not_overlap() {
    for (src, _, _) in DIFFER {
        assert!(!AGREE.contains(src), "{src} is in both tables");
    }
}
