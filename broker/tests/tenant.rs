//! The tenant broker object through its object API (no HTTP), with an injected clock, real
//! SQLite files and the `fake` provider: every lease transition, every end reason, the queue,
//! the caps, the ledger.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod fixture;

use broker::secrets::Keys;
use broker::tenant::{self, Filter, Rejection, Timing};
use broker::wire::{self, EndReason, LeaseState, LimitsPatch};
use fixture::{Fixture, T0, fast_timing, limits, ms};

/// grant → provisioning → ready → release → releasing → released, with the ledger reserving
/// at grant and charging the runner's lifetime at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lifecycle_and_ledger() {
    let f = Fixture::new(limits(5)).await;
    f.pool(3_600_000, serde_json::json!({})).await; // 1000 micros per second
    let (lease, queued) = f.request(600, 0).await.expect("granted");
    assert!(!queued);
    assert_eq!(lease.state, LeaseState::Provisioning);
    assert_eq!(lease.cost.reserved_micros, 600_000);
    assert_eq!(
        ms(lease.expires_at.as_deref().expect("expires")),
        T0 + 600_000
    );
    let ready = f.until(&lease.id, LeaseState::Ready).await;
    assert!(ready.runner.as_ref().and_then(|r| r.id.clone()).is_some());
    assert_eq!(f.fake().live_count(), 1);

    f.clock.set(T0 + 90_500);
    let releasing = f.release(&lease.id).await;
    assert!(matches!(
        releasing.state,
        LeaseState::Releasing | LeaseState::Released
    ));
    let released = f.until(&lease.id, LeaseState::Released).await;
    assert_eq!(released.end_reason, Some(EndReason::Released));
    assert_eq!(
        ms(released.ended_at.as_deref().expect("ended")),
        T0 + 90_500
    );
    assert_eq!(
        released.cost.charged_micros, 91_000,
        "90.5 s rounds up to 91 s"
    );
    assert_eq!(released.cost.reserved_micros, 0);
    assert_eq!(f.fake().live_count(), 0);

    let ledger = f.ledger().await;
    let kinds: Vec<(wire::LedgerKind, i64)> =
        ledger.iter().map(|e| (e.kind, e.amount_micros)).collect();
    assert_eq!(
        kinds,
        vec![
            (wire::LedgerKind::Reserve, 600_000),
            (wire::LedgerKind::Charge, 91_000),
            (wire::LedgerKind::Release, 600_000)
        ]
    );
    // Releasing again changes nothing.
    assert_eq!(f.release(&lease.id).await.state, LeaseState::Released);
    assert_eq!(f.ledger().await.len(), 3);
    let kinds: Vec<String> = f
        .events()
        .await
        .into_iter()
        .map(|e| e.kind.as_str().to_owned())
        .collect();
    assert_eq!(
        kinds,
        vec!["lease.granted", "lease.ready", "lease.released"]
    );
}

/// TTL expiry happens at `expires_at`, not a millisecond before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_is_on_time() {
    let f = Fixture::new(limits(5)).await;
    f.pool(0, serde_json::json!({})).await;
    let (lease, _) = f.request(60, 0).await.expect("granted");
    f.until(&lease.id, LeaseState::Ready).await;
    f.clock.set(T0 + 59_999);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.lease(&lease.id).await.state, LeaseState::Ready);
    f.clock.set(T0 + 60_000);
    let expired = f.until(&lease.id, LeaseState::Expired).await;
    assert_eq!(expired.end_reason, Some(EndReason::Ttl));
    assert_eq!(ms(expired.ended_at.as_deref().expect("ended")), T0 + 60_000);
    assert_eq!(f.fake().live_count(), 0);
}

/// Idle expiry: last heartbeat + idle timeout, moved by each heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_expiry_follows_heartbeats() {
    let f = Fixture::new(limits(5)).await;
    f.pool(0, serde_json::json!({})).await;
    let request = wire::LeaseRequest {
        pool: "small".into(),
        ttl_s: Some(3_600),
        idle_timeout_s: Some(30),
        wait_s: None,
        labels: BTreeMap::new(),
    };
    let lease = f
        .ok(tenant::RequestLease {
            request,
            idempotency_key: None,
        })
        .await
        .lease;
    f.until(&lease.id, LeaseState::Ready).await;
    f.clock.set(T0 + 20_000);
    f.ok(tenant::Heartbeat {
        id: lease.id.clone(),
        extend_ttl_s: None,
    })
    .await;
    f.clock.set(T0 + 49_999);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        f.lease(&lease.id).await.state,
        LeaseState::Ready,
        "the heartbeat moved the idle deadline"
    );
    f.clock.set(T0 + 50_000);
    let expired = f.until(&lease.id, LeaseState::Expired).await;
    assert_eq!(expired.end_reason, Some(EndReason::Idle));
    assert_eq!(ms(expired.ended_at.as_deref().expect("ended")), T0 + 50_000);
}

/// A full cap answers 429 at once without a wait; with a wait, requests queue FIFO and are
/// granted in order as slots free; the queue is bounded; a wait that ends cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_fifo_bounded_and_times_out() {
    let f = Fixture::new(LimitsPatch {
        max_active_leases: Some(1),
        max_queued: Some(2),
        ..LimitsPatch::default()
    })
    .await;
    f.pool(0, serde_json::json!({})).await;
    let (a, _) = f.request(600, 0).await.expect("granted");
    assert!(matches!(
        f.request(600, 0).await,
        Err(Rejection::ConcurrencyCap(_))
    ));
    let (b, queued_b) = f.request(600, 60).await.expect("queued");
    assert!(queued_b);
    assert_eq!((b.state, b.queue_position), (LeaseState::Queued, Some(1)));
    f.clock.set(T0 + 1);
    let (c, _) = f.request(600, 30).await.expect("queued");
    assert_eq!(c.queue_position, Some(2));
    assert!(matches!(
        f.request(600, 30).await,
        Err(Rejection::QueueFull(_))
    ));

    f.release(&a.id).await;
    f.until(&b.id, LeaseState::Ready).await;
    assert_eq!(f.lease(&c.id).await.queue_position, Some(1));
    // C's wait ends at T0 + 1 + 30 s, while B holds the slot.
    f.clock.set(T0 + 30_000);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(f.lease(&c.id).await.state, LeaseState::Queued);
    f.clock.set(T0 + 30_001);
    let canceled = f.until(&c.id, LeaseState::Canceled).await;
    assert_eq!(canceled.end_reason, Some(EndReason::QueueTimeout));
    assert_eq!(canceled.cost.reserved_micros, 0);
    // A queued lease released by its client is canceled.
    let (d, _) = f.request(600, 60).await.expect("queued");
    assert_eq!(f.release(&d.id).await.end_reason, Some(EndReason::Canceled));
}

/// Heartbeat extensions stop at max_ttl_s and at the spend cap, and are reserved in the
/// ledger when accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_extension_limits() {
    let f = Fixture::new(LimitsPatch {
        max_active_leases: Some(5),
        max_ttl_s: Some(3_600),
        spend_cap_daily_micros: Some(Some(1_500_000)),
        ..LimitsPatch::default()
    })
    .await;
    f.pool(3_600_000, serde_json::json!({})).await; // 1000 micros/s
    let (lease, _) = f.request(600, 0).await.expect("granted");
    f.until(&lease.id, LeaseState::Ready).await;
    let extend = |s| tenant::Heartbeat {
        id: lease.id.clone(),
        extend_ttl_s: Some(s),
    };
    assert!(
        matches!(f.call(extend(3_001)).await, Err(Rejection::Invalid(_))),
        "past max_ttl_s"
    );
    assert!(
        matches!(f.call(extend(901)).await, Err(Rejection::SpendCap(_))),
        "past the spend cap"
    );
    let extended = f.ok(extend(900)).await;
    assert_eq!(extended.ttl_s, 1_500);
    assert_eq!(
        ms(extended.expires_at.as_deref().expect("expires")),
        T0 + 1_500_000
    );
    assert_eq!(extended.cost.reserved_micros, 1_500_000);
    let reserves: i64 = f
        .ledger()
        .await
        .iter()
        .filter(|e| e.kind == wire::LedgerKind::Reserve)
        .map(|e| e.amount_micros)
        .sum();
    assert_eq!(reserves, 1_500_000);
    // And a new lease cannot reserve past the cap either.
    assert!(matches!(f.request(1, 0).await, Err(Rejection::SpendCap(_))));
    let kinds: Vec<String> = f
        .events()
        .await
        .into_iter()
        .map(|e| e.kind.as_str().to_owned())
        .collect();
    assert!(kinds.contains(&"budget.exhausted".to_string()), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "budget.threshold").count(),
        3,
        "50, 80 and 100 %: {kinds:?}"
    );
}

/// The same idempotency key and body give the same lease; another body is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys() {
    let f = Fixture::new(limits(5)).await;
    f.pool(0, serde_json::json!({})).await;
    let request = |ttl| wire::LeaseRequest {
        pool: "small".into(),
        ttl_s: Some(ttl),
        idle_timeout_s: None,
        wait_s: None,
        labels: BTreeMap::new(),
    };
    let call = |ttl| tenant::RequestLease {
        request: request(ttl),
        idempotency_key: Some("ci-run-42".into()),
    };
    let first = f.ok(call(600)).await;
    assert!(!first.replayed);
    let first = first.lease;
    let again = f.ok(call(600)).await;
    assert!(again.replayed);
    let again = again.lease;
    assert_eq!(first.id, again.id);
    assert_eq!(
        f.call(call(601)).await.err(),
        Some(Rejection::IdempotencyMismatch)
    );
    // The create runs after the grant's commit: wait for it before counting.
    f.until(&first.id, LeaseState::Ready).await;
    assert_eq!(
        f.fake().create_calls(),
        1,
        "a retried request made no second runner"
    );
    // After 24 h the key is free again.
    f.clock.set(T0 + 24 * 3_600_000 + 1);
    let later = f.ok(call(601)).await;
    assert!(!later.replayed);
    let later = later.lease;
    assert_ne!(later.id, first.id);
}

/// A permanent create error fails the lease (provider_error) and frees its slot; a
/// transient one is retried on the alarm with backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_create_errors() {
    let f = Fixture::new(limits(1)).await;
    f.pool(
        0,
        serde_json::json!({ "create_failure_rate": 1.0, "failure": "permanent" }),
    )
    .await;
    let (lease, _) = f.request(600, 0).await.expect("granted");
    let failed = f.until(&lease.id, LeaseState::Failed).await;
    assert_eq!(failed.end_reason, Some(EndReason::ProviderError));
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("provider")),
        "{failed:?}"
    );
    f.request(600, 0).await.expect("the slot is free again");

    let f = Fixture::new(limits(1)).await;
    f.pool(
        0,
        serde_json::json!({ "create_failure_rate": 1.0, "failure": "transient" }),
    )
    .await;
    let (lease, _) = f.request(600, 0).await.expect("granted");
    for attempt in 1..5 {
        // Wait for the attempt's failure to be recorded, not only for the create call: the
        // retry's backoff counts from the failure, so moving the clock before it is recorded
        // would push the retry past the time set below.
        let mut recorded = false;
        for _ in 0..2_500 {
            let lease = f.lease(&lease.id).await;
            if lease.provider_attempts == attempt
                && lease.provisioning_attempts.len() == attempt as usize
                && f.fake().create_calls() == attempt as u64
            {
                recorded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let lease = f.lease(&lease.id).await;
        assert!(recorded, "attempt {attempt} was not recorded: {lease:?}");
        assert_eq!(lease.state, LeaseState::Provisioning);
        // Retry n waits 2^(n-1) × 2 s.
        let next = T0 + (2_000 * ((1 << attempt) - 1));
        f.clock.set(next - 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(f.fake().create_calls(), attempt as u64, "retried early");
        f.clock.set(next);
    }
    let failed = f.until(&lease.id, LeaseState::Failed).await;
    assert_eq!(
        failed.provider_attempts, 6,
        "5 creates then one destroy by lease id"
    );
}

/// A failing destroy keeps the lease releasing (still counting against the cap), shows the
/// attempts and error, and is retried on the alarm until the runner is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_failures_keep_the_lease_releasing() {
    let f = Fixture::new(limits(1)).await;
    f.pool(0, serde_json::json!({ "destroy_failure_rate": 1.0 }))
        .await;
    let (lease, _) = f.request(600, 0).await.expect("granted");
    f.until(&lease.id, LeaseState::Ready).await;
    f.release(&lease.id).await;
    for _ in 0..500 {
        if f.lease(&lease.id).await.last_error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let releasing = f.lease(&lease.id).await;
    assert_eq!(releasing.state, LeaseState::Releasing);
    assert!(releasing.last_error.is_some());
    assert_eq!(releasing.provider_attempts, 2);
    assert!(
        matches!(f.request(600, 0).await, Err(Rejection::ConcurrencyCap(_))),
        "a releasing lease counts"
    );
    // Let destroys succeed: changing the account retries the owed destroy at once (it may
    // succeed with the changed account), without waiting for the backoff's alarm.
    f.ok(tenant::PutProvider {
        name: "cloud".into(),
        account: wire::ProviderPut {
            kind: "fake".into(),
            config: serde_json::json!({ "cloud": f.cloud }),
            credentials: serde_json::json!({}),
        },
        by_operator: true,
        force: false,
    })
    .await;
    let released = f.until(&lease.id, LeaseState::Released).await;
    assert_eq!(
        ms(released.runner_destroyed_at.as_deref().expect("destroyed")),
        T0
    );
    assert_eq!(f.fake().live_count(), 0);
}

/// A runner that calls back: ready with its token, then done; a wrong token changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_callbacks() {
    let f = Fixture::new(limits(5)).await;
    f.pool(0, serde_json::json!({ "ready": false })).await;
    let (lease, _) = f.request(600, 0).await.expect("granted");
    for _ in 0..500 {
        if f.lease(&lease.id).await.runner.and_then(|r| r.id).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(f.lease(&lease.id).await.state, LeaseState::Provisioning);
    let token = Keys::from_master(&[9; 32]).runner_token("acme", &lease.id);
    let ready = |token: &str| tenant::RunnerReady {
        id: lease.id.clone(),
        token: token.into(),
        address: Some("10.0.0.7".into()),
        metadata: BTreeMap::new(),
    };
    assert_eq!(
        f.call(ready("brt_wrong")).await.err(),
        Some(Rejection::BadRunnerToken)
    );
    assert_eq!(f.lease(&lease.id).await.state, LeaseState::Provisioning);
    let ready_lease = f.ok(ready(&token)).await;
    assert_eq!(ready_lease.state, LeaseState::Ready);
    assert_eq!(
        ready_lease.runner.and_then(|r| r.address).as_deref(),
        Some("10.0.0.7")
    );
    f.ok(tenant::RunnerDone {
        id: lease.id.clone(),
        token: token.clone(),
    })
    .await;
    let done = f.until(&lease.id, LeaseState::Released).await;
    assert_eq!(done.end_reason, Some(EndReason::RunnerDone));
    assert!(
        matches!(f.call(ready(&token)).await, Err(Rejection::LeaseEnded(_))),
        "useless once ended"
    );
}

/// A runner that never reports ready fails the lease after the ready timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_timeout_fails_the_lease() {
    let timing = Timing {
        ready_timeout: Duration::from_secs(300),
        ..fast_timing()
    };
    let f = Fixture::with_timing(limits(5), timing).await;
    f.pool(0, serde_json::json!({ "ready": false })).await;
    let (lease, _) = f.request(3_600, 0).await.expect("granted");
    f.clock.set(T0 + 300_000);
    let failed = f.until(&lease.id, LeaseState::Failed).await;
    assert_eq!(failed.end_reason, Some(EndReason::ProviderError));
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("ready"))
    );
    assert_eq!(f.fake().live_count(), 0);
}

/// After a restart with leases active and queued, their deadlines still fire and nothing is
/// granted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_survive_a_restart() {
    let f = Fixture::new(LimitsPatch {
        max_active_leases: Some(1),
        ..LimitsPatch::default()
    })
    .await;
    f.pool(0, serde_json::json!({})).await;
    let (a, _) = f.request(60, 0).await.expect("granted");
    f.until(&a.id, LeaseState::Ready).await;
    let (b, _) = f.request(60, 600).await.expect("queued");
    let f = f.restart().await;
    assert_eq!(f.lease(&a.id).await.state, LeaseState::Ready);
    assert_eq!(f.lease(&b.id).await.state, LeaseState::Queued);
    f.clock.set(T0 + 60_000);
    f.until(&a.id, LeaseState::Expired).await;
    f.until(&b.id, LeaseState::Ready).await;
    let granted: Vec<wire::Lease> = f
        .ok(tenant::ListLeases {
            filter: Filter {
                states: vec![LeaseState::Ready, LeaseState::Provisioning],
                limit: 100,
                ..Filter::default()
            },
        })
        .await
        .items;
    assert_eq!(granted.len(), 1);
    assert_eq!(f.fake().live_count(), 1);
}

/// Reconciliation destroys a runner of a lease that ended, and leaves alone owned runners,
/// another tenant's, and one of a lease this tenant never had (not berth's to destroy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_destroys_orphans() {
    let timing = Timing {
        reconcile_interval: Duration::from_secs(60),
        orphan_grace: Duration::ZERO,
        ..fast_timing()
    };
    let f = Fixture::with_timing(limits(5), timing).await;
    f.pool(0, serde_json::json!({})).await;
    let (lease, _) = f.request(3_600, 0).await.expect("granted");
    f.until(&lease.id, LeaseState::Ready).await;
    let (ended, _) = f.request(3_600, 0).await.expect("granted");
    f.until(&ended.id, LeaseState::Ready).await;
    f.release(&ended.id).await;
    f.until(&ended.id, LeaseState::Released).await;
    // A runner of the ended lease reappears (it outlived its destroy).
    f.fake().insert_orphan("acme", &ended.id).expect("orphan");
    f.fake()
        .insert_orphan("acme", "lease_stranger")
        .expect("a runner of a lease berth never had");
    f.fake()
        .insert_orphan("someone-else", "lease_theirs")
        .expect("other tenant's runner");
    assert_eq!(f.fake().live_count(), 4);
    f.clock.set(T0 + 60_000);
    for _ in 0..1_000 {
        if f.fake().live_count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let live: Vec<String> = f
        .fake()
        .live_runners()
        .into_iter()
        .map(|r| r.lease_id)
        .collect();
    assert!(live.contains(&lease.id), "the owned runner stays");
    assert!(
        live.contains(&"lease_theirs".to_string()),
        "another tenant's runner stays"
    );
    assert!(
        live.contains(&"lease_stranger".to_string()),
        "a runner of a lease berth never had stays"
    );
    assert!(!live.contains(&ended.id), "the orphan is destroyed");
}

/// A tenant whose provider work has settled goes to sleep: reconciliation runs while a
/// runner could still appear (rounds until one starts two intervals after the last provider
/// call), then stops; the only alarm left is the expiry of its oldest retained row; and
/// waking it for a read commits nothing and lists nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_tenant_sleeps_until_its_data_expires() {
    let timing = Timing {
        reconcile_interval: Duration::from_secs(60),
        ..fast_timing()
    };
    let f = Fixture::with_timing(limits(5), timing).await;
    f.pool(0, serde_json::json!({})).await;
    let (lease, _) = f.request(3_600, 0).await.expect("granted");
    f.until(&lease.id, LeaseState::Ready).await;
    f.release(&lease.id).await;
    f.until(&lease.id, LeaseState::Released).await;
    let rounds = |n: u64| {
        let cloud = f.fake();
        async move {
            for _ in 0..2_000 {
                if cloud.list_calls() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            panic!("{n} reconciliation rounds never ran");
        }
    };
    // The first round ran when the account was added; provider work at T0 calls for rounds
    // at T0 + 1 and T0 + 2 minutes, and none after.
    rounds(1).await;
    f.clock.set(T0 + 60_000);
    rounds(2).await;
    f.clock.set(T0 + 120_000);
    rounds(3).await;

    let f = f.restart().await;
    let id = f.ns.id_from_name("acme");
    let alarm = f
        .runtime
        .directory()
        .object("tenant", id)
        .and_then(|row| row.alarm_at);
    let first_event = f.events().await[0].at;
    assert_eq!(
        alarm,
        Some(first_event + 7 * 24 * 3_600_000),
        "the only alarm left is the expiry of the oldest event"
    );
    let f = f.restart().await;
    let commits = f.runtime.metrics().commits.load(Ordering::Relaxed);
    let lists = f.fake().list_calls();
    assert_eq!(f.lease(&lease.id).await.state, LeaseState::Released);
    assert_eq!(
        f.runtime.metrics().commits.load(Ordering::Relaxed),
        commits,
        "a read wakes the tenant without a commit"
    );
    assert_eq!(f.fake().list_calls(), lists, "and without a reconciliation");
}

/// Charges 50,000 micros at T0: a lease of a pool at 1,000 micros per second, held 50 s.
async fn charge_50_000(f: &Fixture) {
    f.pool(3_600_000, serde_json::json!({})).await;
    let (lease, _) = f.request(60, 0).await.expect("granted");
    f.until(&lease.id, LeaseState::Ready).await;
    f.clock.set(T0 + 50_000);
    f.release(&lease.id).await;
    f.until(&lease.id, LeaseState::Released).await;
}

/// A wake reads the day's and month's spend from the running totals stored with every charge;
/// when they do not cover the current period (a tenant from before the totals: here, the key
/// removed while the tenant slept) it sums the period from the ledger, and the spend cap
/// counts what it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_without_running_totals_sums_the_ledger() {
    let f = Fixture::new(LimitsPatch {
        max_active_leases: Some(5),
        spend_cap_daily_micros: Some(Some(100_000)),
        ..LimitsPatch::default()
    })
    .await;
    charge_50_000(&f).await;
    // 50,000 charged of 100,000: a 60 s reservation no longer fits, a 50 s one does.
    assert!(matches!(
        f.request(60, 0).await,
        Err(Rejection::SpendCap(_))
    ));

    let f = f.restart().await;
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(f.dir.path().join("objects/tenant"))
        .expect("the tenant directory")
        .flat_map(|shard| std::fs::read_dir(shard.expect("a shard").path()).expect("a shard"))
        .map(|file| file.expect("a file").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sqlite"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    {
        use sqlx::Connection as _;
        let url = format!("sqlite://{}", files[0].display());
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("the tenant's file");
        let removed = sqlx::query("DELETE FROM _berth_kv WHERE key = 'u:charged'")
            .execute(&mut conn)
            .await
            .expect("delete")
            .rows_affected();
        assert_eq!(removed, 1, "the running totals were stored");
        conn.close().await.expect("close");
    }

    assert!(
        matches!(f.request(60, 0).await, Err(Rejection::SpendCap(_))),
        "the day's 50,000 were summed from the ledger"
    );
    let (fits, _) = f
        .request(50, 0)
        .await
        .expect("50,000 more fits the cap exactly");
    assert_eq!(fits.cost.reserved_micros, 50_000);
}

/// The first wake of a new day sums the month from the ledger and starts the day from zero:
/// yesterday's charge counts against the monthly cap and not the daily one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_day_counts_the_month_but_not_yesterday() {
    let f = Fixture::new(LimitsPatch {
        max_active_leases: Some(5),
        spend_cap_daily_micros: Some(Some(100_000)),
        spend_cap_monthly_micros: Some(Some(120_000)),
        ..LimitsPatch::default()
    })
    .await;
    charge_50_000(&f).await;

    // The next day (T0 is the 15th of a month), on a fresh wake.
    let f = f.restart().await;
    f.clock.set(T0 + 86_400_000);
    let (today, _) = f
        .request(60, 0)
        .await
        .expect("60,000 fits today's cap: yesterday's 50,000 is not today's");
    assert_eq!(today.cost.reserved_micros, 60_000);
    assert!(
        matches!(f.request(20, 0).await, Err(Rejection::SpendCap(_))),
        "yesterday's 50,000 + 60,000 + 20,000 is over the month's 120,000"
    );
    f.request(10, 0)
        .await
        .expect("50,000 + 60,000 + 10,000 fits the month's cap exactly");
}

/// Lowering the spend cap below what is reserved ends the newest leases with `spend_cap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_the_spend_cap_ends_the_newest_leases() {
    let f = Fixture::new(limits(5)).await;
    f.pool(3_600_000, serde_json::json!({})).await;
    let (old, _) = f.request(100, 0).await.expect("granted");
    f.clock.set(T0 + 1);
    let (new, _) = f.request(100, 0).await.expect("granted");
    f.until(&new.id, LeaseState::Ready).await;
    f.ok(tenant::Patch {
        limits: LimitsPatch {
            spend_cap_daily_micros: Some(Some(150_000)),
            ..LimitsPatch::default()
        },
        quota: None,
        by_operator: true,
    })
    .await;
    let ended = f.until(&new.id, LeaseState::Expired).await;
    assert_eq!(ended.end_reason, Some(EndReason::SpendCap));
    assert_eq!(f.lease(&old.id).await.state, LeaseState::Ready);
}

/// Bad input is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_change_nothing() {
    let f = Fixture::new(limits(5)).await;
    f.pool(0, serde_json::json!({})).await;
    let bad = [
        wire::LeaseRequest {
            pool: "nope".into(),
            ttl_s: None,
            idle_timeout_s: None,
            wait_s: None,
            labels: BTreeMap::new(),
        },
        wire::LeaseRequest {
            pool: "small".into(),
            ttl_s: Some(0),
            idle_timeout_s: None,
            wait_s: None,
            labels: BTreeMap::new(),
        },
        wire::LeaseRequest {
            pool: "small".into(),
            ttl_s: Some(-5),
            idle_timeout_s: None,
            wait_s: None,
            labels: BTreeMap::new(),
        },
        wire::LeaseRequest {
            pool: "small".into(),
            ttl_s: Some(i64::MAX),
            idle_timeout_s: None,
            wait_s: None,
            labels: BTreeMap::new(),
        },
        wire::LeaseRequest {
            pool: "small".into(),
            ttl_s: None,
            idle_timeout_s: Some(0),
            wait_s: None,
            labels: BTreeMap::new(),
        },
        wire::LeaseRequest {
            pool: "small".into(),
            ttl_s: None,
            idle_timeout_s: None,
            wait_s: Some(-1),
            labels: BTreeMap::new(),
        },
        wire::LeaseRequest {
            pool: "small".into(),
            ttl_s: None,
            idle_timeout_s: None,
            wait_s: None,
            labels: (0..33).map(|i| (format!("k{i}"), "v".into())).collect(),
        },
        wire::LeaseRequest {
            pool: "small".into(),
            ttl_s: None,
            idle_timeout_s: None,
            wait_s: None,
            labels: BTreeMap::from([("bad key!".into(), "v".into())]),
        },
    ];
    for request in bad {
        let result = f
            .call(tenant::RequestLease {
                request: request.clone(),
                idempotency_key: None,
            })
            .await;
        assert!(
            matches!(result, Err(Rejection::Invalid(_))),
            "{request:?} → {result:?}"
        );
    }
    assert!(matches!(
        f.call(tenant::Patch {
            limits: LimitsPatch {
                max_active_leases: Some(-1),
                ..LimitsPatch::default()
            },
            quota: None,
            by_operator: true,
        })
        .await,
        Err(Rejection::Invalid(_))
    ));
    assert!(matches!(
        f.call(tenant::PutProvider {
            name: "Bad Name".into(),
            account: wire::ProviderPut {
                kind: "fake".into(),
                config: serde_json::json!({}),
                credentials: serde_json::json!({})
            },
            by_operator: true,
            force: false,
        })
        .await,
        Err(Rejection::Invalid(_))
    ));
    assert!(matches!(
        f.call(tenant::PutProvider {
            name: "x".into(),
            account: wire::ProviderPut {
                kind: "warp-drive".into(),
                config: serde_json::json!({}),
                credentials: serde_json::json!({})
            },
            by_operator: true,
            force: false,
        })
        .await,
        Err(Rejection::Invalid(_))
    ));
    assert!(f.ledger().await.is_empty());
    assert!(f.events().await.is_empty());
    let leases = f
        .ok(tenant::ListLeases {
            filter: Filter {
                limit: 100,
                ..Filter::default()
            },
        })
        .await
        .items;
    assert!(leases.is_empty());
    assert_eq!(f.fake().create_calls(), 0);
    let _ = f.dir.path();
}
