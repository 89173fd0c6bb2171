//! Kafka sink: producers per subtask.
//!
//! - `none`: records are sent and delivery failures are only counted and logged.
//! - `at-least-once`: acks=all, unlimited retries; every delivery report is checked and a
//!   failed delivery fails the job (never a silent drop); every checkpoint barrier and the
//!   end of input wait until every record is acknowledged. librdkafka retries broker errors,
//!   so a broker restart during a run loses nothing; a restore replays what came after the
//!   checkpoint, so output may repeat.
//! - `exactly-once` with checkpointing: two-phase commit over a pool of transactional
//!   producers, see `two_phase`.
//! - `exactly-once` without checkpointing: one transactional producer per subtask
//!   (`<prefix>-<subtask>-0`); the transaction commits every `commitIntervalMs` and at end of
//!   input. A restarted job fences the old producer and its open transaction is aborted: a
//!   failure loses nothing that was committed, but the records of the open transaction are
//!   only written again if the source re-reads them.
//!
//! With `exactly-once`, records the broker confirms only as duplicates of a send it never
//! acknowledged (DUPLICATE_SEQUENCE_NUMBER, no offset) fail the writer before their
//! transaction commits: some brokers (tansu on S3, killed at the wrong moment) answer so
//! without holding the records, and the sink cannot tell them from Kafka, which holds them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use tracing::{debug, info, warn};

use super::logs::LogLimiter;
use super::{ClientProperties, DeliveryGuarantee, KafkaPartitioner};
use crate::api::functions::{Sink, SinkWriter};
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;
use crate::runtime::message::FINAL_CHECKPOINT;
use crate::runtime::metrics::kafka as metrics;

/// How long the sink waits for the brokers to answer at start, unless the client's
/// `socket.connection.setup.timeout.ms` says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the end of input waits for outstanding deliveries and transaction commits.
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long initialising a transactional producer, or committing a restored transaction,
/// may take.
const INIT_TIMEOUT: Duration = Duration::from_secs(60);
/// librdkafka statistics interval of two-phase-commit producers: they report the producer id
/// and epoch. A producer reports within this time after its initialisation.
const STATS_INTERVAL_MS: &str = "100";
/// Producers per subtask with checkpointing: one open transaction, one pending for the
/// checkpoint in flight, one just committed (see the module docs), and spares for a
/// completion that arrives after the next barrier or a failed checkpoint.
pub const DEFAULT_PRODUCER_POOL_SIZE: u32 = 5;
/// Version of the checkpointed sink state.
const STATE_VERSION: u32 = 1;

/// What an encoder wrote for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// The record has a key (the bytes written to `key`).
    pub key: bool,
    /// The record has a value; `false` writes a tombstone (null value), whatever the format.
    pub value: bool,
}

/// Writes `T` into `key` and `value` (Kafka headers into the list).
type Encode<T> = Arc<
    dyn Fn(&T, &mut Vec<u8>, &mut Vec<u8>, &mut Vec<(String, Vec<u8>)>) -> Result<Encoded, BoxError>
        + Send
        + Sync,
>;

#[derive(Debug, Clone)]
struct Settings {
    client: ClientProperties,
    topic: String,
    guarantee: DeliveryGuarantee,
    transactional_id_prefix: Option<String>,
    commit_every: Duration,
    transaction_timeout: Option<Duration>,
    pool_size: u32,
    partitioner: KafkaPartitioner,
}

impl Settings {
    /// A property as librdkafka sees it: secrets win over properties.
    fn effective(&self, key: &str) -> Option<&str> {
        self.client
            .secrets
            .get(key)
            .or_else(|| self.client.properties.get(key))
            .map(String::as_str)
    }

    fn bootstrap_servers(&self) -> &str {
        self.effective("bootstrap.servers")
            .unwrap_or(&self.client.bootstrap_servers)
    }
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
                transaction_timeout: None,
                pool_size: DEFAULT_PRODUCER_POOL_SIZE,
                partitioner: KafkaPartitioner::Murmur2,
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
    /// With `exactly-once` and no checkpointing, how often the open transaction commits.
    pub fn commit_interval(mut self, every: Duration) -> Self {
        self.settings.commit_every = every;
        self
    }
    /// With `exactly-once`, the transaction timeout (librdkafka's `transaction.timeout.ms`,
    /// at most the brokers' `transaction.max.timeout.ms`). With checkpointing it must outlast
    /// a checkpoint interval plus a restart. Default: 15 minutes with checkpointing, four
    /// commit intervals (at least a minute) without.
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.settings.transaction_timeout = Some(timeout);
        self
    }
    /// With `exactly-once` and checkpointing, the transactional producers per subtask
    /// (default [`DEFAULT_PRODUCER_POOL_SIZE`], at least 3).
    pub fn producer_pool_size(mut self, size: u32) -> Self {
        self.settings.pool_size = size.max(3);
        self
    }
    /// How keyed records are spread over partitions (default: murmur2, as the Java client).
    pub fn partitioner(mut self, partitioner: KafkaPartitioner) -> Self {
        self.settings.partitioner = partitioner;
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
        self.build_with(|s: &String, _key, value, _headers| {
            value.extend_from_slice(s.as_bytes());
            Ok(Encoded {
                key: false,
                value: true,
            })
        })
    }

    /// A sink that writes each record's key, payload and headers with `encode`, which says
    /// whether the record has a key and a value. Records with equal keys go to the same
    /// partition.
    pub fn build_with<T>(
        self,
        encode: impl Fn(
            &T,
            &mut Vec<u8>,
            &mut Vec<u8>,
            &mut Vec<(String, Vec<u8>)>,
        ) -> Result<Encoded, BoxError>
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

/// Delivery failures reported by librdkafka's callback, and the producer id from its
/// statistics.
#[derive(Default)]
pub(crate) struct DeliveryReports {
    first_failure: Mutex<Option<String>>,
    failures: AtomicU64,
    producer_id: Mutex<Option<ProducerId>>,
    limiter: LogLimiter,
    /// Deliveries counted for the metrics (set once the writer knows its subtask).
    produced: OnceLock<Arc<metrics::Produced>>,
    /// First and last offset acknowledged per partition since the last `take_acked` (the
    /// two-phase commit logs them per transaction, to trace a record to its transaction).
    acked: Mutex<BTreeMap<i32, (i64, i64)>>,
    /// The first delivery the brokers confirmed without an offset, see `unproven`.
    unproven: Mutex<Option<String>>,
}

impl DeliveryReports {
    fn take_acked(&self) -> BTreeMap<i32, (i64, i64)> {
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// Offset ranges as `p0:12-340 p1:7-299`, for the logs.
fn offset_ranges(acked: &BTreeMap<i32, (i64, i64)>) -> String {
    acked
        .iter()
        .map(|(p, (first, last))| format!("p{p}:{first}-{last}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl ClientContext for DeliveryReports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.limiter.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.limiter.error(&error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        if let Some(p) = parse_eos(statistics) {
            *self.producer_id.lock().unwrap() = Some(p);
        }
    }
}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            // Called on the thread that polls this producer (the writer's): one writer.
            if let Some(p) = self.produced.get() {
                p.delivered(1);
            }
            let offset = m.offset();
            if offset < 0 {
                // librdkafka marks a retried batch delivered when the broker answers
                // DUPLICATE_SEQUENCE_NUMBER ("previous send succeeded but was not
                // acknowledged"), with no offset: the first record carries -1.
                let mut first = self.unproven.lock().unwrap();
                if first.is_none() {
                    *first = Some(format!("{}/{}", m.topic(), m.partition()));
                }
            } else {
                self.acked
                    .lock()
                    .unwrap()
                    .entry(m.partition())
                    .and_modify(|(first, last)| {
                        *first = (*first).min(offset);
                        *last = (*last).max(offset);
                    })
                    .or_insert((offset, offset));
            }
        } else if let Err((e, m)) = result {
            self.failures.fetch_add(1, Ordering::Relaxed);
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

/// How the writer delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `none` or `at-least-once`: one plain producer.
    Plain,
    /// `exactly-once` without checkpointing: one transactional producer, committed on a timer.
    Timed,
    /// `exactly-once` with checkpointing: a pool of transactional producers, two-phase commit.
    TwoPhase,
}

struct Slot {
    transactional_id: Option<String>,
    /// Shared with the thread that initialises it.
    producer: Arc<BaseProducer<DeliveryReports>>,
    /// Captured at the first pre-commit (two-phase commit only).
    producer_id: Option<ProducerId>,
    state: SlotState,
}

impl<T: Send + 'static> Sink<T> for KafkaSink<T> {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn create_writer(&self, ctx: &SubtaskContext) -> Result<Box<dyn SinkWriter<T>>, BoxError> {
        Ok(Box::new(self.writer(ctx)?))
    }
}

impl<T> KafkaSink<T> {
    fn writer(&self, ctx: &SubtaskContext) -> Result<Writer<T>, BoxError> {
        let s = &self.settings;
        let mode = match s.guarantee {
            DeliveryGuarantee::ExactlyOnce if ctx.checkpoints.is_some() => Mode::TwoPhase,
            DeliveryGuarantee::ExactlyOnce => Mode::Timed,
            _ => Mode::Plain,
        };
        let prefix = match mode {
            Mode::Plain => None,
            _ => Some(
                s.transactional_id_prefix
                    .clone()
                    .ok_or("exactly-once needs a transactionalIdPrefix")?,
            ),
        };
        if mode == Mode::TwoPhase {
            super::security::Security::of(&s.client)?;
        }
        let slots = match mode {
            Mode::Plain => 1,
            Mode::Timed => 1,
            Mode::TwoPhase => s.pool_size.max(3),
        };
        let client_id = format!("streamjob-{}-{}", ctx.job_name, ctx.subtask);
        // Created here (a bad property fails the setup); initialised in the background once
        // a restore committed what the restored checkpoint lists.
        let slots = (0..slots)
            .map(|slot| {
                let id = prefix
                    .as_deref()
                    .map(|p| transactional_id(p, ctx.subtask, slot));
                let producer = create_producer(s, mode, &client_id, id.as_deref())?;
                Ok(Slot {
                    transactional_id: id,
                    producer: Arc::new(producer),
                    producer_id: None,
                    state: SlotState::Free,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        check_reachable(s, &slots[0].producer)?;
        let produced = metrics::produced(&s.topic, ctx.subtask);
        for slot in &slots {
            let _ = slot.producer.context().produced.set(produced.clone());
        }
        let restoring = ctx
            .checkpoints
            .as_ref()
            .is_some_and(|c| c.restored().is_some());
        let mut writer = Writer {
            settings: s.clone(),
            encode: self.encode.clone(),
            mode,
            subtask: ctx.subtask,
            parallelism: ctx.parallelism,
            client_id,
            slots,
            current: 0,
            started: mode == Mode::Plain,
            init: None,
            fence: BTreeSet::new(),
            key: Vec::new(),
            value: Vec::new(),
            headers: Vec::new(),
            since_poll: 0,
            last_commit: Instant::now(),
            last_idle_poll: Instant::now(),
            in_transaction: 0,
            last_barrier: 0,
            finished: false,
            unreported_bytes: 0,
        };
        if !restoring {
            writer.begin_init();
        }
        Ok(writer)
    }
}

/// A producer of this sink; `transactional_id` makes it transactional.
fn create_producer(
    s: &Settings,
    mode: Mode,
    client_id: &str,
    transactional_id: Option<&str>,
) -> Result<BaseProducer<DeliveryReports>, String> {
    let mut ours: Vec<(&str, String)> = vec![
        ("client.id", client_id.to_string()),
        ("linger.ms", "5".into()),
        ("batch.num.messages", "10000".into()),
        ("partitioner", partitioner_name(s.partitioner).into()),
    ];
    match (mode, transactional_id) {
        (_, Some(id)) => {
            ours.push(("transactional.id", id.to_string()));
            // Connect to the brokers right away: with sparse connections the transaction
            // coordinator lookup of `init_transactions` often finds no usable connection yet
            // and retries after 500 ms.
            ours.push(("enable.sparse.connections", "false".into()));
            let timeout = s.transaction_timeout.unwrap_or(match mode {
                Mode::TwoPhase => Duration::from_secs(900),
                // Longer than the commit interval, so an open transaction is not expired by
                // the broker while the job is healthy; within the brokers' default maximum
                // (transaction.max.timeout.ms, 15 minutes).
                _ => Duration::from_millis(
                    (s.commit_every.as_millis() as u64 * 4).clamp(60_000, 900_000),
                ),
            });
            ours.push(("transaction.timeout.ms", timeout.as_millis().to_string()));
        }
        (_, None) if s.guarantee == DeliveryGuarantee::None => ours.push(("acks", "1".into())),
        (_, None) => {
            // Not idempotent: an idempotent producer turns a broker that lost its producer
            // state (a restart of some brokers) into a fatal error, and at-least-once accepts
            // the duplicates plain retries may cause.
            ours.push(("acks", "all".into()));
            ours.push(("enable.idempotence", "false".into()));
            ours.push(("message.send.max.retries", "2147483647".into()));
        }
    }
    let ours_ref: Vec<(&str, &str)> = ours.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut config = s.client.client_config(&ours_ref);
    if mode == Mode::TwoPhase {
        // After the user's properties: the producer id and epoch come from the statistics.
        config.set("statistics.interval.ms", STATS_INTERVAL_MS);
    }
    config
        .create_with_context(DeliveryReports::default())
        .map_err(|e| format!("cannot create Kafka producer: {e}"))
}

/// Fails fast, in one line, when the brokers cannot be reached: otherwise the first
/// records would wait in librdkafka's retries for minutes before anything is reported.
/// Waits at most the client's `socket.connection.setup.timeout.ms` when set, else
/// [`CONNECT_TIMEOUT`].
fn check_reachable(s: &Settings, producer: &BaseProducer<DeliveryReports>) -> Result<(), String> {
    let timeout = s
        .effective("socket.connection.setup.timeout.ms")
        .and_then(|v| v.parse().ok())
        .map_or(CONNECT_TIMEOUT, Duration::from_millis);
    let md = producer
        .client()
        .fetch_metadata(Some(&s.topic), timeout)
        .map_err(|e| {
            // A wrong CA or password looks like any transport failure to librdkafka.
            let cause = super::security::diagnose(&s.client, s.bootstrap_servers())
                .unwrap_or_else(|| e.to_string());
            format!(
                "Kafka sink: cannot reach the brokers {} within {} s: {cause}",
                s.bootstrap_servers(),
                timeout.as_secs_f64()
            )
        })?;
    match md.topics().iter().find(|t| t.name() == s.topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        _ => Err(format!(
            "Kafka sink: topic '{}' does not exist on {}",
            s.topic,
            s.bootstrap_servers()
        )),
    }
}

/// librdkafka's name of a partitioner. The `_random` variants send records without a key to
/// a random partition (librdkafka's plain `murmur2` would send them all to one).
fn partitioner_name(p: KafkaPartitioner) -> &'static str {
    match p {
        KafkaPartitioner::Murmur2 => "murmur2_random",
        KafkaPartitioner::Crc32 => "consistent_random",
        KafkaPartitioner::Fnv1a => "fnv1a_random",
    }
}

/// Waits until every record sent by `producer` is acknowledged (or failed), serving delivery
/// callbacks. rdkafka's `flush` waits in steps of 100 ms (its poll keeps waiting until the
/// timeout even after events arrived), which would add up to 100 ms to every checkpoint.
fn flush(producer: &BaseProducer<DeliveryReports>, timeout: Duration) -> KafkaResult<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match producer.flush(Duration::from_millis(1)) {
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                if Instant::now() < deadline => {}
            done => return done,
        }
    }
}

struct Writer<T> {
    settings: Settings,
    encode: Encode<T>,
    mode: Mode,
    subtask: u32,
    parallelism: u32,
    client_id: String,
    /// One producer, or the two-phase-commit pool; `current` receives the records.
    slots: Vec<Slot>,
    current: usize,
    /// Transactional producers are initialised and a transaction is open.
    started: bool,
    /// The background initialisation, started at creation or after a restore.
    init: Option<std::thread::JoinHandle<Result<(), String>>>,
    /// Transactional ids of a restored checkpoint that are not this subtask's own (old
    /// subtasks taken over, a larger old pool, another prefix): initialised once at start to
    /// abort what they left open, then dropped.
    fence: BTreeSet<String>,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    since_poll: u32,
    last_commit: Instant,
    last_idle_poll: Instant,
    /// Records sent in the open transaction.
    in_transaction: u64,
    /// Latest checkpoint barrier seen.
    last_barrier: u64,
    /// End of input: everything is committed.
    finished: bool,
    /// Key and payload bytes sent since the metrics were last told (once per flush).
    unreported_bytes: u64,
}

impl<T> Writer<T> {
    /// Tells the task's output bytes what was sent since the last call.
    fn report_bytes(&mut self) {
        crate::runtime::metrics::sink_wrote(std::mem::take(&mut self.unreported_bytes));
    }

    /// Starts initialising the transactional producers in the background (after a restore
    /// committed what it had to: initialising aborts open transactions).
    fn begin_init(&mut self) {
        if self.mode == Mode::Plain || self.init.is_some() {
            return;
        }
        let job = InitJob {
            settings: self.settings.clone(),
            client_id: self.client_id.clone(),
            own: self
                .slots
                .iter()
                .map(|s| {
                    (
                        s.transactional_id.clone().unwrap_or_default(),
                        s.producer.clone(),
                    )
                })
                .collect(),
            fence: std::mem::take(&mut self.fence).into_iter().collect(),
            probe: (self.mode == Mode::TwoPhase && self.subtask == 0)
                .then_some((self.parallelism, self.slots.len() as u32)),
        };
        self.init = Some(
            std::thread::Builder::new()
                .name(format!("kafka-sink-init-{}", self.subtask))
                .spawn(move || job.run())
                .expect("spawn a thread"),
        );
    }

    /// Waits for the initialisation and opens the first transaction.
    fn start(&mut self) -> Result<(), BoxError> {
        if self.started {
            return Ok(());
        }
        self.begin_init();
        let waited = Instant::now();
        if let Some(init) = self.init.take() {
            init.join()
                .unwrap_or_else(|_| Err("the Kafka sink's set-up thread panicked".into()))?;
        }
        debug!(
            waited_ms = waited.elapsed().as_millis() as u64,
            "Kafka sink producers ready"
        );
        self.current = 0;
        self.open_transaction()?;
        self.started = true;
        Ok(())
    }

    fn open_transaction(&mut self) -> Result<(), BoxError> {
        let slot = &mut self.slots[self.current];
        slot.producer
            .begin_transaction()
            .map_err(|e| format!("cannot begin a Kafka transaction: {e}"))?;
        slot.producer.context().take_acked();
        slot.state = SlotState::Open;
        self.in_transaction = 0;
        Ok(())
    }

    /// Serves delivery callbacks and turns a reported failure into an error.
    fn check_deliveries(&self) -> Result<(), BoxError> {
        self.check_slot(self.current)
    }

    fn check_slot(&self, slot: usize) -> Result<(), BoxError> {
        let producer = &self.slots[slot].producer;
        let name = self.slots[slot]
            .transactional_id
            .as_deref()
            .unwrap_or(&self.client_id);
        producer.poll(Duration::ZERO);
        // A fatal error (fenced, or the broker lost the producer's state) makes every later
        // call fail: fail now, so the job restarts from its last checkpoint with producers
        // initialised again instead of waiting for deliveries that cannot come.
        if let Some((code, reason)) = producer.client().fatal_error() {
            return Err(format!(
                "Kafka sink to '{}': the producer {name} hit a fatal error ({code:?}): {reason}",
                self.settings.topic,
            )
            .into());
        }
        let ctx = producer.context();
        if self.mode != Mode::Plain
            && let Some(at) = ctx.unproven.lock().unwrap().clone()
        {
            // The broker says it already had records it never acknowledged. Kafka keeps
            // what it wrote, but a broker that persists the producer's sequence before the
            // records (tansu on S3, killed in between) answers the same and has lost them:
            // committing would lose them silently. Not committing (the job restarts from its
            // last checkpoint and writes them again) is right in both cases.
            return Err(format!(
                "Kafka sink to '{}': the broker confirmed records of {at} only as duplicates of \
                 a send it had not acknowledged (DUPLICATE_SEQUENCE_NUMBER after a broker \
                 failure), without an offset; the sink cannot prove they are in the log, so \
                 the transaction of {name} is not committed and the job restarts from its \
                 last checkpoint",
                self.settings.topic,
            )
            .into());
        }
        if let Some(f) = ctx.first_failure.lock().unwrap().take() {
            if self.settings.guarantee == DeliveryGuarantee::None {
                let n = ctx.failures.load(Ordering::Relaxed);
                warn!(failures = n, "Kafka sink (delivery guarantee none): {f}");
            } else {
                return Err(format!("Kafka sink to '{}': {f}", self.settings.topic).into());
            }
        }
        Ok(())
    }

    fn flush_all(&self, slot: usize) -> Result<(), BoxError> {
        flush(&self.slots[slot].producer, FINISH_TIMEOUT).map_err(|e| {
            format!(
                "Kafka sink to '{}': cannot deliver every record: {e}",
                self.settings.topic
            )
        })?;
        self.check_slot(slot)
    }

    fn commit_transaction(&mut self) -> Result<(), BoxError> {
        let producer = &self.slots[self.current].producer;
        flush(producer, FINISH_TIMEOUT)
            .map_err(|e| format!("cannot commit the Kafka transaction: {e}"))?;
        // Every delivery report is in: a failed or unproven one must not be committed.
        self.check_slot(self.current)?;
        let producer = &self.slots[self.current].producer;
        producer
            .commit_transaction(FINISH_TIMEOUT)
            .map_err(|e| format!("cannot commit the Kafka transaction: {e}"))?;
        let acked = producer.context().take_acked();
        info!(
            records = self.in_transaction,
            offsets = %offset_ranges(&acked),
            "committed Kafka transaction"
        );
        metrics::transaction_committed();
        self.in_transaction = 0;
        self.last_commit = Instant::now();
        Ok(())
    }
}

impl<T: Send> SinkWriter<T> for Writer<T> {
    fn snapshot(&mut self, checkpoint: u64) -> Result<Vec<u8>, BoxError> {
        self.report_bytes();
        match self.mode {
            Mode::TwoPhase => {
                self.start()?;
                // After `finish` (the final snapshot) everything is pre-committed already.
                if !self.finished {
                    self.pre_commit(checkpoint)?;
                }
                self.state()
            }
            // Without checkpointing there are no barriers; nothing to restore.
            Mode::Timed => Ok(Vec::new()),
            Mode::Plain => {
                // At-least-once: everything before the barrier is acknowledged by the brokers.
                self.flush_all(self.current)?;
                Ok(Vec::new())
            }
        }
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), BoxError> {
        let own = [(self.subtask, state.to_vec())];
        self.restore_from_all(&own).map(|_| ())
    }

    fn restore_from_all(&mut self, states: &[(u32, Vec<u8>)]) -> Result<bool, BoxError> {
        if self.init.is_some() || (self.started && self.mode != Mode::Plain) {
            return Err("internal error: Kafka sink restored after it started".into());
        }
        for (old_subtask, bytes) in states {
            if owner_of(*old_subtask, self.parallelism) == self.subtask {
                self.recover(*old_subtask, bytes)?;
            }
        }
        if self.mode == Mode::Plain {
            // Switched away from exactly-once: still abort what the old ids left open.
            for id in std::mem::take(&mut self.fence) {
                let p = create_producer(&self.settings, Mode::Timed, &self.client_id, Some(&id))?;
                p.init_transactions(INIT_TIMEOUT)
                    .map_err(|e| format!("cannot fence Kafka transactional id {id}: {e}"))?;
            }
        }
        self.begin_init();
        Ok(true)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), BoxError> {
        if self.mode != Mode::TwoPhase || !self.started {
            return Ok(());
        }
        // Producers committed before this checkpoint's barrier are not in it or any later one.
        for s in &mut self.slots {
            if let SlotState::Committed { after_barrier } = s.state
                && after_barrier < checkpoint
            {
                s.state = SlotState::Free;
            }
        }
        self.commit_pending(checkpoint)
    }

    fn write(&mut self, item: T) -> Result<(), BoxError> {
        if !self.started {
            self.start()?;
        }
        self.key.clear();
        self.value.clear();
        self.headers.clear();
        let encoded = (self.encode)(&item, &mut self.key, &mut self.value, &mut self.headers)?;
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.settings.topic);
        if encoded.value {
            record = record.payload(&self.value);
        }
        if encoded.key {
            record = record.key(&self.key);
        }
        if !self.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
            for (k, v) in &self.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            record = record.headers(headers);
        }
        let producer = &self.slots[self.current].producer;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // The local queue is full: wait for deliveries to make room (backpressure).
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
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
        // The sizes librdkafka was handed (what `encode` left out is not sent).
        self.unreported_bytes += (if encoded.value { self.value.len() } else { 0 }
            + if encoded.key { self.key.len() } else { 0 }) as u64;
        self.in_transaction += 1;
        self.since_poll += 1;
        if self.since_poll >= 1024 {
            self.since_poll = 0;
            self.check_deliveries()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BoxError> {
        self.report_bytes();
        if self.finished {
            return Ok(());
        }
        self.start()?;
        self.check_deliveries()?;
        match self.mode {
            Mode::Timed
                if self.in_transaction > 0
                    && self.last_commit.elapsed() >= self.settings.commit_every =>
            {
                self.commit_transaction()?;
                self.open_transaction()?;
            }
            Mode::TwoPhase if self.last_idle_poll.elapsed() >= Duration::from_millis(200) => {
                // Producers not in use still queue statistics events: serve them.
                self.last_idle_poll = Instant::now();
                for (i, s) in self.slots.iter().enumerate() {
                    if i != self.current {
                        s.producer.poll(Duration::ZERO);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        self.report_bytes();
        if self.finished {
            return Ok(());
        }
        self.start()?;
        match self.mode {
            Mode::TwoPhase => {
                // Pre-commit only: the job's final checkpoint, written once every task has
                // finished, covers this transaction, and its completion
                // (`CheckpointComplete(FINAL_CHECKPOINT)`) commits it. A crash before then
                // replays from the previous checkpoint; the restart aborts this one.
                self.pre_commit(FINAL_CHECKPOINT)?;
            }
            // Commits flush first and fail if any record of the transaction failed.
            Mode::Timed => self.commit_transaction()?,
            Mode::Plain => self.flush_all(self.current)?,
        }
        self.finished = true;
        self.check_deliveries()
    }
}

#[path = "two_phase.rs"]
mod two_phase;
use two_phase::{InitJob, ProducerId, SlotState, owner_of, parse_eos, transactional_id};

/// The recovery path against a real broker (STREAMJOB_TEST_KAFKA).
#[cfg(test)]
#[path = "sink_recovery_tests.rs"]
mod recovery_tests;

/// The sink against librdkafka's mock cluster (faults a real broker cannot be made to show).
#[cfg(test)]
#[path = "sink_fault_tests.rs"]
mod fault_tests;
