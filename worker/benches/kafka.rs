//! Kafka -> word count -> Kafka, against raw rdkafka on the same broker in the same run.
//!
//! Raw baseline: consume the input lines with a BaseConsumer, then produce as many records as
//! the job writes (one running count per word) with a BaseProducer. The job does the same
//! reads and writes plus the word count, in `streamjob run`. Needs a broker:
//! `make bench-kafka` (starts one), or STREAMJOB_TEST_KAFKA=host:port.
//!
//! `cargo bench -p streamjob-worker --bench kafka -- [--lines N] [--parallelism P]`

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const BIN: &str = env!("CARGO_BIN_EXE_streamjob");
const PARTITIONS: i32 = 4;
const WORDS_PER_LINE: usize = 8;

fn producer(broker: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

fn send_all(
    p: &BaseProducer,
    topic: &str,
    payloads: impl Iterator<Item = (String, Option<String>)>,
) {
    for (payload, key) in payloads {
        let mut r = BaseRecord::to(topic).payload(&payload);
        if let Some(k) = &key {
            r = r.key(k);
        }
        let mut r = r;
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(120)).unwrap();
}

fn consume_count(broker: &str, topic: &str, expected: usize) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", format!("bench-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut n = 0;
    let started = Instant::now();
    while n < expected && started.elapsed() < Duration::from_secs(300) {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            std::hint::black_box(m.unwrap().payload().map(<[u8]>::len));
            n += 1;
        }
    }
    n
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (lines, parallelism) = (arg("--lines", 200_000), arg("--parallelism", 2));
    let Ok(broker) = std::env::var("STREAMJOB_TEST_KAFKA") else {
        eprintln!("STREAMJOB_TEST_KAFKA is not set: run `make bench-kafka` (starts a broker)");
        std::process::exit(2);
    };
    let id = std::process::id();
    let (input, raw_out, job_out) = (
        format!("bench-in-{id}"),
        format!("bench-raw-{id}"),
        format!("bench-out-{id}"),
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let topics: Vec<NewTopic<'_>> = [&input, &raw_out, &job_out]
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    rt.block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    let mut x: u64 = 3;
    let text: Vec<String> = (0..lines)
        .map(|_| {
            (0..WORDS_PER_LINE)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let r = (x >> 40) as f64 / (1u64 << 24) as f64;
                    format!("w{}", 10_000f64.powf(r) as u32)
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let p = producer(&broker);
    let t = Instant::now();
    send_all(&p, &input, text.iter().map(|l| (l.clone(), None)));
    let produce_lines = t.elapsed().as_secs_f64();
    let words = lines * WORDS_PER_LINE;

    // Raw baseline: read the lines, write one small keyed JSON record per word.
    let t = Instant::now();
    assert_eq!(consume_count(&broker, &input, lines), lines);
    let raw_consume = t.elapsed().as_secs_f64();
    let t = Instant::now();
    send_all(
        &p,
        &raw_out,
        (0..words).map(|i| {
            (
                format!("{{\"count\":{},\"word\":\"w{}\"}}", i % 97, i % 1000),
                Some(format!("w{}", i % 1000)),
            )
        }),
    );
    let raw_produce = t.elapsed().as_secs_f64();
    let raw = raw_consume + raw_produce;

    let spec = std::env::temp_dir().join(format!("bench-kafka-{id}.yaml"));
    std::fs::write(
        &spec,
        format!(
            r#"apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata:
  name: kafka-bench
spec:
  parallelism: {parallelism}
  steps:
    - name: lines
      source:
        kafka: {{bootstrapServers: "{broker}", topics: [{input}], groupId: bench-{id}, startingOffsets: earliest, bounded: true}}
    - {{name: words, flatMap: {{expr: "value.lower().words()"}}}}
    - {{name: pairs, map: {{expr: "[value, 1]"}}}}
    - {{name: by-word, keyBy: {{expr: "value[0]"}}}}
    - {{name: counts, reduce: {{expr: "[acc[0], acc[1] + value[1]]"}}}}
    - {{name: to-json, map: {{expr: '{{"word": value[0], "count": value[1]}}'}}}}
    - name: out
      sink:
        kafka: {{bootstrapServers: "{broker}", topic: {job_out}, key: value.word, format: json, deliveryGuarantee: at-least-once}}
"#
        ),
    )
    .unwrap();
    let t = Instant::now();
    let out = Command::new(BIN).arg("run").arg(&spec).output().unwrap();
    let job = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        consume_count(&broker, &job_out, words),
        words,
        "every running count arrives"
    );

    println!(
        "{lines} lines x {WORDS_PER_LINE} words over {PARTITIONS} partitions; job parallelism {parallelism}"
    );
    println!("{:<44} {:>12} {:>10}", "step", "records/s", "seconds");
    let row = |label: &str, n: usize, secs: f64| {
        println!("{label:<44} {:>12.0} {secs:>10.3}", n as f64 / secs)
    };
    row(
        "raw produce lines (acks=all, idempotent)",
        lines,
        produce_lines,
    );
    row("raw consume lines", lines, raw_consume);
    row("raw produce one count per word", words, raw_produce);
    row("raw consume + produce (words/s)", words, raw);
    row("streamjob Kafka -> word count -> Kafka", words, job);
    println!(
        "job throughput = {:.0}% of raw consume + produce",
        100.0 * raw / job
    );
}
