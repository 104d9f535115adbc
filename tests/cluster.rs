//! The cluster suite (DESIGN.md §10): three real `berth serve --cluster` processes on
//! 127.0.0.1 share a fresh PostgreSQL database (from `BERTH_TEST_POSTGRES`) and one fake cloud
//! (berth's `http` provider protocol). Clients request and release short leases through any
//! node while the suite SIGKILLs a node (and restarts it), SIGSTOPs another past its
//! membership deadline and resumes it (a zombie owner), and cuts the third off from
//! PostgreSQL through a proxy it controls. Then it checks, from the API, the ledger and the
//! cloud: no acknowledged write lost, no tenant over its cap at any sampled moment, no runner
//! leaked or made twice, every due TTL ended. Bounded in time; it prints its figures.

mod cluster_support;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_support::{cloud, proxy::Proxy};
use serde_json::{Value, json};
use support::Server;

const TENANTS: usize = 12;
const CAP: usize = 3;
const CLIENTS: usize = 12;
/// How long clients put load on the cluster.
const LOAD: Duration = Duration::from_secs(32);
const ADMIN: &str = "adm_cluster_suite_token_0123456789abcdef";
const MEMBERSHIP: &str = "2s";

/// One node process and how to start it again.
struct Node {
    name: &'static str,
    dir: std::path::PathBuf,
    cluster_url: String,
    server: Option<Server>,
}

impl Node {
    fn start(&mut self) {
        let master_key = "cd".repeat(32);
        let server = Server::start_with_env(
            &self.dir,
            &[
                "--cluster",
                &self.cluster_url,
                "--node-id",
                self.name,
                "--cluster-membership",
                MEMBERSHIP,
                "--allow-private-providers",
                "--reconcile-interval",
                "3s",
                "--orphan-grace",
                "0s",
                "--provider-timeout",
                "5s",
                "--provider-retry-base",
                "1s",
            ],
            &[
                ("BERTH_ADMIN_TOKEN", ADMIN),
                ("BERTH_MASTER_KEY", master_key.as_str()),
            ],
        );
        self.server = Some(server);
    }

    fn url(&self) -> Option<String> {
        self.server.as_ref().map(|s| s.url.clone())
    }
}

/// What clients were told, by lease.
#[derive(Default)]
struct Acks {
    /// Leases whose request answered 201: (tenant, id).
    granted: Vec<(String, String)>,
    /// Leases whose release answered 200.
    released: Vec<(String, String)>,
    /// Requests refused at the cap (429), and answers that were neither (503s while a
    /// tenant moved, connection errors to a dead node).
    at_cap: u64,
    unavailable: u64,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("client")
}

async fn call(
    client: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut request = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Tries `path` on every live node in turn until one answers with something other than 503
/// (bounded): what a client behind a load balancer sees.
async fn call_any(
    client: &reqwest::Client,
    urls: &[String],
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    for round in 0..200 {
        let base = &urls[round % urls.len()];
        if let Ok((status, value)) = call(client, base, method.clone(), path, body.clone()).await
            && status != 503
        {
            return Some((status, value));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_survives_kills_pauses_and_a_lost_database() {
    let db = broker::objects::cluster::testing::fresh_database().await;
    let pg = sqlx::PgPool::connect(&db).await.expect("pool");
    let upstream = {
        let url = url_host_port(&db);
        url.expect("host:port of BERTH_TEST_POSTGRES")
    };
    let cut_off = Proxy::start(upstream.clone()).await;
    let via_proxy = db.replacen(&upstream, &format!("127.0.0.1:{}", cut_off.port), 1);
    let record = cloud::Cloud::default();
    let cloud_url = cloud::start(Arc::clone(&record)).await;

    let root = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = [("n1", &db), ("n2", &db), ("n3", &via_proxy)]
        .into_iter()
        .map(|(name, url)| Node {
            name,
            dir: root.path().join(name),
            cluster_url: url.clone(),
            server: None,
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    let urls: Vec<String> = nodes.iter().filter_map(Node::url).collect();
    let http = client();

    // Tenants, each with the cloud as its provider and a pool: spread over the nodes.
    let tenants: Vec<String> = (0..TENANTS).map(|i| format!("t{i:02}")).collect();
    for (i, tenant) in tenants.iter().enumerate() {
        let base = &urls[i % urls.len()];
        let (status, body) = call(
            &http,
            base,
            reqwest::Method::POST,
            "/v1/tenants",
            Some(
                json!({ "name": tenant, "limits": { "max_active_leases": CAP, "max_queued": 0 } }),
            ),
        )
        .await
        .expect("create tenant");
        assert_eq!(status, 201, "{body}");
        let (status, body) = call(
            &http,
            base,
            reqwest::Method::PUT,
            &format!("/v1/tenants/{tenant}/providers/cloud"),
            Some(
                json!({ "kind": "http", "config": { "url": cloud_url, "timeout_ms": 3000 },
                    "credentials": { "secret": providers::signing::generate_secret() } }),
            ),
        )
        .await
        .expect("provider");
        assert_eq!(status, 200, "{body}");
        let (status, body) = call(
            &http,
            base,
            reqwest::Method::PUT,
            &format!("/v1/tenants/{tenant}/pools/small"),
            Some(json!({ "provider": "cloud", "machine_type": "small", "hourly_price_micros": 36_000 })),
        )
        .await
        .expect("pool");
        assert_eq!(status, 200, "{body}");
    }

    let acks = Arc::new(Mutex::new(Acks::default()));
    let max_live = Arc::new(Mutex::new(0usize));
    let stop = tokio_util::sync::CancellationToken::new();
    let live_urls = Arc::new(Mutex::new(urls.clone()));

    // Clients: request a short lease on a random tenant through a random node; release some.
    let mut load = Vec::new();
    for c in 0..CLIENTS {
        let (acks, stop, live_urls, tenants, http) = (
            Arc::clone(&acks),
            stop.clone(),
            Arc::clone(&live_urls),
            tenants.clone(),
            http.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = c;
            while !stop.is_cancelled() {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let tenant = &tenants[(n >> 33) % tenants.len()];
                let urls = live_urls.lock().expect("urls").clone();
                let base = &urls[(n >> 40) % urls.len()];
                let ttl = 2 + (n >> 50) % 3;
                let asked = call(
                    &http,
                    base,
                    reqwest::Method::POST,
                    &format!("/v1/tenants/{tenant}/leases"),
                    Some(json!({ "pool": "small", "ttl_s": ttl })),
                )
                .await;
                match asked {
                    Ok((201, lease)) => {
                        let id = lease["id"].as_str().expect("id").to_owned();
                        acks.lock()
                            .expect("acks")
                            .granted
                            .push((tenant.clone(), id.clone()));
                        if (n >> 20) % 2 == 0 {
                            let released = call(
                                &http,
                                base,
                                reqwest::Method::POST,
                                &format!("/v1/tenants/{tenant}/leases/{id}/release"),
                                None,
                            )
                            .await;
                            if let Ok((200, _)) = released {
                                acks.lock()
                                    .expect("acks")
                                    .released
                                    .push((tenant.clone(), id));
                            }
                        }
                    }
                    Ok((429, _)) => acks.lock().expect("acks").at_cap += 1,
                    _ => {
                        acks.lock().expect("acks").unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }

    // The sampler: the cloud's machines per tenant never exceed the cap.
    let sampler = {
        let (record, max_live, stop) = (Arc::clone(&record), Arc::clone(&max_live), stop.clone());
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !stop.is_cancelled() {
                let most = record
                    .lock()
                    .expect("cloud")
                    .live_by_tenant()
                    .into_values()
                    .max()
                    .unwrap_or(0);
                {
                    let mut max = max_live.lock().expect("max");
                    *max = (*max).max(most);
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };

    let started = Instant::now();
    let at = |secs: u64| started + Duration::from_secs(secs);

    // 1. SIGKILL n1 under load; measure how soon each of its tenants is served again.
    tokio::time::sleep_until(at(6).into()).await;
    let owned_by_n1: Vec<String> = tenants_owned_by(&pg, "n1").await;
    nodes[0].server.take().expect("n1").kill();
    let killed = Instant::now();
    live_urls
        .lock()
        .expect("urls")
        .retain(|u| Some(u) != urls.first());
    let survivors: Vec<String> = urls[1..].to_vec();
    let mut recovery = Vec::new();
    for tenant in &owned_by_n1 {
        let (http, survivors, tenant) = (http.clone(), survivors.clone(), tenant.clone());
        recovery.push(tokio::spawn(async move {
            loop {
                for base in &survivors {
                    let path = format!("/v1/tenants/{tenant}/leases?limit=1");
                    if let Ok((200, _)) = call(&http, base, reqwest::Method::GET, &path, None).await
                    {
                        return killed.elapsed();
                    }
                }
                if killed.elapsed() > Duration::from_secs(60) {
                    return killed.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }));
    }
    let mut recovered = Vec::new();
    for task in recovery {
        recovered.push(task.await.expect("probe"));
    }
    recovered.sort();

    // 2. n1 comes back (same data directory: its files are a cache, behind by now).
    tokio::time::sleep_until(at(12).into()).await;
    nodes[0].start();
    let n1_url = nodes[0].url().expect("n1");
    live_urls.lock().expect("urls").push(n1_url.clone());

    // 3. SIGSTOP n2 past its membership deadline, then resume it: a zombie owner.
    tokio::time::sleep_until(at(15).into()).await;
    let n2_pid = nodes[1].server.as_ref().expect("n2").child.id();
    support::signal(&nodes[1].server.as_ref().expect("n2").child, "STOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    support::signal(&nodes[1].server.as_ref().expect("n2").child, "CONT");

    // 4. Cut n3 off from PostgreSQL for 5 s, then restore the link.
    tokio::time::sleep_until(at(23).into()).await;
    cut_off.cut();
    tokio::time::sleep(Duration::from_secs(5)).await;
    cut_off.restore();

    tokio::time::sleep_until(at(LOAD.as_secs()).into()).await;
    stop.cancel();
    for task in load {
        task.await.expect("client");
    }
    let samples = sampler.await.expect("sampler");

    // Quiesce: every lease's TTL passes, its runner is destroyed; reconciliation (3 s) removes
    // whatever a dead node's create left behind. Bounded.
    let all_urls: Vec<String> = nodes.iter().filter_map(Node::url).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live = record.lock().expect("cloud").live.len();
        let open = open_leases(&http, &all_urls, &tenants).await;
        if (live == 0 && open == 0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The checks.
    let acks = std::mem::take(&mut *acks.lock().expect("acks"));
    let mut lost = Vec::new();
    let mut not_ended = Vec::new();
    let mut unbalanced = Vec::new();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut ledgers: HashMap<String, Value> = HashMap::new();
    for tenant in &tenants {
        let (status, ledger) = call_any(
            &http,
            &all_urls,
            reqwest::Method::GET,
            &format!("/v1/tenants/{tenant}/ledger?limit=1000"),
            None,
        )
        .await
        .expect("ledger");
        assert_eq!(status, 200, "{ledger}");
        ledgers.insert(tenant.clone(), ledger);
    }
    for (tenant, id) in &acks.granted {
        let Some((status, lease)) = call_any(
            &http,
            &all_urls,
            reqwest::Method::GET,
            &format!("/v1/tenants/{tenant}/leases/{id}"),
            None,
        )
        .await
        else {
            lost.push(id.clone());
            continue;
        };
        if status != 200 {
            lost.push(format!("{id}: {status} {lease}"));
            continue;
        }
        let state = lease["state"].as_str().unwrap_or_default().to_owned();
        *states.entry(state.clone()).or_default() += 1;
        if !matches!(
            state.as_str(),
            "released" | "expired" | "failed" | "canceled"
        ) {
            not_ended.push(format!("{id}: {state}"));
        }
        let kinds: Vec<&str> = ledgers[tenant]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|row| row["lease_id"] == id.as_str())
            .filter_map(|row| row["kind"].as_str())
            .collect();
        if kinds.iter().filter(|k| **k == "reserve").count() != 1
            || kinds.iter().filter(|k| **k == "release").count() != 1
            || kinds.iter().filter(|k| **k == "charge").count() > 1
        {
            unbalanced.push(format!("{id}: {kinds:?}"));
        }
    }
    for (tenant, id) in &acks.released {
        let (_, lease) = call_any(
            &http,
            &all_urls,
            reqwest::Method::GET,
            &format!("/v1/tenants/{tenant}/leases/{id}"),
            None,
        )
        .await
        .expect("lease");
        // A release acknowledged is never undone: the lease ended released (or its TTL had
        // ended it first).
        if !matches!(lease["state"].as_str(), Some("released" | "expired")) {
            lost.push(format!("release of {id}: now {}", lease["state"]));
        }
    }
    let (leaked, made_twice, made, destroyed) = {
        let cloud = record.lock().expect("cloud");
        let leaked: Vec<String> = cloud.live.keys().cloned().collect();
        let made_twice: Vec<(String, u32)> = cloud
            .made
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(lease, n)| (lease.clone(), *n))
            .collect();
        (
            leaked,
            made_twice,
            cloud.made.values().sum::<u32>(),
            cloud.destroyed,
        )
    };
    let max_live = *max_live.lock().expect("max");
    let (epochs,): (i64,) =
        sqlx::query_as("SELECT coalesce(sum(epoch), 0)::bigint FROM berth_objects")
            .fetch_one(&pg)
            .await
            .expect("epochs");

    println!(
        "cluster suite: 3 nodes, {TENANTS} tenants (cap {CAP}), {CLIENTS} clients for {} s; \
         faults: 1 SIGKILL (+ restart), 1 SIGSTOP past the membership deadline (pid {n2_pid}), \
         1 database cut of 5 s",
        LOAD.as_secs()
    );
    println!(
        "  acknowledged: {} grants, {} releases; {} refused at the cap, {} unavailable answers (retried)",
        acks.granted.len(),
        acks.released.len(),
        acks.at_cap,
        acks.unavailable
    );
    println!("  final states: {states:?}; ownership claims (sum of epochs): {epochs}");
    println!(
        "  lost: {}; not ended: {}; unbalanced ledgers: {}; max runners of one tenant: {max_live} (cap {CAP}) over {samples} samples",
        lost.len(),
        not_ended.len(),
        unbalanced.len()
    );
    println!(
        "  runners made: {made}, destroyed: {destroyed}, leaked: {}, made twice: {}",
        leaked.len(),
        made_twice.len()
    );
    println!(
        "  tenants of the killed node: {}; served again after p50 {:?}, p99 {:?}, max {:?}",
        recovered.len(),
        percentile(&recovered, 0.5),
        percentile(&recovered, 0.99),
        recovered.last().copied().unwrap_or_default()
    );
    assert!(!acks.granted.is_empty(), "the load made leases");
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        not_ended.is_empty(),
        "leases past their TTL still open: {not_ended:?}"
    );
    assert!(unbalanced.is_empty(), "ledgers: {unbalanced:?}");
    assert!(
        max_live <= CAP,
        "a tenant had {max_live} runners at once (cap {CAP})"
    );
    assert!(leaked.is_empty(), "runners leaked: {leaked:?}");
    assert!(made_twice.is_empty(), "runners made twice: {made_twice:?}");

    // `berth cluster status` sees the three nodes alive (n1 as its second incarnation).
    let status = support::berth()
        .args(["cluster", "status", "--json", "--cluster", &db])
        .output()
        .expect("berth cluster status");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: Value = serde_json::from_slice(&status.stdout).expect("json");
    let mut alive: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["alive"] == true)
        .filter_map(|n| n["name"].as_str())
        .collect();
    alive.sort_unstable();
    assert_eq!(alive, ["n1", "n2", "n3"], "{status}");
    assert_eq!(status["objects"], TENANTS, "{status}");

    for node in &mut nodes {
        if let Some(server) = node.server.take() {
            let _ = server.terminate();
        }
    }
    pg.close().await;
    broker::objects::cluster::testing::drop_database(&db).await;
}

/// `host:port` of a PostgreSQL URL.
fn url_host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    Some(if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    })
}

/// Tenants whose object the node called `name` owns now.
async fn tenants_owned_by(pg: &sqlx::PgPool, name: &str) -> Vec<String> {
    sqlx::query_as::<_, (String,)>(
        "SELECT o.name FROM berth_objects o JOIN berth_nodes n ON n.incarnation = o.owner \
         WHERE n.name = $1 AND o.namespace = 'tenant' AND n.deadline > now()",
    )
    .bind(name)
    .fetch_all(pg)
    .await
    .expect("owned")
    .into_iter()
    .map(|(tenant,)| tenant)
    .collect()
}

/// Leases not yet ended, over every tenant.
async fn open_leases(http: &reqwest::Client, urls: &[String], tenants: &[String]) -> usize {
    let mut open = 0;
    for tenant in tenants {
        for state in ["active", "queued"] {
            if let Some((200, page)) = call_any(
                http,
                urls,
                reqwest::Method::GET,
                &format!("/v1/tenants/{tenant}/leases?state={state}&limit=100"),
                None,
            )
            .await
            {
                open += page["items"].as_array().map_or(0, Vec::len);
            }
        }
    }
    open
}

/// Long polls and event streams work through a node that does not own the tenant: both are
/// forwarded to the owner and streamed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_and_event_streams_work_through_any_node() {
    use futures::StreamExt as _;

    let db = broker::objects::cluster::testing::fresh_database().await;
    let pg = sqlx::PgPool::connect(&db).await.expect("pool");
    let record = cloud::Cloud::default();
    let cloud_url = cloud::start(Arc::clone(&record)).await;
    let root = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = ["n1", "n2"]
        .into_iter()
        .map(|name| Node {
            name,
            dir: root.path().join(name),
            cluster_url: db.clone(),
            server: None,
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    let (owner, other) = (nodes[0].url().expect("n1"), nodes[1].url().expect("n2"));
    let http = client();
    let put = |path: String, body: Value| {
        let (http, owner) = (http.clone(), owner.clone());
        async move {
            call(&http, &owner, reqwest::Method::PUT, &path, Some(body))
                .await
                .expect("put")
        }
    };
    let (status, body) = call(
        &http,
        &owner,
        reqwest::Method::POST,
        "/v1/tenants",
        Some(json!({ "name": "acme" })),
    )
    .await
    .expect("tenant");
    assert_eq!(status, 201, "{body}");
    let (status, body) = put(
        "/v1/tenants/acme/providers/cloud".into(),
        json!({ "kind": "http", "config": { "url": cloud_url },
                "credentials": { "secret": providers::signing::generate_secret() } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put(
        "/v1/tenants/acme/pools/small".into(),
        json!({ "provider": "cloud", "machine_type": "small", "hourly_price_micros": 36_000 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        tenants_owned_by(&pg, "n1").await,
        ["acme"],
        "n1 owns the tenant"
    );

    // The event stream, opened on the node that does not own the tenant.
    let stream = http
        .get(format!("{other}/v1/tenants/acme/events"))
        .bearer_auth(ADMIN)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/event-stream"))
    );
    let mut stream = stream.bytes_stream();

    let (status, lease) = call(
        &http,
        &owner,
        reqwest::Method::POST,
        "/v1/tenants/acme/leases",
        Some(json!({ "pool": "small", "ttl_s": 60 })),
    )
    .await
    .expect("lease");
    assert_eq!(status, 201, "{lease}");
    let id = lease["id"].as_str().expect("id").to_owned();
    // A long poll on the other node answers once the lease is ready.
    let (status, ready) = call(
        &http,
        &other,
        reqwest::Method::GET,
        &format!("/v1/tenants/acme/leases/{id}?wait=ready&timeout_s=20"),
        None,
    )
    .await
    .expect("long poll");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["state"], "ready", "{ready}");
    // The stream through the other node carries the lease's events.
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
            if seen.contains("event: lease.ready") && seen.contains(&id) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{seen}");
    assert!(seen.contains("event: lease.granted"), "{seen}");

    for node in &mut nodes {
        if let Some(server) = node.server.take() {
            let _ = server.terminate();
        }
    }
    pg.close().await;
    broker::objects::cluster::testing::drop_database(&db).await;
}
