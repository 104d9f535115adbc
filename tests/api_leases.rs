//! The HTTP API contract (DESIGN.md §6) of the lease routes — request (granted, queued,
//! refused), list with filters and pages, get and long poll, heartbeat and release — over real
//! HTTP against an in-process server, each route's success path and every error it
//! documents. The harness checks every answer against the error rules (see `api_routes.rs`).

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::inproc::{DELETE, GET, Harness, POST, SMALL_PRICE, assert_problem, ids, items, ms};

/// Lease requests: 201 granted, 202 queued, 429 caps, 422 invalid, idempotency replay and mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_request_granted_queued_refused() {
    // Requesting a lease: 201 granted (with its cost and deadline), 202 queued (with its queue
    // position), 429 `concurrency_cap` at a full cap without a wait, 429 `queue_full` when the
    // queue is full; invalid requests are 422 and change nothing; `Idempotency-Key` replays the
    // same lease for the same body and is 422 `idempotency_mismatch` for another.
    let h = Harness::start().await;
    let t = h
        .setup_tenant(
            "acme",
            json!({ "max_active_leases": 2, "max_queued": 1, "max_ttl_s": 7200 }),
        )
        .await;
    let (status, _, a) = h
        .request_lease(
            &t,
            json!({ "pool": "small", "ttl_s": 600, "labels": { "repo": "berth" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    let id = a["id"].as_str().expect("id");
    assert!(id.starts_with("lease_"), "{id}");
    assert_eq!(a["tenant"], "acme");
    assert_eq!(a["pool"], "small");
    assert!(
        ["provisioning", "ready"].contains(&a["state"].as_str().expect("state")),
        "{a}"
    );
    assert_eq!(a["ttl_s"], 600);
    assert_eq!(a["labels"], json!({ "repo": "berth" }));
    assert_eq!(a["queue_position"], Value::Null);
    assert_eq!(
        ms(&a["expires_at"]) - ms(&a["granted_at"]),
        600_000,
        "expires_at = granted_at + ttl"
    );
    assert_eq!(a["cost"]["hourly_price_micros"], SMALL_PRICE);
    assert_eq!(a["cost"]["reserved_micros"], 600_000, "price × TTL");
    assert_eq!(a["cost"]["charged_micros"], 0);
    assert_eq!(a["runner"]["provider"], "cloud");
    assert!(
        a["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "RFC 3339 UTC"
    );

    let b = h.grant(&t, json!({ "pool": "small" })).await;
    assert_eq!(b["ttl_s"], 1800, "the tenant's default TTL");
    let full = h.request_lease(&t, json!({ "pool": "small" })).await;
    assert_problem(&full, 429, "concurrency_cap");
    let full = h
        .request_lease(&t, json!({ "pool": "small", "wait_s": 0 }))
        .await;
    assert_problem(&full, 429, "concurrency_cap");
    let (status, _, q) = h
        .request_lease(&t, json!({ "pool": "small", "wait_s": 60 }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{q}");
    assert_eq!(q["state"], "queued");
    assert_eq!(q["queue_position"], 1);
    assert_eq!(q["granted_at"], Value::Null);
    assert_eq!(q["cost"]["reserved_micros"], 0);
    assert_eq!(ms(&q["wait_until"]) - ms(&q["created_at"]), 60_000);
    let over = h
        .request_lease(&t, json!({ "pool": "small", "wait_s": 60 }))
        .await;
    assert_problem(&over, 429, "queue_full");

    for body in [
        json!({ "pool": "nope" }),
        json!({ "pool": "small", "ttl_s": 0 }),
        json!({ "pool": "small", "ttl_s": 7201 }),
        json!({ "pool": "small", "ttl_s": -1 }),
        json!({ "pool": "small", "ttl_s": "60" }),
        json!({ "pool": "small", "ttl_s": 1.5 }),
        json!({ "pool": "small", "ttl_s": 1e300 }),
        json!({ "pool": "small", "idle_timeout_s": 0 }),
        json!({ "pool": "small", "wait_s": -1 }),
        json!({ "pool": "small", "wait_s": 86_401 }),
        json!({ "pool": "small", "labels": { "bad key": "x" } }),
        json!({ "pool": "small", "labels": { "k": 1 } }),
        json!({ "pool": "small", "priority": 1 }),
        json!({ "ttl_s": 60 }),
    ] {
        let bad = h.request_lease(&t, body.clone()).await;
        assert_problem(&bad, 422, "invalid_request");
    }
    assert_eq!(
        h.list_all(&t, "").await.len(),
        3,
        "refused requests made no lease"
    );

    // Idempotency, on a tenant with room.
    let u = h.setup_tenant("idem", json!({})).await;
    let body = json!({ "pool": "small", "ttl_s": 300, "labels": { "job": "42" } });
    let key = [("Idempotency-Key", "gh-run-42-attempt-1")];
    let path = u.path("/leases");
    let first = h
        .json_with(POST, &path, Some(&u.write), Some(body.clone()), &key)
        .await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.2);
    let replay = h
        .json_with(POST, &path, Some(&u.write), Some(body.clone()), &key)
        .await;
    assert_eq!(replay.0, StatusCode::CREATED, "{}", replay.2);
    assert_eq!(
        replay.2["id"], first.2["id"],
        "the same key returns the same lease"
    );
    let other = h
        .json_with(
            POST,
            &path,
            Some(&u.write),
            Some(json!({ "pool": "small", "ttl_s": 301 })),
            &key,
        )
        .await;
    assert_problem(&other, 422, "idempotency_mismatch");
    let long = "k".repeat(256);
    for bad_key in ["", long.as_str(), "has space"] {
        let bad = h
            .json_with(
                POST,
                &path,
                Some(&u.write),
                Some(body.clone()),
                &[("Idempotency-Key", bad_key)],
            )
            .await;
        assert_problem(&bad, 400, "bad_request");
    }
    let leases = h.list_all(&u, "").await;
    assert_eq!(leases.len(), 1, "one runner for a retried request");
    let lease_id = first.2["id"].as_str().expect("id");
    h.wait_state(&u, lease_id, "ready").await;
    assert!(
        h.fake("idem").runner_for("idem", lease_id).is_some(),
        "the runner exists at the provider"
    );
    assert_eq!(
        h.fake("idem")
            .live_runners()
            .iter()
            .filter(|r| r.tenant == "idem")
            .count(),
        1
    );
    h.assert_documented().await;
}

/// Lease lists filter by state, `active`, `ended`, pool and label, and page with `limit`/`cursor`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_list_filters_and_pages() {
    // Listing leases: newest first; `state=` takes one state, `active` or `ended`; `pool=`,
    // `label=k:v` filter; `limit` and `cursor` page through more than one page without gaps or
    // repeats; bad parameters are 400.
    let h = Harness::start().await;
    let t = h
        .setup_tenant("acme", json!({ "max_active_leases": 3 }))
        .await;
    h.put_pool(&t, "big", SMALL_PRICE * 2).await;
    let lease = |pool: &str, repo: &str, wait: i64| json!({ "pool": pool, "labels": { "repo": repo }, "wait_s": wait });
    let a = h.grant(&t, lease("small", "a", 0)).await;
    let b = h.grant(&t, lease("small", "b", 0)).await;
    let c = h.grant(&t, lease("big", "a", 0)).await;
    let (status, _, d) = h.request_lease(&t, lease("small", "a", 600)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = |l: &Value| l["id"].as_str().expect("id").to_owned();
    let (a, b, c, d) = (id(&a), id(&b), id(&c), id(&d));
    // Releasing b grants d from the queue.
    let (status, _, _) = h
        .json(
            POST,
            &t.path(&format!("/leases/{b}/release")),
            Some(&t.write),
            None,
        )
        .await;
    assert_eq!(status, 200);
    h.wait_state(&t, &b, "released").await;
    for ready in [&a, &c, &d] {
        h.wait_state(&t, ready, "ready").await;
    }
    let (status, _, e) = h.request_lease(&t, lease("big", "b", 600)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let e = id(&e);

    let list = |query: &'static str| {
        let h = &h;
        let t = &t;
        async move { ids(&h.list_all(t, query).await) }
    };
    assert_eq!(list("").await, [&*e, &*d, &*c, &*b, &*a], "newest first");
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let set = |v: &[&String]| sorted(v.iter().map(|s| (*s).clone()).collect());
    assert_eq!(sorted(list("state=ready").await), set(&[&a, &c, &d]));
    assert_eq!(sorted(list("state=active").await), set(&[&a, &c, &d]));
    assert_eq!(list("state=queued").await, [&*e]);
    assert_eq!(list("state=released").await, [&*b]);
    assert_eq!(list("state=ended").await, [&*b]);
    assert!(list("state=expired").await.is_empty());
    assert!(list("state=provisioning").await.is_empty());
    assert_eq!(list("pool=big").await, [&*e, &*c]);
    assert_eq!(list("pool=small&state=active").await, [&*d, &*a]);
    assert_eq!(list("label=repo:a").await, [&*d, &*c, &*a]);
    assert_eq!(list("label=repo:b&state=ended").await, [&*b]);
    assert!(list("label=repo:zzz").await.is_empty());
    assert!(list("pool=nope").await.is_empty());

    // Three pages of two.
    let mut seen = Vec::new();
    let mut path = t.path("/leases?limit=2");
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 3, "more pages than leases");
        let page = h.get_ok(&path, &t.read).await;
        let page_ids = ids(&items(&page));
        assert!(page_ids.len() <= 2);
        seen.extend(page_ids);
        match page["next_cursor"].as_str() {
            Some(cursor) => path = t.path(&format!("/leases?limit=2&cursor={cursor}")),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        [&*e, &*d, &*c, &*b, &*a],
        "every lease once, in order"
    );

    for query in [
        "state=bogus",
        "state=",
        "label=repo",
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=x",
        "sort=id",
    ] {
        let bad = h
            .json(
                GET,
                &t.path(&format!("/leases?{query}")),
                Some(&t.read),
                None,
            )
            .await;
        assert_problem(&bad, 400, "bad_request");
    }
    let long_cursor = format!("/leases?cursor={}", "z".repeat(65));
    assert_problem(
        &h.json(GET, &t.path(&long_cursor), Some(&t.read), None)
            .await,
        400,
        "bad_request",
    );
    h.assert_documented().await;
}

/// Getting a lease: 200, 404, long polls with `wait=ready|ended` and `timeout_s`, 400 if bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_get_and_long_poll() {
    // Getting a lease: 200, 404 for an unknown id; `wait=ready` answers once a queued lease is
    // granted and ready, `wait=ended` once it has ended, and either answers with the current
    // lease when `timeout_s` passes first; bad `wait`/`timeout_s` are 400.
    let h = Harness::start().await;
    let t = h
        .setup_tenant("acme", json!({ "max_active_leases": 1 }))
        .await;
    let a = h.grant(&t, json!({ "pool": "small" })).await;
    let a_id = a["id"].as_str().expect("id").to_owned();
    let ready = h
        .get_ok(
            &t.path(&format!("/leases/{a_id}?wait=ready&timeout_s=20")),
            &t.read,
        )
        .await;
    assert_eq!(ready["state"], "ready");
    assert!(ready["ready_at"].as_str().is_some());
    assert!(ready["runner"]["id"].as_str().is_some());
    let got = h.lease(&t, &a_id).await;
    assert_eq!(got["id"], a_id.as_str());
    assert_eq!(got["state"], "ready");
    assert_problem(
        &h.json(GET, &t.path("/leases/lease_nope"), Some(&t.read), None)
            .await,
        404,
        "not_found",
    );
    assert_problem(
        &h.json(
            GET,
            &t.path("/leases/lease_nope?wait=ended&timeout_s=1"),
            Some(&t.read),
            None,
        )
        .await,
        404,
        "not_found",
    );

    // A queued lease: a long poll for ready answers once the slot frees and it is granted.
    let (status, _, b) = h
        .request_lease(&t, json!({ "pool": "small", "wait_s": 600 }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let b_id = b["id"].as_str().expect("id").to_owned();
    let poll = h.spawn_get(
        &t.path(&format!("/leases/{b_id}?wait=ready&timeout_s=30")),
        &t.read,
    );
    // Release the blocker only once the poll is waiting, so that the answer comes from the
    // wait, not from the first read.
    h.wait_in_flight(1).await;
    let (status, _, _) = h
        .json(
            DELETE,
            &t.path(&format!("/leases/{a_id}")),
            Some(&t.write),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let b_ready = tokio::time::timeout(Duration::from_secs(40), poll)
        .await
        .expect("the long poll answers")
        .expect("poll task");
    assert_eq!(b_ready["id"], b_id.as_str());
    assert_eq!(b_ready["state"], "ready", "{b_ready}");

    // wait=ended answers when the lease ends.
    let poll = h.spawn_get(
        &t.path(&format!("/leases/{b_id}?wait=ended&timeout_s=30")),
        &t.read,
    );
    h.wait_in_flight(1).await;
    let (status, _, _) = h
        .json(
            POST,
            &t.path(&format!("/leases/{b_id}/release")),
            Some(&t.write),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let b_ended = tokio::time::timeout(Duration::from_secs(40), poll)
        .await
        .expect("the long poll answers")
        .expect("poll task");
    assert_eq!(b_ended["state"], "released", "{b_ended}");
    assert_eq!(b_ended["end_reason"], "released");
    // Already ended: answers at once.
    let again = h
        .get_ok(&t.path(&format!("/leases/{b_id}?wait=ended")), &t.read)
        .await;
    assert_eq!(again["state"], "released");

    // A timeout answers with the lease as it is.
    let c = h.grant(&t, json!({ "pool": "small" })).await;
    let c_id = c["id"].as_str().expect("id");
    h.wait_state(&t, c_id, "ready").await;
    let timed_out = h
        .get_ok(
            &t.path(&format!("/leases/{c_id}?wait=ended&timeout_s=1")),
            &t.read,
        )
        .await;
    assert_eq!(timed_out["state"], "ready");

    for query in [
        "wait=soon",
        "wait=",
        "timeout_s=abc",
        "timeout_s=-5",
        "wait=ready&timeout_s=1.5",
        "watch=1",
    ] {
        let bad = h
            .json(
                GET,
                &t.path(&format!("/leases/{c_id}?{query}")),
                Some(&t.read),
                None,
            )
            .await;
        assert_problem(&bad, 400, "bad_request");
    }
    h.assert_documented().await;
}

/// Heartbeats extend within `max_ttl_s` and the spend cap, 409 once ended; releases are idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_and_release() {
    // Heartbeats keep a lease alive and extend its TTL within `max_ttl_s` (422 past it) and the
    // spend cap (429 `spend_cap`); a heartbeat of an ended lease is 409 `lease_ended`; release by
    // POST and by DELETE is idempotent (200 with the lease every time), a queued lease released
    // is canceled, and unknown leases are 404.
    let h = Harness::start().await;
    let t = h
        .setup_tenant(
            "acme",
            json!({
                "max_active_leases": 1,
                "max_ttl_s": 3600,
                "spend_cap_daily_micros": 1_000_000,
            }),
        )
        .await;
    let a = h.grant(&t, json!({ "pool": "small", "ttl_s": 600 })).await;
    let a_id = a["id"].as_str().expect("id").to_owned();
    let beat = t.path(&format!("/leases/{a_id}/heartbeat"));
    let w = Some(t.write.as_str());

    // An empty heartbeat (no body at all), then `{}`.
    let (status, _, beaten) = h.send(POST, &beat, w, None, None, &[]).await;
    assert_eq!(status, 200, "{beaten}");
    assert!(beaten["last_heartbeat_at"].as_str().is_some());
    let (status, _, _) = h.json(POST, &beat, w, Some(json!({}))).await;
    assert_eq!(status, 200);

    let (status, _, extended) = h
        .json(POST, &beat, w, Some(json!({ "extend_ttl_s": 100 })))
        .await;
    assert_eq!(status, 200, "{extended}");
    assert_eq!(extended["ttl_s"], 700);
    assert_eq!(ms(&extended["expires_at"]) - ms(&a["expires_at"]), 100_000);
    assert_eq!(extended["cost"]["reserved_micros"], 700_000);
    // 700 000 reserved of a 1 000 000 cap: 400 s more would need 400 000.
    let refused = h
        .json(POST, &beat, w, Some(json!({ "extend_ttl_s": 400 })))
        .await;
    assert_problem(&refused, 429, "spend_cap");
    for body in [
        json!({ "extend_ttl_s": 0 }),
        json!({ "extend_ttl_s": -5 }),
        json!({ "extend_ttl_s": 2901 }), // 700 + 2901 > max_ttl_s 3600
        json!({ "extend_ttl_s": i64::MAX }),
        json!({ "extend_ttl_s": "5" }),
        json!({ "extend": 5 }),
    ] {
        let bad = h.json(POST, &beat, w, Some(body.clone())).await;
        assert_problem(&bad, 422, "invalid_request");
    }
    assert_problem(
        &h.raw(POST, &beat, w, Some("application/json"), b"{".to_vec())
            .await,
        400,
        "bad_request",
    );
    assert_problem(
        &h.raw(POST, &beat, w, Some("text/plain"), b"{}".to_vec())
            .await,
        415,
        "unsupported_media_type",
    );
    let unchanged = h.lease(&t, &a_id).await;
    assert_eq!(
        unchanged["ttl_s"], 700,
        "refused extensions changed nothing"
    );
    assert_eq!(unchanged["cost"]["reserved_micros"], 700_000);

    // A queued lease: a heartbeat leaves it queued; releasing it cancels it.
    let (status, _, q) = h
        .request_lease(&t, json!({ "pool": "small", "ttl_s": 60, "wait_s": 600 }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{q}");
    let q_id = q["id"].as_str().expect("id").to_owned();
    let (status, _, still) = h
        .json(POST, &t.path(&format!("/leases/{q_id}/heartbeat")), w, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(still["state"], "queued");
    let (status, _, canceled) = h
        .json(POST, &t.path(&format!("/leases/{q_id}/release")), w, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(canceled["state"], "canceled");
    assert_eq!(canceled["end_reason"], "canceled");

    // Release by POST, twice.
    let release = t.path(&format!("/leases/{a_id}/release"));
    let (status, _, first) = h.json(POST, &release, w, None).await;
    assert_eq!(status, 200, "{first}");
    assert!(
        ["releasing", "released"].contains(&first["state"].as_str().expect("state")),
        "{first}"
    );
    assert_eq!(first["end_reason"], "released");
    let released = h.wait_state(&t, &a_id, "released").await;
    assert!(released["cost"]["charged_micros"].as_i64() >= Some(1_000));
    assert_eq!(released["cost"]["reserved_micros"], 0);
    assert!(released["runner_destroyed_at"].as_str().is_some());
    let (status, _, second) = h.json(POST, &release, w, None).await;
    assert_eq!(status, 200);
    assert_eq!(second, released, "a second release changes nothing");
    let (status, _, third) = h
        .json(DELETE, &t.path(&format!("/leases/{a_id}")), w, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(third, released);
    for body in [None, Some(json!({})), Some(json!({ "extend_ttl_s": 5 }))] {
        let ended = h.json(POST, &beat, w, body).await;
        assert_problem(&ended, 409, "lease_ended");
    }
    assert_problem(
        &h.json(POST, &t.path(&format!("/leases/{q_id}/heartbeat")), w, None)
            .await,
        409,
        "lease_ended",
    );

    // DELETE a running lease, twice.
    let b = h.grant(&t, json!({ "pool": "small", "ttl_s": 60 })).await;
    let b_path = t.path(&format!("/leases/{}", b["id"].as_str().expect("id")));
    let (status, _, deleted) = h.json(DELETE, &b_path, w, None).await;
    assert_eq!(status, 200);
    assert_eq!(deleted["end_reason"], "released");
    let (status, _, deleted_again) = h.json(DELETE, &b_path, w, None).await;
    assert_eq!(status, 200);
    assert_eq!(deleted_again["end_reason"], "released");

    for (method, path) in [
        (POST, "/leases/lease_nope/heartbeat"),
        (POST, "/leases/lease_nope/release"),
        (DELETE, "/leases/lease_nope"),
    ] {
        assert_problem(
            &h.json(method, &t.path(path), w, None).await,
            404,
            "not_found",
        );
    }
    let reserves: Vec<i64> = h
        .ledger_all(&t)
        .await
        .iter()
        .filter(|r| r["kind"] == "reserve" && r["lease_id"] == a_id.as_str())
        .map(|r| r["amount_micros"].as_i64().expect("amount"))
        .collect();
    assert_eq!(reserves, [600_000, 100_000], "the extension was reserved");
    h.assert_documented().await;
}
