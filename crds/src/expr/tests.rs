use super::*;

fn json(j: serde_json::Value) -> Value {
    Value::from(j)
}

/// Evaluates `src` with the single variable `value`.
fn ev(src: &str, value: serde_json::Value) -> Result<Value, EvalError> {
    let p = Program::compile(src, &["value"]).unwrap_or_else(|e| panic!("{src}: {e}"));
    p.eval(&[&json(value)])
}

fn ok(src: &str, value: serde_json::Value) -> serde_json::Value {
    ev(src, value)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
        .to_json()
}

fn c(src: &str) -> serde_json::Value {
    ok(src, serde_json::Value::Null)
}

fn compile_err(src: &str) -> String {
    Program::compile(src, &["value"])
        .err()
        .unwrap_or_else(|| panic!("{src} compiled"))
        .to_string()
}

fn eval_err(src: &str, value: serde_json::Value) -> String {
    ev(src, value)
        .err()
        .unwrap_or_else(|| panic!("{src} succeeded"))
        .message
}

use serde_json::json as j;

#[test]
fn literals_lists_maps() {
    assert_eq!(c("null"), j!(null));
    assert_eq!(
        c("[1, 'a', true, 2.5, null]"),
        j!([1, "a", true, 2.5, null])
    );
    assert_eq!(c("{'a': 1, 'b': [2]}"), j!({"a": 1, "b": [2]}));
    assert_eq!(c("3u"), j!(3));
    assert_eq!(c("-5"), j!(-5));
    assert_eq!(
        Program::compile("b'ab'", &[]).unwrap().eval(&[]).unwrap(),
        Value::from(&b"ab"[..])
    );
    assert_eq!(
        ok("{'k': value, value: 1}", j!("x")),
        j!({"k": "x", "x": 1})
    );
}

#[test]
fn field_and_index_access() {
    let ev_ = j!({"user_id": "alice", "n": [10, 20], "m": {"x": {"y": 1}}});
    assert_eq!(ok("value.user_id", ev_.clone()), j!("alice"));
    assert_eq!(ok("value['user_id']", ev_.clone()), j!("alice"));
    assert_eq!(ok("value.n[1]", ev_.clone()), j!(20));
    assert_eq!(ok("value.m.x.y", ev_.clone()), j!(1));
    assert_eq!(ok("value.n[1u]", ev_.clone()), j!(20));
    assert_eq!(
        eval_err("value.missing", ev_.clone()),
        "value.missing: no such key 'missing'"
    );
    assert_eq!(
        eval_err("value.n[5]", ev_.clone()),
        "value.n[5]: index 5 out of range for a list of size 2"
    );
    assert_eq!(
        eval_err("value.user_id.x", ev_.clone()),
        "value.user_id.x: cannot select field 'x' of a string"
    );
    assert_eq!(
        eval_err("value['nope']", ev_),
        "value[\"nope\"]: no such key 'nope'"
    );
}

#[test]
fn arithmetic() {
    assert_eq!(c("1 + 2 * 3"), j!(7));
    assert_eq!(c("7 / 2"), j!(3));
    assert_eq!(c("7 % 3"), j!(1));
    assert_eq!(c("7.0 / 2.0"), j!(3.5));
    assert_eq!(c("1 + 2.5"), j!(3.5));
    assert_eq!(c("'a' + 'b'"), j!("ab"));
    assert_eq!(c("[1] + [2, 3]"), j!([1, 2, 3]));
    assert_eq!(c("5u - 2u"), j!(3));
    assert_eq!(ok("value - 1", j!(10)), j!(9));
    assert_eq!(ok("-value", j!(2.5)), j!(-2.5));
    assert_eq!(eval_err("value / 0", j!(1)), "division by zero");
    assert_eq!(eval_err("value % 0", j!(1)), "modulus by zero");
    assert!(eval_err("value + 1", j!(i64::MAX)).contains("integer overflow"));
    assert_eq!(
        eval_err("value + 1", j!("a")),
        "no operator '+' for string and int"
    );
}

#[test]
fn comparisons_and_logic() {
    assert_eq!(c("1 < 2 && 2 <= 2 && 3 > 2 && 3 >= 3"), j!(true));
    assert_eq!(c("1 == 1.0"), j!(true));
    assert_eq!(c("1u == 1"), j!(true));
    assert_eq!(c("'a' < 'b'"), j!(true));
    assert_eq!(c("[1, 'a'] == [1.0, 'a']"), j!(true));
    assert_eq!(c("{'a': 1} == {'a': 1}"), j!(true));
    assert_eq!(c("1 != 'a'"), j!(true));
    assert_eq!(c("!true || false"), j!(false));
    assert_eq!(c("true ? 'y' : 'n'"), j!("y"));
    assert_eq!(ok("value > 3 ? 'big' : 'small'", j!(2)), j!("small"));
    // Commutative error handling: a deciding side wins over an error.
    assert_eq!(ok("value.missing || true", j!({})), j!(true));
    assert_eq!(ok("false && value.missing", j!({})), j!(false));
    assert!(eval_err("value.missing && true", j!({})).contains("no such key"));
    assert_eq!(
        eval_err("value < 1", j!("a")),
        "no operator '<' for string and int"
    );
}

#[test]
fn membership_size_has() {
    assert_eq!(c("2 in [1, 2]"), j!(true));
    assert_eq!(c("'a' in {'a': 1}"), j!(true));
    assert_eq!(c("'b' in {'a': 1}"), j!(false));
    assert_eq!(ok("size(value)", j!("héllo")), j!(5));
    assert_eq!(ok("value.size()", j!([1, 2, 3])), j!(3));
    assert_eq!(ok("size(value)", j!({"a": 1})), j!(1));
    assert_eq!(ok("has(value.a)", j!({"a": 1})), j!(true));
    assert_eq!(ok("has(value.b)", j!({"a": 1})), j!(false));
    assert_eq!(ok("has(value.a.b)", j!({"a": {"b": null}})), j!(true));
    assert!(eval_err("has(value.a)", j!(1)).contains("not a map"));
}

#[test]
fn string_functions() {
    assert_eq!(ok("value.lower()", j!("HeLLo Ünï")), j!("hello ünï"));
    assert_eq!(ok("value.upper()", j!("abc")), j!("ABC"));
    assert_eq!(ok("value.lowerAscii()", j!("ÀB")), j!("Àb"));
    assert_eq!(ok("value.upperAscii()", j!("àb")), j!("àB"));
    assert_eq!(ok("value.trim()", j!("  x \n")), j!("x"));
    assert_eq!(
        ok("value.split(',')", j!("a,b,,c")),
        j!(["a", "b", "", "c"])
    );
    assert_eq!(
        ok("value.words()", j!("  the\tquick\n brown  ")),
        j!(["the", "quick", "brown"])
    );
    assert_eq!(ok("value.words()", j!("   ")), j!([]));
    assert_eq!(ok("value.contains('ell')", j!("hello")), j!(true));
    assert_eq!(ok("value.startsWith('he')", j!("hello")), j!(true));
    assert_eq!(ok("value.endsWith('lo')", j!("hello")), j!(true));
    assert_eq!(ok("value.join('-')", j!(["a", "b"])), j!("a-b"));
    assert_eq!(ok("lower(value)", j!("AB")), j!("ab"));
    assert_eq!(
        eval_err("value.lower()", j!(3)),
        "lower(): receiver must be string, got int"
    );
}

#[test]
fn conversions_and_json() {
    assert_eq!(
        ok("parseJson(value).user_id", j!(r#"{"user_id": "bob"}"#)),
        j!("bob")
    );
    assert_eq!(ok("value.parseJson()['n'] + 1", j!(r#"{"n": 41}"#)), j!(42));
    assert!(eval_err("value.parseJson()", j!("{nope")).starts_with("parseJson(): invalid JSON"));
    assert_eq!(
        ok("toJson(value)", j!({"a": [1, "x"]})),
        j!(r#"{"a":[1,"x"]}"#)
    );
    assert_eq!(ok("toJson(value)", j!("s")), j!("\"s\""));
    assert_eq!(c("string(42)"), j!("42"));
    assert_eq!(c("string(2.5)"), j!("2.5"));
    assert_eq!(c("string(true)"), j!("true"));
    assert_eq!(c("int('42')"), j!(42));
    assert_eq!(c("int(3.9)"), j!(3));
    assert_eq!(c("double('2.5')"), j!(2.5));
    assert_eq!(c("double(2)"), j!(2.0));
    assert_eq!(c("uint(7)"), j!(7));
    assert_eq!(
        eval_err("int(value)", j!("x1")),
        "int(): cannot parse 'x1' as an integer"
    );
    assert!(eval_err("uint(value)", j!(-1)).contains("out of range"));
}

#[test]
fn macros() {
    assert_eq!(ok("value.exists(x, x > 2)", j!([1, 2, 3])), j!(true));
    assert_eq!(ok("value.all(x, x > 2)", j!([1, 2, 3])), j!(false));
    assert_eq!(ok("value.exists_one(x, x == 2)", j!([1, 2, 3])), j!(true));
    assert_eq!(ok("value.map(x, x * 2)", j!([1, 2, 3])), j!([2, 4, 6]));
    assert_eq!(ok("value.filter(x, x % 2 == 1)", j!([1, 2, 3])), j!([1, 3]));
    assert_eq!(
        ok("value.map(k, k + '!')", j!({"a": 1, "b": 2})),
        j!(["a!", "b!"])
    );
    assert_eq!(
        ok("value.map(x, value.map(y, x * y))", j!([1, 2])),
        j!([[1, 2], [2, 4]])
    );
    assert_eq!(
        Program::compile("value.filter(x, x > 0)", &["value"])
            .unwrap()
            .result_type(),
        Some(ValueType::List)
    );
}

#[test]
fn compile_errors() {
    assert!(compile_err("value +").starts_with("syntax error at 1:"));
    assert_eq!(
        compile_err("nope + 1"),
        "unknown variable 'nope' (available: value)"
    );
    assert_eq!(
        compile_err("value.frobnicate()"),
        "unknown function 'frobnicate'"
    );
    assert_eq!(compile_err("'a' + 1"), "no operator '+' for string and int");
    assert_eq!(
        compile_err("1.lower()"),
        "lower() receiver expects string, got int"
    );
    assert_eq!(compile_err("!1"), "'!' expects bool, got int");
    assert_eq!(
        compile_err("1 ? 2 : 3"),
        "the condition of '?:' expects bool, got int"
    );
    assert_eq!(
        compile_err("1 in 2"),
        "the right side of 'in' expects list or map, got int"
    );
    assert_eq!(
        compile_err("value.split()"),
        "split() takes 2 argument(s) including the receiver, got 1"
    );
    assert_eq!(
        compile_err("'a' < 1"),
        "cannot compare string and int with '<'"
    );
    assert_eq!(compile_err("2.5 % 2.0"), "'%' is not defined on doubles");
}

#[test]
fn result_types() {
    let t = |s: &str| Program::compile(s, &["value"]).unwrap().result_type();
    assert_eq!(t("value + 1"), None);
    assert_eq!(t("value > 1"), Some(ValueType::Bool));
    assert_eq!(t("value.words()"), Some(ValueType::List));
    assert_eq!(t("value + 'x'"), Some(ValueType::String));
    assert_eq!(t("[value, 1]"), Some(ValueType::List));
    assert_eq!(t("value[0]"), None);
    assert_eq!(t("size(value)"), Some(ValueType::Int));
    assert_eq!(t("true ? 'a' : 'b'"), Some(ValueType::String));
    assert_eq!(t("true ? 'a' : 1"), None);
    assert_eq!(t("has(value.x)"), Some(ValueType::Bool));
}

#[test]
fn positional_variables_and_eval_bool() {
    let p = Program::compile("acc + value * 10 + key", &["acc", "value", "key"]).unwrap();
    assert_eq!(
        p.eval(&[&Value::Int(1), &Value::Int(2), &Value::Int(3)])
            .unwrap(),
        Value::Int(24)
    );
    assert!(p.eval(&[&Value::Int(1)]).is_err());
    let f = Program::compile("value.startsWith('a')", &["value"]).unwrap();
    assert!(f.eval_bool(&[&Value::from("abc")]).unwrap());
    let g = Program::compile("value", &["value"]).unwrap();
    assert!(
        g.eval_bool(&[&Value::Int(1)])
            .unwrap_err()
            .message
            .contains("expected a bool")
    );
}

#[test]
fn borrowed_results_do_not_clone_records() {
    let p = Program::compile("value.user_id", &["value"]).unwrap();
    let v = json(j!({"user_id": "alice"}));
    let args = [&v];
    let out = p.eval_cow(&args).unwrap();
    assert!(matches!(out, std::borrow::Cow::Borrowed(_)));
}

/// The word-count pipeline, evaluated by hand with Flink's rolling-reduce semantics.
#[test]
fn word_count_by_hand() {
    let flat_map = Program::compile("value.lower().words()", &["value"]).unwrap();
    let map = Program::compile("[value, 1]", &["value"]).unwrap();
    let key_by = Program::compile("value[0]", &["value"]).unwrap();
    let reduce = Program::compile("[acc[0], acc[1] + value[1]]", &["acc", "value", "key"]).unwrap();
    assert_eq!(flat_map.result_type(), Some(ValueType::List));
    assert_eq!(map.result_type(), Some(ValueType::List));

    let lines = ["To be, or not to be", "TO BE"];
    let mut state: std::collections::HashMap<Value, Value> = Default::default();
    let mut emitted = Vec::new();
    for line in lines {
        let words = flat_map.eval(&[&Value::from(line)]).unwrap();
        for w in words.as_list().unwrap() {
            let pair = map.eval(&[w]).unwrap();
            let key = key_by.eval(&[&pair]).unwrap();
            assert!(key.is_key());
            let next = match state.get(&key) {
                None => pair,
                Some(acc) => reduce.eval(&[acc, &pair, &key]).unwrap(),
            };
            emitted.push(next.to_string());
            state.insert(key, next);
        }
    }
    assert_eq!(
        emitted,
        [
            r#"["to",1]"#,
            r#"["be,",1]"#,
            r#"["or",1]"#,
            r#"["not",1]"#,
            r#"["to",2]"#,
            r#"["be",1]"#,
            r#"["to",3]"#,
            r#"["be",2]"#
        ]
    );
}

#[test]
fn programs_are_send_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Program>();
}

const REDUCE_VARS: &[&str] = &["acc", "value", "key"];

/// `eval_update` must give exactly what `eval` gives (value or error), whichever path it takes.
fn update_matches_eval(src: &str, acc: serde_json::Value, value: serde_json::Value) {
    let p = Program::compile(src, REDUCE_VARS).unwrap();
    let (acc, value, key) = (json(acc), json(value), Value::Null);
    let expected = p.eval(&[&acc, &value, &key]);
    let mut updated = acc.clone();
    let got = p.eval_update(&mut updated, &[&value, &key]);
    match expected {
        Ok(v) => {
            assert_eq!(got, Ok(()), "{src}");
            assert_eq!(updated, v, "{src}");
        }
        Err(e) => {
            assert_eq!(got, Err(e.clone()), "{src}");
            assert_eq!(updated, acc, "{src}: a failed update leaves acc as it was");
        }
    }
    // The same through the accumulator's elements, where the program's shape allows.
    if let (Some(n), Value::List(items)) = (p.slot_count(), &acc)
        && items.len() == n
    {
        let mut slots = items.to_vec();
        let got = p.update_slots(&mut slots, &[&value, &key]);
        match p.eval(&[&acc, &value, &key]) {
            Ok(v) => {
                assert_eq!(got, Ok(()), "{src} on slots");
                assert_eq!(Value::list(slots), v, "{src} on slots");
            }
            Err(e) => {
                assert_eq!(got, Err(e), "{src} on slots");
                assert_eq!(
                    &slots[..],
                    &items[..],
                    "{src}: a failed update leaves the slots"
                );
            }
        }
    }
}

#[test]
fn slot_updates_need_element_wise_programs() {
    let count = |src: &str| Program::compile(src, REDUCE_VARS).unwrap().slot_count();
    assert_eq!(count("[acc[0], acc[1] + value[1]]"), Some(2));
    assert_eq!(count("[acc[1], acc[0]]"), Some(2));
    assert_eq!(count("[value, acc[1] * 2, acc[2] - 1]"), Some(3));
    assert_eq!(count("[acc[0], [1, 2].map(x, x + acc[1])]"), Some(2));
    assert_eq!(count("[acc[0u], key]"), Some(2));
    // `acc` as a whole, a computed or out-of-range index, a non-literal result.
    assert_eq!(count("[acc, 1]"), None);
    assert_eq!(count("[size(acc), 1]"), None);
    assert_eq!(count("[acc[0], acc[2]]"), None);
    assert_eq!(count("[acc[0], acc[value[0]]]"), None);
    assert_eq!(count("[acc[0], acc[-1]]"), None);
    assert_eq!(count("acc + value"), None);
    assert_eq!(count("[1, 2, 3, 4, 5]"), None);
    // A program that has a plan refuses slots of another length, naming itself.
    let p = Program::compile("[acc[0], acc[1] + value[1]]", REDUCE_VARS).unwrap();
    let mut three = vec![Value::Int(1), Value::Int(2), Value::Int(3)];
    assert_eq!(
        p.update_slots(&mut three, &[&Value::Null, &Value::Null])
            .unwrap_err()
            .message,
        "expression '[acc[0], acc[1] + value[1]]' cannot update an accumulator of 3 \
         element(s) with 3 variable(s)"
    );
    // Elements are read where the loop needs them.
    update_matches_eval(
        "[acc[0], [1, 2].map(x, x + acc[1])]",
        j!(["a", 10]),
        j!(null),
    );
    update_matches_eval("[acc[0u], key]", j!(["a", 10]), j!(null));
}

#[test]
fn list_literals_of_every_length() {
    assert_eq!(ok("[value]", j!(1)), j!([1]));
    assert_eq!(ok("[value, 2]", j!(1)), j!([1, 2]));
    assert_eq!(ok("[value, 2, 'x']", j!(1)), j!([1, 2, "x"]));
    assert_eq!(ok("[value, 2, 3, 4]", j!(1)), j!([1, 2, 3, 4]));
    assert_eq!(ok("[value, 2, 3, 4, value]", j!(1)), j!([1, 2, 3, 4, 1]));
    assert_eq!(
        eval_err("[1, value.x]", j!(1)),
        eval_err("[1, 2, value.x]", j!(1))
    );
    let p = Program::compile("[value, 1]", &["value"]).unwrap();
    assert_eq!(
        p.eval(&[]).unwrap_err().message,
        "expression '[value, 1]' takes 1 variable(s), 0 given"
    );
}

#[test]
fn eval_update_is_eval() {
    let sum = "[acc[0], acc[1] + value[1]]";
    update_matches_eval(sum, j!(["a", 41]), j!(["a", 1]));
    // Wrong types and missing elements fail with the messages of `eval`.
    update_matches_eval(sum, j!(["a", 41]), j!(["a", "x"]));
    update_matches_eval(sum, j!(["a", 41]), j!(["a"]));
    update_matches_eval(sum, j!(["a", 41]), j!({"k": 1}));
    update_matches_eval(sum, j!(["a", 9223372036854775807i64]), j!(["a", 1]));
    // An accumulator that is not a list of the literal's length takes the general path.
    update_matches_eval(sum, j!(["a", 41, true]), j!(["a", 1]));
    update_matches_eval(sum, j!(["a"]), j!(["a", 1]));
    update_matches_eval(sum, j!(5), j!(["a", 1]));
    update_matches_eval(sum, j!({"0": 1}), j!(["a", 1]));
    // Several changed elements, swapped positions, a non-literal result.
    update_matches_eval("[acc[0] + 1, acc[1] + value]", j!([1, 2]), j!(3));
    update_matches_eval("[acc[0] + 1, acc[1] + value]", j!([1, 2]), j!("x"));
    update_matches_eval("[acc[1], acc[0]]", j!(["a", 1]), j!(null));
    update_matches_eval("[acc[0u], value]", j!(["a", 1]), j!(7));
    update_matches_eval("acc + value", j!(1), j!(2));
    // Other operators and operand types of a binary element on two leaves.
    update_matches_eval("[acc[0], acc[1] - value[1]]", j!(["a", 5]), j!(["a", 7]));
    update_matches_eval("[acc[0], acc[1] * value[1]]", j!(["a", 5]), j!(["a", 7]));
    update_matches_eval(
        "[acc[0], acc[1] * value[1]]",
        j!(["a", 1i64 << 62]),
        j!(["a", 4]),
    );
    update_matches_eval("[acc[0], acc[1] / value[1]]", j!(["a", 5]), j!(["a", 0]));
    update_matches_eval("[acc[0], acc[1] % value[1]]", j!(["a", 5]), j!(["a", 3]));
    update_matches_eval("[acc[0], acc[1] + value[1]]", j!(["a", 5]), j!(["a", 0.5]));
    update_matches_eval(
        "[acc[0], acc[1] + value[1]]",
        j!(["a", "b"]),
        j!(["a", "c"]),
    );
    update_matches_eval("[acc[0], acc[1] < value[1]]", j!(["a", 1]), j!(["a", 2]));
    update_matches_eval("[acc[0], acc[1] + 1]", j!(["a", 1]), j!(null));
    update_matches_eval("[acc[0], value + acc[1]]", j!(["a", 1]), j!(2));
    // Nothing changed; the first of several changed elements fails; three changed.
    update_matches_eval("[acc[0], acc[1]]", j!(["a", 1]), j!(2));
    update_matches_eval("[acc[0] + value, acc[1] + 1]", j!([1, 2]), j!("x"));
    update_matches_eval("[acc[0] + 1, acc[1] + 1]", j!([1, 2]), j!(null));
    update_matches_eval("[value, acc[1] * 2, acc[2] - 1]", j!([0, 2, 3]), j!(7));
    update_matches_eval("{'n': acc.n + value}", j!({"n": 1}), j!(2));
}

#[test]
fn eval_update_copies_a_shared_accumulator() {
    let p = Program::compile("[acc[0], acc[1] + value[1]]", REDUCE_VARS).unwrap();
    let mut acc = Value::list(vec![Value::from("a"), Value::Int(1)]);
    let emitted = acc.clone();
    let pair = Value::list(vec![Value::from("a"), Value::Int(2)]);
    p.eval_update(&mut acc, &[&pair, &Value::Null]).unwrap();
    assert_eq!(acc.to_json(), j!(["a", 3]));
    assert_eq!(
        emitted.to_json(),
        j!(["a", 1]),
        "a record already emitted never changes"
    );
    drop(emitted);
    p.eval_update(&mut acc, &[&pair, &Value::Null]).unwrap();
    assert_eq!(acc.to_json(), j!(["a", 5]));
}

/// Runs `eval_each`, collecting what it passes on.
fn each(src: &str, value: serde_json::Value) -> (Vec<Value>, Result<(), EachError<()>>) {
    let p = Program::compile(src, &["value"]).unwrap();
    let mut out = Vec::new();
    let r = p.eval_each(&[&json(value)], |v| {
        out.push(v);
        Ok(())
    });
    (out, r)
}

#[test]
fn eval_each_is_eval_spread() {
    for (src, value) in [
        ("value.lower().words()", j!("The  quick\tBrown fox ")),
        ("value.lower().words()", j!("ÀB Çd")),
        ("value.trim().upper().words()", j!("  a b ")),
        ("value.words()", j!("")),
        ("value.split(',')", j!("a,,b")),
        ("value", j!([1, "x", null])),
        ("[value, 1]", j!("w")),
    ] {
        let expected = ev(src, value.clone()).unwrap();
        let (got, r) = each(src, value);
        assert_eq!(r, Ok(()), "{src}");
        assert_eq!(Value::list(got), expected, "{src}");
    }
    // Failures pass nothing on and keep the messages of `eval`.
    for (src, value) in [
        ("value.lower().words()", j!(5)),
        ("value.words()", j!(null)),
        ("value.trim().lower().words()", j!([1])),
        ("value.x.words()", j!({})),
    ] {
        let expected = eval_err(src, value.clone());
        let (got, r) = each(src, value);
        assert!(got.is_empty(), "{src}");
        assert_eq!(r, Err(EachError::Eval(EvalError { message: expected })));
    }
    assert_eq!(
        each("value.lower()", j!("A")).1,
        Err(EachError::NotAList(ValueType::String))
    );
    let p = Program::compile("value.words()", &["value"]).unwrap();
    let mut seen = 0;
    let r = p.eval_each(&[&Value::from("a b c")], |_| {
        seen += 1;
        if seen == 2 { Err("full") } else { Ok(()) }
    });
    assert_eq!((seen, r), (2, Err(EachError::Emit("full"))));
}

#[test]
fn string_function_chains() {
    assert_eq!(ok("value.trim().lower()", j!("  AbC ")), j!("abc"));
    assert_eq!(ok("value.lower().trim()", j!("  AbC ")), j!("abc"));
    assert_eq!(ok("value.upper().lower()", j!("ÀbÇ")), j!("àbç"));
    assert_eq!(ok("value.lowerAscii().upperAscii()", j!("àB")), j!("àB"));
    assert_eq!(ok("value.lowerAscii()", j!("ÀB")), j!("Àb"));
    assert_eq!(ok("value.trim().trim()", j!(" x ")), j!("x"));
    assert_eq!(ok("size(value.trim())", j!(" ab ")), j!(2));
    assert_eq!(
        eval_err("value.trim().lower()", j!(1)),
        "trim(): receiver must be string, got int"
    );
    assert_eq!(
        eval_err("value.lower().trim()", j!(true)),
        "lower(): receiver must be string, got bool"
    );
    // An unchanged (long, so shared) string is the record's own string, not a copy.
    let p = Program::compile("value.lower().trim()", &["value"]).unwrap();
    let v = Value::from("this string is already lower case");
    match (p.eval(&[&v]).unwrap(), &v) {
        (Value::String(a), Value::String(b)) => {
            assert!(Arc::ptr_eq(a.as_arc().unwrap(), b.as_arc().unwrap()))
        }
        _ => unreachable!(),
    }
}

#[test]
fn constant_index_of_a_variable() {
    assert_eq!(ok("value[1]", j!([1, 2])), j!(2));
    assert_eq!(ok("value['k']", j!({"k": 3})), j!(3));
    assert_eq!(
        eval_err("value[-1]", j!([1])),
        "value[-1]: index -1 out of range for a list of size 1"
    );
    assert_eq!(
        eval_err("value[0]", j!({"k": 1})),
        "value[0]: map key must be a string, got int"
    );
    assert_eq!(
        eval_err("value[0]", j!("ab")),
        "value[0]: cannot index a string"
    );
    assert_eq!(
        eval_err("value['k']", j!({})),
        r#"value["k"]: no such key 'k'"#
    );
}
