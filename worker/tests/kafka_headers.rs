//! Kafka record metadata in specs, against a real broker (scripts/with-kafka.sh): a source's
//! `value` expression reads `record` (key, headers, timestamp, topic, partition, offset), a
//! sink's `headers` expression writes headers, and a raw consumer sees exactly what was
//! written. Every test uses its own topics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;

mod common;
use common::kafka::{RawRecord, read_raw};
use common::kafka_topics::{broker, create_topic, recent_minute, unique};

const BIN: &str = env!("CARGO_BIN_EXE_streamjob");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sj-kheaders-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `streamjob <command> <spec>`: success and stderr.
fn streamjob(command: &str, spec: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .arg(command)
        .arg(spec)
        .output()
        .expect("run streamjob");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_spec(dir: &Path, name: &str, steps: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: {name}\n\
             spec:\n  parallelism: 1\n  steps:\n{steps}"
        ),
    )
    .unwrap();
    path
}

/// Records of `topic` in all: the sum of its partitions' high watermarks.
fn records_in(topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}

/// Produces to partition 0 of their topic, in order, and waits for the acknowledgements.
fn produce(records: Vec<BaseRecord<'_, str, [u8]>>) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .unwrap();
    for r in records {
        producer.send(r.partition(0)).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Standard base64 with padding (how JSON carries bytes).
fn base64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Headers as a raw consumer reads them.
fn headers(pairs: &[(&str, &[u8])]) -> Vec<(String, Option<Vec<u8>>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_vec())))
        .collect()
}

/// Input records carry a UTF-8 header, a non-UTF-8 header, a repeated header name, a key and
/// a timestamp; every tenth is a tombstone. The source's `value` expression reads them all
/// through `record` (the tombstone's `value` is null there), the sink writes some back as
/// headers with its `headers` expression, and a raw consumer sees exactly those.
#[test]
fn headers_are_read_through_record_and_written_by_the_sink_headers_expression() {
    let (input, output) = (unique("kh-in"), unique("kh-out"));
    create_topic(&input, 1);
    create_topic(&output, 2);
    let n = 50usize;
    // Recent: the test broker's time retention deletes old records within a second, and the
    // job then (rightly) reads nothing.
    let base_ts = recent_minute();
    let keys: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
    let payloads: Vec<String> = (0..n)
        .map(|i| json!({"user": format!("u{i}"), "n": i}).to_string())
        .collect();
    let traces: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let seconds: Vec<String> = (0..n).map(|i| format!("second-{i}")).collect();
    let bins: Vec<[u8; 2]> = (0..n).map(|i| [0xff, i as u8]).collect();
    let records = (0..n)
        .map(|i| {
            let h = OwnedHeaders::new()
                .insert(Header {
                    key: "trace-id",
                    value: Some(&traces[i]),
                })
                .insert(Header {
                    key: "dup",
                    value: Some("first"),
                })
                .insert(Header {
                    key: "dup",
                    value: Some(&seconds[i]),
                })
                .insert(Header {
                    key: "bin",
                    value: Some(&bins[i][..]),
                });
            let r = BaseRecord::to(&input)
                .key(keys[i].as_str())
                .headers(h)
                .timestamp(base_ts + i as i64);
            if i % 10 == 0 {
                r
            } else {
                r.payload(payloads[i].as_bytes())
            }
        })
        .collect();
    produce(records);

    let dir = tmp("read-write");
    let spec = write_spec(
        &dir,
        "kafka-headers",
        &format!(
            r#"    - name: in
      source:
        kafka:
          bootstrapServers: "{b}"
          topics: [{input}]
          groupId: {g}
          startingOffsets: earliest
          format: json
          bounded: true
          value: >-
            {{'user': value == null ? null : value.user, 'tombstone': value == null,
              'trace': record.headers['trace-id'], 'dup': record.headers.dup,
              'bin': record.headers.bin, 'key': record.key, 'ts': record.timestamp,
              'at': record.topic + '/' + string(record.partition) + '@' + string(record.offset)}}
    - name: out
      sink:
        kafka:
          bootstrapServers: "{b}"
          topic: {output}
          format: json
          key: value.key
          headers: "{{'trace-id': value.trace, 'dup': value.dup, 'bin': value.bin, 'at': value.at}}"
"#,
            b = broker(),
            g = unique("g"),
        ),
    );
    let (ok, err) = streamjob("run", &spec);
    assert!(ok, "{err}");
    let mut got = read_raw(&broker(), &output, n, Duration::from_secs(30));
    assert_eq!(records_in(&output), n as i64, "nothing more was written");
    got.sort_by_key(|r| {
        String::from_utf8(r.key.clone().unwrap())
            .unwrap()
            .trim_start_matches("user-")
            .parse::<usize>()
            .unwrap()
    });
    assert_eq!(got.len(), n);
    for (i, r) in got.iter().enumerate() {
        let at = format!("{input}/0@{i}");
        let want = RawRecord {
            partition: r.partition,
            key: Some(keys[i].clone().into_bytes()),
            payload: Some(
                json!({
                    "at": at,
                    "bin": base64(&bins[i]),
                    "dup": seconds[i],
                    "key": keys[i],
                    "tombstone": i % 10 == 0,
                    "trace": traces[i],
                    "ts": base_ts + i as i64,
                    "user": if i % 10 == 0 { None } else { Some(format!("u{i}")) },
                })
                .to_string()
                .into_bytes(),
            ),
            // Written in name order.
            headers: headers(&[
                ("at", at.as_bytes()),
                ("bin", &bins[i]),
                ("dup", seconds[i].as_bytes()),
                ("trace-id", traces[i].as_bytes()),
            ]),
        };
        assert_eq!(r, &want, "record {i}");
    }
}

/// A source `value` expression that keeps the payload (null for a tombstone) and a sink with
/// `metadata: true` write tombstones as tombstones in every format; the sink's `headers`
/// expression replaces the map's headers.
#[test]
fn tombstones_stay_tombstones_through_the_value_expression_in_every_format() {
    for format in ["json", "string", "bytes"] {
        let (input, output) = (unique("kt-in"), unique("kt-out"));
        create_topic(&input, 1);
        create_topic(&output, 1);
        let n = 20usize;
        let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        let payloads: Vec<String> = (0..n).map(|i| format!("\"v{i}\"")).collect();
        let traces: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        let records = (0..n)
            .map(|i| {
                let r = BaseRecord::to(&input).key(keys[i].as_str()).headers(
                    OwnedHeaders::new().insert(Header {
                        key: "trace",
                        value: Some(&traces[i]),
                    }),
                );
                if i % 5 == 0 {
                    r
                } else {
                    r.payload(payloads[i].as_bytes())
                }
            })
            .collect();
        produce(records);
        let dir = tmp(&format!("tomb-{format}"));
        let spec = write_spec(
            &dir,
            "kafka-tombstones",
            &format!(
                r#"    - name: in
      source:
        kafka:
          bootstrapServers: "{b}"
          topics: [{input}]
          groupId: {g}
          startingOffsets: earliest
          format: {format}
          bounded: true
          value: "{{'key': record.key, 'value': value, 'headers': {{'ignored': 'x'}}, 'trace': record.headers.trace}}"
    - name: out
      sink:
        kafka:
          bootstrapServers: "{b}"
          topic: {output}
          format: {format}
          metadata: true
          headers: "{{'trace': value.trace, 'format': '{format}'}}"
"#,
                b = broker(),
                g = unique("g"),
            ),
        );
        let (ok, err) = streamjob("run", &spec);
        assert!(ok, "{format}: {err}");
        let got = read_raw(&broker(), &output, n, Duration::from_secs(30));
        assert_eq!(records_in(&output), n as i64, "{format}: nothing more");
        let want: Vec<RawRecord> = (0..n)
            .map(|i| RawRecord {
                partition: 0,
                key: Some(keys[i].clone().into_bytes()),
                payload: (i % 5 != 0).then(|| payloads[i].clone().into_bytes()),
                headers: headers(&[
                    ("format", format.as_bytes()),
                    ("trace", traces[i].as_bytes()),
                ]),
            })
            .collect();
        assert_eq!(got, want, "{format}");
    }
}

/// `record` outside a Kafka source's expressions is refused by `validate`, `plan` and `run`
/// alike, naming the field and where `record` exists; so is a `headers` expression that
/// cannot return a map.
#[test]
fn record_and_headers_misuse_is_refused_naming_the_field() {
    let dir = tmp("misuse");
    let spec = write_spec(
        &dir,
        "kafka-misuse",
        r#"    - name: in
      source:
        kafka: {bootstrapServers: "k:9092", topics: [t], groupId: g, includeMetadata: true, value: "record.key"}
    - name: by-user
      keyBy:
        expr: record.key
    - name: out
      sink:
        kafka: {bootstrapServers: "k:9092", topic: o, headers: "'trace-' + value.t"}
"#,
    );
    for command in ["validate", "plan", "run"] {
        let (ok, err) = streamjob(command, &spec);
        assert!(!ok, "{command} accepted it");
        for want in [
            "spec.steps[0].source.kafka.includeMetadata: includeMetadata and value are alternatives",
            "spec.steps[1].keyBy.expr: 'record.key' does not compile: unknown variable 'record' \
             (available: value); `record` (a Kafka record's key, headers, timestamp, topic, \
             partition and offset) exists only in a Kafka source's `value` and \
             `watermarks.timestamp` expressions",
            "spec.steps[2].sink.kafka.headers: a Kafka headers expression must return map, but \
             ''trace-' + value.t' returns string",
        ] {
            assert!(err.contains(want), "{command}: no '{want}' in:\n{err}");
        }
    }
}
