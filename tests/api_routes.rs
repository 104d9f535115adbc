//! The HTTP API contract (DESIGN.md §6), route by route, over real HTTP against an in-process
//! server: the operator's and the tenant's own routes (tenants, tokens, providers and pools,
//! limits, usage and ledger), each route's success path and every error it documents. The
//! harness checks every answer against the error rules (problem+json with `type, title,
//! status, detail, code`; no 500; `WWW-Authenticate` on 401; `Retry-After` on 429 and 503).
//! The lease routes are in `api_leases.rs`, the operations routes and the rules common to
//! every route in `api_operations.rs`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::inproc::{DELETE, GET, Harness, PATCH, POST, PUT, T0, assert_problem, items, ms};

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
