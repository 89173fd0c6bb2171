//! Time-to-live of keyed state entries (Flink's `StateTtlConfig`): an entry older than its
//! TTL in processing time is never returned and is removed when it is next touched, when a
//! snapshot is taken, and by a periodic sweep of the operator, so state does not grow forever.
//!
//! Every entry records the processing time of its last write (and of its last read with
//! [`UpdateType::OnReadAndWrite`]), whether or not its state has a TTL, so a TTL can be
//! enabled on a state restored from a snapshot taken without one.

use std::time::Duration;

/// When an entry's age is reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateType {
    /// Only writes (create, update, add, put) reset the age (Flink's default).
    OnCreateAndWrite,
    /// Reads of a live entry reset its age too.
    OnReadAndWrite,
}

/// TTL of a state's entries. Expired entries are never returned (Flink's
/// `NeverReturnExpired`), and the TTL follows the operator's processing-time clock (the
/// clock given to `process_with_clock` in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTtlConfig {
    ttl_ms: i64,
    update_type: UpdateType,
}

impl StateTtlConfig {
    /// Entries expire `ttl` after their last write. Sub-millisecond parts are dropped; a TTL
    /// under 1 ms is 1 ms.
    pub fn new(ttl: Duration) -> Self {
        StateTtlConfig {
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1),
            update_type: UpdateType::OnCreateAndWrite,
        }
    }

    pub fn with_update_type(mut self, update_type: UpdateType) -> Self {
        self.update_type = update_type;
        self
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms as u64)
    }

    pub fn update_type(&self) -> UpdateType {
        self.update_type
    }

    pub(crate) fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    /// Whether an entry last stamped at `at` is expired at processing time `now`.
    #[inline]
    pub(crate) fn expired(&self, at: i64, now: i64) -> bool {
        now >= at.saturating_add(self.ttl_ms)
    }

    #[inline]
    pub(crate) fn refresh_on_read(&self) -> bool {
        self.update_type == UpdateType::OnReadAndWrite
    }
}

/// `ttl` (if any) says the entry stamped at `at` is expired at `now`.
#[inline]
pub(crate) fn is_expired(ttl: Option<&StateTtlConfig>, at: i64, now: i64) -> bool {
    ttl.is_some_and(|t| t.expired(at, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_expires_exactly_ttl_after_its_stamp() {
        let t = StateTtlConfig::new(Duration::from_millis(100));
        assert!(!t.expired(1_000, 1_099));
        assert!(t.expired(1_000, 1_100));
        assert!(!t.expired(i64::MAX - 5, i64::MAX - 1), "no overflow");
        assert_eq!(StateTtlConfig::new(Duration::ZERO).ttl_ms(), 1);
        assert!(!t.refresh_on_read());
        assert!(
            t.with_update_type(UpdateType::OnReadAndWrite)
                .refresh_on_read()
        );
    }
}
