//! Kafka sink: one producer per subtask.
//!
//! - `none`: records are sent and delivery failures are only counted and logged.
//! - `at-least-once`: acks=all, unlimited retries; every delivery report is checked and a
//!   failed delivery fails the job (never a silent drop); the end of input waits until every
//!   record is acknowledged. librdkafka retries broker errors, so a broker restart during a
//!   run loses nothing.
//! - `exactly-once`: a transactional producer per subtask (`<prefix>-<subtask>`), so a
//!   restarted job fences the old one and its open transaction is aborted. Until checkpoints
//!   exist (issue #8) the transaction commits every `commitIntervalMs` and at end of input: a
//!   failure loses nothing that was committed, but the records of the open transaction are
//!   only written again if the source re-reads them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use tracing::{info, warn};

use super::{ClientProperties, DeliveryGuarantee};
use crate::api::functions::{Sink, SinkWriter};
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;

/// How long the end of input waits for outstanding deliveries and transaction commits.
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes `T` into `key` and `value`; returns whether the record has a key.
type Encode<T> =
    Arc<dyn Fn(&T, &mut Vec<u8>, &mut Vec<u8>) -> Result<bool, BoxError> + Send + Sync>;

#[derive(Debug, Clone)]
struct Settings {
    client: ClientProperties,
    topic: String,
    guarantee: DeliveryGuarantee,
    transactional_id_prefix: Option<String>,
    commit_every: Duration,
}

/// Writes records to a Kafka topic (Flink's `KafkaSink`). Build with [`KafkaSink::builder`].
pub struct KafkaSink<T> {
    settings: Settings,
    encode: Encode<T>,
}

pub struct KafkaSinkBuilder {
    settings: Settings,
}

impl KafkaSink<String> {
    pub fn builder() -> KafkaSinkBuilder {
        KafkaSinkBuilder {
            settings: Settings {
                client: ClientProperties::default(),
                topic: String::new(),
                guarantee: DeliveryGuarantee::AtLeastOnce,
                transactional_id_prefix: None,
                commit_every: Duration::from_secs(5),
            },
        }
    }
}

impl KafkaSinkBuilder {
    pub fn bootstrap_servers(mut self, servers: &str) -> Self {
        self.settings.client.bootstrap_servers = servers.to_string();
        self
    }
    pub fn topic(mut self, topic: &str) -> Self {
        self.settings.topic = topic.to_string();
        self
    }
    pub fn delivery_guarantee(mut self, guarantee: DeliveryGuarantee) -> Self {
        self.settings.guarantee = guarantee;
        self
    }
    /// Prefix of the transactional ids (`exactly-once`); unique per job in the Kafka cluster.
    pub fn transactional_id_prefix(mut self, prefix: &str) -> Self {
        self.settings.transactional_id_prefix = Some(prefix.to_string());
        self
    }
    /// With `exactly-once`, how often the open transaction commits.
    pub fn commit_interval(mut self, every: Duration) -> Self {
        self.settings.commit_every = every;
        self
    }
    /// Any librdkafka producer property.
    pub fn property(mut self, key: &str, value: &str) -> Self {
        self.settings
            .client
            .properties
            .insert(key.to_string(), value.to_string());
        self
    }
    pub fn client_properties(mut self, client: ClientProperties) -> Self {
        self.settings.client = client;
        self
    }

    /// A sink of strings as UTF-8 payloads without keys (Flink's `SimpleStringSchema`).
    pub fn build(self) -> KafkaSink<String> {
        self.build_with(|s: &String, _key, value| {
            value.extend_from_slice(s.as_bytes());
            Ok(false)
        })
    }

    /// A sink that writes each record's key and payload with `encode`, which returns whether
    /// the record has a key. Records with equal keys go to the same partition.
    pub fn build_with<T>(
        self,
        encode: impl Fn(&T, &mut Vec<u8>, &mut Vec<u8>) -> Result<bool, BoxError>
        + Send
        + Sync
        + 'static,
    ) -> KafkaSink<T> {
        KafkaSink {
            settings: self.settings,
            encode: Arc::new(encode),
        }
    }
}

/// Collects delivery failures reported by librdkafka's callback.
#[derive(Default)]
pub(crate) struct DeliveryReports {
    first_failure: Mutex<Option<String>>,
    failures: std::sync::atomic::AtomicU64,
}

impl ClientContext for DeliveryReports {}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut first = self.first_failure.lock().unwrap();
            if first.is_none() {
                *first = Some(format!(
                    "delivery to {}/{} failed: {e}",
                    m.topic(),
                    m.partition()
                ));
            }
        }
    }
}

impl<T: Send + 'static> Sink<T> for KafkaSink<T> {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn create_writer(&self, ctx: &SubtaskContext) -> Result<Box<dyn SinkWriter<T>>, BoxError> {
        let s = &self.settings;
        let client_id = format!("streamjob-{}-{}", ctx.job_name, ctx.subtask);
        let mut ours: Vec<(&str, String)> = vec![
            ("client.id", client_id),
            ("linger.ms", "5".into()),
            ("batch.num.messages", "10000".into()),
        ];
        let txn_id;
        match s.guarantee {
            DeliveryGuarantee::None => ours.push(("acks", "1".into())),
            DeliveryGuarantee::AtLeastOnce => {
                // Not idempotent: an idempotent producer turns a broker that lost its
                // producer state (a restart of some brokers) into a fatal error, and
                // at-least-once accepts the duplicates plain retries may cause.
                ours.push(("acks", "all".into()));
                ours.push(("enable.idempotence", "false".into()));
                ours.push(("message.send.max.retries", "2147483647".into()));
            }
            DeliveryGuarantee::ExactlyOnce => {
                let prefix = s
                    .transactional_id_prefix
                    .as_deref()
                    .ok_or("exactly-once needs a transactionalIdPrefix")?;
                txn_id = format!("{prefix}-{}", ctx.subtask);
                ours.push(("transactional.id", txn_id.clone()));
                // Longer than the commit interval, so an open transaction is not expired by
                // the broker while the job is healthy; within the brokers' default maximum
                // (transaction.max.timeout.ms, 15 minutes).
                let timeout = (s.commit_every.as_millis() as u64 * 4).clamp(60_000, 900_000);
                ours.push(("transaction.timeout.ms", timeout.to_string()));
            }
        }
        let ours_ref: Vec<(&str, &str)> = ours.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let producer: BaseProducer<DeliveryReports> = s
            .client
            .client_config(&ours_ref)
            .create_with_context(DeliveryReports::default())
            .map_err(|e| format!("cannot create Kafka producer: {e}"))?;
        if s.guarantee == DeliveryGuarantee::ExactlyOnce {
            // Fences a previous incarnation of this subtask and aborts its open transaction.
            producer
                .init_transactions(Duration::from_secs(60))
                .map_err(|e| format!("cannot initialise Kafka transactions: {e}"))?;
            producer
                .begin_transaction()
                .map_err(|e| format!("cannot begin a Kafka transaction: {e}"))?;
        }
        Ok(Box::new(Writer {
            producer,
            settings: s.clone(),
            encode: self.encode.clone(),
            key: Vec::new(),
            value: Vec::new(),
            since_poll: 0,
            last_commit: Instant::now(),
            in_transaction: 0,
        }))
    }
}

struct Writer<T> {
    producer: BaseProducer<DeliveryReports>,
    settings: Settings,
    encode: Encode<T>,
    key: Vec<u8>,
    value: Vec<u8>,
    since_poll: u32,
    last_commit: Instant,
    /// Records sent in the open transaction.
    in_transaction: u64,
}

impl<T> Writer<T> {
    /// Serves delivery callbacks and turns a reported failure into an error.
    fn check_deliveries(&self) -> Result<(), BoxError> {
        self.producer.poll(Duration::ZERO);
        let ctx = self.producer.context();
        if let Some(f) = ctx.first_failure.lock().unwrap().take() {
            if self.settings.guarantee == DeliveryGuarantee::None {
                let n = ctx.failures.load(std::sync::atomic::Ordering::Relaxed);
                warn!(failures = n, "Kafka sink (delivery guarantee none): {f}");
            } else {
                return Err(format!("Kafka sink to '{}': {f}", self.settings.topic).into());
            }
        }
        Ok(())
    }

    fn commit_transaction(&mut self) -> Result<(), BoxError> {
        self.producer
            .commit_transaction(FINISH_TIMEOUT)
            .map_err(|e| format!("cannot commit the Kafka transaction: {e}"))?;
        info!(records = self.in_transaction, "committed Kafka transaction");
        self.in_transaction = 0;
        self.last_commit = Instant::now();
        Ok(())
    }
}

impl<T: Send> SinkWriter<T> for Writer<T> {
    fn snapshot(&mut self, _checkpoint: u64) -> Result<Vec<u8>, BoxError> {
        if self.settings.guarantee == DeliveryGuarantee::ExactlyOnce {
            // Two-phase commit needs a transaction per pending checkpoint (a producer pool);
            // committing here, before the checkpoint is durable, would not be exactly once.
            return Err(
                "exactly-once Kafka sinks do not support checkpoints yet (issue #8); use \
                        at-least-once with checkpointing, or exactly-once without"
                    .into(),
            );
        }
        // At-least-once: everything before the barrier is acknowledged by the brokers.
        self.producer.flush(FINISH_TIMEOUT).map_err(|e| {
            format!(
                "Kafka sink to '{}': cannot deliver every record: {e}",
                self.settings.topic
            )
        })?;
        self.check_deliveries()?;
        Ok(Vec::new())
    }

    fn write(&mut self, item: T) -> Result<(), BoxError> {
        self.key.clear();
        self.value.clear();
        let has_key = (self.encode)(&item, &mut self.key, &mut self.value)?;
        let mut record = BaseRecord::to(&self.settings.topic).payload(&self.value);
        if has_key {
            record = record.key(&self.key);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                // The local queue is full: wait for deliveries to make room (backpressure).
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(10));
                    self.check_deliveries()?;
                }
                Err((e, _)) => {
                    return Err(format!(
                        "cannot send to Kafka topic '{}': {e}",
                        self.settings.topic
                    )
                    .into());
                }
            }
        }
        self.in_transaction += 1;
        self.since_poll += 1;
        if self.since_poll >= 1024 {
            self.since_poll = 0;
            self.check_deliveries()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BoxError> {
        self.check_deliveries()?;
        if self.settings.guarantee == DeliveryGuarantee::ExactlyOnce
            && self.in_transaction > 0
            && self.last_commit.elapsed() >= self.settings.commit_every
        {
            self.commit_transaction()?;
            self.producer
                .begin_transaction()
                .map_err(|e| format!("cannot begin a Kafka transaction: {e}"))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        if self.settings.guarantee == DeliveryGuarantee::ExactlyOnce {
            // Commits flush first and fail if any record of the transaction failed.
            self.commit_transaction()?;
        } else {
            self.producer.flush(FINISH_TIMEOUT).map_err(|e| {
                format!(
                    "Kafka sink to '{}': cannot deliver every record: {e}",
                    self.settings.topic
                )
            })?;
        }
        self.check_deliveries()
    }
}
