//! The `StreamJob` custom resource (`streamjob.dev/v1alpha1`).
//!
//! A job is a list of `steps`; each step is exactly one of a source, a transformation
//! (`map`, `filter`, `flatMap`, `keyBy`, `reduce`, `rebalance`) or a sink. By default a step
//! reads the step before it; `input` names other (earlier) steps for fan-out and fan-in.
//! Transformations are CEL expressions (see [`crate::expr`]).
//!
//! The schema carries the checks the API server can do cheaply (`x-kubernetes-validations`
//! CEL rules, minimums, enums); [`crate::validate::validate`] does the full semantic check
//! and is what the CLI and the operator both run.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::keygroup::DEFAULT_MAX_PARALLELISM;

mod time;
pub use time::{
    AggregateFunction, AggregateSpec, CountWindow, NexmarkSource, SessionWindow, SlidingWindow,
    TimeCharacteristic, TumblingWindow, WatermarksSpec, WindowSpec,
};

fn default_one() -> u32 {
    1
}
fn default_max_parallelism() -> u32 {
    DEFAULT_MAX_PARALLELISM
}
fn default_buffer_timeout_ms() -> u64 {
    5
}
fn default_transaction_timeout_ms() -> u64 {
    900_000
}

/// A streaming job: a pipeline of sources, CEL transformations and sinks run on a set of
/// worker pods.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "streamjob.dev",
    version = "v1alpha1",
    kind = "StreamJob",
    namespaced,
    shortname = "sj",
    status = "StreamJobStatus",
    doc = "A streaming job (Flink's DataStream model): sources, CEL transformations and sinks.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Parallelism","type":"integer","jsonPath":".spec.parallelism"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyWorkers"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredWorkers"}"#,
    printcolumn = r#"{"name":"Rate","type":"integer","description":"Records per second read by the sources","jsonPath":".status.recordsInPerSecond"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","description":"Records the Kafka sources are behind the end of their partitions","jsonPath":".status.kafkaLag"}"#,
    printcolumn = r#"{"name":"Last-Checkpoint","type":"date","jsonPath":".status.lastCheckpoint.time"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","jsonPath":".status.restarts"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // `kubectl scale sj NAME --replicas N` and an HPA set `spec.parallelism`; the operator
    // rolls the change out as `upgradeMode` says (a savepoint or last-state restore at the new
    // parallelism).
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.parallelism",
        label_selector_path = ".status.selector"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Rules use only `rule` and `message`: `fieldPath` and `reason` came with Kubernetes 1.28, and
// an older API server refuses a CRD that has them under strict field validation (kubectl's
// default). crds/tests/crd.rs checks this.
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.parallelism) || !has(self.maxParallelism) || self.parallelism <= self.maxParallelism",
        "message": "parallelism must not exceed maxParallelism"
    },
    {
        "rule": "!has(self.onError) || self.onError != 'deadLetter' || has(self.deadLetter)",
        "message": "onError: deadLetter needs a deadLetter sink"
    },
    {
        "rule": "self.steps.all(s, self.steps.exists_one(t, t.name == s.name))",
        "message": "step names must be unique"
    },
    {
        "rule": "self.steps.exists(s, has(s.source))",
        "message": "the job needs at least one source step"
    },
    {
        "rule": "self.steps.exists(s, has(s.sink))",
        "message": "the job needs at least one sink step"
    }
]))]
pub struct StreamJobSpec {
    /// Default number of parallel instances (subtasks) of every step (the scale subresource's
    /// replicas). At most 32768 (the largest `maxParallelism`); the operator also caps the workers of one job
    /// (its `--max-workers-per-job`, 256 by default).
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 32768))]
    pub parallelism: u32,

    /// Number of key groups: the upper bound for the parallelism of keyed steps and the unit
    /// in which keyed state is rescaled. Immutable once the job exists: state is stored by key
    /// group, and a restore with a different number would put keys in the wrong groups.
    #[serde(default = "default_max_parallelism")]
    #[schemars(range(min = 1, max = 32768))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == oldSelf",
        "message": "maxParallelism cannot change: checkpoints and savepoints store keyed state by key group, so a restore needs the same number (create a new job to change it)"
    }]))]
    pub max_parallelism: u32,

    /// Worker container image; the operator's default image when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// What to do with a record whose expression fails at runtime: `fail` the job, `skip` the
    /// record (counted in metrics), or send it to the `deadLetter` sink.
    #[serde(default)]
    pub on_error: OnError,

    /// Sink that receives records failing with `onError: deadLetter`, with the error attached.
    /// Required when `onError` is `deadLetter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<SinkSpec>,

    /// Longest time in milliseconds a partly filled network buffer waits before it is sent
    /// (latency/throughput trade-off, as Flink's `bufferTimeout`).
    #[serde(default = "default_buffer_timeout_ms")]
    pub buffer_timeout_ms: u64,

    /// Periodic aligned checkpoints (worker 0 coordinates): a job restarted after a failure
    /// restores from the latest complete one (state, source positions; sinks drop or abort
    /// what came after). Also where savepoints go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpointing: Option<Checkpointing>,

    /// Slots per worker pod: worker i runs subtasks `i*slots .. (i+1)*slots` of every step,
    /// so the job gets `ceil(max step parallelism / slotsPerWorker)` pods.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 256))]
    pub slots_per_worker: u32,

    /// CPU and memory of each worker container (default: the operator's, else a 500m CPU
    /// request and 1Gi of memory). Memory always gets a request and a limit: one given
    /// alone is used for both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,

    /// Extra environment variables of the worker container, e.g. the `AWS_*` settings of
    /// `s3://` checkpoint storage (credentials through `valueFrom.secretKeyRef`). Names
    /// starting with `STREAMJOB_` or `POD_` are reserved for the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<k8s_openapi::api::core::v1::EnvVar>,

    /// A partial pod template merged over the generated worker pod template like a strategic
    /// merge patch: maps merge, containers, volumes and env merge by name (volumeMounts by
    /// mountPath, ports by containerPort), `$patch: delete` removes an element, other lists
    /// replace. E.g. `{spec: {containers: [{name: worker, resources: {...}}]}}` changes only
    /// the worker's resources; a container with another name is a sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub pod_template: Option<serde_json::Value>,

    /// Desired state: `running`, or `suspended` to stop the workers and keep the job
    /// (with `upgradeMode` savepoint or last-state, a suspend takes a savepoint first).
    #[serde(default)]
    pub state: JobState,

    /// How the operator carries state across spec changes, suspends and restarts:
    /// `stateless` (start empty), `savepoint` (stop with a savepoint, restore from it) or
    /// `last-state` (restore from the latest checkpoint). Stateful modes need
    /// `checkpointing`; the operator never falls back to stateless on its own.
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,

    /// Change to any new value to take a savepoint of the running job (kept until deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,

    /// Change to any new value to restart the workers (restoring as `upgradeMode` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,

    /// Savepoint or checkpoint directory (`file:///...`, a path, or `s3://bucket/prefix/...`)
    /// the job starts from the first time it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_savepoint_path: Option<String>,

    /// Start even if the savepoint holds state of an operator (`uid`) the job no longer has;
    /// that state is dropped. Without it such a restore fails and names the operator.
    #[serde(default)]
    pub allow_non_restored_state: bool,

    /// Take a final savepoint when the StreamJob is deleted (stateful upgrade modes only).
    #[serde(default = "default_true")]
    pub savepoint_on_deletion: bool,

    /// What a worker does when a task fails: with `checkpointing`, restart the job from the
    /// latest checkpoint up to `attempts` times, waiting with exponential backoff in between;
    /// without it a failure is final (a rerun would repeat output).
    #[serde(default)]
    pub restart_strategy: RestartStrategy,

    /// The pipeline, in order. A step reads the previous step unless it names its `input`.
    #[schemars(length(min = 1, max = 100))]
    pub steps: Vec<Step>,
}

/// Checkpoint settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Checkpointing {
    /// Time between checkpoints, in ms.
    #[schemars(range(min = 10))]
    pub interval_ms: u64,
    /// Where checkpoints are stored: `s3://bucket/prefix` (credentials and endpoint from the
    /// workers' `AWS_*` environment, see `env`), `file:///path` or a plain path (a volume
    /// every worker shares; relative paths resolve against the manifest's directory).
    #[schemars(length(min = 1))]
    pub directory: String,
    /// Complete checkpoints kept.
    #[serde(default = "default_retained")]
    #[schemars(range(min = 1))]
    pub retained: u32,
    /// Where savepoints are written; `<directory>/savepoints` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_directory: Option<String>,
    /// Longest time a checkpoint may take, in ms, before it is declined as failed (Flink's
    /// `checkpointTimeout`). Default 600000 (10 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10))]
    pub checkpoint_timeout: Option<u64>,
    /// Least time, in ms, from the end of one checkpoint to the start of the next (Flink's
    /// `minPauseBetweenCheckpoints`). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pause_between_checkpoints: Option<u64>,
    /// Checkpoint failures in a row the job tolerates before it fails (and restarts as
    /// `restartStrategy` says) (Flink's `tolerableCheckpointFailureNumber`). Unset: no limit,
    /// a failed checkpoint is logged and the next interval tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerable_checkpoint_failure_number: Option<u32>,
}

/// Default of `checkpointing.checkpointTimeout`: 10 minutes, in ms.
pub const DEFAULT_CHECKPOINT_TIMEOUT_MS: u64 = 600_000;

impl Checkpointing {
    /// `checkpointTimeout` or its default, in ms.
    pub fn checkpoint_timeout_ms(&self) -> u64 {
        self.checkpoint_timeout
            .unwrap_or(DEFAULT_CHECKPOINT_TIMEOUT_MS)
    }
    /// `minPauseBetweenCheckpoints` or its default (0), in ms.
    pub fn min_pause_between_checkpoints_ms(&self) -> u64 {
        self.min_pause_between_checkpoints.unwrap_or(0)
    }
}

fn default_retained() -> u32 {
    3
}

fn default_true() -> bool {
    true
}

/// How state is carried across upgrades (Flink operator's `upgradeMode`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    /// Start from empty state (or `initialSavepointPath`) after every change.
    #[default]
    Stateless,
    /// Stop with a savepoint before a change and restore from it.
    Savepoint,
    /// Restore from the latest complete checkpoint (no savepoint on the way down).
    LastState,
}

/// Restarts after a failure (Flink's exponential-delay restart strategy).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestartStrategy {
    /// Restarts allowed before the job fails for good (0: never restart).
    #[serde(default = "default_restart_attempts")]
    #[schemars(range(max = 1000))]
    pub attempts: u32,
    /// Wait before the first restart, in ms; doubled after each failed attempt.
    #[serde(default = "default_restart_delay_ms")]
    #[schemars(range(max = 3600000))]
    pub initial_delay_ms: u64,
    /// Longest wait between restarts, in ms.
    #[serde(default = "default_restart_max_delay_ms")]
    #[schemars(range(max = 3600000))]
    pub max_delay_ms: u64,
}

fn default_restart_attempts() -> u32 {
    3
}
fn default_restart_delay_ms() -> u64 {
    1000
}
fn default_restart_max_delay_ms() -> u64 {
    30000
}

impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy {
            attempts: default_restart_attempts(),
            initial_delay_ms: default_restart_delay_ms(),
            max_delay_ms: default_restart_max_delay_ms(),
        }
    }
}

impl RestartStrategy {
    /// Wait before restart number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> std::time::Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        std::time::Duration::from_millis(
            self.initial_delay_ms
                .saturating_mul(factor)
                .min(self.max_delay_ms.max(self.initial_delay_ms)),
        )
    }
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Handling of records whose expression fails at runtime.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum OnError {
    /// Fail the job (it restarts from the last checkpoint).
    #[default]
    Fail,
    /// Drop the record and count it.
    Skip,
    /// Send the record to the `deadLetter` sink.
    DeadLetter,
}

/// Desired run state of a job.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum JobState {
    /// Workers are running.
    #[default]
    Running,
    /// Workers are scaled to zero; the job definition is kept.
    Suspended,
}

/// One step of the pipeline: exactly one of `source`, `map`, `filter`, `flatMap`, `keyBy`,
/// `reduce`, `window`, `rebalance`, `sink`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// "Exactly one kind" is a `oneOf` of `required` lists, not a CEL rule: a rule that inspects
// `rebalance` (an object without properties) fails to evaluate on Kubernetes before 1.29
// (kubernetes/kubernetes#120226), which rejected every step of such a job.
#[schemars(extend(
    "oneOf" = [
        {"required": ["source"]}, {"required": ["map"]}, {"required": ["filter"]},
        {"required": ["flatMap"]}, {"required": ["keyBy"]}, {"required": ["reduce"]},
        {"required": ["window"]}, {"required": ["rebalance"]}, {"required": ["sink"]}
    ],
    "x-kubernetes-validations" = [
        {
            "rule": "!has(self.source) || !has(self.input)",
            "message": "a source step cannot have an input"
        }
    ]
))]
pub struct Step {
    /// Unique name of the step (lowercase letters, digits and '-'); other steps refer to it
    /// in `input`, and it names the operator in plans and metrics.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Names of the (earlier) steps this step reads; several names merge their streams
    /// (fan-in), and several steps may read the same one (fan-out). Defaults to the
    /// previous step. Not allowed on sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub input: Option<Vec<String>>,

    /// Parallelism of this step; the job's `parallelism` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32768))]
    pub parallelism: Option<u32>,

    /// Stable operator id used to match state on restore; derived from the position when
    /// unset. Set it before reordering steps of a stateful job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,

    /// Reads records from an external system or an inline collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,

    /// Transforms each record `value` into the result of `expr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<ExprSpec>,

    /// Keeps the records `value` for which the boolean `expr` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<ExprSpec>,

    /// Emits every element of the list `expr` returns for the record `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flat_map: Option<ExprSpec>,

    /// Partitions the stream by the key `expr` computes from `value` (a string or an int):
    /// the records of one key go to the same subtask of the next step and share its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_by: Option<ExprSpec>,

    /// Rolling reduce per key (needs a keyBy before it): the first record of a key becomes
    /// the accumulator, each later one sets `acc = expr` (variables `acc`, `value`, `key`);
    /// every new accumulator is emitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<ExprSpec>,

    /// Groups records into windows (per key after a keyBy, else over all records) and emits
    /// one result per window when it fires: tumbling, sliding, session or count windows in
    /// event or processing time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,

    /// Redistributes records round-robin over the subtasks of the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceSpec>,

    /// Writes records to an external system or to the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkSpec>,
}

/// A CEL expression.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExprSpec {
    /// CEL expression over the record `value` (and `acc`, `key` in `reduce`).
    #[schemars(length(min = 1))]
    pub expr: String,
}

/// Round-robin redistribution; takes no settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[schemars(transform = empty_object_schema)]
pub struct RebalanceSpec {}

/// Where records come from: exactly one of `collection`, `socket`, `file`, `kafka`,
/// `nexmark`; optionally with `watermarks` (their event time).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.collection), has(self.socket), has(self.file), has(self.kafka), has(self.nexmark)].filter(x, x).size() == 1",
    "message": "a source must set exactly one of collection, socket, file, kafka, nexmark"
}]))]
pub struct SourceSpec {
    /// A fixed list of records (bounded; for tests and demos). Not parallel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<CollectionSource>,
    /// Lines of text read from a TCP server (unbounded). Not parallel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<SocketSource>,
    /// Lines of a text file (bounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSource>,
    /// Records of Kafka topics (unbounded, exactly-once with checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSource>,
    /// The Nexmark benchmark's generated events (bounded by `events`, else unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nexmark: Option<NexmarkSource>,
    /// Event timestamps and watermarks of the records, for event-time windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermarks: Option<WatermarksSpec>,
}

/// Inline records.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CollectionSource {
    /// The records, any JSON values (strings, numbers, objects, lists).
    #[schemars(schema_with = "any_json_list")]
    pub values: Vec<serde_json::Value>,
}

/// Kubernetes forbids `additionalProperties: false`; the API server prunes unknown fields of
/// these settings-less objects anyway, and serde still rejects them client-side.
fn empty_object_schema(schema: &mut Schema) {
    schema.remove("additionalProperties");
}

fn any_json_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// A TCP text source: one record (a string) per line.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SocketSource {
    /// Host name or address to connect to.
    #[schemars(length(min = 1))]
    pub host: String,
    /// TCP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Reconnection attempts after the connection drops; 0 ends the source on disconnect.
    #[serde(default)]
    pub max_retry: u32,
    /// How long one connection attempt may take, in ms (default 5000); a slower attempt
    /// counts as failed and is retried as `maxRetry` allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600000))]
    pub connect_timeout_ms: Option<u64>,
}

/// A text file: one record (a string) per line.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSource {
    /// Path of the file inside the worker container.
    #[schemars(length(min = 1))]
    pub path: String,
}

/// Where a Kafka consumer starts when the job has no checkpoint.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum StartingOffsets {
    /// The oldest retained record.
    Earliest,
    /// Only records produced after the job starts.
    Latest,
    /// The consumer group's committed offsets (falling back to `committedFallback`).
    #[default]
    Committed,
    /// The first record at or after `startingTimestampMs`.
    Timestamp,
}

/// What a Kafka source does about a topic that does not exist.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum MissingTopic {
    /// The job fails, naming the topic.
    #[default]
    Fail,
    /// The source waits (and logs) until the topic exists.
    Wait,
}

fn default_discovery_ms() -> u64 {
    10_000
}

fn default_commit_ms() -> u64 {
    5_000
}

/// Fallback when no committed offset exists.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum OffsetReset {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// Only new records.
    Latest,
}

/// How Kafka record payloads map to values.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RecordFormat {
    /// UTF-8 text as a string value.
    #[default]
    String,
    /// A JSON document parsed into a value.
    Json,
    /// Raw bytes.
    Bytes,
}

/// How a Kafka sink picks the partition of a keyed record (records without a key go to a
/// random partition).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum KafkaPartitioner {
    /// As the Java client and Kafka Streams do: murmur2 of the key bytes, made positive
    /// (`& 0x7fffffff`), modulo the partition count. Keeps co-partitioning with Java
    /// producers.
    #[default]
    Murmur2,
    /// librdkafka's default: CRC32 of the key bytes modulo the partition count.
    Crc32,
    /// FNV-1a of the key bytes (as Sarama, the Go client, does).
    Fnv1a,
}

/// A reference to one key of a Kubernetes Secret in the job's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A Kafka consumer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.startingOffsets) && self.startingOffsets == 'timestamp') == has(self.startingTimestampMs)",
    "message": "startingTimestampMs is required with, and only with, startingOffsets: timestamp"
}]))]
pub struct KafkaSource {
    /// Comma-separated `host:port` list of brokers.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// Topics to read.
    #[schemars(length(min = 1))]
    pub topics: Vec<String>,
    /// Consumer group id (offsets are committed to it on checkpoints, for monitoring).
    #[schemars(length(min = 1))]
    pub group_id: String,
    /// Where to start without a checkpoint.
    #[serde(default)]
    pub starting_offsets: StartingOffsets,
    /// Start timestamp (ms since the epoch) for `startingOffsets: timestamp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_timestamp_ms: Option<i64>,
    /// Where `committed` starts for partitions without a committed offset.
    #[serde(default)]
    pub committed_fallback: OffsetReset,
    /// Payload format.
    #[serde(default)]
    pub format: RecordFormat,
    /// Stop at the offsets that are the latest when the job starts (a bounded read, like
    /// Flink's `setBounded(OffsetsInitializer.latest())`). Default: read forever.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bounded: bool,
    /// Make each record a map `{key, value, headers, topic, partition, offset, timestamp}`
    /// (the payload, decoded per `format`, is `value`; a tombstone's is null; `headers` maps
    /// each header name to its last value, a string if UTF-8, else bytes) instead of the
    /// payload alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_metadata: bool,
    /// Optional CEL expression computing each record's value at the source, over `value`
    /// (the payload decoded per `format`; null for a tombstone) and `record` (`key`,
    /// `headers`, `timestamp`, `topic`, `partition`, `offset`), e.g.
    /// `{'user': value.user, 'trace': record.headers['trace-id']}`. `record.headers` maps
    /// each header name to its last value (a string if UTF-8, else bytes; null for a null
    /// value). An alternative to `includeMetadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub value: Option<String>,
    /// What to do when a topic does not exist: `fail` (default) or `wait` until it does.
    #[serde(default)]
    pub missing_topic: MissingTopic,
    /// How often new partitions of the topics are looked for, in ms.
    #[serde(default = "default_discovery_ms")]
    #[schemars(range(min = 100))]
    pub partition_discovery_interval_ms: u64,
    /// Without `checkpointing`, how often processed offsets are committed to the consumer
    /// group, in ms (also at the end of a bounded read). With it, offsets are committed when
    /// a checkpoint completes.
    #[serde(default = "default_commit_ms")]
    #[schemars(range(min = 100))]
    pub commit_interval_ms: u64,
    /// Extra librdkafka consumer properties. Secrets do not belong here: use `secretProperties`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Consumer properties read from Secrets (passwords, keys).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_properties: BTreeMap<String, SecretKeyRef>,
}

/// Where records go: exactly one of `print`, `file`, `blackhole`, `kafka`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// `oneOf`, not CEL: `print` and `blackhole` have no properties (see `Step`).
#[schemars(extend("oneOf" = [
    {"required": ["print"]}, {"required": ["file"]}, {"required": ["blackhole"]}, {"required": ["kafka"]}
]))]
pub struct SinkSpec {
    /// Logs each record to the worker's stdout (`print: {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub print: Option<PrintSink>,
    /// Appends each record as a line to a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSink>,
    /// Discards records (for benchmarks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blackhole: Option<BlackholeSink>,
    /// Produces records to a Kafka topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSink>,
}

/// Stdout sink; takes no settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[schemars(transform = empty_object_schema)]
pub struct PrintSink {}

/// Discarding sink; takes no settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[schemars(transform = empty_object_schema)]
pub struct BlackholeSink {}

/// A file sink: one line per record.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSink {
    /// Path of the file inside the worker container.
    #[schemars(length(min = 1))]
    pub path: String,
}

/// Delivery guarantee of the Kafka sink.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryGuarantee {
    /// Fire and forget.
    None,
    /// Flush on every checkpoint; duplicates are possible after a failure.
    #[default]
    AtLeastOnce,
    /// Kafka transactions committed on checkpoint completion (needs `transactionalIdPrefix`).
    ExactlyOnce,
}

/// A Kafka producer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.deliveryGuarantee) || self.deliveryGuarantee != 'exactly-once' || has(self.transactionalIdPrefix)",
    "message": "deliveryGuarantee exactly-once needs a transactionalIdPrefix"
}]))]
pub struct KafkaSink {
    /// Comma-separated `host:port` list of brokers.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// Topic to write to.
    #[schemars(length(min = 1))]
    pub topic: String,
    /// Optional CEL expression over `value` computing the record key (a string, int or bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Optional CEL expression over `value` computing the record headers: a map of header
    /// name to a string or bytes (a null entry writes no header; a null map no headers).
    /// With `metadata: true` it replaces the map's `headers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub headers: Option<String>,
    /// Payload format.
    #[serde(default)]
    pub format: RecordFormat,
    /// How keyed records are spread over the topic's partitions.
    #[serde(default)]
    pub partitioner: KafkaPartitioner,
    /// Each record is a map `{key, value, headers}` (as a source with `includeMetadata`
    /// reads): `value` becomes the payload (null: a tombstone), `key` the record key unless
    /// the `key` expression is set, `headers` (a map of strings or bytes) the record headers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metadata: bool,
    /// Delivery guarantee.
    #[serde(default)]
    pub delivery_guarantee: DeliveryGuarantee,
    /// With `exactly-once` and no `checkpointing`, how often the open transaction is
    /// committed, in ms (the last one commits at end of input). At most 5 minutes, so the
    /// transaction stays within the brokers' transaction timeout. With checkpointing,
    /// transactions commit when their checkpoint completes.
    #[serde(default = "default_commit_ms")]
    #[schemars(range(min = 100, max = 300000))]
    pub commit_interval_ms: u64,
    /// Prefix of the Kafka transactional ids (must be unique per job across the cluster);
    /// required for `exactly-once`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactional_id_prefix: Option<String>,
    /// With `exactly-once`, the Kafka transaction timeout in ms. A transaction stays open
    /// from one checkpoint until the next completes, and across a restart until it is
    /// committed again, so this must exceed the checkpoint interval plus the restart time;
    /// at most the brokers' `transaction.max.timeout.ms` (15 minutes by default).
    #[serde(default = "default_transaction_timeout_ms")]
    #[schemars(range(min = 1000, max = 3600000))]
    pub transaction_timeout_ms: u64,
    /// Extra librdkafka producer properties. Secrets do not belong here: use `secretProperties`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Producer properties read from Secrets (passwords, keys).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_properties: BTreeMap<String, SecretKeyRef>,
}

/// Lifecycle phase of a job.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, nothing created yet.
    #[default]
    Pending,
    /// Workers are being created or are not all ready.
    Deploying,
    /// All workers are ready and processing.
    Running,
    /// Suspended by `state: suspended`.
    Suspended,
    /// Invalid spec or unrecoverable failure; see `message` and `conditions`.
    Failed,
    /// All sources were bounded and the job completed.
    Finished,
}

/// Observed state of a job, written by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Standard conditions (`Ready`, `SpecValid`, ...), one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Worker pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_workers: Option<i32>,
    /// Worker pods the plan needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_workers: Option<i32>,
    /// Summary of the physical plan the workers run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanStatus>,
    /// Human-readable detail about the phase (e.g. the validation errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Latest complete checkpoint reported by the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<SnapshotInfo>,
    /// Latest savepoint taken (on demand, before an upgrade, on suspend or deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SnapshotInfo>,
    /// Checkpoint namespace of the running deployment: workers write checkpoints under
    /// `<checkpointing.directory>/<runId>`; a stateless upgrade starts a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Checkpoint or savepoint path the running workers restored from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// The `savepointTriggerNonce` whose savepoint was taken (or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_savepoint_trigger_nonce: Option<i64>,
    /// The `restartNonce` the running workers were started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_restart_nonce: Option<i64>,
    /// An upgrade in progress (stop with savepoint, then restore), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeStatus>,
    /// The last failure of the job or of a savepoint, with its cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// `spec.parallelism` of the workers that run (the scale subresource's replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Label selector of the worker pods (the scale subresource's selector, for an HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Records per second the sources read (over the last second, as worker 0 measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_in_per_second: Option<u64>,
    /// Records per second the sinks wrote (over the last second, as worker 0 measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_out_per_second: Option<u64>,
    /// Times the job restarted after a failure in the running deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// Records the Kafka sources are behind the end of their partitions (high watermark, or
    /// last stable offset with read_committed), summed over the partitions of every worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_lag: Option<u64>,
}

/// A complete checkpoint or savepoint.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// Checkpoint id.
    pub id: u64,
    /// When it completed (RFC 3339).
    pub time: String,
    /// Where it is stored; a valid `initialSavepointPath`.
    pub path: String,
}

/// Progress of an upgrade.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStatus {
    /// `savepointing` (stopping the old workers with a savepoint) or `deploying` (new
    /// workers restoring from it).
    pub step: String,
    /// The generation being rolled out.
    pub target_generation: i64,
    /// The savepoint the new workers restore from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_path: Option<String>,
}

/// Summary of the physical plan.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlanStatus {
    /// Number of chains (tasks).
    pub chains: u32,
    /// Slots the job needs (largest chain parallelism).
    pub slots: u32,
    /// Plan fingerprint (hex), identical on every worker.
    pub fingerprint: String,
    /// One-line description, e.g. `source -> words | HASH | count -> print`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl StreamJobSpec {
    /// Effective parallelism of step `i` (its own or the job default).
    pub fn step_parallelism(&self, i: usize) -> u32 {
        self.steps[i].parallelism.unwrap_or(self.parallelism)
    }
}

impl Step {
    /// Names of the kinds set on this step (normally exactly one).
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k = Vec::with_capacity(1);
        for (set, name) in [
            (self.source.is_some(), "source"),
            (self.map.is_some(), "map"),
            (self.filter.is_some(), "filter"),
            (self.flat_map.is_some(), "flatMap"),
            (self.key_by.is_some(), "keyBy"),
            (self.reduce.is_some(), "reduce"),
            (self.window.is_some(), "window"),
            (self.rebalance.is_some(), "rebalance"),
            (self.sink.is_some(), "sink"),
        ] {
            if set {
                k.push(name);
            }
        }
        k
    }

    /// The step's kind, when exactly one is set.
    pub fn kind(&self) -> Option<&'static str> {
        match self.kinds().as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

impl SourceSpec {
    /// Names of the source kinds set (normally exactly one).
    pub fn kinds(&self) -> Vec<&'static str> {
        [
            (self.collection.is_some(), "collection"),
            (self.socket.is_some(), "socket"),
            (self.file.is_some(), "file"),
            (self.kafka.is_some(), "kafka"),
            (self.nexmark.is_some(), "nexmark"),
        ]
        .into_iter()
        .filter_map(|(set, n)| set.then_some(n))
        .collect()
    }
}

impl SinkSpec {
    /// Names of the sink kinds set (normally exactly one).
    pub fn kinds(&self) -> Vec<&'static str> {
        [
            (self.print.is_some(), "print"),
            (self.file.is_some(), "file"),
            (self.blackhole.is_some(), "blackhole"),
            (self.kafka.is_some(), "kafka"),
        ]
        .into_iter()
        .filter_map(|(set, n)| set.then_some(n))
        .collect()
    }
}
