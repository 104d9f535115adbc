//! Unit tests of every lease transition: no SQLite, no runtime, no clock — a lease, a book and
//! a time in, the lease and its effects out. `simulation.rs` drives random sequences of them.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::tenant::book::Charged;
use crate::wire::Limits;

pub(super) const NOW: i64 = 1_800_000_000_000;
/// 3.6 micros per second: a TTL of 600 s reserves 2,160 micros.
pub(super) const PRICE: i64 = 12_960;

pub(super) fn timing() -> Timing {
    Timing {
        create_timeout: Duration::from_secs(60),
        create_attempts: 3,
        destroy_timeout: Duration::from_secs(60),
        retry_base: Duration::from_secs(2),
        retry_max: Duration::from_secs(300),
        ready_timeout: Duration::from_secs(600),
        reconcile_interval: Duration::from_secs(300),
        ..Timing::default()
    }
}

pub(super) fn book(limits: Limits) -> Book {
    Book::new(limits, timing(), Charged::default())
}

/// A new lease as a request makes it: queued, not yet granted.
pub(super) fn requested(id: &str) -> Lease {
    Lease {
        id: id.into(),
        pool: "p".into(),
        state: LeaseState::Queued,
        created_at: NOW,
        ttl_s: 600,
        provider: "cloud".into(),
        hourly_price_micros: PRICE,
        ..Lease::default()
    }
}

/// A granted lease whose create answered with a ready runner.
pub(super) fn ready_lease(id: &str) -> Lease {
    let granted = grant(requested(id), NOW, &timing()).lease;
    created(granted, Ok(runner(id, true)), NOW + 1_000, &timing()).lease
}

pub(super) fn runner(id: &str, ready: bool) -> providers::Runner {
    providers::Runner {
        id: format!("srv-{id}"),
        tenant: "acme".into(),
        lease_id: id.into(),
        address: Some("10.0.0.1".into()),
        metadata: BTreeMap::new(),
        ready,
    }
}

/// Granting reserves price × TTL, starts the create, announces and checks the budget.
#[test]
fn grant_reserves_and_starts_the_create() {
    let t = grant(requested("a"), NOW, &timing());
    assert_eq!(t.lease.state, LeaseState::Provisioning);
    assert_eq!(t.lease.granted_at, Some(NOW));
    assert_eq!(t.lease.expires_at, Some(NOW + 600_000));
    assert_eq!(t.lease.reserved_micros, 2_160);
    assert_eq!(t.lease.provider_attempts, 1);
    assert!(matches!(t.lease.op, Some((Op::Create, _))));
    assert_eq!(
        t.effects,
        [
            Effect::Ledger(LedgerKind::Reserve, 2_160),
            Effect::Create,
            Effect::Count(Counter::Grant),
            Effect::Announce(EventKind::LeaseGranted),
            Effect::CheckBudget,
        ]
    );
    assert!(t.store);
}

/// Queueing sets the end of the wait and announces it.
#[test]
fn queue_waits_until_its_deadline() {
    let t = queue(requested("q"), NOW + 30_000);
    assert_eq!(t.lease.state, LeaseState::Queued);
    assert_eq!(t.lease.wait_until, Some(NOW + 30_000));
    assert_eq!(
        t.effects,
        [
            Effect::Count(Counter::Queued),
            Effect::Announce(EventKind::LeaseQueued)
        ]
    );
}

/// A create that answers with a ready runner makes the lease ready; one that needs the
/// runner's callback leaves it provisioning until the callback, which is refused once ended.
#[test]
fn ready_from_the_provider_or_the_callback() {
    let granted = grant(requested("a"), NOW, &timing()).lease;
    let t = created(granted.clone(), Ok(runner("a", true)), NOW + 500, &timing());
    assert_eq!(t.lease.state, LeaseState::Ready);
    assert_eq!(t.lease.ready_at, Some(NOW + 500));
    assert_eq!(t.lease.op, None);
    assert_eq!(t.effects, [Effect::Announce(EventKind::LeaseReady)]);

    let waiting = created(granted, Ok(runner("a", false)), NOW + 500, &timing());
    assert_eq!(waiting.lease.state, LeaseState::Provisioning);
    assert_eq!(waiting.lease.runner_id.as_deref(), Some("srv-a"));
    assert!(waiting.effects.is_empty());
    let metadata = BTreeMap::from([("gpu".to_owned(), "a100".to_owned())]);
    let t =
        runner_ready(waiting.lease, NOW + 900, Some("10.0.0.9".into()), metadata).expect("ready");
    assert_eq!(t.lease.state, LeaseState::Ready);
    assert_eq!(t.lease.runner_address.as_deref(), Some("10.0.0.9"));
    assert_eq!(t.lease.runner_metadata["gpu"], "a100");
    assert_eq!(t.effects, [Effect::Announce(EventKind::LeaseReady)]);

    let ended = end(t.lease, EndReason::Released, NOW + 1_000, &timing()).lease;
    let refused = runner_ready(ended, NOW + 1_100, None, BTreeMap::new()).expect_err("not waiting");
    assert!(matches!(refused.rejection, Rejection::LeaseEnded(_)));
    assert_eq!(refused.lease.state, LeaseState::Releasing);
}

/// A heartbeat without an extension only records the time; with one it reserves the extra
/// TTL's price and moves the expiry.
#[test]
fn heartbeat_with_and_without_extension() {
    let book = book(Limits::default());
    let lease = ready_lease("a");
    let t = heartbeat(lease.clone(), &book, NOW + 5_000, None).expect("alive");
    assert_eq!(t.lease.last_heartbeat_at, Some(NOW + 5_000));
    assert_eq!(t.lease.ttl_s, 600);
    assert!(t.effects.is_empty());

    let t = heartbeat(lease, &book, NOW + 5_000, Some(300)).expect("extended");
    assert_eq!(t.lease.ttl_s, 900);
    assert_eq!(t.lease.expires_at, Some(NOW + 900_000));
    assert_eq!(t.lease.reserved_micros, 3_240);
    assert_eq!(
        t.effects,
        [
            Effect::Ledger(LedgerKind::Reserve, 1_080),
            Effect::CheckBudget
        ]
    );
}

/// An extension past `max_ttl_s`, below one second, or past the spend cap is refused and
/// changes nothing (the spend refusal announces exhaustion); a queued lease is answered as it
/// is; an ended one is refused.
#[test]
fn heartbeat_refusals() {
    let capped = book(Limits {
        max_ttl_s: 900,
        spend_cap_daily_micros: Some(3_000),
        ..Limits::default()
    });
    let lease = ready_lease("a");
    for (extend, expected) in [(301, "past max_ttl_s"), (0, "at least 1")] {
        let refused = heartbeat(lease.clone(), &capped, NOW, Some(extend)).expect_err("refused");
        assert!(
            matches!(&refused.rejection, Rejection::Invalid(why) if why.contains(expected)),
            "{:?}",
            refused.rejection
        );
        assert_eq!(*refused.lease, lease);
        assert!(refused.effects.is_empty());
    }
    let refused = heartbeat(lease.clone(), &capped, NOW, Some(300)).expect_err("spend");
    assert!(matches!(refused.rejection, Rejection::SpendCap(_)));
    assert_eq!(
        refused.effects,
        [Effect::Exhausted, Effect::Count(Counter::RejectedSpend)]
    );
    assert_eq!(*refused.lease, lease);

    let queued = queue(requested("q"), NOW + 30_000).lease;
    let t = heartbeat(queued.clone(), &capped, NOW, Some(60)).expect("answered");
    assert_eq!(t.lease, queued);
    assert!(!t.store);

    let ended = end(lease, EndReason::Released, NOW, &timing()).lease;
    let refused = heartbeat(ended, &capped, NOW, None).expect_err("ended");
    assert!(matches!(refused.rejection, Rejection::LeaseEnded(_)));
}

/// Releasing a running lease moves it to releasing and starts its destroy; the confirmed
/// destroy charges the runner's lifetime, gives back the reservation, frees the slot.
#[test]
fn release_then_finish() {
    let lease = ready_lease("a");
    let t = end(lease, EndReason::Released, NOW + 60_000, &timing());
    assert_eq!(t.lease.state, LeaseState::Releasing);
    assert_eq!(t.lease.end_reason, Some(EndReason::Released));
    assert_eq!(t.lease.ended_at, Some(NOW + 60_000));
    assert!(matches!(t.lease.op, Some((Op::Destroy, _))));
    assert_eq!(t.effects, [Effect::Destroy]);

    let t = destroyed(t.lease, Ok(()), NOW + 61_200, &timing());
    assert_eq!(t.lease.state, LeaseState::Released);
    assert_eq!(t.lease.runner_destroyed_at, Some(NOW + 61_200));
    // 61.2 s rounds up to 62 s: 62 × 3.6 = 223.2, rounded up to 224.
    assert_eq!(t.lease.charged_micros, 224);
    assert_eq!(t.lease.reserved_micros, 0);
    assert_eq!(
        t.effects,
        [
            Effect::Ledger(LedgerKind::Charge, 224),
            Effect::Ledger(LedgerKind::Release, 2_160),
            Effect::Charge(224),
            Effect::Count(Counter::EndedReleased),
            Effect::Announce(EventKind::LeaseReleased),
            Effect::DrainQueue,
            Effect::CheckBudget,
        ]
    );
    // Releasing again changes nothing.
    let again = end(t.lease, EndReason::Released, NOW + 70_000, &timing());
    assert!(!again.store);
    assert!(again.effects.is_empty());
}

/// Releasing a queued lease cancels it at once: no runner, no money.
#[test]
fn release_of_a_queued_lease_cancels_it() {
    let queued = queue(requested("q"), NOW + 30_000).lease;
    let t = end(queued, EndReason::Released, NOW + 1_000, &timing());
    assert_eq!(t.lease.state, LeaseState::Canceled);
    assert_eq!(t.lease.end_reason, Some(EndReason::Canceled));
    assert_eq!(t.lease.wait_until, None);
    assert_eq!(
        t.effects,
        [
            Effect::Count(Counter::EndedCanceled),
            Effect::Announce(EventKind::LeaseCanceled)
        ]
    );
}

/// The TTL ends a lease at its expiry (never before), and it finishes as expired.
#[test]
fn ttl_expiry() {
    let lease = ready_lease("a");
    let early = deadline(lease.clone(), NOW + 599_999, &timing());
    assert_eq!(early.lease.state, LeaseState::Ready);
    assert!(early.effects.is_empty());
    let t = deadline(lease, NOW + 600_000, &timing());
    assert_eq!(t.lease.state, LeaseState::Releasing);
    assert_eq!(t.lease.end_reason, Some(EndReason::Ttl));
    assert_eq!(t.effects, [Effect::Destroy]);
    let done = destroyed(t.lease, Ok(()), NOW + 600_500, &timing());
    assert_eq!(done.lease.state, LeaseState::Expired);
    assert!(
        done.effects
            .contains(&Effect::Announce(EventKind::LeaseExpired))
    );
}

/// The idle timeout counts from the last heartbeat.
#[test]
fn idle_expiry() {
    let mut lease = ready_lease("a");
    lease.idle_timeout_s = Some(30);
    let beat = heartbeat(lease, &book(Limits::default()), NOW + 20_000, None)
        .expect("alive")
        .lease;
    assert_eq!(beat.idle_at(), Some(NOW + 50_000));
    assert_eq!(
        deadline(beat.clone(), NOW + 49_999, &timing()).lease.state,
        LeaseState::Ready
    );
    let t = deadline(beat, NOW + 50_000, &timing());
    assert_eq!(t.lease.end_reason, Some(EndReason::Idle));
    assert_eq!(t.lease.state, LeaseState::Releasing);
}

/// A spend cap ends the lease as `spend_cap`; it finishes as expired.
#[test]
fn spend_expiry() {
    let t = end(
        ready_lease("a"),
        EndReason::SpendCap,
        NOW + 10_000,
        &timing(),
    );
    assert_eq!(t.lease.end_reason, Some(EndReason::SpendCap));
    let done = finish(t.lease, NOW + 11_000);
    assert_eq!(done.lease.state, LeaseState::Expired);
    assert!(done.effects.contains(&Effect::Count(Counter::EndedExpired)));
}

/// A permanent create error fails the lease through a destroy (anything made must go); a
/// transient one is retried with backoff until the attempts run out; a create that answers
/// after the lease ended starts the destroy.
#[test]
fn provider_failures() {
    let granted = grant(requested("a"), NOW, &timing()).lease;
    let t = created(
        granted.clone(),
        Err(providers::Error::Permanent("bad image".into())),
        NOW + 1_000,
        &timing(),
    );
    assert_eq!(t.lease.state, LeaseState::Releasing);
    assert_eq!(t.lease.end_reason, Some(EndReason::ProviderError));
    assert_eq!(
        t.lease.last_error.as_deref(),
        Some("provider error: bad image")
    );
    assert_eq!(
        t.effects,
        [Effect::Count(Counter::ProviderError), Effect::Destroy]
    );
    let failed = destroyed(t.lease, Ok(()), NOW + 2_000, &timing());
    assert_eq!(failed.lease.state, LeaseState::Failed);

    let t = created(
        granted,
        Err(providers::Error::transient("503")),
        NOW + 1_000,
        &timing(),
    );
    assert_eq!(t.lease.state, LeaseState::Provisioning);
    assert_eq!(t.lease.next_attempt_at, Some(NOW + 3_000));
    assert_eq!(t.effects, [Effect::Count(Counter::ProviderError)]);
    // The retry comes at its time, not before.
    assert!(
        deadline(t.lease.clone(), NOW + 2_999, &timing())
            .effects
            .is_empty()
    );
    let retried = deadline(t.lease, NOW + 3_000, &timing());
    assert_eq!(retried.effects, [Effect::Create]);
    assert_eq!(retried.lease.provider_attempts, 2);
    // The last allowed attempt fails too: the lease fails.
    let third = created(
        retried.lease,
        Err(providers::Error::transient("503")),
        NOW + 4_000,
        &timing(),
    );
    let third = deadline(third.lease, NOW + 10_000, &timing()).lease;
    assert_eq!(third.provider_attempts, 3);
    let out = created(
        third,
        Err(providers::Error::transient("503")),
        NOW + 11_000,
        &timing(),
    );
    assert_eq!(out.lease.end_reason, Some(EndReason::ProviderError));

    // Ended while the create ran: the create's runner is destroyed when it answers.
    let mut racing = grant(requested("b"), NOW, &timing()).lease;
    racing = end(racing, EndReason::Released, NOW + 100, &timing()).lease;
    assert!(
        matches!(racing.op, Some((Op::Create, _))),
        "the create is still in flight"
    );
    let t = created(racing, Ok(runner("b", true)), NOW + 500, &timing());
    assert_eq!(t.lease.state, LeaseState::Releasing);
    assert_eq!(t.effects, [Effect::Destroy]);
}

/// A failed destroy keeps the lease releasing (still counting) and retries with backoff.
#[test]
fn destroy_retry() {
    let releasing = end(ready_lease("a"), EndReason::Released, NOW, &timing()).lease;
    let t = destroyed(
        releasing,
        Err(providers::Error::transient("timeout")),
        NOW + 1_000,
        &timing(),
    );
    assert_eq!(t.lease.state, LeaseState::Releasing);
    assert!(t.lease.state.is_active());
    assert_eq!(
        t.lease.next_attempt_at,
        Some(NOW + 5_000),
        "second attempt: 4 s"
    );
    assert_eq!(t.effects, [Effect::Count(Counter::ProviderError)]);
    let again = deadline(t.lease, NOW + 5_000, &timing());
    assert_eq!(again.effects, [Effect::Destroy]);
    assert_eq!(again.lease.provider_attempts, 3);
}

/// A queued lease whose wait ran out is canceled as `queue_timeout`.
#[test]
fn queue_timeout() {
    let queued = queue(requested("q"), NOW + 30_000).lease;
    assert!(
        deadline(queued.clone(), NOW + 29_999, &timing())
            .effects
            .is_empty()
    );
    let t = deadline(queued, NOW + 30_000, &timing());
    assert_eq!(t.lease.state, LeaseState::Canceled);
    assert_eq!(t.lease.end_reason, Some(EndReason::QueueTimeout));
}

/// A runner that does not report ready within the ready timeout fails its lease.
#[test]
fn ready_timeout() {
    let long = Lease {
        ttl_s: 3_600,
        ..requested("a")
    };
    let granted = grant(long, NOW, &timing()).lease;
    let waiting = created(granted, Ok(runner("a", false)), NOW + 1_000, &timing()).lease;
    assert!(
        deadline(waiting.clone(), NOW + 599_999, &timing())
            .effects
            .is_empty()
    );
    let t = deadline(waiting, NOW + 600_000, &timing());
    assert_eq!(t.lease.end_reason, Some(EndReason::ProviderError));
    assert!(
        t.lease
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("did not report ready"))
    );
}

/// After a restart, a create or destroy that was in flight starts again; a lease waiting for
/// a later retry waits.
#[test]
fn resume_after_a_restart() {
    let mut provisioning = grant(requested("a"), NOW, &timing()).lease;
    provisioning.op = None;
    let t = resume(provisioning, NOW + 1_000, &timing());
    assert_eq!(t.effects, [Effect::Create]);
    let mut releasing = end(ready_lease("b"), EndReason::Released, NOW, &timing()).lease;
    releasing.op = None;
    assert_eq!(
        resume(releasing.clone(), NOW, &timing()).effects,
        [Effect::Destroy]
    );
    releasing.next_attempt_at = Some(NOW + 60_000);
    assert!(resume(releasing, NOW, &timing()).effects.is_empty());
    assert!(resume(ready_lease("c"), NOW, &timing()).effects.is_empty());
}

/// A provider call whose completion never arrives is given up on at its safety-net deadline
/// and started again.
#[test]
fn lost_completion_is_retried() {
    let granted = grant(requested("a"), NOW, &timing()).lease;
    let (_, at) = granted.op.expect("in flight");
    let t = deadline(granted, at, &timing());
    assert_eq!(t.effects, [Effect::Create]);
    assert_eq!(t.lease.provider_attempts, 2);
    assert!(
        t.lease
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("did not report back"))
    );
}

/// A ready runner that exits ends its lease as `runner_exited`, with how it exited; the
/// destroy that follows stops the charge at the runner's end: granted → destroyed.
#[test]
fn runner_exit_ends_the_lease_and_its_charge() {
    use providers::exits::{EXIT_STATUS, ExitStatus};
    let lease = ready_lease("a");
    let t = runner_exited(
        lease,
        ExitStatus::Code(1),
        Some("oops"),
        NOW + 9_000,
        &timing(),
    );
    assert!(t.store);
    assert_eq!(t.lease.state, LeaseState::Releasing);
    assert_eq!(t.lease.end_reason, Some(EndReason::RunnerExited));
    assert_eq!(t.lease.ended_at, Some(NOW + 9_000));
    assert_eq!(
        t.lease.last_error.as_deref(),
        Some("the runner exited with code 1; its last stderr line: oops")
    );
    assert_eq!(t.lease.runner_metadata[EXIT_STATUS], "code 1");
    assert_eq!(t.lease.runner_metadata["status"], "exited");
    assert_eq!(t.effects, [Effect::Destroy]);

    let done = destroyed(t.lease, Ok(()), NOW + 10_000, &timing());
    assert_eq!(done.lease.state, LeaseState::Released);
    // 10 s × 3.6 micros, not the 600 s the TTL reserved.
    assert_eq!(done.lease.charged_micros, 36);
    assert!(
        done.effects
            .contains(&Effect::Ledger(LedgerKind::Charge, 36))
    );
    assert!(
        done.effects
            .contains(&Effect::Ledger(LedgerKind::Release, 2_160))
    );

    let killed = runner_exited(
        ready_lease("b"),
        ExitStatus::Signal(9),
        None,
        NOW,
        &timing(),
    );
    assert_eq!(
        killed.lease.last_error.as_deref(),
        Some("the runner was killed by signal 9")
    );
}

/// An exit never ends a lease twice: a runner that said it was done (or that berth destroyed)
/// exits into a lease that is ending or ended, which stays as it is; a queued lease has no
/// runner to exit.
#[test]
fn runner_exit_of_an_ending_lease_changes_nothing() {
    use providers::exits::ExitStatus;
    let done = end(
        ready_lease("a"),
        EndReason::RunnerDone,
        NOW + 5_000,
        &timing(),
    )
    .lease;
    let t = runner_exited(
        done.clone(),
        ExitStatus::Code(0),
        None,
        NOW + 6_000,
        &timing(),
    );
    assert!(!t.store);
    assert!(t.effects.is_empty());
    assert_eq!(t.lease, done);
    assert_eq!(t.lease.end_reason, Some(EndReason::RunnerDone));

    let finished = destroyed(done, Ok(()), NOW + 7_000, &timing()).lease;
    let t = runner_exited(
        finished.clone(),
        ExitStatus::Signal(15),
        None,
        NOW + 8_000,
        &timing(),
    );
    assert!(!t.store);
    assert_eq!(t.lease, finished);

    let queued = queue(requested("q"), NOW + 30_000).lease;
    let t = runner_exited(queued.clone(), ExitStatus::Unknown, None, NOW, &timing());
    assert!(!t.store);
    assert_eq!(t.lease, queued);
}

/// An exit reported while the create is in flight ends the lease; the destroy waits for the
/// create's answer, which keeps the exit noted. A create that finds its runner already gone
/// (after a restart: nobody will report that exit) ends the lease itself.
#[test]
fn runner_exit_around_the_create() {
    use providers::exits::{EXIT_STATUS, ExitStatus};
    let granted = grant(requested("a"), NOW, &timing()).lease;
    let t = runner_exited(granted, ExitStatus::Code(2), None, NOW + 100, &timing());
    assert_eq!(t.lease.state, LeaseState::Releasing);
    assert!(
        t.effects.is_empty(),
        "the create is in flight: no destroy yet"
    );
    let answered = created(t.lease, Ok(runner("a", true)), NOW + 200, &timing());
    assert_eq!(answered.effects, [Effect::Destroy]);
    assert_eq!(answered.lease.runner_metadata[EXIT_STATUS], "code 2");
    assert_eq!(answered.lease.end_reason, Some(EndReason::RunnerExited));

    let granted = grant(requested("b"), NOW, &timing()).lease;
    let mut gone = runner("b", true);
    gone.metadata
        .insert(EXIT_STATUS.to_owned(), ExitStatus::Unknown.to_string());
    let t = created(granted, Ok(gone), NOW + 300, &timing());
    assert_eq!(t.lease.state, LeaseState::Releasing);
    assert_eq!(t.lease.end_reason, Some(EndReason::RunnerExited));
    assert_eq!(t.lease.ready_at, None, "never ready");
    assert!(
        t.lease
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("unknown"))
    );
    assert_eq!(t.effects, [Effect::Destroy]);
}

/// A warm runner of its pool: made, ready on its create's answer, not active.
fn warm_lease(id: &str) -> Lease {
    let made = make_warm(requested(id), NOW, &timing()).lease;
    created(made, Ok(runner(id, true)), NOW + 1_000, &timing()).lease
}

/// A warm runner reserves price × warm TTL under `warm_reserve`, is ready (announced
/// `pool.warm_ready`) without becoming active, and is recycled at its warm TTL.
#[test]
fn warm_runner_is_made_ready_and_recycled() {
    let t = make_warm(requested("w"), NOW, &timing());
    assert_eq!(t.lease.state, LeaseState::Warm);
    assert_eq!(t.lease.warm_since, Some(NOW));
    assert_eq!(
        t.effects,
        [
            Effect::Ledger(LedgerKind::WarmReserve, 2_160),
            Effect::Create,
            Effect::Count(Counter::WarmRefill),
            Effect::CheckBudget,
        ]
    );
    let ready = created(t.lease, Ok(runner("w", true)), NOW + 1_000, &timing());
    assert_eq!(ready.lease.state, LeaseState::Warm);
    assert!(ready.lease.warm_ready());
    assert!(!ready.lease.state.is_active());
    assert_eq!(ready.effects, [Effect::Announce(EventKind::PoolWarmReady)]);
    assert_eq!(
        crate::tenant::book::deadline(&ready.lease, &timing()),
        Some(NOW + 600_000)
    );
    let due = deadline(ready.lease, NOW + 600_000, &timing());
    assert_eq!(due.lease.state, LeaseState::Releasing);
    assert_eq!(due.lease.end_reason, Some(EndReason::Ttl));
    assert!(
        due.effects
            .contains(&Effect::Announce(EventKind::PoolWarmRecycled))
    );
    assert!(due.effects.contains(&Effect::Refill));
    let done = finish(due.lease, NOW + 600_000);
    assert_eq!(done.lease.state, LeaseState::Expired);
    assert_eq!(
        &done.effects[..3],
        [
            Effect::Ledger(LedgerKind::WarmCharge, 2_160),
            Effect::Ledger(LedgerKind::WarmRelease, 2_160),
            Effect::Charge(2_160),
        ]
    );
}

/// Taking a warm runner charges its waiting time, releases its warm reservation, and makes it
/// the client's ready lease with the request's TTL; its later end uses the lease kinds.
#[test]
fn taking_a_warm_runner_moves_its_money_to_the_lease() {
    let warm = warm_lease("w");
    let taking = Taking {
        ttl_s: 300,
        idle_timeout_s: Some(60),
        labels: BTreeMap::from([("job".to_owned(), "7".to_owned())]),
    };
    assert_eq!(take_cost(&warm, 300, NOW + 100_000), 1_080 + 360 - 2_160);
    let t = take_warm(warm, taking, NOW + 100_000);
    assert_eq!(t.lease.state, LeaseState::Ready);
    assert_eq!(t.lease.ready_at, Some(NOW + 100_000));
    assert_eq!(t.lease.expires_at, Some(NOW + 400_000));
    assert_eq!(t.lease.reserved_micros, 1_080);
    assert!(!t.lease.pool_owned());
    assert_eq!(
        &t.effects[..4],
        [
            Effect::Ledger(LedgerKind::WarmCharge, 360),
            Effect::Ledger(LedgerKind::WarmRelease, 2_160),
            Effect::Charge(360),
            Effect::Ledger(LedgerKind::Reserve, 1_080),
        ]
    );
    assert!(
        t.effects
            .contains(&Effect::Announce(EventKind::PoolWarmTaken))
    );
    assert!(t.effects.contains(&Effect::Refill));
    let ended = end(t.lease, EndReason::Released, NOW + 110_000, &timing());
    assert!(!ended.effects.contains(&Effect::Refill));
    let done = finish(ended.lease, NOW + 110_000);
    assert_eq!(done.lease.state, LeaseState::Released);
    assert_eq!(
        &done.effects[..2],
        [
            Effect::Ledger(LedgerKind::Charge, 36),
            Effect::Ledger(LedgerKind::Release, 1_080),
        ]
    );
    assert_eq!(done.lease.charged_micros, 360 + 36);
}
