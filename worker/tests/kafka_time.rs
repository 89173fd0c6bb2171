//! Event time of Kafka sources against a real broker (STREAMJOB_TEST_KAFKA, started by
//! `make test`): watermarks per partition, and idle partitions with and without an idleness
//! timeout. Every test uses its own topic; results are exact.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use streamjob::StreamExecutionEnvironment;
use streamjob::api::watermark::WatermarkStrategy;
use streamjob::api::windows::{AggregateFunction, OutputTag, TumblingEventTimeWindows};
use streamjob::connectors::kafka::{KafkaSource, StartingOffsets};

use common::kafka_job;
use common::kafka_topics::{broker, create_topic, produce_at, recent_minute, unique};
use common::{BIN, wait_for};

struct Count;
impl AggregateFunction<String> for Count {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, _: String, acc: &mut u64) {
        *acc += 1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// (key, window start, count)
type Window = (String, i64, u64);

/// Counts per key and 5 s window of a bounded read of `topic` at parallelism 1, with the
/// watermarks per partition (`per_partition`) or over the subtask's records; and the late
/// records.
fn windows_of(topic: &str, per_partition: bool) -> (BTreeSet<Window>, Vec<String>) {
    let env = StreamExecutionEnvironment::get_execution_environment();
    env.set_parallelism(1);
    let strategy =
        || WatermarkStrategy::<String>::for_monotonous_timestamps().with_watermark_per_record();
    let builder = KafkaSource::builder()
        .bootstrap_servers(&broker())
        .topics([topic])
        .group_id(&unique("g"))
        .starting_offsets(StartingOffsets::Earliest)
        .bounded(true);
    let records = match per_partition {
        true => env.from_source(builder.build().with_watermarks(strategy()), "clicks"),
        false => env
            .from_source(builder.record_timestamps(true).build(), "clicks")
            .assign_timestamps_and_watermarks(strategy()),
    };
    let tag = OutputTag::<String>::new("late");
    let results = records
        .key_by(|k: &String| k.clone())
        .window(TumblingEventTimeWindows::of(Duration::from_secs(5)))
        .side_output_late_data(&tag)
        .aggregate_with_process(Count, |k: &String, ctx, n, out| {
            out.collect((k.clone(), ctx.window.start, n))
        });
    let late = results.get_side_output(&tag).collect_sink();
    let out = results.collect_sink();
    env.execute("kafka-event-time").unwrap();
    (out.take().into_iter().collect(), late.take())
}

/// Two partitions, each in timestamp order over the same 20 s: whichever the consumer hands
/// over first runs 20 s ahead of the other. A watermark over the subtask's records makes
/// the other partition's records late; per partition, none is.
#[test]
fn per_partition_watermarks_keep_records_another_partition_is_ahead_of() {
    let topic = unique("clicks-2p");
    create_topic(&topic, 2);
    let t0 = recent_minute();
    let mut records = Vec::new();
    for (partition, user) in [(0, "a"), (1, "b")] {
        for i in 0..20 {
            records.push((partition, user.to_string(), t0 + i * 1000));
        }
    }
    produce_at(&topic, &records);
    let expected: BTreeSet<Window> = ["a", "b"]
        .iter()
        .flat_map(|u| (0..4).map(move |w| (u.to_string(), t0 + w * 5000, 5)))
        .collect();

    let (windows, late) = windows_of(&topic, true);
    assert_eq!(windows, expected);
    assert_eq!(late, Vec::<String>::new());

    // The same input with one watermark for the subtask: the partition read second is late.
    let (windows, late) = windows_of(&topic, false);
    assert!(
        !late.is_empty() && windows != expected,
        "a per-subtask watermark should drop the partition read second: {windows:?} {late:?}"
    );
    let counted: u64 = windows.iter().map(|w| w.2).sum();
    assert_eq!(counted + late.len() as u64, 40);
}

/// A spec job reading `topic` from the start (unbounded): counts per user and 5 s window to
/// `out*`, late records to `late*`.
fn start_job(dir: &Path, topic: &str, group: &str, idleness: Option<&str>) -> Child {
    let idle = idleness.map_or(String::new(), |d| format!(", idleness: {d}"));
    // The watermarks belong to the source step, after its `kafka:` settings.
    let clicks =
        kafka_job::source(
            "clicks",
            &broker(),
            topic,
            group,
            &[
                "startingOffsets: earliest",
                "commitIntervalMs: 100",
                "format: string",
            ],
        ) + &format!("        watermarks: {{maxOutOfOrderness: 0s, interval: 0s{idle}}}\n");
    let spec = kafka_job::write(
        dir,
        "kafka-idle",
        &["parallelism: 1"],
        &[
            clicks,
            "    - {name: by-user, keyBy: {expr: value}}".into(),
            "    - name: per-5s
      window:
        tumbling: {size: 5s}
        aggregates: [{name: n, function: count}]
        output: \"{'user': key, 'start': window.start, 'n': n}\"
        lateOutput: late"
                .into(),
            format!(
                "    - {{name: out, sink: {{file: {{path: {}}}}}}}",
                dir.join("out").display()
            ),
            format!(
                "    - {{name: late, sink: {{file: {{path: {}}}}}}}",
                dir.join("late").display()
            ),
        ],
    );
    Command::new(BIN)
        .arg("run")
        .arg(&spec)
        .arg("--quiet")
        .stdout(Stdio::null())
        // Kept for a failing test's diagnosis.
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap()
}

/// The complete lines of every file in `dir` whose name starts with `stem`.
fn lines(dir: &Path, stem: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(stem) {
            let text = std::fs::read_to_string(e.path()).unwrap();
            // A line being written has no newline yet.
            let complete = text.rfind('\n').map_or("", |end| &text[..end]);
            out.extend(complete.lines().map(str::to_string));
        }
    }
    out
}

fn windows_in(dir: &Path) -> BTreeSet<Window> {
    lines(dir, "out")
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["user"].as_str().unwrap().to_string(),
                v["start"].as_i64().unwrap(),
                v["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sj-kafka-time-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Partition 0 has 20 clicks of `a` 1 s apart and one at 25 s; partition 1 has none yet.
fn clicks_on_partition_0(topic: &str, t0: i64) {
    let mut records: Vec<_> = (0..20)
        .map(|i| (0, "a".to_string(), t0 + i * 1000))
        .collect();
    records.push((0, "a".to_string(), t0 + 25_000));
    produce_at(topic, &records);
}

fn a_windows(t0: i64) -> BTreeSet<Window> {
    (0..4)
        .map(|w| ("a".to_string(), t0 + w * 5000, 5))
        .collect()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With `idleness: 1s` the empty partition stops holding event time back: partition 0's
/// windows fire while partition 1 has nothing, and partition 1's first record, 23 s behind,
/// is late (the side output gets it as the string it was).
#[test]
fn an_idle_partition_does_not_stall_windows_with_idleness() {
    let topic = unique("idle-2p");
    create_topic(&topic, 2);
    let t0 = recent_minute();
    clicks_on_partition_0(&topic, t0);
    let dir = tmp("idle");
    let _job = Killed(start_job(&dir, &topic, &unique("g"), Some("1s")));
    wait_for(
        Duration::from_secs(60),
        "partition 0's windows to fire",
        || (windows_in(&dir) == a_windows(t0)).then_some(()),
    );
    produce_at(&topic, &[(1, "b".to_string(), t0 + 2000)]);
    wait_for(Duration::from_secs(60), "the late record", || {
        (!lines(&dir, "late").is_empty()).then_some(())
    });
    assert_eq!(lines(&dir, "late"), vec!["b".to_string()]);
    assert_eq!(windows_in(&dir), a_windows(t0));
}

/// Without an idleness timeout the empty partition holds event time back: nothing fires
/// until it has records, so its record 23 s behind partition 0 still counts in its window.
#[test]
fn an_idle_partition_stalls_windows_without_idleness() {
    let topic = unique("stall-2p");
    create_topic(&topic, 2);
    let t0 = recent_minute();
    clicks_on_partition_0(&topic, t0);
    let dir = tmp("stall");
    let group = unique("g");
    let _job = Killed(start_job(&dir, &topic, &group, None));
    // The job has read all of partition 0 before partition 1 gets its first record.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", &group)
        .create()
        .unwrap();
    wait_for(Duration::from_secs(60), "partition 0 to be read", || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, 0);
        let c = consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .ok()?;
        (c.find_partition(&topic, 0)?.offset() == Offset::Offset(21)).then_some(())
    });
    assert_eq!(windows_in(&dir), BTreeSet::new(), "nothing fires yet");
    produce_at(
        &topic,
        &[
            (1, "b".to_string(), t0 + 2000),
            (1, "b".to_string(), t0 + 100_000),
        ],
    );
    let mut expected = a_windows(t0);
    expected.insert(("b".to_string(), t0, 1));
    wait_for(Duration::from_secs(60), "the windows to fire", || {
        (windows_in(&dir) == expected).then_some(())
    });
    assert_eq!(lines(&dir, "late"), Vec::<String>::new());
}
