//! Kafka topics for tests run under scripts/with-kafka.sh (`make test`): create, produce to
//! chosen partitions, read everything with either isolation level.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// The broker scripts/with-kafka.sh started.
pub fn broker() -> String {
    std::env::var("STREAMJOB_TEST_KAFKA").expect(
        "STREAMJOB_TEST_KAFKA is not set: run the tests with `make test`, which starts a broker \
         (scripts/with-kafka.sh), or point it at a Kafka broker",
    )
}

/// A name no other test run uses.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// Creates `name` with `partitions` partitions and waits until they are visible.
pub fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&broker(), name, partitions);
}

/// [`create_topic`] on `broker`.
pub fn create_topic_on(broker: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        match rt.block_on(admin.create_topics([&topic], &opts)) {
            Ok(results) if results.iter().all(|r| r.is_ok()) => break,
            other if started.elapsed() > Duration::from_secs(20) => {
                panic!("cannot create topic {name}: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .unwrap();
    super::wait_until(
        Duration::from_secs(20),
        format!("topic {name} not visible"),
        || {
            consumer
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .map(|m| m.topics()[0].partitions().len())
                .unwrap_or(0)
                >= partitions as usize
        },
    );
}

/// Produces each `(partition, payload)` in order; waits until all are acknowledged.
pub fn produce_to(topic: &str, records: &[(i32, String)]) {
    produce(topic, records.iter().map(|(p, v)| (*p, v, None)));
}

/// Writes `(partition, payload, timestamp ms)` records in this order; waits for the acks.
pub fn produce_at(topic: &str, records: &[(i32, String, i64)]) {
    produce(topic, records.iter().map(|(p, v, ts)| (*p, v, Some(*ts))));
}

fn produce<'a>(topic: &str, records: impl Iterator<Item = (i32, &'a String, Option<i64>)>) {
    produce_on(&broker(), topic, records);
}

/// Writes `(partition, payload, timestamp ms)` records to `topic` on `broker` in this order;
/// waits for the acks.
pub fn produce_on<'a>(
    broker: &str,
    topic: &str,
    records: impl Iterator<Item = (i32, &'a String, Option<i64>)>,
) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (partition, payload, ts) in records {
        let mut record = BaseRecord::<(), _>::to(topic)
            .payload(payload.as_bytes())
            .partition(partition);
        if let Some(ts) = ts {
            record = record.timestamp(ts);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// A recent whole minute (ms): old timestamps could fall to the broker's time retention.
pub fn recent_minute() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now / 60_000 - 10) * 60_000
}

/// A consumer of every partition of `topic` from its start, outside any group's offsets
/// (`group` only names it), with the given isolation level. A fetch out of range (a broker
/// restarting, tansu's watermarks catching up) starts the partition over: librdkafka's
/// default would skip to its end, and a reader of a job's output then missed thousands of
/// records the log held.
pub fn from_start(broker: &str, topic: &str, read_committed: bool, group: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
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
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// A record as (key, payload, partition).
pub type Record = (Option<String>, String, i32);

/// Every record now in `topic` on `broker` (read_committed or read_uncommitted): read until
/// every partition reached its high watermark, or nothing arrived for `quiet` (transaction
/// markers take offsets that carry no record; an open transaction's records never arrive for
/// read_committed).
pub fn records(broker: &str, topic: &str, read_committed: bool, quiet: Duration) -> Vec<Record> {
    let consumer = from_start(broker, topic, read_committed, &unique("check"));
    let mut ends = BTreeMap::new();
    for ((_, p), _) in consumer.assignment().unwrap().to_topic_map() {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        ends.insert(p, high);
    }
    let mut out = Vec::new();
    let mut idle = Instant::now();
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    while idle.elapsed() < quiet
        && ends
            .iter()
            .any(|(p, &h)| positions.get(p).copied().unwrap_or(0) < h - 1)
    {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            positions.insert(m.partition(), m.offset());
            out.push((
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                m.partition(),
            ));
            idle = Instant::now();
        }
    }
    out
}

/// The payloads of every record now in `topic` (read_committed or read_uncommitted).
pub fn payloads(topic: &str, read_committed: bool) -> Vec<String> {
    payloads_until_quiet(topic, read_committed, Duration::from_secs(3))
}

/// [`payloads`], giving up once nothing arrived for `quiet` (for polling a running job's
/// output: an open transaction's records never arrive for read_committed).
pub fn payloads_until_quiet(topic: &str, read_committed: bool, quiet: Duration) -> Vec<String> {
    records(&broker(), topic, read_committed, quiet)
        .into_iter()
        .map(|(_, payload, _)| payload)
        .collect()
}
