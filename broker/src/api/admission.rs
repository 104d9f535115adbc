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
//! waits for capacity. None is refused.
//!
//! Requests beyond the limit wait **per tenant, served in turn**: each tenant with waiters
//! gets the next free place in round-robin order, oldest request first within a tenant, and a
//! new request never overtakes a waiting one. A tenant that floods the API while the gate is
//! tight delays its own requests, not another tenant's by more than one turn of each tenant
//! waiting (first come, first served would let it take places in proportion to its flood).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
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

/// The gate: the requests inside, the current limit, and the tenants' waiting requests.
#[derive(Debug)]
pub struct Admission {
    gate: Mutex<Gate>,
}

#[derive(Debug)]
struct Gate {
    inside: usize,
    limit: usize,
    /// Each waiting tenant's requests, oldest first: the sender hands a place over.
    waiting: HashMap<Arc<str>, VecDeque<oneshot::Sender<()>>>,
    /// The tenants with waiting requests, in the order they get the next places.
    turns: VecDeque<Arc<str>>,
}

impl Gate {
    /// Hands free places to waiting requests, one per tenant in turn.
    fn let_in(&mut self) {
        while self.inside < self.limit {
            let Some(tenant) = self.turns.pop_front() else {
                return;
            };
            let Some(queue) = self.waiting.get_mut(&tenant) else {
                continue;
            };
            // The tenant's oldest request still waiting (a dropped one is skipped).
            let mut handed = false;
            while let Some(waiter) = queue.pop_front() {
                if waiter.send(()).is_ok() {
                    handed = true;
                    break;
                }
            }
            if queue.is_empty() {
                self.waiting.remove(&tenant);
            } else {
                self.turns.push_back(tenant);
            }
            if handed {
                self.inside += 1;
            }
        }
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            gate: Mutex::new(Gate {
                inside: 0,
                limit: MAX,
                waiting: HashMap::new(),
                turns: VecDeque::new(),
            }),
        }
    }
}

/// A request inside; leaving (drop) lets the next one in.
#[derive(Debug)]
pub struct Permit<'a>(&'a Admission);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A request waiting for its place. Dropped before it was told (a cancelled request), it
/// closes its channel; told but not yet awake, it hands the place back.
struct Waiter<'a> {
    admission: &'a Admission,
    place: oneshot::Receiver<()>,
    entered: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.entered {
            return;
        }
        self.place.close();
        if self.place.try_recv().is_ok() {
            self.admission.leave();
        }
    }
}

impl Admission {
    fn lock(&self) -> MutexGuard<'_, Gate> {
        // Never held across an await, and nothing under it panics: a poisoned lock still
        // holds consistent counts.
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a request of `tenant` may go in: at once while there is room and nobody
    /// waits, else in its tenant's turn. Cancel-safe: a dropped wait holds nothing.
    pub async fn enter(&self, tenant: &str) -> Permit<'_> {
        let place = {
            let mut gate = self.lock();
            if gate.turns.is_empty() && gate.inside < gate.limit {
                gate.inside += 1;
                return Permit(self);
            }
            let (tell, place) = oneshot::channel();
            let tenant: Arc<str> = Arc::from(tenant);
            let queue = gate.waiting.entry(tenant.clone()).or_default();
            let first = queue.is_empty();
            queue.push_back(tell);
            if first {
                gate.turns.push_back(tenant);
            }
            // There may be room that only requests dropped while waiting stood in front of.
            gate.let_in();
            place
        };
        let mut waiter = Waiter {
            admission: self,
            place,
            entered: false,
        };
        let told = (&mut waiter.place).await;
        waiter.entered = true;
        if told.is_err() {
            // Cannot happen while `self` lives (the gate drops a sender only with itself, or
            // after sending on it); count the place anyway, so the permit's leave balances.
            self.lock().inside += 1;
        }
        Permit(self)
    }

    /// Runs `answer` for `tenant` inside the gate: waits for a place, then holds it until
    /// `answer` is done or [`HOLD`] has passed, whichever is first (the answer itself is
    /// never cut short).
    pub async fn admit<F: std::future::Future>(&self, tenant: &str, answer: F) -> F::Output {
        let mut place = Some(self.enter(tenant).await);
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

    /// A place is freed: the next waiting tenant's request takes it.
    fn leave(&self) {
        let mut gate = self.lock();
        debug_assert!(gate.inside > 0, "a place left that was never taken");
        gate.inside = gate.inside.saturating_sub(1);
        gate.let_in();
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Sets the limit; a raise lets waiting requests in at once.
    pub fn set_limit(&self, limit: usize) {
        let mut gate = self.lock();
        gate.limit = limit.clamp(MIN, MAX);
        gate.let_in();
    }

    /// Requests inside now.
    pub fn inside(&self) -> usize {
        self.lock().inside
    }

    /// Requests waiting now (not counting ones given up, which are skipped in their turn).
    pub fn waiting(&self) -> usize {
        self.lock()
            .waiting
            .values()
            .flatten()
            .filter(|waiter| !waiter.is_closed())
            .count()
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

    /// Takes every place of a gate whose limit is [`MIN`] for `tenant`.
    async fn fill<'a>(gate: &'a Admission, tenant: &str) -> Vec<Permit<'a>> {
        gate.set_limit(MIN);
        futures::future::join_all((0..MIN).map(|_| gate.enter(tenant))).await
    }

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
        let held = fill(&gate, "t").await;
        assert_eq!(gate.inside(), MIN);
        // One more waits…
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _permit = gate.enter("t").await;
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
        let held = fill(&gate, "t").await;
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _permit = gate.enter("t").await;
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

    /// Waits (bounded) until `gate` has `n` requests waiting.
    async fn until_waiting(gate: &Admission, n: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while gate.waiting() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the requests queue");
    }

    /// A tenant flooding the gate while it is tight waits its own turns: a request of another
    /// tenant that arrives behind a hundred of the flood's gets one of the first places freed
    /// (first come, first served would give it the hundred-and-first).
    #[tokio::test]
    async fn waiting_tenants_get_places_in_turn() {
        let gate = Arc::new(Admission::default());
        let held = fill(&gate, "flood").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiter = |tenant: &'static str| {
            let gate = gate.clone();
            let order = order.clone();
            tokio::spawn(async move {
                let _permit = gate.enter(tenant).await;
                order.lock().expect("order").push(tenant);
            })
        };
        let mut tasks: Vec<_> = (0..100).map(|_| waiter("flood")).collect();
        until_waiting(&gate, 100).await;
        tasks.push(waiter("other"));
        until_waiting(&gate, 101).await;
        // A new request of the flood does not overtake the waiting ones either.
        let mut late = Box::pin(gate.enter("flood"));
        assert!(futures::poll!(&mut late).is_pending(), "no overtaking");
        drop(late);

        drop(held);
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("every waiter gets in")
                .expect("waiter task");
        }
        let order = order.lock().expect("order").clone();
        assert_eq!(order.len(), 101);
        let other = order
            .iter()
            .position(|tenant| *tenant == "other")
            .expect("other got in");
        assert!(other <= MIN, "the other tenant got place {other} of 101");
        assert_eq!(gate.inside(), 0);
        assert_eq!(gate.waiting(), 0);
    }

    /// A request dropped while it waits holds nothing: neither before it is handed a place
    /// nor after, if it never woke to take it.
    #[tokio::test]
    async fn a_dropped_wait_holds_no_place() {
        let gate = Admission::default();
        let mut held = fill(&gate, "a").await;

        // Dropped before a place was free.
        let mut early = Box::pin(gate.enter("b"));
        assert!(futures::poll!(&mut early).is_pending());
        drop(early);
        // Handed a place, dropped before it woke to take it: the place comes back.
        let mut told = Box::pin(gate.enter("c"));
        assert!(futures::poll!(&mut told).is_pending());
        drop(held.pop());
        assert_eq!(gate.inside(), MIN, "the place went to the waiting request");
        drop(told);
        assert_eq!(gate.inside(), MIN - 1, "and came back when it was dropped");

        drop(held);
        assert_eq!(gate.inside(), 0);
        // Nothing stands in the way of the next request.
        let permit = tokio::time::timeout(Duration::from_secs(5), gate.enter("d"))
            .await
            .expect("enters at once");
        assert_eq!(gate.inside(), 1);
        drop(permit);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_answer_gives_its_place_up_after_the_hold() {
        let gate = Arc::new(Admission::default());
        gate.set_limit(MIN);
        // MIN answers that never come take every place…
        let stuck: Vec<_> = (0..MIN)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.admit("t", std::future::pending::<()>()).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(gate.inside(), MIN);
        // …for at most the hold: then the next request gets in, the stuck ones still running.
        let next = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit("u", async { 7 }).await }
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
