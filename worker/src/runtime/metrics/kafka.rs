//! Kafka metrics: consumer lag per partition (from the broker's high watermark or last stable
//! offset as librdkafka's statistics report it), records produced (acknowledged by the
//! brokers) and transactions committed or aborted.
//!
//! The connectors own their counters (atomics written by one thread: the consumer's or
//! producer's poll thread) and register them here once, when a reader or writer is created;
//! the scrape reads them. Nothing on the record path takes a lock.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

/// Lag of one partition a source reads: records between its next offset and the end of the
/// partition's log. Owned by the reader; gone from the scrape when the reader is dropped.
#[derive(Debug)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// Records behind, or [`UNKNOWN_LAG`] before the first statistics arrive.
    lag: AtomicI64,
}

/// No statistics about the partition yet.
pub const UNKNOWN_LAG: i64 = -1;

impl PartitionLag {
    #[inline]
    pub fn set(&self, lag: i64) {
        self.lag.store(lag.max(0), Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<u64> {
        u64::try_from(self.lag.load(Ordering::Relaxed)).ok()
    }
}

/// Records a sink's producers delivered to a topic (acknowledged by the brokers).
#[derive(Debug)]
pub struct Produced {
    pub topic: String,
    pub subtask: u32,
    count: AtomicU64,
}

impl Produced {
    /// One more delivery; called only from the producer's poll thread (a plain load and
    /// store, no locked read-modify-write).
    #[inline]
    pub fn delivered(&self, n: u64) {
        self.count.store(
            self.count.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct Registry {
    lags: Mutex<Vec<Weak<PartitionLag>>>,
    produced: Mutex<Vec<Arc<Produced>>>,
    committed: AtomicU64,
    aborted: AtomicU64,
}

static KAFKA: LazyLock<Registry> = LazyLock::new(Registry::default);

/// A source reader took `topic/partition`: its lag gauge (unknown until measured).
pub fn partition_lag(topic: &str, partition: i32) -> Arc<PartitionLag> {
    let lag = Arc::new(PartitionLag {
        topic: topic.to_string(),
        partition,
        lag: AtomicI64::new(UNKNOWN_LAG),
    });
    let mut lags = KAFKA.lags.lock().unwrap();
    lags.retain(|w| w.strong_count() > 0);
    lags.push(Arc::downgrade(&lag));
    lag
}

/// The delivery counter of a sink subtask writing to `topic`; a restarted subtask continues
/// the count of its earlier run.
pub fn produced(topic: &str, subtask: u32) -> Arc<Produced> {
    let mut all = KAFKA.produced.lock().unwrap();
    if let Some(p) = all
        .iter()
        .find(|p| p.topic == topic && p.subtask == subtask)
    {
        return p.clone();
    }
    let p = Arc::new(Produced {
        topic: topic.to_string(),
        subtask,
        count: AtomicU64::new(0),
    });
    all.push(p.clone());
    p
}

/// A Kafka transaction of an exactly-once sink committed.
pub fn transaction_committed() {
    KAFKA.committed.fetch_add(1, Ordering::Relaxed);
}

/// A Kafka transaction of an exactly-once sink was aborted by this process (explicitly, or
/// by initialising its transactional id, which aborts what an earlier run left open).
pub fn transaction_aborted() {
    transactions_aborted(1);
}

/// `n` transactions aborted at once (the open ones a restarted sink fences).
pub fn transactions_aborted(n: u64) {
    KAFKA.aborted.fetch_add(n, Ordering::Relaxed);
}

/// What the scrape and the summary show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KafkaSnapshot {
    /// (topic, partition, records behind), sorted, for partitions whose lag is known.
    pub lag: Vec<(String, i32, u64)>,
    /// (topic, subtask, records delivered), sorted.
    pub produced: Vec<(String, u32, u64)>,
    pub transactions_committed: u64,
    pub transactions_aborted: u64,
}

impl KafkaSnapshot {
    /// Records behind over every partition this process reads; `None` without a Kafka
    /// source (or before its first measurement).
    pub fn total_lag(&self) -> Option<u64> {
        (!self.lag.is_empty()).then(|| self.lag.iter().map(|l| l.2).sum())
    }
}

pub fn snapshot() -> KafkaSnapshot {
    let mut lag: Vec<_> = KAFKA
        .lags
        .lock()
        .unwrap()
        .iter()
        .filter_map(Weak::upgrade)
        .filter_map(|l| Some((l.topic.clone(), l.partition, l.get()?)))
        .collect();
    lag.sort();
    // Two readers of one partition in one process (a restart overlapping its predecessor's
    // drop): the newest registered value is as good as any; show one.
    lag.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let mut produced: Vec<_> = KAFKA
        .produced
        .lock()
        .unwrap()
        .iter()
        .map(|p| (p.topic.clone(), p.subtask, p.get()))
        .collect();
    produced.sort();
    KafkaSnapshot {
        lag,
        produced,
        transactions_committed: KAFKA.committed.load(Ordering::Relaxed),
        transactions_aborted: KAFKA.aborted.load(Ordering::Relaxed),
    }
}

/// The Kafka families of the Prometheus exposition.
pub(super) fn encode(
    enc: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    job: &str,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::MetricType;
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;

    use super::encode::{Labels, family};
    let k = snapshot();
    let job_only = || -> Labels { vec![("job", job.to_string())] };
    family(
        enc,
        "kafka_consumer_lag",
        "Records between a Kafka source's position and the end of the partition (high watermark, or last stable offset for read_committed)",
        None,
        MetricType::Gauge,
        k.lag.iter().map(|(t, p, lag)| {
            let labels: Labels = vec![
                ("job", job.to_string()),
                ("topic", t.clone()),
                ("partition", p.to_string()),
            ];
            (labels, ConstGauge::new(*lag as i64))
        }),
    )?;
    family(
        enc,
        "kafka_records_produced",
        "Records a Kafka sink subtask delivered (acknowledged by the brokers)",
        None,
        MetricType::Counter,
        k.produced.iter().map(|(t, s, n)| {
            let labels: Labels = vec![
                ("job", job.to_string()),
                ("topic", t.clone()),
                ("subtask", s.to_string()),
            ];
            (labels, ConstCounter::new(*n))
        }),
    )?;
    for (name, help, n) in [
        (
            "kafka_transactions_committed",
            "Kafka transactions committed by exactly-once sinks",
            k.transactions_committed,
        ),
        (
            "kafka_transactions_aborted",
            "Kafka transactions of exactly-once sinks this process aborted (left open by a failed run)",
            k.transactions_aborted,
        ),
    ] {
        family(
            enc,
            name,
            help,
            None,
            MetricType::Counter,
            [(job_only(), ConstCounter::new(n))],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_shown_while_its_reader_holds_it_and_counters_continue_after_a_restart() {
        let topic = "metrics-kafka-unit";
        let mine = |s: &KafkaSnapshot| -> Vec<(String, i32, u64)> {
            s.lag.iter().filter(|l| l.0 == topic).cloned().collect()
        };
        let p0 = partition_lag(topic, 0);
        let p1 = partition_lag(topic, 1);
        assert_eq!(mine(&snapshot()), vec![], "unknown lag is not shown");
        p0.set(5);
        p1.set(7);
        assert_eq!(
            mine(&snapshot()),
            vec![(topic.into(), 0, 5), (topic.into(), 1, 7)]
        );
        drop(p1);
        assert_eq!(mine(&snapshot()), vec![(topic.into(), 0, 5)]);
        let a = produced(topic, 3);
        a.delivered(10);
        drop(a);
        produced(topic, 3).delivered(2);
        assert!(snapshot().produced.contains(&(topic.into(), 3, 12)));
        let before = snapshot();
        transaction_committed();
        transactions_aborted(2);
        let after = snapshot();
        assert!(after.transactions_committed > before.transactions_committed);
        assert!(after.transactions_aborted >= before.transactions_aborted + 2);
    }
}
