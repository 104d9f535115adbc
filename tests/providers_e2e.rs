//! Providers end to end through the real `berth` binary: `process` runners as real process
//! groups, a crash between a provider's create and its commit, reconciliation of an orphan
//! runner, and a `hetzner` account against a local server answering as the Hetzner API does.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::Server;

/// Creates tenant `acme` with a `process` account `local` rooted at `root` (grace 500 ms)
/// and pools `local` (a runner that sleeps) and `stubborn` (one that ignores SIGTERM).
async fn setup_process(server: &Server, root: &Path) {
    let (status, body) = server
        .call("POST", "/v1/tenants", Some(json!({ "name": "acme" })))
        .await;
    assert_eq!(status, 201, "{body}");
    let account = json!({ "kind": "process", "config": { "root": root, "grace_ms": 500 }, "credentials": {} });
    let (status, body) = server
        .call("PUT", "/v1/tenants/acme/providers/local", Some(account))
        .await;
    assert_eq!(status, 200, "{body}");
    let pool = |command: Vec<&str>| json!({ "provider": "local", "machine_type": "process", "hourly_price_micros": 0, "command": command });
    let (status, body) = server
        .call(
            "PUT",
            "/v1/tenants/acme/pools/local",
            Some(pool(vec![
                "sh",
                "-c",
                "echo \"$BERTH_LEASE_ID\" > lease.txt; exec sleep 600",
            ])),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .call(
            "PUT",
            "/v1/tenants/acme/pools/stubborn",
            Some(pool(vec![
                "sh",
                "-c",
                "trap '' TERM; while true; do sleep 1; done",
            ])),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn request(server: &Server, pool: &str, ttl_s: i64) -> String {
    let (status, lease) = server
        .call(
            "POST",
            "/v1/tenants/acme/leases",
            Some(json!({ "pool": pool, "ttl_s": ttl_s })),
        )
        .await;
    assert_eq!(status, 201, "{lease}");
    lease["id"].as_str().expect("id").to_owned()
}

fn runner_dir(root: &Path, lease: &str) -> PathBuf {
    root.join("acme").join(lease)
}

fn runner_pid(root: &Path, lease: &str) -> i32 {
    let record: Value = serde_json::from_slice(
        &std::fs::read(runner_dir(root, lease).join("runner.json")).expect("runner.json"),
    )
    .expect("json");
    i32::try_from(record["pid"].as_i64().expect("pid")).expect("pid fits")
}

/// Whether a process is alive (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1_500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A `process` lease is a real process in a fresh directory with its lease in its
/// environment; releasing kills it and removes the directory; TTL expiry does the same; a
/// runner that ignores SIGTERM is killed after the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_runners_live_and_die_with_their_leases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("berth-runners");
    let server = Server::start(&dir.path().join("data"), &[]);
    setup_process(&server, &root).await;

    let id = request(&server, "local", 600).await;
    let lease = server.wait_lease("acme", &id, "ready").await;
    assert_eq!(lease["state"], "ready", "{lease}");
    let work = runner_dir(&root, &id).join("work");
    assert_eq!(lease["runner"]["address"], work.display().to_string());
    let pid = runner_pid(&root, &id);
    assert!(alive(pid));
    wait_until("the runner writes its lease id", || {
        std::fs::read_to_string(work.join("lease.txt")).is_ok_and(|t| t.trim() == id)
    })
    .await;
    let (status, _) = server
        .call(
            "POST",
            &format!("/v1/tenants/acme/leases/{id}/release"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let ended = server.wait_lease("acme", &id, "ended").await;
    assert_eq!(ended["state"], "released");
    assert!(!alive(pid), "the runner process outlived its lease");
    assert!(
        !runner_dir(&root, &id).exists(),
        "the runner directory was not removed"
    );

    // TTL expiry ends the runner the same way.
    let id = request(&server, "local", 2).await;
    server.wait_lease("acme", &id, "ready").await;
    let pid = runner_pid(&root, &id);
    let ended = server.wait_lease("acme", &id, "ended").await;
    assert_eq!(
        (ended["state"].as_str(), ended["end_reason"].as_str()),
        (Some("expired"), Some("ttl"))
    );
    assert!(!alive(pid));
    assert!(!runner_dir(&root, &id).exists());

    // A runner that ignores SIGTERM is SIGKILLed after the grace period.
    let id = request(&server, "stubborn", 600).await;
    server.wait_lease("acme", &id, "ready").await;
    let pid = runner_pid(&root, &id);
    server
        .call("DELETE", &format!("/v1/tenants/acme/leases/{id}"), None)
        .await;
    let ended = server.wait_lease("acme", &id, "ended").await;
    assert_eq!(ended["state"], "released");
    assert!(!alive(pid), "a runner ignoring SIGTERM survived");
    assert!(!runner_dir(&root, &id).exists());
    assert!(server.terminate().success());
}

/// berth crashes (abort, like kill -9) right after a provider created a runner and before the
/// object committed it: after a restart the lease adopts that runner (create is idempotent by
/// lease id: no second process), and ending the lease destroys it. Nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_create_and_commit_leaks_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let root = dir.path().join("berth-runners");
    let mut server = Server::start_with_env(
        &data,
        &[],
        &[("BERTH_FAILPOINTS", "tenant.created.before_commit")],
    );
    setup_process(&server, &root).await;
    let id = request(&server, "local", 600).await;
    let status = support::wait_bounded(&mut server.child);
    assert!(!status.success(), "the failpoint crashed berth");
    drop(server);
    let pid = runner_pid(&root, &id);
    assert!(alive(pid), "the provider made the runner before the crash");

    let server = Server::start(&data, &[]);
    let lease = server.wait_lease("acme", &id, "ready").await;
    assert_eq!(lease["state"], "ready", "{lease}");
    assert_eq!(
        runner_pid(&root, &id),
        pid,
        "the lease adopted its runner instead of making a second one"
    );
    let runners: Vec<_> = std::fs::read_dir(root.join("acme"))
        .expect("runner root")
        .collect();
    assert_eq!(runners.len(), 1);
    server
        .call(
            "POST",
            &format!("/v1/tenants/acme/leases/{id}/release"),
            None,
        )
        .await;
    server.wait_lease("acme", &id, "ended").await;
    assert!(!alive(pid));
    assert!(!runner_dir(&root, &id).exists());
    assert!(server.terminate().success());
}

/// A runner of a lease that ended (it outlived its destroy) is destroyed by the tenant's
/// periodic reconciliation and counted in `/metrics`; a runner in the same root for a lease
/// berth never had (another installation's) is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_destroys_runners_of_ended_leases_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("berth-runners");
    let server = Server::start(
        &dir.path().join("data"),
        &["--reconcile-interval", "1s", "--orphan-grace", "1s"],
    );
    setup_process(&server, &root).await;
    let id = request(&server, "local", 600).await;
    server.wait_lease("acme", &id, "ready").await;
    let ended = request(&server, "local", 600).await;
    server.wait_lease("acme", &ended, "ready").await;
    let (status, _) = server
        .call(
            "POST",
            &format!("/v1/tenants/acme/leases/{ended}/release"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    server.wait_lease("acme", &ended, "ended").await;

    // Runners of this tenant under the same root, made behind berth's back: one for the
    // ended lease, one for a lease berth never had.
    let account = providers::Account {
        tenant: "acme".into(),
        name: "local".into(),
        kind: "process".into(),
        config: json!({ "root": root, "grace_ms": 500 }),
        credentials: json!({}),
    };
    let environment = providers::Environment::new(dir.path().join("data"), &root);
    let provider = providers::build(&account, &environment).expect("process provider");
    let spec = |lease_id: &str| providers::RunnerSpec {
        tenant: "acme".into(),
        lease_id: lease_id.into(),
        pool: "local".into(),
        machine_type: "process".into(),
        image: None,
        region: None,
        command: vec!["sleep".into(), "600".into()],
        labels: Default::default(),
        env: Default::default(),
    };
    for lease in [ended.as_str(), "lease_stranger_0001"] {
        provider.create(&spec(lease)).await.expect("runner starts");
    }
    let orphan_pid = runner_pid(&root, &ended);
    let stranger_pid = runner_pid(&root, "lease_stranger_0001");
    assert!(alive(orphan_pid));

    wait_until("reconciliation destroys the orphan", || {
        !runner_dir(&root, &ended).exists()
    })
    .await;
    assert!(!alive(orphan_pid));
    assert!(
        runner_dir(&root, &id).exists(),
        "the live lease's runner stays"
    );
    assert!(
        alive(stranger_pid) && runner_dir(&root, "lease_stranger_0001").exists(),
        "a runner of a lease berth never had is not berth's to destroy"
    );
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let destroyed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("berth_reconcile_destroyed_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the counter is exported");
    assert!(destroyed >= 1);
    provider
        .destroy(&providers::RunnerRef {
            tenant: "acme".into(),
            lease_id: "lease_stranger_0001".into(),
            id: None,
        })
        .await
        .expect("the stranger is cleaned up");
    assert!(server.terminate().success());
}

/// A local server answering as the Hetzner Cloud API does: prices from `server_types`, no
/// servers, and a create refused with `422 invalid_input`.
async fn fake_hetzner() -> String {
    use axum::Json;
    use axum::http::StatusCode;
    use axum::routing::{delete, get};
    let authorized = |headers: &axum::http::HeaderMap| {
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer hz-secret-token")
    };
    let app = axum::Router::new()
        .route(
            "/v1/servers",
            get(move |headers: axum::http::HeaderMap| async move {
                if !authorized(&headers) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({ "error": { "code": "unauthorized", "message": "unable to authenticate", "details": null } })));
                }
                (StatusCode::OK, Json(json!({ "servers": [], "meta": { "pagination": { "page": 1, "per_page": 50, "previous_page": null, "next_page": null, "last_page": 1, "total_entries": 0 } } })))
            })
            .post(|| async {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({ "error": { "code": "invalid_input", "message": "invalid input in field 'server_type': unknown server type cx99", "details": { "fields": [ { "name": "server_type", "messages": ["unknown"] } ] } } })),
                )
            }),
        )
        .route("/v1/servers/{id}", delete(|| async { (StatusCode::NOT_FOUND, Json(json!({ "error": { "code": "not_found", "message": "server not found", "details": null } }))) }))
        .route(
            "/v1/server_types",
            get(|| async {
                Json(json!({
                    "server_types": [{
                        "id": 1, "name": "cx99", "description": "CX99", "cores": 2, "memory": 4.0, "disk": 40,
                        "prices": [{ "location": "fsn1", "price_hourly": { "net": "0.0060000000", "gross": "0.0071400000000000" },
                                     "price_monthly": { "net": "3.79", "gross": "4.51" } }],
                        "locations": [{ "id": 1, "name": "fsn1" }]
                    }],
                    "meta": { "pagination": { "page": 1, "per_page": 25, "previous_page": null, "next_page": null, "last_page": 1, "total_entries": 1 } }
                }))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A `hetzner` pool takes its price from the API's price list; a create the API refuses
/// (4xx) fails the lease with the provider's message, and the token never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hetzner_refusal_fails_the_lease_with_the_providers_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = fake_hetzner().await;
    let server = Server::start(&dir.path().join("data"), &["--allow-private-providers"]);
    server
        .call("POST", "/v1/tenants", Some(json!({ "name": "acme" })))
        .await;
    let account = json!({ "kind": "hetzner", "config": { "base_url": api, "location": "fsn1", "image": "ubuntu-24.04" }, "credentials": { "token": "hz-secret-token" } });
    let (status, body) = server
        .call("PUT", "/v1/tenants/acme/providers/hz", Some(account))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("hz-secret-token"));
    let (status, pool) = server
        .call(
            "PUT",
            "/v1/tenants/acme/pools/cloud",
            Some(json!({ "provider": "hz", "machine_type": "cx99" })),
        )
        .await;
    assert_eq!(status, 200, "{pool}");
    assert_eq!(pool["price_source"], "provider");
    assert_eq!(
        pool["hourly_price_micros"], 7_140,
        "gross 0.00714/h → 7140 micros"
    );
    let (status, lease) = server
        .call(
            "POST",
            "/v1/tenants/acme/leases",
            Some(json!({ "pool": "cloud", "ttl_s": 600 })),
        )
        .await;
    assert_eq!(status, 201, "{lease}");
    let id = lease["id"].as_str().expect("id").to_owned();
    let ended = server.wait_lease("acme", &id, "ended").await;
    assert_eq!(
        (ended["state"].as_str(), ended["end_reason"].as_str()),
        (Some("failed"), Some("provider_error")),
        "{ended}"
    );
    let error = ended["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("unknown server type cx99"), "{error}");
    assert!(!error.contains("hz-secret-token"));
    let log = server.drain_log().join("\n");
    assert!(
        !log.contains("hz-secret-token"),
        "the token appeared in the log"
    );
    assert!(server.terminate().success());
}
