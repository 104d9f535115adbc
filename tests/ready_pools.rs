//! Ready pools through the real binary: 200 concurrent lease requests against a pool with
//! `min_ready 5` never hand one warm runner to two leases, refills bring the pool back to 5
//! ready, a kill -9 with warm runners leaks no runner, and a tenant admin cannot lift the
//! `max_warm` quota. The `fake` provider mirrors its runners to a directory, so the test
//! reads the cloud from outside the server. 127.0.0.1 only; every loop bounded.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::Server;

const TENANT: &str = "warm";
const FLAGS: [&str; 5] = [
    "--reconcile-interval",
    "1s",
    "--orphan-grace",
    "0s",
    "--enable-fake",
];

async fn must(server: &Server, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
    let (status, value) = server.call(method, path, body).await;
    assert_eq!(status, want, "{method} {path}: {value}");
    value
}

/// A tenant with room for 250 active leases, a `fake` account mirrored to `cloud` and a
/// pool `small` keeping `min_ready` warm runners.
async fn setup(server: &Server, cloud: &Path, min_ready: i64) {
    let body = json!({ "name": TENANT, "limits": { "max_active_leases": 250 } });
    must(server, "POST", "/v1/tenants", Some(body), 201).await;
    let account = json!({
        "kind": "fake",
        "config": { "cloud": format!("warm-{}", std::process::id()), "state_dir": cloud },
    });
    let path = format!("/v1/tenants/{TENANT}/providers/fake");
    must(server, "PUT", &path, Some(account), 200).await;
    set_pool(server, min_ready).await;
}

async fn set_pool(server: &Server, min_ready: i64) -> Value {
    let pool = json!({
        "provider": "fake",
        "machine_type": "m",
        "hourly_price_micros": 3_600_000,
        "min_ready": min_ready,
        "warm_ttl_s": 3_600,
    });
    let path = format!("/v1/tenants/{TENANT}/pools/small");
    must(server, "PUT", &path, Some(pool), 200).await
}

async fn pool(server: &Server) -> Value {
    let pools = must(
        server,
        "GET",
        &format!("/v1/tenants/{TENANT}/pools"),
        None,
        200,
    )
    .await;
    pools["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["name"] == "small"))
        .cloned()
        .expect("pool small")
}

/// Waits (bounded) until the pool has `ready` warm runners ready and none booting.
async fn warm_ready(server: &Server, ready: i64) -> Value {
    for _ in 0..600 {
        let pool = pool(server).await;
        if pool["warm"]["ready"] == ready && pool["warm"]["provisioning"] == 0 {
            return pool;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the pool never had {ready} warm runners ready: {}",
        pool(server).await
    );
}

/// Ids of the tenant's leases in `state` (a state, `active` or `ended`).
async fn lease_ids(server: &Server, state: &str) -> BTreeSet<String> {
    let path = format!("/v1/tenants/{TENANT}/leases?state={state}&limit=1000");
    let page = must(server, "GET", &path, None, 200).await;
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|lease| lease["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The lease ids of the runners the fake cloud holds now.
fn cloud_runners(cloud: &Path) -> BTreeSet<String> {
    providers::fake::read_state_dir(cloud)
        .expect("cloud dir")
        .into_iter()
        .map(|runner| runner.lease_id)
        .collect()
}

/// Waits (bounded) until every runner in the cloud belongs to an open lease (warm or
/// active) and every open lease past its create has one: nothing leaked.
async fn no_leaks(server: &Server, cloud: &Path) {
    let mut last = (BTreeSet::new(), BTreeSet::new());
    for _ in 0..300 {
        let mut open = lease_ids(server, "warm").await;
        open.extend(lease_ids(server, "active").await);
        let runners = cloud_runners(cloud);
        if runners.is_subset(&open) {
            return;
        }
        last = (runners, open);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "runners without a live lease: {:?}",
        last.0.difference(&last.1).collect::<Vec<_>>()
    );
}

/// Releases every active lease, lowers min_ready to 0, and waits (bounded) until the cloud
/// is empty.
async fn wind_down(server: &Server, cloud: &Path) {
    set_pool(server, 0).await;
    for id in lease_ids(server, "active").await {
        let path = format!("/v1/tenants/{TENANT}/leases/{id}");
        let (status, _) = server.call("DELETE", &path, None).await;
        assert!(status == 200 || status == 202, "release {id}: {status}");
    }
    for _ in 0..300 {
        if cloud_runners(cloud).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "runners left after winding down: {:?}",
        cloud_runners(cloud)
    );
}

/// 200 concurrent requests against a pool with `min_ready 5`: every lease id and runner id
/// handed out is distinct (no warm runner went to two leases), some requests took a warm
/// runner and were `ready` at once, and the pool refills to 5 ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_never_share_a_warm_runner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cloud = dir.path().join("berth-runners").join("cloud");
    let server = Server::start(&data, &FLAGS);
    setup(&server, &cloud, 5).await;
    let before = warm_ready(&server, 5).await;
    assert_eq!(before["min_ready"], 5);
    let warm_before = lease_ids(&server, "warm").await;
    assert_eq!(warm_before.len(), 5);

    let client = reqwest::Client::new();
    let token = server.admin_token();
    let url = format!("{}/v1/tenants/{TENANT}/leases", server.url);
    let requests = (0..200).map(|i| {
        let request = client
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({ "pool": "small", "ttl_s": 600, "labels": { "n": i.to_string() } }));
        async move {
            let response = request.send().await.expect("berth answers");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            (status, body)
        }
    });
    let answers = futures::future::join_all(requests).await;
    let mut ids = BTreeSet::new();
    let mut hits = 0;
    for (status, lease) in &answers {
        assert_eq!(*status, 201, "{lease}");
        assert!(
            ids.insert(lease["id"].as_str().expect("id").to_owned()),
            "lease id handed out twice: {lease}"
        );
        if lease["runner"]["warm"] == true {
            hits += 1;
            assert_eq!(
                lease["state"], "ready",
                "a warm hit is ready at once: {lease}"
            );
        }
    }
    assert_eq!(ids.len(), 200);
    assert!(hits >= 1, "no request took a warm runner");
    eprintln!("200 concurrent requests: {hits} took a warm runner");
    for id in &warm_before {
        assert!(ids.contains(id), "warm runner {id} was not handed out");
    }
    let mut runners = BTreeSet::new();
    for id in &ids {
        let lease = server.wait_lease(TENANT, id, "ready").await;
        assert_eq!(lease["state"], "ready", "{lease}");
        let runner = lease["runner"]["id"]
            .as_str()
            .expect("runner id")
            .to_owned();
        assert!(runners.insert(runner), "runner handed out twice: {lease}");
    }

    // Refills keep the count: back to 5 ready warm runners after the burst.
    let after = warm_ready(&server, 5).await;
    let taken = after["warm"]["hits"].as_u64().expect("hits");
    assert!(taken >= 5, "{after}");
    assert_eq!(
        taken + after["warm"]["misses"].as_u64().expect("misses"),
        200
    );
    assert_eq!(
        usize::try_from(taken).expect("small"),
        hits,
        "the pool's hits are the answers' warm runners"
    );
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("berth_warm_runners{state=\"ready\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_pool_warm_total{outcome=\"hit\"}"),
        "{metrics}"
    );
    no_leaks(&server, &cloud).await;
    wind_down(&server, &cloud).await;
}

/// kill -9 of berth while it holds warm runners and is making more: after the restart,
/// reconciliation adopts or destroys, the pool is back at its min_ready, and every runner the
/// provider holds belongs to a live lease; winding down leaves the cloud empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_warm_runners_leaks_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cloud = dir.path().join("berth-runners").join("cloud");
    let server = Server::start(&data, &FLAGS);
    setup(&server, &cloud, 5).await;
    warm_ready(&server, 5).await;
    // Take two, raise min_ready, and kill the server while the refills are in flight.
    for _ in 0..2 {
        let body = json!({ "pool": "small", "ttl_s": 600 });
        let lease = must(
            &server,
            "POST",
            &format!("/v1/tenants/{TENANT}/leases"),
            Some(body),
            201,
        )
        .await;
        assert_eq!(lease["runner"]["warm"], true, "{lease}");
    }
    set_pool(&server, 8).await;
    server.kill();
    let server = Server::start(&data, &FLAGS);
    warm_ready(&server, 8).await;
    // Two reconciliation rounds (1 s apart) have passed before this is checked.
    tokio::time::sleep(Duration::from_secs(3)).await;
    no_leaks(&server, &cloud).await;
    assert_eq!(lease_ids(&server, "warm").await.len(), 8);
    assert_eq!(lease_ids(&server, "active").await.len(), 2);
    assert_eq!(cloud_runners(&cloud).len(), 10);
    // Once more, right after a burst of takes.
    for _ in 0..4 {
        let body = json!({ "pool": "small", "ttl_s": 600 });
        must(
            &server,
            "POST",
            &format!("/v1/tenants/{TENANT}/leases"),
            Some(body),
            201,
        )
        .await;
    }
    server.kill();
    let server = Server::start(&data, &FLAGS);
    warm_ready(&server, 8).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    no_leaks(&server, &cloud).await;
    wind_down(&server, &cloud).await;
    // The ledger balances: every reservation, warm or not, was released.
    let ledger = must(
        &server,
        "GET",
        &format!("/v1/tenants/{TENANT}/ledger?limit=1000"),
        None,
        200,
    )
    .await;
    let mut balance = std::collections::BTreeMap::<(String, bool), i64>::new();
    for row in ledger["items"].as_array().expect("items") {
        let lease = row["lease_id"].as_str().expect("lease").to_owned();
        let amount = row["amount_micros"].as_i64().expect("amount");
        match row["kind"].as_str().expect("kind") {
            "reserve" => *balance.entry((lease, false)).or_default() += amount,
            "release" => *balance.entry((lease, false)).or_default() -= amount,
            "warm_reserve" => *balance.entry((lease, true)).or_default() += amount,
            "warm_release" => *balance.entry((lease, true)).or_default() -= amount,
            "charge" | "warm_charge" => {}
            other => panic!("unknown ledger kind {other}"),
        }
    }
    for ((lease, warm), left) in balance {
        assert_eq!(
            left, 0,
            "{lease} (warm: {warm}) reserved and released differ"
        );
    }
}

/// The quota's `max_warm` is the operator's: a tenant admin's token can neither raise it nor
/// set pools whose min_ready pass it (403), and the operator can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_admin_cannot_lift_max_warm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cloud = dir.path().join("berth-runners").join("cloud");
    let server = Server::start(&data, &FLAGS);
    setup(&server, &cloud, 0).await;
    let tenant = must(&server, "GET", &format!("/v1/tenants/{TENANT}"), None, 200).await;
    assert_eq!(tenant["quota"]["max_warm"], 10, "{tenant}");
    let created = must(
        &server,
        "POST",
        &format!("/v1/tenants/{TENANT}/tokens"),
        Some(json!({ "scopes": ["tenant:admin"], "name": "admin" })),
        201,
    )
    .await;
    let token = created["token"].as_str().expect("token").to_owned();
    let client = reqwest::Client::new();
    let as_tenant = |method: reqwest::Method, path: String, body: Value| {
        client
            .request(method, format!("{}{path}", server.url))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let raise = as_tenant(
        reqwest::Method::PATCH,
        format!("/v1/tenants/{TENANT}"),
        json!({ "quota": { "max_warm": 50 } }),
    )
    .await
    .expect("answer");
    assert_eq!(raise.status().as_u16(), 403);
    let pool = json!({ "provider": "fake", "machine_type": "m", "hourly_price_micros": 1, "min_ready": 11 });
    let refused = as_tenant(
        reqwest::Method::PUT,
        format!("/v1/tenants/{TENANT}/pools/small"),
        pool.clone(),
    )
    .await
    .expect("answer");
    assert_eq!(refused.status().as_u16(), 403);
    let problem: Value = refused.json().await.expect("problem");
    assert_eq!(problem["code"], "quota_exceeded", "{problem}");
    let tenant = must(&server, "GET", &format!("/v1/tenants/{TENANT}"), None, 200).await;
    assert_eq!(tenant["quota"]["max_warm"], 10);
    // The operator raises it; then the same pool is accepted.
    must(
        &server,
        "PATCH",
        &format!("/v1/tenants/{TENANT}"),
        Some(json!({ "quota": { "max_warm": 11 } })),
        200,
    )
    .await;
    let accepted = as_tenant(
        reqwest::Method::PUT,
        format!("/v1/tenants/{TENANT}/pools/small"),
        json!({ "provider": "fake", "machine_type": "m", "hourly_price_micros": 1, "min_ready": 1 }),
    )
    .await
    .expect("answer");
    assert_eq!(accepted.status().as_u16(), 200);
    let bad = as_tenant(
        reqwest::Method::PUT,
        format!("/v1/tenants/{TENANT}/pools/small"),
        json!({ "provider": "fake", "machine_type": "m", "hourly_price_micros": 1, "min_ready": 2, "max_ready": 1 }),
    )
    .await
    .expect("answer");
    assert_eq!(bad.status().as_u16(), 422);
    wind_down(&server, &cloud).await;
}
