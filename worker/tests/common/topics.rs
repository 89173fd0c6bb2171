//! Topics on the test broker (STREAMJOB_TEST_KAFKA): unique names, creation, records with
//! given partitions and timestamps.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub fn broker() -> String {
    std::env::var("STREAMJOB_TEST_KAFKA").expect(
        "STREAMJOB_TEST_KAFKA is not set: run the tests with `make test`, which starts a broker \
         (scripts/with-kafka.sh), or point it at a Kafka broker",
    )
}

pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// Creates `name` with `partitions` and waits until they are visible.
pub fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker())
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
        .set("bootstrap.servers", broker())
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

/// Writes `(partition, payload, timestamp ms)` records in this order; waits for the acks.
pub fn produce_at(topic: &str, records: &[(i32, String, i64)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (partition, payload, ts) in records {
        let mut record = BaseRecord::<(), _>::to(topic)
            .payload(payload.as_bytes())
            .partition(*partition)
            .timestamp(*ts);
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
