//! Providers on real money, through the tenant object (no HTTP), with an injected clock and
//! the `fake` provider: orphans are destroyed only after a grace period and a second
//! sighting, never above the per-round cap, never in report mode; a runner that vanished
//! ends its lease `runner_lost`; a destroy refused for good is announced stuck and not
//! hammered; a live account cannot be re-pointed without force, and a forced change still
//! destroys the old runners where they are; a capacity error falls back to the pool's next
//! alternative.

use std::sync::atomic::Ordering;
use std::time::Duration;

mod fixture;

use broker::tenant::{self, ReconcileMode, Rejection, Timing};
use broker::wire::{self, EndReason, LeaseState, LedgerKind};
use fixture::{Fixture, T0, fast_timing, limits};

const MINUTE: i64 = 60_000;

/// Reconciliation every minute, orphans destroyed after `grace`.
fn timing(grace: Duration) -> Timing {
    Timing {
        reconcile_interval: Duration::from_secs(60),
        orphan_grace: grace,
        ..fast_timing()
    }
}

impl Fixture {
    /// The events of `kind`, as JSON data.
    async fn events_of(&self, kind: &str) -> Vec<serde_json::Value> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e.kind.as_str() == kind)
            .map(|e| serde_json::from_str(e.data.get()).expect("event data is JSON"))
            .collect()
    }

    /// Waits (bounded) until `n` events of `kind` exist.
    async fn until_events(&self, kind: &str, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..2_000 {
            let events = self.events_of(kind).await;
            if events.len() >= n {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!(
            "never {n} `{kind}` events: {:?}",
            self.events_of(kind).await
        );
    }

    /// A lease that was ready and then released (its runner destroyed).
    async fn ended_lease(&self) -> String {
        let (lease, _) = self.request(3_600, 0).await.expect("granted");
        self.until(&lease.id, LeaseState::Ready).await;
        self.release(&lease.id).await;
        self.until(&lease.id, LeaseState::Released).await;
        lease.id
    }
}

/// An orphan (a runner of a lease this tenant knows ended) is left alone when first seen and
/// on every round within the grace period, and destroyed by the first round that sees it
/// again after the grace period; `runner.orphan_destroyed` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_is_destroyed_only_after_the_grace_period() {
    let f = Fixture::with_timing(limits(5), timing(Duration::from_secs(120))).await;
    f.pool(0, serde_json::json!({})).await;
    f.listings(1).await;
    let ended = f.ended_lease().await;
    let orphan = f.fake().insert_orphan("acme", &ended).expect("orphan");
    let destroys = f.fake().destroy_calls();

    f.round(T0 + MINUTE, 2).await; // first seen
    f.round(T0 + 2 * MINUTE, 3).await; // a minute later: within the grace period
    f.round(T0 + 3 * MINUTE, 4).await;
    // Round 4 saw it two minutes after the first sighting; the rounds before it destroyed
    // nothing (each had a whole round after it to do so).
    let events = f.until_events("runner.orphan_destroyed", 1).await;
    assert_eq!(
        f.fake().destroy_calls(),
        destroys + 1,
        "one destroy, by the round after the grace period"
    );
    assert!(f.fake().runner_for("acme", &ended).is_none());
    assert_eq!(events[0]["runner_id"], orphan.id.as_str());
    assert_eq!(events[0]["lease_id"], ended.as_str());
    assert_eq!(events[0]["report_only"], false);
    assert_eq!(
        fixture::ms(events[0]["first_seen_at"].as_str().expect("time")),
        T0 + MINUTE
    );
}

/// Within the grace period nothing is destroyed, however many rounds see the orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_within_its_grace_period_is_left_alone() {
    let f = Fixture::with_timing(limits(5), timing(Duration::from_secs(600))).await;
    f.pool(0, serde_json::json!({})).await;
    f.listings(1).await;
    let ended = f.ended_lease().await;
    f.fake().insert_orphan("acme", &ended).expect("orphan");
    let destroys = f.fake().destroy_calls();
    for n in 1..=5 {
        f.round(T0 + n * MINUTE, 1 + u64::try_from(n).expect("small"))
            .await;
    }
    f.round(T0 + 6 * MINUTE, 7).await;
    assert_eq!(f.fake().destroy_calls(), destroys, "nothing destroyed");
    assert!(f.fake().runner_for("acme", &ended).is_some());
    assert!(f.events_of("runner.orphan_destroyed").await.is_empty());
}

/// With five orphans past their grace period and a cap of two destroys per round, each round
/// destroys two at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_destroys_never_pass_the_per_round_cap() {
    let timing = Timing {
        max_orphan_destroys: 2,
        ..timing(Duration::ZERO)
    };
    let f = Fixture::with_timing(limits(5), timing).await;
    f.pool(0, serde_json::json!({})).await;
    f.listings(1).await;
    let ended = f.ended_lease().await;
    for _ in 0..5 {
        f.fake().insert_orphan("acme", &ended).expect("orphan");
    }
    assert_eq!(f.fake().live_count(), 5);
    // Each round spawns all its destroys in one event; each is announced when it answers.
    f.round(T0 + MINUTE, 2).await;
    f.until_events("runner.orphan_destroyed", 2).await;
    assert_eq!(f.fake().live_count(), 3, "two destroyed by the first round");
    f.round(T0 + 2 * MINUTE, 3).await;
    f.until_events("runner.orphan_destroyed", 4).await;
    assert_eq!(f.fake().live_count(), 1, "two more by the second");
    f.round(T0 + 3 * MINUTE, 4).await;
    f.until_events("runner.orphan_destroyed", 5).await;
    assert_eq!(f.fake().live_count(), 0);
}

/// In report mode an orphan past its grace period is logged, counted and announced once with
/// `report_only: true`, and never destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_destroys_nothing() {
    let timing = Timing {
        reconcile_mode: ReconcileMode::Report,
        ..timing(Duration::ZERO)
    };
    let f = Fixture::with_timing(limits(5), timing).await;
    f.pool(0, serde_json::json!({})).await;
    f.listings(1).await;
    let ended = f.ended_lease().await;
    f.fake().insert_orphan("acme", &ended).expect("orphan");
    let destroys = f.fake().destroy_calls();
    f.round(T0 + MINUTE, 2).await;
    f.round(T0 + 2 * MINUTE, 3).await;
    f.round(T0 + 3 * MINUTE, 4).await;
    assert_eq!(f.fake().destroy_calls(), destroys, "nothing destroyed");
    assert!(f.fake().runner_for("acme", &ended).is_some());
    let reported = f.events_of("runner.orphan_destroyed").await;
    assert_eq!(reported.len(), 1, "reported once: {reported:?}");
    assert_eq!(reported[0]["report_only"], true);
    assert_eq!(reported[0]["lease_id"], ended.as_str());
    assert_eq!(
        f.ns.env().metrics.orphans_reported.load(Ordering::Relaxed),
        1
    );
}

/// A runner deleted behind berth's back (missing from two listings in a row) ends its ready
/// lease: `failed`, `runner_lost`, charged up to the last listing that showed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_deleted_behind_berths_back_ends_its_lease_as_runner_lost() {
    let f = Fixture::with_timing(limits(5), timing(Duration::from_secs(600))).await;
    f.pool(3_600_000, serde_json::json!({})).await; // 1,000 micros a second
    f.listings(1).await;
    let (lease, _) = f.request(3_600, 0).await.expect("granted");
    f.until(&lease.id, LeaseState::Ready).await;
    f.round(T0 + MINUTE, 2).await; // shows the runner
    assert!(f.fake().vanish("acme", &lease.id));
    f.round(T0 + 2 * MINUTE, 3).await; // a first miss is only noted
    assert_eq!(f.lease(&lease.id).await.state, LeaseState::Ready);
    f.round(T0 + 3 * MINUTE, 4).await; // the second ends the lease
    let lost = f.until(&lease.id, LeaseState::Failed).await;
    assert_eq!(lost.end_reason, Some(EndReason::RunnerLost));
    assert_eq!(
        lost.cost.charged_micros, 60_000,
        "charged up to the listing that last showed it (one minute)"
    );
    assert_eq!(lost.cost.reserved_micros, 0);
    assert!(
        lost.last_error
            .as_deref()
            .is_some_and(|e| e.contains("vanished")),
        "{lost:?}"
    );
    assert_eq!(f.ns.env().metrics.runners_lost.load(Ordering::Relaxed), 1);
}

/// A runner listed again after one miss is forgiven: its lease goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_missed_once_and_listed_again_keeps_its_lease() {
    let f = Fixture::with_timing(limits(5), timing(Duration::from_secs(600))).await;
    f.pool(0, serde_json::json!({})).await;
    f.listings(1).await;
    let (lease, _) = f.request(3_600, 0).await.expect("granted");
    f.until(&lease.id, LeaseState::Ready).await;
    f.round(T0 + MINUTE, 2).await;
    let runner = f.fake().runner_for("acme", &lease.id).expect("runner");
    assert!(f.fake().vanish("acme", &lease.id));
    f.round(T0 + 2 * MINUTE, 3).await;
    // It comes back (a listing that missed it, say): the next rounds see it.
    f.fake()
        .insert_orphan("acme", &lease.id)
        .expect("the runner again");
    f.round(T0 + 3 * MINUTE, 4).await; // listed again: the miss is forgotten
    assert_eq!(f.lease(&lease.id).await.state, LeaseState::Ready);
    drop(runner);
}

/// A destroy the provider refuses for good (permanent, as Hetzner's `protected`) raises
/// `runner.destroy_stuck` once, keeps the lease releasing with the reason shown, and is not
/// retried every few seconds; changing the account retries it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_refused_for_good_raises_destroy_stuck() {
    let f = Fixture::new(limits(5)).await;
    let refusing = serde_json::json!({ "destroy_failure_rate": 1.0, "failure": "permanent" });
    f.pool(0, refusing).await;
    let (lease, _) = f.request(3_600, 0).await.expect("granted");
    f.until(&lease.id, LeaseState::Ready).await;
    f.release(&lease.id).await;
    let stuck = f.until_events("runner.destroy_stuck", 1).await;
    assert_eq!(stuck[0]["lease_id"], lease.id.as_str());
    assert_eq!(stuck[0]["permanent"], true);
    assert_eq!(stuck[0]["account"], "cloud");
    let releasing = f.lease(&lease.id).await;
    assert_eq!(releasing.state, LeaseState::Releasing);
    assert!(releasing.stuck.is_some(), "{releasing:?}");
    let destroys = f.fake().destroy_calls();
    // Ten minutes later (the ordinary backoff would have retried several times): no retry.
    for minute in 1..=10 {
        f.clock.set(T0 + minute * MINUTE);
        let _ = f.lease(&lease.id).await;
    }
    assert_eq!(f.fake().destroy_calls(), destroys, "no hammering");
    assert_eq!(
        f.events_of("runner.destroy_stuck").await.len(),
        1,
        "announced once"
    );
    // The operator fixes the account: the destroy is retried at once and succeeds.
    f.pool(0, serde_json::json!({})).await;
    let released = f.until(&lease.id, LeaseState::Released).await;
    assert!(released.stuck.is_none());
    assert_eq!(f.fake().live_count(), 0);
}

/// Re-pointing an account that has a live runner (another cloud) is refused with
/// `account_in_use`; forced, it is accepted, and the runner is still destroyed where it
/// lives when its lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_pointing_a_live_account_is_refused_unless_forced() {
    let f = Fixture::new(limits(5)).await;
    f.pool(0, serde_json::json!({})).await;
    let (lease, _) = f.request(3_600, 0).await.expect("granted");
    f.until(&lease.id, LeaseState::Ready).await;
    let elsewhere = format!("{}-other", f.cloud);
    let put = |force: bool| tenant::PutProvider {
        name: "cloud".into(),
        account: wire::ProviderPut {
            kind: "fake".into(),
            config: serde_json::json!({ "cloud": elsewhere }),
            credentials: serde_json::json!({}),
        },
        by_operator: true,
        force,
    };
    match f.call(put(false)).await {
        Err(Rejection::AccountInUse(why)) => assert!(why.contains("live runner"), "{why}"),
        other => panic!("expected account_in_use, got {other:?}"),
    }
    // The same identity with other settings is no re-pointing.
    f.ok(tenant::PutProvider {
        name: "cloud".into(),
        account: wire::ProviderPut {
            kind: "fake".into(),
            config: serde_json::json!({ "cloud": f.cloud, "boot_delay_ms": 1 }),
            credentials: serde_json::json!({}),
        },
        by_operator: true,
        force: false,
    })
    .await;
    f.ok(put(true)).await;
    f.release(&lease.id).await;
    f.until(&lease.id, LeaseState::Released).await;
    assert!(
        f.fake().runner_for("acme", &lease.id).is_none(),
        "the runner was destroyed in the cloud it lives in"
    );
    assert_eq!(f.fake().live_count(), 0);
}

/// Two forced changes in a row: a runner made under the first identity is still destroyed
/// there, one made under the second there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_forced_changes_keep_each_runner_with_its_identity() {
    let f = Fixture::new(limits(5)).await;
    f.pool(0, serde_json::json!({})).await;
    let (first, _) = f.request(3_600, 0).await.expect("granted");
    f.until(&first.id, LeaseState::Ready).await;
    let to = |cloud: &str| tenant::PutProvider {
        name: "cloud".into(),
        account: wire::ProviderPut {
            kind: "fake".into(),
            config: serde_json::json!({ "cloud": cloud }),
            credentials: serde_json::json!({}),
        },
        by_operator: true,
        force: true,
    };
    let second_cloud = format!("{}-b", f.cloud);
    f.ok(to(&second_cloud)).await;
    let (second, _) = f.request(3_600, 0).await.expect("granted");
    f.until(&second.id, LeaseState::Ready).await;
    let second_fake = providers::fake::cloud_of("acme", &second_cloud);
    assert!(second_fake.runner_for("acme", &second.id).is_some());
    f.ok(to(&format!("{}-c", f.cloud))).await;
    for lease in [&first.id, &second.id] {
        f.release(lease).await;
        f.until(lease, LeaseState::Released).await;
    }
    assert_eq!(
        f.fake().live_count(),
        0,
        "the first runner, in the first cloud"
    );
    assert_eq!(second_fake.live_count(), 0, "the second, in the second");
}

/// A pool whose machine type is sold out falls back to its next alternative: the lease
/// records both attempts, takes the alternative's price, and its reservation follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_error_falls_back_to_the_next_alternative() {
    let f = Fixture::new(limits(5)).await;
    f.pool(3_600_000, serde_json::json!({ "sold_out": ["s"] }))
        .await;
    let pool = f
        .ok(tenant::PutPool {
            name: "small".into(),
            pool: wire::PoolPut {
                provider: "cloud".into(),
                machine_type: "s".into(),
                hourly_price_micros: Some(3_600_000),
                max_active: None,
                image: None,
                region: Some("fsn1".into()),
                command: None,
                labels: None,
                alternatives: Some(vec![wire::PoolAlternative {
                    machine_type: "m".into(),
                    region: Some("nbg1".into()),
                    hourly_price_micros: 7_200_000,
                }]),
                min_ready: None,
                max_ready: None,
                warm_ttl_s: None,
                github: None,
            },
            provider_price: None,
            by_operator: true,
        })
        .await;
    assert_eq!(pool.alternatives.len(), 1);
    let (lease, _) = f.request(600, 0).await.expect("granted");
    let ready = f.until(&lease.id, LeaseState::Ready).await;
    let tried: Vec<(&str, Option<&str>, Option<&str>)> = ready
        .provisioning_attempts
        .iter()
        .map(|a| {
            (
                a.machine_type.as_str(),
                a.region.as_deref(),
                a.error_class.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        tried,
        vec![
            ("s", Some("fsn1"), Some("capacity")),
            ("m", Some("nbg1"), None)
        ]
    );
    assert!(
        ready.provisioning_attempts[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("sold out"))
    );
    assert_eq!(ready.cost.hourly_price_micros, 7_200_000);
    assert_eq!(
        ready.cost.reserved_micros, 1_200_000,
        "600 s at 2,000 a second"
    );
    let runner = f.fake().runner_for("acme", &lease.id).expect("runner");
    assert_eq!(runner.metadata["machine_type"], "m");
    let reserved: Vec<i64> = f
        .ledger()
        .await
        .iter()
        .filter(|e| e.kind == LedgerKind::Reserve)
        .map(|e| e.amount_micros)
        .collect();
    assert_eq!(reserved, vec![600_000, 600_000], "the difference reserved");
    f.release(&lease.id).await;
    f.until(&lease.id, LeaseState::Released).await;
}

/// A pool whose every choice is sold out fails its lease with `provider_error`, every choice
/// tried once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alternative_sold_out_fails_the_lease() {
    let timing = Timing {
        create_attempts: 2,
        ..fast_timing()
    };
    let f = Fixture::with_timing(limits(5), timing).await;
    f.pool(0, serde_json::json!({ "sold_out": ["s", "m", "l"] }))
        .await;
    f.ok(tenant::PutPool {
        name: "small".into(),
        pool: wire::PoolPut {
            provider: "cloud".into(),
            machine_type: "s".into(),
            hourly_price_micros: Some(0),
            max_active: None,
            image: None,
            region: None,
            command: None,
            labels: None,
            alternatives: Some(
                ["m", "l"]
                    .map(|machine_type| wire::PoolAlternative {
                        machine_type: machine_type.into(),
                        region: None,
                        hourly_price_micros: 0,
                    })
                    .to_vec(),
            ),
            min_ready: None,
            max_ready: None,
            warm_ttl_s: None,
            github: None,
        },
        provider_price: None,
        by_operator: true,
    })
    .await;
    let (lease, _) = f.request(600, 0).await.expect("granted");
    // The last choice is retried like any capacity error, on the alarm, until the attempts
    // run out.
    for minute in 1..=10 {
        f.clock.set(T0 + minute * MINUTE);
        if f.lease(&lease.id).await.state.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failed = f.until(&lease.id, LeaseState::Failed).await;
    assert_eq!(failed.end_reason, Some(EndReason::ProviderError));
    let tried: Vec<&str> = failed
        .provisioning_attempts
        .iter()
        .map(|a| a.machine_type.as_str())
        .collect();
    assert_eq!(&tried[..3], ["s", "m", "l"]);
    assert!(
        failed
            .provisioning_attempts
            .iter()
            .all(|a| a.error_class.as_deref() == Some("capacity"))
    );
}
