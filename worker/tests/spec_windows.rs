//! Spec windows against an oracle written here: out-of-order records with known
//! timestamps, watermarks after every record (`interval: 0s`), so which records are late
//! is fixed by their order. Every case runs at parallelism 1 and 2 and must give exactly
//! the oracle's results and late records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;

use streamjob::StreamExecutionEnvironment;
use streamjob::crds::validate::parse_job;
use streamjob::declarative::build_job;

#[derive(Debug, Clone)]
struct Rec {
    key: String,
    ts: i64,
    v: i64,
}

/// 90 records over keys a, b, c; timestamps about a second apart, up to 6 s early or 2 s
/// late relative to their position, so with a 3 s bound some arrive late.
fn records() -> Vec<Rec> {
    let mut state = 20261203u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (0..90)
        .map(|i| {
            let key = ["a", "b", "c"][(next() % 3) as usize].to_string();
            let jitter = (next() % 8000) as i64 - 6000;
            Rec {
                key,
                ts: 100_000 + 1000 * i + jitter,
                v: i,
            }
        })
        .collect()
}

/// (key, start, end, count, sum); start and end are None for count windows.
type Result = (String, Option<i64>, Option<i64>, i64, i64);

#[derive(Clone, Copy)]
enum Assign {
    Tumbling(i64),
    Sliding(i64, i64),
    Session(i64),
}

struct Open {
    start: i64,
    end: i64,
    n: i64,
    s: i64,
    fired: bool,
}

/// Flink's event-time window semantics, record by record: a record is late for a window
/// when `end - 1 + lateness <= watermark`; a record late for all its windows is a late
/// record; a window fires when the watermark reaches `end - 1`, and again for each record
/// added within the lateness; the watermark after a record is `max ts - bound - 1`.
fn oracle(recs: &[Rec], assign: Assign, bound: i64, lateness: i64) -> (Vec<Result>, Vec<i64>) {
    let mut open: BTreeMap<String, Vec<Open>> = BTreeMap::new();
    let mut results = Vec::new();
    let mut late = Vec::new();
    let mut wm = i64::MIN;
    let mut max_ts = i64::MIN;
    let emit = |key: &str, w: &Open, results: &mut Vec<Result>| {
        results.push((key.to_string(), Some(w.start), Some(w.end), w.n, w.s));
    };
    for r in recs {
        let windows = open.entry(r.key.clone()).or_default();
        let is_late = |end: i64| end - 1 + lateness <= wm;
        match assign {
            Assign::Session(gap) => {
                let (mut start, mut end, mut n, mut s) = (r.ts, r.ts + gap, 1, r.v);
                let mut fired = false;
                let mut keep = Vec::new();
                for w in windows.drain(..) {
                    if w.start <= end && w.end >= start {
                        start = start.min(w.start);
                        end = end.max(w.end);
                        n += w.n;
                        s += w.s;
                        fired |= w.fired;
                    } else {
                        keep.push(w);
                    }
                }
                assert!(
                    !fired || lateness > 0,
                    "test inputs avoid merging fired sessions"
                );
                if is_late(end) {
                    late.push(r.v);
                    // Nothing merged into a late window: with no lateness the windows it
                    // would touch are gone already.
                    *windows = keep;
                    windows.extend([]);
                } else {
                    keep.push(Open {
                        start,
                        end,
                        n,
                        s,
                        fired,
                    });
                    *windows = keep;
                }
            }
            Assign::Tumbling(_) | Assign::Sliding(..) => {
                let (size, slide) = match assign {
                    Assign::Tumbling(size) => (size, size),
                    Assign::Sliding(size, slide) => (size, slide),
                    Assign::Session(_) => unreachable!(),
                };
                let mut start = r.ts - r.ts.rem_euclid(slide);
                let mut any = false;
                while start > r.ts - size {
                    let end = start + size;
                    if !is_late(end) {
                        any = true;
                        let i = match windows.iter().position(|w| w.start == start) {
                            Some(i) => i,
                            None => {
                                windows.push(Open {
                                    start,
                                    end,
                                    n: 0,
                                    s: 0,
                                    fired: false,
                                });
                                windows.len() - 1
                            }
                        };
                        let w = &mut windows[i];
                        w.n += 1;
                        w.s += r.v;
                        if w.fired {
                            emit(&r.key, w, &mut results);
                        }
                    }
                    start -= slide;
                }
                if !any {
                    late.push(r.v);
                }
            }
        }
        max_ts = max_ts.max(r.ts);
        wm = wm.max(max_ts - bound - 1);
        for (key, windows) in open.iter_mut() {
            for w in windows.iter_mut() {
                if !w.fired && w.end - 1 <= wm {
                    w.fired = true;
                    emit(key, w, &mut results);
                }
            }
            windows.retain(|w| w.end - 1 + lateness > wm);
        }
    }
    for (key, windows) in &open {
        for w in windows.iter().filter(|w| !w.fired) {
            emit(key, w, &mut results);
        }
    }
    results.sort();
    late.sort_unstable();
    (results, late)
}

fn count_oracle(recs: &[Rec], size: usize, slide: usize) -> Vec<Result> {
    let mut per_key: BTreeMap<&str, (Vec<i64>, usize)> = BTreeMap::new();
    let mut out = Vec::new();
    for r in recs {
        let (last, since) = per_key.entry(&r.key).or_default();
        last.push(r.v);
        if last.len() > size {
            last.remove(0);
        }
        *since += 1;
        if *since == slide {
            *since = 0;
            out.push((
                r.key.clone(),
                None,
                None,
                last.len() as i64,
                last.iter().sum(),
            ));
            if slide == size {
                last.clear();
            }
        }
    }
    out.sort();
    out
}

fn tmp(name: &str) -> PathBuf {
    common::tmp_dir("specwin", name)
}

fn lines(dir: &Path, stem: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with(stem) {
            for l in std::fs::read_to_string(e.path()).unwrap().lines() {
                out.push(serde_json::from_str(l).unwrap());
            }
        }
    }
    out
}

/// Runs a job of the records -> keyBy key -> `window` (count `n` and sum `s` of value.v,
/// output `[key, start, end, n, s]`) -> file; late records (with `late: true`) to a
/// second file. Returns sorted results and the sorted `v` of the late records.
fn run(name: &str, parallelism: u32, window: &str, late: bool) -> (Vec<Result>, Vec<i64>) {
    let dir = tmp(&format!("{name}-{parallelism}"));
    let values: Vec<String> = records()
        .iter()
        .map(|r| format!("{{key: {}, ts: {}, v: {}}}", r.key, r.ts, r.v))
        .collect();
    let late_step = if late {
        format!(
            "    lateOutput: late\n- name: out\n  sink: {{file: {{path: {}}}}}\n- name: late\n  sink: {{file: {{path: {}}}}}",
            dir.join("results").display(),
            dir.join("late").display()
        )
    } else {
        format!(
            "- name: out\n  sink: {{file: {{path: {}}}}}",
            dir.join("results").display()
        )
    };
    let window: String = window.lines().map(|l| format!("    {l}\n")).collect();
    let steps = format!(
        "- name: records\n  source:\n    collection:\n      values: [{}]\n    watermarks: {{timestamp: value.ts, maxOutOfOrderness: 3s, interval: 0s}}\n- name: by-key\n  keyBy: {{expr: value.key}}\n- name: w\n  window:\n{window}    aggregates:\n    - {{name: n, function: count}}\n    - {{name: s, function: sum, expr: value.v}}\n    output: \"[key, window.start, window.end, n, s]\"\n{late_step}",
        values.join(", ")
    );
    let body: String = steps.lines().map(|l| format!("    {l}\n")).collect();
    let yaml = format!(
        "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: {name}\nspec:\n  parallelism: {parallelism}\n  steps:\n{body}"
    );
    let job = parse_job(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let env = StreamExecutionEnvironment::get_execution_environment();
    build_job(&env, &job, &dir).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    env.execute(name).unwrap();
    let mut results: Vec<Result> = lines(&dir, "results")
        .iter()
        .map(|v| {
            (
                v[0].as_str().unwrap().to_string(),
                v[1].as_i64(),
                v[2].as_i64(),
                v[3].as_i64().unwrap(),
                v[4].as_i64().unwrap(),
            )
        })
        .collect();
    results.sort();
    let mut late: Vec<i64> = lines(&dir, "late")
        .iter()
        .map(|v| v["v"].as_i64().unwrap())
        .collect();
    late.sort_unstable();
    (results, late)
}

#[track_caller]
fn check(name: &str, window: &str, late_output: bool, expected: (Vec<Result>, Vec<i64>)) {
    let expected_late = if late_output {
        expected.1.clone()
    } else {
        Vec::new()
    };
    for p in [1, 2] {
        let (results, late) = run(name, p, window, late_output);
        assert_eq!(results, expected.0, "{name}: results at parallelism {p}");
        assert_eq!(
            late, expected_late,
            "{name}: late records at parallelism {p}"
        );
    }
}

#[test]
fn tumbling_windows_with_late_records_to_a_side_output() {
    let expected = oracle(&records(), Assign::Tumbling(10_000), 3000, 0);
    assert!(!expected.1.is_empty(), "the input has late records");
    check("tumbling", "tumbling: {size: 10s}", true, expected);
}

#[test]
fn tumbling_windows_drop_late_records_without_a_side_output() {
    let expected = oracle(&records(), Assign::Tumbling(10_000), 3000, 0);
    check("tumbling-drop", "tumbling: {size: 10s}", false, expected);
}

#[test]
fn allowed_lateness_fires_updated_results() {
    let expected = oracle(&records(), Assign::Tumbling(10_000), 3000, 2000);
    let strict = oracle(&records(), Assign::Tumbling(10_000), 3000, 0);
    assert!(
        expected.1.len() < strict.1.len() && expected.0.len() > strict.0.len(),
        "lateness turns some late records into updates"
    );
    check(
        "lateness",
        "tumbling: {size: 10s}\nallowedLateness: 2s",
        true,
        expected,
    );
}

#[test]
fn sliding_windows() {
    let expected = oracle(&records(), Assign::Sliding(10_000, 5000), 3000, 0);
    check("sliding", "sliding: {size: 10s, slide: 5s}", true, expected);
}

#[test]
fn session_windows_merge() {
    let expected = oracle(&records(), Assign::Session(2500), 3000, 0);
    assert!(
        expected.0.iter().any(|r| r.3 > 1),
        "some sessions merge records"
    );
    check("session", "session: {gap: 2500ms}", true, expected);
}

#[test]
fn count_windows_tumbling_and_sliding() {
    let recs = records();
    let tumbling = count_oracle(&recs, 4, 4);
    let sliding = count_oracle(&recs, 4, 2);
    for p in [1, 2] {
        assert_eq!(
            run("count", p, "count: {size: 4}", false).0,
            tumbling,
            "p={p}"
        );
        assert_eq!(
            run("count-sliding", p, "count: {size: 4, slide: 2}", false).0,
            sliding,
            "p={p}"
        );
    }
}

/// The README's click-stream example gives exactly the counts and late clicks it shows.
#[test]
fn the_click_stream_example_counts_clicks_per_user_per_minute() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    for p in [1, 2] {
        let dir = tmp(&format!("clicks-{p}"));
        let yaml = std::fs::read_to_string(examples.join("clicks-per-minute.yaml"))
            .unwrap()
            .replacen(
                "        print: {}",
                &format!("        file: {{path: {}}}", dir.join("counts").display()),
                1,
            )
            .replacen(
                "        print: {}",
                &format!("        file: {{path: {}}}", dir.join("late").display()),
                1,
            )
            .replace("  parallelism: 2\n", &format!("  parallelism: {p}\n"));
        let job = parse_job(&yaml).unwrap();
        let env = StreamExecutionEnvironment::get_execution_environment();
        build_job(&env, &job, &dir).unwrap();
        env.execute("clicks").unwrap();
        let text = |stem| {
            let mut v: Vec<String> = lines(&dir, stem).iter().map(|l| l.to_string()).collect();
            v.sort();
            v
        };
        let minute = 1_700_000_040_000i64;
        let count = |user: &str, m: i64, n: i64| {
            format!(
                r#"{{"clicks":{n},"minute":{},"user":"{user}"}}"#,
                minute + m * 60_000
            )
        };
        let mut expected = vec![
            count("alice", 0, 4),
            count("bob", 0, 1),
            count("alice", 1, 1),
            count("bob", 1, 2),
            count("bob", 2, 1),
            count("carol", 2, 1),
        ];
        expected.sort();
        assert_eq!(text("counts"), expected, "p={p}");
        assert_eq!(
            text("late"),
            [
                r#"{"late":{"ts":1700000090000,"url":"/help","user":"alice"}}"#,
                r#"{"late":{"ts":1700000159000,"url":"/shop","user":"bob"}}"#
            ],
            "p={p}"
        );
    }
}

/// The key group of the first key of every chunk of the keyed state in the state files of
/// operator `uid` (`SJST` envelope, see `runtime::checkpoint::format`; for a count window the
/// `SJcwn` header, see `operators::count_window`; keyed-state blob, see `codec::state`), by key.
fn key_groups_in_state(dir: &Path, uid: &str) -> BTreeMap<String, u32> {
    let mut found = BTreeMap::new();
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{uid}-"))
            {
                files.push(p);
            }
        }
    }
    assert!(!files.is_empty(), "no state files of {uid} under {dir:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let uid_len = u16::from_le_bytes([bytes[5], bytes[6]]) as usize;
        let payload = &bytes[7 + uid_len + 4..];
        // A count window's state starts with its own header: magic, version, watermark.
        let payload = payload
            .strip_prefix(&b"SJcwn\x02"[..])
            .map_or(payload, |p| &p[8..]);
        let mut rest = payload
            .strip_prefix(&b"SJks\x01"[..])
            .unwrap_or_else(|| panic!("{f:?}: not a keyed state blob"));
        loop {
            let ((group, len), after) = postcard::take_from_bytes::<(u32, u64)>(rest).unwrap();
            if group == u32::MAX {
                break;
            }
            let (chunk, after) = after.split_at(len as usize);
            let (key, _) =
                postcard::take_from_bytes::<streamjob::crds::expr::Value>(chunk).unwrap();
            found.insert(key.as_str().unwrap().to_string(), group);
            rest = after;
        }
    }
    found
}

/// One key, one key group: a spec reduce and a spec window keyed by the same value hold
/// it in the same key group (before, windows hashed the tagged serde form of the key and
/// every other spec operator the value itself). A count window, so that its state is not
/// empty at the end of input.
#[test]
fn a_spec_reduce_and_a_spec_window_place_a_key_in_the_same_key_group() {
    let dir = tmp("same-group");
    let keys = ["ann", "bob", "cy"];
    let values: Vec<String> = (0..12)
        .map(|i| format!("{{key: {}, ts: {}, v: 1}}", keys[i % 3], i * 100))
        .collect();
    let yaml = format!(
        r#"apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata:
  name: same-group
spec:
  parallelism: 2
  checkpointing: {{intervalMs: 600000, directory: "{}"}}
  steps:
    - name: records
      source:
        collection:
          values: [{}]
        watermarks: {{timestamp: value.ts, maxOutOfOrderness: 0s, interval: 0s}}
    - {{name: by-key, keyBy: {{expr: value.key}}}}
    - name: totals
      reduce: {{expr: "{{'key': acc.key, 'ts': value.ts, 'v': acc.v + value.v}}"}}
    - {{name: by-key-again, keyBy: {{expr: value.key}}}}
    - name: w
      window:
        count: {{size: 100}}
        aggregates:
        - {{name: n, function: count}}
        output: "[key, n]"
    - name: out
      sink: {{file: {{path: "{}"}}}}
"#,
        dir.join("chk").display(),
        values.join(", "),
        dir.join("results").display()
    );
    let job = parse_job(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let env = StreamExecutionEnvironment::get_execution_environment();
    build_job(&env, &job, &dir).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    env.execute("same-group").unwrap();
    // Count windows of 100 never fill here: the final state holds every key's window.
    assert!(lines(&dir, "results").is_empty());
    let reduce = key_groups_in_state(&dir.join("chk"), "totals");
    let window = key_groups_in_state(&dir.join("chk"), "w");
    assert_eq!(reduce.len(), 3, "{reduce:?}");
    assert_eq!(reduce, window);
}
