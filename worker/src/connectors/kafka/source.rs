//! Kafka source: each subtask reads the partitions [`subtask_for_partition`] gives it, from
//! the configured starting offsets, optionally up to the offsets that were latest at start
//! (bounded), and commits what it has emitted to the consumer group.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Message as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use streamjob_crds::expr::Value;
use streamjob_crds::validate::Watermarks;

use super::logs::QuietContext;
use super::{ClientProperties, MissingTopic, OffsetReset, StartingOffsets, subtask_for_partition};
use crate::api::functions::{Collector, Source, SourceReader, SourceStatus};
use crate::connectors::SOURCE_BATCH;
use crate::error::BoxError;
use crate::operators::watermark_strategy::{TimestampAssignerFn, WatermarkStrategy};
use crate::runtime::context::SubtaskContext;
use crate::runtime::metrics::kafka::{PartitionLag, partition_lag};
use crate::runtime::time::{Clock, NO_TIMESTAMP, SplitWatermarks};

/// Timeout of metadata and offset lookups.
const LOOKUP: Duration = Duration::from_secs(10);

/// One consumed record, as the decoder sees it.
#[derive(Clone, Copy)]
pub struct KafkaRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, if the record has a timestamp.
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    /// `None` for a tombstone.
    pub payload: Option<&'a [u8]>,
    pub headers: Option<&'a BorrowedHeaders>,
}

/// Offsets and sizes only: payloads may be personal data and must not reach logs.
impl std::fmt::Debug for KafkaRecord<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaRecord")
            .field("position", &self.position())
            .field("timestamp", &self.timestamp)
            .field("key_bytes", &self.key.map(<[u8]>::len))
            .field("payload_bytes", &self.payload.map(<[u8]>::len))
            .finish()
    }
}

impl KafkaRecord<'_> {
    /// `topic/partition@offset`, for errors.
    pub fn position(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

type Decode<T> = Arc<dyn Fn(&KafkaRecord<'_>) -> Result<T, BoxError> + Send + Sync>;
type Extract<T> = Arc<dyn Fn(&T, &KafkaRecord<'_>) -> Result<i64, BoxError> + Send + Sync>;

/// Decides about a record that failed to decode: `Ok(())` drops it (skipped or dead-lettered),
/// an error fails the job.
pub type MalformedHandler =
    Box<dyn FnMut(&KafkaRecord<'_>, BoxError) -> Result<(), BoxError> + Send>;
type MalformedFactory =
    Arc<dyn Fn(&SubtaskContext) -> Result<MalformedHandler, BoxError> + Send + Sync>;

#[derive(Debug, Clone)]
struct Settings {
    client: ClientProperties,
    topics: Vec<String>,
    group_id: String,
    starting: StartingOffsets,
    starting_timestamp_ms: Option<i64>,
    fallback: OffsetReset,
    bounded: bool,
    missing_topic: MissingTopic,
    discovery: Duration,
    commit_every: Duration,
    /// Records carry their Kafka timestamp as event time (off by default: batches without
    /// timestamps are smaller and cheaper to route).
    record_timestamps: bool,
}

/// Reads Kafka topics (Flink's `KafkaSource`). Build with [`KafkaSource::builder`].
pub struct KafkaSource<T> {
    settings: Settings,
    decode: Decode<T>,
    on_malformed: Option<MalformedFactory>,
    /// Per-partition event time (see [`KafkaSource::with_watermarks`]).
    watermarks: Option<WatermarkStrategy<T>>,
    extract: Option<Extract<T>>,
}

/// Settings of a [`KafkaSource`].
pub struct KafkaSourceBuilder {
    settings: Settings,
}

impl KafkaSource<String> {
    pub fn builder() -> KafkaSourceBuilder {
        KafkaSourceBuilder {
            settings: Settings {
                client: ClientProperties::default(),
                topics: Vec::new(),
                group_id: String::new(),
                starting: StartingOffsets::Committed,
                starting_timestamp_ms: None,
                fallback: OffsetReset::Earliest,
                bounded: false,
                missing_topic: MissingTopic::Fail,
                discovery: Duration::from_secs(10),
                commit_every: Duration::from_secs(5),
                record_timestamps: false,
            },
        }
    }
}

impl KafkaSourceBuilder {
    pub fn bootstrap_servers(mut self, servers: &str) -> Self {
        self.settings.client.bootstrap_servers = servers.to_string();
        self
    }
    pub fn topics<S: Into<String>>(mut self, topics: impl IntoIterator<Item = S>) -> Self {
        self.settings.topics = topics.into_iter().map(Into::into).collect();
        self
    }
    /// Consumer group the processed offsets are committed to.
    pub fn group_id(mut self, group: &str) -> Self {
        self.settings.group_id = group.to_string();
        self
    }
    pub fn starting_offsets(mut self, starting: StartingOffsets) -> Self {
        self.settings.starting = starting;
        self
    }
    /// Start at the first record at or after this time (ms since the epoch).
    pub fn starting_timestamp(mut self, ms: i64) -> Self {
        self.settings.starting = StartingOffsets::Timestamp;
        self.settings.starting_timestamp_ms = Some(ms);
        self
    }
    /// Where `committed` starts on partitions the group has no offset for.
    pub fn committed_fallback(mut self, fallback: OffsetReset) -> Self {
        self.settings.fallback = fallback;
        self
    }
    /// Stop at the offsets that are latest when the job starts.
    pub fn bounded(mut self, bounded: bool) -> Self {
        self.settings.bounded = bounded;
        self
    }
    pub fn missing_topic(mut self, behaviour: MissingTopic) -> Self {
        self.settings.missing_topic = behaviour;
        self
    }
    pub fn partition_discovery_interval(mut self, every: Duration) -> Self {
        self.settings.discovery = every;
        self
    }
    pub fn commit_interval(mut self, every: Duration) -> Self {
        self.settings.commit_every = every;
        self
    }
    /// Each record's Kafka timestamp (create or log-append time) becomes its event time, for
    /// `assign_timestamps_and_watermarks` without an assigner and event-time windows. A
    /// record without a timestamp gets none (an event-time window then fails naming it).
    pub fn record_timestamps(mut self, on: bool) -> Self {
        self.settings.record_timestamps = on;
        self
    }
    /// Any librdkafka consumer property.
    pub fn property(mut self, key: &str, value: &str) -> Self {
        self.settings
            .client
            .properties
            .insert(key.to_string(), value.to_string());
        self
    }
    /// All client properties at once (including secrets resolved by the caller).
    pub fn client_properties(mut self, client: ClientProperties) -> Self {
        self.settings.client = client;
        self
    }

    /// A source of UTF-8 payloads as strings (Flink's `SimpleStringSchema`); a payload that is
    /// not UTF-8 fails the job, naming its position.
    pub fn build(self) -> KafkaSource<String> {
        self.build_with(|r| match r.payload {
            None => Ok(String::new()),
            Some(p) => String::from_utf8(p.to_vec())
                .map_err(|_| format!("record {}: payload is not UTF-8", r.position()).into()),
        })
    }

    /// A source whose records are `decode(record)`.
    pub fn build_with<T>(
        self,
        decode: impl Fn(&KafkaRecord<'_>) -> Result<T, BoxError> + Send + Sync + 'static,
    ) -> KafkaSource<T> {
        KafkaSource {
            settings: self.settings,
            decode: Arc::new(decode),
            on_malformed: None,
            watermarks: None,
            extract: None,
        }
    }
}

impl<T> KafkaSource<T> {
    /// Handles records that fail to decode instead of failing the job.
    pub fn on_malformed(
        mut self,
        factory: impl Fn(&SubtaskContext) -> Result<MalformedHandler, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.on_malformed = Some(Arc::new(factory));
        self
    }

    /// Event time tracked per partition (Flink's `fromSource(source, strategy, name)` with a
    /// Kafka source): each partition has its own watermark (highest timestamp seen minus the
    /// strategy's out-of-orderness) and the subtask emits the minimum over its partitions,
    /// leaving out partitions idle for longer than the strategy's idleness. Records of one
    /// partition may then be out of order against another's by any amount without being
    /// late. Without an assigner the Kafka record timestamp is the event time. Use this
    /// instead of `assign_timestamps_and_watermarks` on the source's stream, which only sees
    /// the subtask's interleaved records.
    pub fn with_watermarks(mut self, strategy: WatermarkStrategy<T>) -> Self {
        self.watermarks = Some(strategy);
        self
    }

    /// A timestamp extractor that can fail (the spec's `watermarks.timestamp` expression): a
    /// record whose extractor fails goes to the malformed-record handler (or fails the job).
    /// Takes precedence over the strategy's assigner.
    pub fn with_fallible_timestamps(
        self,
        extract: impl Fn(&T) -> Result<i64, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.with_record_timestamps(move |v, _| extract(v))
    }

    /// [`KafkaSource::with_fallible_timestamps`] with the consumed record at hand too.
    pub fn with_record_timestamps(
        mut self,
        extract: impl Fn(&T, &KafkaRecord<'_>) -> Result<i64, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.extract = Some(Arc::new(extract));
        self
    }
}

impl KafkaSource<Value> {
    /// The spec's `watermarks` of a Kafka source: per-partition tracking, the record
    /// timestamp unless a `timestamp` expression is given (over the record's value and, if
    /// compiled with them, the Kafka `record`'s fields).
    pub(crate) fn with_spec_watermarks(self, w: &Watermarks) -> Self {
        let mut strategy =
            WatermarkStrategy::<Value>::for_bounded_out_of_orderness(w.max_out_of_orderness);
        if let Some(idle) = w.idleness {
            strategy = strategy.with_idleness(idle);
        }
        strategy = match w.interval.is_zero() {
            true => strategy.with_watermark_per_record(),
            false => strategy.with_emit_interval(w.interval),
        };
        let with = self.with_watermarks(strategy);
        match w.timestamp.clone() {
            None => with,
            Some(program) => {
                let record = super::spec::RecordVar::for_program(&program);
                let with_record = program.vars().len() == 2;
                with.with_record_timestamps(move |v: &Value, r| {
                    let rec = record.of(r);
                    let both = [v, &rec];
                    let args = if with_record { &both[..] } else { &both[..1] };
                    match program.eval_cow(args).map(|t| t.as_i64()) {
                        Ok(Some(ts)) => Ok(ts),
                        Ok(None) => Err("the watermarks timestamp expression must return an int \
                                     (ms since the epoch)"
                            .into()),
                        Err(e) => Err(format!("watermarks timestamp: {e}").into()),
                    }
                })
            }
        }
    }
}

impl<T: Send + 'static> Source<T> for KafkaSource<T> {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn create_reader(&self, ctx: &SubtaskContext) -> Result<Box<dyn SourceReader<T>>, BoxError> {
        let s = &self.settings;
        if s.topics.is_empty() {
            return Err("a Kafka source needs at least one topic".into());
        }
        let client_id = format!("streamjob-{}-{}", ctx.job_name, ctx.subtask);
        let config = s.client.client_config(&[
            ("group.id", &s.group_id),
            ("client.id", &client_id),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
            // Never librdkafka's silent reset: a fetch out of range (the log was truncated
            // or lost records, or a checkpoint is older than the retention) is an error
            // the reader turns into a job failure naming the partition and offsets.
            ("auto.offset.reset", "error"),
            ("allow.auto.create.topics", "false"),
            // The partitions' end offsets for the consumer lag metric.
            ("statistics.interval.ms", STATS_INTERVAL_MS),
        ]);
        let context = QuietContext::new(config.get("isolation.level") != Some("read_uncommitted"));
        let consumer: BaseConsumer<QuietContext> = config
            .create_with_context(context)
            .map_err(|e| format!("cannot create Kafka consumer: {e}"))?;
        let mut reader = Reader {
            consumer,
            settings: s.clone(),
            decode: self.decode.clone(),
            on_malformed: match &self.on_malformed {
                Some(f) => Some(f(ctx)?),
                None => None,
            },
            subtask: ctx.subtask,
            parallelism: ctx.parallelism,
            partitions: Vec::new(),
            last_hit: 0,
            initial_done: false,
            assigned: false,
            last_discovery: Instant::now(),
            last_commit: Instant::now(),
            uncommitted: false,
            checkpointed: false,
            snapshot_offsets: Vec::new(),
            time: self
                .watermarks
                .as_ref()
                .map(|strategy| EventTime::new(strategy)),
            extract: self.extract.clone(),
        };
        reader.discover()?;
        Ok(Box::new(reader))
    }
}

/// The brokers librdkafka is given: a `bootstrap.servers` property (or secret) wins.
fn bootstrap_servers(client: &ClientProperties) -> &str {
    client
        .secrets
        .get("bootstrap.servers")
        .or_else(|| client.properties.get("bootstrap.servers"))
        .map_or(&client.bootstrap_servers, String::as_str)
}

/// librdkafka statistics interval of the consumer (the lag metric's resolution).
const STATS_INTERVAL_MS: &str = "1000";

struct PartitionState {
    topic: String,
    partition: i32,
    /// `topic/partition`: the key of its watermark.
    split: String,
    /// Next offset to emit (the one after the last emitted), once known.
    next: Option<i64>,
    /// Bounded reads stop here (the high watermark at start).
    stop: Option<i64>,
    committed: Option<i64>,
    lag: Arc<PartitionLag>,
}

impl PartitionState {
    fn done(&self) -> bool {
        matches!((self.next, self.stop), (Some(n), Some(s)) if n >= s)
    }
}

/// Per-partition event time of a reader (see [`KafkaSource::with_watermarks`]).
struct EventTime<T> {
    tracker: SplitWatermarks,
    /// `WatermarkStrategy::no_watermarks`: timestamps only.
    emits: bool,
    idleness_ms: Option<i64>,
    /// When the last record arrived or partition was added (processing time).
    last_active_ms: i64,
    assigner: Option<TimestampAssignerFn<T>>,
    clock: Arc<dyn Clock>,
    interval_ms: i64,
    per_record: bool,
    next_emit_ms: i64,
    /// The last watermark sent downstream (`i64::MIN`: none yet).
    sent: i64,
    /// Idleness was announced and no watermark or record followed yet.
    idle: bool,
}

impl<T> EventTime<T> {
    fn new(strategy: &WatermarkStrategy<T>) -> Self {
        EventTime {
            tracker: SplitWatermarks::new(
                strategy.out_of_orderness_ms.unwrap_or(0),
                strategy.idleness_ms,
            ),
            emits: strategy.out_of_orderness_ms.is_some(),
            idleness_ms: strategy.idleness_ms.filter(|i| *i > 0),
            last_active_ms: i64::MIN,
            assigner: strategy.assigner.clone(),
            next_emit_ms: i64::MIN,
            interval_ms: strategy.interval_ms,
            per_record: strategy.per_record,
            clock: strategy.clock.clone(),
            sent: i64::MIN,
            idle: false,
        }
    }

    /// Records (or a new partition) arrived at `now`.
    #[inline]
    fn active(&mut self, now: i64) {
        self.last_active_ms = self.last_active_ms.max(now);
    }

    /// Emits the watermark (if it advanced) or announces idleness (once).
    fn emit(&mut self, now: i64, out: &mut Collector<'_, impl Sized>) {
        self.next_emit_ms = now.saturating_add(self.interval_ms);
        if !self.emits {
            return;
        }
        if let Some(idle) = self.idleness_ms {
            // Every partition has gone idle since the last look: first the watermark of the
            // moment before the last one did (the partitions idle before it left out), as a
            // continuous check would have emitted it, so a periodic check between the
            // partitions going idle one after the other does not lose it.
            let before = self.last_active_ms.saturating_add(idle - 1);
            if before < now {
                let w = self.tracker.current(before);
                self.advance(w, out);
            }
        }
        let w = self.tracker.current(now);
        self.advance(w, out);
    }

    fn advance(&mut self, current: Option<i64>, out: &mut Collector<'_, impl Sized>) {
        match current {
            Some(w) if w > self.sent || (self.idle && w != i64::MIN) => {
                self.sent = w;
                self.idle = false;
                out.emit_watermark(w);
            }
            Some(_) => {}
            None if !self.idle => {
                self.idle = true;
                out.mark_idle();
            }
            None => {}
        }
    }
}

struct Reader<T> {
    consumer: BaseConsumer<QuietContext>,
    settings: Settings,
    decode: Decode<T>,
    on_malformed: Option<MalformedHandler>,
    subtask: u32,
    parallelism: u32,
    /// The partitions this subtask reads (a handful: looked up by scanning).
    partitions: Vec<PartitionState>,
    /// Index of the partition the last record came from (records arrive in runs).
    last_hit: usize,
    /// The first assignment (which uses the starting offsets) has been made.
    initial_done: bool,
    /// The consumer has been given its partitions. The first assignment waits for the first
    /// poll, after a restore moved the offsets: assigning and then re-assigning at once
    /// trips an assertion in librdkafka 2.12 (a partition stopped twice,
    /// confluentinc/librdkafka#5573).
    assigned: bool,
    last_discovery: Instant,
    last_commit: Instant,
    uncommitted: bool,
    /// Checkpoints drive offset commits (instead of the commit interval).
    checkpointed: bool,
    /// Offsets recorded by the last snapshot, committed when its checkpoint completes.
    snapshot_offsets: Vec<(String, i32, i64)>,
    time: Option<EventTime<T>>,
    extract: Option<Extract<T>>,
}

/// The partition a record came from, without allocating (the last one first: records
/// arrive in runs per partition).
#[inline]
fn locate(
    partitions: &[PartitionState],
    last_hit: &mut usize,
    topic: &str,
    partition: i32,
) -> Option<usize> {
    let hit = partitions
        .get(*last_hit)
        .is_some_and(|p| p.partition == partition && p.topic == topic);
    if !hit {
        *last_hit = partitions
            .iter()
            .position(|p| p.partition == partition && p.topic == topic)?;
    }
    Some(*last_hit)
}

/// Position of one partition in a snapshot.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPartition {
    topic: String,
    partition: i32,
    next: i64,
}

/// A source subtask's snapshot: its partitions' positions and the watermark it emitted
/// (so a restored source never emits a lower one). Snapshots of earlier versions are the
/// bare list of positions.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Saved {
    WithWatermark {
        partitions: Vec<SavedPartition>,
        watermark: Option<i64>,
    },
    Positions(Vec<SavedPartition>),
}

impl Saved {
    fn into_parts(self) -> (Vec<SavedPartition>, Option<i64>) {
        match self {
            Saved::WithWatermark {
                partitions,
                watermark,
            } => (partitions, watermark),
            Saved::Positions(p) => (p, None),
        }
    }
}

/// Fails unless `offset` lies within the partition's log (`low..=high`): reading from an
/// offset outside it would skip records or re-read from a guessed position.
fn check_in_range(
    topic: &str,
    partition: i32,
    offset: i64,
    low: i64,
    high: i64,
    what: &str,
) -> Result<(), BoxError> {
    if (low..=high).contains(&offset) {
        return Ok(());
    }
    let why = if offset < low {
        "records before the log start were deleted (retention) or the log was truncated"
    } else {
        "the log is shorter than this offset: the broker lost acknowledged records, or the \
         topic was deleted and re-created"
    };
    Err(format!(
        "Kafka source: {what} for {topic}/{partition} is {offset}, outside the partition's \
         offsets {low}..{high}: {why}; not guessing where to continue (reset the group's \
         offsets, or start with startingOffsets: earliest/latest without a checkpoint)"
    )
    .into())
}

impl<T> Reader<T> {
    fn find(&self, topic: &str, partition: i32) -> Option<usize> {
        self.partitions
            .iter()
            .position(|p| p.partition == partition && p.topic == topic)
    }

    /// After librdkafka reported a fetch out of range: the partitions whose next offset lies
    /// outside their log, as an error naming them.
    fn out_of_range_error(&self) -> BoxError {
        let mut found = Vec::new();
        let mut parts: Vec<&PartitionState> = self.partitions.iter().collect();
        parts.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        for st in parts {
            let (t, p) = (&st.topic, st.partition);
            let Some(next) = st.next else {
                continue;
            };
            match self.consumer.fetch_watermarks(t, p, LOOKUP) {
                Ok((low, high)) => {
                    if let Err(e) = check_in_range(t, p, next, low, high, "the next offset") {
                        found.push(e.to_string());
                    }
                }
                Err(e) => found.push(format!("cannot read offsets of {t}/{p}: {e}")),
            }
        }
        if found.is_empty() {
            format!(
                "Kafka source: a fetch from {:?} was out of range (the offsets are back in \
                 range now; failing rather than guessing where to continue)",
                self.settings.topics
            )
            .into()
        } else {
            found.join("; ").into()
        }
    }

    /// Finds partitions of the topics that belong to this subtask and are not assigned yet,
    /// and assigns them: on the first call from the starting offsets, later from the start
    /// of the partition (nothing written to a new partition is missed).
    fn discover(&mut self) -> Result<(), BoxError> {
        self.last_discovery = Instant::now();
        let mut new: Vec<(String, i32)> = Vec::new();
        let mut missing = false;
        for topic in &self.settings.topics {
            let md = self
                .consumer
                .fetch_metadata(Some(topic), LOOKUP)
                .map_err(|e| {
                    let servers = bootstrap_servers(&self.settings.client);
                    // A wrong CA or password looks like any transport failure to librdkafka.
                    let cause = super::security::diagnose(&self.settings.client, servers)
                        .unwrap_or_else(|| e.to_string());
                    format!("cannot fetch metadata of topic '{topic}' from {servers}: {cause}")
                })?;
            let t = md.topics().iter().find(|t| t.name() == topic.as_str());
            let partitions: Vec<i32> = match t {
                Some(t) if t.error().is_none() => t.partitions().iter().map(|p| p.id()).collect(),
                _ => Vec::new(),
            };
            if partitions.is_empty() {
                match self.settings.missing_topic {
                    MissingTopic::Fail => {
                        return Err(format!(
                            "topic '{topic}' does not exist on {} (set missingTopic: wait to wait for it)",
                            self.settings.client.bootstrap_servers
                        )
                        .into());
                    }
                    MissingTopic::Wait => {
                        warn!(topic, "topic does not exist yet; waiting for it");
                        missing = true;
                        continue;
                    }
                }
            }
            for p in partitions {
                if subtask_for_partition(topic, p, self.parallelism) == self.subtask
                    && self.find(topic, p).is_none()
                {
                    new.push((topic.clone(), p));
                }
            }
        }
        if new.is_empty() {
            // Until every topic exists, a later first assignment still uses the starting
            // offsets.
            if !missing {
                self.initial_done = true;
            }
            return Ok(());
        }
        let starts = if self.initial_done {
            new.iter().map(|_| Offset::Beginning).collect()
        } else {
            self.starting_offsets(&new)?
        };
        self.initial_done = true;
        let now = self.time.as_ref().map(|t| t.clock.now_ms());
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), start) in new.iter().zip(starts) {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, *p, LOOKUP)
                .map_err(|e| format!("cannot read offsets of {topic}/{p}: {e}"))?;
            let next = match start {
                Offset::Beginning => low,
                Offset::End => high,
                Offset::Offset(o) if self.settings.starting == StartingOffsets::Committed => {
                    check_in_range(topic, *p, o, low, high, "committed offset of the group")?;
                    o
                }
                Offset::Offset(o) => o.max(low),
                _ => low,
            };
            tpl.add_partition_offset(topic, *p, Offset::Offset(next))
                .map_err(|e| format!("{topic}/{p}: {e}"))?;
            info!(topic, partition = p, offset = next, "assigned partition");
            let split = format!("{topic}/{p}");
            let stop = self.settings.bounded.then_some(high);
            if let (Some(t), Some(now)) = (&mut self.time, now)
                && stop.is_none_or(|s| next < s)
            {
                // Holds the watermark back until it has records or is idle.
                t.tracker.add_split(&split, now);
                t.active(now);
            }
            let lag = partition_lag(topic, *p);
            lag.set(high - next);
            self.partitions.push(PartitionState {
                topic: topic.clone(),
                partition: *p,
                split,
                next: Some(next),
                stop,
                committed: None,
                lag,
            });
        }
        if self.assigned {
            self.consumer
                .incremental_assign(&tpl)
                .map_err(|e| format!("cannot assign partitions: {e}"))?;
        }
        Ok(())
    }

    /// The first assignment: every known partition at its next offset.
    fn assign(&mut self) -> Result<(), BoxError> {
        let mut tpl = TopicPartitionList::new();
        for st in &self.partitions {
            let at = st.next.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&st.topic, st.partition, at)
                .map_err(|e| e.to_string())?;
        }
        self.consumer
            .incremental_assign(&tpl)
            .map_err(|e| format!("cannot assign partitions: {e}"))?;
        self.assigned = true;
        Ok(())
    }

    fn starting_offsets(&self, parts: &[(String, i32)]) -> Result<Vec<Offset>, BoxError> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in parts {
            tpl.add_partition(t, *p);
        }
        let fallback = match self.settings.fallback {
            OffsetReset::Earliest => Offset::Beginning,
            OffsetReset::Latest => Offset::End,
        };
        let looked_up = match self.settings.starting {
            StartingOffsets::Earliest => return Ok(vec![Offset::Beginning; parts.len()]),
            StartingOffsets::Latest => return Ok(vec![Offset::End; parts.len()]),
            StartingOffsets::Committed => {
                self.consumer.committed_offsets(tpl, LOOKUP).map_err(|e| {
                    format!(
                        "cannot read committed offsets of group '{}': {e}",
                        self.settings.group_id
                    )
                })?
            }
            StartingOffsets::Timestamp => {
                let ts = self
                    .settings
                    .starting_timestamp_ms
                    .ok_or("startingOffsets timestamp needs startingTimestampMs")?;
                tpl.set_all_offsets(Offset::Offset(ts))
                    .map_err(|e| e.to_string())?;
                self.consumer
                    .offsets_for_times(tpl, LOOKUP)
                    .map_err(|e| format!("cannot look up offsets by time: {e}"))?
            }
        };
        Ok(parts
            .iter()
            .map(
                |(t, p)| match looked_up.find_partition(t, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if o >= 0 => Offset::Offset(o),
                    // No committed offset, or no record at/after the timestamp.
                    _ if self.settings.starting == StartingOffsets::Timestamp => Offset::End,
                    _ => fallback,
                },
            )
            .collect())
    }

    /// Commits the offsets emitted so far.
    fn commit(&mut self, mode: CommitMode) -> Result<(), BoxError> {
        self.last_commit = Instant::now();
        if !self.uncommitted || self.settings.group_id.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for st in &self.partitions {
            if let Some(n) = st.next
                && st.committed != Some(n)
            {
                tpl.add_partition_offset(&st.topic, st.partition, Offset::Offset(n))
                    .map_err(|e| e.to_string())?;
            }
        }
        if tpl.count() == 0 {
            self.uncommitted = false;
            return Ok(());
        }
        match self.consumer.commit(&tpl, mode) {
            Ok(()) => {
                for e in tpl.elements() {
                    if let (Some(i), Offset::Offset(o)) =
                        (self.find(e.topic(), e.partition()), e.offset())
                    {
                        self.partitions[i].committed = Some(o);
                    }
                }
                self.uncommitted = false;
                debug!(partitions = tpl.count(), "committed offsets");
                Ok(())
            }
            // Periodic commits are best effort (the next one retries); the final one is not.
            Err(e) if matches!(mode, CommitMode::Async) => {
                warn!("offset commit failed, will retry: {e}");
                Ok(())
            }
            Err(e) => Err(format!(
                "cannot commit offsets of group '{}': {e}",
                self.settings.group_id
            )
            .into()),
        }
    }

    /// Consumer lag per partition from the latest statistics: the end of the log (high
    /// watermark, or last stable offset with read_committed) minus the position. A finished
    /// bounded partition is 0 behind.
    fn update_lag(&mut self) {
        let Some(ends) = self.consumer.context().take_ends() else {
            return;
        };
        for e in ends {
            if let Some(i) = self.find(&e.topic, e.partition) {
                let st = &self.partitions[i];
                let Some(next) = st.next else { continue };
                let end = st.stop.map_or(e.end, |s| e.end.min(s));
                st.lag.set(end - next.max(e.app_offset));
            }
        }
    }
}

impl<T: Send + 'static> SourceReader<T> for Reader<T> {
    /// Next offset per assigned partition, and the watermark emitted so far.
    fn snapshot(&mut self) -> Result<Vec<u8>, BoxError> {
        self.checkpointed = true;
        let saved: Vec<SavedPartition> = self
            .partitions
            .iter()
            .filter_map(|st| {
                Some(SavedPartition {
                    topic: st.topic.clone(),
                    partition: st.partition,
                    next: st.next?,
                })
            })
            .collect();
        self.snapshot_offsets = saved
            .iter()
            .map(|s| (s.topic.clone(), s.partition, s.next))
            .collect();
        let watermark = self
            .time
            .as_ref()
            .map(|t| t.sent)
            .filter(|w| *w != i64::MIN);
        Ok(serde_json::to_vec(&Saved::WithWatermark {
            partitions: saved,
            watermark,
        })?)
    }

    /// Takes the partitions this subtask owns now (the parallelism may have changed) from
    /// every old subtask's snapshot and seeks them to the saved offsets. The watermark goes
    /// on from this subtask's own (same parallelism) or the lowest of the old subtasks'
    /// (rescaled: its partitions came from any of them), never lower.
    fn restore_from_all(&mut self, states: &[Vec<u8>]) -> Result<bool, BoxError> {
        self.checkpointed = true;
        let mut tpl = TopicPartitionList::new();
        let mut watermarks = Vec::new();
        for state in states {
            let saved: Saved = serde_json::from_slice(state)
                .map_err(|e| format!("cannot read the Kafka source's checkpointed state: {e}"))?;
            let (saved, watermark) = saved.into_parts();
            watermarks.push(watermark);
            for s in saved {
                if subtask_for_partition(&s.topic, s.partition, self.parallelism) != self.subtask {
                    continue;
                }
                if let Some(i) = self.find(&s.topic, s.partition) {
                    let (low, high) = self
                        .consumer
                        .fetch_watermarks(&s.topic, s.partition, LOOKUP)
                        .map_err(|e| {
                            format!("cannot read offsets of {}/{}: {e}", s.topic, s.partition)
                        })?;
                    check_in_range(
                        &s.topic,
                        s.partition,
                        s.next,
                        low,
                        high,
                        "the checkpointed offset",
                    )?;
                    let st = &mut self.partitions[i];
                    st.next = Some(s.next);
                    st.committed = None;
                    st.lag.set(high - s.next);
                    tpl.add_partition_offset(&s.topic, s.partition, Offset::Offset(s.next))
                        .map_err(|e| e.to_string())?;
                    info!(topic = %s.topic, partition = s.partition, offset = s.next, "restored partition offset");
                }
            }
        }
        if let Some(t) = &mut self.time {
            let restored = match watermarks.len() == self.parallelism as usize {
                true => watermarks[self.subtask as usize],
                false => watermarks.iter().flatten().copied().min(),
            };
            if let Some(w) = restored {
                t.tracker.restore_emitted(w);
                t.sent = w;
            }
        }
        if !self.assigned {
            return Ok(true); // the first poll assigns from the restored offsets
        }
        // Re-assign everything: restored offsets, and the rest as discovered.
        for st in &self.partitions {
            if tpl.find_partition(&st.topic, st.partition).is_none() {
                let at = st.next.map_or(Offset::Beginning, Offset::Offset);
                tpl.add_partition_offset(&st.topic, st.partition, at)
                    .map_err(|e| e.to_string())?;
            }
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| format!("cannot assign restored partitions: {e}"))?;
        Ok(true)
    }

    /// Commits the offsets of the completed checkpoint to the consumer group (for
    /// monitoring and for jobs started without the checkpoint).
    fn notify_checkpoint_complete(&mut self, _checkpoint: u64) -> Result<(), BoxError> {
        if self.settings.group_id.is_empty() || self.snapshot_offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in &self.snapshot_offsets {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                .map_err(|e| e.to_string())?;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            warn!("offset commit after checkpoint failed, the next one retries: {e}");
        }
        Ok(())
    }

    fn poll_next(&mut self, out: &mut Collector<'_, T>) -> Result<SourceStatus, BoxError> {
        if !self.assigned {
            self.assign()?;
        }
        if self.settings.bounded {
            if self.partitions.iter().all(PartitionState::done) && self.initial_done {
                for st in &self.partitions {
                    st.lag.set(0);
                }
                self.commit(CommitMode::Sync)?;
                return Ok(SourceStatus::Finished);
            }
        } else if self.last_discovery.elapsed() >= self.settings.discovery {
            self.discover()?;
        }
        if !self.checkpointed && self.last_commit.elapsed() >= self.settings.commit_every {
            self.commit(CommitMode::Async)?;
        }
        if !self.initial_done {
            // Waiting for a missing topic.
            std::thread::sleep(Duration::from_millis(50));
            if self.last_discovery.elapsed() >= Duration::from_secs(1) {
                self.discover()?;
            }
            return Ok(SourceStatus::Idle);
        }
        // One look at the clock per batch: the processing time of its records.
        let now = self.time.as_ref().map_or(0, |t| t.clock.now_ms());
        let mut emitted = 0;
        // Keys and payloads of the records consumed, told to the metrics once per batch.
        let mut bytes = 0;
        let mut timeout = Duration::from_millis(10);
        while emitted < SOURCE_BATCH {
            let Some(result) = self.consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            let m = match result {
                Ok(m) => m,
                Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                )) => return Err(self.out_of_range_error()),
                Err(KafkaError::MessageConsumptionFatal(code)) => {
                    return Err(format!(
                        "Kafka consumer of {:?}: fatal error {code:?} (not retried)",
                        self.settings.topics
                    )
                    .into());
                }
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                    return Err(format!(
                        "a topic of {:?} was deleted while reading",
                        self.settings.topics
                    )
                    .into());
                }
                Err(e) => {
                    // librdkafka reconnects and retries by itself; say so now and then.
                    let msg = e.to_string();
                    if let Some(held) = self.consumer.context().limiter.allow(&msg) {
                        warn!(held_back = held, "Kafka consumer: {msg} (retrying)");
                    }
                    continue;
                }
            };
            let record = KafkaRecord {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis(),
                key: m.key(),
                payload: m.payload(),
                headers: m.headers(),
            };
            let Some(i) = locate(
                &self.partitions,
                &mut self.last_hit,
                record.topic,
                record.partition,
            ) else {
                continue;
            };
            let st = &mut self.partitions[i];
            if st.stop.is_some_and(|s| record.offset >= s) {
                st.next = st.stop;
                if let Some(t) = &mut self.time {
                    // A finished partition no longer holds back the watermark.
                    t.tracker.remove_split(&st.split);
                }
                continue;
            }
            bytes +=
                (record.key.map_or(0, <[u8]>::len) + record.payload.map_or(0, <[u8]>::len)) as u64;
            let decoded = (self.decode)(&record).and_then(|v| {
                let ts = match (&self.extract, &self.time) {
                    (Some(f), _) => Some(f(&v, &record)?),
                    (
                        None,
                        Some(EventTime {
                            assigner: Some(f), ..
                        }),
                    ) => Some(f(&v, record.timestamp.unwrap_or(NO_TIMESTAMP))),
                    _ => record.timestamp,
                };
                Ok((v, ts))
            });
            match decoded {
                Ok((v, ts)) => {
                    match (ts, &mut self.time) {
                        (Some(ts), Some(t)) => {
                            t.tracker.on_record(&st.split, ts, now);
                            t.active(now);
                            out.collect_with_timestamp(v, ts);
                            if t.per_record {
                                t.emit(now, out);
                            }
                        }
                        (Some(ts), None) if self.settings.record_timestamps => {
                            out.collect_with_timestamp(v, ts)
                        }
                        _ => out.collect(v),
                    }
                    emitted += 1;
                }
                Err(e) => match &mut self.on_malformed {
                    Some(handle) => handle(&record, e)?,
                    None => return Err(format!("record {}: {e}", record.position()).into()),
                },
            }
            st.next = Some(record.offset + 1);
            self.uncommitted = true;
        }
        crate::runtime::metrics::source_read(bytes);
        self.update_lag();
        if let Some(t) = &mut self.time
            && now >= t.next_emit_ms
        {
            t.emit(now, out);
        }
        Ok(if emitted > 0 {
            SourceStatus::MoreAvailable
        } else {
            SourceStatus::Idle
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::message::Signal;
    use crate::runtime::output::Output;
    use crate::runtime::time::ManualClock;

    #[test]
    fn snapshots_of_the_earlier_format_still_restore() {
        let old = br#"[{"topic":"t","partition":1,"next":42}]"#;
        let (p, w) = serde_json::from_slice::<Saved>(old).unwrap().into_parts();
        assert_eq!(
            (p[0].topic.as_str(), p[0].partition, p[0].next),
            ("t", 1, 42)
        );
        assert_eq!(w, None);
        let new = serde_json::to_vec(&Saved::WithWatermark {
            partitions: p,
            watermark: Some(7),
        })
        .unwrap();
        let (p, w) = serde_json::from_slice::<Saved>(&new).unwrap().into_parts();
        assert_eq!((p.len(), w), (1, Some(7)));
    }

    /// A Kafka source's `watermarks.timestamp` expression reads the consumed record as
    /// `record` next to the record's value.
    #[test]
    fn the_timestamp_expression_reads_the_kafka_record() {
        let program = streamjob_crds::expr::Program::compile(
            "record.timestamp + value.delay + record.offset",
            streamjob_crds::validate::KAFKA_RECORD_VARS,
        )
        .unwrap();
        let w = Watermarks {
            timestamp: Some(program),
            max_out_of_orderness: Duration::ZERO,
            idleness: None,
            interval: Duration::from_millis(200),
        };
        let source = KafkaSource::builder()
            .build_with(|_| Ok(Value::Null))
            .with_spec_watermarks(&w);
        let record = KafkaRecord {
            topic: "t",
            partition: 0,
            offset: 7,
            timestamp: Some(1_000),
            key: None,
            payload: None,
            headers: None,
        };
        let value = Value::map([("delay", Value::Int(20))]);
        let extract = source.extract.as_ref().unwrap();
        assert_eq!(extract(&value, &record).unwrap(), 1_027);
    }

    /// Signals a collector received.
    #[derive(Default)]
    struct Signals(Vec<String>);
    impl Output<()> for Signals {
        fn emit(&mut self, _: ()) -> Result<(), crate::error::TaskError> {
            Ok(())
        }
        fn signal(&mut self, s: Signal) -> Result<(), crate::error::TaskError> {
            self.0.push(match s {
                Signal::Watermark(w) => format!("wm {w}"),
                Signal::Idle => "idle".into(),
                other => format!("{other:?}"),
            });
            Ok(())
        }
        fn flush(&mut self) -> Result<(), crate::error::TaskError> {
            Ok(())
        }
    }

    /// p1 never has a record and goes idle at 1000; p0's last record was at 100, so it goes
    /// idle at 1100. A check at 1200 (both idle) still emits p0's watermark before the
    /// source announces idleness: what a check at 1050 would have emitted.
    #[test]
    fn partitions_going_idle_between_two_checks_still_advance_the_watermark() {
        let clock = Arc::new(ManualClock::new(0));
        let strategy = WatermarkStrategy::<()>::for_monotonous_timestamps()
            .with_idleness(Duration::from_millis(1000))
            .with_clock(clock);
        let mut t = EventTime::new(&strategy);
        t.tracker.add_split("p0", 0);
        t.tracker.add_split("p1", 0);
        t.active(0);
        t.tracker.on_record("p0", 5_000, 100);
        t.active(100);
        let mut signals = Signals::default();
        let mut out = Collector::new(&mut signals);
        t.emit(100, &mut out);
        t.emit(1200, &mut out);
        t.emit(1400, &mut out);
        drop(out);
        assert_eq!(signals.0, vec!["wm 4999", "idle"]);
    }
}
