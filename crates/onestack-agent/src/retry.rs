//! Retrying what keeps failing without spinning and without flooding the log: every retry loop of
//! the agent (host networking repairs, metadata listeners, the controller polls, reports,
//! heartbeats) waits [`Backoff::failed`]'s delay, which doubles from a base up to a cap, and logs
//! a failure only when [`Backoff::failed`] says so: the first one at once, then at most one per
//! [`LOG_EVERY`], carrying how many were left unsaid. A success after failures is worth one line
//! too ([`Backoff::succeeded`]).

use std::time::{Duration, Instant};

/// A repeating failure is logged at most once in this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// One failing thing's retry schedule and log throttle.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    log_every: Duration,
    /// Failures since the last success.
    failures: u32,
    /// No attempt before this (None: now).
    next_at: Option<Instant>,
    logged_at: Option<Instant>,
    /// Failures not logged since the last line.
    unsaid: u32,
}

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed {
    /// Wait this long before the next attempt.
    pub retry_in: Duration,
    /// Failures in a row, this one included.
    pub attempt: u32,
    /// Log this failure, saying that this many earlier ones went unlogged; None: stay quiet.
    pub log: Option<u32>,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            log_every: LOG_EVERY,
            failures: 0,
            next_at: None,
            logged_at: None,
            unsaid: 0,
        }
    }

    /// The same schedule, logging at most once per `every`.
    pub fn log_every(mut self, every: Duration) -> Self {
        self.log_every = every;
        self
    }

    /// Records a failure at `now`.
    pub fn failed(&mut self, now: Instant) -> Failed {
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.saturating_sub(1).min(31);
        let retry_in = self
            .base
            .checked_mul(1u32 << exp)
            .map_or(self.cap, |d| d.min(self.cap));
        self.next_at = Some(now + retry_in);
        let due = self
            .logged_at
            .is_none_or(|t| now.saturating_duration_since(t) >= self.log_every);
        let log = if due {
            self.logged_at = Some(now);
            Some(std::mem::take(&mut self.unsaid))
        } else {
            self.unsaid += 1;
            None
        };
        Failed {
            retry_in,
            attempt: self.failures,
            log,
        }
    }

    /// Records a success; returns the failures it ends (0: there were none, nothing to say).
    pub fn succeeded(&mut self) -> u32 {
        let n = self.failures;
        self.failures = 0;
        self.next_at = None;
        self.logged_at = None;
        self.unsaid = 0;
        n
    }

    /// Whether an attempt may be made at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.next_at.is_none_or(|t| now >= t)
    }

    /// How long until an attempt may be made (zero: now).
    pub fn wait(&self, now: Instant) -> Duration {
        self.next_at
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut b = Backoff::new(S, 30 * S);
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..8).map(|_| b.failed(t0).retry_in.as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        // Thousands of failures neither overflow nor pass the cap.
        for _ in 0..5000 {
            b.failed(t0);
        }
        assert_eq!(b.failed(t0).retry_in, 30 * S);
    }

    #[test]
    fn not_ready_until_the_delay_has_passed() {
        let mut b = Backoff::new(S, 30 * S);
        let t0 = Instant::now();
        assert!(b.ready(t0));
        b.failed(t0);
        b.failed(t0);
        assert!(!b.ready(t0 + S));
        assert_eq!(b.wait(t0 + S), S);
        assert!(b.ready(t0 + 2 * S));
        assert_eq!(b.succeeded(), 2);
        assert!(b.ready(t0));
        assert_eq!(b.failed(t0).retry_in, S, "a success starts over");
    }

    /// An attempt every 10 ms for five minutes (what a spinning loop would make) logs five
    /// lines, each telling how many it stands for.
    #[test]
    fn a_repeating_failure_is_logged_once_per_interval() {
        let mut b = Backoff::new(S, 30 * S);
        let t0 = Instant::now();
        let mut lines = Vec::new();
        for i in 0..30_000u32 {
            let now = t0 + Duration::from_millis(10) * i;
            if let Some(unsaid) = b.failed(now).log {
                lines.push((now - t0, unsaid));
            }
        }
        let at: Vec<u64> = lines.iter().map(|(t, _)| t.as_secs()).collect();
        assert_eq!(at, [0, 60, 120, 180, 240]);
        assert_eq!(lines[0].1, 0);
        assert_eq!(lines[1].1, 5999);
        let total: u32 = lines.iter().map(|(_, n)| n + 1).sum();
        assert_eq!(total + b.unsaid, 30_000);
        // Recovered, then failing again: the new failure is told at once.
        b.succeeded();
        assert_eq!(b.failed(t0 + 301 * S).log, Some(0));
    }

    #[test]
    fn a_shorter_log_interval() {
        let mut b = Backoff::new(S, 30 * S).log_every(5 * S);
        let t0 = Instant::now();
        assert!(b.failed(t0).log.is_some());
        assert!(b.failed(t0 + 4 * S).log.is_none());
        assert_eq!(b.failed(t0 + 5 * S).log, Some(1));
    }
}
