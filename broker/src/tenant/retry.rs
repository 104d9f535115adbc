//! The two shapes of retrying the tenant object uses: a delay that backs off exponentially
//! (optionally with jitter, never below what the other side asked for), and background work
//! cut off after a timeout.

use std::future::Future;
use std::time::Duration;

/// Whether to spread retries of many failures out in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// The same delay every time (provider calls: the tests and the operator can predict
    /// them).
    None,
    /// ±50 %, so many endpoints failing together do not retry together (webhooks).
    Half,
}

/// The delay before retry number `attempt` (1-based): `base × 2^(attempt-1)`, at most `max`,
/// with `jitter`, and at least `retry_after` (what the other side asked for; callers cap it
/// where they must). Milliseconds, saturating.
pub fn backoff(
    base_ms: i64,
    max_ms: i64,
    attempt: i64,
    retry_after: Option<Duration>,
    jitter: Jitter,
) -> i64 {
    let exponent = u32::try_from(attempt.clamp(1, 20) - 1).unwrap_or(0);
    let mut delay = base_ms
        .max(0)
        .saturating_mul(2i64.saturating_pow(exponent))
        .min(max_ms);
    if jitter == Jitter::Half {
        delay = delay / 2 + rand::random_range(0..=delay.max(0));
    }
    if let Some(after) = retry_after {
        delay = delay.max(i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
    }
    delay
}

/// `work`, or `on_timeout(timeout)` if it has not finished within `timeout`.
pub async fn within<T>(
    timeout: Duration,
    work: impl Future<Output = T>,
    on_timeout: impl FnOnce(Duration) -> T,
) -> T {
    match tokio::time::timeout(timeout, work).await {
        Ok(output) => output,
        Err(_) => on_timeout(timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff doubles from the base, stops at the maximum, and honours a longer Retry-After.
    #[test]
    fn backoff_doubles_and_caps() {
        let delay = |attempt, after| backoff(2_000, 300_000, attempt, after, Jitter::None);
        assert_eq!(delay(1, None), 2_000);
        assert_eq!(delay(2, None), 4_000);
        assert_eq!(delay(4, None), 16_000);
        assert_eq!(delay(30, None), 300_000);
        assert_eq!(delay(i64::MAX, None), 300_000);
        assert_eq!(delay(1, Some(Duration::from_secs(60))), 60_000);
        assert_eq!(delay(1, Some(Duration::from_secs(3_600))), 3_600_000);
    }

    /// Jitter stays within ±50 % of the delay.
    #[test]
    fn jitter_stays_within_half() {
        for _ in 0..200 {
            let delay = backoff(5_000, 3_600_000, 3, None, Jitter::Half);
            assert!((10_000..=30_000).contains(&delay), "{delay}");
        }
    }

    /// Work that does not finish in time gives the timeout's answer.
    #[tokio::test(start_paused = true)]
    async fn within_cuts_off() {
        let slow = within(Duration::from_secs(1), std::future::pending::<u8>(), |_| 7);
        assert_eq!(slow.await, 7);
        let fast = within(Duration::from_secs(1), async { 3 }, |_| 7);
        assert_eq!(fast.await, 3);
    }
}
