//! Unit tests of the coordinator, restore checks and on-disk format.
use super::format;
use std::sync::Arc;

use super::*;

/// The payload of a state file, out of its envelope.
fn payload(path: std::path::PathBuf, uid: &str, subtask: u32) -> Vec<u8> {
    format::unwrap(std::fs::read(path).unwrap(), uid, subtask).unwrap()
}

fn config(name: &str) -> CheckpointConfig {
    let dir = std::env::temp_dir().join(format!("sj-chk-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    CheckpointConfig::new(Duration::from_millis(10), dir.display().to_string(), 2)
}

/// A file under the checkpoint directory.
fn at(cfg: &CheckpointConfig, rel: &str) -> std::path::PathBuf {
    std::path::Path::new(&cfg.dir).join(rel)
}

#[test]
fn a_checkpoint_completes_when_every_task_acked_or_finished() {
    let cfg = config("acks");
    let c = Arc::new(Coordinator::new(&cfg, 3, &[]).unwrap());
    assert_eq!(c.trigger(), Some(1));
    assert_eq!(c.trigger(), None, "one at a time");
    c.write_state(1, "op", 0, b"a").unwrap();
    c.ack(1).unwrap();
    c.settle();
    c.ack(1).unwrap();
    c.settle();
    assert_eq!(c.completed(), 0);
    c.task_finished(0, Some(("src", 3, b"done".to_vec())))
        .unwrap();
    c.settle();
    assert_eq!(c.completed(), 1);
    // a finished source's final position is part of every later checkpoint
    assert_eq!(payload(at(&cfg, "chk-1/src-3.state"), "src", 3), b"done");
    assert!(at(&cfg, "chk-1/_metadata").is_file());
    // later checkpoints need the two running tasks only
    assert_eq!(c.trigger(), Some(2));
    c.ack(2).unwrap();
    c.settle();
    c.ack(2).unwrap();
    c.settle();
    assert_eq!(c.completed(), 2);
    c.trigger();
    c.ack(3).unwrap();
    c.settle();
    c.ack(3).unwrap();
    c.settle();
    // retained 2: chk-1 is gone
    assert!(!at(&cfg, "chk-1").exists());
    assert!(at(&cfg, "chk-2/_metadata").is_file());
}

#[test]
fn a_task_that_acked_and_then_finished_counts_once() {
    let cfg = config("once");
    let c = Arc::new(Coordinator::new(&cfg, 3, &[]).unwrap());
    c.trigger();
    c.write_state(1, "src", 0, b"at-barrier").unwrap();
    c.ack(1).unwrap();
    c.settle();
    // the same task finishes before the others acked checkpoint 1
    c.task_finished(1, Some(("src", 0, b"finished".to_vec())))
        .unwrap();
    c.settle();
    c.ack(1).unwrap();
    c.settle();
    assert_eq!(c.completed(), 0, "two of three tasks took checkpoint 1");
    c.ack(1).unwrap();
    c.settle();
    assert_eq!(c.completed(), 1);
    // its own snapshot of checkpoint 1 is kept, not replaced by the final one
    assert_eq!(
        payload(at(&cfg, "chk-1/src-0.state"), "src", 0),
        b"at-barrier"
    );
    c.trigger();
    c.ack(2).unwrap();
    c.settle();
    c.ack(2).unwrap();
    c.settle();
    assert_eq!(c.completed(), 2);
    assert_eq!(
        payload(at(&cfg, "chk-2/src-0.state"), "src", 0),
        b"finished"
    );
}

#[test]
fn background_writes_hold_completion_and_a_failed_write_abandons_the_checkpoint() {
    let cfg = config("writes");
    let c = Arc::new(Coordinator::new(&cfg, 1, &["reduce"]).unwrap());
    c.trigger();
    c.begin_write(1);
    c.ack(1).unwrap();
    c.settle();
    assert_eq!(c.completed(), 0, "a snapshot is still being written");
    c.end_write(1, Ok(())).unwrap();
    c.settle();
    assert_eq!(c.completed(), 1);
    c.trigger();
    c.begin_write(2);
    c.ack(2).unwrap();
    c.settle();
    // Failures are tolerated by default: logged and reported, the job goes on.
    c.end_write(2, Err(std::io::Error::other("disk full")))
        .unwrap();
    c.settle();
    assert_eq!(c.completed(), 1, "checkpoint 2 never completes");
    assert!(!at(&cfg, "chk-2/_metadata").exists());
    assert_eq!(c.trigger(), Some(3), "the next checkpoint may start");
}

#[test]
fn a_restart_restores_the_latest_complete_checkpoint_and_drops_partial_ones() {
    let cfg = config("restore");
    let c = Arc::new(Coordinator::new(&cfg, 1, &["reduce"]).unwrap());
    c.trigger();
    c.write_state(1, "reduce", 0, b"one").unwrap();
    c.write_state(1, "reduce", 1, b"two").unwrap();
    c.ack(1).unwrap();
    c.settle();
    c.trigger();
    c.write_state(2, "reduce", 0, b"partial").unwrap();
    drop(c); // crash before checkpoint 2 completes
    let c = Arc::new(Coordinator::new(&cfg, 1, &["reduce"]).unwrap());
    assert_eq!(c.restored(), Some(1));
    assert!(!at(&cfg, "chk-2").exists());
    assert_eq!(c.restored_state("reduce", 1).unwrap().unwrap(), b"two");
    assert_eq!(c.restored_state("reduce", 7).unwrap(), None);
    let mut all = c.restored_states("reduce").unwrap();
    all.sort();
    assert_eq!(all, vec![(0, b"one".to_vec()), (1, b"two".to_vec())]);
    // ids continue after the restored checkpoint
    assert_eq!(c.trigger(), Some(2));
}

#[test]
fn a_savepoint_is_copied_out_and_another_run_restores_from_it() {
    let cfg = config("savepoint");
    let c = Arc::new(Coordinator::new(&cfg, 1, &["count"]).unwrap());
    assert_eq!(c.trigger_savepoint(true, None), Some(1));
    assert_eq!(c.stop_at(), 1);
    assert_eq!(c.trigger(), None, "nothing is triggered after a stop");
    c.write_state(1, "count", 0, b"state").unwrap();
    c.ack(1).unwrap();
    c.settle();
    let sp = c.progress().last_savepoint.expect("savepoint recorded");
    assert_eq!(sp.id, 1);
    assert!(
        sp.path
            .starts_with(&at(&cfg, "savepoints").display().to_string())
    );
    assert_eq!(
        payload(
            std::path::Path::new(&sp.path).join("count-0.state"),
            "count",
            0
        ),
        b"state"
    );
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(&sp.path).join("_metadata")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["savepoint"], true);
    let file = format::wrap("count", 0, b"state");
    assert_eq!(
        meta["states"],
        serde_json::json!([{"operator": "count", "subtask": 0, "file": "count-0.state",
            "length": file.len(), "xxh3": format::checksum(&file)}])
    );
    assert_eq!(meta["maxParallelism"], 128);
    assert_eq!(meta["format"], format::METADATA_VERSION);
    // A new deployment (another run directory) starts from the savepoint.
    let mut next = cfg.clone();
    next.run_id = Some("run-2".into());
    next.restore_from = Some(sp.path.clone());
    let c2 = Arc::new(Coordinator::new(&next, 1, &["count"]).unwrap());
    assert_eq!(c2.restored(), Some(1));
    assert_eq!(c2.restored_state("count", 0).unwrap().unwrap(), b"state");
    assert_eq!(c2.trigger(), Some(2));
    c2.ack(2).unwrap();
    c2.settle();
    assert!(at(&cfg, "run-2/chk-2/_metadata").is_file());
    // Restarted again, the run's own checkpoint wins over the savepoint.
    let c3 = Arc::new(Coordinator::new(&next, 1, &["count"]).unwrap());
    assert_eq!(c3.restored(), Some(2));
    // A run directory as the source means its latest complete checkpoint.
    let mut third = cfg.clone();
    third.run_id = Some("run-3".into());
    third.restore_from = Some(at(&cfg, "run-2").display().to_string());
    let c4 = Arc::new(Coordinator::new(&third, 1, &["count"]).unwrap());
    assert_eq!(
        c4.restored_snapshot().unwrap().dir.url(),
        at(&cfg, "run-2/chk-2").display().to_string()
    );
}

#[test]
fn state_of_an_operator_the_job_lost_is_refused_unless_allowed() {
    let cfg = config("nonrestored");
    let c = Arc::new(Coordinator::new(&cfg, 1, &["count", "old-filter"]).unwrap());
    c.trigger();
    c.write_state(1, "count", 0, b"c").unwrap();
    c.write_state(1, "old-filter", 0, b"f").unwrap();
    c.ack(1).unwrap();
    c.settle();
    let err = Coordinator::new(&cfg, 1, &["count"]).unwrap_err();
    assert!(
        err.to_string()
            .contains("state of operator(s) old-filter that this job does not have"),
        "{err}"
    );
    let mut allow = cfg.clone();
    allow.allow_non_restored_state = true;
    assert_eq!(
        Arc::new(Coordinator::new(&allow, 1, &["count"]).unwrap()).restored(),
        Some(1)
    );
    let mut missing = cfg.clone();
    missing.run_id = Some("empty".into());
    missing.restore_from = Some(at(&cfg, "nowhere").display().to_string());
    let err = Coordinator::new(&missing, 1, &["count"]).unwrap_err();
    assert!(
        err.to_string()
            .contains("nowhere: neither a complete checkpoint"),
        "{err}"
    );
}

#[test]
fn a_follower_forwards_its_tasks_reports_and_learns_the_leaders_decisions() {
    let cfg = config("follower");
    let leader = Arc::new(Coordinator::new(&cfg, 2, &[]).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = Arc::new(Coordinator::follower(&cfg, 2, None, tx).unwrap());
    assert_eq!(follower.trigger(), None, "only the leader triggers");
    leader.trigger();
    follower.observe(&leader.progress());
    assert_eq!(follower.pending(), 1);
    leader.ack(1).unwrap();
    leader.settle();
    follower.begin_write(1);
    follower.ack(1).unwrap();
    follower.settle();
    follower.end_write(1, Ok(())).unwrap();
    follower.settle();
    follower
        .task_finished(1, Some(("src", 1, b"end".to_vec())))
        .unwrap();
    let mut reports = Vec::new();
    while let Ok(r) = rx.try_recv() {
        reports.push(r);
    }
    assert_eq!(
        reports,
        vec![
            Report::BeginWrite(1),
            Report::Ack(1),
            Report::EndWrite(1, None),
            Report::Finished {
                last_acked: 1,
                final_state: Some(("src".into(), 1, b"end".to_vec()))
            },
        ]
    );
    for r in reports {
        leader.apply(r).unwrap();
        leader.settle();
    }
    assert_eq!(leader.completed(), 1);
    follower.observe(&leader.progress());
    assert_eq!(follower.completed(), 1);
}

/// Polls `f` until it holds (at most 10 s).
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_failed_write_removes_the_partial_checkpoint_and_retention_holds() {
    let mut cfg = config("diskfull");
    cfg.retained = 2;
    let c = Arc::new(Coordinator::new(&cfg, 1, &["a", "b"]).unwrap());
    for id in 1..=6u64 {
        assert_eq!(c.trigger(), Some(id));
        c.write_state(id, "a", 0, b"a").unwrap();
        if id % 2 == 0 {
            // The storage refuses this file (as a full disk would): a directory is in the way.
            std::fs::create_dir_all(at(&cfg, &format!("chk-{id}/b-0.state"))).unwrap();
        }
        // A failed write fails the checkpoint, not the task that wrote.
        c.write_state(id, "b", 0, b"b").unwrap();
        c.ack(id).unwrap();
        c.settle();
        if id % 2 == 0 {
            assert!(c.has_failed(id));
            assert!(
                !at(&cfg, &format!("chk-{id}")).exists(),
                "partial chk-{id} removed"
            );
        } else {
            assert_eq!(c.completed(), id);
        }
    }
    let mut left: Vec<String> = std::fs::read_dir(&cfg.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("chk-"))
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["chk-3", "chk-5"],
        "the two newest complete checkpoints"
    );
    let p = c.progress();
    assert_eq!(p.failed.iter().map(|f| f.0).collect::<Vec<_>>(), [2, 4, 6]);
    assert!(
        p.failed[0].1.contains("a snapshot could not be written"),
        "{:?}",
        p.failed
    );
}

#[test]
fn more_failures_in_a_row_than_tolerated_fail_the_run() {
    let mut cfg = config("tolerable");
    cfg.tolerable_failures = Some(1);
    let c = Arc::new(Coordinator::new(&cfg, 1, &["op"]).unwrap());
    let fail = |id: u64| {
        assert_eq!(c.trigger(), Some(id));
        c.begin_write(id);
        c.end_write(id, Err(std::io::Error::other("No space left on device")))
    };
    c.settle();
    fail(1).unwrap();
    // A complete checkpoint resets the count.
    c.trigger();
    c.ack(2).unwrap();
    c.settle();
    fail(3).unwrap();
    let err = fail(4).unwrap_err().to_string();
    assert_eq!(
        err,
        "2 checkpoints failed in a row, more than tolerableCheckpointFailureNumber 1; the last, 4: \
         a snapshot could not be written: No space left on device"
    );
    assert_eq!(c.fatal(), Some(err));
    assert!(c.ack(5).is_err());
    assert_eq!(c.trigger(), None, "nothing more is triggered");
}

#[test]
fn a_checkpoint_past_its_timeout_fails_and_the_pause_spaces_triggers() {
    let mut cfg = config("timeout");
    cfg.interval = Duration::ZERO;
    cfg.timeout = Duration::ZERO;
    cfg.min_pause = Duration::from_secs(3600);
    let c = Arc::new(Coordinator::new(&cfg, 1, &["op"]).unwrap());
    assert_eq!(c.tick(), Some(1), "no pause before the first checkpoint");
    eventually("checkpoint 1 expires", || {
        c.tick();
        c.has_failed(1)
    });
    assert!(
        c.progress().failed[0].1.starts_with("expired"),
        "{:?}",
        c.progress()
    );
    assert_eq!(c.tick(), None, "the minimum pause runs from the failure");
    let mut quick = config("timeout-quick");
    quick.interval = Duration::ZERO;
    let c = Arc::new(Coordinator::new(&quick, 1, &["op"]).unwrap());
    assert_eq!(c.tick(), Some(1));
    c.ack(1).unwrap();
    c.settle();
    assert_eq!(
        c.tick(),
        Some(2),
        "without a pause the next follows at once"
    );
}

#[test]
fn a_failed_final_checkpoint_is_a_warning_unless_a_sink_commits_on_it() {
    for (sink, fatal) in [("sink:file", false), ("sink:kafka", true)] {
        let mut cfg = config(&format!("final-{fatal}"));
        cfg.retained = 1;
        let mut shape = JobShape {
            tasks: 1,
            max_parallelism: 128,
            ..JobShape::default()
        };
        for (uid, op) in [("src", "source:file"), ("out", sink)] {
            let record = format::OperatorRecord {
                operator: op.into(),
                name: uid.into(),
                source: None,
            };
            shape.operators.insert(uid.into(), record);
        }
        let c = Arc::new(Coordinator::for_job(&cfg, &shape).unwrap());
        // The final checkpoint's directory cannot be created (a file is in the way).
        std::fs::write(at(&cfg, "chk-1"), b"").unwrap();
        c.task_finished(0, Some(("src", 0, b"end".to_vec())))
            .unwrap();
        c.settle();
        match c.await_final(|| false) {
            FinalOutcome::Skipped => assert!(!fatal),
            FinalOutcome::Failed(e) => {
                assert!(fatal);
                assert!(
                    e.starts_with("final checkpoint 1 failed (")
                        && e.ends_with("sink(s) out commit only on a complete checkpoint"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(c.final_settled());
    }
}
