//! librdkafka's logs and errors, rate-limited: while a broker is down librdkafka reports
//! the same failure several times a second per connection, which buried the one line that
//! mattered (an unreachable sink wrote ~700 lines before failing).

use std::collections::HashMap;
use std::sync::Mutex;
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

/// Context of the source's consumer: rate-limited logs.
#[derive(Default)]
pub(crate) struct QuietContext {
    pub(crate) limiter: LogLimiter,
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.limiter.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.limiter.error(&error, reason);
    }
}

impl ConsumerContext for QuietContext {}

#[cfg(test)]
mod tests {
    use super::*;

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
