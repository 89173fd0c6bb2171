//! Kafka source: each subtask reads the partitions [`subtask_for_partition`] gives it, from
//! the configured starting offsets, optionally up to the offsets that were latest at start
//! (bounded), and commits what it has emitted to the consumer group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Message as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::logs::QuietContext;
use super::{ClientProperties, MissingTopic, OffsetReset, StartingOffsets, subtask_for_partition};
use crate::api::functions::{Collector, Source, SourceReader, SourceStatus};
use crate::connectors::SOURCE_BATCH;
use crate::error::BoxError;
use crate::runtime::context::SubtaskContext;

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
        let consumer: BaseConsumer<QuietContext> = s
            .client
            .client_config(&[
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
            ])
            .create_with_context(QuietContext::default())
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
            partitions: HashMap::new(),
            initial_done: false,
            assigned: false,
            last_discovery: Instant::now(),
            last_commit: Instant::now(),
            uncommitted: false,
            checkpointed: false,
            snapshot_offsets: Vec::new(),
        };
        reader.discover()?;
        Ok(Box::new(reader))
    }
}

struct PartitionState {
    /// Next offset to emit (the one after the last emitted), once known.
    next: Option<i64>,
    /// Bounded reads stop here (the high watermark at start).
    stop: Option<i64>,
    committed: Option<i64>,
}

impl PartitionState {
    fn done(&self) -> bool {
        matches!((self.next, self.stop), (Some(n), Some(s)) if n >= s)
    }
}

struct Reader<T> {
    consumer: BaseConsumer<QuietContext>,
    settings: Settings,
    decode: Decode<T>,
    on_malformed: Option<MalformedHandler>,
    subtask: u32,
    parallelism: u32,
    partitions: HashMap<(String, i32), PartitionState>,
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
}

/// Position of one partition in a snapshot.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPartition {
    topic: String,
    partition: i32,
    next: i64,
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
    /// After librdkafka reported a fetch out of range: the partitions whose next offset lies
    /// outside their log, as an error naming them.
    fn out_of_range_error(&self) -> BoxError {
        let mut found = Vec::new();
        let mut keys: Vec<_> = self.partitions.keys().collect();
        keys.sort();
        for (t, p) in keys {
            let Some(next) = self.partitions[&(t.clone(), *p)].next else {
                continue;
            };
            match self.consumer.fetch_watermarks(t, *p, LOOKUP) {
                Ok((low, high)) => {
                    if let Err(e) = check_in_range(t, *p, next, low, high, "the next offset") {
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
                    format!(
                        "cannot fetch metadata of topic '{topic}' from {}: {e}",
                        self.settings.client.bootstrap_servers
                    )
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
                let key = (topic.clone(), p);
                if subtask_for_partition(topic, p, self.parallelism) == self.subtask
                    && !self.partitions.contains_key(&key)
                {
                    new.push(key);
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
            self.partitions.insert(
                (topic.clone(), *p),
                PartitionState {
                    next: Some(next),
                    stop: self.settings.bounded.then_some(high),
                    committed: None,
                },
            );
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
        for ((t, p), st) in &self.partitions {
            let at = st.next.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(t, *p, at)
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
        for ((t, p), st) in &self.partitions {
            if let Some(n) = st.next
                && st.committed != Some(n)
            {
                tpl.add_partition_offset(t, *p, Offset::Offset(n))
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
                    if let (Some(st), Offset::Offset(o)) = (
                        self.partitions
                            .get_mut(&(e.topic().to_string(), e.partition())),
                        e.offset(),
                    ) {
                        st.committed = Some(o);
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
}

impl<T: Send + 'static> SourceReader<T> for Reader<T> {
    /// Next offset per assigned partition.
    fn snapshot(&mut self) -> Result<Vec<u8>, BoxError> {
        self.checkpointed = true;
        let saved: Vec<SavedPartition> = self
            .partitions
            .iter()
            .filter_map(|((t, p), st)| {
                Some(SavedPartition {
                    topic: t.clone(),
                    partition: *p,
                    next: st.next?,
                })
            })
            .collect();
        self.snapshot_offsets = saved
            .iter()
            .map(|s| (s.topic.clone(), s.partition, s.next))
            .collect();
        Ok(serde_json::to_vec(&saved)?)
    }

    /// Takes the partitions this subtask owns now (the parallelism may have changed) from
    /// every old subtask's snapshot and seeks them to the saved offsets.
    fn restore_from_all(&mut self, states: &[Vec<u8>]) -> Result<bool, BoxError> {
        self.checkpointed = true;
        let mut tpl = TopicPartitionList::new();
        for state in states {
            let saved: Vec<SavedPartition> = serde_json::from_slice(state)?;
            for s in saved {
                if subtask_for_partition(&s.topic, s.partition, self.parallelism) != self.subtask {
                    continue;
                }
                if let Some(st) = self.partitions.get_mut(&(s.topic.clone(), s.partition)) {
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
                    st.next = Some(s.next);
                    st.committed = None;
                    tpl.add_partition_offset(&s.topic, s.partition, Offset::Offset(s.next))
                        .map_err(|e| e.to_string())?;
                    info!(topic = %s.topic, partition = s.partition, offset = s.next, "restored partition offset");
                }
            }
        }
        if !self.assigned {
            return Ok(true); // the first poll assigns from the restored offsets
        }
        // Re-assign everything: restored offsets, and the rest as discovered.
        for ((t, p), st) in &self.partitions {
            if tpl.find_partition(t, *p).is_none() {
                let at = st.next.map_or(Offset::Beginning, Offset::Offset);
                tpl.add_partition_offset(t, *p, at)
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
            if self.partitions.values().all(PartitionState::done) && self.initial_done {
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
        let mut emitted = 0;
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
            let Some(st) = self
                .partitions
                .get_mut(&(record.topic.to_string(), record.partition))
            else {
                continue;
            };
            if st.stop.is_some_and(|s| record.offset >= s) {
                st.next = st.stop;
                continue;
            }
            match (self.decode)(&record) {
                Ok(v) => {
                    match record.timestamp {
                        Some(ts) if self.settings.record_timestamps => {
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
        Ok(if emitted > 0 {
            SourceStatus::MoreAvailable
        } else {
            SourceStatus::Idle
        })
    }
}
