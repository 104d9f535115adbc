//! The transitions of a ready pool's warm runner: made ahead of demand, taken by a lease
//! request, or ended while its pool still owns it.
//!
//! ```text
//!  make                runner ready            take (a request of the pool)
//! ─────► warm (booting) ─────────────► warm (ready) ─────────────────────────► ready (the client's lease, same id)
//!          │ create fails after retries    │ warm_ttl_s passed, runner exited or lost, pool retires it
//!          ▼                               ▼
//!        releasing ──► failed           releasing ──► expired | released | failed   (warm ledger kinds)
//! ```
//!
//! Money: a warm runner reserves `price × warm_ttl_s` when made (`warm_reserve`). When it is
//! taken, its waiting time is charged (`warm_charge`, made → taken) and its reservation given
//! back (`warm_release`); the lease then reserves for its own TTL (`reserve`) as any grant
//! does, and is charged from the take on (`charge`). A warm runner that ends untaken is
//! charged made → destroyed under `warm_charge`.

use std::collections::BTreeMap;

use crate::wire::{EndReason, EventKind, LeaseState, LedgerKind};

use super::super::book::Timing;
use super::super::lease::{Lease, Op};
use super::super::money;
use super::{Counter, Effect, Transition, begin};

/// A new warm runner of its pool (`lease` carries the pool's spec, price and `ttl_s` =
/// the pool's `warm_ttl_s`): it reserves price × warm_ttl_s, its create starts, and it is
/// recycled at `expires_at` if nobody takes it.
pub fn make_warm(mut lease: Lease, now: i64, timing: &Timing) -> Transition {
    lease.state = LeaseState::Warm;
    lease.created_at = now;
    lease.granted_at = Some(now);
    lease.warm_since = Some(now);
    lease.taken_at = None;
    lease.expires_at = Some(now.saturating_add(lease.ttl_s.saturating_mul(1_000)));
    lease.reserved_micros = money::reservation(lease.hourly_price_micros, lease.ttl_s);
    let reserved = lease.reserved_micros;
    begin(&mut lease, Op::Create, timing, now);
    Transition::stored(
        lease,
        vec![
            Effect::Ledger(LedgerKind::WarmReserve, reserved),
            Effect::Create,
            Effect::Count(Counter::WarmRefill),
            Effect::CheckBudget,
        ],
    )
}

/// What a lease request brings to the warm runner it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taking {
    pub ttl_s: i64,
    pub idle_timeout_s: Option<i64>,
    pub labels: BTreeMap<String, String>,
}

/// What taking `warm` now adds to the tenant's spend: the new reservation and the warm
/// charge, less the warm reservation given back (may be negative).
pub fn take_cost(warm: &Lease, ttl_s: i64, now: i64) -> i64 {
    let since = warm.warm_since.unwrap_or(now);
    money::reservation(warm.hourly_price_micros, ttl_s)
        .saturating_add(money::charge(warm.hourly_price_micros, since, now))
        .saturating_sub(warm.reserved_micros)
}

/// A lease request takes the ready warm runner `warm` (the caller checked admission with
/// [`take_cost`]): the warm time is charged and its reservation released, and the lease —
/// same id, so the runner's labels and token stay right — is the client's: `ready` at once,
/// granted now, with the request's TTL, idle timeout and labels, reserving for its TTL.
pub fn take_warm(mut lease: Lease, taking: Taking, now: i64) -> Transition {
    let since = lease.warm_since.unwrap_or(now);
    let warm_charge = money::charge(lease.hourly_price_micros, since, now);
    let warm_reserved = lease.reserved_micros;
    lease.charged_micros = lease.charged_micros.saturating_add(warm_charge);
    lease.state = LeaseState::Ready;
    lease.taken_at = Some(now);
    lease.created_at = now;
    lease.granted_at = Some(now);
    lease.ready_at = Some(now);
    lease.ttl_s = taking.ttl_s;
    lease.idle_timeout_s = taking.idle_timeout_s;
    lease.labels = taking.labels;
    lease.expires_at = Some(now.saturating_add(taking.ttl_s.saturating_mul(1_000)));
    lease.reserved_micros = money::reservation(lease.hourly_price_micros, taking.ttl_s);
    let reserved = lease.reserved_micros;
    Transition::stored(
        lease,
        vec![
            Effect::Ledger(LedgerKind::WarmCharge, warm_charge),
            Effect::Ledger(LedgerKind::WarmRelease, warm_reserved),
            Effect::Charge(warm_charge),
            Effect::Ledger(LedgerKind::Reserve, reserved),
            Effect::Count(Counter::Grant),
            Effect::Count(Counter::WarmHit),
            Effect::Announce(EventKind::LeaseGranted),
            Effect::Announce(EventKind::LeaseReady),
            Effect::Announce(EventKind::PoolWarmTaken),
            Effect::CheckBudget,
            Effect::Refill,
        ],
    )
}

/// The provider confirmed gone the runner of a warm runner its pool still owned: charged its
/// waiting time (made → now) and its reservation given back, under the warm kinds. Its end
/// was announced (`pool.warm_recycled` or `pool.warm_failed`) when it was decided.
pub(super) fn finish_warm(mut lease: Lease, now: i64) -> Transition {
    let since = lease.warm_since.unwrap_or(now);
    let until = match (lease.end_reason, lease.runner_last_seen_at) {
        (Some(EndReason::RunnerLost), Some(seen)) => seen.clamp(since, now),
        _ => now,
    };
    let charge = money::charge(lease.hourly_price_micros, since, until);
    let effects = vec![
        Effect::Ledger(LedgerKind::WarmCharge, charge),
        Effect::Ledger(LedgerKind::WarmRelease, lease.reserved_micros),
        Effect::Charge(charge),
        Effect::CheckBudget,
    ];
    lease.charged_micros = lease.charged_micros.saturating_add(charge);
    lease.reserved_micros = 0;
    lease.runner_destroyed_at = Some(now);
    lease.op = None;
    lease.next_attempt_at = None;
    lease.state = match lease.end_reason {
        Some(EndReason::Ttl | EndReason::Idle | EndReason::SpendCap) => LeaseState::Expired,
        Some(EndReason::ProviderError | EndReason::RunnerLost) => LeaseState::Failed,
        _ => LeaseState::Released,
    };
    Transition::stored(lease, effects)
}
