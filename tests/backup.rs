//! Backups and restores (issue 17), against the real binary: a backup under write load
//! restored offline into a new data directory holds every lease acknowledged before it
//! began, with the ledger balanced and every file sound; a tenant restored online leaves no
//! runner behind at its provider.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Server, berth};

const TENANTS: [&str; 3] = ["alpha", "bravo", "charlie"];

/// Creates `tenant` with a `fake` account on `cloud_dir` and a priced pool `small`.
async fn setup(server: &Server, tenant: &str, cloud_dir: &Path) {
    let (status, body) = server
        .call(
            "POST",
            "/v1/tenants",
            Some(json!({ "name": tenant, "limits": { "max_active_leases": 1000 } })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let account =
        json!({ "kind": "fake", "config": { "cloud": "backup", "state_dir": cloud_dir } });
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/tenants/{tenant}/providers/fake"),
            Some(account),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let pool = json!({ "provider": "fake", "machine_type": "m", "hourly_price_micros": 3_600_000 });
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/tenants/{tenant}/pools/small"),
            Some(pool),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Every item of a paged list.
async fn all_pages(server: &Server, path: &str, cursor_param: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1_000 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let page_path = match &cursor {
            Some(c) => format!("{path}{sep}limit=500&{cursor_param}={c}"),
            None => format!("{path}{sep}limit=500"),
        };
        let (status, page) = server.call("GET", &page_path, None).await;
        assert_eq!(status, 200, "{page}");
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
            _ => return items,
        }
    }
    panic!("{path}: more than 1,000 pages");
}

/// Requests short leases on every tenant and releases half of them, until `stop`; records
/// each acknowledged (201) lease with the moment it was acknowledged.
async fn load(
    url: String,
    token: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
) {
    let client = reqwest::Client::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let tenant = TENANTS[n % TENANTS.len()];
        let response = client
            .post(format!("{url}/v1/tenants/{tenant}/leases"))
            .bearer_auth(&token)
            .json(&json!({ "pool": "small", "ttl_s": 3 }))
            .send()
            .await;
        let Ok(response) = response else { continue };
        if response.status() != 201 {
            continue;
        }
        let Ok(lease) = response.json::<Value>().await else {
            continue;
        };
        let id = lease["id"].as_str().expect("id").to_owned();
        acked
            .lock()
            .expect("acked")
            .push((tenant.to_owned(), id.clone()));
        if n.is_multiple_of(2) {
            let _ = client
                .post(format!("{url}/v1/tenants/{tenant}/leases/{id}/release"))
                .bearer_auth(&token)
                .send()
                .await;
        }
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    berth()
        .args(args)
        .envs(env.iter().copied())
        .env_remove("BERTH_MASTER_KEY")
        .output()
        .expect("berth runs")
}

/// Every SQLite file under `dir` passes `PRAGMA integrity_check`; returns how many.
async fn check_integrity(dir: &Path) -> usize {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "sqlite") {
                files.push(path);
            }
        }
    }
    for file in &files {
        broker::objects::backup::integrity(file)
            .await
            .unwrap_or_else(|err| panic!("{}: {err}", file.display()));
    }
    files.len()
}

/// A backup taken while leases are requested and released on three tenants, checked with
/// `berth backup --verify`, restored with `berth restore --data-dir` into a new directory:
/// berth refuses to start there without the backup's master key (naming its fingerprint),
/// starts with it, and every lease acknowledged before the backup began is there, every
/// lease then ends, the ledger balances, and every database passes `integrity_check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_load_restores_every_acknowledged_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let backups = dir.path().join("backups");
    let cloud = dir.path().join("berth-runners").join("cloud");
    let backup_dir = backups.display().to_string();
    let server = Server::start(&data, &["--enable-fake", "--backup-dir", &backup_dir]);
    for tenant in TENANTS {
        setup(&server, tenant, &cloud).await;
    }
    let token = server.admin_token();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(load(
                server.url.clone(),
                token.clone(),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before: Vec<(String, String)> = acked.lock().expect("acked").clone();
    let (status, backup) = server
        .call(
            "POST",
            "/v1/admin/backups",
            Some(json!({ "to": "under-load" })),
        )
        .await;
    assert_eq!(status, 201, "{backup}");
    // The load goes on a little after the backup, then stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("load worker");
    }
    let during = acked.lock().expect("acked").len() - before.len();
    assert!(before.len() >= 20, "the load ran: {} leases", before.len());
    assert!(during > 0, "leases were acknowledged while the backup ran");
    let backup_path = backups.join("under-load");
    assert_eq!(backup["path"], backup_path.display().to_string());
    assert_eq!(backup["objects"], TENANTS.len());
    assert_eq!(backup["master_key_included"], false);
    let fingerprint = backup["master_key_fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    let manifest = std::fs::read_to_string(backup_path.join("manifest.json")).expect("manifest");
    let master_key = std::fs::read_to_string(data.join("master.key")).expect("master key");
    let admin = server.admin_token();
    assert!(
        !manifest.contains(master_key.trim()) && !manifest.contains(&admin),
        "no secret in the manifest"
    );
    server.kill();

    let verified = run(
        &["backup", "--verify", &backup_path.display().to_string()],
        &[],
    );
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with("ok: "));

    let restored_dir = dir.path().join("restored");
    let restored = run(
        &[
            "restore",
            "--from",
            &backup_path.display().to_string(),
            "--data-dir",
            &restored_dir.display().to_string(),
        ],
        &[],
    );
    let out = String::from_utf8_lossy(&restored.stdout);
    assert!(
        restored.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert!(out.contains(&fingerprint), "the key needed is named: {out}");
    assert!(check_integrity(&restored_dir).await > TENANTS.len());

    // Without the key, berth refuses to start (and makes no key of its own).
    let refused = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &restored_dir.display().to_string(),
        ],
        &[],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&fingerprint),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!restored_dir.join("master.key").exists());
    std::fs::write(restored_dir.join("master.key"), &master_key).expect("key");
    let mut perms = std::fs::metadata(restored_dir.join("master.key"))
        .expect("key")
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(restored_dir.join("master.key"), perms).expect("chmod");

    let server = Server::start(&restored_dir, &["--enable-fake"]);
    // Every lease ends (TTLs are 3 s; the fake cloud's runners are in its state directory).
    for tenant in TENANTS {
        for _ in 0..120 {
            let (_, open) = server
                .call(
                    "GET",
                    &format!("/v1/tenants/{tenant}/leases?state=active"),
                    None,
                )
                .await;
            if open["items"].as_array().is_some_and(Vec::is_empty) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let mut leases = BTreeSet::new();
    for tenant in TENANTS {
        for lease in all_pages(&server, &format!("/v1/tenants/{tenant}/leases"), "cursor").await {
            let state = lease["state"].as_str().unwrap_or_default();
            assert!(
                matches!(state, "released" | "expired" | "failed" | "canceled"),
                "{tenant}: lease never ended after the restore: {lease}"
            );
            leases.insert((
                tenant.to_owned(),
                lease["id"].as_str().expect("id").to_owned(),
            ));
        }
        let mut balance: BTreeMap<String, i64> = BTreeMap::new();
        for row in all_pages(&server, &format!("/v1/tenants/{tenant}/ledger"), "after").await {
            let lease = row["lease_id"].as_str().expect("lease_id").to_owned();
            let amount = row["amount_micros"].as_i64().expect("amount");
            match row["kind"].as_str().expect("kind") {
                "reserve" => *balance.entry(lease).or_default() += amount,
                "release" => *balance.entry(lease).or_default() -= amount,
                _ => {}
            }
        }
        for (lease, left) in balance {
            assert_eq!(left, 0, "{tenant}: {lease} reserved and released differ");
        }
    }
    for key in &before {
        assert!(
            leases.contains(key),
            "lease {key:?} was acknowledged before the backup began and is not in it"
        );
    }
    eprintln!(
        "backup under load: {} leases acknowledged before it, {during} while it ran; {} in the restore",
        before.len(),
        leases.len()
    );
    // A clean stop checkpoints every WAL, so each file is whole as it lies.
    assert!(server.terminate().success());
    assert!(check_integrity(&restored_dir).await > TENANTS.len());
}

/// `berth restore --tenant` on a running server: the tenant goes back to the backup's state;
/// the runner of a lease granted after the backup is destroyed, the runners of the restored
/// open leases stay, and at the end every runner at the provider belongs to an open lease.
/// A tenant token may not back up or restore (403); a path outside --backup-dir is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_restored_online_leaks_no_runner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let backups = dir.path().join("backups");
    let cloud = dir.path().join("berth-runners").join("cloud");
    let backup_dir = backups.display().to_string();
    let server = Server::start(&data, &["--enable-fake", "--backup-dir", &backup_dir]);
    setup(&server, "acme", &cloud).await;
    let lease = |ttl: u64| {
        let server = &server;
        async move {
            let (status, lease) = server
                .call(
                    "POST",
                    "/v1/tenants/acme/leases",
                    Some(json!({ "pool": "small", "ttl_s": ttl })),
                )
                .await;
            assert_eq!(status, 201, "{lease}");
            let id = lease["id"].as_str().expect("id").to_owned();
            server.wait_lease("acme", &id, "ready").await;
            id
        }
    };
    let kept = lease(600).await;
    let released_later = lease(600).await;

    // A tenant token may not take a backup.
    let (status, token) = server
        .call(
            "POST",
            "/v1/tenants/acme/tokens",
            Some(json!({ "name": "ci", "scopes": ["tenant:admin"] })),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    let tenant_token = token["token"].as_str().expect("token");
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/admin/backups", server.url))
        .bearer_auth(tenant_token)
        .json(&json!({ "to": "mine" }))
        .send()
        .await
        .expect("backup");
    assert_eq!(refused.status(), 403);
    let (status, body) = server
        .call(
            "POST",
            "/v1/admin/backups",
            Some(json!({ "to": "../outside" })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(!dir.path().join("outside").exists());

    let (status, backup) = server
        .call("POST", "/v1/admin/backups", Some(json!({ "to": "before" })))
        .await;
    assert_eq!(status, 201, "{backup}");

    // After the backup: one lease ends, a new one is granted.
    let (status, _) = server
        .call(
            "POST",
            &format!("/v1/tenants/acme/leases/{released_later}/release"),
            None,
        )
        .await;
    assert!(status < 300);
    server.wait_lease("acme", &released_later, "ended").await;
    let granted_after = lease(600).await;
    let runners = providers::fake::read_state_dir(&cloud).expect("cloud");
    assert!(runners.iter().any(|r| r.lease_id == granted_after));

    let answer = reqwest::Client::new()
        .post(format!("{}/v1/admin/restores", server.url))
        .bearer_auth(server.admin_token())
        .header("x-request-id", "restore-acme-1")
        .json(&json!({ "from": "before", "tenant": "acme" }))
        .send()
        .await
        .expect("restore");
    assert_eq!(answer.status(), 200);
    let restored: Value = answer.json().await.expect("json");
    assert_eq!(restored["runners_destroying"], 1, "{restored}");
    // The object's own log line about it carries the request's id.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let line = server
            .log
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the tenant object logs the runner it destroys");
        let event: Value = serde_json::from_str(&line).unwrap_or_default();
        if event["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("restore: the restored state has no open lease"))
        {
            assert_eq!(event["span"]["request_id"], "restore-acme-1", "{event}");
            break;
        }
    }

    // The restored state: the lease granted after the backup is unknown; the two from before
    // are open.
    let (status, _) = server
        .call(
            "GET",
            &format!("/v1/tenants/acme/leases/{granted_after}"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (_, open) = server
        .call("GET", "/v1/tenants/acme/leases?state=active", None)
        .await;
    let open: BTreeSet<String> = open["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(open, BTreeSet::from([kept.clone(), released_later.clone()]));

    // No runner is left without an open lease (bounded wait for the destroy).
    let mut leaked = Vec::new();
    for _ in 0..100 {
        let runners = providers::fake::read_state_dir(&cloud).expect("cloud");
        leaked = runners
            .iter()
            .filter(|r| !open.contains(&r.lease_id))
            .map(|r| r.lease_id.clone())
            .collect();
        if leaked.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        leaked.is_empty(),
        "runners without an open lease: {leaked:?}"
    );
    let runners = providers::fake::read_state_dir(&cloud).expect("cloud");
    assert!(
        runners.iter().any(|r| r.lease_id == kept),
        "the kept lease keeps its runner"
    );

    // The tenant works on: a lease released now ends and its runner goes.
    let (status, _) = server
        .call(
            "POST",
            &format!("/v1/tenants/acme/leases/{kept}/release"),
            None,
        )
        .await;
    assert!(status < 300);
    server.wait_lease("acme", &kept, "ended").await;
    server.kill();
}

/// `--backup-every 1s --backup-keep 2`: scheduled backups appear in --backup-dir, each
/// complete (a manifest that `berth backup --verify` accepts), and only the newest two stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_are_kept_to_their_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backups = dir.path().join("backups");
    let backup_dir = backups.display().to_string();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--backup-dir",
            &backup_dir,
            "--backup-every",
            "1s",
            "--backup-keep",
            "2",
        ],
    );
    let (status, _) = server
        .call("POST", "/v1/tenants", Some(json!({ "name": "acme" })))
        .await;
    assert_eq!(status, 201);
    let scheduled = || -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(&backups)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.join("manifest.json").exists())
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    };
    // Four periods: at least three backups were written, two are kept.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    // (A backup just finished may stand beside the two for the instant before the pruning.)
    let mut kept = scheduled();
    for _ in 0..20 {
        if kept.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        kept = scheduled();
    }
    assert_eq!(kept.len(), 2, "{kept:?}");
    for backup in &kept {
        let name = backup
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("scheduled-"), "{name}");
        let verified = run(&["backup", "--verify", &backup.display().to_string()], &[]);
        assert!(verified.status.success(), "{name}");
    }
    server.kill();
}
