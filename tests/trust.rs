//! The trust boundary (DESIGN.md §6 "Who may do what"), through the real binary: a tenant's
//! own admin stays within the quota the operator set, host runners are the operator's, and
//! what berth did not create it never destroys.

mod support;

use serde_json::{Value, json};
use support::Server;

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
    let (status, created) = server
        .call(
            "POST",
            "/v1/tenants",
            Some(json!({
                "name": "acme",
                "limits": { "max_active_leases": 2, "spend_cap_daily_micros": 5_000_000 },
                "quota": { "max_active_leases": 4, "max_tokens": 2, "max_webhooks": 1, "max_pools": 1 },
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
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

/// The operator lowering a quota below what runs refuses new grants and ends no lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_a_quota_refuses_grants_and_ends_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]);
    let (status, _) = server
        .call(
            "POST",
            "/v1/tenants",
            Some(json!({ "name": "acme", "limits": { "max_active_leases": 3 } })),
        )
        .await;
    assert_eq!(status, 201);
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
