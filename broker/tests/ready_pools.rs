//! Ready pools through the tenant object's API (no HTTP), with an injected clock, real SQLite
//! files and the `fake` provider: warm runners made ahead of demand, taken atomically by lease
//! requests, refilled, recycled after `warm_ttl_s`, retired when the pool wants fewer, and
//! paid for under ledger kinds of their own within the spend caps and the `max_warm` quota.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

mod fixture;

use broker::tenant::{self, Filter, Rejection};
use broker::wire::{self, EndReason, LeaseState, LedgerKind, LimitsPatch, QuotaPatch};
use fixture::{Fixture, T0, limits, ms};

/// Puts pool `small` (on the fixture's `cloud` account) as a ready pool.
async fn ready_pool(f: &Fixture, min_ready: i64, warm_ttl_s: Option<i64>) -> wire::Pool {
    f.call(put(min_ready, warm_ttl_s, 3_600_000))
        .await
        .expect("pool accepted")
}

fn put(min_ready: i64, warm_ttl_s: Option<i64>, price: i64) -> tenant::PutPool {
    tenant::PutPool {
        name: "small".into(),
        pool: wire::PoolPut {
            provider: "cloud".into(),
            machine_type: "s".into(),
            hourly_price_micros: Some(price),
            max_active: None,
            image: None,
            region: None,
            command: None,
            labels: None,
            alternatives: None,
            min_ready: Some(min_ready),
            max_ready: None,
            warm_ttl_s,
            github: None,
        },
        provider_price: None,
        by_operator: false,
    }
}

async fn pool(f: &Fixture) -> wire::Pool {
    f.ok(tenant::ListPools)
        .await
        .into_iter()
        .find(|p| p.name == "small")
        .expect("pool small")
}

/// Waits (bounded) until pool `small` has `ready` warm runners ready and none booting.
async fn warm_ready(f: &Fixture, ready: i64) -> wire::Pool {
    for _ in 0..2_000 {
        let pool = pool(f).await;
        if pool.warm.ready == ready && pool.warm.provisioning == 0 {
            return pool;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "pool never had {ready} warm runners ready: {:?}",
        pool(f).await
    );
}

async fn warm_leases(f: &Fixture) -> Vec<wire::Lease> {
    f.ok(tenant::ListLeases {
        filter: Filter {
            states: vec![LeaseState::Warm],
            limit: 1_000,
            ..Filter::default()
        },
    })
    .await
    .items
}

async fn request(f: &Fixture, ttl_s: i64) -> Result<tenant::Requested, Rejection> {
    f.call(tenant::RequestLease {
        request: wire::LeaseRequest {
            pool: "small".into(),
            ttl_s: Some(ttl_s),
            idle_timeout_s: None,
            wait_s: Some(0),
            labels: BTreeMap::from([("job".to_owned(), "1".to_owned())]),
        },
        idempotency_key: None,
    })
    .await
}

/// Per lease: reserve = release and warm_reserve = warm_release once everything ended, and
/// the usage report's charged sum is the ledger's charges (both kinds).
async fn assert_ledger_balances(f: &Fixture) {
    let ledger = f.ledger().await;
    let mut by_lease: BTreeMap<String, BTreeMap<&str, i64>> = BTreeMap::new();
    for entry in &ledger {
        *by_lease
            .entry(entry.lease_id.clone())
            .or_default()
            .entry(entry.kind.as_str())
            .or_default() += entry.amount_micros;
    }
    for (lease, kinds) in &by_lease {
        let get = |kind: LedgerKind| kinds.get(kind.as_str()).copied().unwrap_or(0);
        assert_eq!(
            get(LedgerKind::Reserve),
            get(LedgerKind::Release),
            "{lease}: {kinds:?}"
        );
        assert_eq!(
            get(LedgerKind::WarmReserve),
            get(LedgerKind::WarmRelease),
            "{lease}: {kinds:?}"
        );
    }
    let sum = |kind| -> i64 {
        ledger
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.amount_micros)
            .sum()
    };
    let usage = f
        .ok(tenant::Usage {
            period: broker::tenant::money::Period::Month,
            at: f.clock_now(),
        })
        .await;
    assert_eq!(
        usage.charged_micros,
        sum(LedgerKind::Charge) + sum(LedgerKind::WarmCharge)
    );
    assert_eq!(usage.warm_charged_micros, sum(LedgerKind::WarmCharge));
    assert_eq!(usage.reserved_micros, 0, "nothing is open");
}

trait Now {
    fn clock_now(&self) -> i64;
}

impl Now for Fixture {
    fn clock_now(&self) -> i64 {
        broker::objects::Clock::now_ms(&self.clock)
    }
}

/// A ready pool makes `min_ready` warm runners ahead of demand: leases of state `warm`, not
/// active, each reserving price × warm_ttl under `warm_reserve`, announced `pool.warm_ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_pool_keeps_min_ready_warm_runners() {
    let f = Fixture::new(limits(5)).await;
    f.pool(3_600_000, serde_json::json!({})).await;
    let answer = ready_pool(&f, 3, Some(600)).await;
    assert_eq!(
        (answer.min_ready, answer.max_ready, answer.warm_ttl_s),
        (3, 3, 600)
    );
    warm_ready(&f, 3).await;
    let warm = warm_leases(&f).await;
    assert_eq!(warm.len(), 3);
    for lease in &warm {
        assert_eq!(lease.state, LeaseState::Warm);
        assert!(lease.runner.as_ref().is_some_and(|r| r.warm));
        assert_eq!(lease.cost.reserved_micros, 600_000);
    }
    assert_eq!(f.fake().live_count(), 3);
    let status = f
        .ok(tenant::Status {
            with_deliveries: false,
        })
        .await;
    assert_eq!(status.active, 0, "warm runners are not active");
    assert_eq!((status.warm_ready, status.warm_provisioning), (3, 0));
    let reserves: Vec<(LedgerKind, i64)> = f
        .ledger()
        .await
        .iter()
        .map(|e| (e.kind, e.amount_micros))
        .collect();
    assert_eq!(reserves, vec![(LedgerKind::WarmReserve, 600_000); 3]);
    let ready_events = f
        .events()
        .await
        .iter()
        .filter(|e| e.kind.as_str() == "pool.warm_ready")
        .count();
    assert_eq!(ready_events, 3);
}

/// Concurrent requests against a ready pool: each warm runner goes to exactly one lease (the
/// object's single serial turn), every lease id and runner id handed out is distinct, a hit is
/// `ready` at once with `runner.warm`, and the pool refills to `min_ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_is_atomic_and_refill_keeps_min_ready() {
    let f = Fixture::new(limits(50)).await;
    f.pool(3_600_000, serde_json::json!({})).await;
    ready_pool(&f, 3, None).await;
    warm_ready(&f, 3).await;
    let warm_before: BTreeSet<String> = warm_leases(&f).await.into_iter().map(|l| l.id).collect();

    let answers = futures::future::join_all((0..20).map(|_| request(&f, 600))).await;
    let leases: Vec<wire::Lease> = answers
        .into_iter()
        .map(|a| a.expect("granted").lease)
        .collect();
    let ids: BTreeSet<&str> = leases.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids.len(), 20, "every lease id is distinct");
    let hits: Vec<&wire::Lease> = leases
        .iter()
        .filter(|l| l.runner.as_ref().is_some_and(|r| r.warm))
        .collect();
    assert!(
        hits.len() >= 3,
        "the 3 warm runners were taken: {}",
        hits.len()
    );
    for hit in &hits {
        assert_eq!(hit.state, LeaseState::Ready, "a hit is ready at once");
        assert_eq!(hit.labels.get("job").map(String::as_str), Some("1"));
        assert_eq!(hit.ttl_s, 600);
    }
    for id in &warm_before {
        assert!(
            ids.contains(id.as_str()),
            "warm runner {id} was taken, by one lease"
        );
    }
    // Every runner id is distinct too (once the cold ones have theirs).
    let mut runners = BTreeSet::new();
    for lease in &leases {
        let lease = f.until(&lease.id, LeaseState::Ready).await;
        let runner = lease.runner.and_then(|r| r.id).expect("runner id");
        assert!(
            runners.insert(runner.clone()),
            "runner {runner} handed out twice"
        );
    }
    let after = warm_ready(&f, 3).await;
    assert!(after.warm.hits >= 3);
    assert_eq!(after.warm.hits + after.warm.misses, 20);
    assert_eq!(f.fake().live_count(), 23, "20 leases and 3 warm runners");
    let taken = f
        .events()
        .await
        .iter()
        .filter(|e| e.kind.as_str() == "pool.warm_taken")
        .count();
    assert_eq!(u64::try_from(taken).expect("small"), after.warm.hits);
}

/// A warm runner not taken within `warm_ttl_s` is recycled (ended `ttl`, destroyed, charged
/// its waiting time under `warm_charge`) and replaced; the ledger balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_ttl_recycles() {
    let f = Fixture::new(limits(5)).await;
    f.pool(3_600_000, serde_json::json!({})).await;
    ready_pool(&f, 2, Some(60)).await;
    warm_ready(&f, 2).await;
    let first: BTreeSet<String> = warm_leases(&f).await.into_iter().map(|l| l.id).collect();
    f.clock.set(T0 + 59_999);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(warm_leases(&f).await.len(), 2, "not before warm_ttl_s");
    f.clock.set(T0 + 60_000);
    for id in &first {
        let recycled = f.until(id, LeaseState::Expired).await;
        assert_eq!(recycled.end_reason, Some(EndReason::Ttl));
        assert_eq!(recycled.cost.charged_micros, 60_000);
    }
    warm_ready(&f, 2).await;
    let second: BTreeSet<String> = warm_leases(&f).await.into_iter().map(|l| l.id).collect();
    assert!(first.is_disjoint(&second), "new warm runners replaced them");
    assert_eq!(f.fake().live_count(), 2);
    let recycled = f
        .events()
        .await
        .iter()
        .filter(|e| e.kind.as_str() == "pool.warm_recycled")
        .count();
    assert_eq!(recycled, 2);
    let warm_charges: Vec<i64> = f
        .ledger()
        .await
        .iter()
        .filter(|e| e.kind == LedgerKind::WarmCharge)
        .map(|e| e.amount_micros)
        .collect();
    assert_eq!(warm_charges, vec![60_000, 60_000]);
    // Retire the rest and check the books.
    f.ok(put(0, Some(60), 3_600_000)).await;
    for id in &second {
        let retired = f.until(id, LeaseState::Released).await;
        assert_eq!(retired.end_reason, Some(EndReason::WarmRetired));
    }
    assert_ledger_balances(&f).await;
}

/// Taking a warm runner charges its waiting time and releases its warm reservation, then the
/// lease reserves its own TTL and is charged from the take on; the ledger balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_balances_with_warm_kinds() {
    let f = Fixture::new(limits(5)).await;
    f.pool(3_600_000, serde_json::json!({})).await; // 1000 micros a second
    ready_pool(&f, 1, Some(600)).await;
    warm_ready(&f, 1).await;
    f.clock.set(T0 + 10_000);
    let lease = request(&f, 300).await.expect("granted").lease;
    assert!(lease.runner.as_ref().is_some_and(|r| r.warm));
    assert_eq!(lease.state, LeaseState::Ready);
    assert_eq!(
        ms(lease.expires_at.as_deref().expect("expires")),
        T0 + 310_000
    );
    assert_eq!(lease.cost.reserved_micros, 300_000);
    f.clock.set(T0 + 20_000);
    f.release(&lease.id).await;
    let released = f.until(&lease.id, LeaseState::Released).await;
    assert_eq!(
        released.cost.charged_micros, 20_000,
        "10 s warm + 10 s leased"
    );
    let rows: Vec<(LedgerKind, i64)> = f
        .ledger()
        .await
        .iter()
        .filter(|e| e.lease_id == lease.id)
        .map(|e| (e.kind, e.amount_micros))
        .collect();
    assert_eq!(
        rows,
        vec![
            (LedgerKind::WarmReserve, 600_000),
            (LedgerKind::WarmCharge, 10_000),
            (LedgerKind::WarmRelease, 600_000),
            (LedgerKind::Reserve, 300_000),
            (LedgerKind::Charge, 10_000),
            (LedgerKind::Release, 300_000),
        ]
    );
    f.ok(put(0, Some(600), 3_600_000)).await;
    for _ in 0..2_000 {
        if f.fake().live_count() == 0 && warm_leases(&f).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for _ in 0..2_000 {
        let open = f
            .ok(tenant::ListLeases {
                filter: Filter {
                    states: vec![LeaseState::Releasing],
                    limit: 10,
                    ..Filter::default()
                },
            })
            .await;
        if open.items.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_ledger_balances(&f).await;
}

/// Spend caps include warm runners: a pool makes no warm runner past a cap, and a request
/// whose reservation would pass the cap is refused (429 spend_cap) with the warm runner left
/// warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_caps_include_warm_runners() {
    let f = Fixture::new(LimitsPatch {
        max_active_leases: Some(5),
        spend_cap_daily_micros: Some(Some(2_500_000)),
        ..LimitsPatch::default()
    })
    .await;
    f.pool(3_600_000, serde_json::json!({})).await; // a warm hour reserves 3.6 M: too much
    ready_pool(&f, 3, Some(1_000)).await; // each reserves 1 M: two fit under 2.5 M
    warm_ready(&f, 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        warm_leases(&f).await.len(),
        2,
        "the third would pass the cap"
    );
    let usage = f
        .ok(tenant::Usage {
            period: broker::tenant::money::Period::Day,
            at: T0,
        })
        .await;
    assert_eq!(usage.reserved_micros, 2_000_000);
    // Taking one releases its 1 M and reserves 1.5 M: 2.5 M in all, which fits; a second
    // take of 1.5 M would make 3 M: refused, and that warm runner stays warm.
    let taken = request(&f, 1_500).await.expect("fits").lease;
    assert!(taken.runner.as_ref().is_some_and(|r| r.warm));
    let refused = request(&f, 1_500).await.expect_err("past the cap");
    assert!(matches!(refused, Rejection::SpendCap(_)), "{refused:?}");
    let warm = warm_leases(&f).await;
    assert_eq!(warm.len(), 1, "the other warm runner stays warm");
}

/// The quota's `max_warm` bounds the pools' min_ready; the tenant admin cannot lift it, and
/// the operator can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_warm_quota_bounds_ready_pools() {
    let f = Fixture::new(limits(5)).await;
    f.pool(3_600_000, serde_json::json!({})).await;
    f.ok(tenant::Patch {
        limits: LimitsPatch::default(),
        quota: Some(QuotaPatch {
            max_warm: Some(2),
            ..QuotaPatch::default()
        }),
        by_operator: true,
    })
    .await;
    let refused = f.call(put(3, None, 3_600_000)).await.expect_err("above");
    assert!(
        matches!(&refused, Rejection::QuotaExceeded(why) if why.contains("max_warm")),
        "{refused:?}"
    );
    // Nothing changed: the pool is not a ready pool.
    assert_eq!(pool(&f).await.min_ready, 0);
    ready_pool(&f, 2, None).await;
    warm_ready(&f, 2).await;
    let tenant = f.ok(tenant::Get).await;
    assert_eq!(tenant.quota.max_warm, 2);
    // Out-of-range values are refused.
    let bad = f
        .call(put(-1, None, 3_600_000))
        .await
        .expect_err("negative");
    assert!(matches!(bad, Rejection::Invalid(_)), "{bad:?}");
    let mut short_ttl = put(1, Some(5), 3_600_000);
    short_ttl.pool.warm_ttl_s = Some(5);
    let bad = f.call(short_ttl).await.expect_err("warm_ttl_s too short");
    assert!(matches!(bad, Rejection::Invalid(_)), "{bad:?}");
    let mut below = put(2, None, 3_600_000);
    below.pool.max_ready = Some(1);
    let bad = f.call(below).await.expect_err("max_ready below min_ready");
    assert!(matches!(bad, Rejection::Invalid(_)), "{bad:?}");
}

/// Lowering min_ready retires the surplus warm runners (ended `warm_retired`, destroyed);
/// changing the pool's runner settings replaces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_min_ready_retires_warm_runners() {
    let f = Fixture::new(limits(5)).await;
    f.pool(3_600_000, serde_json::json!({})).await;
    ready_pool(&f, 3, None).await;
    warm_ready(&f, 3).await;
    ready_pool(&f, 1, None).await;
    warm_ready(&f, 1).await;
    for _ in 0..2_000 {
        if f.fake().live_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(f.fake().live_count(), 1);
    let kept = warm_leases(&f).await;
    assert_eq!(kept.len(), 1);
    // A new price: the warm runner made at the old one is replaced.
    f.ok(put(1, None, 7_200_000)).await;
    f.until(&kept[0].id, LeaseState::Released).await;
    warm_ready(&f, 1).await;
    let fresh = warm_leases(&f).await;
    assert_eq!(fresh[0].cost.hourly_price_micros, 7_200_000);
    // A client cannot release a pool's warm runner.
    let refused = f
        .call(tenant::Release {
            id: fresh[0].id.clone(),
        })
        .await
        .expect_err("not a client's lease");
    assert!(matches!(refused, Rejection::Invalid(_)), "{refused:?}");
}

/// Warm runners survive a restart of the object: they are loaded again, still warm, and a
/// request after the restart takes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_runners_survive_a_restart() {
    let f = Fixture::new(limits(5)).await;
    f.pool(3_600_000, serde_json::json!({})).await;
    ready_pool(&f, 2, None).await;
    warm_ready(&f, 2).await;
    let f = f.restart().await;
    warm_ready(&f, 2).await;
    let lease = request(&f, 600).await.expect("granted").lease;
    assert!(lease.runner.as_ref().is_some_and(|r| r.warm));
    assert_eq!(lease.state, LeaseState::Ready);
    warm_ready(&f, 2).await;
    assert_eq!(f.fake().live_count(), 3);
}

/// A request that finds no warm runner ready grows the pool by one, up to `max_ready`; a
/// refill only keeps `min_ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_grows_the_pool_up_to_max_ready() {
    let f = Fixture::new(limits(10)).await;
    f.pool(3_600_000, serde_json::json!({ "boot_delay_ms": 300 }))
        .await;
    let mut grow = put(1, None, 3_600_000);
    grow.pool.max_ready = Some(3);
    f.ok(grow).await;
    warm_ready(&f, 1).await;
    let hit = request(&f, 600).await.expect("granted").lease;
    assert!(hit.runner.as_ref().is_some_and(|r| r.warm));
    // The refill boots for 300 ms: these find none ready.
    for _ in 0..4 {
        let miss = request(&f, 600).await.expect("granted").lease;
        assert!(!miss.runner.as_ref().is_some_and(|r| r.warm));
    }
    let grown = warm_ready(&f, 3).await;
    assert_eq!((grown.warm.hits, grown.warm.misses), (1, 4));
    assert_eq!(warm_leases(&f).await.len(), 3, "never past max_ready");
}
