//! Removing a lease's GitHub registration once the lease has ended, retried from the stored
//! row until GitHub lets it go, and reconciliation of the scope's registrations against the
//! tenant's ended leases (see the module above).

use std::time::Duration;

use providers::github::{Registration, Removal};

use crate::objects::Error;

use super::super::broker::{Completion, TenantBroker};
use super::super::lease::Lease;
use super::super::row;
use super::super::{Ctx, retry};
use super::{ABANDONED, CALL_TIMEOUT, JOB, REGISTERED, REGISTERING, REMOVED, REMOVING, Row};

/// First retry of a removal; doubles per attempt up to [`REMOVE_MAX_MS`].
const REMOVE_BASE_MS: i64 = 30_000;
const REMOVE_MAX_MS: i64 = 15 * 60_000;
/// Removal attempts before berth gives up on a registration (about a day at the longest
/// delay); reconciliation may still remove it later.
pub const REMOVE_ATTEMPTS: i64 = 100;

/// Called with every lease a transition leaves: a lease that ended has its registration
/// removed (and its config forgotten); its job row leaves memory.
pub fn lease_changed(t: &mut TenantBroker, ctx: &mut Ctx<'_>, lease: &Lease) -> Result<(), Error> {
    if lease.ended_at.is_none() && !lease.state.is_terminal() {
        return Ok(());
    }
    let Some(row) = t.jit.rows.get_mut(&lease.id) else {
        return Ok(());
    };
    match row.state.as_str() {
        REGISTERED => {
            row.state = REMOVING.to_owned();
            row.config = None;
            row.attempts = 0;
            row.next_attempt_at = Some(ctx.now_ms());
            row.updated_at = ctx.now_ms();
            row::insert(ctx, &*row)?;
            start_removal(t, ctx, &lease.id);
        }
        JOB => {
            t.jit.rows.remove(&lease.id);
        }
        REGISTERING => {
            // Its runner is gone with the lease: nothing to register any more.
            if let Some(mut row) = t.jit.rows.remove(&lease.id) {
                row.state = JOB.to_owned();
                row.next_attempt_at = None;
                row.updated_at = ctx.now_ms();
                row::insert(ctx, &row)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Starts the removal of `lease_id`'s registration (a row `removing`) unless one is in flight.
pub(super) fn start_removal(t: &mut TenantBroker, ctx: &mut Ctx<'_>, lease_id: &str) {
    let Some(client) = t.jit.client.clone() else {
        return;
    };
    let Some(registration) = t.jit.rows.get(lease_id).and_then(|r| r.registration_id) else {
        return;
    };
    if !t.jit.removing.insert(lease_id.to_owned()) {
        return;
    }
    let lease_id = lease_id.to_owned();
    let families = ctx.env().metrics.families.clone();
    ctx.spawn(async move {
        let started = std::time::Instant::now();
        let result = retry::within(CALL_TIMEOUT, client.remove(registration), |timeout| {
            Err(providers::Error::transient(format!(
                "github: the removal did not answer within {} s",
                timeout.as_secs()
            )))
        })
        .await;
        families.provider_call("github", "remove", result.is_ok(), started.elapsed());
        Completion::Deregistered { lease_id, result }
    });
}

/// A removal answered: done, or retried later with backoff.
pub fn deregistered(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    lease_id: &str,
    result: Result<Removal, providers::Error>,
) -> Result<(), Error> {
    t.jit.removing.remove(lease_id);
    let Some(mut row) = t.jit.rows.remove(lease_id) else {
        return Ok(());
    };
    let now = ctx.now_ms();
    row.updated_at = now;
    let (error, retry_after) = match result {
        Ok(Removal::Removed | Removal::Gone) => {
            tracing::info!(tenant = %t.name, lease = %lease_id, "GitHub registration removed");
            row.state = REMOVED.to_owned();
            row.next_attempt_at = None;
            row.last_error = None;
            return row::insert(ctx, &row);
        }
        Ok(Removal::Busy) => ("github: the runner is running a job".to_owned(), None),
        Err(err) => {
            let after = match &err {
                providers::Error::Transient { retry_after, .. } => *retry_after,
                _ => None,
            };
            (err.to_string(), after)
        }
    };
    row.attempts = row.attempts.saturating_add(1);
    row.last_error = Some(error);
    if row.attempts >= REMOVE_ATTEMPTS {
        tracing::warn!(tenant = %t.name, lease = %lease_id, attempts = row.attempts, error = ?row.last_error, "giving up removing a GitHub registration; reconciliation may still remove it");
        row.state = ABANDONED.to_owned();
        row.next_attempt_at = None;
        return row::insert(ctx, &row);
    }
    let delay = retry::backoff(
        REMOVE_BASE_MS,
        REMOVE_MAX_MS,
        row.attempts,
        retry_after.map(|d| d.min(Duration::from_secs(3_600))),
        retry::Jitter::None,
    );
    row.next_attempt_at = Some(now.saturating_add(delay));
    row::insert(ctx, &row)?;
    t.jit.rows.insert(lease_id.to_owned(), row);
    Ok(())
}

/// The alarm: starts the removals that are due.
pub fn run_due(t: &mut TenantBroker, ctx: &mut Ctx<'_>) {
    if !t.jit.connected() {
        return;
    }
    super::retry_registrations(t, ctx);
    let now = ctx.now_ms();
    let due: Vec<String> = t
        .jit
        .rows
        .values()
        .filter(|r| r.state == REMOVING && r.next_attempt_at.is_some_and(|at| at <= now))
        .map(|r| r.lease_id.clone())
        .collect();
    for lease_id in due {
        start_removal(t, ctx, &lease_id);
    }
}

/// Reconciliation: lists the scope's registrations ([`Completion::GithubListed`]).
pub fn start_listing(t: &mut TenantBroker, ctx: &mut Ctx<'_>) {
    let Some(client) = t.jit.client.clone() else {
        return;
    };
    let families = ctx.env().metrics.families.clone();
    ctx.spawn(async move {
        let started = std::time::Instant::now();
        let result = retry::within(CALL_TIMEOUT, client.list(), |_| {
            Err(providers::Error::transient("github: the listing timed out"))
        })
        .await;
        families.provider_call("github", "list", result.is_ok(), started.elapsed());
        Completion::GithubListed { result }
    });
}

/// The scope's registrations came back: those named exactly after an ended lease of this
/// tenant are removed (at most `max_orphan_destroys` a round); every other name is left alone.
pub async fn listed(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    result: Result<Vec<Registration>, providers::Error>,
) -> Result<(), Error> {
    let registrations = match result {
        Ok(registrations) => registrations,
        Err(err) => {
            tracing::warn!(tenant = %t.name, error = %err, "listing GitHub registrations failed");
            return Ok(());
        }
    };
    let cap = t.book.timing().max_orphan_destroys;
    let now = ctx.now_ms();
    let mut started = 0;
    for registration in registrations {
        if started >= cap {
            break;
        }
        let name = &registration.name;
        if !name.starts_with("lease_")
            || t.book.get(name).is_some()
            || t.jit.registering.contains(name)
            || t.jit.rows.get(name).is_some_and(|r| r.state == REMOVING)
        {
            continue;
        }
        let Some(lease) = super::super::lease::fetch(ctx.db()?, name)? else {
            continue; // not a lease of this tenant: not berth's to remove
        };
        if lease.ended_at.is_none() && !lease.state.is_terminal() {
            continue;
        }
        tracing::info!(tenant = %t.name, lease = %name, registration = registration.id, "removing the GitHub registration of an ended lease");
        let stored: Option<Row> = ctx
            .db()?
            .query(&format!(
                "SELECT {} FROM github_runners WHERE lease_id = ?1",
                row::select_list::<Row>()
            ))
            .bind(name)
            .fetch_optional()?;
        let mut row = stored.unwrap_or_else(|| Row::new(name, REMOVING, now));
        row.state = REMOVING.to_owned();
        row.registration_id = Some(registration.id);
        row.config = None;
        row.attempts = 0;
        row.next_attempt_at = Some(now);
        row.updated_at = now;
        row::insert(ctx, &row)?;
        t.jit.rows.insert(name.clone(), row);
        start_removal(t, ctx, name);
        started += 1;
    }
    Ok(())
}
