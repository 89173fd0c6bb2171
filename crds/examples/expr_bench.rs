//! Micro benchmark of the word-count expressions:
//! `cargo run --release -p streamjob-crds --example expr_bench`.
//!
//! Prints evaluations per second of our compiled evaluator for the four word-count steps,
//! and, for comparison, of the `cel` crate's interpreter on the two expressions it can run
//! without our helper functions (it needs a fresh `Context` with named variables per record).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use streamjob_crds::expr::{Program, Value};

/// Runs `f` repeatedly for about `target`; returns evaluations per second.
fn measure(mut f: impl FnMut(u64)) -> f64 {
    let target = Duration::from_millis(700);
    for i in 0..10_000 {
        f(i);
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < target {
        for _ in 0..10_000 {
            f(n);
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn report(name: &str, rate: f64) {
    println!(
        "{name:<48} {:>8.2} M evals/s  ({:>6.1} ns/eval)",
        rate / 1e6,
        1e9 / rate
    );
}

fn main() {
    let line = Value::from("The quick brown Fox jumps over the lazy dog and the cat");
    let word = Value::from("fox");
    let flat_map = Program::compile("value.lower().words()", &["value"]).unwrap();
    let map = Program::compile("[value, 1]", &["value"]).unwrap();
    let key_by = Program::compile("value[0]", &["value"]).unwrap();
    let reduce = Program::compile("[acc[0], acc[1] + value[1]]", &["acc", "value", "key"]).unwrap();

    let pair = map.eval(&[&word]).unwrap();
    let key = key_by.eval(&[&pair]).unwrap();
    let acc = Value::list(vec![word.clone(), Value::Int(41)]);

    println!("streamjob expression evaluator:");
    report(
        "flatMap value.lower().words()  (12 words)",
        measure(|_| {
            black_box(flat_map.eval(&[black_box(&line)]).unwrap());
        }),
    );
    report(
        "map     [value, 1]",
        measure(|_| {
            black_box(map.eval(&[black_box(&word)]).unwrap());
        }),
    );
    report(
        "keyBy   value[0]",
        measure(|_| {
            black_box(key_by.eval(&[black_box(&pair)]).unwrap());
        }),
    );
    report(
        "reduce  [acc[0], acc[1] + value[1]]",
        measure(|_| {
            black_box(reduce.eval(&[black_box(&acc), &pair, &key]).unwrap());
        }),
    );
    report(
        "flatMap eval_each (words, no list)  (12 words)",
        measure(|_| {
            let mut n = 0;
            let _ = flat_map.eval_each(&[black_box(&line)], |w| {
                black_box(w);
                n += 1;
                Ok::<(), ()>(())
            });
            black_box(n);
        }),
    );
    let mut running = acc.clone();
    report(
        "reduce  eval_update (in place)",
        measure(|_| {
            reduce
                .eval_update(black_box(&mut running), &[&pair, &key])
                .unwrap();
        }),
    );
    let filter = Program::compile("value[1] > 3 && value[0].startsWith('f')", &["value"]).unwrap();
    report(
        "filter  value[1] > 3 && value[0].startsWith('f')",
        measure(|_| {
            black_box(filter.eval_bool(&[black_box(&acc)]).unwrap());
        }),
    );

    println!("cel crate interpreter (fresh Context per record):");
    let cel_map = cel::Program::compile("[value, 1]").unwrap();
    let cel_reduce = cel::Program::compile("[acc[0], acc[1] + value[1]]").unwrap();
    let cword = cel::Value::String(Arc::new("fox".to_string()));
    let cpair = cel::Value::List(Arc::new(vec![cword.clone(), cel::Value::Int(1)]));
    let cacc = cel::Value::List(Arc::new(vec![cword.clone(), cel::Value::Int(41)]));
    report(
        "map     [value, 1]",
        measure(|_| {
            let mut ctx = cel::Context::default();
            ctx.add_variable_from_value("value", cword.clone());
            black_box(cel_map.execute(&ctx).unwrap());
        }),
    );
    report(
        "reduce  [acc[0], acc[1] + value[1]]",
        measure(|_| {
            let mut ctx = cel::Context::default();
            ctx.add_variable_from_value("acc", cacc.clone());
            ctx.add_variable_from_value("value", cpair.clone());
            ctx.add_variable_from_value("key", cword.clone());
            black_box(cel_reduce.execute(&ctx).unwrap());
        }),
    );
}
