//! Providers on real money over HTTP: re-pointing a provider account that has a live runner is
//! 409 `account_in_use` (problem+json), a bad `force` is 400 and changes nothing, `force=true`
//! is accepted and relaxes no cap, and the runner is destroyed where it lives (also after a
//! restart); a pool's alternatives are validated and shown; a lease shows its provisioning
//! attempts.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::inproc::{Harness, assert_problem};

/// Re-pointing a live account needs `force`, which changes the account but not the caps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_pointing_a_live_account_is_refused() {
    let mut h = Harness::start().await;
    let tenant = h
        .setup_tenant("acme", json!({ "max_active_leases": 1 }))
        .await;
    let lease = h
        .grant(&tenant, json!({ "pool": "small", "ttl_s": 600 }))
        .await;
    let id = lease["id"].as_str().expect("id").to_owned();
    h.wait_state(&tenant, &id, "ready").await;
    let elsewhere =
        json!({ "kind": "fake", "config": { "cloud": format!("{}-elsewhere", h.cloud) } });
    let path = tenant.path("/providers/cloud");
    let refused = h
        .json(Method::PUT, &path, Some(&h.admin), Some(elsewhere.clone()))
        .await;
    assert_problem(&refused, 409, "account_in_use");
    assert!(
        refused.2["detail"]
            .as_str()
            .is_some_and(|d| d.contains("force")),
        "{}",
        refused.2
    );
    for bad in ["maybe", "1", ""] {
        let answer = h
            .json(
                Method::PUT,
                &format!("{path}?force={bad}"),
                Some(&h.admin),
                Some(elsewhere.clone()),
            )
            .await;
        assert_problem(&answer, 400, "bad_request");
    }
    let (_, _, accounts) = h
        .json(
            Method::GET,
            &tenant.path("/providers"),
            Some(&tenant.admin),
            None,
        )
        .await;
    assert_eq!(
        accounts["items"][0]["config"]["cloud"],
        h.cloud.as_str(),
        "nothing changed"
    );
    let (status, _, account) = h
        .json(
            Method::PUT,
            &format!("{path}?force=true"),
            Some(&h.admin),
            Some(elsewhere),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{account}");
    // The live lease still counts: force relaxes no cap.
    let capped = h
        .request_lease(&tenant, json!({ "pool": "small", "ttl_s": 600 }))
        .await;
    assert_problem(&capped, 429, "concurrency_cap");
    // The account's old identity is kept for that runner, also across a restart (a wake reads
    // the retired identities only when there are some: `tenant::load`).
    h.restart().await;
    // Its runner is destroyed where it lives.
    h.json(
        Method::POST,
        &tenant.path(&format!("/leases/{id}/release")),
        Some(&tenant.write),
        None,
    )
    .await;
    h.wait_state(&tenant, &id, "released").await;
    assert_eq!(h.fake("acme").live_count(), 0);
    h.assert_documented().await;
}

/// A pool's alternatives are checked (bad ones are 422 and change nothing) and shown; a
/// granted lease lists its provisioning attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_alternatives_are_checked_and_attempts_shown() {
    let h = Harness::start().await;
    let tenant = h.setup_tenant("acme", json!({})).await;
    let path = tenant.path("/pools/small");
    let pool = |alternatives: serde_json::Value| {
        json!({ "provider": "cloud", "machine_type": "s", "hourly_price_micros": 1_000,
                "alternatives": alternatives })
    };
    for bad in [
        json!([{ "machine_type": "", "hourly_price_micros": 1 }]),
        json!([{ "machine_type": "m", "hourly_price_micros": -1 }]),
        json!([{ "machine_type": "m", "region": "", "hourly_price_micros": 1 }]),
        json!([{ "machine_type": "m" }]),
        json!([{ "machine_type": "m", "hourly_price_micros": 1, "colour": "red" }]),
        json!(
            (0..9)
                .map(|_| json!({ "machine_type": "m", "hourly_price_micros": 1 }))
                .collect::<Vec<_>>()
        ),
    ] {
        let answer = h
            .json(
                Method::PUT,
                &path,
                Some(&tenant.admin),
                Some(pool(bad.clone())),
            )
            .await;
        assert!(
            answer.0.is_client_error(),
            "{bad} was accepted: {}",
            answer.2
        );
    }
    let (status, _, body) = h
        .json(
            Method::PUT,
            &path,
            Some(&tenant.admin),
            Some(pool(
                json!([{ "machine_type": "m", "region": "nbg1", "hourly_price_micros": 2_000 }]),
            )),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["alternatives"][0]["machine_type"], "m");
    let lease = h
        .grant(&tenant, json!({ "pool": "small", "ttl_s": 60 }))
        .await;
    let id = lease["id"].as_str().expect("id").to_owned();
    let ready = h.wait_state(&tenant, &id, "ready").await;
    let attempts = ready["provisioning_attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{ready}");
    assert_eq!(attempts[0]["machine_type"], "s");
    assert!(attempts[0]["error_class"].is_null());
    h.assert_documented().await;
}
