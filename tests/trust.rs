//! The trust boundary (DESIGN.md §6 "Who may do what"), through the real binary: a tenant's
//! own admin stays within the quota the operator set, host runners are the operator's, and
//! what berth did not create it never destroys.

mod support;

use serde_json::{Value, json};
use support::Server;

/// Creates a tenant as the operator from `body`; returns the created tenant.
async fn create_tenant(server: &Server, body: Value) -> Value {
    let (status, created) = server.call("POST", "/v1/tenants", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created
}

/// One JSON call with `token`: `(status, body)` (`Null` for an empty body).
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
    let bytes = response.bytes().await.expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_default()
    };
    (status, value)
}

/// Asserts a problem answer with `status` and `code`.
#[track_caller]
fn refused(answer: &(u16, Value), status: u16, code: &str) {
    assert_eq!(
        (answer.0, answer.1["code"].as_str()),
        (status, Some(code)),
        "{}",
        answer.1
    );
}

/// Creates a token of `tenant` with `scopes` as the operator; returns its secret.
async fn token(server: &Server, tenant: &str, scopes: &[&str]) -> String {
    let (status, body) = server
        .call(
            "POST",
            &format!("/v1/tenants/{tenant}/tokens"),
            Some(json!({ "scopes": scopes })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

/// Puts a `process` account `local` and a pool `sleepy` whose runners sleep, as the operator.
async fn sleepy_pool(server: &Server, tenant: &str) {
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/tenants/{tenant}/providers/local"),
            Some(json!({ "kind": "process", "config": { "grace_ms": 200 } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .call(
            "PUT",
            &format!("/v1/tenants/{tenant}/pools/sleepy"),
            Some(json!({
                "provider": "local", "machine_type": "local", "hourly_price_micros": 3_600,
                "command": ["sleep", "600"],
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The tenant's limits and quota as the operator sees them.
async fn tenant(server: &Server, name: &str) -> Value {
    let (status, body) = server
        .call("GET", &format!("/v1/tenants/{name}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A tenant admin sets limits only within the quota — never above a ceiling, never without a
/// cap the quota sets, never the quota itself — and holds no more tokens, webhooks or pools
/// than it allows; refusals change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_admin_stays_within_the_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]);
    let created = create_tenant(
        &server,
        json!({
            "name": "acme",
            "limits": { "max_active_leases": 2, "spend_cap_daily_micros": 5_000_000 },
            "quota": { "max_active_leases": 4, "max_tokens": 2, "max_webhooks": 1, "max_pools": 1 },
        }),
    )
    .await;
    assert_eq!(created["quota"]["max_active_leases"], 4);
    assert_eq!(
        created["quota"]["spend_cap_daily_micros"], 5_000_000,
        "ceilings not given are the starting limits"
    );
    let admin = token(&server, "acme", &["tenant:admin"]).await;
    let before = tenant(&server, "acme").await;

    for limits in [
        json!({ "max_active_leases": 5 }),
        json!({ "spend_cap_daily_micros": null }),
        json!({ "spend_cap_daily_micros": 5_000_001 }),
        json!({ "max_ttl_s": 86_401 }),
    ] {
        let answer = call(
            &server,
            &admin,
            "PATCH",
            "/v1/tenants/acme",
            Some(json!({ "limits": limits })),
        )
        .await;
        refused(&answer, 403, "quota_exceeded");
    }
    let answer = call(
        &server,
        &admin,
        "PATCH",
        "/v1/tenants/acme",
        Some(json!({ "quota": { "max_active_leases": 100 } })),
    )
    .await;
    refused(&answer, 403, "operator_only");
    assert_eq!(
        tenant(&server, "acme").await,
        before,
        "refusals changed nothing"
    );
    let (status, within) = call(
        &server,
        &admin,
        "PATCH",
        "/v1/tenants/acme",
        Some(json!({ "limits": { "max_active_leases": 4, "spend_cap_daily_micros": 1_000_000 } })),
    )
    .await;
    assert_eq!(status, 200, "{within}");
    assert_eq!(within["limits"]["max_active_leases"], 4);

    // Counts: a second token fits, a third does not; one webhook endpoint; one pool.
    let (status, _) = call(
        &server,
        &admin,
        "POST",
        "/v1/tenants/acme/tokens",
        Some(json!({ "scopes": ["leases:write"] })),
    )
    .await;
    assert_eq!(status, 201);
    let answer = call(
        &server,
        &admin,
        "POST",
        "/v1/tenants/acme/tokens",
        Some(json!({ "scopes": ["leases:read"] })),
    )
    .await;
    refused(&answer, 403, "quota_exceeded");
    for (name, expected) in [("first", 200), ("second", 403)] {
        let (status, body) = call(
            &server,
            &admin,
            "PUT",
            &format!("/v1/tenants/acme/webhooks/{name}"),
            Some(json!({ "url": "https://ci.example.com/berth" })),
        )
        .await;
        assert_eq!(status, expected, "{body}");
    }
    sleepy_pool(&server, "acme").await;
    let answer = server
        .call(
            "PUT",
            "/v1/tenants/acme/pools/another",
            Some(json!({ "provider": "local", "machine_type": "local", "hourly_price_micros": 1, "command": ["true"] })),
        )
        .await;
    refused(&answer, 403, "quota_exceeded");
}

/// Creates that race keep to their rules: of twelve token creates at once for one tenant
/// exactly the quota's number succeed and the rest are refused; creates of different tenants
/// at once all succeed (one name racing itself: `api_routes::tenants_create_list_get_patch`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_keep_to_the_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]);
    create_tenant(
        &server,
        json!({ "name": "acme", "quota": { "max_tokens": 3 } }),
    )
    .await;
    let admin = token(&server, "acme", &["tenant:admin"]).await;
    let racing = (0..12).map(|i| {
        call(
            &server,
            &admin,
            "POST",
            "/v1/tenants/acme/tokens",
            Some(json!({ "scopes": ["leases:read"], "name": format!("ci-{i}") })),
        )
    });
    let answers = futures::future::join_all(racing).await;
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        2,
        "the quota's third token is the admin's own: {statuses:?}"
    );
    for answer in answers.iter().filter(|(status, _)| *status != 201) {
        refused(answer, 403, "quota_exceeded");
    }
    let (_, listed) = call(&server, &admin, "GET", "/v1/tenants/acme/tokens", None).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(3));

    let different = (0..10).map(|i| {
        server.call(
            "POST",
            "/v1/tenants",
            Some(json!({ "name": format!("team-{i}") })),
        )
    });
    for (status, body) in futures::future::join_all(different).await {
        assert_eq!(status, 201, "{body}");
    }
    let (_, page) = server.call("GET", "/v1/tenants?limit=100", None).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(11));
}

/// The operator lowering a quota below what runs refuses new grants and ends no lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_a_quota_refuses_grants_and_ends_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]);
    create_tenant(
        &server,
        json!({ "name": "acme", "limits": { "max_active_leases": 3 } }),
    )
    .await;
    sleepy_pool(&server, "acme").await;
    let mut running = Vec::new();
    for _ in 0..2 {
        let (status, lease) = server
            .call(
                "POST",
                "/v1/tenants/acme/leases",
                Some(json!({ "pool": "sleepy", "ttl_s": 600 })),
            )
            .await;
        assert_eq!(status, 201, "{lease}");
        running.push(lease["id"].as_str().expect("id").to_owned());
    }
    let (status, lowered) = server
        .call(
            "PATCH",
            "/v1/tenants/acme",
            Some(json!({ "quota": { "max_active_leases": 1 } })),
        )
        .await;
    assert_eq!(status, 200, "{lowered}");
    assert_eq!(lowered["quota"]["max_active_leases"], 1);
    assert_eq!(
        lowered["limits"]["max_active_leases"], 1,
        "the limit follows the quota down"
    );
    let answer = server
        .call(
            "POST",
            "/v1/tenants/acme/leases",
            Some(json!({ "pool": "sleepy", "ttl_s": 600 })),
        )
        .await;
    refused(&answer, 429, "concurrency_cap");
    for id in &running {
        let lease = server.wait_lease("acme", id, "ready").await;
        assert_eq!(lease["state"], "ready", "{lease}");
    }
    // The operator's own limits raise the ceilings it does not set with them.
    let (status, raised) = server
        .call(
            "PATCH",
            "/v1/tenants/acme",
            Some(json!({ "limits": { "max_active_leases": 3 } })),
        )
        .await;
    assert_eq!(status, 200, "{raised}");
    assert_eq!(raised["quota"]["max_active_leases"], 3);
    for id in &running {
        let (status, _) = server
            .call(
                "POST",
                &format!("/v1/tenants/acme/leases/{id}/release"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        server.wait_lease("acme", id, "ended").await;
    }
}

/// Host runners are the operator's: a tenant admin can neither create nor change a `process`
/// (or `fake`) account nor set the command of a pool on one — though its tokens lease from
/// such a pool — and a `root` outside the runners directory is refused even to the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_runners_are_the_operators() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    create_tenant(&server, json!({ "name": "acme" })).await;
    let admin = token(&server, "acme", &["tenant:admin"]).await;
    let ci = token(&server, "acme", &["leases:write"]).await;

    for body in [
        json!({ "kind": "process", "config": {} }),
        json!({ "kind": "fake", "config": {} }),
    ] {
        let answer = call(
            &server,
            &admin,
            "PUT",
            "/v1/tenants/acme/providers/local",
            Some(body),
        )
        .await;
        refused(&answer, 403, "operator_only");
    }
    // Not even the operator gets `fake` from a server started without --enable-fake.
    let answer = server
        .call(
            "PUT",
            "/v1/tenants/acme/providers/fake",
            Some(json!({ "kind": "fake" })),
        )
        .await;
    refused(&answer, 422, "invalid_request");
    assert!(
        answer.1["detail"]
            .as_str()
            .is_some_and(|d| d.contains("--enable-fake"))
    );
    // Roots outside the runners directory: elsewhere, in the data directory, climbing out.
    let runners = dir.path().join("berth-runners");
    for root in [
        dir.path().join("elsewhere"),
        data.join("runners"),
        runners.join("..").join("data"),
    ] {
        let answer = server
            .call(
                "PUT",
                "/v1/tenants/acme/providers/local",
                Some(json!({ "kind": "process", "config": { "root": root } })),
            )
            .await;
        refused(&answer, 422, "invalid_request");
    }
    sleepy_pool(&server, "acme").await;
    for config in [
        json!({ "grace_ms": 200 }),
        json!({ "root": runners.join("mine") }),
    ] {
        let answer = call(
            &server,
            &admin,
            "PUT",
            "/v1/tenants/acme/providers/local",
            Some(json!({ "kind": "process", "config": config })),
        )
        .await;
        refused(&answer, 403, "operator_only");
    }
    let pool = |command: Value, price: i64| json!({ "provider": "local", "machine_type": "local", "hourly_price_micros": price, "command": command });
    for (name, body) in [
        (
            "sleepy",
            pool(json!(["sh", "-c", "cat /etc/shadow"]), 3_600),
        ),
        ("mine", pool(json!(["sleep", "600"]), 3_600)),
    ] {
        let answer = call(
            &server,
            &admin,
            "PUT",
            &format!("/v1/tenants/acme/pools/{name}"),
            Some(body),
        )
        .await;
        refused(&answer, 403, "operator_only");
    }
    // The rest of an operator's pool is the tenant's: same command, another price.
    let (status, repriced) = call(
        &server,
        &admin,
        "PUT",
        "/v1/tenants/acme/pools/sleepy",
        Some(pool(json!(["sleep", "600"]), 7_200)),
    )
    .await;
    assert_eq!(status, 200, "{repriced}");
    let (status, lease) = call(
        &server,
        &ci,
        "POST",
        "/v1/tenants/acme/leases",
        Some(json!({ "pool": "sleepy", "ttl_s": 600 })),
    )
    .await;
    assert_eq!(status, 201, "{lease}");
    let id = lease["id"].as_str().expect("id");
    server.wait_lease("acme", id, "ready").await;
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

/// Reconciliation never removes a directory berth did not make, even one named like a lease
/// under the tenant's runners root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_leaves_a_directory_it_did_not_create() {
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = dir
        .path()
        .join("berth-runners")
        .join("acme")
        .join("lease_000000000000000000000001");
    std::fs::create_dir_all(foreign.join("work")).expect("mkdir");
    std::fs::write(foreign.join("precious.txt"), "not berth's").expect("write");
    let server = Server::start(&dir.path().join("data"), &["--reconcile-interval", "1s"]);
    create_tenant(&server, json!({ "name": "acme" })).await;
    // A new account starts a reconciliation round at once.
    sleepy_pool(&server, "acme").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = false;
    while !seen && std::time::Instant::now() < deadline {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        match server.log.recv_timeout(remaining) {
            Ok(line) => seen = line.contains("a directory berth did not make"),
            Err(_) => break,
        }
    }
    assert!(seen, "reconciliation listed the runners root");
    assert!(
        foreign.join("precious.txt").is_file(),
        "reconciliation removed a directory berth did not make"
    );
}

/// A captured, correctly signed GitHub `queued` delivery resent under a new delivery id (which
/// GitHub does not sign) makes no second lease; a bad signature and an unknown tenant get the
/// same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_github_job_makes_no_second_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]);
    create_tenant(&server, json!({ "name": "acme" })).await;
    sleepy_pool(&server, "acme").await;
    let (status, body) = server
        .call(
            "PUT",
            "/v1/tenants/acme/pools/sleepy",
            Some(json!({
                "provider": "local", "machine_type": "local", "hourly_price_micros": 3_600,
                "command": ["sleep", "600"], "labels": ["linux"],
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .call(
            "PUT",
            "/v1/tenants/acme/integrations/github",
            Some(json!({ "secret": "gh-secret" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let payload = json!({
        "action": "queued",
        "workflow_job": {
            "id": 4242, "run_id": 77, "labels": ["linux"],
            "created_at": chrono::Utc::now().to_rfc3339(),
        },
        "repository": { "full_name": "acme/web" },
    })
    .to_string();
    let sign = |secret: &[u8]| {
        use hmac::Mac as _;
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(secret).expect("key");
        mac.update(payload.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let deliver = |tenant: &'static str, delivery: &'static str, signature: String| {
        let (url, payload) = (server.url.clone(), payload.clone());
        async move {
            let answer = reqwest::Client::new()
                .post(format!("{url}/v1/tenants/{tenant}/integrations/github"))
                .header("x-github-event", "workflow_job")
                .header("x-github-delivery", delivery)
                .header("x-hub-signature-256", signature)
                .header("content-type", "application/json")
                .body(payload)
                .send()
                .await
                .expect("berth answers");
            let status = answer.status().as_u16();
            (status, answer.text().await.unwrap_or_default())
        }
    };
    let (status, first) = deliver("acme", "d-1", sign(b"gh-secret")).await;
    assert!(status == 201 || status == 202, "{status} {first}");
    let (status, replay) = deliver("acme", "d-2-forged", sign(b"gh-secret")).await;
    assert_eq!(status, 200, "{replay}");
    assert!(replay.contains("duplicate"), "{replay}");
    let (status, page) = server.call("GET", "/v1/tenants/acme/leases", None).await;
    assert_eq!(status, 200);
    let leases = page["items"].as_array().expect("items");
    assert_eq!(leases.len(), 1, "{page}");
    // Unknown tenant and wrong signature: the same answer.
    let bad = deliver("acme", "d-3", sign(b"wrong")).await;
    let ghost = deliver("ghost", "d-4", sign(b"gh-secret")).await;
    assert_eq!(bad.0, 401);
    // Identical but for the request id, each request's own.
    let without_id = |text: &str| -> serde_json::Value {
        let mut problem: serde_json::Value = serde_json::from_str(text).expect("problem");
        problem
            .as_object_mut()
            .expect("object")
            .remove("request_id");
        problem
    };
    assert_eq!((bad.0, without_id(&bad.1)), (ghost.0, without_id(&ghost.1)));
    let id = leases[0]["id"].as_str().expect("id");
    server.wait_lease("acme", id, "ready").await;
    let (status, _) = server
        .call(
            "POST",
            &format!("/v1/tenants/acme/leases/{id}/release"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    server.wait_lease("acme", id, "ended").await;
}
