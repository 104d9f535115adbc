//! Restarts, over real HTTP: a server stopped gracefully and started again on the same data
//! directory (and clock) keeps every acknowledged lease, still fires its deadlines, grants its
//! queue into freed slots, and never grants a slot twice.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::inproc::{Harness, T0, Tenant, call_process, ms, rand_u128};

const CAP: usize = 2;

/// The active leases; asserts they never pass the cap.
async fn active(h: &Harness, t: &Tenant) -> BTreeSet<String> {
    let active: BTreeSet<String> = h
        .list_all(t, "state=active")
        .await
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_owned())
        .collect();
    assert!(
        active.len() <= CAP,
        "more active leases than the cap: {active:?}"
    );
    active
}

/// The leases whose runners live at the provider.
fn runners(h: &Harness, t: &Tenant) -> BTreeSet<String> {
    h.fake(&t.name)
        .live_runners()
        .into_iter()
        .filter(|r| r.tenant == t.name)
        .map(|r| r.lease_id)
        .collect()
}

/// Waits for `id` to reach `state`, checking the cap at every poll.
async fn settle(h: &Harness, t: &Tenant, id: &str, state: &str) -> Value {
    for _ in 0..300 {
        active(h, t).await;
        let lease = h.lease(t, id).await;
        if lease["state"] == state {
            return lease;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("lease {id} never reached {state}: {}", h.lease(t, id).await);
}

/// Leases by id, as the list shows them.
async fn all(h: &Harness, t: &Tenant) -> Vec<Value> {
    h.list_all(t, "").await
}

/// Leases survive graceful restarts on a manual clock: deadlines fire, nothing is granted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_graceful_restart() {
    // With a manual clock: two active leases (TTL 60 s and 600 s) and two queued ones (waits of
    // 3600 s and 30 s) survive a graceful restart unchanged; then the 30 s wait ends
    // (`queue_timeout`), the 60 s lease expires on time (`expired`, `end_reason: ttl`) and the
    // queued one is granted into its slot; a second restart and the last expiries leave nothing
    // running. The active count never passes the cap, the provider's live runners always equal
    // the active leases, and no lease ever got a second runner.
    let mut h = Harness::start_manual().await;
    let t = h
        .setup_tenant(
            "acme",
            json!({ "max_active_leases": CAP, "max_queued": 10 }),
        )
        .await;
    let id = |lease: &Value| lease["id"].as_str().expect("id").to_owned();
    let a = id(&h.grant(&t, json!({ "pool": "small", "ttl_s": 60 })).await);
    let b = id(&h.grant(&t, json!({ "pool": "small", "ttl_s": 600 })).await);
    h.wait_state(&t, &a, "ready").await;
    h.wait_state(&t, &b, "ready").await;
    let c_body = json!({ "pool": "small", "ttl_s": 600, "wait_s": 3600 });
    let c_key = [("Idempotency-Key", "restart-c")];
    let (status, _, c) = h
        .json_with(
            reqwest::Method::POST,
            &t.path("/leases"),
            Some(&t.write),
            Some(c_body.clone()),
            &c_key,
        )
        .await;
    assert_eq!(status, 202);
    let (status, _, d) = h
        .request_lease(&t, json!({ "pool": "small", "ttl_s": 600, "wait_s": 30 }))
        .await;
    assert_eq!(status, 202);
    let (c, d) = (id(&c), id(&d));
    let before = all(&h, &t).await;
    assert_eq!(before.len(), 4);
    assert_eq!(runners(&h, &t), BTreeSet::from([a.clone(), b.clone()]));

    h.restart().await;
    let after = all(&h, &t).await;
    assert_eq!(
        after, before,
        "every acknowledged lease is there, unchanged"
    );
    assert_eq!(active(&h, &t).await, BTreeSet::from([a.clone(), b.clone()]));
    assert_eq!(h.lease(&t, &c).await["queue_position"], 1);
    assert_eq!(h.lease(&t, &d).await["queue_position"], 2);
    // A retry with the same Idempotency-Key after the restart finds the same lease.
    let (status, _, replay) = h
        .json_with(
            reqwest::Method::POST,
            &t.path("/leases"),
            Some(&t.write),
            Some(c_body),
            &c_key,
        )
        .await;
    assert_eq!(
        (status.as_u16(), replay["id"].as_str()),
        (202, Some(c.as_str()))
    );
    assert_eq!(all(&h, &t).await.len(), 4);

    // The 30 s wait ends while both slots are taken.
    h.advance(Duration::from_secs(30));
    let canceled = settle(&h, &t, &d, "canceled").await;
    assert_eq!(canceled["end_reason"], "queue_timeout");
    assert_eq!(ms(&canceled["ended_at"]), T0 + 30_000);
    assert_eq!(h.lease(&t, &c).await["state"], "queued");
    assert_eq!(h.lease(&t, &c).await["queue_position"], 1);

    // The 60 s TTL runs out: a expires on time and c takes its slot.
    h.advance(Duration::from_secs(30));
    let expired = settle(&h, &t, &a, "expired").await;
    assert_eq!(expired["end_reason"], "ttl");
    assert_eq!(ms(&expired["ended_at"]), T0 + 60_000);
    assert_eq!(expired["cost"]["charged_micros"], 60_000, "60 s at 1000/s");
    let granted = settle(&h, &t, &c, "ready").await;
    assert_eq!(ms(&granted["granted_at"]), T0 + 60_000);
    assert_eq!(ms(&granted["expires_at"]), T0 + 660_000);
    assert_eq!(active(&h, &t).await, BTreeSet::from([b.clone(), c.clone()]));
    assert_eq!(runners(&h, &t), BTreeSet::from([b.clone(), c.clone()]));

    // A second restart; then b (T0 + 600 s) and c (T0 + 660 s) expire.
    h.restart().await;
    assert_eq!(active(&h, &t).await, BTreeSet::from([b.clone(), c.clone()]));
    h.advance(Duration::from_secs(540));
    let b_end = settle(&h, &t, &b, "expired").await;
    assert_eq!(ms(&b_end["ended_at"]), T0 + 600_000);
    assert_eq!(h.lease(&t, &c).await["state"], "ready");
    h.advance(Duration::from_secs(60));
    let c_end = settle(&h, &t, &c, "expired").await;
    assert_eq!(c_end["end_reason"], "ttl");
    assert_eq!(ms(&c_end["ended_at"]), T0 + 660_000);
    assert!(active(&h, &t).await.is_empty());
    assert!(runners(&h, &t).is_empty(), "every runner was destroyed");

    // Nothing was granted twice: three runners were ever made, one per granted lease, and the
    // ledger reserved each granted lease once and released each reservation once.
    assert_eq!(h.fake(&t.name).created_total(), 3);
    assert_eq!(h.fake(&t.name).destroyed_total(), 3);
    let rows = h.ledger_all(&t).await;
    for kind in ["reserve", "release", "charge"] {
        let leases: Vec<&str> = rows
            .iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["lease_id"].as_str().expect("lease"))
            .collect();
        let distinct: BTreeSet<&str> = leases.iter().copied().collect();
        assert_eq!(leases.len(), 3, "{kind}: {leases:?}");
        assert_eq!(
            distinct,
            BTreeSet::from([a.as_str(), b.as_str(), c.as_str()]),
            "{kind}"
        );
    }
    let ended = h.list_all(&t, "state=ended").await;
    assert_eq!(ended.len(), 4);
}

/// TTLs and queue waits that ran out while the server was down fire when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_passed_while_down_fire_after_restart() {
    // A queued lease whose wait ends while the server is down is canceled (`queue_timeout`) when
    // the server is back, and a lease whose TTL ran out during the downtime expires at once; the
    // freed slot goes to the next queued lease.
    let mut h = Harness::start_manual().await;
    let t = h
        .setup_tenant("acme", json!({ "max_active_leases": 1, "max_queued": 10 }))
        .await;
    let id = |lease: &Value| lease["id"].as_str().expect("id").to_owned();
    let a = id(&h.grant(&t, json!({ "pool": "small", "ttl_s": 60 })).await);
    h.wait_state(&t, &a, "ready").await;
    let (status, _, short) = h
        .request_lease(&t, json!({ "pool": "small", "wait_s": 10 }))
        .await;
    assert_eq!(status, 202);
    let (status, _, long) = h
        .request_lease(&t, json!({ "pool": "small", "ttl_s": 300, "wait_s": 3600 }))
        .await;
    assert_eq!(status, 202);
    let (short, long) = (id(&short), id(&long));
    h.stop().await;
    h.advance(Duration::from_secs(120));
    h.start_again().await;
    let canceled = h.wait_state(&t, &short, "canceled").await;
    assert_eq!(canceled["end_reason"], "queue_timeout");
    let expired = h.wait_state(&t, &a, "expired").await;
    assert_eq!(expired["end_reason"], "ttl");
    let granted = h.wait_state(&t, &long, "ready").await;
    assert!(ms(&granted["granted_at"]) >= T0 + 60_000);
    assert_eq!(active(&h, &t).await, BTreeSet::from([long.clone()]));
    assert_eq!(runners(&h, &t), BTreeSet::from([long]));
}

/// A graceful stop answers a long poll at once with the lease as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_answer_when_the_server_stops() {
    // A graceful stop answers a long poll at once with the lease as it is (the client does not
    // hang until its timeout), and the lease is unchanged when the server is back.
    let mut h = Harness::start_manual().await;
    let t = h.setup_tenant("acme", json!({})).await;
    let lease = h.grant(&t, json!({ "pool": "small", "ttl_s": 600 })).await;
    let id = lease["id"].as_str().expect("id").to_owned();
    let ready = h.wait_state(&t, &id, "ready").await;
    let poll = {
        let request = h
            .client
            .get(format!(
                "{}{}",
                h.url,
                t.path(&format!("/leases/{id}?wait=ended&timeout_s=300"))
            ))
            .bearer_auth(&t.read);
        tokio::spawn(async move {
            let response = request.send().await.expect("the long poll answers");
            (
                response.status(),
                response.json::<Value>().await.expect("json"),
            )
        })
    };
    // Stop only once the poll is waiting (if it were not, it would fail to connect).
    h.wait_in_flight(1).await;
    h.stop().await;
    let (status, answered) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the poll answered when the server stopped")
        .expect("poll task");
    assert_eq!(status, 200);
    assert_eq!(answered["state"], "ready");
    h.start_again().await;
    assert_eq!(h.lease(&t, &id).await, ready);
}

/// One request to a real `berth` process; the answer is checked like the harness's.
async fn call(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (status, value, _) = call_process(client, base, method, path, token, body).await;
    (status, value)
}

/// `kill -9` of the real binary loses no acknowledged lease and leaks no runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_leases_survive_kill_9() {
    // `kill -9` of the real binary right after it answered loses nothing it acknowledged: after
    // a restart every lease answered 201 or 202 is there, the released one ends, the queue is
    // granted into the freed slot, and the provider's runners (mirrored to disk by the `fake`
    // provider) end up exactly the active leases.
    let dir = tempfile::tempdir().expect("tempdir");
    let runners_dir = tempfile::tempdir().expect("tempdir");
    let runners_path = runners_dir.path().display().to_string();
    let admin = format!("adm_{:032x}", rand_u128());
    let env = [("BERTH_ADMIN_TOKEN", admin.as_str())];
    let flags = ["--enable-fake", "--runners-dir", runners_path.as_str()];
    let server = support::Server::start_with_env(dir.path(), &flags, &env);
    let client = reqwest::Client::new();
    let base = server.url.clone();
    let (status, _) = call(
        &client,
        &base,
        Method::POST,
        "/v1/tenants",
        &admin,
        Some(json!({ "name": "acme", "limits": { "max_active_leases": 3 } })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let cloud = format!("kill9-{:016x}", rand_u128() as u64);
    let (status, _) = call(
        &client,
        &base,
        Method::PUT,
        "/v1/tenants/acme/providers/cloud",
        &admin,
        Some(json!({ "kind": "fake", "config": { "cloud": cloud, "state_dir": runners_dir.path() } })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &client,
        &base,
        Method::PUT,
        "/v1/tenants/acme/pools/small",
        &admin,
        Some(json!({ "provider": "cloud", "machine_type": "s", "hourly_price_micros": 3_600_000 })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut acknowledged = Vec::new();
    for n in 0..5 {
        let (status, lease) = call(
            &client,
            &base,
            Method::POST,
            "/v1/tenants/acme/leases",
            &admin,
            Some(json!({ "pool": "small", "wait_s": 600, "labels": { "n": n.to_string() } })),
        )
        .await;
        let expected = if n < 3 {
            StatusCode::CREATED
        } else {
            StatusCode::ACCEPTED
        };
        assert_eq!(status, expected, "{lease}");
        acknowledged.push(lease["id"].as_str().expect("id").to_owned());
    }
    let released = acknowledged[0].clone();
    let (status, _) = call(
        &client,
        &base,
        Method::POST,
        &format!("/v1/tenants/acme/leases/{released}/release"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    server.kill();

    let flags = ["--enable-fake", "--runners-dir", runners_path.as_str()];
    let server = support::Server::start_with_env(dir.path(), &flags, &env);
    let base = server.url.clone();
    let (status, page) = call(
        &client,
        &base,
        Method::GET,
        "/v1/tenants/acme/leases",
        &admin,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let listed: BTreeSet<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(
        listed,
        acknowledged.iter().cloned().collect::<BTreeSet<_>>(),
        "every acknowledged lease survived"
    );
    let wait = async |id: &str, wait: &str| {
        let path = format!("/v1/tenants/acme/leases/{id}?wait={wait}&timeout_s=10");
        call(&client, &base, Method::GET, &path, &admin, None)
            .await
            .1
    };
    let ended = wait(&released, "ended").await;
    assert_eq!(ended["state"], "released", "{ended}");
    for id in &acknowledged[1..4] {
        let lease = wait(id, "ready").await;
        assert_eq!(lease["state"], "ready", "{lease}");
    }
    let (_, still_queued) = call(
        &client,
        &base,
        Method::GET,
        &format!("/v1/tenants/acme/leases/{}", acknowledged[4]),
        &admin,
        None,
    )
    .await;
    assert_eq!(still_queued["state"], "queued");
    assert_eq!(still_queued["queue_position"], 1);
    // The runners on disk settle to exactly the active leases (orphans are reconciled away).
    let active: BTreeSet<String> = acknowledged[1..4].iter().cloned().collect();
    let mut on_disk = BTreeSet::new();
    for _ in 0..500 {
        on_disk = providers::fake::read_state_dir(runners_dir.path())
            .expect("state dir")
            .into_iter()
            .map(|r| r.lease_id)
            .collect();
        if on_disk == active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(on_disk, active, "one runner per active lease");
    assert!(server.terminate().success());
}
