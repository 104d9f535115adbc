//! A runner vanished at the provider under a live lease: the transition that ends the lease.

use crate::objects::clock::rfc3339;
use crate::wire::{EndReason, LeaseState};

use super::super::book::Timing;
use super::super::lease::Lease;
use super::{Counter, Effect, Transition, end_in};

/// Reconciliation found the runner of a provisioning or ready lease gone (two listings in a
/// row did not show it): the lease ends `runner_lost` — `releasing`, a destroy (which finds
/// nothing and succeeds), then `failed` — charged up to `last_seen_at`, when a listing last
/// showed the runner. A lease already ending stays as it is.
pub fn runner_lost(mut lease: Lease, last_seen_at: i64, now: i64, timing: &Timing) -> Transition {
    if !matches!(
        lease.state,
        LeaseState::Provisioning | LeaseState::Ready | LeaseState::Warm
    ) {
        return Transition::unchanged(lease);
    }
    let mut effects = vec![Effect::Count(Counter::RunnerLost)];
    lease.runner_last_seen_at = Some(last_seen_at);
    lease.last_error = Some(format!(
        "the runner vanished at the provider (deleted outside berth, or lost with its host): \
         two listings in a row did not show it; last seen {}",
        rfc3339(last_seen_at)
    ));
    lease
        .runner_metadata
        .insert("status".to_owned(), "lost".to_owned());
    end_in(&mut lease, &mut effects, EndReason::RunnerLost, now, timing);
    Transition::stored(lease, effects)
}
