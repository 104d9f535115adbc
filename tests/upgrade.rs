//! Operators' data survives upgrades (DESIGN.md §9): a data directory written by an earlier
//! build (`tests/fixtures/upgrade-1cb09a9`, see `tests/fixtures/README.md`) opens with this
//! build and serves — tenants, limits (now with the quota they match), tokens, leases, the
//! ledger, sealed credentials and secrets, and a runner the earlier build left in the old
//! default root.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use serde_json::{Value, json};
use support::Server;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/upgrade-1cb09a9"
);

/// Copies a directory tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// One JSON call with `token`.
async fn call(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", server.url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("berth answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Everything the earlier build stored is there and works with this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_an_earlier_build_opens_and_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    copy_tree(&Path::new(FIXTURE).join("data"), &data);
    // git keeps no modes: the key files are 0600 again, as berth left them.
    for file in ["admin-token", "master.key"] {
        std::fs::set_permissions(data.join(file), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
    let secrets: Value = serde_json::from_slice(
        &std::fs::read(Path::new(FIXTURE).join("secrets.json")).expect("secrets.json"),
    )
    .expect("json");
    let token = |name: &str| secrets[name].as_str().expect("a token").to_owned();
    let (admin, tenant_admin, ci) = (token("admin"), token("tenant_admin"), token("ci"));
    let (released, live) = (token("released"), token("live"));
    let server = Server::start(&data, &[]);
    assert_eq!(server.admin_token(), admin);

    // The tenant and its limits; its quota matches them (the stated default), counts default.
    let (status, tenant) = call(&server, &admin, "GET", "/v1/tenants/acme", None).await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["limits"]["max_active_leases"], 3);
    assert_eq!(tenant["limits"]["spend_cap_daily_micros"], 20_000_000);
    for field in [
        "max_active_leases",
        "max_queued",
        "spend_cap_daily_micros",
        "spend_cap_monthly_micros",
        "max_ttl_s",
    ] {
        assert_eq!(tenant["quota"][field], tenant["limits"][field], "{field}");
    }
    assert_eq!(tenant["quota"]["max_tokens"], 50);
    // Its tokens: the tenant admin stays within that quota now.
    let (status, _) = call(
        &server,
        &tenant_admin,
        "PATCH",
        "/v1/tenants/acme",
        Some(json!({ "limits": { "max_active_leases": 4 } })),
    )
    .await;
    assert_eq!(status, 403);
    let (status, pools) = call(
        &server,
        &tenant_admin,
        "GET",
        "/v1/tenants/acme/pools",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(pools["items"][0]["command"], json!(["sleep", "600"]));
    let (status, accounts) = call(
        &server,
        &tenant_admin,
        "GET",
        "/v1/tenants/acme/providers",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let cloud = accounts["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|a| a["name"] == "cloud")
        .expect("cloud");
    assert_eq!(cloud["has_credentials"], true);
    let (status, leases) = call(&server, &ci, "GET", "/v1/tenants/acme/leases", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        leases["items"].as_array().map(Vec::len),
        Some(2),
        "{leases}"
    );
    // The ledger: the released lease's reserve, charge and release; the live one's reserve.
    let (status, ledger) = call(&server, &ci, "GET", "/v1/tenants/acme/ledger", None).await;
    assert_eq!(status, 200);
    let kinds = |lease: &str| -> Vec<String> {
        ledger["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|row| row["lease_id"] == lease)
            .map(|row| row["kind"].as_str().expect("kind").to_owned())
            .collect()
    };
    assert_eq!(kinds(&released), ["reserve", "charge", "release"]);

    // The sealed GitHub secret still opens: a delivery signed with it is accepted.
    let payload = json!({ "action": "in_progress", "workflow_job": { "id": 9, "labels": ["linux"], "created_at": chrono::Utc::now().to_rfc3339() } }).to_string();
    let signature = {
        use hmac::Mac as _;
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"gh-fixture-secret")
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
        .header("x-github-delivery", "upgrade-1")
        .header("x-hub-signature-256", signature)
        .header("content-type", "application/json")
        .body(payload)
        .send()
        .await
        .expect("berth answers");
    assert!(answer.status().is_success(), "{}", answer.status());

    // The live lease's runner, left by the earlier build in <data>/runners, is destroyed when
    // the lease ends (its process died with the old machine; no stranger is signalled). The
    // fixture is older than the lease's one-hour TTL, so by now the lease has expired at
    // open; only right after the fixture is made is it still live, and then it is released.
    let old_dir = data.join("runners/acme").join(&live);
    let (status, lease) = call(
        &server,
        &ci,
        "GET",
        &format!("/v1/tenants/acme/leases/{live}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{lease}");
    let expires_at = lease["expires_at"]
        .as_str()
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .expect("expires_at");
    let expected = if expires_at < chrono::Utc::now() {
        "expired"
    } else {
        let (status, _) = call(
            &server,
            &ci,
            "POST",
            &format!("/v1/tenants/acme/leases/{live}/release"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        "released"
    };
    let ended = server.wait_lease("acme", &live, "ended").await;
    assert_eq!(ended["state"], expected, "{ended}");
    assert!(!old_dir.exists(), "the old runner directory is gone");
    let (status, ledger) = call(&server, &ci, "GET", "/v1/tenants/acme/ledger", None).await;
    assert_eq!(status, 200);
    let live_kinds: Vec<&str> = ledger["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|row| row["lease_id"] == live.as_str())
        .map(|row| row["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(live_kinds, ["reserve", "charge", "release"]);
    // New runners go to the runners directory beside the data directory.
    let (status, lease) = call(
        &server,
        &ci,
        "POST",
        "/v1/tenants/acme/leases",
        Some(json!({ "pool": "local", "ttl_s": 600 })),
    )
    .await;
    assert_eq!(status, 201, "{lease}");
    let id = lease["id"].as_str().expect("id");
    let ready = server.wait_lease("acme", id, "ready").await;
    let address = ready["runner"]["address"].as_str().expect("address");
    assert!(
        address.starts_with(&dir.path().join("berth-runners").display().to_string()),
        "{address}"
    );
    let (status, _) = call(
        &server,
        &ci,
        "POST",
        &format!("/v1/tenants/acme/leases/{id}/release"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    server.wait_lease("acme", id, "ended").await;
}
