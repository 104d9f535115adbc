//! Rotating the operator's secrets through the real binary: `berth rotate-admin-token` while
//! berth runs, and `berth rotate-master-key` with berth stopped, after which every secret in
//! the tenant databases opens under the new key only, and berth serves as before.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use broker::secrets::Keys;
use serde_json::json;
use support::{Server, berth};

/// Runs a `berth` command to completion; returns its stdout, stderr and success.
fn run(args: &[&str]) -> (String, String, bool) {
    let output = berth()
        .args(args)
        .env_remove("BERTH_ADMIN_TOKEN")
        .env_remove("BERTH_MASTER_KEY")
        .env_remove("BERTH_PREVIOUS_MASTER_KEY")
        .output()
        .expect("berth runs");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.success(),
    )
}

/// The status of `GET /v1/tenants` with `token`.
async fn status_with(server: &Server, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/v1/tenants", server.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("berth answers")
        .status()
        .as_u16()
}

/// The rotated admin token works on the running server within seconds, and the old one stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_rotation_needs_no_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let old = server.admin_token();
    assert_eq!(status_with(&server, &old).await, 200);
    let (stdout, stderr, ok) = run(&[
        "rotate-admin-token",
        "--data-dir",
        &data.display().to_string(),
    ]);
    assert!(ok, "{stderr}");
    let new = stdout.trim().to_owned();
    assert!(new.starts_with("bt_") && new != old, "{stdout}");
    assert_eq!(server.admin_token(), new, "the file holds the new token");
    let mut switched = false;
    for _ in 0..300 {
        if status_with(&server, &new).await == 200 {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "the new token was not accepted within 30 s");
    assert_eq!(
        status_with(&server, &old).await,
        401,
        "the old token still works"
    );
}

/// The one tenant database of a data directory.
fn tenant_database(data: &Path) -> PathBuf {
    let mut found = Vec::new();
    for shard in std::fs::read_dir(data.join("objects/tenant")).expect("objects") {
        for file in std::fs::read_dir(shard.expect("shard").path()).expect("shard") {
            let path = file.expect("file").path();
            if path.extension().is_some_and(|e| e == "sqlite") {
                found.push(path);
            }
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

/// The sealed secrets in a tenant database: `(associated name, blob)` of provider credentials
/// and webhook secrets.
async fn sealed(database: &Path) -> Vec<(String, Vec<u8>)> {
    use sqlx::Connection as _;
    let mut db =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", database.display()))
            .await
            .expect("open the tenant database");
    let mut blobs: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT name, credentials FROM providers WHERE credentials IS NOT NULL")
            .fetch_all(&mut db)
            .await
            .expect("providers");
    let webhooks: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT name, secret FROM webhooks")
        .fetch_all(&mut db)
        .await
        .expect("webhooks");
    blobs.extend(
        webhooks
            .into_iter()
            .map(|(name, secret)| (format!("webhook:{name}"), secret)),
    );
    blobs
}

fn master_key(data: &Path) -> [u8; 32] {
    let text = std::fs::read_to_string(data.join("master.key")).expect("master.key");
    broker::secrets::decode_master_key(text.trim()).expect("a key")
}

/// After `berth rotate-master-key` every provider credential, webhook secret and the GitHub
/// secret opens under the new key and not under the old one; the previous key is forgotten;
/// berth refuses to rotate while it serves, and serves the same tenant afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_key_rotation_reseals_every_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let server = Server::start(&data, &[]);
    let (status, _) = server
        .call("POST", "/v1/tenants", Some(json!({ "name": "acme" })))
        .await;
    assert_eq!(status, 201);
    let (status, body) = server
        .call(
            "PUT",
            "/v1/tenants/acme/providers/cloud",
            Some(json!({ "kind": "hetzner", "credentials": { "token": "hz-secret-token" } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .call(
            "PUT",
            "/v1/tenants/acme/webhooks/alerts",
            Some(json!({ "url": "https://ci.example.com/berth" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .call(
            "PUT",
            "/v1/tenants/acme/integrations/github",
            Some(json!({ "secret": "gh-hook-secret" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Not while berth serves: the data directory is locked.
    let (_, stderr, ok) = run(&["rotate-master-key", "--data-dir", &data_arg]);
    assert!(!ok && stderr.contains("stop it first"), "{stderr}");
    let old = master_key(&data);
    assert!(server.terminate().success());

    let (stdout, stderr, ok) = run(&["rotate-master-key", "--data-dir", &data_arg]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("1 tenants"), "{stdout}");
    assert!(
        !data.join("master.key.previous").exists(),
        "the old key is forgotten"
    );
    let new = master_key(&data);
    assert_ne!(new, old);
    let blobs = sealed(&tenant_database(&data)).await;
    assert_eq!(blobs.len(), 2, "{blobs:?}");
    for (name, blob) in &blobs {
        assert!(
            Keys::from_master(&new).open("acme", name, blob).is_ok(),
            "{name} opens under the new key"
        );
        assert!(
            Keys::from_master(&old).open("acme", name, blob).is_err(),
            "{name} still under the old key"
        );
    }

    // The GitHub secret too: a delivery signed with it is accepted by the restarted server.
    let server = Server::start(&data, &[]);
    let payload = json!({
        "action": "in_progress",
        "workflow_job": { "id": 1, "run_id": 2, "labels": ["linux"], "created_at": "2026-12-05T12:00:00Z" },
    })
    .to_string();
    let signature = {
        use hmac::Mac as _;
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"gh-hook-secret")
            .expect("key");
        mac.update(payload.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let answer = reqwest::Client::new()
        .post(format!(
            "{}/v1/tenants/acme/integrations/github",
            server.url
        ))
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", "rotation-1")
        .header("x-hub-signature-256", signature)
        .header("content-type", "application/json")
        .body(payload)
        .send()
        .await
        .expect("berth answers");
    assert!(
        answer.status().is_success(),
        "{}: {}",
        answer.status(),
        answer.text().await.unwrap_or_default()
    );
    let (status, accounts) = server.call("GET", "/v1/tenants/acme/providers", None).await;
    assert_eq!(status, 200);
    assert_eq!(accounts["items"][0]["has_credentials"], true);
}
