//! The HTTP API contract (DESIGN.md §6), route by route, over real HTTP against an in-process
//! server: each route's success path and every error it documents. The harness checks every
//! answer against the error rules (problem+json with `type, title, status, detail, code`; no
//! 500; `WWW-Authenticate` on 401; `Retry-After` on 429 and 503).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use support::inproc::{Harness, SMALL_PRICE, T0, assert_problem, ms};

const GET: Method = Method::GET;
const POST: Method = Method::POST;
const PUT: Method = Method::PUT;
const PATCH: Method = Method::PATCH;
const DELETE: Method = Method::DELETE;

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_owned())
        .collect()
}

fn items(page: &Value) -> Vec<Value> {
    page["items"].as_array().expect("items").clone()
}

/// Tenants: create (201/409/422/400/415), list with pages, get (404 when unknown), patch limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_create_list_get_patch() {
    // Tenants: the operator creates one (201; 409 `conflict` on a repeat; 422 on a bad name, an
    // unknown field or an out-of-range limit; 400 on malformed JSON; 415 without JSON), lists
    // them a page at a time, reads one (404 when unknown) and patches its limits (`null` clears
    // an optional one; a bad patch is 422 and changes nothing).
    let h = Harness::start().await;
    let admin = Some(h.admin.as_str());
    let created = h
        .create_tenant("acme", json!({ "max_active_leases": 3 }))
        .await;
    assert_eq!(created["name"], "acme");
    assert_eq!(created["limits"]["max_active_leases"], 3);
    assert_eq!(created["limits"]["default_ttl_s"], 1800, "defaults fill in");
    assert!(created["created_at"].as_str().is_some());

    let again = h
        .json(POST, "/v1/tenants", admin, Some(json!({ "name": "acme" })))
        .await;
    assert_problem(&again, 409, "conflict");
    let long = "x".repeat(64);
    for name in ["", "Acme", "-acme", "a b", "a_b", long.as_str()] {
        let bad = h
            .json(POST, "/v1/tenants", admin, Some(json!({ "name": name })))
            .await;
        assert_problem(&bad, 422, "invalid_request");
    }
    for body in [
        json!({ "name": "bad1", "colour": "red" }),
        json!({ "name": "bad2", "limits": { "max_active": 1 } }),
        json!({ "name": "bad3", "limits": { "max_active_leases": -1 } }),
        json!({ "name": "bad4", "limits": { "default_ttl_s": 0 } }),
        json!({ "name": "bad5", "limits": { "max_ttl_s": 100_000_000 } }),
        json!({ "name": "bad6", "limits": { "spend_cap_daily_micros": -5 } }),
        json!({ "name": 5 }),
        json!({}),
        json!([]),
    ] {
        let bad = h.json(POST, "/v1/tenants", admin, Some(body.clone())).await;
        assert_problem(&bad, 422, "invalid_request");
    }
    let malformed = h
        .raw(
            POST,
            "/v1/tenants",
            admin,
            Some("application/json"),
            b"{\"name\": ".to_vec(),
        )
        .await;
    assert_problem(&malformed, 400, "bad_request");
    let plain = h
        .raw(
            POST,
            "/v1/tenants",
            admin,
            Some("text/plain"),
            br#"{"name":"plain"}"#.to_vec(),
        )
        .await;
    assert_problem(&plain, 415, "unsupported_media_type");
    let none = h
        .raw(
            POST,
            "/v1/tenants",
            admin,
            None,
            br#"{"name":"none"}"#.to_vec(),
        )
        .await;
    assert_problem(&none, 415, "unsupported_media_type");

    // Twenty concurrent creates of one name: exactly one 201, the rest 409.
    let racing =
        (0..20).map(|_| h.json(POST, "/v1/tenants", admin, Some(json!({ "name": "beta" }))));
    let answers = futures::future::join_all(racing).await;
    let created = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CREATED)
        .count();
    let conflicts = answers
        .iter()
        .filter(|(s, _, b)| *s == StatusCode::CONFLICT && b["code"] == "conflict")
        .count();
    assert_eq!((created, conflicts), (1, 19));
    // A charset parameter is still JSON.
    let (status, _, _) = h
        .raw(
            POST,
            "/v1/tenants",
            admin,
            Some("application/json; charset=utf-8"),
            br#"{"name":"gamma","limits":null}"#.to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // The bad requests created nothing: three tenants, by name, two pages of two.
    let first = h.get_ok("/v1/tenants?limit=2", &h.admin).await;
    let names: Vec<&str> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["acme", "beta"]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = h
        .get_ok(&format!("/v1/tenants?limit=2&cursor={cursor}"), &h.admin)
        .await;
    assert_eq!(second["items"][0]["name"], "gamma");
    assert_eq!(second["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["next_cursor"], Value::Null);
    let all = h.get_ok("/v1/tenants", &h.admin).await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(3));
    assert!(all["items"][0]["created_at"].as_str().is_some());
    assert_eq!(all["next_cursor"], Value::Null);
    for query in ["limit=0", "limit=1001", "limit=abc", "limit=-1", "bogus=1"] {
        let bad = h
            .json(GET, &format!("/v1/tenants?{query}"), admin, None)
            .await;
        assert_problem(&bad, 400, "bad_request");
    }

    let acme = h.get_ok("/v1/tenants/acme", &h.admin).await;
    assert_eq!(acme["limits"]["max_active_leases"], 3);
    assert_problem(
        &h.json(GET, "/v1/tenants/nope", admin, None).await,
        404,
        "not_found",
    );

    let (status, _, patched) = h
        .json(
            PATCH,
            "/v1/tenants/acme",
            admin,
            Some(json!({ "limits": { "max_active_leases": 5, "spend_cap_daily_micros": 1000 } })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["limits"]["max_active_leases"], 5);
    assert_eq!(patched["limits"]["spend_cap_daily_micros"], 1000);
    let (status, _, cleared) = h
        .json(
            PATCH,
            "/v1/tenants/acme",
            admin,
            Some(json!({ "limits": { "spend_cap_daily_micros": null } })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(cleared["limits"]["spend_cap_daily_micros"], Value::Null);
    assert_eq!(
        cleared["limits"]["max_active_leases"], 5,
        "absent fields stay"
    );
    for body in [
        json!({ "limits": { "default_ttl_s": 0 } }),
        json!({ "limits": { "max_ttl_s": 10 } }), // below default_ttl_s 1800
        json!({ "limits": { "max_queued": 2_000_000 } }),
        json!({ "limits": { "default_idle_timeout_s": 0 } }),
        json!({ "limits": { "max_active_leases": "5" } }),
        json!({ "limitz": {} }),
    ] {
        let bad = h.json(PATCH, "/v1/tenants/acme", admin, Some(body)).await;
        assert_problem(&bad, 422, "invalid_request");
    }
    assert_problem(
        &h.json(PATCH, "/v1/tenants/nope", admin, Some(json!({})))
            .await,
        404,
        "not_found",
    );
    assert_eq!(
        h.get_ok("/v1/tenants/acme", &h.admin).await["limits"],
        cleared["limits"],
        "the refused patches changed nothing"
    );
    h.assert_documented().await;
}

/// Tokens: create (secret shown once), list (never the secret), revoke (204, then 401 and 404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_create_list_revoke() {
    // Tokens: create (201 `{id, token, scopes}`, the secret shown once), list (never the secret),
    // revoke (204; the token stops working at once; a second revoke is 404); bad scopes are 422.
    let h = Harness::start().await;
    h.create_tenant("acme", json!({})).await;
    let admin = Some(h.admin.as_str());
    let (status, _, created) = h
        .json(
            POST,
            "/v1/tenants/acme/tokens",
            admin,
            Some(json!({ "scopes": ["leases:read", "leases:write", "leases:read"], "name": "ci" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let secret = created["token"].as_str().expect("token").to_owned();
    assert!(id.starts_with("tok_"));
    assert_eq!(created["scopes"], json!(["leases:read", "leases:write"]));
    assert_eq!(created["name"], "ci");

    // The token works for what its scopes allow.
    let (status, _, _) = h
        .json(GET, "/v1/tenants/acme/leases", Some(&secret), None)
        .await;
    assert_eq!(status, 200);

    let list = h.get_ok("/v1/tenants/acme/tokens", &h.admin).await;
    let listed = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("the token is listed")
        .clone();
    assert_eq!(listed["scopes"], created["scopes"]);
    assert!(listed["created_at"].as_str().is_some());
    assert!(
        listed.get("token").is_none() && !list.to_string().contains(&secret),
        "the list never shows a secret: {list}"
    );
    assert_eq!(list["next_cursor"], Value::Null);

    for body in [
        json!({ "scopes": [] }),
        json!({ "scopes": ["admin"] }),
        json!({ "scopes": ["leases:delete"] }),
        json!({ "scopes": "leases:read" }),
        json!({ "scopes": ["leases:read"], "name": "" }),
        json!({ "scopes": ["leases:read"], "expires": 1 }),
        json!({}),
    ] {
        let bad = h
            .json(POST, "/v1/tenants/acme/tokens", admin, Some(body))
            .await;
        assert_problem(&bad, 422, "invalid_request");
    }
    assert_problem(
        &h.json(
            POST,
            "/v1/tenants/nope/tokens",
            admin,
            Some(json!({ "scopes": ["leases:read"] })),
        )
        .await,
        404,
        "not_found",
    );

    let (status, _, body) = h
        .json(
            DELETE,
            &format!("/v1/tenants/acme/tokens/{id}"),
            admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_problem(
        &h.json(GET, "/v1/tenants/acme/leases", Some(&secret), None)
            .await,
        401,
        "unauthorized",
    );
    assert_problem(
        &h.json(
            DELETE,
            &format!("/v1/tenants/acme/tokens/{id}"),
            admin,
            None,
        )
        .await,
        404,
        "not_found",
    );
    assert_problem(
        &h.json(DELETE, "/v1/tenants/acme/tokens/tok_nope", admin, None)
            .await,
        404,
        "not_found",
    );
    let list = h.get_ok("/v1/tenants/acme/tokens", &h.admin).await;
    assert!(
        !list.to_string().contains(&id),
        "a revoked token is not listed"
    );

    // Tenants whose names share a prefix list only their own tokens.
    let mut own = BTreeMap::new();
    for name in ["acme-x", "acme0", "acm"] {
        h.create_tenant(name, json!({})).await;
        let (status, _, created) = h
            .json(
                POST,
                &format!("/v1/tenants/{name}/tokens"),
                admin,
                Some(json!({ "scopes": ["leases:read"] })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        own.insert(name, created["id"].as_str().expect("id").to_owned());
    }
    for (name, id) in &own {
        let list = h
            .get_ok(&format!("/v1/tenants/{name}/tokens"), &h.admin)
            .await;
        let ids: Vec<&str> = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|t| t["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, [id.as_str()], "{name} lists only its own token");
    }
    let acme = h.get_ok("/v1/tenants/acme/tokens", &h.admin).await;
    assert!(
        acme["items"].as_array().is_some_and(Vec::is_empty),
        "{acme}"
    );
    h.assert_documented().await;
}

/// Provider accounts and pools: PUT (200, 422, 503 for a price list down), GET lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_and_pools_put_and_list() {
    // Provider accounts and pools: PUT creates or replaces (200), GET lists; credentials are
    // reported only as `has_credentials`; bad kinds, configs, names, prices and unknown
    // providers are 422; a pool without a price takes it from the provider's price list.
    let h = Harness::start().await;
    h.create_tenant("acme", json!({})).await;
    let token = h.token("acme", &["tenant:admin"]).await;
    let t = Some(token.as_str());
    // `fake` accounts run on berth's own machine: the operator configures them.
    let operator = Some(h.admin.as_str());
    let (status, _, account) = h
        .json(
            PUT,
            "/v1/tenants/acme/providers/cloud",
            operator,
            Some(json!({ "kind": "fake", "config": { "cloud": h.cloud, "prices": { "m": 7_200_000 } } })),
        )
        .await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["name"], "cloud");
    assert_eq!(account["kind"], "fake");
    assert_eq!(account["has_credentials"], false);
    assert_eq!(account["config"]["cloud"], h.cloud.as_str());
    // PUT again replaces.
    let (status, _, _) = h
        .json(
            PUT,
            "/v1/tenants/acme/providers/cloud",
            operator,
            Some(json!({ "kind": "fake", "config": { "cloud": h.cloud, "prices": { "m": 7_200_000 } } })),
        )
        .await;
    assert_eq!(status, 200);
    for (name, body) in [
        ("other", json!({ "kind": "nope" })),
        (
            "other",
            json!({ "kind": "fake", "config": { "colour": 1 } }),
        ),
        ("other", json!({ "kind": "fake", "config": [1] })),
        (
            "other",
            json!({ "kind": "fake", "credentials": { "token": "x" } }),
        ),
        ("other", json!({ "kind": "hetzner", "credentials": {} })),
        ("other", json!({ "kind": "fake", "extra": 1 })),
        ("other", json!({ "config": {} })),
        ("Bad_Name", json!({ "kind": "fake" })),
    ] {
        let bad = h
            .json(
                PUT,
                &format!("/v1/tenants/acme/providers/{name}"),
                operator,
                Some(body),
            )
            .await;
        assert_problem(&bad, 422, "invalid_request");
    }
    let list = h.get_ok("/v1/tenants/acme/providers", &token).await;
    assert_eq!(
        items(&list)
            .iter()
            .map(|a| a["name"].clone())
            .collect::<Vec<_>>(),
        [json!("cloud")],
        "refused accounts were not stored"
    );
    assert_eq!(list["next_cursor"], Value::Null);

    let (status, _, pool) = h
        .json(
            PUT,
            "/v1/tenants/acme/pools/linux",
            t,
            Some(json!({
                "provider": "cloud", "machine_type": "s", "hourly_price_micros": 1_000,
                "max_active": 2, "image": "ubuntu-24.04", "region": "fsn1",
                "labels": ["self-hosted", "linux"],
            })),
        )
        .await;
    assert_eq!(status, 200, "{pool}");
    assert_eq!(pool["name"], "linux");
    assert_eq!(pool["hourly_price_micros"], 1_000);
    assert_eq!(pool["price_source"], "pool");
    assert_eq!(pool["max_active"], 2);
    assert_eq!(pool["labels"], json!(["self-hosted", "linux"]));
    let (status, _, priced) = h
        .json(
            PUT,
            "/v1/tenants/acme/pools/priced",
            t,
            Some(json!({ "provider": "cloud", "machine_type": "m" })),
        )
        .await;
    assert_eq!(status, 200, "{priced}");
    assert_eq!(priced["hourly_price_micros"], 7_200_000);
    assert_eq!(priced["price_source"], "provider");
    for (name, body) in [
        (
            "p",
            json!({ "provider": "cloud", "machine_type": "unpriced" }),
        ),
        (
            "p",
            json!({ "provider": "nope", "machine_type": "s", "hourly_price_micros": 1 }),
        ),
        ("p", json!({ "provider": "nope", "machine_type": "s" })),
        (
            "p",
            json!({ "provider": "cloud", "machine_type": "s", "hourly_price_micros": -1 }),
        ),
        (
            "p",
            json!({ "provider": "cloud", "machine_type": "s", "hourly_price_micros": 1, "max_active": -1 }),
        ),
        (
            "p",
            json!({ "provider": "cloud", "machine_type": "", "hourly_price_micros": 1 }),
        ),
        (
            "p",
            json!({ "provider": "cloud", "machine_type": "s", "hourly_price_micros": 1, "size": 1 }),
        ),
        ("p", json!({ "provider": "cloud" })),
        (
            "Bad.Pool",
            json!({ "provider": "cloud", "machine_type": "s", "hourly_price_micros": 1 }),
        ),
    ] {
        let bad = h
            .json(
                PUT,
                &format!("/v1/tenants/acme/pools/{name}"),
                t,
                Some(body.clone()),
            )
            .await;
        assert_problem(&bad, 422, "invalid_request");
    }
    // A price list that cannot be reached: 503 `provider_unavailable` (with `Retry-After`,
    // checked by the harness), and no pool.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let (status, _, _) = h
        .json(
            PUT,
            "/v1/tenants/acme/providers/down",
            t,
            Some(json!({
                "kind": "hetzner",
                "config": { "base_url": format!("http://127.0.0.1:{closed_port}"), "max_retries": 0 },
                "credentials": { "token": "not-a-real-token" },
            })),
        )
        .await;
    assert_eq!(status, 200);
    let down = h
        .json(
            PUT,
            "/v1/tenants/acme/pools/down",
            t,
            Some(json!({ "provider": "down", "machine_type": "cx22", "image": "ubuntu-24.04" })),
        )
        .await;
    assert_problem(&down, 503, "provider_unavailable");
    let list = h.get_ok("/v1/tenants/acme/pools", &token).await;
    let names: Vec<Value> = items(&list).iter().map(|p| p["name"].clone()).collect();
    assert_eq!(names, [json!("linux"), json!("priced")]);
    assert_eq!(list["next_cursor"], Value::Null);
    for path in ["/v1/tenants/nope/pools", "/v1/tenants/nope/providers"] {
        assert_problem(&h.json(GET, path, t, None).await, 404, "not_found");
        assert_problem(
            &h.json(GET, path, Some(&h.admin), None).await,
            404,
            "not_found",
        );
    }
    h.assert_documented().await;
}

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

/// Patched limits act at once: a higher cap grants the queue, a lower spend cap ends leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patched_limits_take_effect() {
    // Patched limits take effect at once: raising `max_active_leases` grants the queue; lowering
    // the spend cap below what is reserved ends the newest leases (`expired`, `end_reason:
    // spend_cap`) and later requests are refused with 429 `spend_cap`.
    let h = Harness::start().await;
    let t = h
        .setup_tenant(
            "acme",
            json!({ "max_active_leases": 1, "spend_cap_daily_micros": 10_000_000 }),
        )
        .await;
    let lease = json!({ "pool": "small", "ttl_s": 100 }); // reserves 100 000
    let a = h.grant(&t, lease.clone()).await;
    let a = a["id"].as_str().expect("id").to_owned();
    let mut queued = lease.clone();
    queued["wait_s"] = json!(600);
    let (status, _, q) = h.request_lease(&t, queued).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let q = q["id"].as_str().expect("id").to_owned();
    let (status, _, patched) = h
        .json(
            PATCH,
            &t.path(""),
            // Above the tenant's quota of 1: the operator's limits raise it.
            Some(&h.admin),
            Some(json!({ "limits": { "max_active_leases": 3 } })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    h.wait_state(&t, &q, "ready").await;
    let c = h.grant(&t, lease.clone()).await;
    let c = c["id"].as_str().expect("id").to_owned();
    h.wait_state(&t, &c, "ready").await;

    // 300 000 reserved; a cap of 150 000 ends the newest two.
    let (status, _, _) = h
        .json(
            PATCH,
            &t.path(""),
            Some(&t.admin),
            Some(json!({ "limits": { "spend_cap_daily_micros": 150_000 } })),
        )
        .await;
    assert_eq!(status, 200);
    for ended in [&c, &q] {
        let lease = h.wait_state(&t, ended, "expired").await;
        assert_eq!(lease["end_reason"], "spend_cap", "{lease}");
    }
    assert_eq!(
        h.lease(&t, &a).await["state"],
        "ready",
        "the oldest lease keeps running"
    );
    let usage = h.get_ok(&t.path("/usage"), &t.read).await;
    assert_eq!(usage["cap_micros"], 150_000);
    assert_eq!(usage["reserved_micros"], 100_000);
    assert_problem(&h.request_lease(&t, lease).await, 429, "spend_cap");
    h.assert_documented().await;
}

/// Usage per UTC day or month and the paged, append-only ledger, exact on a manual clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_ledger() {
    // Usage sums the ledger for a UTC day or month (`period`, `at`): charged, reserved, cap,
    // available and by pool; the ledger lists append-only rows oldest first and pages with
    // `after`/`limit`; bad parameters are 400. Runs on a manual clock so amounts are exact.
    let h = Harness::start_manual().await;
    let t = h
        .setup_tenant(
            "acme",
            json!({ "spend_cap_daily_micros": 10_000_000, "spend_cap_monthly_micros": 100_000_000 }),
        )
        .await;
    let a = h.grant(&t, json!({ "pool": "small", "ttl_s": 600 })).await;
    let a_id = a["id"].as_str().expect("id").to_owned();
    h.wait_state(&t, &a_id, "ready").await;
    h.advance(Duration::from_secs(90));
    let (status, _, _) = h
        .json(
            POST,
            &t.path(&format!("/leases/{a_id}/release")),
            Some(&t.write),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let released = h.wait_state(&t, &a_id, "released").await;
    assert_eq!(released["cost"]["charged_micros"], 90_000, "90 s at 1000/s");
    let b = h.grant(&t, json!({ "pool": "small", "ttl_s": 300 })).await;
    let b_id = b["id"].as_str().expect("id").to_owned();

    let day = h.get_ok(&t.path("/usage"), &t.read).await;
    assert_eq!(day["period"], "day");
    assert_eq!(day["period_start"], "2027-01-15T00:00:00.000Z");
    assert_eq!(day["period_end"], "2027-01-16T00:00:00.000Z");
    assert_eq!(day["charged_micros"], 90_000);
    assert_eq!(day["reserved_micros"], 300_000);
    assert_eq!(day["cap_micros"], 10_000_000);
    assert_eq!(day["available_micros"], 10_000_000 - 390_000);
    assert_eq!(
        day["by_pool"],
        json!([{
            "pool": "small",
            "charged_micros": 90_000,
            "reserved_micros": 300_000,
            "warm_charged_micros": 0
        }])
    );
    assert_eq!(h.get_ok(&t.path("/usage?period=day"), &t.read).await, day);
    assert_eq!(
        h.get_ok(
            &t.path("/usage?period=day&at=2027-01-15T23:59:59Z"),
            &t.read
        )
        .await,
        day
    );
    let month = h.get_ok(&t.path("/usage?period=month"), &t.read).await;
    assert_eq!(month["period"], "month");
    assert_eq!(month["period_start"], "2027-01-01T00:00:00.000Z");
    assert_eq!(month["period_end"], "2027-02-01T00:00:00.000Z");
    assert_eq!(month["charged_micros"], 90_000);
    assert_eq!(month["cap_micros"], 100_000_000);
    assert_eq!(month["available_micros"], 100_000_000 - 390_000);
    let yesterday = h
        .get_ok(&t.path("/usage?period=day&at=2027-01-14"), &t.read)
        .await;
    assert_eq!(yesterday["period_start"], "2027-01-14T00:00:00.000Z");
    assert_eq!(yesterday["charged_micros"], 0);
    let last_month = h
        .get_ok(
            &t.path("/usage?period=month&at=2026-12-31T12:00:00%2B02:00"),
            &t.read,
        )
        .await;
    assert_eq!(last_month["period_start"], "2026-12-01T00:00:00.000Z");
    assert_eq!(last_month["charged_micros"], 0);
    for query in [
        "period=week",
        "period=",
        "at=yesterday",
        "at=2027-13-01",
        "at=1800000000",
        "when=now",
    ] {
        let bad = h
            .json(
                GET,
                &t.path(&format!("/usage?{query}")),
                Some(&t.read),
                None,
            )
            .await;
        assert_problem(&bad, 400, "bad_request");
    }

    let rows = h.ledger_all(&t).await;
    let shape: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["lease_id"].as_str().expect("lease").to_owned(),
                r["kind"].as_str().expect("kind").to_owned(),
                r["amount_micros"].as_i64().expect("amount"),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (a_id.clone(), "reserve".to_owned(), 600_000),
            (a_id.clone(), "charge".to_owned(), 90_000),
            (a_id.clone(), "release".to_owned(), 600_000),
            (b_id.clone(), "reserve".to_owned(), 300_000),
        ]
    );
    let seqs: Vec<i64> = rows
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {seqs:?}"
    );
    assert!(rows.iter().all(|r| r["pool"] == "small"));
    assert_eq!(ms(&rows[0]["at"]), T0);
    assert_eq!(ms(&rows[1]["at"]), T0 + 90_000);
    // The ledger balances: what is reserved and not released is the open reservation.
    let sum = |kind: &str| -> i64 {
        rows.iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["amount_micros"].as_i64().expect("amount"))
            .sum()
    };
    assert_eq!(sum("reserve") - sum("release"), 300_000);

    let page = h.get_ok(&t.path("/ledger?limit=3"), &t.read).await;
    assert_eq!(items(&page).len(), 3);
    let cursor = page["next_cursor"].as_str().expect("more rows").to_owned();
    assert_eq!(cursor, seqs[2].to_string());
    let rest = h
        .get_ok(&t.path(&format!("/ledger?limit=3&after={cursor}")), &t.read)
        .await;
    assert_eq!(items(&rest), rows[3..].to_vec());
    assert_eq!(rest["next_cursor"], Value::Null);
    let beyond = h.get_ok(&t.path("/ledger?after=1000000"), &t.read).await;
    assert!(items(&beyond).is_empty());
    assert_eq!(beyond["next_cursor"], Value::Null);
    for query in ["after=abc", "after=-1", "limit=0", "limit=1001", "before=3"] {
        let bad = h
            .json(
                GET,
                &t.path(&format!("/ledger?{query}")),
                Some(&t.read),
                None,
            )
            .await;
        assert_problem(&bad, 400, "bad_request");
    }
    h.assert_documented().await;
}

/// A shutdown turns `/readyz` to 503 at once, while every other route is still served for the
/// drain delay; then the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_fails_readiness_and_still_serves() {
    // The delay only has to outlast the few requests below; the test waits it out at the end.
    let mut h = Harness::start_with(None, |c| c.drain_delay = Duration::from_secs(3)).await;
    let (status, _, _) = h.json(GET, "/readyz", None, None).await;
    assert_eq!(status, 200);
    h.begin_shutdown();
    let ready = h.json(GET, "/readyz", None, None).await;
    assert_problem(&ready, 503, "unavailable");
    assert_eq!(ready.1[header::RETRY_AFTER], "1");
    // Still serving: a tenant can be created and read.
    let admin = Some(h.admin.as_str());
    let (status, _, _) = h
        .json(POST, "/v1/tenants", admin, Some(json!({ "name": "late" })))
        .await;
    assert_eq!(status, 201);
    let (status, _, tenant) = h.json(GET, "/v1/tenants/late", admin, None).await;
    assert_eq!(
        (status.as_u16(), tenant["name"].as_str()),
        (200, Some("late"))
    );
    h.assert_documented().await;
    h.stop().await;
}

/// `/healthz`, `/readyz`, `/openapi.json` and `/metrics` answer without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints() {
    // `/healthz`, `/readyz`, `/openapi.json` and `/metrics` answer without a token; the metrics
    // hold request counters by route template (never a tenant name), grant and rejection
    // counters, live objects and the alarm-lateness histogram.
    let h = Harness::start().await;
    let (status, _, health) = h.json(GET, "/healthz", None, None).await;
    assert_eq!(
        (status.as_u16(), health),
        (
            200,
            json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") })
        )
    );
    let (status, _, ready) = h.json(GET, "/readyz", None, None).await;
    assert_eq!(
        (status.as_u16(), ready),
        (200, json!({ "status": "ready" }))
    );
    let (status, headers, spec) = h.json(GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|v| v.starts_with("application/json"))
    );
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    assert_eq!(spec["info"]["title"], "berth");
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"]
            .as_str()
            .map(str::to_lowercase),
        Some("bearer".to_owned())
    );

    let t = h
        .setup_tenant("secret-tenant-name", json!({ "max_active_leases": 1 }))
        .await;
    let granted = h.grant(&t, json!({ "pool": "small" })).await;
    let lease_id = granted["id"].as_str().expect("id");
    assert_problem(
        &h.request_lease(&t, json!({ "pool": "small" })).await,
        429,
        "concurrency_cap",
    );
    // The tenant's alarm runs (its first reconciliation is due at once): wait, bounded, for
    // the lateness histogram to count it.
    let mut text = String::new();
    for _ in 0..500 {
        text = h.metrics().await;
        if !text.contains("berth_alarm_lateness_seconds_count 0\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = h
        .client
        .get(format!("{}/metrics", h.url))
        .send()
        .await
        .expect("metrics");
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|v| v.starts_with("application/openmetrics-text"))
    );
    for line in [
        "berth_http_requests_total{method=\"POST\",route=\"/v1/tenants/{tenant}/leases\",status=\"201\"} 1",
        "berth_http_requests_total{method=\"POST\",route=\"/v1/tenants/{tenant}/leases\",status=\"429\"} 1",
        "berth_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}",
        "berth_http_requests_total{method=\"POST\",route=\"/v1/tenants\",status=\"201\"} 1",
        "berth_lease_grants_total 1",
        "berth_lease_rejections_total{reason=\"concurrency_cap\"} 1",
        "berth_lease_rejections_total{reason=\"spend_cap\"} 0",
        "berth_lease_rejections_total{reason=\"queue_full\"} 0",
        "berth_live_objects 1",
        "# TYPE berth_alarm_lateness_seconds histogram",
        "berth_alarm_lateness_seconds_bucket{le=\"+Inf\"}",
        "# TYPE berth_http_requests counter",
    ] {
        assert!(text.contains(line), "metrics lack `{line}`:\n{text}");
    }
    let alarms = text
        .lines()
        .find_map(|l| l.strip_prefix("berth_alarm_lateness_seconds_count "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("alarm lateness count");
    assert!(alarms >= 1, "an alarm ran:\n{text}");
    assert!(
        !text.contains("secret-tenant-name") && !text.contains(lease_id),
        "metrics name route templates, never tenants or leases:\n{text}"
    );
    h.assert_documented().await;
}

/// Every route: 404 unknown paths, 405 with `Allow`, and 400/413/415/422 for bad bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_common_to_every_route() {
    // Errors common to every route: an unknown path is 404, a known path with another method is
    // 405 with `Allow`, and every route that takes a body answers 400 to malformed JSON, 415 to
    // another content type, 413 to more than 64 KiB and 422 to an unknown field.
    let h = Harness::start().await;
    let t = h.setup_tenant("acme", json!({})).await;
    let lease = h.grant(&t, json!({ "pool": "small" })).await;
    let id = lease["id"].as_str().expect("id");
    let admin = Some(h.admin.as_str());

    for path in ["/v1/nope", "/v1/tenants/acme/nope", "/", "/v2/tenants"] {
        assert_problem(&h.json(GET, path, admin, None).await, 404, "not_found");
    }
    for (method, path, allowed) in [
        (PUT, "/v1/tenants".to_owned(), "GET,POST"),
        (DELETE, "/v1/tenants/acme".to_owned(), "GET,PATCH"),
        (GET, "/v1/tenants/acme/providers/cloud".to_owned(), "PUT"),
        (POST, "/v1/tenants/acme/pools".to_owned(), "GET"),
        (PUT, t.path(&format!("/leases/{id}")), "DELETE,GET"),
        (GET, t.path(&format!("/leases/{id}/release")), "POST"),
        (POST, "/healthz".to_owned(), "GET"),
        (DELETE, "/metrics".to_owned(), "GET"),
    ] {
        let answer = h.json(method.clone(), &path, admin, None).await;
        assert_problem(&answer, 405, "method_not_allowed");
        let mut allow: Vec<String> = answer
            .1
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("405 of {method} {path} without Allow"))
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| m != "HEAD")
            .collect();
        allow.sort();
        assert_eq!(allow.join(","), allowed, "Allow of {path}");
    }

    let big_label = "x".repeat(70 * 1024);
    let body_routes: Vec<(Method, String, Value)> = vec![
        (POST, "/v1/tenants".into(), json!({ "name": "zeta" })),
        (PATCH, "/v1/tenants/acme".into(), json!({ "limits": {} })),
        (
            POST,
            "/v1/tenants/acme/tokens".into(),
            json!({ "scopes": ["leases:read"] }),
        ),
        (
            PUT,
            "/v1/tenants/acme/providers/other".into(),
            json!({ "kind": "fake", "config": { "cloud": h.cloud } }),
        ),
        (
            PUT,
            "/v1/tenants/acme/pools/other".into(),
            json!({ "provider": "cloud", "machine_type": "s", "hourly_price_micros": 1 }),
        ),
        (POST, t.path("/leases"), json!({ "pool": "small" })),
        (
            POST,
            t.path(&format!("/leases/{id}/heartbeat")),
            json!({ "extend_ttl_s": 1 }),
        ),
    ];
    for (method, path, body) in &body_routes {
        let malformed = h
            .raw(
                method.clone(),
                path,
                admin,
                Some("application/json"),
                b"{\"a\": [1, 2".to_vec(),
            )
            .await;
        assert_problem(&malformed, 400, "bad_request");
        let not_json = h
            .raw(
                method.clone(),
                path,
                admin,
                Some("application/x-www-form-urlencoded"),
                b"name=zeta".to_vec(),
            )
            .await;
        assert_problem(&not_json, 415, "unsupported_media_type");
        let mut huge = body.clone();
        huge["padding"] = json!(big_label);
        let too_large = h
            .raw(
                method.clone(),
                path,
                admin,
                Some("application/json"),
                huge.to_string().into_bytes(),
            )
            .await;
        assert_problem(&too_large, 413, "payload_too_large");
        let mut unknown = body.clone();
        unknown["no_such_field"] = json!(true);
        let (status, _, problem) = h.json(method.clone(), path, admin, Some(unknown)).await;
        assert_eq!(
            (status.as_u16(), problem["code"].as_str()),
            (422, Some("invalid_request")),
            "{method} {path}: {problem}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("no_such_field")),
            "the detail names the field: {problem}"
        );
    }
    // 64 KiB exactly is allowed through to validation (the limit is on the body size).
    let mut at_limit = json!({ "pool": "small", "labels": { "k": "" } });
    let overhead = at_limit.to_string().len();
    at_limit["labels"]["k"] = json!("v".repeat(64 * 1024 - overhead));
    assert_eq!(at_limit.to_string().len(), 64 * 1024);
    let (status, _, _) = h
        .raw(
            POST,
            &t.path("/leases"),
            Some(&t.write),
            Some("application/json"),
            at_limit.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 422, "a 64 KiB body is read (its label is too long)");
    // Nothing above created anything.
    assert_eq!(h.list_all(&t, "").await.len(), 1);
    let tenants = h.get_ok("/v1/tenants", &h.admin).await;
    assert_eq!(items(&tenants).len(), 1);
    h.assert_documented().await;
}

/// The routes this server serves, as (method, path template): the contract of DESIGN.md §6
/// that exists today.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/tenants"),
    ("GET", "/v1/tenants"),
    ("GET", "/v1/tenants/{tenant}"),
    ("PATCH", "/v1/tenants/{tenant}"),
    ("POST", "/v1/tenants/{tenant}/tokens"),
    ("GET", "/v1/tenants/{tenant}/tokens"),
    ("DELETE", "/v1/tenants/{tenant}/tokens/{id}"),
    ("PUT", "/v1/tenants/{tenant}/providers/{name}"),
    ("GET", "/v1/tenants/{tenant}/providers"),
    ("PUT", "/v1/tenants/{tenant}/pools/{pool}"),
    ("GET", "/v1/tenants/{tenant}/pools"),
    ("POST", "/v1/tenants/{tenant}/leases"),
    ("GET", "/v1/tenants/{tenant}/leases"),
    ("GET", "/v1/tenants/{tenant}/leases/{id}"),
    ("DELETE", "/v1/tenants/{tenant}/leases/{id}"),
    ("GET", "/v1/tenants/{tenant}/leases/{id}/logs"),
    ("POST", "/v1/tenants/{tenant}/leases/{id}/heartbeat"),
    ("POST", "/v1/tenants/{tenant}/leases/{id}/release"),
    ("GET", "/v1/tenants/{tenant}/usage"),
    ("GET", "/v1/tenants/{tenant}/ledger"),
    ("PUT", "/v1/tenants/{tenant}/webhooks/{name}"),
    ("GET", "/v1/tenants/{tenant}/webhooks/{name}"),
    ("DELETE", "/v1/tenants/{tenant}/webhooks/{name}"),
    ("GET", "/v1/tenants/{tenant}/webhooks"),
    ("POST", "/v1/tenants/{tenant}/webhooks/{name}/test"),
    ("GET", "/v1/tenants/{tenant}/webhooks/{name}/deliveries"),
    ("GET", "/v1/tenants/{tenant}/events"),
    ("POST", "/v1/runners/{lease_id}/ready"),
    ("POST", "/v1/runners/{lease_id}/release"),
    ("GET", "/v1/runners/{lease_id}/github-jitconfig"),
    ("GET", "/v1/tenants/{tenant}/integrations/github"),
    ("PUT", "/v1/tenants/{tenant}/integrations/github"),
    ("POST", "/v1/tenants/{tenant}/integrations/github"),
    ("GET", "/v1/whoami"),
    ("GET", "/v1/overview"),
    ("GET", "/v1/tenants/{tenant}/status"),
    ("GET", "/v1/tenants/{tenant}/stats/spend"),
    ("GET", "/v1/tenants/{tenant}/stats/queue"),
    ("POST", "/v1/admin/backups"),
    ("POST", "/v1/admin/restores"),
];

/// Routes of DESIGN.md §6 not served yet. When one starts being served, it must be
/// documented too (and move to [`ROUTES`]).
const PLANNED: &[(&str, &str)] = &[];

/// A concrete path of a template, on tenant `acme` and lease `lease_x`.
fn concrete(template: &str) -> String {
    template
        .replace("{tenant}", "acme")
        .replace("{lease_id}", "lease_x")
        .replace("{id}", "x1")
        .replace("{name}", "n1")
        .replace("{pool}", "p1")
}

/// Whether the router has a route for this method and path: anything but its fallback's
/// "no such route" 404 and its 405.
async fn served(h: &Harness, method: &str, path: &str) -> bool {
    if path.ends_with("/events") {
        // An event stream never ends: look at the status only.
        let response = h
            .client
            .get(format!("{}{path}", h.url))
            .bearer_auth(&h.admin)
            .send()
            .await
            .expect("events answer");
        return response.status() == StatusCode::OK;
    }
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let (status, _, body) = h.json(method, path, Some(&h.admin), None).await;
    let fallback_404 = status == StatusCode::NOT_FOUND
        && body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no such route"));
    !fallback_404 && status != StatusCode::METHOD_NOT_ALLOWED
}

/// `/openapi.json` lists exactly the routes the router serves, with their error answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route() {
    // The OpenAPI document lists exactly the routes the router serves: every route of the table
    // is served and documented, every documented route is in the table, every route of DESIGN.md
    // §6 that is served is documented, and every route template the metrics saw is documented.
    let h = Harness::start().await;
    h.create_tenant("acme", json!({})).await;
    let spec = h.get_ok("/openapi.json", &h.admin).await;
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if [
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let undocumented: Vec<_> = table.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    let untested: Vec<_> = documented.difference(&table).collect();
    assert!(
        untested.is_empty(),
        "documented but not in this suite's table (add them, with tests): {untested:?}"
    );
    for (method, template) in ROUTES {
        assert!(
            served(&h, method, &concrete(template)).await,
            "{method} {template} is not served"
        );
    }
    for (method, template) in PLANNED {
        if served(&h, method, &concrete(template)).await {
            assert!(
                documented.contains(&((*method).to_owned(), (*template).to_owned())),
                "{method} {template} is served but not in /openapi.json"
            );
        }
    }
    // Every route template the router matched (the metrics' `route` label) is documented.
    let matched: BTreeSet<(String, String)> = h
        .served_requests()
        .await
        .into_iter()
        .map(|(method, route, _)| (method, route))
        .collect();
    for (method, route) in &matched {
        if route == "unmatched" {
            continue;
        }
        assert!(
            documented.contains(&(method.clone(), route.clone()))
                || (method == "HEAD" && documented.contains(&("GET".to_owned(), route.clone()))),
            "the router matched {method} {route}, which /openapi.json does not list"
        );
    }
    // Each documented error answer is problem+json with the Problem schema; 429 and 503 name
    // Retry-After; every route behind a token documents 401 and 403, every route with a body
    // 400, 413, 415 and 422, every route with path parameters 404.
    let problem_ref = "#/components/schemas/Problem";
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("item") {
            let responses = operation["responses"].as_object().expect("responses");
            for (code, response) in responses {
                if !(code.starts_with('4') || code.starts_with('5')) {
                    continue;
                }
                let content = &response["content"];
                assert_eq!(
                    content["application/problem+json"]["schema"]["$ref"], problem_ref,
                    "{method} {path} {code}: {response}"
                );
                assert!(
                    content.get("application/json").is_none(),
                    "{method} {path} {code} says application/json: {response}"
                );
                if code == "429" || code == "503" {
                    assert!(
                        response["headers"]["Retry-After"].is_object(),
                        "{method} {path} {code} without Retry-After"
                    );
                }
            }
            let has = |code: &str| responses.contains_key(code);
            let name = format!("{} {path}", method.to_uppercase());
            if operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
            {
                assert!(has("401") && has("403"), "{name}: 401/403");
            }
            if operation.get("requestBody").is_some() {
                for code in ["400", "413", "415", "422"] {
                    assert!(has(code), "{name}: {code}");
                }
            }
            if path.contains('{') {
                assert!(has("404"), "{name}: 404");
            }
        }
    }
    h.assert_documented().await;
}
