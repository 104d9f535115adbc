//! Carrying out what a [`Transition`] decided, inside the event that decided it: the lease's
//! row, ledger rows and charges, provider calls, metrics, the lease back into the book, its
//! announcement (stored, queued for webhooks, broadcast after the commit), the budget
//! thresholds, and the queue granted into a freed slot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::objects::Error;
use crate::wire::{self, EventKind, LeaseState, LedgerKind};

use super::broker::{CHARGED_KEY, TenantBroker, Writer};
use super::event::Event;
use super::lease::Lease;
use super::row::AsRow;
use super::transition::{self, Counter, Effect, Transition};
use super::{Ctx, Metrics, budget, ledger, money, outbox, provisioning};

/// Events are kept this long (stream resumption, webhook retries).
pub const EVENT_RETENTION_MS: i64 = 7 * 24 * 3_600_000;

/// Applies `transition`: writes and starts what it says, puts the lease back into the book,
/// then announces it and runs the follow-ups (budget, queue).
pub async fn apply(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    transition: Transition,
) -> Result<(), Error> {
    let Transition {
        lease,
        effects,
        store,
    } = transition;
    apply_effects(t, ctx, lease, &effects, store).await
}

/// [`apply`] for a refused transition's lease and effects (a refusal still records them).
pub async fn apply_refused(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    lease: Lease,
    effects: &[Effect],
) -> Result<(), Error> {
    apply_effects(t, ctx, lease, effects, false).await
}

async fn apply_effects(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    lease: Lease,
    effects: &[Effect],
    store: bool,
) -> Result<(), Error> {
    let now = ctx.now_ms();
    let metrics = ctx.env().metrics.clone();
    for effect in effects {
        match *effect {
            Effect::Ledger(kind, amount) => write_ledger(ctx, now, &lease, kind, amount)?,
            Effect::Charge(amount) => {
                t.book.add_charge(now, amount);
                ctx.kv_put(CHARGED_KEY, &t.book.charged())?;
            }
            Effect::Create => provisioning::start_create(t, ctx, &lease),
            Effect::Destroy => provisioning::start_destroy(t, ctx, &lease),
            Effect::Count(counter) => {
                count(&metrics, counter);
                super::warm::count(&metrics, &t.name, &lease.pool, counter);
            }
            Effect::Announce(EventKind::PoolWarmFailed) => {
                t.book.warm_mut().failed(&lease.pool, now);
            }
            Effect::Announce(EventKind::PoolWarmReady) => {
                t.book.warm_mut().succeeded(&lease.pool);
            }
            Effect::Announce(EventKind::LeaseReady) => {
                if let (Some(granted), Some(ready)) = (lease.granted_at, lease.ready_at) {
                    let waited = std::time::Duration::from_millis(
                        u64::try_from(ready.saturating_sub(granted)).unwrap_or(0),
                    );
                    metrics.families.lease_ready(&t.name, &lease.pool, waited);
                }
            }
            Effect::Announce(_)
            | Effect::CheckBudget
            | Effect::Exhausted
            | Effect::DrainQueue
            | Effect::Refill
            | Effect::Stuck { .. } => {}
        }
    }
    if store {
        Writer::Leases.put(ctx, &AsRow(&lease))?;
    }
    super::jit::lease_changed(t, ctx, &lease)?;
    let announces = effects.iter().any(|e| matches!(e, Effect::Announce(_)));
    // A queued lease is announced with its place in the queue, so from the book; any other
    // as it leaves the transition (a lease in its final state leaves the book).
    let id = lease.id.clone();
    let pool = lease.pool.clone();
    let stuck = effects.iter().find_map(|e| match e {
        Effect::Stuck { permanent } => Some(stuck_data(&lease, *permanent)),
        _ => None,
    });
    let mut view =
        (announces && lease.state != LeaseState::Queued).then(|| lease.to_wire(&t.name, None));
    t.book.put(lease);
    if announces && view.is_none() {
        view = t.book.get(&id).map(|queued| t.lease_view(queued));
    }
    for effect in effects {
        match *effect {
            Effect::Announce(kind) => {
                if let Some(view) = &view {
                    emit(t, ctx, kind, view).await?;
                }
            }
            Effect::Exhausted => budget::announce_exhausted(t, ctx).await?,
            Effect::DrainQueue => {
                Box::pin(drain_queue(t, ctx)).await?;
                // Money a lease gave back may let a ready pool held back by a spend cap refill.
                Box::pin(super::warm::refill_all(t, ctx)).await?;
            }
            Effect::CheckBudget => budget::check(t, ctx).await?,
            Effect::Refill => Box::pin(super::warm::refill(t, ctx, &pool)).await?,
            _ => {}
        }
    }
    if let Some(stuck) = stuck {
        metrics.destroy_stuck.fetch_add(1, Ordering::Relaxed);
        tracing::error!(tenant = %t.name, lease = %stuck.lease_id, account = %stuck.account, attempts = stuck.attempts, permanent = stuck.permanent, error = %stuck.error, "a runner's destroy is stuck; the lease stays releasing until it succeeds");
        emit(t, ctx, EventKind::RunnerDestroyStuck, &stuck).await?;
    }
    Ok(())
}

/// What `runner.destroy_stuck` says about `lease`.
fn stuck_data(lease: &Lease, permanent: bool) -> wire::DestroyStuck {
    wire::DestroyStuck {
        lease_id: lease.id.clone(),
        account: lease.provider.clone(),
        runner_id: lease.runner_id.clone(),
        attempts: lease.provider_attempts,
        error: lease.last_error.clone().unwrap_or_default(),
        permanent,
    }
}

/// Grants queued leases, oldest first, while they fit (a lease blocked by its own pool's cap
/// or its reservation does not hold back later ones that fit). A lease whose wait ran out is
/// never granted; its deadline, already due, cancels it.
pub async fn drain_queue(t: &mut TenantBroker, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    if t.book.queued() == 0 {
        return Ok(());
    }
    let now = ctx.now_ms();
    for id in t.book.waiting(now) {
        if t.book.active() >= t.book.limits().max_active_leases {
            break;
        }
        let Some(lease) = t.book.get(&id) else {
            continue;
        };
        let reservation = money::reservation(lease.hourly_price_micros, lease.ttl_s);
        if t.book.admit(&lease.pool, reservation, now).is_err() {
            continue;
        }
        let lease = t.book.take(&id).expect("BUG: a waiting lease is open");
        let granted = transition::grant(lease, now, t.book.timing());
        Box::pin(apply(t, ctx, granted)).await?;
    }
    Ok(())
}

/// Stores an event, queues it for the webhooks that want it, and broadcasts it after the
/// commit.
pub async fn emit(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    kind: EventKind,
    data: &impl serde::Serialize,
) -> Result<(), Error> {
    let at = ctx.now_ms();
    let event = Event {
        seq: t.next_seq,
        kind,
        at,
        data: serde_json::value::to_raw_value(data).map_err(Error::encode)?,
    };
    Writer::Events.put(ctx, &AsRow(&event))?;
    t.upkeep.prunable(at.saturating_add(EVENT_RETENTION_MS));
    t.next_seq = t.next_seq.saturating_add(1);
    outbox::enqueue(t, ctx, &event.body())?;
    ctx.emit(event);
    Ok(())
}

/// Appends a ledger row about `lease` (zero amounts are not written).
fn write_ledger(
    ctx: &mut Ctx<'_>,
    at: i64,
    lease: &Lease,
    kind: LedgerKind,
    amount: i64,
) -> Result<(), Error> {
    if amount == 0 {
        return Ok(());
    }
    let entry = ledger::Entry {
        seq: None,
        at,
        lease_id: lease.id.clone(),
        pool: lease.pool.clone(),
        kind,
        amount_micros: amount,
    };
    Writer::Ledger.put(ctx, &AsRow(&entry))
}

/// Counts in `/metrics`.
pub fn count(metrics: &Metrics, counter: Counter) {
    let cell: &AtomicU64 = match counter {
        Counter::Grant => &metrics.grants,
        Counter::Queued => &metrics.queued,
        Counter::RejectedConcurrency => &metrics.rejected_concurrency,
        Counter::RejectedSpend => &metrics.rejected_spend,
        Counter::RejectedQueueFull => &metrics.rejected_queue_full,
        Counter::EndedReleased => &metrics.ended_released,
        Counter::EndedExpired => &metrics.ended_expired,
        Counter::EndedFailed => &metrics.ended_failed,
        Counter::EndedCanceled => &metrics.ended_canceled,
        Counter::ProviderError => &metrics.provider_errors,
        Counter::RunnerLost => &metrics.runners_lost,
        Counter::CapacityFallback => &metrics.capacity_fallbacks,
        Counter::WarmHit => &metrics.warm_hits,
        Counter::WarmMiss => &metrics.warm_misses,
        Counter::WarmRefill => &metrics.warm_refills,
    };
    cell.fetch_add(1, Ordering::Relaxed);
}
