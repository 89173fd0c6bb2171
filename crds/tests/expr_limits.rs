//! Hostile expressions (issue 13, items 6-8): each gets a clear one-line error at
//! compile/validation time or a clear `EvalError` at run time, never a stack overflow, an
//! abort or a hang.
//!
//! Each case runs in a child process (this test binary, re-run for that one test) on a
//! thread with a small stack, so a regression shows as a failed test rather than a dead
//! test runner.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use streamjob_crds::expr::{MAX_COST, MAX_DEPTH, Program, Value};
use streamjob_crds::validate::{parse_job, validate_job};

const CHILD_ENV: &str = "EXPR_LIMITS_CHILD";
/// Stack of the thread a case runs on: well below a worker thread's 2 MiB. Evaluating
/// the deepest expression allowed takes about 6 KB of stack per level in a debug build
/// (600 KB at 100 levels), far less in a release build.
const STACK: usize = if cfg!(debug_assertions) {
    1024 * 1024
} else {
    256 * 1024
};

/// Runs `case` in a child process on a small stack; fails if the child crashes, hangs for
/// a minute or the case panics.
fn isolated(test_name: &str, case: fn()) {
    if std::env::var(CHILD_ENV).as_deref() == Ok(test_name) {
        std::thread::Builder::new()
            .stack_size(STACK)
            .spawn(case)
            .expect("spawn")
            .join()
            .expect("case panicked");
        println!("CASE-OK {test_name}");
        return;
    }
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test_name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the test binary");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("{test_name}: still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .ok();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)
        .ok();
    assert!(
        status.success() && out.contains(&format!("CASE-OK {test_name}")),
        "{test_name}: child failed ({status}):\n{out}\n{err}"
    );
}

fn compile_error(src: &str) -> String {
    match Program::compile(src, &["value"]) {
        Ok(_) => panic!("compiled: {}", &src[..src.len().min(200)]),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "not one line: {msg}");
            assert!(msg.len() < 400, "too long: {msg}");
            msg
        }
    }
}

fn chain(terms: usize) -> String {
    format!("size(value){}", " + 1".repeat(terms - 1))
}

#[test]
fn long_operator_chains_are_rejected_with_position() {
    isolated("long_operator_chains_are_rejected_with_position", || {
        // Both crashed before: 10,000 terms at run time, 30,000 already in validation.
        for terms in [10_000, 30_000] {
            let src = chain(terms);
            let src = &src[..src.len().min(9_999)];
            let msg = compile_error(src);
            assert!(
                msg.contains("nests deeper than the limit of 100 levels"),
                "{msg}"
            );
            // size(value) is 5 levels deep, each `+ 1` one more: the 96th `+` is too many.
            let at = 12 + 95 * 4 + 1;
            assert!(
                msg.starts_with(&format!("syntax error at 1:{at}: ")),
                "{msg}"
            );
        }
        // The full 30,000 terms are also over the length limit.
        let msg = compile_error(&chain(30_000));
        assert!(
            msg.contains("expression is 120007 bytes long, the limit is 10000"),
            "{msg}"
        );
    });
}

#[test]
fn the_deepest_accepted_chain_evaluates_on_a_small_stack() {
    isolated(
        "the_deepest_accepted_chain_evaluates_on_a_small_stack",
        || {
            let p = Program::compile(&chain(96), &["value"]).expect("96 terms are allowed");
            let v = p.eval(&[&Value::from("abc")]).expect("eval");
            assert_eq!(v, Value::Int(3 + 95));
            compile_error(&chain(97));
            // Nested brackets and macros up to the limit, too.
            let nested = format!("{}value{}", "[".repeat(32), "]".repeat(32));
            let p = Program::compile(&nested, &["value"]).expect("32 nested lists");
            p.eval(&[&Value::Int(1)]).expect("eval");
            let msg = compile_error(&format!("{}value{}", "[".repeat(33), "]".repeat(33)));
            assert_eq!(
                msg,
                "syntax error at 1:33: brackets and conditionals (`?:`) nest deeper than the \
             limit of 32"
            );
            let selects = format!("value{}", ".f".repeat(99));
            Program::compile(&selects, &["value"]).expect("99 field selections");
            compile_error(&format!("value{}", ".f".repeat(100)));
            let maps = "value.map(a, [a].map(b, [b].map(c, [c].map(d, [d].map(e, e + 1)))))";
            let p = Program::compile(maps, &["value"]).expect("five nested one-element maps");
            let r = p.eval(&[&Value::list(vec![Value::Int(1)])]).expect("eval");
            assert_eq!(r.to_string(), "[[[[[2]]]]]");
        },
    );
}

#[test]
fn deep_ternaries_say_what_is_wrong() {
    isolated("deep_ternaries_say_what_is_wrong", || {
        // Before: "Incomplete `ExprContext` for `_?_:_` expression!" from the parser.
        let src = format!("{}0", "value == 1 ? 1 : ".repeat(200));
        let msg = compile_error(&src);
        assert_eq!(
            msg,
            "syntax error at 1:556: brackets and conditionals (`?:`) nest deeper than the \
             limit of 32"
        );
        // Within the limit they work.
        let src = format!("{}0", "value == 1 ? 1 : ".repeat(30));
        let p = Program::compile(&src, &["value"]).expect("30 ternaries");
        assert_eq!(p.eval(&[&Value::Int(2)]).expect("eval"), Value::Int(0));
    });
}

#[test]
fn validation_reports_deep_expressions_in_one_line_without_echoing_them() {
    isolated(
        "validation_reports_deep_expressions_in_one_line_without_echoing_them",
        || {
            let expr = chain(10_000);
            let yaml = format!(
                "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: t\n\
                 spec:\n  steps:\n  - name: src\n    source: {{collection: {{values: [a]}}}}\n\
                 \x20 - name: m\n    map: {{expr: '{expr}'}}\n  - name: out\n    sink: {{print: {{}}}}\n"
            );
            let job = parse_job(&yaml).expect("yaml");
            let errs = validate_job(&job).expect_err("rejected");
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].path, "spec.steps[1].map.expr");
            let msg = &errs[0].message;
            assert_eq!(
                msg,
                "'size(value) + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 ... \
                 (40007 bytes)' does not compile: expression is 40007 bytes long, the \
                 limit is 10000"
            );
        },
    );
}

fn eval_error(src: &str, value: &Value) -> String {
    let p = Program::compile(src, &["value"]).unwrap_or_else(|e| panic!("{src}: {e}"));
    match p.eval(&[value]) {
        Ok(v) => panic!("{src} evaluated to a {}", v.value_type()),
        Err(e) => e.message,
    }
}

fn over_budget(msg: &str) {
    assert!(
        msg.starts_with(&format!(
            "expression exceeded its cost limit of {MAX_COST} units"
        )),
        "{msg}"
    );
}

#[test]
fn nested_string_doublings_fail_before_allocating() {
    isolated("nested_string_doublings_fail_before_allocating", || {
        // 31 nested doublings (3 GiB) no longer compile: too deep.
        let mut src = "value".to_string();
        for i in 0..31 {
            src = format!("[{src} + {src}].map(x{i}, x{i})[0]");
            if src.len() > 9_000 {
                break;
            }
        }
        compile_error(&src);
        let mut src = "a4 + a4".to_string();
        for i in (0..4).rev() {
            src = format!("[a{i} + a{i}].map(a{}, {src})[0]", i + 1);
        }
        let src = format!("[value].map(a0, {src})[0]");
        let p = Program::compile(&src, &["value"]).expect("five doublings compile");
        // Five doublings of 4 MiB are 128 MiB, over the ~80 MB budget.
        let big = Value::from("x".repeat(4 << 20));
        let msg = p.eval(&[&big]).expect_err("over budget").message;
        over_budget(&msg);
        assert!(msg.contains("in +"), "{msg}");
        // A small input is fine.
        let r = p.eval(&[&Value::from("ab")]).expect("eval");
        assert_eq!(r.as_str().map(str::len), Some(64));
    });
}

#[test]
fn nested_macros_multiply_in_the_static_estimate_and_at_run_time() {
    isolated(
        "nested_macros_multiply_in_the_static_estimate_and_at_run_time",
        || {
            // Five nested maps over 100-element lists: 10^10 iterations.
            let list = format!(
                "[{}]",
                (0..100)
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let src = format!(
                "{list}.map(a, {list}.map(b, {list}.map(c, {list}.map(d, {list}.map(e, e)))))"
            );
            let msg = compile_error(&src);
            assert!(msg.contains("estimated cost"), "{msg}");
            assert!(
                msg.contains(&format!("exceeds the limit of {MAX_COST}")),
                "{msg}"
            );
            // Lists of unknown size count as 100 elements: five levels are rejected too.
            let msg = compile_error(
                "value.map(a, value.map(b, value.map(c, value.map(d, value.map(e, e)))))",
            );
            assert!(msg.contains("estimated cost"), "{msg}");
            // Three levels pass the estimate; over a 1,000-element list (10^9 iterations)
            // the run-time budget stops them.
            let src = "value.map(a, value.map(b, value.map(c, c)))";
            let list = Value::list((0..1000).map(Value::Int).collect());
            let started = Instant::now();
            let msg = eval_error(src, &list);
            over_budget(&msg);
            // The loops' steps and the lists they build are both charged; whichever
            // crosses the limit is named.
            assert!(
                msg.contains("in a macro loop") || msg.contains("in +"),
                "{msg}"
            );
            assert!(started.elapsed() < Duration::from_secs(20));
            // Over a 10-element list they run.
            let small = Value::list((0..10).map(Value::Int).collect());
            let p = Program::compile(src, &["value"]).expect("compile");
            let r = p.eval(&[&small]).expect("eval");
            assert_eq!(r.as_list().map(<[_]>::len), Some(10));
        },
    );
}

#[test]
fn a_gigabyte_join_fails_before_allocating() {
    isolated("a_gigabyte_join_fails_before_allocating", || {
        // 1,024 references to one 1 MiB string: joined, 1 GiB.
        let mb = Value::from("y".repeat(1 << 20));
        let list = Value::list(vec![mb; 1024]);
        let msg = eval_error("value.join(',')", &list);
        over_budget(&msg);
        assert!(msg.contains("in join"), "{msg}");
        let msg = eval_error("toJson(value)", &list);
        over_budget(&msg);
        let msg = eval_error("value.map(s, s.split(''))", &list);
        over_budget(&msg);
        // 32 of them (32 MiB, 8 MiB counted twice: joined and sized) are within the budget.
        let some = Value::list(vec![Value::from("y".repeat(1 << 20)); 32]);
        let p = Program::compile("size(value.join(''))", &["value"]).expect("compile");
        assert_eq!(p.eval(&[&some]).expect("eval"), Value::Int(32 << 20));
    });
}

#[test]
fn map_over_a_list_reaches_the_budget_between_4400_and_4500_elements() {
    // docs/expressions.md gives these numbers: `map` rebuilds its list at each step.
    let p = Program::compile("value.map(x, x)", &["value"]).expect("compile");
    let list = |n: i64| Value::list((0..n).map(Value::Int).collect());
    assert!(p.eval(&[&list(4_400)]).is_ok());
    over_budget(&p.eval(&[&list(4_500)]).expect_err("over budget").message);
}

#[test]
fn depth_limit_is_the_documented_one() {
    assert_eq!(MAX_DEPTH, 100);
}
