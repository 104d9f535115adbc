//! What reconciliation remembers between rounds (`u:watch`), so that it acts only on what it
//! saw twice:
//!
//! - **orphan sightings**: a runner of a lease this tenant knows ended, by account and
//!   provider id, with when a round first saw it. It is destroyed only by a round at least
//!   the grace period (`--orphan-grace`) after that; a runner that stops being listed is
//!   forgotten. Two installations (or a restored backup) that both think a runner is theirs
//!   therefore never destroy it on one glance.
//! - **missing runners**: an open, ready lease whose runner a listing of its account did not
//!   show, with when the runner was last seen. A second successful listing without it ends
//!   the lease (`runner_lost`, charged up to when it was last seen); a listing that shows it
//!   again forgets the miss.
//! - **failed listings** in a row, per account, for `provider.reconcile_failing`.
//! - when each account was last listed successfully (the last time a runner of a live lease
//!   can have been seen).
//!
//! Stored because the object hibernates between rounds: a grace period measured only in
//! memory would restart at every wake and an orphan would never be destroyed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One orphan runner as reconciliation saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    pub lease_id: String,
    /// When a round first saw it (the round's start, Unix ms).
    pub first_seen_at: i64,
    /// In report mode: whether it was reported already (once per runner).
    #[serde(default)]
    pub reported: bool,
}

/// A ready lease whose runner a listing did not show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miss {
    /// When the runner was last seen (a listing that showed it, or the lease's ready time).
    pub last_seen_at: i64,
}

/// Reconciliation's memory; see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// account → provider runner id → sighting.
    #[serde(default)]
    orphans: BTreeMap<String, BTreeMap<String, Sighting>>,
    /// lease id → miss.
    #[serde(default)]
    missing: BTreeMap<String, Miss>,
    /// account → failed listings in a row.
    #[serde(default)]
    failures: BTreeMap<String, u32>,
    /// account → start of the last round that listed it successfully.
    #[serde(default)]
    listed_at: BTreeMap<String, i64>,
}

/// The `_berth_kv` key the watch is stored under.
pub const KEY: &str = "watch";

impl Watch {
    /// Notes an orphan seen by the round that started at `at`; its sighting (the first one
    /// stands).
    pub fn sight(
        &mut self,
        account: &str,
        runner_id: &str,
        lease_id: &str,
        at: i64,
    ) -> &mut Sighting {
        self.orphans
            .entry(account.to_owned())
            .or_default()
            .entry(runner_id.to_owned())
            .or_insert_with(|| Sighting {
                lease_id: lease_id.to_owned(),
                first_seen_at: at,
                reported: false,
            })
    }

    /// Forgets the orphans of `account` this listing no longer shows (destroyed, or gone).
    pub fn keep_only(&mut self, account: &str, listed: &BTreeSet<String>) {
        if let Some(seen) = self.orphans.get_mut(account) {
            seen.retain(|runner_id, _| listed.contains(runner_id));
            if seen.is_empty() {
                self.orphans.remove(account);
            }
        }
    }

    /// Forgets one orphan (its destroy succeeded).
    pub fn forget(&mut self, account: &str, runner_id: &str) {
        if let Some(seen) = self.orphans.get_mut(account) {
            seen.remove(runner_id);
            if seen.is_empty() {
                self.orphans.remove(account);
            }
        }
    }

    /// Whether something waits for a later round (an orphan in its grace period, a runner
    /// missing once): rounds must go on even if provider work has settled.
    pub fn pending(&self) -> bool {
        !self.orphans.is_empty() || !self.missing.is_empty()
    }

    /// A listing of `account` failed; how many have failed in a row.
    pub fn listing_failed(&mut self, account: &str) -> u32 {
        let failures = self.failures.entry(account.to_owned()).or_default();
        *failures = failures.saturating_add(1);
        *failures
    }

    /// A listing of `account` from the round started at `at` succeeded: the failure streak
    /// ends; returns when the account was last listed before (if ever).
    pub fn listing_ok(&mut self, account: &str, at: i64) -> Option<i64> {
        self.failures.remove(account);
        self.listed_at.insert(account.to_owned(), at)
    }

    /// The runner of `lease_id` was not listed; returns the miss, new or earlier.
    pub fn missed(&mut self, lease_id: &str, last_seen_at: i64) -> (Miss, bool) {
        match self.missing.get(lease_id) {
            Some(miss) => (*miss, false),
            None => {
                let miss = Miss { last_seen_at };
                self.missing.insert(lease_id.to_owned(), miss);
                (miss, true)
            }
        }
    }

    /// The runner of `lease_id` was listed again, or its lease ended: forget its miss.
    pub fn found(&mut self, lease_id: &str) -> bool {
        self.missing.remove(lease_id).is_some()
    }

    /// Forgets everything about `account` (it was removed or re-pointed).
    pub fn forget_account(&mut self, account: &str) {
        self.orphans.remove(account);
        self.failures.remove(account);
        self.listed_at.remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first sighting stands; a runner no longer listed is forgotten; failures count in a
    /// row and reset on success.
    #[test]
    fn sightings_and_failures() {
        let mut watch = Watch::default();
        assert_eq!(watch.sight("a", "1", "lease_x", 10).first_seen_at, 10);
        assert_eq!(watch.sight("a", "1", "lease_x", 20).first_seen_at, 10);
        assert!(watch.pending());
        watch.keep_only("a", &BTreeSet::new());
        assert!(!watch.pending());
        assert_eq!(watch.listing_failed("a"), 1);
        assert_eq!(watch.listing_failed("a"), 2);
        assert_eq!(watch.listing_ok("a", 5), None);
        assert_eq!(watch.listing_failed("a"), 1);
        let (miss, new) = watch.missed("lease_y", 7);
        assert!(new);
        assert_eq!(watch.missed("lease_y", 9), (miss, false));
        assert!(watch.found("lease_y"));
        assert!(!watch.pending());
    }
}
