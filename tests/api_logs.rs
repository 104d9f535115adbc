//! `GET /v1/tenants/{t}/leases/{id}/logs` over HTTP: any token of the tenant may read a
//! `process` runner's output, in bounded pieces that read on from `next_offset`; providers
//! that keep no output, and leases without a runner, answer 409 `no_logs`; bad parameters
//! are 400 and read nothing. (Another tenant's token gets 404: `api_isolation.rs`.)

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::inproc::{Harness, Tenant, assert_problem};

/// A `process` account `local` (the operator's) and a pool `talk` whose runner prints
/// `text` and sleeps.
async fn process_pool(h: &Harness, tenant: &Tenant, text: &str) {
    let (status, _, body) = h
        .json(
            Method::PUT,
            &tenant.path("/providers/local"),
            Some(&h.admin),
            Some(json!({ "kind": "process", "config": { "grace_ms": 500 } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let script = format!("printf '%s' '{text}'; exec sleep 60");
    let (status, _, body) = h
        .json(
            Method::PUT,
            &tenant.path("/pools/talk"),
            Some(&h.admin),
            Some(json!({
                "provider": "local", "machine_type": "local", "hourly_price_micros": 1,
                "command": ["sh", "-c", script],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn logs(
    h: &Harness,
    tenant: &Tenant,
    id: &str,
    query: &str,
    token: &str,
) -> (StatusCode, Value) {
    let path = tenant.path(&format!("/leases/{id}/logs{query}"));
    let (status, _, body) = h.json(Method::GET, &path, Some(token), None).await;
    (status, body)
}

/// A reader token reads a process runner's stdout in pieces bounded by `limit`; an offset
/// past the end reads nothing; bad parameters are 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_runner_output_in_bounded_pieces() {
    let h = Harness::start().await;
    let tenant = h.setup_tenant("acme", json!({})).await;
    process_pool(&h, &tenant, "hello world").await;
    let lease = h.grant(&tenant, json!({ "pool": "talk" })).await;
    let id = lease["id"].as_str().expect("id");
    h.wait_state(&tenant, id, "ready").await;

    // The runner prints soon after it starts: read until all of it is there (bounded).
    let mut whole = Value::Null;
    for _ in 0..100 {
        let (status, body) = logs(&h, &tenant, id, "", &tenant.read).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["size"] == 11 {
            whole = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(whole["text"], "hello world", "{whole}");
    assert_eq!(whole["stream"], "stdout");
    assert_eq!(
        (whole["offset"].as_u64(), whole["next_offset"].as_u64()),
        (Some(0), Some(11))
    );

    let (_, piece) = logs(&h, &tenant, id, "?limit=5", &tenant.read).await;
    assert_eq!(piece["text"], "hello");
    assert_eq!(piece["next_offset"], 5);
    let (_, rest) = logs(&h, &tenant, id, "?offset=5&limit=100", &tenant.write).await;
    assert_eq!(rest["text"], " world");
    let (_, past) = logs(&h, &tenant, id, "?offset=999", &tenant.admin).await;
    assert_eq!(
        (past["text"].as_str(), past["offset"].as_u64()),
        (Some(""), Some(11))
    );
    let (_, stderr) = logs(&h, &tenant, id, "?stream=stderr", &tenant.read).await;
    assert_eq!(
        (stderr["stream"].as_str(), stderr["size"].as_u64()),
        (Some("stderr"), Some(0))
    );

    for query in [
        "?stream=both",
        "?limit=0",
        "?limit=1048577",
        "?offset=-1",
        "?path=/etc/passwd",
    ] {
        let (status, body) = logs(&h, &tenant, id, query, &tenant.read).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    let (status, _) = logs(&h, &tenant, "..%2F..%2Fdata", "", &tenant.read).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // No runner outlives the test.
    h.release(&tenant, id).await;
    h.assert_documented().await;
}

/// A `fake` runner keeps no output, a queued lease has no runner, an ended one no longer has
/// one: each is 409 `no_logs`, saying which; an unknown lease is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_without_output_say_why() {
    let h = Harness::start().await;
    let tenant = h
        .setup_tenant("acme", json!({ "max_active_leases": 1, "max_queued": 2 }))
        .await;
    let running = h.grant(&tenant, json!({ "pool": "small" })).await;
    let running = running["id"].as_str().expect("id").to_owned();
    h.wait_state(&tenant, &running, "ready").await;
    let answer = h
        .json(
            Method::GET,
            &tenant.path(&format!("/leases/{running}/logs")),
            Some(&tenant.read),
            None,
        )
        .await;
    assert_problem(&answer, 409, "no_logs");
    assert!(
        answer.2["detail"]
            .as_str()
            .is_some_and(|d| d.contains("kind `fake`") && d.contains("keeps no output")),
        "{}",
        answer.2
    );

    let (status, _, queued) = h
        .request_lease(&tenant, json!({ "pool": "small", "wait_s": 600 }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let queued = queued["id"].as_str().expect("id");
    let (status, body) = logs(&h, &tenant, queued, "", &tenant.read).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("queued")),
        "{body}"
    );

    let (status, _, _) = h
        .json(
            Method::POST,
            &tenant.path(&format!("/leases/{running}/release")),
            Some(&tenant.write),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    h.wait_state(&tenant, &running, "released").await;
    let (status, body) = logs(&h, &tenant, &running, "", &tenant.read).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("has ended")),
        "{body}"
    );

    let (status, body) = logs(&h, &tenant, "lease_nosuch", "", &tenant.read).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    h.assert_documented().await;
}
