//! Fair shares of the webhook delivery slots among tenants.
//!
//! Every tenant's deliveries share one pool of slots (`--webhook-concurrency`, default 64); a
//! delivery holds a slot for its whole attempt (connect, send, wait for the answer). A plain
//! semaphore serves waiters first come, first served, so one tenant with many endpoints behind
//! a slow target filled every slot and its queue of further attempts came before everybody
//! else's. The rules here:
//!
//! - **Work-conserving.** A free slot goes to a waiter at once; a tenant may hold every slot
//!   while nobody else waits.
//! - **Fair share.** The tenants *competing* are those holding or waiting for a slot; each one's
//!   share is `ceil(total / competing)` (at least 1). When a slot frees, it goes to a waiting
//!   tenant below its share; only when every waiting tenant is at or above its share does
//!   it go to one of them (otherwise it would sit idle).
//! - **Round-robin.** Waiting tenants take turns, in the order they started waiting; a
//!   tenant that was served goes to the back. A tenant's own deliveries are served in order.
//!
//! A slot is never taken back from an attempt in flight: a tenant above its share gives slots
//! back only as its attempts end (each bounded by the send timeout).
//!
//! # Example
//!
//! Four slots. Tenant A alone starts 8 attempts: 4 hold slots, 4 wait. B starts one: it waits,
//! and the share is now 2 each. When one of A's attempts ends, the slot goes to B (A holds
//! 3 ≥ 2, B holds 0 < 2) although A's waiters came first; the next freed slot goes to A, since
//! B waits no more.
//!
//! [`State`] is the pure decision (tested without a runtime); [`Slots`] wraps it in a mutex
//! (never held across an `.await`) with a one-shot channel per waiter.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The slot pool shared by every tenant; [`Slots::acquire`] waits for a tenant's turn.
pub struct Slots {
    state: Mutex<State<oneshot::Sender<()>>>,
}

/// A held slot; dropping it frees the slot for the next waiter.
pub struct Permit {
    slots: Arc<Slots>,
    tenant: String,
}

impl Slots {
    /// A pool of `total` slots (at least 1).
    pub fn new(total: usize) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(State::new(total)),
        })
    }

    /// Waits until `tenant` may hold one more slot (see the module docs for the order).
    ///
    /// Cancel-safe: a waiter dropped before its turn leaves the queue, and one dropped just
    /// as its slot was granted gives the slot back.
    pub async fn acquire(self: &Arc<Self>, tenant: &str) -> Permit {
        let (granted, turn) = oneshot::channel();
        let (ticket, share) = {
            let mut state = self.lock();
            match state.acquire(tenant, granted) {
                Ok(()) => return self.permit(tenant),
                Err(ticket) => (ticket, state.share()),
            }
        };
        tracing::debug!(tenant, share, "webhook delivery waits for a delivery slot");
        let mut waiting = Waiting {
            slots: self,
            tenant,
            ticket,
            served: false,
        };
        // The sender is consumed by a grant, or dropped by our own `Waiting` (after which
        // nobody polls this): either way the wait ends.
        let _ = turn.await;
        waiting.served = true;
        self.permit(tenant)
    }

    fn permit(self: &Arc<Self>, tenant: &str) -> Permit {
        Permit {
            slots: self.clone(),
            tenant: tenant.to_owned(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<oneshot::Sender<()>>> {
        // The state is consistent after every method (none panics half-way), so a poisoned
        // lock still holds a usable state.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Hands free slots to waiters; a waiter gone in the meantime gives its slot straight back.
fn grant(state: &mut State<oneshot::Sender<()>>) {
    loop {
        let mut gone = Vec::new();
        for (tenant, waiter) in state.dispatch() {
            if waiter.send(()).is_err() {
                gone.push(tenant);
            }
        }
        if gone.is_empty() {
            return;
        }
        for tenant in gone {
            state.release(&tenant);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        state.release(&self.tenant);
        grant(&mut state);
    }
}

/// A waiter's place in the queue while its future is alive.
struct Waiting<'a> {
    slots: &'a Slots,
    tenant: &'a str,
    ticket: u64,
    /// Set once the slot arrived: the permit owns it from then on.
    served: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let mut state = self.slots.lock();
        if !state.cancel(self.tenant, self.ticket) {
            // Granted between the grant and this drop: nobody will use the slot.
            state.release(self.tenant);
            grant(&mut state);
        }
    }
}

/// The slots' bookkeeping: who holds how many, who waits, whose turn it is.
///
/// # Invariants
///
/// - `free + Σ held == total`;
/// - `free > 0` ⇒ nobody waits (every call that frees a slot dispatches);
/// - a tenant has an entry only while it holds or waits for a slot; it is in `turn` exactly
///   while it waits.
#[derive(Debug)]
pub(crate) struct State<W> {
    total: usize,
    free: usize,
    tenants: HashMap<String, Tenant<W>>,
    /// Tenants with waiters, whose turn comes first at the front.
    turn: VecDeque<String>,
    next_ticket: u64,
}

#[derive(Debug)]
struct Tenant<W> {
    held: usize,
    /// `(ticket, waiter)` in arrival order.
    waiters: VecDeque<(u64, W)>,
}

impl<W> State<W> {
    pub(crate) fn new(total: usize) -> State<W> {
        let total = total.max(1);
        State {
            total,
            free: total,
            tenants: HashMap::new(),
            turn: VecDeque::new(),
            next_ticket: 0,
        }
    }

    /// The share of each competing tenant: `ceil(total / competing)`, at least 1.
    pub(crate) fn share(&self) -> usize {
        self.total.div_ceil(self.tenants.len().max(1)).max(1)
    }

    /// Takes a slot for `tenant` now (`Ok`), or queues `waiter` and returns its ticket. A slot
    /// is free only while nobody waits, so taking it jumps no queue.
    pub(crate) fn acquire(&mut self, tenant: &str, waiter: W) -> Result<(), u64> {
        let entry = self
            .tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| Tenant {
                held: 0,
                waiters: VecDeque::new(),
            });
        if self.free > 0 {
            entry.held += 1;
            self.free -= 1;
            return Ok(());
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        entry.waiters.push_back((ticket, waiter));
        if entry.waiters.len() == 1 {
            self.turn.push_back(tenant.to_owned());
        }
        Err(ticket)
    }

    /// Gives back one slot `tenant` holds. Call [`State::dispatch`] next.
    pub(crate) fn release(&mut self, tenant: &str) {
        let Some(entry) = self.tenants.get_mut(tenant) else {
            debug_assert!(false, "BUG: {tenant} releases a slot it does not hold");
            return;
        };
        debug_assert!(
            entry.held > 0,
            "BUG: {tenant} releases a slot it does not hold"
        );
        entry.held = entry.held.saturating_sub(1);
        self.free = (self.free + 1).min(self.total);
        if entry.held == 0 && entry.waiters.is_empty() {
            self.tenants.remove(tenant);
        }
    }

    /// Removes a waiter from the queue. `false` when it is not queued: it was granted its
    /// slot already, and now holds it.
    pub(crate) fn cancel(&mut self, tenant: &str, ticket: u64) -> bool {
        let Some(entry) = self.tenants.get_mut(tenant) else {
            return false;
        };
        let Some(at) = entry.waiters.iter().position(|(t, _)| *t == ticket) else {
            return false;
        };
        entry.waiters.remove(at);
        if entry.waiters.is_empty() {
            self.turn.retain(|name| name != tenant);
            if entry.held == 0 {
                self.tenants.remove(tenant);
            }
        }
        true
    }

    /// Hands every free slot to a waiter, by the rules of the module docs; returns the
    /// waiters served, each with its tenant (which now holds the slot).
    pub(crate) fn dispatch(&mut self) -> Vec<(String, W)> {
        let mut served = Vec::new();
        while self.free > 0 && !self.turn.is_empty() {
            let share = self.share();
            let below_share = self
                .turn
                .iter()
                .position(|name| self.tenants.get(name).is_some_and(|t| t.held < share));
            let Some(name) = self.turn.remove(below_share.unwrap_or(0)) else {
                break;
            };
            let Some(entry) = self.tenants.get_mut(&name) else {
                debug_assert!(false, "BUG: a waiting tenant has no entry");
                continue;
            };
            let Some((_, waiter)) = entry.waiters.pop_front() else {
                debug_assert!(false, "BUG: a tenant in turn has no waiter");
                continue;
            };
            entry.held += 1;
            self.free -= 1;
            if !entry.waiters.is_empty() {
                self.turn.push_back(name.clone());
            }
            served.push((name, waiter));
        }
        served
    }

    /// Slots `tenant` holds.
    #[cfg(test)]
    fn held(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.held)
    }

    /// Waiters of `tenant`.
    #[cfg(test)]
    fn waiting(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.waiters.len())
    }

    /// Checks the invariants of the type's docs.
    #[cfg(test)]
    fn check(&self) {
        let held: usize = self.tenants.values().map(|t| t.held).sum();
        assert_eq!(held + self.free, self.total, "slots are conserved");
        let waiting: usize = self.tenants.values().map(|t| t.waiters.len()).sum();
        assert!(
            self.free == 0 || waiting == 0,
            "a free slot while someone waits"
        );
        for (name, tenant) in &self.tenants {
            assert!(
                tenant.held > 0 || !tenant.waiters.is_empty(),
                "empty {name}"
            );
            let turns = self.turn.iter().filter(|t| *t == name).count();
            assert_eq!(
                turns,
                usize::from(!tenant.waiters.is_empty()),
                "{name}'s turn"
            );
        }
        assert_eq!(
            self.turn.len(),
            self.turn
                .iter()
                .filter(|t| self.tenants.contains_key(*t))
                .count()
        );
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use proptest::prelude::*;

    use super::*;

    /// Releases one of `tenant`'s slots and returns who was served, as `tenant:waiter`.
    fn release(state: &mut State<&'static str>, tenant: &str) -> Vec<String> {
        state.release(tenant);
        let served = state
            .dispatch()
            .into_iter()
            .map(|(tenant, waiter)| format!("{tenant}:{waiter}"))
            .collect();
        state.check();
        served
    }

    /// A tenant alone may hold every slot; its further attempts wait.
    #[test]
    fn a_lone_tenant_uses_every_slot() {
        let mut state = State::new(4);
        for _ in 0..4 {
            assert_eq!(state.acquire("a", "x"), Ok(()));
        }
        assert!(state.acquire("a", "x").is_err());
        assert_eq!((state.held("a"), state.waiting("a")), (4, 1));
        state.check();
    }

    /// The module docs' example: a freed slot goes to the tenant below its share, ahead of
    /// the earlier waiters of the tenant above it; then back to that tenant.
    #[test]
    fn a_freed_slot_goes_to_the_tenant_below_its_share() {
        let mut state = State::new(4);
        for _ in 0..4 {
            assert_eq!(state.acquire("a", "held"), Ok(()));
        }
        for waiter in ["a5", "a6", "a7", "a8"] {
            assert!(state.acquire("a", waiter).is_err());
        }
        assert!(state.acquire("b", "b1").is_err());
        assert_eq!(state.share(), 2);
        assert_eq!(release(&mut state, "a"), ["b:b1"]);
        assert_eq!(release(&mut state, "a"), ["a:a5"]);
        assert_eq!(release(&mut state, "b"), ["a:a6"]);
        assert_eq!(
            state.tenants.len(),
            1,
            "b left when it held and awaited nothing"
        );
    }

    /// Waiting tenants are served in turn, one slot each, in the order they started waiting;
    /// then a freed slot goes to whichever tenant is below its share.
    #[test]
    fn waiting_tenants_take_turns() {
        let mut state = State::new(3);
        for _ in 0..3 {
            assert_eq!(state.acquire("x", "held"), Ok(()));
        }
        for waiter in ["1", "2"] {
            for tenant in ["a", "b", "c"] {
                assert!(state.acquire(tenant, waiter).is_err());
            }
        }
        let mut order = Vec::new();
        for _ in 0..3 {
            order.extend(release(&mut state, "x"));
        }
        assert_eq!(order, ["a:1", "b:1", "c:1"]);
        // Each now holds its share (1): a freed slot goes to the one tenant below it.
        assert_eq!(release(&mut state, "b"), ["b:2"]);
        assert_eq!(release(&mut state, "c"), ["c:2"]);
        assert_eq!(release(&mut state, "a"), ["a:2"]);
    }

    /// More competing tenants than slots: each share is 1 (never 0), and every slot is used.
    #[test]
    fn shares_are_at_least_one() {
        let mut state = State::new(2);
        assert_eq!(state.acquire("a", "held"), Ok(()));
        assert_eq!(state.acquire("b", "held"), Ok(()));
        for tenant in ["c", "d", "e"] {
            assert!(state.acquire(tenant, "w").is_err());
        }
        assert_eq!(state.share(), 1);
        assert_eq!(release(&mut state, "a"), ["c:w"]);
        assert_eq!(release(&mut state, "b"), ["d:w"]);
    }

    /// A canceled waiter leaves the queue; cancelling one already served says so.
    #[test]
    fn cancel() {
        let mut state = State::new(1);
        assert_eq!(state.acquire("a", "held"), Ok(()));
        let gone = state.acquire("b", "gone").expect_err("waits");
        let kept = state.acquire("c", "kept").expect_err("waits");
        assert!(state.cancel("b", gone));
        state.check();
        assert_eq!(release(&mut state, "a"), ["c:kept"]);
        assert!(!state.cancel("c", kept), "served already");
        assert_eq!(release(&mut state, "c"), Vec::<String>::new());
        assert!(state.tenants.is_empty());
    }

    proptest! {
        /// Random acquires, releases and cancels keep every invariant, and no slot goes to a
        /// tenant at or above its share while a waiting tenant is below it.
        #[test]
        fn invariants_hold(
            total in 1_usize..6,
            ops in proptest::collection::vec((0_u8..3, 0_usize..4), 0..200),
        ) {
            let names = ["a", "b", "c", "d"];
            let mut state: State<u64> = State::new(total);
            // Waiters not served yet: (tenant, ticket, waiter).
            let mut queued: Vec<(usize, u64, u64)> = Vec::new();
            for (step, (op, n)) in (0_u64..).zip(ops) {
                let freed = match op {
                    0 => {
                        if let Err(ticket) = state.acquire(names[n], step) {
                            queued.push((n, ticket, step));
                        }
                        false
                    }
                    1 if state.held(names[n]) > 0 => {
                        state.release(names[n]);
                        true
                    }
                    2 if !queued.is_empty() => {
                        let (n, ticket, _) = queued.remove(n % queued.len());
                        prop_assert!(state.cancel(names[n], ticket), "a queued waiter cancels");
                        false
                    }
                    _ => false,
                };
                if freed {
                    let share = state.share();
                    let below: Vec<String> = state
                        .turn
                        .iter()
                        .filter(|t| state.held(t) < share)
                        .cloned()
                        .collect();
                    for (tenant, waiter) in state.dispatch() {
                        if !below.is_empty() {
                            prop_assert!(below.contains(&tenant), "{} served over {:?}", tenant, below);
                        }
                        queued.retain(|(_, _, w)| *w != waiter);
                    }
                }
                state.check();
            }
        }
    }

    /// Through the async wrapper: a waiter dropped before its turn leaves no trace, a freed
    /// slot reaches the next waiter, and every slot comes back.
    #[tokio::test]
    async fn waiters_dropped_or_served_leave_no_slot_behind() {
        let slots = Slots::new(1);
        let held = slots.acquire("a").await;
        // Polled once (it queues), then dropped: it must leave the queue.
        assert!(slots.acquire("b").now_or_never().is_none(), "no free slot");
        assert_eq!(slots.lock().waiting("b"), 0);
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire("c").await.tenant.clone() }
        });
        for _ in 0..100 {
            if slots.lock().waiting("c") == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(slots.lock().waiting("c"), 1, "c waits");
        drop(held);
        assert_eq!(waiter.await.expect("served"), "c");
        let state = slots.lock();
        state.check();
        assert_eq!(state.free, 1);
        assert!(state.tenants.is_empty());
    }
}
