//! Deadlines first: how many API requests may be inside the tenant objects at once.
//!
//! When the machine is saturated (two cores creating leases as fast as clients ask), every
//! task waits its turn on the same cores, and an alarm that is due — a lease's expiry, whose
//! runner is costing money — waits behind requests for new leases. W4 measured it: expiry
//! lateness p99 75–106 ms at 64 clients with nothing limiting admission, 13–14 ms with at most
//! four requests inside the objects, for 10–15 % fewer creations per second.
//!
//! A fixed small limit would cost every other workload its parallelism (group commit needs
//! many requests in one batch), so the limit follows the deadlines: every [`TICK`], the latest
//! alarm lateness since the last tick ([`Lateness::take_max_ms`](crate::objects::metrics::Lateness::take_max_ms)) is compared with
//! [`TARGET_MS`]; late alarms halve the limit (down to [`MIN`]), punctual ones raise it by
//! [`STEP`] (up to [`MAX`]). On a machine keeping its deadlines the limit stays at [`MAX`]
//! and the gate costs an atomic increment per request.
//!
//! The gate sits at [`super::State::ask`]: after a request's body was read and checked (a
//! slow client holds no permit) and around the object's answer only, for at most [`HOLD`]
//! (an answer stuck on a disk or a lost database gives its place up, so it cannot stall the
//! requests of every other tenant). Object handlers never go through it, so it cannot
//! deadlock; queued lease requests answer 202 at once, so nothing holds a permit while it
//! waits for capacity. Requests beyond the limit wait in order; none is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::objects::metrics::Metrics;

/// How often the limit is adjusted.
pub const TICK: Duration = Duration::from_millis(50);
/// Alarm lateness above this halves the limit.
pub const TARGET_MS: u64 = 10;
/// The fewest requests let in at once.
pub const MIN: usize = 4;
/// The most requests let in at once (the limit when deadlines are kept).
pub const MAX: usize = 4096;
/// How much a punctual tick raises the limit.
pub const STEP: usize = 2;
/// The longest a request holds its place: an answer slower than this (an object stuck on its
/// disk, or on the database in cluster mode) goes on without one, so a few stuck requests
/// can never stall every other tenant's behind them.
pub const HOLD: Duration = Duration::from_millis(250);

/// The limit after a tick whose latest alarm was `late_ms` late, with `inside` requests in.
/// A cut halves what is actually inside (a limit far above it would take many ticks to bite);
/// a raise is slow, so the limit settles just under where alarms start to run late.
#[must_use]
pub fn next_limit(limit: usize, inside: usize, late_ms: u64) -> usize {
    if late_ms > TARGET_MS {
        (limit.min(inside) / 2).max(MIN)
    } else if late_ms <= TARGET_MS / 2 {
        limit.saturating_add(STEP).min(MAX)
    } else {
        limit
    }
}

/// The gate: a count of requests inside and the current limit.
#[derive(Debug)]
pub struct Admission {
    inside: AtomicUsize,
    limit: AtomicUsize,
    freed: Notify,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            inside: AtomicUsize::new(0),
            limit: AtomicUsize::new(MAX),
            freed: Notify::new(),
        }
    }
}

/// A request inside; leaving (drop) lets the next one in.
#[derive(Debug)]
pub struct Permit<'a>(&'a Admission);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl Admission {
    /// Waits until the request may go in. Cancel-safe: a dropped wait holds nothing.
    pub async fn enter(&self) -> Permit<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a permit freed in between is not missed.
            freed.as_mut().enable();
            if self.try_enter() {
                return Permit(self);
            }
            freed.await;
        }
    }

    /// Runs `answer` inside the gate: waits for a place, then holds it until `answer` is done
    /// or [`HOLD`] has passed, whichever is first (the answer itself is never cut short).
    pub async fn admit<F: std::future::Future>(&self, answer: F) -> F::Output {
        let mut place = Some(self.enter().await);
        let mut answer = std::pin::pin!(answer);
        let hold = tokio::time::sleep(HOLD);
        tokio::pin!(hold);
        loop {
            tokio::select! {
                output = &mut answer => return output,
                () = &mut hold, if place.is_some() => place = None,
            }
        }
    }

    fn try_enter(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        self.inside
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |inside| {
                (inside < limit).then_some(inside + 1)
            })
            .is_ok()
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Sets the limit; a raise lets waiting requests in at once.
    pub fn set_limit(&self, limit: usize) {
        let limit = limit.clamp(MIN, MAX);
        let before = self.limit.swap(limit, Ordering::AcqRel);
        // One wake per new place (a waiter that gets in wakes no one else).
        for _ in before..limit {
            self.freed.notify_one();
        }
    }

    /// Requests inside now.
    pub fn inside(&self) -> usize {
        self.inside.load(Ordering::Acquire)
    }
}

/// Adjusts `admission`'s limit every [`TICK`] from the object runtime's alarm lateness
/// ([`Lateness::take_max_ms`](crate::objects::metrics::Lateness::take_max_ms)), until `stop`.
pub async fn steer(admission: Arc<Admission>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let late = metrics.alarm_lateness.take_max_ms();
        let limit = admission.limit();
        let next = next_limit(limit, admission.inside(), late);
        if next != limit {
            tracing::debug!(limit = next, late_ms = late, "admission limit");
            admission.set_limit(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_alarms_halve_the_limit_and_punctual_ones_raise_it() {
        assert_eq!(next_limit(MAX, MAX, TARGET_MS + 1), MAX / 2);
        // The cut halves what is inside, not a limit far above it.
        assert_eq!(next_limit(MAX, 64, TARGET_MS + 1), 32);
        assert_eq!(next_limit(MIN + 1, MIN + 1, 1_000), MIN);
        assert_eq!(next_limit(MIN, 0, 1_000), MIN);
        assert_eq!(next_limit(MIN, 0, 0), MIN + STEP);
        assert_eq!(next_limit(MAX, 0, 0), MAX);
        // Between half the target and the target: hold.
        assert_eq!(next_limit(100, 100, TARGET_MS), 100);
    }

    #[tokio::test]
    async fn the_limit_bounds_requests_inside_and_a_raise_lets_waiters_in() {
        let gate = Arc::new(Admission::default());
        gate.set_limit(MIN);
        let held: Vec<Permit<'_>> = futures::future::join_all((0..MIN).map(|_| gate.enter())).await;
        assert_eq!(gate.inside(), MIN);
        // One more waits…
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _permit = gate.enter().await;
                gate.inside()
            }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a request beyond the limit must wait"
        );
        // …until one leaves.
        drop(held);
        let inside = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiter gets in once a permit is freed")
            .expect("waiter task");
        assert!(inside >= 1);
        assert_eq!(gate.inside(), 0);

        // A raise wakes waiters without anyone leaving.
        let held: Vec<Permit<'_>> = futures::future::join_all((0..MIN).map(|_| gate.enter())).await;
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _permit = gate.enter().await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        gate.set_limit(MIN + STEP);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a raised limit lets the waiter in")
            .expect("waiter task");
        drop(held);
        assert_eq!(gate.inside(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_answer_gives_its_place_up_after_the_hold() {
        let gate = Arc::new(Admission::default());
        gate.set_limit(MIN);
        // MIN answers that never come take every place…
        let stuck: Vec<_> = (0..MIN)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.admit(std::future::pending::<()>()).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(gate.inside(), MIN);
        // …for at most the hold: then the next request gets in, the stuck ones still running.
        let next = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit(async { 7 }).await }
        });
        let start = tokio::time::Instant::now();
        assert_eq!(next.await.expect("next request"), 7);
        assert!(start.elapsed() >= HOLD && start.elapsed() < HOLD * 2);
        assert!(stuck.iter().all(|task| !task.is_finished()));
        assert_eq!(gate.inside(), 0);
        for task in stuck {
            task.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn steering_follows_the_alarms_lateness() {
        let gate = Arc::new(Admission::default());
        let metrics = Arc::new(crate::objects::metrics::Metrics::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(steer(gate.clone(), metrics.clone(), stop.clone()));
        // Late alarms every tick: the limit falls to the floor (nothing inside: the cut halves
        // what is in, so it goes straight down).
        for _ in 0..20 {
            metrics.alarm_lateness.observe_ms(200);
            tokio::time::sleep(TICK).await;
        }
        assert_eq!(gate.limit(), MIN);
        // Punctual ones (or none): it climbs back.
        tokio::time::sleep(TICK * 10).await;
        assert!(gate.limit() >= MIN + 9 * STEP, "limit {}", gate.limit());
        stop.cancel();
        task.await.expect("steering ends when stopped");
    }
}
