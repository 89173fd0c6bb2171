//! A user's own serde types as records, keys and keyed state: across two worker processes
//! over the gRPC exchange, and through a checkpoint restored at another parallelism.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::workers::cluster_config;
use common::{fail_partway, free_ports, has_complete_checkpoint};
use serde::{Deserialize, Serialize};
use streamjob::StreamExecutionEnvironment;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Click {
    user: String,
    page: u32,
    /// Clicks this record stands for (1 per input; the running total after the reduce).
    count: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct UserKey {
    user: String,
    region: Region,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Region {
    North,
    South,
}

fn key_of(c: &Click) -> UserKey {
    UserKey {
        user: c.user.clone(),
        region: if c.page.is_multiple_of(2) {
            Region::North
        } else {
            Region::South
        },
    }
}

/// `n` clicks over 97 users and 10 pages, and the exact number of clicks per key.
fn clicks(n: u64) -> (Vec<Click>, BTreeMap<UserKey, u64>) {
    let mut expected = BTreeMap::new();
    let mut x: u64 = 11;
    let clicks = (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let c = Click {
                user: format!("user-{}", (x >> 33) % 97),
                page: ((x >> 20) % 10) as u32,
                count: 1,
            };
            *expected.entry(key_of(&c)).or_insert(0) += 1;
            c
        })
        .collect();
    (clicks, expected)
}

/// The last running total of every key.
fn finals(out: impl IntoIterator<Item = Click>) -> BTreeMap<UserKey, u64> {
    let mut finals = BTreeMap::new();
    for c in out {
        let e = finals.entry(key_of(&c)).or_insert(0);
        *e = c.count.max(*e);
    }
    finals
}

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("usertypes", name)
}

const WORKER_ENV: &str = "SJ_USER_TYPES_WORKER";

/// Builds the click count: collection source (one subtask, on worker 0) -> key_by a user
/// struct -> reduce at parallelism 2 (one subtask per worker, so about half the records
/// cross to worker 1 over gRPC) -> collect.
fn click_count(
    env: &StreamExecutionEnvironment,
    input: Vec<Click>,
) -> streamjob::connectors::collect::Collected<Click> {
    env.set_parallelism(2);
    env.from_collection(input)
        .key_by(key_of)
        .reduce(|a, b| Click {
            count: a.count + b.count,
            ..b
        })
        .collect_sink()
}

/// One worker of `a_user_struct_is_keyed_across_two_worker_processes`, run by that test in
/// a child process: writes what its sink collected as JSON lines.
fn run_worker(spec: &str) {
    let [index, peer0, peer1, out] = spec.split(',').collect::<Vec<_>>()[..] else {
        panic!("bad worker spec {spec}");
    };
    let peers = [peer0.to_string(), peer1.to_string()];
    let cluster = cluster_config(index.parse().unwrap(), &peers, 1, "user-types-test");
    let env = StreamExecutionEnvironment::get_execution_environment();
    let out_handle = click_count(&env, clicks(20_000).0);
    env.execute_as_worker("user-types", &cluster).unwrap();
    let lines: Vec<String> = out_handle
        .take()
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    std::fs::write(out, lines.join("\n")).unwrap();
}

#[test]
fn a_user_struct_is_keyed_across_two_worker_processes() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        return run_worker(&spec);
    }
    let dir = tmp("dist");
    let ports = free_ports(2);
    let outs: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("out-{i}.jsonl"))).collect();
    let children: Vec<_> = (0..2)
        .map(|i| {
            let spec = format!("{i},{},{},{}", ports[0], ports[1], outs[i].display());
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "a_user_struct_is_keyed_across_two_worker_processes",
                    "--nocapture",
                ])
                .env(WORKER_ENV, spec)
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "worker {i} failed");
    }
    let mut per_worker = Vec::new();
    for out in &outs {
        let text = std::fs::read_to_string(out).unwrap();
        let records: Vec<Click> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        per_worker.push(records);
    }
    // Both reduce subtasks received keys, so records crossed the exchange...
    assert!(
        per_worker.iter().all(|r| !r.is_empty()),
        "one worker got no keys"
    );
    let emitted: usize = per_worker.iter().map(Vec::len).sum();
    assert_eq!(emitted, 20_000, "one running total per input record");
    // ...and every key's total is exact, each key on one worker only.
    let (_, expected) = clicks(20_000);
    let [w0, w1] = [finals(per_worker[0].clone()), finals(per_worker[1].clone())];
    assert!(
        w0.keys().all(|k| !w1.contains_key(k)),
        "a key on both workers"
    );
    let mut all = w0;
    all.extend(w1);
    assert_eq!(all, expected);
}

/// A reduce over user types checkpoints, fails partway, and runs again with 3 reduce
/// subtasks instead of 2: its keyed state (user struct keys, user struct values) comes back
/// by key group and the final totals are exact. Before serde state, checkpointing this
/// reduce was refused at start ("needs a state codec").
#[test]
fn reduce_state_of_user_types_is_restored_at_another_parallelism() {
    let dir = tmp("restore");
    let chk = dir.join("chk");
    let (input, expected) = clicks(200_000);
    let lines: Vec<String> = input
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    let file = dir.join("clicks.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let run = |reduce_parallelism: u32, fail_after: Option<u64>| {
        let env = StreamExecutionEnvironment::get_execution_environment();
        env.set_parallelism(2)
            .enable_checkpointing(Duration::from_millis(5), &chk, 3);
        let seen = Arc::new(AtomicU64::new(0));
        let chk_dir = chk.clone();
        let out = env
            // A file source: it checkpoints its position, so the restored run resumes there.
            .read_text_file(&file)
            .map(move |line: String| {
                let c: Click = serde_json::from_str(&line).unwrap();
                let n = seen.fetch_add(1, Ordering::Relaxed);
                fail_partway(n, fail_after, &chk_dir, "clicks");
                c
            })
            .key_by(key_of)
            .reduce(|a, b| Click {
                count: a.count + b.count,
                ..b
            })
            .name("clicks per user")
            .set_parallelism(reduce_parallelism)
            .collect_sink();
        env.execute("user-types-restore").map(|_| out.take())
    };
    let err = run(2, Some(150_000)).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert!(
        has_complete_checkpoint(&chk),
        "no checkpoint completed before the failure"
    );
    let out = run(3, None).unwrap();
    assert_eq!(finals(out), expected);
}
