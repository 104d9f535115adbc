//! Where time comes from.
//!
//! Every business deadline in berth (lease expiry, queue timeouts, alarms) is wall-clock time
//! in Unix milliseconds read from a [`Clock`]. Production uses [`SystemClock`]; tests use
//! [`ManualClock`] and move time by hand, so "the alarm fired at the right moment, never
//! early" is checked without sleeping.
//!
//! Resource timers that are not business time (an object's idle period before hibernation)
//! use tokio's timer directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// A boxed future that completes once a clock reaches a given time.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of wall-clock time in Unix milliseconds.
///
/// # Contract
///
/// `sleep_until(at)` completes no earlier than the moment `now_ms() >= at` would first hold;
/// it may complete later (callers re-check `now_ms()` and sleep again if they woke early).
pub trait Clock: Send + Sync + 'static {
    /// The current time in Unix milliseconds.
    fn now_ms(&self) -> i64;

    /// A future that completes at (or after) `at_ms`.
    fn sleep_until(&self, at_ms: i64) -> Sleep;
}

/// The real clock: `SystemTime` for the time, tokio's timer for sleeping.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// The longest a [`SystemClock`] sleep waits before it wakes to look at the wall clock again,
/// so that a wall-clock step forward is noticed within this bound.
const MAX_SYSTEM_SLEEP: Duration = Duration::from_secs(1);

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
    }

    fn sleep_until(&self, at_ms: i64) -> Sleep {
        let clock = *self;
        Box::pin(async move {
            loop {
                let now = clock.now_ms();
                if now >= at_ms {
                    return;
                }
                let wait = Duration::from_millis(u64::try_from(at_ms - now).unwrap_or(0));
                tokio::time::sleep(wait.min(MAX_SYSTEM_SLEEP)).await;
            }
        })
    }
}

/// A clock that only moves when a test moves it.
///
/// Cloning shares the same time. Sleepers wake as soon as [`ManualClock::set`] or
/// [`ManualClock::advance`] reaches their deadline.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<watch::Sender<i64>>,
}

impl ManualClock {
    /// A clock stopped at `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        let (tx, _rx) = watch::channel(start_ms);
        ManualClock { now: Arc::new(tx) }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now.send_modify(|now| *now = now.saturating_add(by));
    }

    /// Sets the clock to `at_ms`. Time never goes backwards: an earlier value is ignored.
    pub fn set(&self, at_ms: i64) {
        self.now.send_modify(|now| *now = (*now).max(at_ms));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, at_ms: i64) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // `wait_for` checks the current value first, so a deadline already reached
            // completes at once; the sender lives as long as any clone of the clock.
            let _ = rx.wait_for(|now| *now >= at_ms).await;
        })
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC with millisecond precision, e.g.
/// `2026-11-27T12:00:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manual sleeper wakes exactly when the clock reaches its deadline, not before.
    #[tokio::test]
    async fn manual_clock_wakes_at_deadline() {
        let clock = ManualClock::new(1_000);
        let mut sleep = clock.sleep_until(1_500);
        assert!(futures::poll!(&mut sleep).is_pending());
        clock.advance(Duration::from_millis(499));
        assert!(futures::poll!(&mut sleep).is_pending());
        clock.advance(Duration::from_millis(1));
        tokio::time::timeout(Duration::from_secs(5), sleep)
            .await
            .expect("woke");
        assert_eq!(clock.now_ms(), 1_500);
    }

    /// Time formatting is RFC 3339 UTC.
    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_244_800_123), "2025-11-27T12:00:00.123Z");
    }
}
