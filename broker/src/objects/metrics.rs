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
    /// Parked connections of hibernated objects closed (the warm tier's idle time or cap, or
    /// an activation that needed the permit).
    pub parked_closes: AtomicU64,
    /// Activations that took their database back from the warm tier instead of opening it.
    pub warm_activations: AtomicU64,
    /// Eviction requests sent because the live-object cap was reached.
    pub evictions: AtomicU64,
    /// Events handled (requests, completions, alarms), read-only ones included.
    pub events: AtomicU64,
    /// Events whose handler failed and was rolled back.
    pub failed_events: AtomicU64,
    /// Transactions committed: with `synchronous=FULL`, one WAL fsync each.
    pub commits: AtomicU64,
    /// `syncfs` calls of the shared durability barrier (`--durability group`): each made
    /// every commit before it durable.
    pub durability_syncs: AtomicU64,
    /// `syncfs` calls shared by the checkpoints of closing object files (`closing.rs`, under
    /// `normal`, `group` and `log`): each covered every close at the same step.
    pub checkpoint_syncs: AtomicU64,
    /// Commits that failed (every event of the batch was answered with an error).
    pub failed_commits: AtomicU64,
    /// Alarm handlers run.
    pub alarms: AtomicU64,
    /// Times the runtime handed the heap's free pages back to the system (jemalloc's purge).
    pub heap_trims: AtomicU64,
    /// Alarm handlers that failed (and were retried).
    pub alarm_failures: AtomicU64,
    /// How late alarms ran: handler start minus the alarm's time.
    pub alarm_lateness: Lateness,
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

/// Upper bounds of the lateness buckets, in seconds.
pub const LATENESS_BUCKETS_S: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How late alarms ran, a Prometheus histogram in seconds (`berth_alarm_lateness_seconds`),
/// and the latest since the last [`Lateness::take_max_ms`] (what the edge's admission gate
/// steers by: `server::admission`).
#[derive(Debug)]
pub struct Lateness {
    histogram: prometheus_client::metrics::histogram::Histogram,
    max_ms: AtomicU64,
    /// When an alarm last ran [`LATE_MS`] late or later: milliseconds after `origin`, plus
    /// one (0: never).
    late_at: AtomicU64,
    origin: tokio::time::Instant,
}

/// An alarm this late or later counts as late for [`Lateness::late_within`]: half the
/// 50 ms the runtime aims for, so background work steps aside before the aim is missed.
pub const LATE_MS: u64 = 25;

impl Default for Lateness {
    fn default() -> Self {
        Lateness {
            histogram: prometheus_client::metrics::histogram::Histogram::new(LATENESS_BUCKETS_S),
            max_ms: AtomicU64::new(0),
            late_at: AtomicU64::new(0),
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Lateness {
    /// Records an alarm that ran `ms` milliseconds late.
    pub fn observe_ms(&self, ms: u64) {
        self.histogram.observe(ms as f64 / 1_000.0);
        self.max_ms.fetch_max(ms, Ordering::Relaxed);
        if ms >= LATE_MS {
            self.late_at
                .store(self.since_origin_ms() + 1, Ordering::Relaxed);
        }
    }

    /// Whether an alarm ran [`LATE_MS`] late or later within the last `window`.
    pub fn late_within(&self, window: std::time::Duration) -> bool {
        match self.late_at.load(Ordering::Relaxed) {
            0 => false,
            // Saturating: another thread may have stored a reading taken after this one's.
            at => (self.since_origin_ms() + 1).saturating_sub(at) <= window.as_millis() as u64,
        }
    }

    fn since_origin_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// The latest alarm since the previous call, in milliseconds (0 if none ran or none was late).
    pub fn take_max_ms(&self) -> u64 {
        self.max_ms.swap(0, Ordering::Relaxed)
    }

    /// The histogram, to register for `/metrics` (a clone shares the values).
    pub fn histogram(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only alarms at least `LATE_MS` late count, and only within the window asked about.
    #[tokio::test(start_paused = true)]
    async fn lateness_remembers_late_alarms_for_a_window() {
        let lateness = Lateness::default();
        let window = std::time::Duration::from_millis(500);
        assert!(!lateness.late_within(window), "no alarm ran yet");
        lateness.observe_ms(LATE_MS - 1);
        assert!(!lateness.late_within(window), "on time");
        lateness.observe_ms(LATE_MS);
        assert!(lateness.late_within(window));
        tokio::time::advance(std::time::Duration::from_millis(400)).await;
        lateness.observe_ms(3);
        assert!(
            lateness.late_within(window),
            "an on-time alarm does not clear it"
        );
        tokio::time::advance(std::time::Duration::from_millis(200)).await;
        assert!(!lateness.late_within(window), "the window passed");
        assert_eq!(lateness.take_max_ms(), LATE_MS);
    }
}
