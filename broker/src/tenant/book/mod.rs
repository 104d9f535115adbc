//! The tenant's open leases, counts, spend and deadlines, in memory — and the pure decisions
//! made over them (may this lease be granted? which deadline comes next? what is due?).
//!
//! Nothing here does I/O: commands ask the book, transitions (`transition`) decide, and the
//! object writes what they decided.
//! Every change of a lease goes through [`Book::put`], which keeps the counts, the open
//! reservations and the deadline index in step with the leases themselves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::wire::{LeaseState, Limits};

use super::lease::Lease;
use super::money::Period;
use super::pool::Pool;

mod queue;
pub mod warm;

/// How long the provider side may take; from the server's configuration.
#[derive(Clone, Debug)]
pub struct Timing {
    /// One provider create call, before it counts as failed (transient).
    pub create_timeout: Duration,
    /// Create attempts before a lease fails with `provider_error`.
    pub create_attempts: i64,
    /// One provider destroy call, before it counts as failed.
    pub destroy_timeout: Duration,
    /// First retry delay of a failed provider call; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// A runner that does not report ready this long after the grant fails the lease.
    pub ready_timeout: Duration,
    /// How often the object compares its leases with the providers' runners.
    pub reconcile_interval: Duration,
    /// An orphan runner (of a lease this tenant knows ended) is destroyed only when a
    /// reconciliation sees it again at least this long after it was first seen.
    pub orphan_grace: Duration,
    /// Most orphans one reconciliation round destroys per provider account; the rest wait
    /// for the next round.
    pub max_orphan_destroys: usize,
    /// Whether reconciliation destroys orphans or only reports them.
    pub reconcile_mode: ReconcileMode,
    /// Failed destroys of one lease's runner before it is announced stuck
    /// (`runner.destroy_stuck`); a permanent error announces it at once.
    pub stuck_after: i64,
    /// Failed listings of one account in a row before `provider.reconcile_failing`.
    pub reconcile_failing_after: u32,
}

/// What reconciliation does with an orphan runner once its grace period has passed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReconcileMode {
    /// Destroy it (the default).
    #[default]
    Destroy,
    /// Log it and announce it (`runner.orphan_destroyed` with `report_only: true`); destroy
    /// nothing. For a first run against a shared project, or an investigation.
    Report,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            create_timeout: Duration::from_secs(120),
            create_attempts: 5,
            destroy_timeout: Duration::from_secs(120),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            ready_timeout: Duration::from_secs(600),
            reconcile_interval: Duration::from_secs(300),
            orphan_grace: Duration::from_secs(600),
            max_orphan_destroys: 10,
            reconcile_mode: ReconcileMode::Destroy,
            stuck_after: 5,
            reconcile_failing_after: 3,
        }
    }
}

/// An exact sum clipped into an `i64` (money sums saturate rather than wrap).
pub fn saturate(sum: i128) -> i64 {
    i64::try_from(sum).unwrap_or(if sum < 0 { i64::MIN } else { i64::MAX })
}

/// Milliseconds of a duration, saturating.
pub fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Why a lease cannot be granted right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// The tenant's or the pool's active cap is reached.
    Concurrency,
    /// The reservation would pass a spend cap.
    Spend,
}

/// Charges of the current day and month.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Charged {
    /// `(period start, charged in it)`.
    pub day: (i64, i64),
    pub month: (i64, i64),
}

/// The in-memory state of a tenant's leases.
#[derive(Debug)]
pub struct Book {
    limits: Limits,
    pools: BTreeMap<String, Pool>,
    timing: Timing,
    /// Open (non-terminal) leases by id; ids sort by creation time, so iteration is FIFO.
    leases: BTreeMap<String, Lease>,
    active: i64,
    queued: i64,
    active_by_pool: HashMap<String, i64>,
    /// The queued leases' ids, for their positions in O(log n).
    queue: queue::QueueIndex,
    /// Sum of the reservations of open leases, exact: each is at most `i64::MAX`, so the sum
    /// cannot leave an `i128`, and taking a lease out restores the sum before it came in
    /// (a saturating `i64` would forget what it clipped). Read through
    /// [`Book::open_reserved`], which saturates.
    open_reserved: i128,
    charged: Charged,
    /// `(deadline, lease id)` of every open lease that has one.
    deadlines: BTreeSet<(i64, String)>,
    deadline_of: HashMap<String, i64>,
    /// Warm runners of each pool, in step with the leases ([`warm::WarmIndex`]).
    warm: warm::WarmIndex,
}

impl Book {
    pub fn new(limits: Limits, timing: Timing, charged: Charged) -> Book {
        Book {
            limits,
            pools: BTreeMap::new(),
            timing,
            leases: BTreeMap::new(),
            active: 0,
            queued: 0,
            active_by_pool: HashMap::new(),
            queue: queue::QueueIndex::default(),
            open_reserved: 0,
            charged,
            deadlines: BTreeSet::new(),
            deadline_of: HashMap::new(),
            warm: warm::WarmIndex::default(),
        }
    }

    /// The tenant's limits, as admission applies them.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replaces the limits (the caller checked them against the quota).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Provider timeouts and retries.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// A pool.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    /// Every pool, by name.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// How many pools there are.
    pub fn pool_count(&self) -> usize {
        self.pools.len()
    }

    /// Creates or replaces a pool.
    pub fn put_pool(&mut self, pool: Pool) {
        self.pools.insert(pool.name.clone(), pool);
    }

    /// An open lease.
    pub fn get(&self, id: &str) -> Option<&Lease> {
        self.leases.get(id)
    }

    /// Every open lease, oldest first.
    pub fn open(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Leases counting against the cap (provisioning, ready, releasing).
    pub fn active(&self) -> i64 {
        self.active
    }

    /// Leases waiting in the queue.
    pub fn queued(&self) -> i64 {
        self.queued
    }

    /// Active leases of one pool.
    pub fn active_in(&self, pool: &str) -> i64 {
        self.active_by_pool.get(pool).copied().unwrap_or(0)
    }

    /// The sum of open reservations, saturating at `i64::MAX`.
    pub fn open_reserved(&self) -> i64 {
        saturate(self.open_reserved)
    }

    /// Stores `lease` (replacing the version with its id). Terminal leases leave memory.
    pub fn put(&mut self, lease: Lease) {
        if let Some(old) = self.leases.remove(&lease.id) {
            self.uncount(&old);
        }
        if !lease.state.is_terminal() {
            self.count(&lease);
            self.leases.insert(lease.id.clone(), lease);
        }
    }

    /// Removes an open lease to change it; put it back with [`Book::put`].
    pub fn take(&mut self, id: &str) -> Option<Lease> {
        let lease = self.leases.remove(id)?;
        self.uncount(&lease);
        Some(lease)
    }

    fn count(&mut self, lease: &Lease) {
        if lease.state.is_active() {
            self.active += 1;
            *self.active_by_pool.entry(lease.pool.clone()).or_default() += 1;
        } else if lease.state == LeaseState::Queued {
            self.queued += 1;
            self.queue.insert(&lease.id);
        }
        self.warm.count(lease);
        self.open_reserved += i128::from(lease.reserved_micros);
        if let Some(at) = deadline(lease, &self.timing) {
            self.deadlines.insert((at, lease.id.clone()));
            self.deadline_of.insert(lease.id.clone(), at);
        }
    }

    fn uncount(&mut self, lease: &Lease) {
        if lease.state.is_active() {
            self.active -= 1;
            if let Some(n) = self.active_by_pool.get_mut(&lease.pool) {
                *n -= 1;
                if *n == 0 {
                    self.active_by_pool.remove(&lease.pool);
                }
            }
        } else if lease.state == LeaseState::Queued {
            self.queued -= 1;
            self.queue.remove(&lease.id);
        }
        self.warm.uncount(lease);
        self.open_reserved -= i128::from(lease.reserved_micros);
        if let Some(at) = self.deadline_of.remove(&lease.id) {
            self.deadlines.remove(&(at, lease.id.clone()));
        }
    }

    /// The position of a queued lease (1 = next to be granted): the queued leases whose id
    /// is at most its id, counted in O(log n).
    pub fn queue_position(&self, id: &str) -> Option<i64> {
        let position = self.queue.position(id)?;
        Some(i64::try_from(position).unwrap_or(i64::MAX))
    }

    /// Queued leases still waiting at `now`, oldest first. A lease whose wait ran out is left
    /// out even before its deadline event cancels it: its client has stopped waiting, so a
    /// slot freed in the same moment goes to the next one.
    pub fn waiting(&self, now: i64) -> Vec<String> {
        self.leases
            .values()
            .filter(|l| l.state == LeaseState::Queued)
            .filter(|l| l.wait_until.is_none_or(|until| until > now))
            .map(|l| l.id.clone())
            .collect()
    }

    /// The earliest deadline of any open lease.
    pub fn next_deadline(&self) -> Option<i64> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Open leases whose deadline has come, oldest deadline first.
    pub fn due(&self, now: i64) -> Vec<String> {
        self.deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Charged in the period of `period` containing `now`.
    pub fn charged_in(&self, period: Period, now: i64) -> i64 {
        let (start, amount) = match period {
            Period::Day => self.charged.day,
            Period::Month => self.charged.month,
        };
        if period.bounds(now).0 == start {
            amount
        } else {
            0
        }
    }

    /// The charges of the periods last charged in.
    pub fn charged(&self) -> Charged {
        self.charged
    }

    /// Records a charge made at `at`.
    pub fn add_charge(&mut self, at: i64, amount: i64) {
        for (period, slot) in [
            (Period::Day, &mut self.charged.day),
            (Period::Month, &mut self.charged.month),
        ] {
            let start = period.bounds(at).0;
            if slot.0 == start {
                slot.1 = slot.1.saturating_add(amount);
            } else if start > slot.0 {
                *slot = (start, amount);
            }
        }
    }

    /// The cap of `period`, if any.
    pub fn cap(&self, period: Period) -> Option<i64> {
        match period {
            Period::Day => self.limits.spend_cap_daily_micros,
            Period::Month => self.limits.spend_cap_monthly_micros,
        }
    }

    /// Spent (charged + open reservations) against the cap of `period` at `now`.
    pub fn spent(&self, period: Period, now: i64) -> i64 {
        self.charged_in(period, now)
            .saturating_add(self.open_reserved())
    }

    /// Whether `extra` more reserved money fits every spend cap at `now`.
    pub fn spend_allows(&self, extra: i64, now: i64) -> bool {
        [Period::Day, Period::Month]
            .into_iter()
            .all(|period| match self.cap(period) {
                Some(cap) => self.spent(period, now).saturating_add(extra) <= cap,
                None => true,
            })
    }

    /// The warm runners of every pool.
    pub fn warm(&self) -> &warm::WarmIndex {
        &self.warm
    }

    /// The warm runners of every pool, to note hits, misses and refill backoffs.
    pub fn warm_mut(&mut self) -> &mut warm::WarmIndex {
        &mut self.warm
    }

    /// Whether a lease of `pool` reserving `reservation` may be granted now.
    pub fn admit(&self, pool: &str, reservation: i64, now: i64) -> Result<(), Block> {
        if self.active >= self.limits.max_active_leases {
            return Err(Block::Concurrency);
        }
        let pool_cap = self.pools.get(pool).and_then(|p| p.max_active);
        if pool_cap.is_some_and(|cap| self.active_in(pool) >= cap) {
            return Err(Block::Concurrency);
        }
        if !self.spend_allows(reservation, now) {
            return Err(Block::Spend);
        }
        Ok(())
    }
}

/// The next moment the object must look at `lease`, if any.
pub fn deadline(lease: &Lease, timing: &Timing) -> Option<i64> {
    let op_deadline = lease.op.map(|(_, at)| at);
    let retry = if lease.op.is_none() {
        lease.next_attempt_at
    } else {
        None
    };
    let times: [Option<i64>; 5] = match lease.state {
        LeaseState::Queued => [lease.wait_until, None, None, None, None],
        LeaseState::Provisioning => {
            let ready_deadline = lease
                .granted_at
                .map(|at| at.saturating_add(ms(timing.ready_timeout)));
            [
                lease.expires_at,
                lease.idle_at(),
                ready_deadline,
                retry,
                op_deadline,
            ]
        }
        LeaseState::Ready => [lease.expires_at, lease.idle_at(), None, None, op_deadline],
        // A warm runner: recycled at `expires_at` (made + warm_ttl_s); while it boots, like a
        // provisioning lease.
        LeaseState::Warm => {
            let ready_deadline = lease
                .ready_at
                .is_none()
                .then(|| {
                    lease
                        .granted_at
                        .map(|at| at.saturating_add(ms(timing.ready_timeout)))
                })
                .flatten();
            [lease.expires_at, ready_deadline, retry, op_deadline, None]
        }
        LeaseState::Releasing => [retry, op_deadline, None, None, None],
        _ => [None; 5],
    };
    times.into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, state: LeaseState, reserved: i64) -> Lease {
        Lease {
            id: id.into(),
            pool: "p".into(),
            state,
            granted_at: state.is_active().then_some(0),
            expires_at: state.is_active().then_some(60_000),
            ttl_s: 60,
            wait_until: (state == LeaseState::Queued).then_some(30_000),
            provider: "fake".into(),
            hourly_price_micros: 3_600,
            reserved_micros: reserved,
            ..Lease::default()
        }
    }

    fn book(max_active: i64) -> Book {
        let limits = Limits {
            max_active_leases: max_active,
            ..Limits::default()
        };
        Book::new(limits, Timing::default(), Charged::default())
    }

    /// Counts, reservations and deadlines follow every put, and terminal leases leave.
    #[test]
    fn put_keeps_counts_in_step() {
        let mut book = book(2);
        book.put(lease("a", LeaseState::Provisioning, 60));
        book.put(lease("b", LeaseState::Queued, 0));
        assert_eq!(
            (book.active(), book.queued(), book.open_reserved()),
            (1, 1, 60)
        );
        assert_eq!(book.next_deadline(), Some(30_000));
        assert_eq!(book.queue_position("b"), Some(1));
        let mut a = book.get("a").cloned().expect("a");
        a.state = LeaseState::Released;
        a.reserved_micros = 0;
        book.put(a);
        assert_eq!((book.active(), book.open_reserved()), (0, 0));
        assert!(book.get("a").is_none());
        assert_eq!(book.due(30_000), vec!["b".to_string()]);
        assert_eq!(book.due(29_999), Vec::<String>::new());
    }

    /// Grants stop at the tenant cap, the pool cap and the spend caps.
    #[test]
    fn admission() {
        let mut book = book(2);
        book.put_pool(Pool {
            name: "small".into(),
            provider: "fake".into(),
            machine_type: "s".into(),
            hourly_price_micros: 1,
            max_active: Some(1),
            ..Pool::default()
        });
        assert_eq!(book.admit("p", 10, 0), Ok(()));
        let mut small = lease("s1", LeaseState::Ready, 10);
        small.pool = "small".into();
        book.put(small);
        assert_eq!(book.admit("small", 10, 0), Err(Block::Concurrency));
        assert_eq!(book.admit("p", 10, 0), Ok(()));
        book.put(lease("p1", LeaseState::Ready, 10));
        assert_eq!(book.admit("p", 10, 0), Err(Block::Concurrency));
        book.set_limits(Limits {
            max_active_leases: 10,
            spend_cap_daily_micros: Some(30),
            ..Limits::default()
        });
        assert_eq!(book.admit("p", 10, 0), Ok(()));
        assert_eq!(book.admit("p", 11, 0), Err(Block::Spend));
        book.add_charge(5, 5);
        assert_eq!(book.admit("p", 10, 5), Err(Block::Spend));
        // The next day the charge no longer counts against the daily cap.
        assert_eq!(book.admit("p", 10, 86_400_000), Ok(()));
    }

    /// The queue is FIFO by lease id and never offers a lease whose wait ran out.
    #[test]
    fn waiting_skips_leases_whose_wait_ran_out() {
        let mut book = book(1);
        let mut early = lease("q1", LeaseState::Queued, 0);
        early.wait_until = Some(10_000);
        let mut late = lease("q2", LeaseState::Queued, 0);
        late.wait_until = Some(20_000);
        book.put(late);
        book.put(early);
        assert_eq!(book.waiting(9_999), vec!["q1", "q2"]);
        assert_eq!(book.waiting(10_000), vec!["q2"]);
        assert_eq!(book.waiting(20_000), Vec::<String>::new());
    }

    /// Two reservations near `i64::MAX` saturate the open sum (it wrapped to a negative
    /// number in release builds, letting any grant pass a cap) and the sum is exact again once
    /// one of them is gone.
    #[test]
    fn huge_reservations_saturate_instead_of_wrapping() {
        let mut book = book(10);
        book.set_limits(Limits {
            max_active_leases: 10,
            spend_cap_daily_micros: Some(1_000_000_000_000_000_000),
            ..Limits::default()
        });
        book.add_charge(0, i64::MAX - 1);
        book.add_charge(0, 5);
        assert_eq!(book.charged_in(Period::Day, 0), i64::MAX);
        let mut book = self::book(10);
        book.set_limits(Limits {
            max_active_leases: 10,
            spend_cap_daily_micros: Some(1_000_000_000_000_000_000),
            ..Limits::default()
        });
        book.put(lease("a", LeaseState::Ready, i64::MAX - 1));
        book.put(lease("b", LeaseState::Ready, i64::MAX - 2));
        assert_eq!(book.open_reserved(), i64::MAX);
        assert_eq!(book.spent(Period::Day, 0), i64::MAX);
        assert!(!book.spend_allows(1, 0));
        assert_eq!(book.admit("p", 0, 0), Err(Block::Spend));
        book.take("a");
        assert_eq!(book.open_reserved(), i64::MAX - 2);
        book.take("b");
        assert_eq!(book.open_reserved(), 0);
        assert_eq!(book.admit("p", 1, 0), Ok(()));
    }

    proptest::proptest! {
        /// After random puts (queued, active or ended) and takes, every lease's queue position
        /// is the naive count of queued open leases whose id is at most its id.
        #[test]
        fn queue_positions_match_the_naive_count(
            ops in proptest::collection::vec((0_u8..4, 0_u16..120), 0..400)
        ) {
            let mut book = book(1_000);
            for (op, n) in ops {
                let id = format!("lease_{n:04}");
                match op {
                    0 => book.put(lease(&id, LeaseState::Queued, 0)),
                    1 => book.put(lease(&id, LeaseState::Ready, 5)),
                    2 => book.put(lease(&id, LeaseState::Canceled, 0)),
                    _ => drop(book.take(&id)),
                }
            }
            for n in 0_u16..120 {
                let id = format!("lease_{n:04}");
                let queued = |l: &&Lease| l.state == LeaseState::Queued;
                let expected = book.get(&id).filter(queued).map(|_| {
                    let ahead = book.open().filter(queued).filter(|l| l.id <= id).count();
                    i64::try_from(ahead).expect("small")
                });
                proptest::prop_assert_eq!(book.queue_position(&id), expected, "{}", id);
            }
        }
    }
}
