//! StreamJob specs run end to end: exact outputs, onError policies and the CLI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use streamjob::StreamExecutionEnvironment;
use streamjob::crds::validate::parse_job;
use streamjob::declarative::build_job;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples")
}

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("spec", name)
}

/// Runs a manifest and returns the lines its file sink(s) wrote, all subtasks together.
fn run_yaml(yaml: &str, base: &Path, out: &Path) -> (Vec<String>, streamjob::declarative::SpecRun) {
    let job = parse_job(yaml).unwrap();
    let env = StreamExecutionEnvironment::get_execution_environment();
    let run = build_job(&env, &job, base).unwrap();
    env.execute("test").unwrap();
    (read_outputs(out), run)
}

fn read_outputs(out: &Path) -> Vec<String> {
    let dir = out.parent().unwrap();
    let stem = out.file_name().unwrap().to_string_lossy().to_string();
    let mut lines = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with(&stem) {
            lines.extend(
                std::fs::read_to_string(e.path())
                    .unwrap()
                    .lines()
                    .map(String::from),
            );
        }
    }
    lines
}

fn example_with_file_sink(name: &str, out: &Path, parallelism: u32) -> String {
    let yaml = std::fs::read_to_string(examples().join(name)).unwrap();
    yaml.replace(
        "        print: {}",
        &format!("        file:\n          path: {}", out.display()),
    )
    .replace(
        "  parallelism: 2\n",
        &format!("  parallelism: {parallelism}\n"),
    )
}

#[test]
fn wordcount_example_gives_exact_counts_at_parallelism_1_2_4() {
    let text = std::fs::read_to_string(examples().join("data/words.txt")).unwrap();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for w in text.split_whitespace() {
        *expected.entry(w.to_lowercase()).or_default() += 1;
    }
    let total: i64 = expected.values().sum();
    for p in [1, 2, 4] {
        let dir = tmp(&format!("wc{p}"));
        let out = dir.join("counts.txt");
        let yaml = example_with_file_sink("wordcount.yaml", &out, p);
        let (lines, _) = run_yaml(&yaml, &examples(), &out);
        assert_eq!(
            lines.len() as i64,
            total,
            "one running count per word, p={p}"
        );
        let mut finals: BTreeMap<String, i64> = BTreeMap::new();
        for l in lines {
            let v: (String, i64) = serde_json::from_str(&l).unwrap();
            let e = finals.entry(v.0).or_default();
            *e = (*e).max(v.1);
        }
        assert_eq!(finals, expected, "p={p}");
    }
}

#[test]
fn user_events_example_counts_per_user_and_drops_events_without_user() {
    let dir = tmp("users");
    let out = dir.join("users.txt");
    let yaml = example_with_file_sink("user-events.yaml", &out, 2);
    let (lines, run) = run_yaml(&yaml, &examples(), &out);
    let mut finals: BTreeMap<String, i64> = BTreeMap::new();
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        let e = finals
            .entry(v["user"].as_str().unwrap().to_string())
            .or_default();
        *e = (*e).max(v["count"].as_i64().unwrap());
    }
    assert_eq!(
        finals,
        BTreeMap::from([("alice".into(), 3), ("bob".into(), 2), ("carol".into(), 1)])
    );
    assert_eq!(run.skipped.load(std::sync::atomic::Ordering::Relaxed), 0);
}

fn policy_job(on_error: &str, out: &Path, dead: Option<&Path>) -> String {
    let dl = dead
        .map(|d| format!("  deadLetter:\n    file:\n      path: {}\n", d.display()))
        .unwrap_or_default();
    format!(
        r#"apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata:
  name: policies
spec:
  onError: {on_error}
{dl}  steps:
    - name: numbers
      source:
        collection:
          values: ["1", "2", "oops", "4", "{{", "6"]
    - name: parse
      map:
        expr: parseJson(value) * 10
    - name: out
      sink:
        file:
          path: {}
"#,
        out.display()
    )
}

#[test]
fn on_error_fail_stops_the_job_naming_step_and_record() {
    let dir = tmp("fail");
    let job = parse_job(&policy_job("fail", &dir.join("o.txt"), None)).unwrap();
    let env = StreamExecutionEnvironment::get_execution_environment();
    build_job(&env, &job, &dir).unwrap();
    let err = env.execute("fail").unwrap_err().to_string();
    assert!(err.contains("operator 'parse'"), "{err}");
    assert!(err.contains("record oops"), "{err}");
}

#[test]
fn on_error_skip_counts_and_keeps_every_good_record() {
    let dir = tmp("skip");
    let out = dir.join("o.txt");
    let (lines, run) = run_yaml(&policy_job("skip", &out, None), &dir, &out);
    assert_eq!(lines, vec!["10", "20", "40", "60"]);
    assert_eq!(run.skipped.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn on_error_dead_letter_writes_failed_records_with_their_error() {
    let dir = tmp("dl");
    let out = dir.join("o.txt");
    let dead = dir.join("dead.txt");
    let (lines, run) = run_yaml(&policy_job("deadLetter", &out, Some(&dead)), &dir, &out);
    assert_eq!(lines, vec!["10", "20", "40", "60"]);
    assert_eq!(
        run.dead_lettered.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["step"], "parse");
    assert_eq!(letters[0]["record"], "oops");
    assert!(letters[0]["error"].as_str().unwrap().len() > 3);
    assert_eq!(letters[1]["record"], "{");
}

/// A dead-lettering job over `values` (JSON) with the given steps between source and sink;
/// returns the sink's lines and the dead letters' (step, error).
fn dead_letter_job(name: &str, values: &str, steps: &str) -> (Vec<String>, Vec<(String, String)>) {
    let dir = tmp(name);
    let out = dir.join("o.txt");
    let dead = dir.join("dead.txt");
    let yaml = format!(
        r#"apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata:
  name: {name}
spec:
  parallelism: 1
  onError: deadLetter
  deadLetter:
    file:
      path: {}
  steps:
    - name: records
      source:
        collection:
          values: {values}
{steps}    - name: out
      sink:
        file:
          path: {}
"#,
        dead.display(),
        out.display()
    );
    let (lines, _) = run_yaml(&yaml, &dir, &out);
    let letters = std::fs::read_to_string(&dead)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let l: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                l["step"].as_str().unwrap().to_string(),
                l["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (lines, letters)
}

/// The streaming flatMap (`value.lower().words()` without a list) and the in-place reduce:
/// exact counts, and a failing record is dead-lettered with the evaluator's message.
#[test]
fn word_count_fast_paths_keep_results_and_errors() {
    let (lines, letters) = dead_letter_job(
        "words-errors",
        r#"["A b", 7, "a  B a"]"#,
        r#"    - {name: words, flatMap: {expr: "value.lower().words()"}}
    - {name: pairs, map: {expr: "[value, 1]"}}
    - {name: by-word, keyBy: {expr: "value[0]"}}
    - {name: counts, reduce: {expr: "[acc[0], acc[1] + value[1]]"}}
"#,
    );
    assert_eq!(
        lines,
        [
            r#"["a",1]"#,
            r#"["b",1]"#,
            r#"["a",2]"#,
            r#"["b",2]"#,
            r#"["a",3]"#
        ]
    );
    assert_eq!(
        letters,
        [(
            "words".to_string(),
            "lower(): receiver must be string, got int".to_string()
        )]
    );
}

/// A record the reduce expression fails on leaves its key's accumulator as it was.
#[test]
fn failed_records_leave_reduce_accumulators_intact() {
    let (lines, letters) = dead_letter_job(
        "reduce-errors",
        r#"[["a", 1], ["a", 2], ["a", "x"], ["b", 5], ["a"], ["a", 4], ["b", 1]]"#,
        r#"    - {name: by-key, keyBy: {expr: "value[0]"}}
    - {name: sums, reduce: {expr: "[acc[0], acc[1] + value[1]]"}}
"#,
    );
    assert_eq!(
        lines,
        [
            r#"["a",1]"#,
            r#"["a",3]"#,
            r#"["b",5]"#,
            r#"["a",7]"#,
            r#"["b",6]"#
        ]
    );
    let sums = |e: &str| ("sums".to_string(), e.to_string());
    assert_eq!(
        letters,
        [
            sums("no operator '+' for int and string"),
            sums("value[1]: index 1 out of range for a list of size 1"),
        ]
    );
}

#[test]
fn cli_runs_the_readme_job_and_rejects_invalid_specs_with_paths() {
    let bin = common::BIN;
    let ok = common::succeed(
        Command::new(bin)
            .arg("run")
            .arg(examples().join("wordcount.yaml")),
    );
    let stdout = String::from_utf8(ok.stdout).unwrap();
    assert!(
        stdout.lines().any(|l| l.ends_with("[\"the\",1]")),
        "{stdout}"
    );

    let dir = tmp("cli");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: bad\nspec:\n  parallelism: 0\n  steps:\n    - name: s\n      source:\n        collection:\n          values: [1]\n    - name: f\n      filter:\n        expr: value +\n    - name: r\n      reduce:\n        expr: acc\n",
    )
    .unwrap();
    for cmd in ["validate", "run", "plan"] {
        let out = Command::new(bin).arg(cmd).arg(&bad).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("spec.parallelism"), "{cmd}: {err}");
        assert!(err.contains("spec.steps[1].filter.expr"), "{cmd}: {err}");
        assert!(err.contains("spec.steps[2]"), "{cmd}: {err}");
    }
    let out = Command::new(bin)
        .args(["plan", "--format", "json"])
        .arg(examples().join("wordcount.yaml"))
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["chains"].as_array().unwrap().len(), 2);
}

/// A keyBy whose value has a type no key may have (only known at run time, as with
/// `parseJson`) follows onError naming the keyBy step and the record; it is not grouped.
#[test]
fn a_key_of_a_wrong_type_at_run_time_follows_on_error() {
    let steps = r#"    - name: parse
      map:
        expr: parseJson(value)
    - name: by
      keyBy:
        expr: value.k
    - name: counts
      reduce:
        expr: acc
"#;
    let values = r#"['{"k": "a"}', '{"k": [1]}', '{"k": {"x": 1}}', '{"k": null}', '{"k": 1.5}', '{"k": 7}']"#;
    let (mut lines, letters) = dead_letter_job("keytype", values, steps);
    lines.sort();
    assert_eq!(lines, [r#"{"k":"a"}"#, r#"{"k":7}"#]);
    let expected: Vec<(String, String)> = [
        ("list", "[1]"),
        ("map", r#"{"x":1}"#),
        ("null", "null"),
        ("double", "1.5"),
    ]
    .iter()
    .map(|(t, v)| {
        (
            "counts".to_string(),
            format!("keyBy step 'by' returned a {t} ({v}); a key must be a string, int or uint"),
        )
    })
    .collect();
    assert_eq!(letters, expected);
}
