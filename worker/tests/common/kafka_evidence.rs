//! What a Kafka test that lost records keeps for the post-mortem: where each missing record
//! was in the input, whether the output log holds it at all (read_uncommitted) or only hides
//! it from read_committed readers, and which of the sink's transactions wrote its
//! neighbours (from the worker log's "pre-committed Kafka transaction" lines, written at
//! debug level: run the job with `STREAMJOB_LOG=...,streamjob::connectors::kafka=debug`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// Where a record is: partition and offset.
pub type At = (i32, i64);

/// Every record of `topic` as payload -> where (each place, duplicates included), read to
/// each partition's high watermark or until nothing arrived for `quiet`.
pub fn locate_all(
    broker: &str,
    topic: &str,
    read_committed: bool,
    quiet: Duration,
) -> BTreeMap<String, Vec<At>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "streamjob-test-evidence")
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap();
        ends.insert(p.id(), high);
    }
    consumer.assign(&tpl).unwrap();
    let mut out: BTreeMap<String, Vec<At>> = BTreeMap::new();
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut idle = Instant::now();
    while idle.elapsed() < quiet
        && ends
            .iter()
            .any(|(p, &h)| positions.get(p).copied().unwrap_or(0) < h - 1)
    {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            positions.insert(m.partition(), m.offset());
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            out.entry(payload)
                .or_default()
                .push((m.partition(), m.offset()));
            idle = Instant::now();
        }
    }
    out
}

/// A transaction the sink pre-committed, from the worker log.
#[derive(Debug, Clone)]
struct Txn {
    line: String,
    /// partition -> (first, last) acknowledged offset.
    ranges: BTreeMap<i32, (i64, i64)>,
}

/// The "pre-committed Kafka transaction" lines of a worker log, with their offset ranges
/// (`offsets=p0:12-340 p1:7-299`).
fn transactions(log: &str) -> Vec<Txn> {
    log.lines()
        .filter(|l| l.contains("pre-committed Kafka transaction"))
        .filter_map(|l| {
            let at = l.find("offsets=")? + "offsets=".len();
            let rest = &l[at..];
            let mut ranges = BTreeMap::new();
            for part in rest.split_whitespace() {
                let Some((p, range)) = part.strip_prefix('p').and_then(|s| s.split_once(':'))
                else {
                    break;
                };
                let Some((a, b)) = range.split_once('-') else {
                    break;
                };
                let (Ok(p), Ok(a), Ok(b)) = (p.parse(), a.parse(), b.parse()) else {
                    break;
                };
                ranges.insert(p, (a, b));
            }
            Some(Txn {
                line: l.to_string(),
                ranges,
            })
        })
        .collect()
}

fn txn_of(txns: &[Txn], at: At) -> String {
    txns.iter()
        .find(|t| {
            t.ranges
                .get(&at.0)
                .is_some_and(|&(a, b)| a <= at.1 && at.1 <= b)
        })
        .map_or_else(
            || "no pre-committed transaction in the log covers it".to_string(),
            |t| t.line.clone(),
        )
}

/// Writes `missing.txt` into `dir` (every missing id: input place, whether the output log
/// holds it, its neighbours' output places and their transactions) and returns a summary
/// for the failure message. `input_order` lists the ids in the order they were produced.
pub fn report_missing(
    dir: &Path,
    broker: &str,
    input: &str,
    output: &str,
    input_order: &[String],
    missing: &BTreeSet<String>,
    worker_log: &str,
) -> String {
    let quiet = Duration::from_secs(10);
    let inputs = locate_all(broker, input, false, quiet);
    let uncommitted = locate_all(broker, output, false, quiet);
    let committed = locate_all(broker, output, true, quiet);
    let txns = transactions(worker_log);
    let still_missing: BTreeSet<&String> = missing
        .iter()
        .filter(|id| !committed.contains_key(*id))
        .collect();
    let in_log = missing
        .iter()
        .filter(|id| uncommitted.contains_key(*id))
        .count();
    let mut text = String::new();
    writeln!(
        text,
        "{} missing ids; a final full read_committed read still misses {}; {} of the missing \
         are in the output log (read_uncommitted); {} transactions in the worker log",
        missing.len(),
        still_missing.len(),
        in_log,
        txns.len()
    )
    .unwrap();
    // The input partition of each id, to find its neighbours in the same subtask's stream.
    let place = |id: &String| inputs.get(id).and_then(|v| v.first().copied());
    let by_partition: BTreeMap<i32, Vec<&String>> =
        input_order.iter().fold(BTreeMap::new(), |mut acc, id| {
            if let Some((p, _)) = place(id) {
                acc.entry(p).or_insert_with(Vec::new).push(id);
            }
            acc
        });
    for id in missing {
        let input_at = place(id);
        write!(text, "{id}: input {input_at:?}").unwrap();
        match uncommitted.get(id) {
            Some(at) => write!(
                text,
                "; in the output log at {at:?} (hidden from read_committed)"
            ),
            None => write!(text, "; absent from the output log"),
        }
        .unwrap();
        if let Some((p, _)) = input_at {
            let ids = &by_partition[&p];
            let i = ids.iter().position(|x| *x == id).unwrap();
            let before = ids[..i].iter().rev().find(|x| committed.contains_key(**x));
            let after = ids[i + 1..].iter().find(|x| committed.contains_key(**x));
            for (what, n) in [("before", before), ("after", after)] {
                if let Some(n) = n {
                    let at = committed[*n][0];
                    write!(
                        text,
                        "\n    {what}: {n} at output {at:?}: {}",
                        txn_of(&txns, at)
                    )
                    .unwrap();
                }
            }
        }
        text.push('\n');
    }
    std::fs::write(dir.join("missing.txt"), &text).unwrap();
    let mut summary: String = text.lines().take(12).collect::<Vec<_>>().join("\n");
    write!(
        summary,
        "\n(all of it in {})",
        dir.join("missing.txt").display()
    )
    .unwrap();
    summary
}
