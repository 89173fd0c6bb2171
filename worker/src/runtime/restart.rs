//! Restart strategies: whether, and after how long, a failed job runs again (Flink's
//! fixed-delay, exponential-delay and failure-rate strategies). `streamjob run`, `streamjob
//! worker` and the local mini-cluster all decide through [`Restarts`]. Decisions read time
//! from a [`Clock`], so tests drive them with a manual clock instead of sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use streamjob_crds::spec::StreamJobSpec;

/// Source of time for restart decisions (and the wait before a restart).
pub trait Clock {
    fn now(&self) -> Instant;
    fn sleep(&self, duration: Duration);
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// How a job restarts after a failure.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// A failure is final.
    NoRestart,
    /// Up to `attempts` restarts in the job's life, each after `delay`.
    FixedDelay { attempts: u32, delay: Duration },
    /// The n-th consecutive restart waits `initial * 2^(n-1)`, at most `max`. A run that
    /// stayed up for `reset_after` counts as healthy: its failure starts the count (and the
    /// delay) afresh, so a long-running job is not failed for good by rare failures.
    ExponentialDelay {
        attempts: u32,
        initial: Duration,
        max: Duration,
        reset_after: Duration,
    },
    /// Restart after `delay` unless more than `max_failures` failures fell within the last
    /// `interval`.
    FailureRate {
        max_failures: u32,
        interval: Duration,
        delay: Duration,
    },
}

/// Healthy period after which the exponential-delay strategy starts over (Flink's default
/// `reset-backoff-threshold`).
pub const DEFAULT_RESET_AFTER: Duration = Duration::from_secs(3600);

impl RestartStrategy {
    /// The strategy a StreamJob asks for: exponential delay from `spec.restartStrategy`, and
    /// no restart without checkpointing (a rerun from the start would repeat output).
    pub fn from_spec(spec: &StreamJobSpec) -> Self {
        if spec.checkpointing.is_none() || spec.restart_strategy.attempts == 0 {
            return RestartStrategy::NoRestart;
        }
        let r = &spec.restart_strategy;
        let initial = Duration::from_millis(r.initial_delay_ms);
        RestartStrategy::ExponentialDelay {
            attempts: r.attempts,
            initial,
            max: Duration::from_millis(r.max_delay_ms).max(initial),
            reset_after: DEFAULT_RESET_AFTER,
        }
    }
}

/// What to do about a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run again after `delay`; `restart` counts restarts in this process (1-based).
    Restart { restart: u32, delay: Duration },
    /// The failure is final; `reason` says which limit was reached.
    GiveUp { reason: String },
}

/// The restart bookkeeping of one job run: call [`Restarts::started`] when a run begins and
/// [`Restarts::failed`] when it fails.
#[derive(Debug)]
pub struct Restarts<C: Clock = SystemClock> {
    strategy: RestartStrategy,
    clock: C,
    /// When the current run began.
    started: Instant,
    /// Restarts counted against the strategy's limit (reset by a healthy period).
    consecutive: u32,
    /// Restarts in this process.
    total: u32,
    /// Failure times within the failure-rate interval.
    recent: VecDeque<Instant>,
}

impl Restarts<SystemClock> {
    pub fn new(strategy: RestartStrategy) -> Self {
        Self::with_clock(strategy, SystemClock)
    }
}

impl<C: Clock> Restarts<C> {
    pub fn with_clock(strategy: RestartStrategy, clock: C) -> Self {
        let started = clock.now();
        Restarts {
            strategy,
            clock,
            started,
            consecutive: 0,
            total: 0,
            recent: VecDeque::new(),
        }
    }

    /// Restarts so far.
    pub fn total(&self) -> u32 {
        self.total
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// A run begins now (the first, or one after a restart).
    pub fn started(&mut self) {
        self.started = self.clock.now();
    }

    /// The current run failed: restart it (after a delay) or give up.
    pub fn failed(&mut self) -> Decision {
        let now = self.clock.now();
        let up_for = now.saturating_duration_since(self.started);
        let delay = match &self.strategy {
            RestartStrategy::NoRestart => {
                return Decision::GiveUp {
                    reason: "restarts are disabled".into(),
                };
            }
            RestartStrategy::FixedDelay { attempts, delay } => {
                if self.consecutive >= *attempts {
                    return Decision::GiveUp {
                        reason: format!("all {attempts} restart attempts used"),
                    };
                }
                self.consecutive += 1;
                *delay
            }
            RestartStrategy::ExponentialDelay {
                attempts,
                initial,
                max,
                reset_after,
            } => {
                if up_for >= *reset_after {
                    self.consecutive = 0;
                }
                if self.consecutive >= *attempts {
                    return Decision::GiveUp {
                        reason: format!(
                            "{attempts} restart attempts used without a healthy run of {reset_after:?}"
                        ),
                    };
                }
                self.consecutive += 1;
                let factor = 1u32 << (self.consecutive - 1).min(20);
                initial.saturating_mul(factor).min(*max)
            }
            RestartStrategy::FailureRate {
                max_failures,
                interval,
                delay,
            } => {
                while self
                    .recent
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) > *interval)
                {
                    self.recent.pop_front();
                }
                self.recent.push_back(now);
                if self.recent.len() > *max_failures as usize {
                    return Decision::GiveUp {
                        reason: format!(
                            "{} failures within {interval:?} (at most {max_failures} allowed)",
                            self.recent.len()
                        ),
                    };
                }
                *delay
            }
        };
        self.total += 1;
        Decision::Restart {
            restart: self.total,
            delay,
        }
    }

    /// Runs `attempt` until it succeeds, fails with an error `retryable` rejects, or the
    /// strategy gives up; between runs `on_restart` is told why and waits the strategy's
    /// delay. `attempt` gets the number of restarts so far.
    pub fn run<R, E>(
        &mut self,
        mut attempt: impl FnMut(u32) -> Result<R, E>,
        retryable: impl Fn(&E) -> bool,
        mut on_restart: impl FnMut(&E, u32, Duration),
    ) -> Result<R, Final<E>> {
        loop {
            self.started();
            let error = match attempt(self.total) {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            if !retryable(&error) {
                return Err(Final {
                    error,
                    gave_up: None,
                });
            }
            match self.failed() {
                Decision::Restart { restart, delay } => {
                    on_restart(&error, restart, delay);
                    self.clock.sleep(delay);
                }
                Decision::GiveUp { reason } => {
                    return Err(Final {
                        error,
                        gave_up: Some(reason),
                    });
                }
            }
        }
    }
}

/// The error a run ended with, and why it was not restarted (`None`: not retryable).
#[derive(Debug)]
pub struct Final<E> {
    pub error: E,
    pub gave_up: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    /// Time moves only when a test (or a restart's wait) moves it.
    #[derive(Clone)]
    struct ManualClock {
        base: Instant,
        offset: Rc<Cell<Duration>>,
        slept: Rc<Cell<Duration>>,
    }

    impl ManualClock {
        fn new() -> Self {
            ManualClock {
                base: Instant::now(),
                offset: Rc::default(),
                slept: Rc::default(),
            }
        }
        fn advance(&self, d: Duration) {
            self.offset.set(self.offset.get() + d);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.base + self.offset.get()
        }
        fn sleep(&self, d: Duration) {
            self.slept.set(self.slept.get() + d);
            self.advance(d);
        }
    }

    const S: Duration = Duration::from_secs(1);

    fn restart(restart: u32, delay: Duration) -> Decision {
        Decision::Restart { restart, delay }
    }

    #[test]
    fn no_restart_gives_up_at_once() {
        let mut r = Restarts::with_clock(RestartStrategy::NoRestart, ManualClock::new());
        assert!(matches!(r.failed(), Decision::GiveUp { .. }));
        assert_eq!(r.total(), 0);
    }

    #[test]
    fn fixed_delay_allows_its_attempts_whatever_the_time_between() {
        let clock = ManualClock::new();
        let mut r = Restarts::with_clock(
            RestartStrategy::FixedDelay {
                attempts: 2,
                delay: 3 * S,
            },
            clock.clone(),
        );
        assert_eq!(r.failed(), restart(1, 3 * S));
        clock.advance(10_000 * S);
        r.started();
        clock.advance(10_000 * S);
        assert_eq!(r.failed(), restart(2, 3 * S));
        let Decision::GiveUp { reason } = r.failed() else {
            panic!("a third restart")
        };
        assert_eq!(reason, "all 2 restart attempts used");
    }

    fn exponential(attempts: u32) -> RestartStrategy {
        RestartStrategy::ExponentialDelay {
            attempts,
            initial: S,
            max: 5 * S,
            reset_after: 60 * S,
        }
    }

    #[test]
    fn exponential_delay_doubles_up_to_the_cap_then_gives_up() {
        let clock = ManualClock::new();
        let mut r = Restarts::with_clock(exponential(5), clock.clone());
        let mut delays = Vec::new();
        for _ in 0..5 {
            match r.failed() {
                Decision::Restart { delay, .. } => delays.push(delay),
                d => panic!("{d:?}"),
            }
            clock.advance(59 * S);
            r.started();
            clock.advance(S / 2);
        }
        assert_eq!(delays, vec![S, 2 * S, 4 * S, 5 * S, 5 * S]);
        assert!(matches!(r.failed(), Decision::GiveUp { .. }));
    }

    #[test]
    fn exponential_delay_starts_over_after_a_healthy_period() {
        let clock = ManualClock::new();
        let mut r = Restarts::with_clock(exponential(2), clock.clone());
        assert_eq!(r.failed(), restart(1, S));
        r.started();
        assert_eq!(r.failed(), restart(2, 2 * S));
        r.started();
        // Up for exactly the reset period: the count and the delay start over.
        clock.advance(60 * S);
        assert_eq!(r.failed(), restart(3, S));
        r.started();
        clock.advance(59 * S);
        assert_eq!(r.failed(), restart(4, 2 * S));
        r.started();
        assert!(matches!(r.failed(), Decision::GiveUp { .. }));
    }

    #[test]
    fn failure_rate_counts_failures_within_the_interval_only() {
        let clock = ManualClock::new();
        let mut r = Restarts::with_clock(
            RestartStrategy::FailureRate {
                max_failures: 2,
                interval: 10 * S,
                delay: S,
            },
            clock.clone(),
        );
        assert_eq!(r.failed(), restart(1, S));
        clock.advance(6 * S);
        assert_eq!(r.failed(), restart(2, S));
        // 11 s after the first failure it no longer counts: two within the interval.
        clock.advance(5 * S);
        assert_eq!(r.failed(), restart(3, S));
        // Three failures within 10 s (at 6, 11 and 12 s).
        clock.advance(S);
        let Decision::GiveUp { reason } = r.failed() else {
            panic!("a fourth restart")
        };
        assert_eq!(reason, "3 failures within 10s (at most 2 allowed)");
    }

    #[test]
    fn run_waits_the_delays_and_stops_at_a_final_error() {
        let clock = ManualClock::new();
        let mut r = Restarts::with_clock(exponential(3), clock.clone());
        let mut seen = Vec::new();
        let result: Result<(), Final<&str>> = r.run(
            |n| Err(if n < 2 { "retryable" } else { "fatal" }),
            |e| *e == "retryable",
            |_, n, d| seen.push((n, d)),
        );
        let f = result.unwrap_err();
        assert_eq!((f.error, f.gave_up), ("fatal", None));
        assert_eq!(seen, vec![(1, S), (2, 2 * S)]);
        assert_eq!(clock.slept.get(), 3 * S);
    }

    #[test]
    fn run_gives_up_with_the_last_error_and_the_reason() {
        let mut r = Restarts::with_clock(exponential(1), ManualClock::new());
        let f = r.run(Err::<(), _>, |_| true, |_, _, _| {}).unwrap_err();
        assert_eq!(f.error, 1);
        assert!(f.gave_up.unwrap().contains("1 restart attempts used"));
    }

    #[test]
    fn spec_without_checkpointing_never_restarts() {
        let mut spec: StreamJobSpec = serde_json::from_value(serde_json::json!({
            "steps": [{"name": "s", "source": {"collection": {"values": [1]}}},
                      {"name": "p", "sink": {"print": {}}}]
        }))
        .unwrap();
        assert_eq!(
            RestartStrategy::from_spec(&spec),
            RestartStrategy::NoRestart
        );
        spec.checkpointing = Some(
            serde_json::from_value(serde_json::json!({"intervalMs": 100, "directory": "c"}))
                .unwrap(),
        );
        assert_eq!(
            RestartStrategy::from_spec(&spec),
            RestartStrategy::ExponentialDelay {
                attempts: 3,
                initial: S,
                max: 30 * S,
                reset_after: DEFAULT_RESET_AFTER,
            }
        );
    }
}
