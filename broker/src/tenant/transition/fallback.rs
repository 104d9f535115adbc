//! Capacity fallback: a create the provider answered "out of capacity" moves the lease to its
//! pool's next alternative (machine type, region, price) and tries again at once.

use crate::wire::{EndReason, LeaseState, LedgerKind};

use super::super::book::{Book, Timing};
use super::super::lease::{Lease, Op};
use super::super::money;
use super::{Counter, Effect, Transition, begin, end_in, record_attempt};

/// Whether a capacity error of `lease`'s create can move it to another choice: it is still
/// provisioning and its pool listed an alternative it has not tried.
pub fn can_fall_back(lease: &Lease) -> bool {
    lease.state == LeaseState::Provisioning
        && usize::try_from(lease.alternative).is_ok_and(|next| next < lease.spec.alternatives.len())
}

/// The create failed for capacity and [`can_fall_back`] holds: the attempt is recorded, the
/// lease takes its next alternative — machine type, region, and price, with its reservation
/// moved to that price (the difference reserved, or released when cheaper) — and its create
/// starts again at once. An alternative whose reservation would pass a spend cap is not
/// taken: the lease fails (`provider_error`) as it would without alternatives. `book` holds
/// the other open leases (this one is out of it while it changes).
pub fn fall_back(
    mut lease: Lease,
    error: providers::Error,
    book: &Book,
    now: i64,
    timing: &Timing,
) -> Transition {
    lease.op = None;
    record_attempt(&mut lease, Some(&error), now);
    let mut effects = vec![Effect::Count(Counter::ProviderError)];
    let Some(next) = usize::try_from(lease.alternative)
        .ok()
        .and_then(|index| lease.spec.alternatives.get(index))
        .cloned()
    else {
        lease.last_error = Some(error.to_string());
        end_in(
            &mut lease,
            &mut effects,
            EndReason::ProviderError,
            now,
            timing,
        );
        return Transition::stored(lease, effects);
    };
    let reservation = money::reservation(next.hourly_price_micros, lease.ttl_s);
    let extra = reservation.saturating_sub(lease.reserved_micros);
    if extra > 0 && !book.spend_allows(lease.reserved_micros.saturating_add(extra), now) {
        lease.last_error = Some(format!(
            "{error}; the next alternative ({}) would pass the spend cap",
            next.machine_type
        ));
        end_in(
            &mut lease,
            &mut effects,
            EndReason::ProviderError,
            now,
            timing,
        );
        return Transition::stored(lease, effects);
    }
    lease.last_error = Some(error.to_string());
    lease.alternative = lease.alternative.saturating_add(1);
    lease.spec.machine_type = next.machine_type;
    lease.spec.region = next.region;
    lease.hourly_price_micros = next.hourly_price_micros;
    if extra > 0 {
        effects.push(Effect::Ledger(LedgerKind::Reserve, extra));
    } else if extra < 0 {
        effects.push(Effect::Ledger(LedgerKind::Release, extra.saturating_neg()));
    }
    lease.reserved_micros = reservation;
    effects.push(Effect::Count(Counter::CapacityFallback));
    begin(&mut lease, Op::Create, timing, now);
    effects.push(Effect::Create);
    effects.push(Effect::CheckBudget);
    Transition::stored(lease, effects)
}
