//! Upkeep that must not keep an idle tenant awake: reconciliation and pruning.
//!
//! Both used to run at every activation and then on a fixed period, so every tenant with a
//! provider account woke every reconciliation interval forever, and every wake-up (even for a
//! read) cost an alarm, a commit and a directory write. Now each is due only while it can
//! find something:
//!
//! - **Reconciliation** looks for runners no lease owns. Runners appear only through this
//!   tenant's creates and linger only after its destroys, so it is due while provider work is
//!   recent: at open if provider work happened since the last complete round (the process may
//!   have died mid-create), then every interval until a complete round has started more than
//!   two intervals after the last provider call. The times are stored (`u:upkeep`) and written
//!   in the commits that start provider work or finish a round: no extra fsync.
//! - **Pruning** deletes rows past retention. The object knows when its oldest row expires
//!   (`prunable_from`: read at load, lowered as rows are added) and prunes then, at most once
//!   per [`PRUNE_INTERVAL_MS`]. A tenant with nothing left to expire sets no pruning alarm.

use serde::{Deserialize, Serialize};

use crate::objects::Error;

use super::book::{Timing, ms};
use super::broker::TenantBroker;
use super::commands::github::DELIVERY_MEMORY_MS;
use super::commands::request::IDEMPOTENCY_TTL_MS;
use super::effects::EVENT_RETENTION_MS;
use super::{Ctx, outbox};

/// How often old rows are removed, at most.
const PRUNE_INTERVAL_MS: i64 = 3_600_000;

/// What the object stores about its provider work and reconciliation (`u:upkeep`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    /// When provider work (a create or destroy) last started.
    activity_at: Option<i64>,
    /// When the last round that listed every account successfully started.
    reconciled_at: Option<i64>,
}

/// The round of listings in flight.
#[derive(Clone, Copy, Debug)]
struct Round {
    started_at: i64,
    ok: bool,
}

/// When reconciliation and pruning are due, and the round in flight.
#[derive(Debug)]
pub struct Upkeep {
    stored: Stored,
    /// When reconciliation is next due (`None`: nothing to look for).
    next_reconcile_at: Option<i64>,
    /// Listings in flight, and the round they belong to.
    listings: usize,
    round: Option<Round>,
    /// When the oldest retained row expires (`None`: nothing to prune).
    prunable_from: Option<i64>,
    /// When this activation last pruned.
    last_prune_at: Option<i64>,
    /// Whether reconciliation waits to see something again (an orphan in its grace period,
    /// a runner missed once): rounds go on every interval while it does.
    pending: bool,
}

impl Upkeep {
    /// The read [`Upkeep::from_rows`] takes, one value: when the oldest row expires (every row
    /// expiring after the Unix ms bound to the parameter `after`, `?N`; bind [`EVERY_ROW`]).
    pub fn load_sql(after: &str) -> String {
        prunable_sql(after)
    }

    /// The stored times, when the first reconciliation is due and, from
    /// [`Upkeep::load_sql`]'s value, when the oldest row expires.
    pub fn from_rows(ctx: &mut Ctx<'_>, prunable_from: Option<i64>) -> Result<Upkeep, Error> {
        let now = ctx.now_ms();
        let stored: Stored = ctx.kv_get("upkeep")?.unwrap_or_default();
        let interval = ms(ctx.env().timing.reconcile_interval);
        Ok(Upkeep {
            stored,
            next_reconcile_at: next_reconcile(stored, interval, now),
            listings: 0,
            round: None,
            prunable_from,
            last_prune_at: None,
            pending: false,
        })
    }

    /// Whether reconciliation waits to see something again ([`super::watch`]); while it
    /// does, a round is due by one interval from `now` at the latest.
    pub fn keep_looking(&mut self, pending: bool, now: i64) {
        self.pending = pending;
        if pending && self.listings == 0 && self.next_reconcile_at.is_none() {
            self.next_reconcile_at = Some(now);
        }
    }

    /// Records that provider work starts now (a create or a destroy): a runner may appear
    /// that no lease will own, so reconciliation is due again.
    pub fn provider_work(&mut self, ctx: &mut Ctx<'_>, tenant: &str, timing: &Timing) {
        let now = ctx.now_ms();
        self.stored.activity_at = Some(now);
        if let Err(err) = ctx.kv_put("upkeep", &self.stored) {
            tracing::error!(%tenant, error = %err, "storing the upkeep times");
        }
        if self.next_reconcile_at.is_none() {
            self.next_reconcile_at = Some(now.saturating_add(ms(timing.reconcile_interval)));
        }
    }

    /// An account was (re)configured: it may hold runners from before, so a round is due now
    /// (unless one is in flight).
    pub fn account_changed(&mut self, now: i64) {
        if self.listings == 0 {
            self.next_reconcile_at = Some(self.next_reconcile_at.map_or(now, |at| at.min(now)));
        }
    }

    /// Whether a reconciliation round is due at `now`.
    pub fn reconcile_due(&self, now: i64) -> bool {
        self.next_reconcile_at.is_some_and(|at| now >= at)
    }

    /// When the next round is due, if there is anything to list and no round in flight.
    pub fn next_reconcile(&self, has_accounts: bool) -> Option<i64> {
        (has_accounts && self.listings == 0)
            .then_some(self.next_reconcile_at)
            .flatten()
    }

    /// A round starts now with `listings` listings; returns `false` (and stops looking until
    /// an account is configured again) when there is nothing to list, or when a round is
    /// still in flight.
    pub fn round_started(
        &mut self,
        now: i64,
        interval: std::time::Duration,
        listings: usize,
    ) -> bool {
        // Overwritten when the round ends; stands if it never does.
        self.next_reconcile_at = Some(now.saturating_add(ms(interval)));
        if self.listings > 0 {
            return false;
        }
        if listings == 0 {
            self.round = None;
            self.next_reconcile_at = None;
            return false;
        }
        self.listings = listings;
        self.round = Some(Round {
            started_at: now,
            ok: true,
        });
        true
    }

    /// One account's listing came back; the round ends with the last one. A round where every
    /// listing succeeded moves `reconciled_at`; a failed one is retried after an interval.
    pub fn listing_done(&mut self, ctx: &mut Ctx<'_>, tenant: &str, ok: bool) {
        self.listings = self.listings.saturating_sub(1);
        if let Some(round) = &mut self.round {
            round.ok &= ok;
        }
        if self.listings > 0 {
            return;
        }
        let interval = ms(ctx.env().timing.reconcile_interval);
        match self.round.take() {
            Some(round) if round.ok => {
                self.stored.reconciled_at = Some(round.started_at);
                if let Err(err) = ctx.kv_put("upkeep", &self.stored) {
                    tracing::error!(%tenant, error = %err, "storing the upkeep times");
                }
                self.next_reconcile_at = next_reconcile(
                    self.stored,
                    interval,
                    round.started_at.saturating_add(interval),
                );
            }
            _ => self.next_reconcile_at = Some(ctx.now_ms().saturating_add(interval)),
        }
        if self.pending {
            let soon = ctx.now_ms().saturating_add(interval);
            self.next_reconcile_at = Some(self.next_reconcile_at.map_or(soon, |at| at.min(soon)));
        }
    }

    /// Notes that a row becomes prunable at `at`.
    pub fn prunable(&mut self, at: i64) {
        self.prunable_from = Some(self.prunable_from.map_or(at, |p| p.min(at)));
    }

    /// When pruning is next due, if anything is left to expire.
    pub fn next_prune(&self) -> Option<i64> {
        let from = self.prunable_from?;
        Some(match self.last_prune_at {
            Some(last) => from.max(last.saturating_add(PRUNE_INTERVAL_MS)),
            None => from,
        })
    }

    /// Whether pruning is due at `now`.
    pub fn prune_due(&self, now: i64) -> bool {
        self.next_prune().is_some_and(|at| now >= at)
    }
}

/// When the next reconciliation is due, given the stored times. `dirty_at` is the answer when
/// provider work happened since the last complete round (`now` at open).
fn next_reconcile(stored: Stored, interval_ms: i64, dirty_at: i64) -> Option<i64> {
    let activity = stored.activity_at?;
    let Some(reconciled) = stored.reconciled_at else {
        return Some(dirty_at);
    };
    if activity >= reconciled {
        Some(dirty_at)
    } else if activity.saturating_add(interval_ms.saturating_mul(2)) > reconciled {
        Some(reconciled.saturating_add(interval_ms))
    } else {
        None
    }
}

/// Deletes what is past retention and dead-letters deliveries of endpoints disabled for their
/// whole window; remembers when the oldest remaining row expires.
pub async fn prune(t: &mut TenantBroker, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let now = ctx.now_ms();
    // Read before the deletes are queued: the rows that stay are the ones expiring later.
    t.upkeep.prunable_from = prunable_after(ctx, now).await?;
    t.upkeep.last_prune_at = Some(now);
    ctx.write("DELETE FROM idempotency WHERE created_at < ?")
        .bind(now.saturating_sub(IDEMPOTENCY_TTL_MS));
    ctx.write("DELETE FROM events WHERE at < ?")
        .bind(now.saturating_sub(EVENT_RETENTION_MS));
    ctx.write("DELETE FROM deliveries WHERE status != 'pending' AND finished_at < ?")
        .bind(now.saturating_sub(EVENT_RETENTION_MS));
    ctx.write("DELETE FROM github_deliveries WHERE at < ?")
        .bind(now.saturating_sub(DELIVERY_MEMORY_MS));
    ctx.write("DELETE FROM github_jobs WHERE at < ?")
        .bind(now.saturating_sub(DELIVERY_MEMORY_MS));
    if outbox::expire_disabled(t, ctx) {
        t.upkeep.prunable(now.saturating_add(EVENT_RETENTION_MS));
    }
    Ok(())
}

/// The `after` that makes [`prunable_sql`] consider every row (far enough from `i64::MIN`
/// that subtracting a retention cannot overflow).
pub const EVERY_ROW: i64 = i64::MIN / 2;

/// The read of when the first row expiring at or after the Unix ms bound to `after` (`?N`,
/// at least [`EVERY_ROW`]) expires; NULL when no row does.
fn prunable_sql(after: &str) -> String {
    let (idempotency, events, github) =
        (IDEMPOTENCY_TTL_MS, EVENT_RETENTION_MS, DELIVERY_MEMORY_MS);
    format!(
        "SELECT min(x) FROM (
            SELECT min(created_at) + {idempotency} AS x FROM idempotency WHERE created_at >= {after} - {idempotency}
            UNION ALL SELECT min(at) + {events} FROM events WHERE at >= {after} - {events}
            UNION ALL SELECT min(finished_at) + {events} FROM deliveries
                WHERE status != 'pending' AND finished_at >= {after} - {events}
            UNION ALL SELECT min(dead_at) FROM deliveries WHERE status = 'pending' AND dead_at >= {after}
            UNION ALL SELECT min(at) + {github} FROM github_deliveries WHERE at >= {after} - {github}
            UNION ALL SELECT min(at) + {github} FROM github_jobs WHERE at >= {after} - {github}
        )"
    )
}

/// When the first row expiring at or after `after` expires (`None`: no such row).
async fn prunable_after(ctx: &mut Ctx<'_>, after: i64) -> Result<Option<i64>, Error> {
    let (at,): (Option<i64>,) = ctx
        .db()?
        .query(&prunable_sql("?1"))
        .bind(after.max(EVERY_ROW))
        .fetch_one()?;
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: i64 = 300_000;

    fn stored(activity_at: Option<i64>, reconciled_at: Option<i64>) -> Stored {
        Stored {
            activity_at,
            reconciled_at,
        }
    }

    /// No provider work ever: nothing to reconcile. Work since the last round: due at once.
    /// Recent work: every interval. Work long settled: never.
    #[test]
    fn reconciliation_is_due_only_while_provider_work_is_recent() {
        assert_eq!(next_reconcile(stored(None, None), I, 7), None);
        assert_eq!(next_reconcile(stored(None, Some(5)), I, 7), None);
        assert_eq!(next_reconcile(stored(Some(1), None), I, 7), Some(7));
        assert_eq!(next_reconcile(stored(Some(10), Some(10)), I, 7), Some(7));
        assert_eq!(
            next_reconcile(stored(Some(10), Some(11)), I, 7),
            Some(11 + I)
        );
        assert_eq!(
            next_reconcile(stored(Some(10), Some(10 + 2 * I - 1)), I, 7),
            Some(10 + 3 * I - 1)
        );
        assert_eq!(
            next_reconcile(stored(Some(10), Some(10 + 2 * I)), I, 7),
            None
        );
    }
}
