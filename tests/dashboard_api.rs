//! The web dashboard over real HTTP on 127.0.0.1: its assets are served without a token and
//! with a strict Content-Security-Policy, hold nothing that could run tenant text as HTML or
//! reach another origin; the read-only routes it is built on (`/v1/whoami`, `/v1/overview`,
//! `…/status`, `…/stats/spend`, `…/stats/queue`) count right, refuse bad input with 400 and
//! are scoped like every tenant route. The browser itself is driven in `dashboard_browser.rs`.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::inproc::{Harness, SMALL_PRICE, assert_problem};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const ASSETS: [(&str, &str); 9] = [
    ("/ui", "text/html"),
    ("/ui/", "text/html"),
    ("/ui/app.js", "text/javascript"),
    ("/ui/dom.js", "text/javascript"),
    ("/ui/charts.js", "text/javascript"),
    ("/ui/leases.js", "text/javascript"),
    ("/ui/pages.js", "text/javascript"),
    ("/ui/app.css", "text/css"),
    ("/ui/icon.svg", "image/svg+xml"),
];

/// `GET /ui` and every asset answer without a token, with the strict CSP, `nosniff`,
/// `no-referrer`, no framing and a revalidated cache (`ETag`, then 304).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_assets_are_served_with_a_strict_content_security_policy() {
    let h = Harness::start().await;
    for (path, content_type) in ASSETS {
        let response = h
            .client
            .get(format!("{}{path}", h.url))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        assert_eq!(header("content-security-policy"), CSP, "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        let etag = header("etag");
        assert!(etag.starts_with('"') && etag.len() > 10, "{path}: {etag}");
        let body = response.text().await.expect("text");
        assert!(!body.is_empty(), "{path}");
        let again = h
            .client
            .get(format!("{}{path}", h.url))
            .header("if-none-match", &etag)
            .send()
            .await
            .expect("answer");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(
            again
                .headers()
                .get("content-security-policy")
                .and_then(|v| v.to_str().ok()),
            Some(CSP),
            "{path}: 304 too"
        );
        // HEAD answers like GET, without the body.
        let head = h
            .client
            .head(format!("{}{path}", h.url))
            .send()
            .await
            .expect("answer");
        assert_eq!(head.status(), StatusCode::OK, "HEAD {path}");
    }
    // Other paths under /ui are the API's 404 problem, not a page.
    let (status, _, _) = h.json(Method::GET, "/ui/nope.js", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = h.json(Method::POST, "/ui", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

/// The assets hold no inline script, style or event handler, reach no other origin, and the
/// scripts never parse text as HTML (`innerHTML` and kin) or run strings as code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_assets_never_inline_script_or_parse_data_as_html() {
    let h = Harness::start().await;
    let mut all = String::new();
    for (path, _) in ASSETS {
        let body = h
            .client
            .get(format!("{}{path}", h.url))
            .send()
            .await
            .expect("answer")
            .text()
            .await
            .expect("text");
        // The SVG namespace is a name, not a URL anything fetches.
        let external = body
            .replace("http://www.w3.org/2000/svg", "")
            .contains("://");
        assert!(!external, "{path} names another origin");
        if path.ends_with(".js") {
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "setAttribute('on",
                "localStorage",
                "document.cookie",
            ] {
                assert!(!body.contains(banned), "{path} uses `{banned}`");
            }
        }
        all.push_str(&body);
    }
    let html = h
        .client
        .get(format!("{}/ui", h.url))
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("text");
    let lower = html.to_lowercase();
    assert_eq!(
        lower.matches("<script").count(),
        lower.matches("<script type=\"module\" src=\"/ui/").count(),
        "every script is an external file of /ui"
    );
    assert!(!lower.contains("style="), "no inline style");
    assert!(!lower.contains("<style"), "no style element");
    for handler in [
        " onclick=",
        " onload=",
        " onsubmit=",
        " onerror=",
        "javascript:",
    ] {
        assert!(!lower.contains(handler), "no inline handler `{handler}`");
    }
    // The sign-in field has no name, so even a submit without JavaScript sends no token, and
    // the form posts (nothing lands in a URL).
    assert!(html.contains("id=\"signin-token\" type=\"password\""));
    assert!(!html.contains("name=\"token\""));
    assert!(lower.contains("method=\"post\""));
    // The token is kept for the tab only, and sent as a header.
    assert!(all.contains("sessionStorage"));
    assert!(all.contains("Authorization"));
    assert!(!all.contains("?token=") && !all.contains("access_token"));
}

/// `GET /v1/whoami` names the admin or the token's tenant and scopes, never the token; no
/// token is 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_owner_of_the_token() {
    let h = Harness::start().await;
    let acme = h.setup_tenant("acme", json!({})).await;
    let me = h.get_ok("/v1/whoami", &h.admin).await;
    assert_eq!(
        me,
        json!({ "admin": true, "tenant": null, "scopes": ["admin"] })
    );
    let me = h.get_ok("/v1/whoami", &acme.write).await;
    assert_eq!(
        me,
        json!({ "admin": false, "tenant": "acme", "scopes": ["leases:write"] })
    );
    assert!(!me.to_string().contains(&acme.write));
    let answer = h.json(Method::GET, "/v1/whoami", None, None).await;
    assert_problem(&answer, 401, "unauthorized");
    let answer = h.json(Method::GET, "/v1/whoami", Some("nope"), None).await;
    assert_problem(&answer, 401, "unauthorized");
    h.assert_documented().await;
}

/// Status and stats of tenant B are 404 to every token of tenant A (as for a tenant that does
/// not exist), the overview is the operator's alone, and only `tenant:admin` sees dead
/// deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_routes_are_scoped_to_the_tokens_tenant() {
    let h = Harness::start().await;
    let acme = h.setup_tenant("acme", json!({})).await;
    let globex = h.setup_tenant("globex", json!({})).await;
    h.grant(
        &globex,
        json!({ "pool": "small", "labels": { "secret": "globex-only" } }),
    )
    .await;
    for rest in ["/status", "/stats/spend", "/stats/queue"] {
        for token in [&acme.read, &acme.write, &acme.admin] {
            let answer = h
                .json(Method::GET, &globex.path(rest), Some(token), None)
                .await;
            assert_problem(&answer, 404, "not_found");
            assert!(!answer.2.to_string().contains("globex-only"));
            let answer = h
                .json(
                    Method::GET,
                    &format!("/v1/tenants/nope{rest}"),
                    Some(token),
                    None,
                )
                .await;
            assert_problem(&answer, 404, "not_found");
        }
        h.get_ok(&acme.path(rest), &acme.read).await;
        h.get_ok(&globex.path(rest), &h.admin).await;
    }
    for token in [&acme.read, &acme.admin] {
        let answer = h.json(Method::GET, "/v1/overview", Some(token), None).await;
        assert_problem(&answer, 403, "forbidden");
    }
    let status = h.get_ok(&acme.path("/status"), &acme.read).await;
    assert_eq!(status["dead_deliveries"], Value::Null, "{status}");
    let status = h.get_ok(&acme.path("/status"), &acme.admin).await;
    assert_eq!(status["dead_deliveries"], 0, "{status}");
    let overview = h.get_ok("/v1/overview", &h.admin).await;
    let names: Vec<&str> = overview["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["tenant"].as_str())
        .collect();
    assert_eq!(names, ["acme", "globex"]);
    assert_eq!(overview["items"][1]["active"], 1);
    // Paging by name.
    let first = h.get_ok("/v1/overview?limit=1", &h.admin).await;
    assert_eq!(first["items"][0]["tenant"], "acme");
    assert_eq!(first["next_cursor"], "acme");
    let second = h.get_ok("/v1/overview?limit=1&cursor=acme", &h.admin).await;
    assert_eq!(second["items"][0]["tenant"], "globex");
    assert_eq!(second["next_cursor"], Value::Null);
    h.assert_documented().await;
}

/// Bad query parameters are 400 `bad_request`, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_routes_refuse_bad_input() {
    let h = Harness::start().await;
    let acme = h.setup_tenant("acme", json!({})).await;
    for path in [
        "/v1/overview?limit=0",
        "/v1/overview?limit=101",
        "/v1/overview?limit=x",
        "/v1/overview?nope=1",
        "/v1/tenants/acme/stats/spend?days=0",
        "/v1/tenants/acme/stats/spend?days=401",
        "/v1/tenants/acme/stats/spend?days=-1",
        "/v1/tenants/acme/stats/spend?days=99999999999999999999",
        "/v1/tenants/acme/stats/queue?minutes=0",
        "/v1/tenants/acme/stats/queue?minutes=1441",
        "/v1/tenants/acme/stats/queue?minutes=%3Cscript%3E",
        "/v1/tenants/acme/status?x=1",
    ] {
        let answer = h.json(Method::GET, path, Some(&h.admin), None).await;
        assert_problem(&answer, 400, "bad_request");
    }
    // The bounds `/openapi.json` publishes are the ones the server checks.
    let spec = h.get_ok("/openapi.json", &h.admin).await;
    for (path, name) in [
        ("/v1/overview", "limit"),
        ("/v1/tenants/{tenant}/stats/spend", "days"),
        ("/v1/tenants/{tenant}/stats/queue", "minutes"),
    ] {
        let parameter = spec["paths"][path]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{path} documents `{name}`"));
        let low = parameter["schema"]["minimum"].as_i64().expect("minimum");
        let high = parameter["schema"]["maximum"].as_i64().expect("maximum");
        let concrete = path.replace("{tenant}", "acme");
        for (value, status) in [(low - 1, 400), (low, 200), (high, 200), (high + 1, 400)] {
            let (got, _, body) = h
                .json(
                    Method::GET,
                    &format!("{concrete}?{name}={value}"),
                    Some(&h.admin),
                    None,
                )
                .await;
            assert_eq!(got.as_u16(), status, "{concrete}?{name}={value}: {body}");
        }
    }
    let answer = h
        .json(
            Method::GET,
            "/v1/tenants/%3Cb%3Ex%3C%2Fb%3E/status",
            Some(&acme.read),
            None,
        )
        .await;
    assert_problem(&answer, 404, "not_found");
    h.assert_documented().await;
}

/// The status counts leases by state and spend against the caps, and names the caps the
/// tenant is at; the queue history shows a lease's wait minute by minute; the spend history
/// puts a charge on its day and pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_histories_follow_the_leases() {
    let h = Harness::start_manual().await;
    let acme = h
        .setup_tenant(
            "acme",
            json!({ "max_active_leases": 1, "spend_cap_daily_micros": 1_000_000_000 }),
        )
        .await;
    let status = h.get_ok(&acme.path("/status"), &acme.read).await;
    assert_eq!(
        (&status["active"], &status["queued"], &status["at_cap"]),
        (&json!(0), &json!(0), &json!([]))
    );
    let first = h
        .grant(&acme, json!({ "pool": "small", "ttl_s": 600 }))
        .await;
    let first_id = first["id"].as_str().expect("id");
    h.wait_state(&acme, first_id, "ready").await;
    h.advance(Duration::from_secs(60));
    let (code, _, queued) = h
        .request_lease(&acme, json!({ "pool": "small", "wait_s": 3600 }))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{queued}");
    h.advance(Duration::from_secs(150));
    let status = h.get_ok(&acme.path("/status"), &acme.read).await;
    assert_eq!(
        (
            &status["active"],
            &status["ready"],
            &status["queued"],
            &status["at_cap"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(["concurrency"])),
        "{status}"
    );
    assert_eq!(status["day"]["reserved_micros"], 600 * SMALL_PRICE / 3600);
    assert_eq!(status["day"]["cap_micros"], 1_000_000_000);
    assert_eq!(status["month"]["cap_micros"], Value::Null);
    // The queue, once a minute up to now: empty until the second request, one since.
    let queue = h
        .get_ok(&acme.path("/stats/queue?minutes=10"), &acme.read)
        .await;
    let points: Vec<i64> = queue["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["queued"].as_i64().expect("queued"))
        .collect();
    assert_eq!(points, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1], "{queue}");
    // Releasing the first grants the second: the queue is empty now.
    let (code, _, _) = h
        .json(
            Method::POST,
            &acme.path(&format!("/leases/{first_id}/release")),
            Some(&acme.write),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    h.wait_state(&acme, first_id, "released").await;
    let queue = h
        .get_ok(&acme.path("/stats/queue?minutes=10"), &acme.read)
        .await;
    let last = queue["points"].as_array().expect("points").last().cloned();
    assert_eq!(last.map(|p| p["queued"].clone()), Some(json!(0)), "{queue}");
    // The charge of the first lease (210 s at 1000 micros/s) is today's, in pool `small`.
    let spend = h.get_ok(&acme.path("/stats/spend"), &acme.read).await;
    let days = spend["days"].as_array().expect("days");
    assert_eq!(days.len(), 30);
    let today = days.last().expect("today");
    assert_eq!(today["date"], "2027-01-15", "{spend}");
    assert_eq!(today["charged_micros"], 210_000, "{spend}");
    assert_eq!(
        today["by_pool"],
        json!([{ "pool": "small", "charged_micros": 210_000 }])
    );
    assert_eq!(spend["pools"], json!(["small"]));
    assert!(days[..29].iter().all(|d| d["charged_micros"] == 0));
    let status = h.get_ok(&acme.path("/status"), &acme.read).await;
    assert_eq!(status["day"]["charged_micros"], 210_000, "{status}");
    assert_eq!(status["queued"], 0);
    h.assert_documented().await;
}

/// A webhook delivery answered `410 Gone` is dead-lettered at once: the tenant's status and
/// the operator's overview show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_deliveries_show_in_the_status() {
    let h = Harness::start().await;
    let acme = h.setup_tenant("acme", json!({})).await;
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = format!("http://{}/hook", gone.local_addr().expect("addr"));
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::GONE });
        let _ = axum::serve(gone, app).await;
    });
    let (code, _, body) = h
        .json(
            Method::PUT,
            &acme.path("/webhooks/alerts"),
            Some(&acme.admin),
            Some(json!({ "url": target })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, _, body) = h
        .json(
            Method::POST,
            &acme.path("/webhooks/alerts/test"),
            Some(&acme.admin),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let mut status = Value::Null;
    for _ in 0..100 {
        status = h.get_ok(&acme.path("/status"), &acme.admin).await;
        if status["dead_deliveries"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["dead_deliveries"], 1, "{status}");
    let overview = h.get_ok("/v1/overview", &h.admin).await;
    assert_eq!(overview["items"][0]["dead_deliveries"], 1, "{overview}");
    h.assert_documented().await;
}
