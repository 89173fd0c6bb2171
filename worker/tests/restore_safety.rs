//! A restore never silently reads the wrong state: state follows step names (not positions),
//! a changed source or maxParallelism is refused naming what differs, and a damaged state
//! file is named, with the run falling back to the previous intact checkpoint of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::BIN;

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("restore", name)
}

/// `lines` lines of six words; returns the text and each word's count.
fn text(lines: usize) -> (String, BTreeMap<String, u64>) {
    common::word_text(lines, 5, 300)
}

/// Settings of the word count job that tests change.
struct Job<'a> {
    input: &'a str,
    extra: &'a str,
    /// Steps between `words` and `by`.
    middle: &'a str,
    counts: &'a str,
}

const JOB: Job<'static> = Job {
    input: "input.txt",
    extra: "",
    middle: "",
    counts: "counts",
};

fn write_spec(dir: &Path, job: &Job<'_>) -> PathBuf {
    let path = dir.join("job.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata: {{name: restore}}
spec:
  parallelism: 2
  checkpointing: {{intervalMs: 10, directory: {chk}, retained: 3}}
{extra}  steps:
    - {{name: lines, source: {{file: {{path: {input}}}}}}}
    - {{name: words, flatMap: {{expr: value.words()}}}}
{middle}    - {{name: pairs, map: {{expr: '[value, 1]'}}}}
    - {{name: by, keyBy: {{expr: 'value[0]'}}}}
    - {{name: {counts}, reduce: {{expr: '[acc[0], acc[1] + value[1]]'}}}}
    - {{name: out, sink: {{file: {{path: {out}}}}}}}
",
            chk = dir.join("chk").display(),
            input = dir.join(job.input).display(),
            out = dir.join("out/counts").display(),
            extra = job.extra,
            middle = job.middle,
            counts = job.counts,
        ),
    )
    .unwrap();
    path
}

fn run(spec: &Path) -> (bool, String) {
    let out = Command::new(BIN).arg("run").arg(spec).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(spec: &Path) -> String {
    let (ok, err) = run(spec);
    assert!(ok, "{err}");
    err
}

fn run_err(spec: &Path) -> String {
    let (ok, err) = run(spec);
    assert!(!ok, "the run should have failed:\n{err}");
    assert!(!err.contains("malformed batch from peer"), "{err}");
    err
}

/// Final count of every word over the sink files; each word's running counts must be
/// exactly 1..=n (nothing lost, nothing repeated).
fn finals(dir: &Path) -> BTreeMap<String, u64> {
    let mut per_word: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in std::fs::read_dir(dir.join("out")).unwrap() {
        for line in std::fs::read_to_string(e.unwrap().path()).unwrap().lines() {
            let (w, c): (String, u64) = serde_json::from_str(line).unwrap();
            per_word.entry(w).or_default().push(c);
        }
    }
    per_word
        .into_iter()
        .map(|(w, mut c)| {
            c.sort_unstable();
            assert!(c.iter().copied().eq(1..=c.len() as u64), "{w}: {c:?}");
            (w, c.len() as u64)
        })
        .collect()
}

/// A finished word count over `lines` lines, with its expected counts.
fn finished_job(name: &str, lines: usize) -> (PathBuf, BTreeMap<String, u64>) {
    let dir = tmp(name);
    let (input, expected) = text(lines);
    std::fs::write(dir.join("input.txt"), &input).unwrap();
    run_ok(&write_spec(&dir, &JOB));
    assert_eq!(finals(&dir), expected);
    (dir, expected)
}

/// Complete checkpoints of the job, newest first.
fn complete(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir.join("chk"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let id = e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok()?;
            e.path().join("_metadata").is_file().then_some(id)
        })
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids
}

#[test]
fn state_follows_step_names_when_a_step_is_inserted_and_a_rename_is_named() {
    let (dir, expected) = finished_job("names", 3_000);
    // A filter before keyBy moves every later operator's position.
    let filtered = Job {
        middle: "    - {name: keep, filter: {expr: 'true'}}\n",
        ..JOB
    };
    run_ok(&write_spec(&dir, &filtered));
    assert_eq!(
        finals(&dir),
        expected,
        "restored by name, nothing recounted"
    );
    // A renamed stateful step no longer owns its state.
    let renamed = Job {
        counts: "totals",
        ..filtered
    };
    let err = run_err(&write_spec(&dir, &renamed));
    assert!(
        err.contains("holds state of operator(s) counts that this job does not have"),
        "{err}"
    );
}

#[test]
fn a_changed_source_path_is_refused_naming_the_step_and_the_paths() {
    let (dir, _) = finished_job("path", 2_000);
    std::fs::write(dir.join("other.txt"), "w1 w2\n").unwrap();
    let moved = Job {
        input: "other.txt",
        ..JOB
    };
    let err = run_err(&write_spec(&dir, &moved));
    let (old, new) = (dir.join("input.txt"), dir.join("other.txt"));
    assert!(
        err.contains("the source of step 'lines' (uid 'lines') changed since checkpoint")
            && err.contains(&format!(
                "file.path: \"{}\" then, \"{}\" now",
                old.display(),
                new.display()
            )),
        "{err}"
    );
}

#[test]
fn a_changed_max_parallelism_is_refused_naming_both_values() {
    let (dir, _) = finished_job("maxp", 2_000);
    for (m, text) in [(64, "maxParallelism 64"), (256, "maxParallelism 256")] {
        let changed = Job {
            extra: &format!("  maxParallelism: {m}\n"),
            ..JOB
        };
        let err = run_err(&write_spec(&dir, &changed));
        assert!(
            err.contains("was taken with maxParallelism 128, the job now has")
                && err.contains(text),
            "{err}"
        );
    }
}

/// The reduce's state file of subtask 0 in checkpoint `id`.
fn reduce_file(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("chk/chk-{id}/counts-0.state"))
}

#[test]
fn a_damaged_latest_checkpoint_falls_back_to_the_previous_one_and_counts_stay_exact() {
    // How many checkpoints a run completes depends on the machine's speed and load: grow
    // the input until two are retained, rather than assume a bounded run gets there.
    let (dir, expected, ids) = [30_000, 120_000, 480_000]
        .into_iter()
        .find_map(|lines| {
            let (dir, expected) = finished_job("fallback", lines);
            let ids = complete(&dir);
            (ids.len() >= 2).then_some((dir, expected, ids))
        })
        .expect("even 480,000 lines completed fewer than two checkpoints");
    // Truncated to nothing: used to restore as empty state, with about half the keys wrong.
    std::fs::write(reduce_file(&dir, ids[0]), b"").unwrap();
    let log = run_ok(&write_spec(&dir, &JOB));
    assert!(
        log.contains(&format!(
            "state file {} of operator 'counts' in checkpoint {}: it has 0 bytes",
            reduce_file(&dir, ids[0]).display(),
            ids[0]
        )) && log.contains("falling back to an older checkpoint"),
        "{log}"
    );
    assert_eq!(finals(&dir), expected);
}

#[test]
fn a_flipped_bit_or_a_missing_file_in_every_retained_checkpoint_fails_naming_them() {
    let (dir, _) = finished_job("corrupt", 30_000);
    let ids = complete(&dir);
    for (n, &id) in ids.iter().enumerate() {
        let f = reduce_file(&dir, id);
        if n % 2 == 0 {
            let mut bytes = std::fs::read(&f).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x10;
            std::fs::write(&f, bytes).unwrap();
        } else {
            std::fs::remove_file(&f).unwrap();
        }
    }
    let err = run_err(&write_spec(&dir, &JOB));
    assert!(err.contains("no complete checkpoint in"), "{err}");
    for (n, &id) in ids.iter().enumerate() {
        let problem = if n % 2 == 0 {
            "its checksum is"
        } else {
            "it is missing"
        };
        assert!(
            err.contains(&format!(
                "state file {} of operator 'counts' in checkpoint {id}: {problem}",
                reduce_file(&dir, id).display()
            )),
            "{err}"
        );
    }
}

#[test]
fn a_damaged_savepoint_named_explicitly_fails_without_a_fallback() {
    let (dir, _) = finished_job("explicit", 3_000);
    let id = complete(&dir)[0];
    std::fs::write(reduce_file(&dir, id), b"short").unwrap();
    let fresh = tmp("explicit-next");
    let input = dir.join("input.txt").display().to_string();
    let from = Job {
        input: &input,
        extra: &format!(
            "  initialSavepointPath: {}\n",
            dir.join(format!("chk/chk-{id}")).display()
        ),
        ..JOB
    };
    let err = run_err(&write_spec(&fresh, &from));
    assert!(
        err.contains(&format!(
            "state file {} of operator 'counts' in checkpoint {id}: it has 5 bytes",
            reduce_file(&dir, id).display()
        )),
        "{err}"
    );
}

/// Checkpoints that cannot be written (a full disk; here a file stands where each
/// checkpoint's directory would go) fail one by one while the job goes on; the bounded run
/// then ends normally although its final checkpoint fails too, since its file sink's output
/// is already written, and no partial checkpoint directory is left behind.
#[test]
fn unwritable_checkpoints_leave_no_partial_directories_and_a_bounded_run_succeeds() {
    let dir = tmp("unwritable");
    let (input, expected) = text(30_000);
    std::fs::write(dir.join("input.txt"), &input).unwrap();
    let chk = dir.join("chk");
    std::fs::create_dir_all(&chk).unwrap();
    for id in 2..=5000 {
        std::fs::write(chk.join(format!("chk-{id}")), b"").unwrap();
    }
    let spec = write_spec(&dir, &JOB);
    for run in 0..2 {
        let log = run_ok(&spec);
        assert_eq!(finals(&dir), expected, "run {run}");
        assert!(
            log.contains("checkpoint failed") && log.contains("the final checkpoint failed"),
            "{log}"
        );
        let dirs: Vec<String> = std::fs::read_dir(&chk)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        // The second run restored chk-1 and took no other checkpoint either.
        assert_eq!(dirs, ["chk-1"], "run {run}");
        assert!(chk.join("chk-1/_metadata").is_file());
    }
}
