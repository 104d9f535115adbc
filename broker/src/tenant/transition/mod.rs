//! The lease state machine, pure: each transition takes a lease (and what it needs to decide:
//! the book, the time, the provider's answer) and returns the lease as it leaves plus the
//! [`Effect`]s the object must carry out — ledger rows, events, provider calls, metrics. No
//! I/O, no clock, no runtime: the object (`effects.rs`) applies a [`Transition`] after it,
//! in the same event, and the tests in `tests.rs` check every transition without either.
//!
//! ```text
//!             grant                 ready                  end (release, ttl, idle, spend, runner done, runner exited)
//! queued ──────────► provisioning ──────────► ready ─────────────────────────► releasing ──► released | expired
//!   │ end (wait over)    │ created: error after retries                           │ destroyed: error → retry, still releasing
//!   ▼                    ▼                                                        │ destroyed: ok → finish
//! canceled            releasing (provider_error) ─► … ─► failed                   ▼
//! ```
//!
//! # Example
//!
//! A granted lease is `provisioning`, holds its reservation, and has its create in flight:
//!
//! ```text
//! let t = transition::grant(lease, now, &timing);
//! assert_eq!(t.lease.state, LeaseState::Provisioning);
//! assert_eq!(t.effects, [Ledger(Reserve, 1_000), Create, Count(Grant), Announce(LeaseGranted), CheckBudget]);
//! ```

use std::collections::BTreeMap;

use providers::exits::{EXIT_STATUS, ExitStatus};

use exited::exited_in;
pub use exited::runner_exited;
pub use fallback::{can_fall_back, fall_back};
pub use lost::runner_lost;
pub use warm::{Taking, make_warm, take_cost, take_warm};

use crate::wire::{EndReason, EventKind, LeaseState, LedgerKind};

use super::book::{Book, Timing, ms};
use super::lease::{Attempt, Lease, MAX_ATTEMPTS_KEPT, Op};
use super::money;
use super::rejection::Rejection;
use super::retry;

mod exited;
mod fallback;
mod lost;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
mod warm;

/// Something a transition asks of the object besides storing the lease as it leaves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Append a ledger row about the lease (zero amounts are not written).
    Ledger(LedgerKind, i64),
    /// Add a charge to the running totals of the day and month (beside its ledger row).
    Charge(i64),
    /// Announce a lease event, with the lease as it leaves the transition.
    Announce(EventKind),
    /// Start the provider's create of the lease's runner.
    Create,
    /// Start the provider's destroy of the lease's runner.
    Destroy,
    /// Count in `/metrics`.
    Count(Counter),
    /// Spend changed: announce the budget thresholds it crossed.
    CheckBudget,
    /// A spend cap refused or ended a lease: announce `budget.exhausted` (once a period).
    Exhausted,
    /// An active slot freed: grant what waits in the queue.
    DrainQueue,
    /// The runner's destroy is stuck: announce `runner.destroy_stuck` (once per lease).
    Stuck { permanent: bool },
    /// The lease's pool may want a warm runner more (one was taken or ended): refill it.
    Refill,
}

/// The counters of `/metrics` that lease transitions move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Grant,
    Queued,
    RejectedConcurrency,
    RejectedSpend,
    RejectedQueueFull,
    EndedReleased,
    EndedExpired,
    EndedFailed,
    EndedCanceled,
    ProviderError,
    RunnerLost,
    CapacityFallback,
    /// A request took a warm runner.
    WarmHit,
    /// A request of a ready pool found no warm runner ready.
    WarmMiss,
    /// A ready pool started a warm runner.
    WarmRefill,
}

/// A lease as a transition leaves it, and what the object must do about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub lease: Lease,
    pub effects: Vec<Effect>,
    /// Whether the lease row must be written (a transition that changed nothing durable
    /// writes nothing).
    pub store: bool,
}

/// A refused transition: the lease unchanged, why, and what the refusal itself records.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// Boxed: a refusal is the rare path, and the lease would make every `Result` large.
    pub lease: Box<Lease>,
    pub rejection: Rejection,
    pub effects: Vec<Effect>,
}

impl Transition {
    fn stored(lease: Lease, effects: Vec<Effect>) -> Transition {
        Transition {
            lease,
            effects,
            store: true,
        }
    }

    fn unchanged(lease: Lease) -> Transition {
        Transition {
            lease,
            effects: Vec::new(),
            store: false,
        }
    }
}

/// A new or queued lease gets its slot: it reserves price × TTL, its create starts, it is
/// announced, and spend is checked against the budget thresholds.
pub fn grant(mut lease: Lease, now: i64, timing: &Timing) -> Transition {
    lease.state = LeaseState::Provisioning;
    lease.granted_at = Some(now);
    lease.expires_at = Some(now.saturating_add(lease.ttl_s.saturating_mul(1_000)));
    lease.wait_until = None;
    lease.reserved_micros = money::reservation(lease.hourly_price_micros, lease.ttl_s);
    let reserved = lease.reserved_micros;
    begin(&mut lease, Op::Create, timing, now);
    Transition::stored(
        lease,
        vec![
            Effect::Ledger(LedgerKind::Reserve, reserved),
            Effect::Create,
            Effect::Count(Counter::Grant),
            Effect::Announce(EventKind::LeaseGranted),
            Effect::CheckBudget,
        ],
    )
}

/// A request that cannot be granted now waits in the queue until `wait_until`.
pub fn queue(mut lease: Lease, wait_until: i64) -> Transition {
    lease.state = LeaseState::Queued;
    lease.wait_until = Some(wait_until);
    Transition::stored(
        lease,
        vec![
            Effect::Count(Counter::Queued),
            Effect::Announce(EventKind::LeaseQueued),
        ],
    )
}

/// The runner says it is ready (through its callback); a ready runner may update its address
/// and metadata. Refused once the lease ended or before it was granted.
pub fn runner_ready(
    mut lease: Lease,
    now: i64,
    address: Option<String>,
    metadata: BTreeMap<String, String>,
) -> Result<Transition, Refusal> {
    if !matches!(
        lease.state,
        LeaseState::Provisioning | LeaseState::Ready | LeaseState::Warm
    ) {
        let rejection =
            Rejection::LeaseEnded(format!("lease {} is not waiting for its runner", lease.id));
        return Err(Refusal {
            lease: Box::new(lease),
            rejection,
            effects: Vec::new(),
        });
    }
    if address.is_some() {
        lease.runner_address = address;
    }
    lease.runner_metadata.extend(metadata);
    let mut effects = Vec::new();
    if lease.state == LeaseState::Provisioning {
        lease.state = LeaseState::Ready;
        lease.ready_at = Some(now);
        effects.push(Effect::Announce(EventKind::LeaseReady));
    } else if lease.state == LeaseState::Warm && lease.ready_at.is_none() {
        lease.ready_at = Some(now);
        effects.push(Effect::Announce(EventKind::PoolWarmReady));
    }
    Ok(Transition::stored(lease, effects))
}

/// A heartbeat: the lease is alive now, and its TTL grows by `extend_ttl_s` if the tenant's
/// `max_ttl_s` and spend caps allow it. `book` holds the other open leases (this one is out of
/// it while it changes). A queued lease is answered as it is.
pub fn heartbeat(
    mut lease: Lease,
    book: &Book,
    now: i64,
    extend_ttl_s: Option<i64>,
) -> Result<Transition, Refusal> {
    let refuse = |lease: Lease, rejection: Rejection, effects: Vec<Effect>| {
        Err(Refusal {
            lease: Box::new(lease),
            rejection,
            effects,
        })
    };
    match lease.state {
        LeaseState::Queued => return Ok(Transition::unchanged(lease)),
        LeaseState::Provisioning | LeaseState::Ready => {}
        LeaseState::Warm => {
            let rejection = Rejection::Invalid(format!(
                "lease {} is a warm runner of pool `{}`: request a lease of the pool to take it",
                lease.id, lease.pool
            ));
            return refuse(lease, rejection, Vec::new());
        }
        _ => {
            let rejection = Rejection::LeaseEnded(format!("lease {} has ended", lease.id));
            return refuse(lease, rejection, Vec::new());
        }
    }
    let mut effects = Vec::new();
    if let Some(extend) = extend_ttl_s {
        if extend < 1 {
            let rejection = Rejection::Invalid("`extend_ttl_s` must be at least 1".into());
            return refuse(lease, rejection, Vec::new());
        }
        let new_ttl = lease.ttl_s.saturating_add(extend);
        let max = book.limits().max_ttl_s;
        if new_ttl > max {
            let rejection = Rejection::Invalid(format!(
                "extending by {extend} s would make the TTL {new_ttl} s, past max_ttl_s {max} (now {} s)",
                lease.ttl_s
            ));
            return refuse(lease, rejection, Vec::new());
        }
        let extra = money::reservation(lease.hourly_price_micros, new_ttl)
            .saturating_sub(money::reservation(lease.hourly_price_micros, lease.ttl_s));
        // The lease is out of the book while it changes, so its own reservation is not in the
        // book's sum: count it here with the extra.
        if !book.spend_allows(lease.reserved_micros.saturating_add(extra), now) {
            let rejection = Rejection::SpendCap(format!(
                "extending by {extend} s needs {extra} more micros, past the spend cap"
            ));
            return refuse(
                lease,
                rejection,
                vec![Effect::Exhausted, Effect::Count(Counter::RejectedSpend)],
            );
        }
        effects.push(Effect::Ledger(LedgerKind::Reserve, extra));
        lease.reserved_micros = lease.reserved_micros.saturating_add(extra);
        lease.ttl_s = new_ttl;
        lease.expires_at = lease
            .expires_at
            .map(|at| at.saturating_add(extend.saturating_mul(1_000)));
        effects.push(Effect::CheckBudget);
    }
    lease.last_heartbeat_at = Some(now);
    Ok(Transition::stored(lease, effects))
}

/// The lease ends for `reason`: a queued one is canceled at once; a granted one moves to
/// `releasing` (still counting against the cap) and its runner's destroy starts — after its
/// create returns, if one is in flight. An ending or ended lease stays as it is.
pub fn end(mut lease: Lease, reason: EndReason, now: i64, timing: &Timing) -> Transition {
    let mut effects = Vec::new();
    let store = end_in(&mut lease, &mut effects, reason, now, timing);
    Transition {
        lease,
        effects,
        store,
    }
}

/// The provider confirmed the runner gone: the lease reaches its final state, is charged its
/// runner's lifetime (granted → now) and gives back its reservation, and the freed slot goes
/// to the queue.
pub fn finish(mut lease: Lease, now: i64) -> Transition {
    if lease.pool_owned() {
        return warm::finish_warm(lease, now);
    }
    let granted_at = lease.granted_at.unwrap_or(now);
    // A lost runner is charged up to when a listing last showed it.
    let until = match (lease.end_reason, lease.runner_last_seen_at) {
        (Some(EndReason::RunnerLost), Some(seen)) => seen.clamp(granted_at, now),
        _ => now,
    };
    let charge = money::charge(lease.hourly_price_micros, granted_at, until);
    let mut effects = vec![
        Effect::Ledger(LedgerKind::Charge, charge),
        Effect::Ledger(LedgerKind::Release, lease.reserved_micros),
        Effect::Charge(charge),
    ];
    lease.charged_micros = lease.charged_micros.saturating_add(charge);
    lease.reserved_micros = 0;
    lease.runner_destroyed_at = Some(now);
    lease.op = None;
    lease.next_attempt_at = None;
    let (state, counter, kind) = match lease.end_reason {
        Some(EndReason::Ttl | EndReason::Idle | EndReason::SpendCap) => (
            LeaseState::Expired,
            Counter::EndedExpired,
            EventKind::LeaseExpired,
        ),
        Some(EndReason::ProviderError | EndReason::RunnerLost) => (
            LeaseState::Failed,
            Counter::EndedFailed,
            EventKind::LeaseFailed,
        ),
        _ => (
            LeaseState::Released,
            Counter::EndedReleased,
            EventKind::LeaseReleased,
        ),
    };
    lease.state = state;
    effects.extend([
        Effect::Count(counter),
        Effect::Announce(kind),
        Effect::DrainQueue,
        Effect::CheckBudget,
    ]);
    Transition::stored(lease, effects)
}

/// A deadline of the lease came (see [`Book::due`]): a provider call that never reported
/// back is given up on, then the first thing due happens — the queue wait ends, the TTL or
/// idle timeout ends the lease, the ready timeout fails it, or a provider call is retried.
pub fn deadline(mut lease: Lease, now: i64, timing: &Timing) -> Transition {
    let mut effects = Vec::new();
    if let Some((op, at)) = lease.op
        && at <= now
    {
        // The call's completion was lost: try again.
        tracing::warn!(lease = %lease.id, ?op, "provider call did not report back in time; retrying");
        lease.op = None;
        lease.last_error = Some("provider call did not report back in time".into());
        lease.next_attempt_at = Some(now);
    }
    let store = match lease.state {
        LeaseState::Queued if lease.wait_until.is_some_and(|at| at <= now) => end_in(
            &mut lease,
            &mut effects,
            EndReason::QueueTimeout,
            now,
            timing,
        ),
        LeaseState::Provisioning | LeaseState::Ready => {
            let ready_deadline = lease
                .granted_at
                .map(|at| at.saturating_add(ms(timing.ready_timeout)));
            if lease.expires_at.is_some_and(|at| at <= now) {
                end_in(&mut lease, &mut effects, EndReason::Ttl, now, timing)
            } else if lease.idle_at().is_some_and(|at| at <= now) {
                end_in(&mut lease, &mut effects, EndReason::Idle, now, timing)
            } else if lease.state == LeaseState::Provisioning
                && ready_deadline.is_some_and(|at| at <= now)
            {
                lease.last_error = Some(format!(
                    "the runner did not report ready within {} s",
                    timing.ready_timeout.as_secs()
                ));
                end_in(
                    &mut lease,
                    &mut effects,
                    EndReason::ProviderError,
                    now,
                    timing,
                )
            } else {
                retry_due(&mut lease, &mut effects, now, timing, CreateDue::Scheduled)
            }
        }
        LeaseState::Warm => {
            let ready_deadline = lease
                .granted_at
                .map(|at| at.saturating_add(ms(timing.ready_timeout)));
            if lease.expires_at.is_some_and(|at| at <= now) {
                // Older than the pool's warm_ttl_s: recycled.
                end_in(&mut lease, &mut effects, EndReason::Ttl, now, timing)
            } else if lease.ready_at.is_none() && ready_deadline.is_some_and(|at| at <= now) {
                lease.last_error = Some(format!(
                    "the warm runner did not report ready within {} s",
                    timing.ready_timeout.as_secs()
                ));
                end_in(
                    &mut lease,
                    &mut effects,
                    EndReason::ProviderError,
                    now,
                    timing,
                )
            } else {
                retry_due(&mut lease, &mut effects, now, timing, CreateDue::Scheduled)
            }
        }
        LeaseState::Releasing => {
            retry_due(&mut lease, &mut effects, now, timing, CreateDue::Scheduled)
        }
        _ => false,
    };
    Transition {
        lease,
        effects,
        store,
    }
}

/// The object just opened: nothing is in flight, so the provider call the stored state
/// calls for (a create not yet answered, a destroy not yet confirmed) starts again. Creates
/// and destroys are idempotent, so repeating one that had completed is safe.
pub fn resume(mut lease: Lease, now: i64, timing: &Timing) -> Transition {
    let mut effects = Vec::new();
    let store = retry_due(&mut lease, &mut effects, now, timing, CreateDue::Always);
    Transition {
        lease,
        effects,
        store,
    }
}

/// The provider's create answered.
pub fn created(
    mut lease: Lease,
    result: Result<providers::Runner, providers::Error>,
    now: i64,
    timing: &Timing,
) -> Transition {
    lease.op = None;
    let mut effects = Vec::new();
    record_attempt(&mut lease, result.as_ref().err(), now);
    match result {
        Ok(runner) => {
            // An exit reported while the create ran stays noted beside what the create says.
            let exited = lease.runner_metadata.remove(EXIT_STATUS);
            lease.runner_id = Some(runner.id);
            lease.runner_address = runner.address;
            lease.runner_metadata = runner.metadata;
            if let Some(exited) = exited {
                lease
                    .runner_metadata
                    .insert("status".to_owned(), "exited".to_owned());
                lease.runner_metadata.insert(EXIT_STATUS.to_owned(), exited);
            }
            let found_gone = lease.runner_metadata.get(EXIT_STATUS).cloned();
            match lease.state {
                LeaseState::Warm => {
                    lease.last_error = None;
                    if let Some(status) = found_gone {
                        exited_in(
                            &mut lease,
                            &mut effects,
                            ExitStatus::parse(&status),
                            None,
                            now,
                            timing,
                        );
                    } else if runner.ready && lease.ready_at.is_none() {
                        lease.ready_at = Some(now);
                        effects.push(Effect::Announce(EventKind::PoolWarmReady));
                    }
                }
                LeaseState::Provisioning => {
                    // A lease that ended meanwhile keeps the error that ended it.
                    lease.last_error = None;
                    if let Some(status) = found_gone {
                        // The create found the runner it had made before a restart, gone:
                        // nobody will report that exit.
                        exited_in(
                            &mut lease,
                            &mut effects,
                            ExitStatus::parse(&status),
                            None,
                            now,
                            timing,
                        );
                    } else if runner.ready {
                        lease.state = LeaseState::Ready;
                        lease.ready_at = Some(now);
                        effects.push(Effect::Announce(EventKind::LeaseReady));
                    }
                }
                // Ended while the create ran: destroy what it made.
                LeaseState::Releasing => {
                    begin(&mut lease, Op::Destroy, timing, now);
                    effects.push(Effect::Destroy);
                }
                _ => {}
            }
        }
        Err(err) => {
            effects.push(Effect::Count(Counter::ProviderError));
            lease.last_error = Some(err.to_string());
            let hopeless = !err.is_retryable() && !matches!(err, providers::Error::Capacity(_));
            if lease.state == LeaseState::Releasing {
                // Ended while the create ran: make sure nothing it may have made lives.
                begin(&mut lease, Op::Destroy, timing, now);
                effects.push(Effect::Destroy);
            } else if hopeless || lease.provider_attempts >= timing.create_attempts {
                end_in(
                    &mut lease,
                    &mut effects,
                    EndReason::ProviderError,
                    now,
                    timing,
                );
            } else {
                lease.next_attempt_at =
                    Some(now.saturating_add(retry_delay(&err, lease.provider_attempts, timing)));
            }
        }
    }
    Transition::stored(lease, effects)
}

/// The provider's destroy answered: gone is the end of the lease; a failure keeps it
/// `releasing` (still counting against the cap) and retries with backoff.
pub fn destroyed(
    mut lease: Lease,
    result: Result<(), providers::Error>,
    now: i64,
    timing: &Timing,
) -> Transition {
    lease.op = None;
    match result {
        Ok(()) if lease.state == LeaseState::Releasing => finish(lease, now),
        Ok(()) => Transition::stored(lease, Vec::new()),
        Err(err) => {
            lease.last_error = Some(err.to_string());
            let permanent = matches!(err, providers::Error::Permanent(_));
            let mut delay = retry_delay(&err, lease.provider_attempts, timing);
            if permanent {
                // Refused for good (`protected`, `unauthorized`): stop hammering the provider.
                // The destroy is retried rarely, and at once when the account is changed.
                delay = delay.max(PERMANENT_DESTROY_RETRY_MS);
            }
            lease.next_attempt_at = Some(now.saturating_add(delay));
            let mut effects = vec![Effect::Count(Counter::ProviderError)];
            if lease.stuck_at.is_none()
                && (permanent || destroy_attempts(&lease) >= timing.stuck_after)
            {
                lease.stuck_at = Some(now);
                effects.push(Effect::Stuck { permanent });
            }
            Transition::stored(lease, effects)
        }
    }
}

/// How long a destroy the provider refused for good waits before it is tried again (unless
/// the account changes first): an hour.
pub const PERMANENT_DESTROY_RETRY_MS: i64 = 3_600_000;

/// Destroy calls made for the lease so far: its provider calls less its creates.
fn destroy_attempts(lease: &Lease) -> i64 {
    let creates = i64::try_from(lease.provisioning_attempts.len()).unwrap_or(i64::MAX);
    lease.provider_attempts.saturating_sub(creates)
}

/// Notes a create's answer on the lease (oldest dropped past [`MAX_ATTEMPTS_KEPT`]).
fn record_attempt(lease: &mut Lease, error: Option<&providers::Error>, now: i64) {
    let error_class = error.map(|err| {
        match err {
            providers::Error::Transient { .. } => "transient",
            providers::Error::Permanent(_) => "permanent",
            providers::Error::Capacity(_) => "capacity",
        }
        .to_owned()
    });
    lease.provisioning_attempts.push(Attempt {
        machine_type: lease.spec.machine_type.clone(),
        region: lease.spec.region.clone(),
        error_class,
        message: error.map(ToString::to_string),
        at: now,
    });
    let excess = lease
        .provisioning_attempts
        .len()
        .saturating_sub(MAX_ATTEMPTS_KEPT);
    lease.provisioning_attempts.drain(..excess);
}

/// Marks a provider call in flight: one more attempt, and a safety-net deadline a little
/// after the call's own timeout, for a completion that never arrives.
pub fn begin(lease: &mut Lease, op: Op, timing: &Timing, now: i64) {
    let timeout = match op {
        Op::Create => timing.create_timeout,
        Op::Destroy => timing.destroy_timeout,
    };
    lease.provider_attempts = lease.provider_attempts.saturating_add(1);
    lease.op = Some((op, now.saturating_add(ms(timeout)).saturating_add(5_000)));
    lease.next_attempt_at = None;
}

/// Ends `lease` in place (see [`end`]); whether it changed.
fn end_in(
    lease: &mut Lease,
    effects: &mut Vec<Effect>,
    reason: EndReason,
    now: i64,
    timing: &Timing,
) -> bool {
    match lease.state {
        LeaseState::Queued => {
            lease.state = LeaseState::Canceled;
            lease.end_reason = Some(if reason == EndReason::Released {
                EndReason::Canceled
            } else {
                reason
            });
            lease.ended_at = Some(now);
            lease.wait_until = None;
            effects.push(Effect::Count(Counter::EndedCanceled));
            effects.push(Effect::Announce(EventKind::LeaseCanceled));
            true
        }
        LeaseState::Provisioning | LeaseState::Ready | LeaseState::Warm => {
            let warm = lease.state == LeaseState::Warm;
            lease.state = LeaseState::Releasing;
            lease.end_reason = Some(reason);
            lease.ended_at = Some(now);
            lease.next_attempt_at = None;
            if lease.op.is_none() {
                begin(lease, Op::Destroy, timing, now);
                effects.push(Effect::Destroy);
            }
            if warm {
                // The pool's warm runner ends (recycled, retired or failed); the pool is
                // refilled to its min_ready.
                effects.push(Effect::Announce(if reason == EndReason::ProviderError {
                    EventKind::PoolWarmFailed
                } else {
                    EventKind::PoolWarmRecycled
                }));
                effects.push(Effect::Refill);
            }
            true
        }
        _ => false,
    }
}

/// When a create is due again for a provisioning lease without a runner.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CreateDue {
    /// Only when a retry was scheduled and its time came (the deadline path: without one, the
    /// create is in flight or the runner will call back).
    Scheduled,
    /// Also when none was scheduled (the object just opened: whatever was in flight is lost).
    Always,
}

/// Starts the provider call a lease waits for, when its retry is due and none is in flight:
/// a create for a provisioning lease without a runner, a destroy for a releasing one.
fn retry_due(
    lease: &mut Lease,
    effects: &mut Vec<Effect>,
    now: i64,
    timing: &Timing,
    create: CreateDue,
) -> bool {
    if lease.op.is_some() || lease.next_attempt_at.is_some_and(|at| at > now) {
        return false;
    }
    match lease.state {
        LeaseState::Provisioning | LeaseState::Warm if lease.runner_id.is_none() => {
            if create == CreateDue::Scheduled && lease.next_attempt_at.is_none() {
                return false;
            }
            begin(lease, Op::Create, timing, now);
            effects.push(Effect::Create);
            true
        }
        LeaseState::Releasing => {
            begin(lease, Op::Destroy, timing, now);
            effects.push(Effect::Destroy);
            true
        }
        _ => false,
    }
}

/// How long to wait before retrying a failed provider call: exponential backoff from the
/// configured base, at least what the provider asked for.
fn retry_delay(err: &providers::Error, attempts: i64, timing: &Timing) -> i64 {
    let retry_after = match err {
        providers::Error::Transient { retry_after, .. } => *retry_after,
        _ => None,
    };
    retry::backoff(
        ms(timing.retry_base),
        ms(timing.retry_max),
        attempts,
        retry_after,
        retry::Jitter::None,
    )
}
