//! Provider faults through the HTTP API: a provider whose `create` never returns must not
//! block the tenant's object, and the lease it holds ends in the documented state (`failed`,
//! `provider_error`) once every attempt timed out, leaking nothing. (Transient and permanent
//! create/destroy failures under load are covered object-level in
//! `broker/tests/provisioning.rs` and `broker/tests/tenant.rs`.)

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::inproc::{Harness, SMALL_PRICE};

/// While one lease's create hangs, the same tenant grants, lists and releases other leases;
/// the hung lease is still provisioning after all of that, and fails after its attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_provider_never_blocks_the_tenant() {
    // Each create attempt times out after 1 s; retries follow 100 ms, 200 ms, … later.
    let h = Harness::start_with(None, |config| {
        config.provider_timeout = Duration::from_secs(1);
        config.provider_retry_base = Duration::from_millis(100);
    })
    .await;
    let t = h
        .setup_tenant("hang", json!({ "max_active_leases": 20 }))
        .await;
    h.put_fake_account(&t, "stuck", json!({ "hang": true }))
        .await;
    let (status, _, body) = h
        .json(
            Method::PUT,
            &t.path("/pools/stuck"),
            Some(&t.admin),
            Some(json!({ "provider": "stuck", "machine_type": "s", "hourly_price_micros": SMALL_PRICE })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stuck = h.grant(&t, json!({ "pool": "stuck", "ttl_s": 600 })).await;
    let stuck_id = stuck["id"].as_str().expect("id").to_owned();
    assert_eq!(stuck["state"], "provisioning");

    // The tenant's object keeps serving: 10 leases granted, ready and released in parallel.
    let work = (0..10).map(|_| async {
        let lease = h.grant(&t, json!({ "pool": "small", "ttl_s": 600 })).await;
        let id = lease["id"].as_str().expect("id").to_owned();
        h.wait_state(&t, &id, "ready").await;
        let (status, _, body) = h
            .json(
                Method::POST,
                &t.path(&format!("/leases/{id}/release")),
                Some(&t.write),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        h.wait_state(&t, &id, "released").await;
    });
    futures::future::join_all(work).await;
    let listed = h.list_all(&t, "state=active").await;
    assert_eq!(
        listed.len(),
        1,
        "only the stuck lease is active: {listed:?}"
    );
    // All of that happened while the create was still hanging.
    assert_eq!(h.lease(&t, &stuck_id).await["state"], "provisioning");

    // Each attempt times out; after the last one the lease fails (about 6.5 s in all).
    let ended = h
        .wait_for(&t, &stuck_id, "ended", |lease| {
            support::inproc::is_terminal(lease["state"].as_str().unwrap_or_default())
        })
        .await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(ended["end_reason"], "provider_error", "{ended}");
    // Five creates (Timing::create_attempts), then the destroy that makes sure none of them
    // left a runner behind.
    assert_eq!(
        ended["provider_attempts"], 6,
        "every attempt was made: {ended}"
    );
    assert!(!ended["runner_destroyed_at"].is_null(), "{ended}");
    let live: Vec<_> = h
        .fake("hang")
        .live_runners()
        .into_iter()
        .filter(|r| r.tenant == "hang")
        .collect();
    assert!(live.is_empty(), "nothing leaked: {live:?}");
}
