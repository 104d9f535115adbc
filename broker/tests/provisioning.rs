//! Provisioning under provider faults, through the object API with an injected clock: no
//! lease is stuck, no runner leaks, the ledger balances, and a lease counts against the cap
//! for as long as its runner lives.

mod fixture;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use broker::tenant::money;
use broker::tenant::{self, Filter};
use broker::wire::{self, LeaseState, LimitsPatch};
use fixture::{Fixture, ms};
use providers::fake::EventKind;

const CAP: i64 = 20;
const PRICE: i64 = 3_600_000;

/// 500 leases against a `fake` provider failing 30 % of creates and 30 % of destroys: every
/// lease ends in a final state, every runner created is destroyed, the ledger balances with
/// exact charges, and the provider never held more live runners than the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_leases_under_thirty_percent_faults() {
    let f = Fixture::new(LimitsPatch {
        max_active_leases: Some(CAP),
        max_queued: Some(1_000),
        ..LimitsPatch::default()
    })
    .await;
    f.pool(
        PRICE,
        serde_json::json!({ "create_failure_rate": 0.3, "destroy_failure_rate": 0.3, "seed": 7 }),
    )
    .await;
    let mut rng = 0x853c_49e6_748f_ea9bu64;
    let mut next = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let mut ids = Vec::new();
    for _ in 0..500 {
        let ttl = 30 + next(300) as i64;
        let (lease, _) = f.request(ttl, 86_400).await.expect("granted or queued");
        ids.push(lease.id);
    }
    // Drive time: TTLs run out, retries come due; now and then a client releases a lease.
    let mut rounds = 0;
    loop {
        let open = open_leases(&f).await;
        if open.is_empty() {
            break;
        }
        rounds += 1;
        assert!(
            rounds < 5_000,
            "leases still open after {rounds} rounds: {}",
            open.len()
        );
        if next(3) == 0 {
            let pick = &open[next(open.len() as u64) as usize];
            f.release(pick).await;
        }
        f.clock.advance(Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let fake = f.fake();
    assert_eq!(
        fake.live_count(),
        0,
        "runners leaked: {:?}",
        fake.live_runners()
    );
    let counters = fake.counters();
    assert_eq!(counters.created_total, counters.destroyed_total);
    assert!(
        counters.create_failures > 50 && counters.destroy_failures > 50,
        "faults were injected: {counters:?}"
    );

    // The cap bounds live runners at every moment of the provider's history.
    let mut live = HashSet::new();
    let mut most = 0;
    for event in fake.history() {
        match event.kind {
            EventKind::Created => {
                live.insert(event.runner_id);
            }
            EventKind::Destroyed => {
                live.remove(&event.runner_id);
            }
            _ => {}
        }
        most = most.max(live.len());
    }
    assert!(
        most as i64 <= CAP,
        "{most} runners lived at once, cap {CAP}"
    );
    assert_eq!(
        most as i64, CAP,
        "the test must reach the cap to mean anything"
    );

    // Every lease ended, with a balanced ledger and an exact charge.
    let ledger = f
        .ok(tenant::Ledger {
            after: 0,
            limit: 100_000,
        })
        .await
        .items;
    let mut by_lease: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for entry in &ledger {
        let slot = by_lease.entry(entry.lease_id.clone()).or_default();
        match entry.kind {
            wire::LedgerKind::Reserve | wire::LedgerKind::WarmReserve => {
                slot.0 += entry.amount_micros
            }
            wire::LedgerKind::Release | wire::LedgerKind::WarmRelease => {
                slot.1 += entry.amount_micros
            }
            wire::LedgerKind::Charge | wire::LedgerKind::WarmCharge => {
                slot.2 += entry.amount_micros
            }
        }
    }
    let mut states = BTreeMap::new();
    for id in &ids {
        let lease = f.lease(id).await;
        assert!(lease.state.is_terminal(), "{lease:?}");
        *states.entry(format!("{:?}", lease.state)).or_insert(0) += 1;
        let (reserve, release, charge) = by_lease.get(id).copied().unwrap_or_default();
        assert_eq!(reserve, release, "{id}: open reservation left");
        assert_eq!(lease.cost.reserved_micros, 0);
        assert_eq!(charge, lease.cost.charged_micros);
        if let (Some(granted), Some(destroyed)) = (&lease.granted_at, &lease.runner_destroyed_at) {
            assert_eq!(
                charge,
                money::charge(PRICE, ms(granted), ms(destroyed)),
                "{id}"
            );
        }
    }
    assert!(
        states.get("Released").copied().unwrap_or(0) > 0,
        "{states:?}"
    );
    assert!(
        states.get("Expired").copied().unwrap_or(0) > 0,
        "{states:?}"
    );
}

async fn open_leases(f: &Fixture) -> Vec<String> {
    let filter = Filter {
        states: vec![
            LeaseState::Queued,
            LeaseState::Provisioning,
            LeaseState::Ready,
            LeaseState::Releasing,
        ],
        limit: 1_000,
        ..Filter::default()
    };
    f.ok(tenant::ListLeases { filter })
        .await
        .items
        .into_iter()
        .map(|l| l.id)
        .collect()
}
