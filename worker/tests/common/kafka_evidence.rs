//! What a Kafka test that lost records keeps for the post-mortem: where each missing record
//! was in the input, whether the output log holds it at all (read_uncommitted) or only hides
//! it from read_committed readers, and which of the sink's transactions wrote its
//! neighbours (from the worker log's "pre-committed Kafka transaction" lines, written at
//! debug level: run the job with `STREAMJOB_LOG=...,streamjob::connectors::kafka=debug`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;

use super::kafka_topics::from_start;

/// A reader of a whole topic from its start that remembers every payload it read, for
/// polling a running job's output.
pub struct Reader {
    consumer: BaseConsumer,
    pub seen: BTreeSet<String>,
}

impl Reader {
    pub fn new(broker: &str, topic: &str, read_committed: bool) -> Self {
        let consumer = from_start(broker, topic, read_committed, "streamjob-test-reader");
        Reader {
            consumer,
            seen: BTreeSet::new(),
        }
    }

    /// Reads for `time` (errors, e.g. while the broker restarts, are retried); returns how
    /// many distinct payloads it has seen.
    pub fn read_for(&mut self, time: Duration) -> usize {
        let started = Instant::now();
        while started.elapsed() < time {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100))
                && let Some(p) = m.payload()
            {
                self.seen.insert(String::from_utf8_lossy(p).into_owned());
            }
        }
        self.seen.len()
    }
}

/// Where a record is: partition and offset.
pub type At = (i32, i64);

/// Every record of `topic` as payload -> where (each place, duplicates included), read until
/// nothing arrived for `quiet` (stopping at the high watermark stopped short on tansu).
pub fn locate_all(
    broker: &str,
    topic: &str,
    read_committed: bool,
    quiet: Duration,
) -> BTreeMap<String, Vec<At>> {
    let consumer = from_start(broker, topic, read_committed, "streamjob-test-evidence");
    let mut out: BTreeMap<String, Vec<At>> = BTreeMap::new();
    let mut idle = Instant::now();
    while idle.elapsed() < quiet {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            out.entry(payload)
                .or_default()
                .push((m.partition(), m.offset()));
            idle = Instant::now();
        }
    }
    out
}

/// `text` without terminal colour codes (`ESC [ ... m`), which the worker's log has.
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
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
    strip_colours(log)
        .lines()
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
                line: l.trim().to_string(),
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

/// Writes `missing.txt` into `dir` and returns it for the failure message: the missing ids
/// in runs (consecutive in their input partition, alike in whether the output log holds
/// them), each with its input offsets, its output offsets if the log holds it, and the
/// nearest records of the same input partition in the output log before and after it with
/// the transactions that wrote them. `input_order` lists the ids in the order produced.
pub fn report_missing(
    dir: &Path,
    broker: &str,
    input: &str,
    output: &str,
    input_order: &[String],
    missing: &BTreeSet<String>,
    worker_log: &str,
) -> String {
    let quiet = Duration::from_secs(5);
    let inputs = locate_all(broker, input, false, quiet);
    let uncommitted = locate_all(broker, output, false, quiet);
    let committed = locate_all(broker, output, true, quiet);
    let txns = transactions(worker_log);
    let mut text = String::new();
    writeln!(
        text,
        "{} missing ids; a final full read_committed read still misses {}; {} of them are in \
         the output log (read_uncommitted); {} pre-committed transactions in the worker log",
        missing.len(),
        missing
            .iter()
            .filter(|id| !committed.contains_key(*id))
            .count(),
        missing
            .iter()
            .filter(|id| uncommitted.contains_key(*id))
            .count(),
        txns.len()
    )
    .unwrap();
    let unplaced: Vec<&String> = missing
        .iter()
        .filter(|id| !inputs.contains_key(*id))
        .collect();
    if !unplaced.is_empty() {
        writeln!(
            text,
            "{} missing ids are not in the input topic either: {:?}",
            unplaced.len(),
            &unplaced[..unplaced.len().min(10)]
        )
        .unwrap();
    }
    let mut by_partition: BTreeMap<i32, Vec<&String>> = BTreeMap::new();
    for id in input_order {
        if let Some(at) = inputs.get(id) {
            by_partition.entry(at[0].0).or_default().push(id);
        }
    }
    for (p, ids) in &by_partition {
        let mut i = 0;
        while i < ids.len() {
            if !missing.contains(ids[i]) {
                i += 1;
                continue;
            }
            // Where the output log holds it: its output partition, or none.
            let kind = |id: &String| uncommitted.get(id).map(|at| at[0].0);
            let start = i;
            while i < ids.len() && missing.contains(ids[i]) && kind(ids[i]) == kind(ids[start]) {
                i += 1;
            }
            let run = &ids[start..i];
            let offsets = |id: &String| inputs[id][0].1;
            write!(
                text,
                "input p{p} offsets {}-{} ({} .. {}, {} ids): ",
                offsets(run[0]),
                offsets(run[run.len() - 1]),
                run[0],
                run[run.len() - 1],
                run.len()
            )
            .unwrap();
            match kind(run[0]) {
                None => writeln!(text, "absent from the output log"),
                Some(q) => writeln!(
                    text,
                    "in the output log at p{q} offsets {}-{}, hidden from read_committed",
                    uncommitted[run[0]][0].1,
                    uncommitted[run[run.len() - 1]][0].1
                ),
            }
            .unwrap();
            let before = ids[..start]
                .iter()
                .rev()
                .find(|x| uncommitted.contains_key(**x));
            let after = ids[i..].iter().find(|x| uncommitted.contains_key(**x));
            for (what, n) in [("before", before), ("after", after)] {
                if let Some(n) = n {
                    let at = uncommitted[*n][0];
                    writeln!(
                        text,
                        "    {what}: {n} at output {at:?}: {}",
                        txn_of(&txns, at)
                    )
                    .unwrap();
                }
            }
        }
    }
    std::fs::write(dir.join("missing.txt"), &text).unwrap();
    text
}
