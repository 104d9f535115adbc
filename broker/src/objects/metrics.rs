//! Counters the runtime keeps about itself, read by `/metrics` and the benchmarks.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Runtime counters. All are monotonic except `live_objects`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Objects with a running task (including ones closing their files).
    pub live_objects: AtomicI64,
    /// Objects activated (opened) since start.
    pub activations: AtomicU64,
    /// Objects that closed because they were idle or evicted.
    pub hibernations: AtomicU64,
    /// Eviction requests sent because the live-object cap was reached.
    pub evictions: AtomicU64,
    /// Events handled (requests, completions, alarms), read-only ones included.
    pub events: AtomicU64,
    /// Events whose handler failed and was rolled back.
    pub failed_events: AtomicU64,
    /// Transactions committed: with `synchronous=FULL`, one WAL fsync each.
    pub commits: AtomicU64,
    /// Commits that failed (every event of the batch was answered with an error).
    pub failed_commits: AtomicU64,
    /// Alarm handlers run.
    pub alarms: AtomicU64,
    /// Alarm handlers that failed (and were retried).
    pub alarm_failures: AtomicU64,
    /// How late alarms ran: handler start minus the alarm's time.
    pub alarm_lateness: Histogram,
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the lateness buckets, in milliseconds.
pub const LATENESS_BUCKETS_MS: [u64; 12] =
    [1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

/// A fixed-bucket histogram of milliseconds, in the shape Prometheus expects.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENESS_BUCKETS_MS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
    max_ms: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, ms: u64) {
        if let Some(idx) = LATENESS_BUCKETS_MS.iter().position(|le| ms <= *le) {
            self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
        self.max_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound (not including +Inf), the total count, the sum and
    /// the maximum.
    pub fn snapshot(&self) -> (Vec<(u64, u64)>, u64, u64, u64) {
        let mut cumulative = 0;
        let buckets = LATENESS_BUCKETS_MS
            .iter()
            .zip(&self.buckets)
            .map(|(le, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (*le, cumulative)
            })
            .collect();
        (
            buckets,
            self.count.load(Ordering::Relaxed),
            self.sum_ms.load(Ordering::Relaxed),
            self.max_ms.load(Ordering::Relaxed),
        )
    }
}
