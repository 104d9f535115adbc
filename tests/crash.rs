//! Crash suite: the real binary under load, SIGKILLed at random moments and restarted on the
//! same data directory, several times per run. Afterwards, from the API, the ledger and the
//! provider's own records:
//!
//! - every lease acknowledged with 201/202 exists;
//! - at no moment were more leases active than the cap (replayed from the ledger, in the
//!   object's commit order);
//! - the ledger balances: every lease's reservations are released exactly once;
//! - every lease ends, its runner is gone, and no runner outlives its lease;
//! - leases whose TTL ran out while the server was down are expired after the restart.
//!
//! Bounded in time and count, 127.0.0.1 only, fixed seed. Knobs: `BERTH_CRASH_SEED` (default
//! 0x5eed), `BERTH_CRASH_CYCLES` (kills per run, default 8), `BERTH_CRASH_LONG=1` (40 kills).
//! The `fake` provider mirrors its runners to a directory, so the cloud outlives the server
//! and the test reads it from outside; it fails 10 % of creates and destroys.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::Server;

const TENANTS: [&str; 3] = ["crash-a", "crash-b", "crash-c"];
/// A tenant without load or injected faults, whose leases must expire while berth is down.
const QUIET: &str = "crash-quiet";
const CAP: i64 = 3;
const CLIENTS: usize = 12;
/// 1 micro-unit per millisecond: every reservation and charge is non-zero, so the ledger has
/// a row for every grant and every end.
const PRICE_PER_HOUR: i64 = 3_600_000;

struct Settings {
    seed: u64,
    cycles: usize,
}

fn settings() -> Settings {
    let env = |name: &str| std::env::var(name).ok();
    let seed = env("BERTH_CRASH_SEED")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let long = env("BERTH_CRASH_LONG").is_some_and(|v| v == "1");
    let cycles = env("BERTH_CRASH_CYCLES")
        .and_then(|s| s.parse().ok())
        .unwrap_or(if long { 40 } else { 8 });
    Settings { seed, cycles }
}

/// What the clients see of the server across restarts.
struct Target {
    url: RwLock<String>,
    token: String,
    client: reqwest::Client,
}

impl Target {
    /// One request; `None` when the server is not there (killed, restarting).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        let url = format!("{}{path}", self.url.read().expect("url lock"));
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.ok()?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Some((status, value))
    }

    /// A call that must succeed with `want`.
    async fn must(&self, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let (status, value) = self
            .call(method, path, body)
            .await
            .unwrap_or_else(|| panic!("{method} {path}: berth did not answer"));
        assert_eq!(status, want, "{method} {path}: {value}");
        value
    }
}

/// Counts of what the run did, for the report at the end.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    acknowledged: AtomicU64,
    refused: AtomicU64,
    unanswered: AtomicU64,
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str()?.parse().ok()
}

async fn setup(target: &Target, cloud_dir: &Path, seed: u64) {
    for tenant in TENANTS.into_iter().chain([QUIET]) {
        let faults = if tenant == QUIET { 0.0 } else { 0.1 };
        target
            .must(
                "POST",
                "/v1/tenants",
                Some(json!({ "name": tenant, "limits": { "max_active_leases": CAP, "max_queued": 20 } })),
                201,
            )
            .await;
        let account = json!({
            "kind": "fake",
            "config": {
                "cloud": format!("crash-{seed:x}"),
                "state_dir": cloud_dir,
                "seed": seed,
                "create_failure_rate": faults,
                "destroy_failure_rate": faults,
            },
        });
        target
            .must(
                "PUT",
                &format!("/v1/tenants/{tenant}/providers/fake"),
                Some(account),
                200,
            )
            .await;
        let pool = json!({ "provider": "fake", "machine_type": "m", "hourly_price_micros": PRICE_PER_HOUR });
        target
            .must(
                "PUT",
                &format!("/v1/tenants/{tenant}/pools/small"),
                Some(pool),
                200,
            )
            .await;
    }
}

/// One client: requests leases on random tenants, then heartbeats, releases or abandons
/// them. Records every acknowledged lease.
async fn client(
    target: Arc<Target>,
    seed: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    tally: Arc<Tally>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..100_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let tenant = TENANTS[rng.random_range(0..TENANTS.len())];
        let body = json!({
            "pool": "small",
            "ttl_s": rng.random_range(1..=3),
            "wait_s": rng.random_range(0..=1),
        });
        tally.requests.fetch_add(1, Ordering::Relaxed);
        let path = format!("/v1/tenants/{tenant}/leases");
        let Some((status, lease)) = target.call("POST", &path, Some(body)).await else {
            tally.unanswered.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if !matches!(status, 201 | 202) {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(rng.random_range(10..100))).await;
            continue;
        }
        tally.acknowledged.fetch_add(1, Ordering::Relaxed);
        let id = lease["id"].as_str().expect("lease id").to_owned();
        acked
            .lock()
            .expect("acked lock")
            .push((tenant.to_owned(), id.clone()));
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        let lease_path = format!("/v1/tenants/{tenant}/leases/{id}");
        // Mostly released (churn through the cap), some heartbeated, some abandoned.
        match rng.random_range(0..5) {
            0 => {
                tally.requests.fetch_add(1, Ordering::Relaxed);
                let _ = target
                    .call("POST", &format!("{lease_path}/heartbeat"), None)
                    .await;
            }
            1..=3 => {
                tally.requests.fetch_add(1, Ordering::Relaxed);
                let _ = target
                    .call("POST", &format!("{lease_path}/release"), None)
                    .await;
            }
            _ => {} // abandoned: its TTL ends it
        }
    }
}

/// Every page of a list.
async fn all_pages(target: &Target, path: &str, cursor_param: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1_000 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let page_path = match &cursor {
            Some(c) => format!("{path}{sep}limit=500&{cursor_param}={c}"),
            None => format!("{path}{sep}limit=500"),
        };
        let page = target.must("GET", &page_path, None, 200).await;
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
            _ => return items,
        }
    }
    panic!("{path}: more than 1,000 pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_sigkill() {
    let Settings { seed, cycles } = settings();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // The fake cloud's state directory lies under the runners directory, as the server asks.
    let cloud = dir.path().join("berth-runners").join("cloud");
    let flags = [
        "--reconcile-interval",
        "1s",
        "--orphan-grace",
        "0s",
        "--enable-fake",
    ];
    let mut server = Server::start(&data, &flags);
    let target = Arc::new(Target {
        url: RwLock::new(server.url.clone()),
        token: server.admin_token(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
    });
    setup(&target, &cloud, seed).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                target.clone(),
                seed.wrapping_add(i as u64 + 1),
                stop.clone(),
                acked.clone(),
                tally.clone(),
            ))
        })
        .collect();

    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_500))).await;
        server.kill();
        server = Server::start(&data, &flags);
        *target.url.write().expect("url lock") = server.url.clone();
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }

    // Leases that must expire while the server is down: TTL 2 s, then 3 s without a server.
    let mut doomed = Vec::new();
    for _ in 0..CAP {
        let body = json!({ "pool": "small", "ttl_s": 2 });
        let lease = target
            .must(
                "POST",
                &format!("/v1/tenants/{QUIET}/leases"),
                Some(body),
                201,
            )
            .await;
        let id = lease["id"].as_str().expect("id").to_owned();
        doomed.push(id);
    }
    for id in &doomed {
        let path = format!("/v1/tenants/{QUIET}/leases/{id}?wait=ready&timeout_s=30");
        let ready = target.must("GET", &path, None, 200).await;
        assert_eq!(ready["state"], "ready", "{ready}");
    }
    server.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restart_at = Utc::now();
    let server = Server::start(&data, &flags);
    *target.url.write().expect("url lock") = server.url.clone();

    // Every lease of every tenant ends (bounded): TTLs are at most 3 s, destroys retry.
    let acked = acked.lock().expect("acked lock").clone();
    let all_tenants = TENANTS.into_iter().chain([QUIET]);
    for tenant in all_tenants.clone() {
        for _ in 0..120 {
            let path = format!("/v1/tenants/{tenant}/leases?state=active");
            let open = target.must("GET", &path, None, 200).await;
            let queued = target
                .must(
                    "GET",
                    &format!("/v1/tenants/{tenant}/leases?state=queued"),
                    None,
                    200,
                )
                .await;
            if open["items"].as_array().is_some_and(Vec::is_empty)
                && queued["items"].as_array().is_some_and(Vec::is_empty)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let mut leases = BTreeMap::new();
    let mut ledgers = BTreeMap::new();
    for tenant in all_tenants {
        for lease in all_pages(&target, &format!("/v1/tenants/{tenant}/leases"), "cursor").await {
            let id = lease["id"].as_str().expect("id").to_owned();
            leases.insert((tenant.to_owned(), id), lease);
        }
        ledgers.insert(
            tenant,
            all_pages(&target, &format!("/v1/tenants/{tenant}/ledger"), "after").await,
        );
    }

    // 1. Every acknowledged lease exists, and every lease ended.
    for key in &acked {
        assert!(
            leases.contains_key(key),
            "acknowledged lease {key:?} is gone"
        );
    }
    for (key, lease) in &leases {
        let state = lease["state"].as_str().unwrap_or_default();
        assert!(
            matches!(state, "released" | "expired" | "failed" | "canceled"),
            "lease {key:?} never ended: {lease}"
        );
    }

    // 2. The cap held at every moment, and 3. the ledger balances.
    let mut granted = BTreeSet::new();
    for (tenant, rows) in &ledgers {
        let mut active = BTreeSet::new();
        let mut peak = 0;
        let mut balance: BTreeMap<&str, i64> = BTreeMap::new();
        for row in rows {
            let lease = row["lease_id"].as_str().expect("lease_id");
            let amount = row["amount_micros"].as_i64().expect("amount");
            match row["kind"].as_str().expect("kind") {
                "reserve" => {
                    granted.insert((tenant, lease));
                    active.insert(lease);
                    peak = peak.max(active.len());
                    *balance.entry(lease).or_default() += amount;
                }
                "release" => {
                    assert!(
                        active.remove(lease),
                        "{tenant}: release before reserve: {row}"
                    );
                    *balance.entry(lease).or_default() -= amount;
                }
                "charge" => {}
                other => panic!("{tenant}: unknown ledger kind {other}"),
            }
        }
        assert!(
            peak <= usize::try_from(CAP).expect("cap"),
            "{tenant}: {peak} leases active at once, cap {CAP}"
        );
        assert!(
            active.is_empty(),
            "{tenant}: reservations never released: {active:?}"
        );
        for (lease, left) in balance {
            assert_eq!(
                left, 0,
                "{tenant}: lease {lease} reserved and released differ"
            );
        }
    }

    // 4. No runner outlives its lease (every lease ended, so no runner is left at all).
    let runners = providers::fake::read_state_dir(&cloud).expect("cloud dir");
    assert!(
        runners.is_empty(),
        "runners outlived their leases: {:?}",
        runners.iter().map(|r| &r.lease_id).collect::<Vec<_>>()
    );

    // 5. Alarms that came due while the server was down fired after the restart.
    for id in &doomed {
        let lease = &leases[&(QUIET.to_owned(), id.clone())];
        assert_eq!(lease["state"], "expired", "{lease}");
        assert_eq!(lease["end_reason"], "ttl", "{lease}");
        let expires = time(&lease["expires_at"]).expect("expires_at");
        let ended = time(&lease["ended_at"]).expect("ended_at");
        assert!(
            expires < restart_at,
            "the TTL ran out while berth was down: {lease}"
        );
        assert!(ended >= restart_at, "it ended after the restart: {lease}");
    }

    eprintln!(
        "crash suite: seed {seed:#x}, {cycles} kills, {} requests, {} acknowledged, {} refused (cap or queue), {} unanswered (server down), {} leases checked ({} granted), {} ledger rows",
        tally.requests.load(Ordering::Relaxed),
        tally.acknowledged.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.unanswered.load(Ordering::Relaxed),
        leases.len(),
        granted.len(),
        ledgers.values().map(Vec::len).sum::<usize>(),
    );
    drop(server);
}
