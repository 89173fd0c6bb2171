//! Event time and windows in the spec: a source's `watermarks`, the `window` step and the
//! built-in `nexmark` source.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::DURATION_PATTERN;

/// Event time of a source's records and how its watermarks follow them (Flink's
/// `WatermarkStrategy.forBoundedOutOfOrderness(..).withTimestampAssigner(..).withIdleness(..)`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatermarksSpec {
    /// CEL expression over the record `value` (and, for a Kafka source, the Kafka `record`
    /// as in its `value` expression) giving its event time in ms since the epoch
    /// (an int). Default: the Kafka record timestamp for Kafka sources, the event's
    /// `dateTime` for Nexmark; required for other sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub timestamp: Option<String>,
    /// How far records may arrive out of timestamp order, e.g. `5s`: the watermark trails
    /// the largest timestamp seen by this much. Default `0s` (timestamps ascend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub max_out_of_orderness: Option<String>,
    /// A source subtask (or Kafka partition) without records for this long is idle, e.g.
    /// `1m`: it no longer holds back the watermark downstream. Default: never idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub idleness: Option<String>,
    /// How often the source emits a watermark, e.g. `200ms` (the default, Flink's
    /// `autoWatermarkInterval`); `0s` emits one after every record, which makes the
    /// lateness of each record independent of timing (tests, replays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: Option<String>,
}

/// Event time (the records' timestamps, watermarks) or processing time (the worker's clock).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TimeCharacteristic {
    #[default]
    Event,
    Processing,
}

/// Windows of fixed size, one after the other.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TumblingWindow {
    /// Window length, e.g. `1m`.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub size: String,
}

/// Windows of fixed size that start every `slide` (a record is in `size / slide` windows).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlidingWindow {
    /// Window length, e.g. `10s`.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub size: String,
    /// Time between window starts, e.g. `2s`; at most `size`.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub slide: String,
}

/// A window per burst of activity of a key, closed by a gap without records.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionWindow {
    /// Inactivity that ends a session, e.g. `30s`.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub gap: String,
}

/// Windows of a number of records (per key), fired when full.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CountWindow {
    /// Records per window.
    #[schemars(range(min = 1))]
    pub size: u64,
    /// Fire every `slide` records over the last `size` (sliding count window); default:
    /// `size` (tumbling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub slide: Option<u64>,
}

/// A built-in aggregate function.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum AggregateFunction {
    /// Number of records (no `expr`).
    Count,
    /// Sum of `expr` (ints stay ints; a double makes the sum a double).
    Sum,
    /// Smallest `expr`.
    Min,
    /// Largest `expr`.
    Max,
    /// Mean of `expr`, a double.
    Avg,
}

/// One named aggregate of a window.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.function == 'count' ? !has(self.expr) : has(self.expr)",
    "message": "count takes no expr; sum, min, max and avg need one"
}]))]
pub struct AggregateSpec {
    /// Name the `output` expression reads it by (a CEL identifier).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    )]
    pub name: String,
    /// `count`, `sum`, `min`, `max` or `avg`.
    pub function: AggregateFunction,
    /// CEL expression over the record `value` to aggregate (not for `count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub expr: Option<String>,
}

/// A window over the keyed stream (after `keyBy`) or over all records: exactly one of
/// `tumbling`, `sliding`, `session`, `count`, and exactly one of `aggregates` or `reduce`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend(
    "oneOf" = [
        {"required": ["tumbling"]}, {"required": ["sliding"]},
        {"required": ["session"]}, {"required": ["count"]}
    ],
    "x-kubernetes-validations" = [
        {
            "rule": "has(self.aggregates) != has(self.reduce)",
            "message": "a window needs exactly one of aggregates or reduce"
        },
        {
            "rule": "!has(self.count) || (!has(self.time) && !has(self.allowedLateness))",
            "message": "count windows take no time or allowedLateness"
        }
    ]
))]
pub struct WindowSpec {
    /// Fixed-size, non-overlapping time windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tumbling: Option<TumblingWindow>,
    /// Fixed-size, overlapping time windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding: Option<SlidingWindow>,
    /// Session windows (merged while records come closer than `gap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionWindow>,
    /// Count windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<CountWindow>,
    /// `event` (default; needs `watermarks` on the sources) or `processing` time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeCharacteristic>,
    /// How long after its end (in event time) a window still takes late records, each
    /// firing an updated result, e.g. `1m`. Default `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub allowed_lateness: Option<String>,
    /// Built-in aggregates, each read by its name in `output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub aggregates: Option<Vec<AggregateSpec>>,
    /// Reduce expression over `acc` and `value`: the window's first record is
    /// the accumulator, each later one sets `acc = reduce`. `output` reads the result as
    /// `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub reduce: Option<String>,
    /// CEL expression building each window's result from `key` (null without keyBy),
    /// `window.start` and `window.end` (ms; for count windows the record count as `end`)
    /// and the aggregates by name (or `value` with `reduce`). Default: a map of `key`,
    /// `start`, `end` and the aggregates; with `reduce`, the reduced value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub output: Option<String>,
    /// Step that receives records too late for their windows (after `allowedLateness`),
    /// unchanged. That step reads them in addition to its own `input` (and not the step
    /// before it by default). Without it, late records are dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub late_output: Option<String>,
}

/// The Nexmark benchmark's generator: people, auctions and bids of an online auction
/// site, in the standard proportions (1 : 3 : 46), deterministic for a given `seed`.
/// Records are maps with `type` (`person`, `auction` or `bid`) and the event's fields;
/// `dateTime` is its event time.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NexmarkSource {
    /// Events to generate over all subtasks; unbounded when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub events: Option<u64>,
    /// Events per second of event time (the gap between consecutive event timestamps).
    #[serde(default = "default_nexmark_rate")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub events_per_second: u64,
    /// Event time of the first event, ms since the epoch.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub first_event_time_ms: i64,
    /// Largest events per second of wall-clock time (pacing); unset: as fast as possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_events_per_second: Option<u64>,
}

fn default_nexmark_rate() -> u64 {
    10_000
}

const _: () = {
    // The schema patterns above are this literal: keep them in step with the parser.
    assert!(DURATION_PATTERN.len() == r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$".len());
};
