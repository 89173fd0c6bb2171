//! Kafka metrics of a real `streamjob worker` run against the test broker
//! (STREAMJOB_TEST_KAFKA, started by `make test`), scraped from its metrics port: consumer
//! lag per partition reaches 0 once the input is drained, records produced equals what the
//! output topic holds, committed transactions are counted, and the summary the operator
//! reads carries the lag.

mod common;

use std::time::{Duration, Instant};

use common::http::{get, get_json, sample_sum};
use common::kafka_job;
use common::kafka_topics::{broker, create_topic, produce_at, recent_minute, unique};
use common::{lazy, wait_for};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Records in `topic` a read_committed consumer sees (committed transactions only): read
/// until `expected` arrived (or a minute passed), then until a second passes without more.
fn committed_count(topic: &str, partitions: i32, expected: u64) -> u64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("isolation.level", "read_committed")
        .set("group.id", unique("check"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let started = Instant::now();
    let mut n = 0;
    let mut last = Instant::now();
    while started.elapsed() < Duration::from_secs(60)
        && (n < expected || last.elapsed() < Duration::from_secs(1))
    {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            n += 1;
            last = Instant::now();
        }
    }
    n
}

#[test]
fn kafka_lag_drains_to_zero_and_produced_records_and_transactions_are_counted() {
    let input = unique("metrics-in");
    let output = unique("metrics-out");
    create_topic(&input, 3);
    create_topic(&output, 2);
    let records = 3000;
    // Recent timestamps: the broker's time retention (7 days) deleted records stamped in
    // 2023 within a second of their write, so a job that started a moment later found every
    // partition empty (low = high watermark = 1000) and produced nothing.
    let t0 = recent_minute();
    let lines: Vec<(i32, String, i64)> = (0..records)
        .map(|i| (i % 3, format!("r{i}"), t0 + i64::from(i)))
        .collect();
    produce_at(&input, &lines);
    let dir = std::env::temp_dir().join(format!("sj-kafka-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (broker, tx) = (broker(), format!("transactionalIdPrefix: {}", unique("tx")));
    let manifest = kafka_job::write(
        &dir,
        "kafka-metered",
        &["parallelism: 2"],
        &[
            kafka_job::source(
                "in",
                &broker,
                &input,
                &unique("g"),
                &["startingOffsets: earliest", "format: string"],
            ),
            "    - {name: upper, map: {expr: value.upperAscii()}}".into(),
            kafka_job::sink(
                "out",
                &broker,
                &output,
                &[
                    "format: string",
                    "deliveryGuarantee: exactly-once",
                    &tx,
                    "commitIntervalMs: 200",
                ],
            ),
        ],
    );
    let p = kafka_job::one_worker(
        &manifest,
        &[],
        // The partitions' starting offsets (info) for a failure's diagnosis: the worker's
        // log is part of the test's output.
        &[
            ("STREAMJOB_TOKEN", "kafka-metrics-test"),
            ("STREAMJOB_LOG", "info"),
        ],
    );
    let job = r#"job="kafka-metered""#;
    let topic_in = format!(r#"topic="{input}""#);
    let topic_out = format!(r#"topic="{output}""#);
    let last = std::cell::RefCell::new(String::new());
    // Unbounded: the job keeps running with nothing left to read.
    let m = wait_for(
        Duration::from_secs(90),
        lazy(|| {
            format!(
                "lag 0 on every input partition and every record produced and committed; the \
                 last Kafka metrics:\n{}",
                last.borrow()
            )
        }),
        || {
            let (_, m) = get(&p.web, "/metrics").ok()?;
            *last.borrow_mut() = m
                .lines()
                .filter(|l| l.starts_with("streamjob_kafka_"))
                .collect::<Vec<_>>()
                .join("\n");
            let lag: Vec<f64> = (0..3)
                .map(|part| {
                    let partition = format!(r#"partition="{part}""#);
                    sample_sum(
                        &m,
                        "streamjob_kafka_consumer_lag",
                        &[job, &topic_in, &partition],
                    )
                })
                .collect::<Option<_>>()?;
            let produced = sample_sum(
                &m,
                "streamjob_kafka_records_produced_total",
                &[job, &topic_out],
            )?;
            let committed = sample_sum(&m, "streamjob_kafka_transactions_committed_total", &[job])?;
            (lag == [0.0; 3] && produced == f64::from(records) && committed >= 1.0).then_some(m)
        },
    );
    // Every produced record is in the output, once, and visible to read_committed readers
    // (its transaction committed).
    assert_eq!(committed_count(&output, 2, records as u64), records as u64);
    assert_eq!(
        sample_sum(&m, "streamjob_kafka_records_produced_total", &[job]),
        Some(f64::from(records)),
        "{m}"
    );
    assert_eq!(
        sample_sum(&m, "streamjob_kafka_transactions_aborted_total", &[job]),
        Some(0.0)
    );
    // The summary the operator copies into the status: the lag summed over partitions.
    let s = get_json(&p.web, "/api/summary");
    assert_eq!(s["kafka_lag"], 0, "{s}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let read = runtime
        .block_on(streamjob_operator::metrics::get_summary(&p.web))
        .expect("the operator reads the worker's summary");
    assert_eq!(read.kafka_lag, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bounded job from a topic of keyed records counts exactly their keys' and payloads'
/// bytes as input, and its Kafka sink exactly the payloads it produced as output (the
/// string format writes no key).
#[test]
fn kafka_source_and_sink_bytes_are_exactly_the_keys_and_payloads() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    let input = unique("bytes-in");
    let output = unique("bytes-out");
    create_topic(&input, 2);
    create_topic(&output, 1);
    let records: Vec<(String, String)> = (0..1500)
        .map(|i| {
            (
                format!("k{}", i % 37),
                format!("value {i} {}", "y".repeat(i % 11)),
            )
        })
        .collect();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .unwrap();
    for (i, (k, v)) in records.iter().enumerate() {
        // Every third record has no key: it counts its payload only.
        let mut record = BaseRecord::to(&input)
            .payload(v.as_bytes())
            .partition(i as i32 % 2);
        if i % 3 != 0 {
            record = record.key(k.as_bytes());
        }
        while let Err((_, r)) = producer.send(record) {
            record = r;
            producer.poll(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let payloads: usize = records.iter().map(|(_, v)| v.len()).sum();
    let keys: usize = records
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, (k, _))| k.len())
        .sum();
    let dir = std::env::temp_dir().join(format!("sj-kafka-bytes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let broker = broker();
    let manifest = kafka_job::write(
        &dir,
        "kafka-bytes",
        &["parallelism: 2"],
        &[
            kafka_job::source(
                "in",
                &broker,
                &input,
                &unique("g"),
                &[
                    "startingOffsets: earliest",
                    "format: string",
                    "bounded: true",
                ],
            ),
            kafka_job::sink("out", &broker, &output, &["format: string"]),
        ],
    );
    let p = kafka_job::one_worker(
        &manifest,
        &["--idle-after-finish"],
        &[("STREAMJOB_TOKEN", "kafka-bytes-test")],
    );
    wait_for(Duration::from_secs(90), "the job to finish", || {
        (get_json(&p.web, "/api/job")["state"] == "finished").then_some(())
    });
    let (_, m) = get(&p.web, "/metrics").unwrap();
    let job = r#"job="kafka-bytes""#;
    assert_eq!(
        sample_sum(&m, "streamjob_records_in_total", &[job, r#"operator="in""#]),
        Some(records.len() as f64),
        "{m}"
    );
    assert_eq!(
        sample_sum(&m, "streamjob_task_input_bytes_total", &[job]),
        Some((payloads + keys) as f64),
        "{m}"
    );
    assert_eq!(
        sample_sum(&m, "streamjob_source_read_bytes_total", &[job]),
        Some((payloads + keys) as f64),
        "{m}"
    );
    assert_eq!(
        sample_sum(&m, "streamjob_task_output_bytes_total", &[job]),
        Some(payloads as f64),
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
