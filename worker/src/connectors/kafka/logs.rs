//! librdkafka's logs and errors, rate-limited: while a broker is down librdkafka reports
//! the same failure several times a second per connection, which buried the one line that
//! mattered (an unreachable sink wrote ~700 lines before failing).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use tracing::{error, info, warn};

/// A kind of message is logged at most once per this period.
const EVERY: Duration = Duration::from_secs(30);

/// Remembers when each kind of message was last logged and how many were held back since.
#[derive(Default)]
pub(crate) struct LogLimiter {
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl LogLimiter {
    /// `Some(held back since the last one)` if a message of `kind` may be logged now.
    pub(crate) fn allow(&self, kind: &str) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match seen.get_mut(kind) {
            Some((last, held)) if now.duration_since(*last) < EVERY => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                Some(n)
            }
            None => {
                seen.insert(kind.to_string(), (now, 0));
                Some(0)
            }
        }
    }

    /// librdkafka's log line, one per facility and level per period.
    pub(crate) fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let Some(held) = self.allow(&format!("log:{fac}:{}", level as i32)) else {
            return;
        };
        let more = suffix(held);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(target: "librdkafka", "{fac}: {message}{more}"),
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", "{fac}: {message}{more}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", "{fac}: {message}{more}")
            }
            RDKafkaLogLevel::Debug => {}
        }
    }

    /// A client-wide error (broker down, transport failure), one per error code per period.
    /// librdkafka retries these by itself; what cannot be retried reaches the job as an
    /// error of a call.
    pub(crate) fn error(&self, e: &KafkaError, reason: &str) {
        let kind = match e.rdkafka_error_code() {
            Some(code) => format!("error:{code:?}"),
            None => format!("error:{e}"),
        };
        if let Some(held) = self.allow(&kind) {
            warn!(target: "librdkafka", "{e}: {reason}{}", suffix(held));
        }
    }
}

fn suffix(held: u64) -> String {
    if held == 0 {
        String::new()
    } else {
        format!(
            " ({held} similar messages in the last {} s not logged)",
            EVERY.as_secs()
        )
    }
}

/// Context of the source's consumer: rate-limited logs, and the partitions' end offsets from
/// librdkafka's statistics (for the consumer lag).
#[derive(Default)]
pub(crate) struct QuietContext {
    pub(crate) limiter: LogLimiter,
    /// Lag is measured against the last stable offset (what a read_committed consumer can
    /// read) instead of the high watermark.
    read_committed: bool,
    ends: Mutex<Vec<PartitionEnd>>,
    /// New statistics since the reader last took them.
    fresh: AtomicBool,
}

/// Where a partition's log ends and where the consumer is, per the last statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionEnd {
    pub topic: String,
    pub partition: i32,
    /// The high watermark, or the last stable offset with read_committed.
    pub end: i64,
    /// The offset after the last record handed to the application (-1 before any). It moves
    /// past transaction markers, which the records' own offsets do not.
    pub app_offset: i64,
}

#[derive(serde::Deserialize)]
struct Stats {
    #[serde(default)]
    topics: HashMap<String, TopicStats>,
}

#[derive(serde::Deserialize)]
struct TopicStats {
    #[serde(default)]
    partitions: HashMap<String, PartitionStats>,
}

#[derive(serde::Deserialize)]
struct PartitionStats {
    partition: i32,
    #[serde(default = "unknown")]
    hi_offset: i64,
    #[serde(default = "unknown")]
    ls_offset: i64,
    #[serde(default = "unknown")]
    app_offset: i64,
}

fn unknown() -> i64 {
    -1
}

/// The end offsets of the fetched partitions in librdkafka's statistics JSON.
pub(crate) fn partition_ends(json: &[u8], read_committed: bool) -> Vec<PartitionEnd> {
    let Ok(stats) = serde_json::from_slice::<Stats>(json) else {
        return Vec::new();
    };
    let mut ends = Vec::new();
    for (topic, t) in stats.topics {
        for p in t.partitions.into_values() {
            // -1 is librdkafka's internal "unassigned" partition.
            let end = match read_committed && p.ls_offset >= 0 {
                true => p.ls_offset,
                false => p.hi_offset,
            };
            if p.partition >= 0 && end >= 0 {
                ends.push(PartitionEnd {
                    topic: topic.clone(),
                    partition: p.partition,
                    end,
                    app_offset: p.app_offset,
                });
            }
        }
    }
    ends
}

impl QuietContext {
    pub(crate) fn new(read_committed: bool) -> Self {
        QuietContext {
            read_committed,
            ..Default::default()
        }
    }

    /// The end offsets of the latest statistics, if they arrived since the last call.
    pub(crate) fn take_ends(&self) -> Option<Vec<PartitionEnd>> {
        if !self.fresh.swap(false, Ordering::Relaxed) {
            return None;
        }
        Some(std::mem::take(
            &mut *self.ends.lock().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.limiter.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.limiter.error(&error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        let ends = partition_ends(statistics, self.read_committed);
        *self.ends.lock().unwrap_or_else(|p| p.into_inner()) = ends;
        self.fresh.store(true, Ordering::Relaxed);
    }
}

impl ConsumerContext for QuietContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_ends_come_from_the_statistics() {
        let json = br#"{"name":"c","topics":{"events":{"topic":"events","partitions":{
            "0":{"partition":0,"hi_offset":120,"ls_offset":118,"app_offset":100},
            "1":{"partition":1,"hi_offset":-1,"ls_offset":-1,"app_offset":-1},
            "-1":{"partition":-1,"hi_offset":-1,"ls_offset":-1,"app_offset":-1}}}}}"#;
        let end = |end| PartitionEnd {
            topic: "events".into(),
            partition: 0,
            end,
            app_offset: 100,
        };
        assert_eq!(partition_ends(json, true), vec![end(118)]);
        assert_eq!(partition_ends(json, false), vec![end(120)]);
        assert_eq!(partition_ends(b"{oops", false), vec![]);
    }

    #[test]
    fn a_kind_of_message_is_logged_once_per_period_with_the_count_held_back() {
        let l = LogLimiter::default();
        assert_eq!(l.allow("a"), Some(0));
        assert_eq!(l.allow("a"), None);
        assert_eq!(l.allow("a"), None);
        assert_eq!(l.allow("b"), Some(0), "kinds are counted apart");
        // Pretend the period is over.
        l.seen.lock().unwrap().get_mut("a").unwrap().0 -= EVERY;
        assert_eq!(l.allow("a"), Some(2));
        assert_eq!(l.allow("a"), None);
    }
}
