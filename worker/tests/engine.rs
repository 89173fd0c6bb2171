//! End-to-end tests of the local engine: exact results, chaining, backpressure, end of
//! stream and errors.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{fail_partway, has_complete_checkpoint};
use streamjob::crds::keygroup::key_group_of;
use streamjob::{
    BoxError, Collector, JobError, Sink, SinkWriter, Source, SourceReader, SourceStatus,
    StreamExecutionEnvironment, SubtaskContext,
};

/// Deterministic text: `lines` lines of 8 words from a small vocabulary, some capitalised.
fn text(lines: usize) -> Vec<String> {
    let vocab = [
        "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "cat", "a", "to",
        "be", "or", "not",
    ];
    let mut x: u64 = 42;
    (0..lines)
        .map(|i| {
            (0..8)
                .map(|j| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let w = vocab[(x >> 33) as usize % vocab.len()];
                    if j == 0 && i % 3 == 0 {
                        w.to_uppercase()
                    } else {
                        w.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(if i % 5 == 0 { "  \t" } else { " " })
        })
        .collect()
}

fn expected_counts(lines: &[String]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in lines {
        for w in l.split_whitespace() {
            *m.entry(w.to_lowercase()).or_insert(0) += 1;
        }
    }
    m
}

fn word_count(
    lines: Vec<String>,
    parallelism: u32,
) -> (Vec<(String, u64)>, StreamExecutionEnvironment) {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(parallelism);
    let out = env
        .from_collection(lines)
        .rebalance()
        .flat_map(|line: String, out: &mut Collector<'_, (String, u64)>| {
            for w in line.split_whitespace() {
                out.collect((w.to_lowercase(), 1));
            }
        })
        .name("tokenize")
        .key_by_ref(|(w, _): &(String, u64)| w.as_str())
        .reduce(|(w, a), (_, b)| (w, a + b))
        .name("count")
        .collect_sink();
    env.execute("wordcount").unwrap();
    (out.take(), env)
}

#[test]
fn word_count_is_exact_at_parallelism_1_2_and_4() {
    let lines = text(5_000);
    let expected = expected_counts(&lines);
    let total: u64 = expected.values().sum();
    for p in [1, 2, 4] {
        let (out, _) = word_count(lines.clone(), p);
        // Flink's reduce emits every running value: one output per word occurrence.
        assert_eq!(out.len() as u64, total, "parallelism {p}");
        let mut finals = BTreeMap::new();
        for (w, c) in out {
            let e = finals.entry(w).or_insert(0);
            assert!(c > *e || c == 1, "running counts only grow");
            *e = (*e).max(c);
        }
        assert_eq!(finals, expected, "parallelism {p}");
    }
}

#[test]
fn running_counts_per_key_arrive_in_order() {
    let lines = text(500);
    let (out, _) = word_count(lines, 4);
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for (w, c) in out {
        let prev = last.insert(w.clone(), c).unwrap_or(0);
        assert_eq!(
            c,
            prev + 1,
            "key {w}: counts for one key come from one subtask, in order"
        );
    }
}

#[test]
fn owned_key_selector_gives_the_same_result() {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(3);
    let out = env
        .from_collection((0..10_000u64).collect::<Vec<_>>())
        .map(|x| (x % 7, x))
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce(|(k, a), (_, b)| (k, a + b))
        .collect_sink();
    env.execute("sum by mod").unwrap();
    let mut finals = BTreeMap::new();
    for (k, s) in out.take() {
        let e = finals.entry(k).or_insert(0);
        *e = (*e).max(s);
    }
    for k in 0..7u64 {
        let expect: u64 = (0..10_000u64).filter(|x| x % 7 == k).sum();
        assert_eq!(finals[&k], expect);
    }
}

#[test]
fn explain_shows_chains_and_partitioning() {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2);
    env.from_collection(vec!["a b".to_string()])
        .flat_map(|l: String, out| {
            for w in l.split(' ') {
                out.collect(w.to_string());
            }
        })
        .name("split")
        .filter(|w: &String| !w.is_empty())
        .key_by(|w: &String| w.clone())
        .reduce(|a, _| a)
        .name("first")
        .print()
        .name("out");
    let plan = env.plan("j").unwrap();
    let chains: Vec<Vec<&str>> = plan
        .chains
        .iter()
        .map(|c| {
            c.nodes
                .iter()
                .map(|&n| plan.nodes[n].name.as_str())
                .collect()
        })
        .collect();
    // The collection source is not parallel: its chain stops at the parallelism change.
    assert_eq!(
        chains,
        vec![
            vec!["collection"],
            vec!["split", "filter"],
            vec!["first", "out"]
        ]
    );
    let text = env.explain().unwrap();
    assert!(text.contains("REBALANCE"), "{text}");
    assert!(text.contains("HASH"), "{text}");
}

#[test]
fn union_and_several_inputs_end_cleanly() {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(3);
    let a = env.from_collection((0..1000u32).collect::<Vec<_>>());
    let b = env.from_collection((1000..3000u32).collect::<Vec<_>>());
    let c = env.from_collection(Vec::<u32>::new());
    let out = a.union(&[b, c]).map(|x| x * 2).collect_sink();
    env.execute("union").unwrap();
    let mut got = out.take();
    got.sort();
    assert_eq!(got, (0..3000u32).map(|x| x * 2).collect::<Vec<_>>());
}

#[test]
fn fan_out_feeds_every_consumer() {
    let env = StreamExecutionEnvironment::get_execution_environment();
    let s = env.from_collection((0..100i64).collect::<Vec<_>>());
    let evens = s.filter(|x| x % 2 == 0).collect_sink();
    let all = s.map(|x| -x).collect_sink();
    env.execute("fan out").unwrap();
    assert_eq!(evens.len(), 50);
    assert_eq!(all.len(), 100);
}

#[test]
fn text_file_lines_are_read_exactly_once_across_subtasks() {
    let dir = common::tmp_dir("engine", "file");
    let lines = text(3_001);
    let path = dir.join("input.txt");
    let mut f = std::fs::File::create(&path).unwrap();
    for l in &lines {
        writeln!(f, "{l}").unwrap();
    }
    write!(f, "last line without newline").unwrap();
    drop(f);
    for p in [1, 2, 3, 7] {
        let env = StreamExecutionEnvironment::get_execution_environment();
        env.set_parallelism(p);
        let out = env.read_text_file(&path).collect_sink();
        env.execute("read").unwrap();
        let mut got = out.take();
        let mut want = lines.clone();
        want.push("last line without newline".into());
        got.sort();
        want.sort();
        assert_eq!(got, want, "parallelism {p}");
    }
    // A directory with several files.
    std::fs::write(dir.join("second.txt"), "x y\nz\n").unwrap();
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2);
    let out = env.read_text_file(&dir).collect_sink();
    env.execute("read dir").unwrap();
    assert_eq!(out.len(), lines.len() + 1 + 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_is_a_clear_setup_error() {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.read_text_file("/nonexistent/streamjob-input.txt")
        .print();
    let err = env.execute("missing").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, JobError::Setup { .. }), "{msg}");
    assert!(msg.contains("/nonexistent/streamjob-input.txt"), "{msg}");
}

#[test]
fn a_failing_user_function_names_its_operator() {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2);
    env.from_collection(["1", "2", "x", "4"].map(String::from).to_vec())
        .try_map(|s: String| {
            s.parse::<i64>()
                .map_err(|e| format!("cannot parse {s:?}: {e}"))
        })
        .name("parse numbers")
        .discard();
    let err = env.execute("bad input").unwrap_err().to_string();
    assert!(err.contains("operator 'parse numbers'"), "{err}");
    assert!(err.contains("cannot parse \"x\""), "{err}");
}

#[test]
fn a_panicking_user_function_fails_the_job_instead_of_hanging() {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(2);
    env.from_collection((0..100_000u64).collect::<Vec<_>>())
        .map(|x| x + 1)
        .key_by(|x: &u64| *x)
        .reduce(|a, b| {
            assert!(a + b < 10_000_000_000, "overflow guard");
            a + b
        })
        .map(|x: u64| {
            if x == 77_777 {
                panic!("boom at {x}")
            } else {
                x
            }
        })
        .name("explode")
        .discard();
    let err = env.execute("panic").unwrap_err().to_string();
    assert!(err.contains("operator 'explode'"), "{err}");
    assert!(err.contains("boom at 77777"), "{err}");
}

/// A source that counts what it has produced, and a sink that is slow and counts what it
/// has consumed: the difference is what is buffered in between.
struct CountingSource {
    produced: Arc<AtomicU64>,
    total: u64,
}
struct CountingReader {
    produced: Arc<AtomicU64>,
    left: u64,
}
impl Source<u64> for CountingSource {
    fn create_reader(&self, _: &SubtaskContext) -> Result<Box<dyn SourceReader<u64>>, BoxError> {
        Ok(Box::new(CountingReader {
            produced: self.produced.clone(),
            left: self.total,
        }))
    }
}
impl SourceReader<u64> for CountingReader {
    fn poll_next(&mut self, out: &mut Collector<'_, u64>) -> Result<SourceStatus, BoxError> {
        for _ in 0..100 {
            if self.left == 0 {
                return Ok(SourceStatus::Finished);
            }
            self.left -= 1;
            self.produced.fetch_add(1, Ordering::SeqCst);
            out.collect(self.left);
        }
        Ok(SourceStatus::MoreAvailable)
    }
}
struct SlowSink {
    produced: Arc<AtomicU64>,
    consumed: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicU64>,
}
struct SlowWriter(Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>, u64);
impl Sink<u64> for SlowSink {
    fn create_writer(&self, _: &SubtaskContext) -> Result<Box<dyn SinkWriter<u64>>, BoxError> {
        Ok(Box::new(SlowWriter(
            self.produced.clone(),
            self.consumed.clone(),
            self.max_in_flight.clone(),
            0,
        )))
    }
}
impl SinkWriter<u64> for SlowWriter {
    fn write(&mut self, _item: u64) -> Result<(), BoxError> {
        let consumed = self.1.fetch_add(1, Ordering::SeqCst) + 1;
        let in_flight = self.0.load(Ordering::SeqCst) - consumed;
        self.2.fetch_max(in_flight, Ordering::SeqCst);
        self.3 += 1;
        if self.3.is_multiple_of(1000) {
            // Makes the sink the bottleneck; the assertions bound what is in flight
            // whatever the speed, so the pace does not decide the outcome.
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }
}

#[test]
fn a_slow_sink_backpressures_the_source_and_memory_stays_bounded() {
    let produced = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let max_in_flight = Arc::new(AtomicU64::new(0));
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_batch_size(100).set_channel_capacity(2);
    env.from_source(
        CountingSource {
            produced: produced.clone(),
            total: 200_000,
        },
        "counting",
    )
    .key_by(|x: &u64| *x % 10)
    .reduce(|a, b| a.max(b))
    .sink_to(SlowSink {
        produced: produced.clone(),
        consumed: consumed.clone(),
        max_in_flight: max_in_flight.clone(),
    });
    env.execute("backpressure").unwrap();
    assert_eq!(consumed.load(Ordering::SeqCst), 200_000);
    // One channel of 2 batches of 100, a batch being filled on each side, the source's
    // current poll: far below the 200k produced.
    let bound = 2 * 100 + 2 * 100 + 100 + 100;
    let seen = max_in_flight.load(Ordering::SeqCst);
    assert!(seen <= bound, "{seen} records in flight, bound {bound}");
}

#[test]
fn records_reach_the_subtask_owning_their_key_group() {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(4).set_max_parallelism(16);
    let out = env
        .from_collection((0..2000i64).collect::<Vec<_>>())
        .key_by(|x: &i64| *x)
        .reduce(|a, b| a + b)
        .collect_sink();
    env.execute("routing").unwrap();
    assert_eq!(out.len(), 2000);
    // Every key is new, so each output equals its input; the state check inside reduce
    // would have failed the job if a record had reached a subtask not owning its group.
    let groups: std::collections::HashSet<u32> =
        (0..2000i64).map(|x| key_group_of(&x, 16)).collect();
    assert_eq!(groups.len(), 16);
}

/// A Rust-API word count with checkpoints fails partway (an injected panic, after several
/// checkpoints completed), then runs again at another parallelism: it restores the file
/// positions and the reduce state (redistributed by key group), so the final counts are
/// exact. Without the reduce state the counts would restart from the restored positions and
/// come out too small.
#[test]
fn rust_api_reduce_state_survives_a_failure_through_checkpoints() {
    let dir = common::tmp_dir("engine", "chk");
    let lines = text(300_000);
    let expected = expected_counts(&lines);
    let input = dir.join("input.txt");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let chk = dir.join("chk");
    let run = |reduce_parallelism: u32, fail_after: Option<u64>| {
        let env = StreamExecutionEnvironment::get_execution_environment();
        env.set_parallelism(2)
            .enable_checkpointing(Duration::from_millis(5), &chk, 3);
        let seen = Arc::new(AtomicU64::new(0));
        let chk_dir = chk.clone();
        let out = env
            .read_text_file(&input)
            .map(move |line: String| {
                let n = seen.fetch_add(1, Ordering::Relaxed);
                fail_partway(n, fail_after, &chk_dir, "lines");
                line
            })
            .flat_map(|line: String, out: &mut Collector<'_, (String, u64)>| {
                for w in line.split_whitespace() {
                    out.collect((w.to_lowercase(), 1));
                }
            })
            .key_by_ref(|(w, _): &(String, u64)| w.as_str())
            .reduce(|(w, a), (_, b)| (w, a + b))
            .name("count")
            .set_parallelism(reduce_parallelism)
            .collect_sink();
        env.execute("rust-reduce").map(|_| out.take())
    };
    let err = run(2, Some(200_000)).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert!(
        has_complete_checkpoint(&chk),
        "no checkpoint completed before the failure"
    );
    // The file source keeps its parallelism; the keyed reduce goes from 2 to 3 subtasks.
    let out = run(3, None).unwrap();
    let mut finals = BTreeMap::new();
    for (w, c) in out {
        let e = finals.entry(w).or_insert(0);
        *e = c.max(*e);
    }
    assert_eq!(finals, expected);
}
