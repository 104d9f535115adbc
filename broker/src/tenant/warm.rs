//! Ready pools (DESIGN.md §4): a pool with `min_ready > 0` keeps that many warm runners made
//! ahead of demand, and a lease request for the pool takes one — `ready` at once.
//!
//! A warm runner is a lease of state `warm` owned by its pool: made through the normal
//! provisioning path (background create, retries, the ready callback, reconciliation — its
//! runner carries its lease id like any other), reserved and charged under ledger kinds of its
//! own, not counted as active, and bounded by the operator's quota `max_warm`.
//!
//! **Taking is atomic by construction.** The tenant object is single-threaded: [`take`] runs
//! inside one request's turn, removes the warm lease from the book, and puts it back as the
//! client's `ready` lease before the turn ends; the next request can no longer find it among
//! the pool's ready warm runners. No lock, no compare-and-swap: one serial owner hands each
//! warm runner to exactly one lease.
//!
//! Warm runners still booting are not taken (a request that finds none ready goes the cold
//! path and counts a miss); queued requests are granted cold as usual.

use crate::objects::Error;
use crate::wire::{EndReason, LeaseState};

use super::book::Block;
use super::broker::TenantBroker;
use super::lease::{Lease, Spec};
use super::pool::Pool;
use super::transition::{self, Counter, Taking};
use super::{Ctx, Metrics, effects, money};

/// `warm_ttl_s` of a pool that sets none.
pub const DEFAULT_WARM_TTL_S: i64 = 3_600;

/// Takes the oldest ready warm runner of `pool` for a request, if there is one and the
/// request passes admission (the tenant's and pool's active caps, the spend caps with the warm
/// runner's charge and its new reservation). `Ok(None)`: no warm runner ready (a miss, for a
/// ready pool) — the caller goes the cold path. `Err(block)`: the request is refused as a
/// cold one would be, and the warm runner stays warm.
pub async fn take(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    pool: &str,
    taking: Taking,
) -> Result<Result<Option<String>, Block>, Error> {
    let now = ctx.now_ms();
    let Some(id) = t.book.warm().oldest_ready(pool).map(str::to_owned) else {
        if t.book.pool(pool).is_some_and(|p| p.min_ready > 0) {
            t.book.warm_mut().miss(pool);
            count(&ctx.env().metrics, &t.name, pool, Counter::WarmMiss);
            effects::count(&ctx.env().metrics, Counter::WarmMiss);
            // Demand outran the pool: it grows by one warm runner, up to its max_ready.
            Box::pin(fill(t, ctx, pool, Target::Max)).await?;
        }
        return Ok(Ok(None));
    };
    let Some(warm) = t.book.get(&id) else {
        return Err(Error::corrupt("a ready warm runner is not open"));
    };
    let cost = transition::take_cost(warm, taking.ttl_s, now);
    if let Err(block) = t.book.admit(pool, cost, now) {
        return Ok(Err(block));
    }
    let warm = t
        .book
        .take(&id)
        .ok_or_else(|| Error::corrupt("a ready warm runner is not open"))?;
    t.book.warm_mut().hit(pool);
    let took = transition::take_warm(warm, taking, now);
    effects::apply(t, ctx, took).await?;
    taken(t, ctx, &id);
    Ok(Ok(Some(id)))
}

/// Called right after a request took the warm runner of lease `lease_id` (now the client's
/// `ready` lease), in the same turn.
///
/// GitHub interplay: a warm runner is NOT registered with GitHub while it waits (a JIT
/// config is single-use and should not sit on a shelf; `jit::before_create` skips warm
/// runners). The GitHub registration hook of a taken warm runner is here: for a lease that
/// wants one (a `github` pool, or a `workflow_job`), `jit::register_taken` registers it now
/// and the runner reads its config from `GET /v1/runners/{lease_id}/github-jitconfig`.
pub(super) fn taken(t: &mut TenantBroker, ctx: &mut Ctx<'_>, lease_id: &str) {
    let registers = super::jit::register_taken(t, ctx, lease_id);
    tracing::debug!(lease = %lease_id, registers, "warm runner taken");
}

/// Tops every ready pool up to its `min_ready` (see [`refill`]).
pub async fn refill_all(t: &mut TenantBroker, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    if t.created_at.is_none() {
        return Ok(());
    }
    let pools: Vec<String> = t
        .book
        .pools()
        .filter(|p| p.min_ready > 0)
        .map(|p| p.name.clone())
        .collect();
    for pool in pools {
        refill(t, ctx, &pool).await?;
    }
    Ok(())
}

/// Starts warm runners for `pool` until it has `min_ready` (ready or booting), while the
/// tenant stays within its quota's `max_warm` and every warm runner's reservation fits the
/// spend caps. Paused for a while after warm runners of the pool failed.
pub async fn refill(t: &mut TenantBroker, ctx: &mut Ctx<'_>, pool: &str) -> Result<(), Error> {
    fill(t, ctx, pool, Target::Min).await
}

/// How many warm runners [`fill`] aims at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The pool's `min_ready` (a refill).
    Min,
    /// One more than now, up to the pool's `max_ready` (after a miss).
    Max,
}

/// Starts warm runners for `pool` up to `target` (see [`refill`]).
async fn fill(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    pool: &str,
    target: Target,
) -> Result<(), Error> {
    let now = ctx.now_ms();
    let Some(settings) = t.book.pool(pool).cloned() else {
        return Ok(());
    };
    if settings.min_ready <= 0 || t.book.warm().paused_until(pool, now).is_some() {
        return Ok(());
    }
    if t.accounts.get(&settings.provider).is_none() {
        return Ok(());
    }
    let max_ready = settings.max_ready.max(settings.min_ready);
    let target = match target {
        Target::Min => settings.min_ready,
        Target::Max => t.book.warm().in_pool(pool).saturating_add(1).min(max_ready),
    };
    while t.book.warm().in_pool(pool) < target && t.book.warm().total() < t.quota.max_warm {
        let reservation = money::reservation(settings.hourly_price_micros, settings.warm_ttl_s);
        if !t.book.spend_allows(reservation, now) {
            // Warm runners count against the spend caps like leases: none is made past one.
            break;
        }
        let lease = warm_lease(&settings, t.new_lease_id(now), now);
        let made = transition::make_warm(lease, now, t.book.timing());
        effects::apply(t, ctx, made).await?;
    }
    Ok(())
}

/// A new warm lease of `pool`, before [`transition::make_warm`].
fn warm_lease(pool: &Pool, id: String, now: i64) -> Lease {
    Lease {
        id,
        pool: pool.name.clone(),
        state: LeaseState::Warm,
        created_at: now,
        ttl_s: pool.warm_ttl_s,
        provider: pool.provider.clone(),
        spec: spec_of(pool),
        hourly_price_micros: pool.hourly_price_micros,
        ..Lease::default()
    }
}

/// The runner settings a lease of `pool` copies.
pub fn spec_of(pool: &Pool) -> Spec {
    Spec {
        machine_type: pool.machine_type.clone(),
        image: pool.image.clone(),
        region: pool.region.clone(),
        command: pool.command.clone(),
        alternatives: pool.alternatives.clone(),
    }
}

/// `pool` was created or changed: warm runners it no longer wants are retired — those made
/// with another provider account, runner settings or price, and those past its `min_ready`
/// (booting ones first, then the newest ready ones) — and it is refilled.
pub async fn pool_changed(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    pool: &str,
) -> Result<(), Error> {
    let Some(settings) = t.book.pool(pool).cloned() else {
        return Ok(());
    };
    let spec = spec_of(&settings);
    let mut stale = Vec::new();
    let mut booting = Vec::new();
    let mut ready = Vec::new();
    for lease in t.book.open() {
        if lease.pool != pool || lease.state != LeaseState::Warm {
            continue;
        }
        if lease.provider != settings.provider
            || lease.spec != spec
            || lease.hourly_price_micros != settings.hourly_price_micros
        {
            stale.push(lease.id.clone());
        } else if lease.ready_at.is_none() {
            booting.push(lease.id.clone());
        } else {
            ready.push(lease.id.clone());
        }
    }
    let keep = usize::try_from(settings.min_ready.max(0)).unwrap_or(0);
    let fresh = booting.len().saturating_add(ready.len());
    let mut surplus = fresh.saturating_sub(keep);
    // Ready ones are worth more than booting ones, and older ready ones are recycled sooner.
    let mut retire = stale;
    for id in booting.into_iter().chain(ready.into_iter().rev()) {
        if surplus == 0 {
            break;
        }
        retire.push(id);
        surplus -= 1;
    }
    let now = ctx.now_ms();
    for id in retire {
        if let Some(lease) = t.book.take(&id) {
            let ended = transition::end(lease, EndReason::WarmRetired, now, t.book.timing());
            effects::apply(t, ctx, ended).await?;
        }
    }
    refill(t, ctx, pool).await
}

/// Counts a ready pool's hit, miss or refill in the labelled family of `/metrics`.
pub fn count(metrics: &Metrics, tenant: &str, pool: &str, counter: Counter) {
    let outcome = match counter {
        Counter::WarmHit => "hit",
        Counter::WarmMiss => "miss",
        Counter::WarmRefill => "refill",
        _ => return,
    };
    metrics.families.warm(tenant, pool, outcome);
}
