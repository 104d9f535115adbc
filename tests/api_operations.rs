//! The HTTP API contract (DESIGN.md §6) of the operations routes (readiness while draining,
//! health, metrics, the operator's endpoints), the errors common to every route, and the
//! OpenAPI document listing every route the server serves — over real HTTP against an
//! in-process server whose harness checks every answer against the error rules (see
//! `api_routes.rs`).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use support::inproc::{DELETE, GET, Harness, PATCH, POST, PUT, assert_problem, items};

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
        // The admission gate (deadlines first): its limit moves with alarm lateness.
        "# TYPE berth_admission_limit gauge",
        "berth_admission_inside 0",
        "berth_admission_waiting 0",
        "# TYPE berth_alarm_lateness_seconds histogram",
        "berth_alarm_lateness_seconds_bucket{le=\"+Inf\"}",
        "# TYPE berth_http_requests counter",
        // Hand-backs of freed memory (`objects::runtime::ReleasePolicy`); timing decides the count.
        "# TYPE berth_heap_trims counter",
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
