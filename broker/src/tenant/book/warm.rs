//! The warm runners of the tenant's ready pools, indexed in step with the book's leases: which
//! are ready to be taken (oldest first), how many still boot, and how requests fared. Pure,
//! like the rest of the book.

use std::collections::{BTreeSet, HashMap};

use crate::wire::{LeaseState, PoolWarm};

use super::super::lease::Lease;

/// Longest pause of a pool's refills after its warm runners kept failing.
const MAX_REFILL_BACKOFF_MS: i64 = 300_000;
/// First pause of a pool's refills after a warm runner failed; doubles per failure in a row.
const REFILL_BACKOFF_MS: i64 = 2_000;

/// Warm runners per pool, and what the pools' requests did since the object opened.
#[derive(Debug, Default)]
pub struct WarmIndex {
    /// Ready warm runners of each pool, by lease id (ids sort by creation: first = oldest).
    ready: HashMap<String, BTreeSet<String>>,
    /// Warm runners of each pool still being created or booting.
    provisioning: HashMap<String, i64>,
    /// Every warm runner of the tenant.
    total: i64,
    /// `(hits, misses)` per pool since the object opened.
    stats: HashMap<String, (u64, u64)>,
    /// Per pool: warm runners that failed in a row, and when refills may start again.
    backoff: HashMap<String, (u32, i64)>,
}

impl WarmIndex {
    /// Counts `lease` if it is warm (called as it enters the book).
    pub(super) fn count(&mut self, lease: &Lease) {
        if lease.state != LeaseState::Warm {
            return;
        }
        self.total += 1;
        if lease.ready_at.is_some() {
            self.ready
                .entry(lease.pool.clone())
                .or_default()
                .insert(lease.id.clone());
        } else {
            *self.provisioning.entry(lease.pool.clone()).or_default() += 1;
        }
    }

    /// Uncounts `lease` if it is warm (called as it leaves the book).
    pub(super) fn uncount(&mut self, lease: &Lease) {
        if lease.state != LeaseState::Warm {
            return;
        }
        self.total -= 1;
        if lease.ready_at.is_some() {
            if let Some(ids) = self.ready.get_mut(&lease.pool) {
                ids.remove(&lease.id);
                if ids.is_empty() {
                    self.ready.remove(&lease.pool);
                }
            }
        } else if let Some(n) = self.provisioning.get_mut(&lease.pool) {
            *n -= 1;
            if *n == 0 {
                self.provisioning.remove(&lease.pool);
            }
        }
    }

    /// The oldest ready warm runner of `pool` (the one closest to its recycling).
    pub fn oldest_ready(&self, pool: &str) -> Option<&str> {
        self.ready
            .get(pool)
            .and_then(|ids| ids.first())
            .map(String::as_str)
    }

    /// Ready warm runners of `pool`, oldest first.
    pub fn ready_ids(&self, pool: &str) -> Vec<String> {
        self.ready
            .get(pool)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Ready warm runners of `pool`.
    pub fn ready_in(&self, pool: &str) -> i64 {
        self.ready
            .get(pool)
            .map_or(0, |ids| i64::try_from(ids.len()).unwrap_or(i64::MAX))
    }

    /// Warm runners of `pool` still being created or booting.
    pub fn provisioning_in(&self, pool: &str) -> i64 {
        self.provisioning.get(pool).copied().unwrap_or(0)
    }

    /// Warm runners of `pool`, ready or not.
    pub fn in_pool(&self, pool: &str) -> i64 {
        self.ready_in(pool)
            .saturating_add(self.provisioning_in(pool))
    }

    /// Warm runners of the tenant, ready or not.
    pub fn total(&self) -> i64 {
        self.total
    }

    /// Warm runners of the tenant: `(ready, provisioning)`.
    pub fn totals(&self) -> (i64, i64) {
        let ready: usize = self.ready.values().map(BTreeSet::len).sum();
        let ready = i64::try_from(ready).unwrap_or(i64::MAX);
        (ready, self.total.saturating_sub(ready))
    }

    /// The pool's warm runners as the API shows them.
    pub fn view(&self, pool: &str) -> PoolWarm {
        let (hits, misses) = self.stats.get(pool).copied().unwrap_or_default();
        PoolWarm {
            ready: self.ready_in(pool),
            provisioning: self.provisioning_in(pool),
            hits,
            misses,
        }
    }

    /// A request of `pool` took a warm runner.
    pub fn hit(&mut self, pool: &str) {
        let stats = self.stats.entry(pool.to_owned()).or_default();
        stats.0 = stats.0.saturating_add(1);
    }

    /// A request of ready pool `pool` found no warm runner ready.
    pub fn miss(&mut self, pool: &str) {
        let stats = self.stats.entry(pool.to_owned()).or_default();
        stats.1 = stats.1.saturating_add(1);
    }

    /// A warm runner of `pool` failed at `now`: refills of the pool pause, longer for each
    /// failure in a row (so a provider that refuses every create is not called in a loop).
    pub fn failed(&mut self, pool: &str, now: i64) {
        let (failures, _) = self.backoff.get(pool).copied().unwrap_or_default();
        let failures = failures.saturating_add(1);
        let delay = REFILL_BACKOFF_MS
            .saturating_mul(1_i64 << failures.saturating_sub(1).min(16))
            .min(MAX_REFILL_BACKOFF_MS);
        self.backoff
            .insert(pool.to_owned(), (failures, now.saturating_add(delay)));
    }

    /// A warm runner of `pool` became ready: its refills no longer pause.
    pub fn succeeded(&mut self, pool: &str) {
        self.backoff.remove(pool);
    }

    /// When refills of `pool` may start again, if they pause after failures.
    pub fn paused_until(&self, pool: &str, now: i64) -> Option<i64> {
        self.backoff
            .get(pool)
            .map(|(_, until)| *until)
            .filter(|until| *until > now)
    }

    /// The earliest end of a refill pause after `now`: when the object looks at its pools
    /// again.
    pub fn next_unpause(&self, now: i64) -> Option<i64> {
        self.backoff
            .values()
            .map(|(_, until)| *until)
            .filter(|until| *until > now)
            .min()
    }
}
