//! Caps under concurrency, over real HTTP: 200 lease requests fired at once at one tenant get
//! exactly as many grants as the concurrency cap, the queue or the spend cap allows, and every
//! other request the right 429 — never one grant too many.

mod support;

use std::collections::BTreeSet;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::inproc::{Harness, SMALL_PRICE, Tenant};

const BURST: usize = 200;

/// Fires `BURST` identical lease requests at once; returns each answer's status and body.
async fn burst(h: &Harness, t: &Tenant, body: Value) -> Vec<(StatusCode, HeaderMap, Value)> {
    let requests = (0..BURST).map(|_| h.request_lease(t, body.clone()));
    futures::future::join_all(requests).await
}

/// How many answers have `status` and, for errors, `code`.
fn count(answers: &[(StatusCode, HeaderMap, Value)], status: u16, code: Option<&str>) -> usize {
    answers
        .iter()
        .filter(|(s, _, body)| s.as_u16() == status && body["code"].as_str() == code)
        .count()
}

/// The ids of the answers with `status`.
fn ids(answers: &[(StatusCode, HeaderMap, Value)], status: StatusCode) -> BTreeSet<String> {
    answers
        .iter()
        .filter(|(s, _, _)| *s == status)
        .map(|(_, _, lease)| lease["id"].as_str().expect("id").to_owned())
        .collect()
}

fn lease_ids(leases: &[Value]) -> BTreeSet<String> {
    leases
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The leases with reservations in the ledger, and their sum; checks there is one reservation
/// per lease unless `extended`.
async fn reservations_of(h: &Harness, t: &Tenant, extended: bool) -> (BTreeSet<String>, i64) {
    let rows = h.ledger_all(t).await;
    let reserves: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "reserve").collect();
    let leases: BTreeSet<String> = reserves
        .iter()
        .map(|r| r["lease_id"].as_str().expect("lease").to_owned())
        .collect();
    if !extended {
        assert_eq!(leases.len(), reserves.len(), "one reservation per lease");
    }
    let sum = reserves
        .iter()
        .map(|r| r["amount_micros"].as_i64().expect("amount"))
        .sum();
    (leases, sum)
}

async fn reservations(h: &Harness, t: &Tenant) -> (BTreeSet<String>, i64) {
    reservations_of(h, t, false).await
}

/// Waits until every granted lease is ready, then checks that the provider runs exactly one
/// runner per active lease.
async fn runners_match(h: &Harness, t: &Tenant, granted: &BTreeSet<String>) {
    for id in granted {
        h.wait_state(t, id, "ready").await;
    }
    let live: BTreeSet<String> = h
        .fake(&t.name)
        .live_runners()
        .into_iter()
        .filter(|r| r.tenant == t.name)
        .map(|r| r.lease_id)
        .collect();
    assert_eq!(&live, granted, "one runner per active lease, no more");
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// 200 concurrent requests at `max_active_leases: 10`: 10 are 201, 190 are `concurrency_cap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_cap_admits_exactly_the_cap() {
    // 200 concurrent requests at `max_active_leases: 10`: exactly 10 are granted (201) and 190
    // refused with 429 `concurrency_cap`; 10 leases are active, 10 reserved, 10 runners live.
    let h = Harness::start().await;
    let t = h
        .setup_tenant("acme", json!({ "max_active_leases": 10 }))
        .await;
    let answers = burst(&h, &t, json!({ "pool": "small", "ttl_s": 600 })).await;
    assert_eq!(count(&answers, 201, None), 10);
    assert_eq!(count(&answers, 429, Some("concurrency_cap")), BURST - 10);
    let granted = ids(&answers, StatusCode::CREATED);
    assert_eq!(granted.len(), 10, "ten distinct leases");
    let active = h.list_all(&t, "state=active").await;
    assert_eq!(lease_ids(&active), granted);
    assert_eq!(h.list_all(&t, "").await.len(), 10, "refusals made no lease");
    let (reserved, sum) = reservations(&h, &t).await;
    assert_eq!(reserved, granted);
    assert_eq!(sum, 10 * 600_000);
    runners_match(&h, &t, &granted).await;
    let text = h.metrics().await;
    assert_eq!(metric(&text, "berth_lease_grants_total"), 10);
    assert_eq!(
        metric(
            &text,
            "berth_lease_rejections_total{reason=\"concurrency_cap\"}"
        ),
        190
    );
    h.assert_documented().await;
}

/// 200 concurrent waiting requests, cap 10, `max_queued: 50`: 10 × 201, 50 × 202, 140 `queue_full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_admits_exactly_max_queued() {
    // 200 concurrent requests with `wait_s > 0` at `max_active_leases: 10, max_queued: 50`:
    // exactly 10 granted (201), 50 queued (202, queue positions 1–50) and 140 refused with 429
    // `queue_full`.
    let h = Harness::start().await;
    let t = h
        .setup_tenant("acme", json!({ "max_active_leases": 10, "max_queued": 50 }))
        .await;
    let answers = burst(
        &h,
        &t,
        json!({ "pool": "small", "ttl_s": 600, "wait_s": 3600 }),
    )
    .await;
    assert_eq!(count(&answers, 201, None), 10);
    assert_eq!(count(&answers, 202, None), 50);
    assert_eq!(count(&answers, 429, Some("queue_full")), BURST - 60);
    let granted = ids(&answers, StatusCode::CREATED);
    let queued = ids(&answers, StatusCode::ACCEPTED);
    assert_eq!((granted.len(), queued.len()), (10, 50));
    assert_eq!(lease_ids(&h.list_all(&t, "state=active").await), granted);
    let waiting = h.list_all(&t, "state=queued").await;
    assert_eq!(lease_ids(&waiting), queued);
    let positions: BTreeSet<i64> = waiting
        .iter()
        .map(|l| l["queue_position"].as_i64().expect("position"))
        .collect();
    assert_eq!(positions, (1..=50).collect(), "positions 1–50, each once");
    let (reserved, _) = reservations(&h, &t).await;
    assert_eq!(reserved, granted, "queued leases reserve nothing");
    runners_match(&h, &t, &granted).await;

    // Freeing one slot grants exactly the head of the queue.
    let head = waiting
        .iter()
        .find(|l| l["queue_position"] == 1)
        .expect("a head")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let first = granted.iter().next().expect("a lease").clone();
    let (status, _, _) = h
        .json(
            Method::POST,
            &t.path(&format!("/leases/{first}/release")),
            Some(&t.write),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    h.wait_state(&t, &head, "ready").await;
    let active = lease_ids(&h.list_all(&t, "state=active").await);
    assert_eq!(active.len(), 10);
    assert!(active.contains(&head) && !active.contains(&first));
    assert_eq!(h.list_all(&t, "state=queued").await.len(), 49);
    h.assert_documented().await;
}

/// 200 concurrent requests at a spend cap that fits 12 reservations: 12 are 201, 188 `spend_cap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_cap_admits_exactly_what_fits() {
    // 200 concurrent requests against a daily spend cap that holds exactly 12 reservations
    // (price × TTL = 100 000 of 1 250 000): exactly 12 granted, 188 refused with 429
    // `spend_cap`; the ledger's reservations stay within the cap.
    let h = Harness::start().await;
    let cap = 1_250_000;
    let t = h
        .setup_tenant(
            "acme",
            json!({ "max_active_leases": 1000, "spend_cap_daily_micros": cap }),
        )
        .await;
    // 1000 micros a second × 100 s.
    assert_eq!(SMALL_PRICE / 3600 * 100, 100_000);
    let answers = burst(&h, &t, json!({ "pool": "small", "ttl_s": 100 })).await;
    assert_eq!(count(&answers, 201, None), 12);
    assert_eq!(count(&answers, 429, Some("spend_cap")), BURST - 12);
    let granted = ids(&answers, StatusCode::CREATED);
    assert_eq!(lease_ids(&h.list_all(&t, "state=active").await), granted);
    let (reserved, sum) = reservations(&h, &t).await;
    assert_eq!(reserved, granted);
    assert_eq!(sum, 1_200_000);
    assert!(sum <= cap);
    let usage = h.get_ok(&t.path("/usage"), &t.read).await;
    assert_eq!(usage["reserved_micros"], 1_200_000);
    assert_eq!(usage["available_micros"], cap - 1_200_000);
    runners_match(&h, &t, &granted).await;
    let text = h.metrics().await;
    assert_eq!(
        metric(&text, "berth_lease_rejections_total{reason=\"spend_cap\"}"),
        188
    );

    // 200 concurrent TTL extensions of 10 s (10 000 each) into the 50 000 left: exactly 5.
    let granted: Vec<String> = granted.into_iter().collect();
    let paths: Vec<String> = (0..BURST)
        .map(|i| t.path(&format!("/leases/{}/heartbeat", granted[i % granted.len()])))
        .collect();
    let extensions = paths.iter().map(|path| {
        h.json(
            Method::POST,
            path,
            Some(&t.write),
            Some(json!({ "extend_ttl_s": 10 })),
        )
    });
    let answers = futures::future::join_all(extensions).await;
    assert_eq!(count(&answers, 200, None), 5);
    assert_eq!(count(&answers, 429, Some("spend_cap")), BURST - 5);
    let (_, sum) = reservations_of(&h, &t, true).await;
    assert_eq!(sum, cap, "reservations fill the cap exactly, never past it");
    let usage = h.get_ok(&t.path("/usage"), &t.read).await;
    assert_eq!(usage["available_micros"], 0);
    h.assert_documented().await;
}

/// 50 concurrent retries with one `Idempotency-Key` make one lease and one runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_with_one_idempotency_key_make_one_lease() {
    // 50 concurrent retries of one request with the same `Idempotency-Key`: one lease, one
    // runner, and every answer names it.
    let h = Harness::start().await;
    let t = h.setup_tenant("acme", json!({})).await;
    let path = t.path("/leases");
    let retries = (0..50).map(|_| {
        h.json_with(
            Method::POST,
            &path,
            Some(&t.write),
            Some(json!({ "pool": "small", "labels": { "job": "7" } })),
            &[("Idempotency-Key", "run-7-attempt-1")],
        )
    });
    let answers = futures::future::join_all(retries).await;
    let ids: BTreeSet<String> = answers
        .iter()
        .map(|(status, _, lease)| {
            assert_eq!(*status, StatusCode::CREATED, "{lease}");
            lease["id"].as_str().expect("id").to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "every retry names the same lease");
    runners_match(&h, &t, &ids).await;
    assert_eq!(h.list_all(&t, "").await.len(), 1);
    assert_eq!(
        h.fake(&t.name).created_total(),
        1,
        "one runner was ever made"
    );
    h.assert_documented().await;
}

/// 200 concurrent requests on a pool with `max_active: 7`: 7 are 201, the rest `concurrency_cap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_cap_admits_exactly_its_max_active() {
    // A pool's own `max_active` under 200 concurrent requests: exactly that many granted, the
    // rest 429 `concurrency_cap`, while another pool of the tenant still has room.
    let h = Harness::start().await;
    let t = h
        .setup_tenant("acme", json!({ "max_active_leases": 100 }))
        .await;
    let (status, _, _) = h
        .json(
            Method::PUT,
            &t.path("/pools/capped"),
            Some(&t.admin),
            Some(json!({
                "provider": "cloud", "machine_type": "s", "hourly_price_micros": 1, "max_active": 7,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let answers = burst(&h, &t, json!({ "pool": "capped" })).await;
    assert_eq!(count(&answers, 201, None), 7);
    assert_eq!(count(&answers, 429, Some("concurrency_cap")), BURST - 7);
    let granted = ids(&answers, StatusCode::CREATED);
    assert_eq!(
        lease_ids(&h.list_all(&t, "state=active&pool=capped").await),
        granted
    );
    h.grant(&t, json!({ "pool": "small" })).await;
    h.assert_documented().await;
}

/// A full object inbox answers 503 `overloaded` with `Retry-After`; a shed request does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_sheds_load_with_503() {
    // An object whose inbox is full sheds load: with an inbox of one message, 200 concurrent
    // requests get 201 or 503 `overloaded` (with `Retry-After`, nothing done): exactly the
    // answered 201s exist as leases and runners.
    let h = Harness::start_with(None, |config| config.inbox_capacity = 1).await;
    let t = h
        .setup_tenant("acme", json!({ "max_active_leases": 1000 }))
        .await;
    let mut granted = BTreeSet::new();
    let mut shed = 0;
    // Bounded: a burst of 200 against an inbox of one sheds at once in practice.
    for _ in 0..5 {
        let answers = burst(&h, &t, json!({ "pool": "small" })).await;
        shed += count(&answers, 503, Some("overloaded"));
        assert_eq!(
            count(&answers, 201, None) + count(&answers, 503, Some("overloaded")),
            BURST,
            "only grants and sheds"
        );
        granted.extend(ids(&answers, StatusCode::CREATED));
        if shed > 0 {
            break;
        }
    }
    assert!(shed > 0, "a full inbox answers 503");
    // The provider's completions come back through the same inbox of one: read (bounded,
    // retrying on 503 like a client would) until every lease is ready.
    let path = t.path("/leases?limit=1000");
    let mut leases = Vec::new();
    for _ in 0..500 {
        let (status, _, page) = h.json(Method::GET, &path, Some(&t.read), None).await;
        if status == StatusCode::OK {
            leases = page["items"].as_array().expect("items").clone();
            if leases.iter().all(|l| l["state"] == "ready") {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(lease_ids(&leases), granted, "a shed request made no lease");
    assert!(leases.iter().all(|l| l["state"] == "ready"));
    let live: BTreeSet<String> = h
        .fake(&t.name)
        .live_runners()
        .into_iter()
        .map(|r| r.lease_id)
        .collect();
    assert_eq!(live, granted, "one runner per lease");
    h.assert_documented().await;
}
