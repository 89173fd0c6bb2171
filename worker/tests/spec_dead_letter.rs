//! Dead letters of several steps in one file: every step's letters arrive, none overwritten.

use std::path::PathBuf;

mod common;

use streamjob::StreamExecutionEnvironment;
use streamjob::crds::validate::parse_job;
use streamjob::declarative::build_job;

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("dl", name)
}

/// Sorted (step, record) of the dead letters in `dead` (and `dead.<n>` files).
fn letters(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if !e.file_name().to_string_lossy().starts_with("dead.txt") {
            continue;
        }
        for l in std::fs::read_to_string(e.path()).unwrap().lines() {
            let l: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|err| panic!("dead letter {l:?} is not JSON: {err}"));
            out.push((
                l["step"].as_str().unwrap().to_string(),
                l["record"].to_string(),
            ));
        }
    }
    out.sort();
    out
}

fn run(name: &str, parallelism: u32, checkpoints: bool) -> Vec<(String, String)> {
    let dir = tmp(name);
    let checkpointing = if checkpoints {
        format!(
            "  checkpointing:\n    intervalMs: 60000\n    directory: {}\n",
            dir.join("cp").display()
        )
    } else {
        String::new()
    };
    // Two chained steps and one behind a keyBy (another task with the same subtask index)
    // each fail on some records; all of them dead-letter to one file.
    let yaml = format!(
        r#"apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata:
  name: {name}
spec:
  parallelism: {parallelism}
  onError: deadLetter
{checkpointing}  deadLetter:
    file:
      path: {dead}
  steps:
    - name: records
      source:
        collection:
          values: [1, 2, 0, 4, 5, -1, 7, 0, 9, 10]
    - name: inverse
      map: {{expr: "100 / value"}}
    - name: root
      filter: {{expr: "value > 0 || value / 0 == 1"}}
    - name: by-parity
      keyBy: {{expr: "value % 2"}}
    - name: halve
      map: {{expr: "value % 2 == 0 ? value / 2 : value / (value - value)"}}
    - name: out
      sink:
        blackhole: {{}}
"#,
        dead = dir.join("dead.txt").display()
    );
    let job = parse_job(&yaml).unwrap();
    let env = StreamExecutionEnvironment::get_execution_environment();
    build_job(&env, &job, &dir).unwrap();
    env.execute(name).unwrap();
    letters(&dir)
}

fn expected() -> Vec<(String, String)> {
    // inverse: 100/0 fails twice. root: -100 fails (value / 0). halve: odd results fail.
    // 100/1=100, 100/2=50, 100/4=25, 100/5=20, 100/7=14, 100/9=11, 100/10=10.
    let mut e: Vec<(String, String)> = [
        ("inverse", "0"),
        ("inverse", "0"),
        ("root", "-100"),
        ("halve", "25"),
        ("halve", "11"),
    ]
    .into_iter()
    .map(|(s, r)| (s.to_string(), r.to_string()))
    .collect();
    e.sort();
    e
}

#[test]
fn steps_share_the_dead_letter_file_at_parallelism_1() {
    assert_eq!(run("dl-p1", 1, false), expected());
}

#[test]
fn steps_share_the_dead_letter_files_at_parallelism_2_with_checkpoints() {
    assert_eq!(run("dl-p2", 2, true), expected());
}
