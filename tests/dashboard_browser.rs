//! The web dashboard in a real browser: headless Chromium, driven through `chromedriver`,
//! against the real `berth` binary. A tenant signs in with its token (keyboard only), sees a
//! lease appear and move to `ready` and `released` without a reload, sees the spend bar move,
//! releases a lease from the page after a confirmation, is refused another tenant's page; a
//! tenant admin sends a test webhook; the operator sees both tenants. Text a tenant controls
//! (labels, runner facts) is shown as text, never run; no token ever appears in a URL, the
//! page's HTML or the server's log; the browser reports no Content-Security-Policy
//! violation.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`, `chromium-driver`; `.ci/run`
//! installs them). Without them the test says so and passes, unless `BERTH_REQUIRE_BROWSER`
//! is set (CI sets it), when it fails. With `BERTH_UPDATE_SCREENSHOTS=1` the screenshots it
//! takes replace those in `docs/screenshots/`; otherwise they go to a temporary directory.

mod support;
#[path = "support/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::Server;
use webdriver::{Driver, Session};

/// A long wait for anything the page shows after an event (the stream is live, so this is
/// slack for a loaded CI machine, not an expected delay).
const SHOWN: Duration = Duration::from_secs(20);
/// The WebDriver key code of Enter.
const ENTER: &str = "\u{E007}";

struct Api {
    url: String,
    client: reqwest::Client,
}

impl Api {
    async fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("berth answers");
        let status = response.status();
        let value: Value = response.json().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value
    }

    async fn token(&self, admin: &str, tenant: &str, scope: &str) -> String {
        let body = json!({ "scopes": [scope] });
        let created = self
            .call(
                admin,
                "POST",
                &format!("/v1/tenants/{tenant}/tokens"),
                Some(body),
            )
            .await;
        created["token"].as_str().expect("token").to_owned()
    }
}

/// Where screenshots go: `docs/screenshots` when asked to update them, else a scratch
/// directory.
fn screenshot_dir(scratch: &tempfile::TempDir) -> PathBuf {
    if std::env::var_os("BERTH_UPDATE_SCREENSHOTS").is_some() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
        std::fs::create_dir_all(&dir).expect("docs/screenshots");
        dir
    } else {
        scratch.path().to_owned()
    }
}

async fn shot(browser: &Session, dir: &std::path::Path, name: &str) {
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "{name}: a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

/// Types `token` into the sign-in form and presses Enter; waits until the page left it.
async fn sign_in(browser: &Session, token: &str) {
    let field = browser.find("#signin-token").await;
    browser.type_text(&field, token).await;
    browser.type_text(&field, ENTER).await;
    browser
        .wait_until(
            "signed in",
            SHOWN,
            "return document.getElementById('view-signin').hidden && !document.getElementById('who').hidden;",
            vec![],
        )
        .await;
}

async fn sign_out(browser: &Session) {
    let button = browser.find("#signout").await;
    browser.click(&button).await;
    browser
        .wait_until(
            "signed out",
            SHOWN,
            "return !document.getElementById('view-signin').hidden;",
            vec![],
        )
        .await;
}

/// Waits until the lease's row shows `state`.
async fn row_state(browser: &Session, id: &str, state: &str) {
    browser
        .wait_until(
            &format!("lease {id} shown {state}"),
            SHOWN,
            "const r = document.querySelector(`tr[data-lease-id=\"${arguments[0]}\"]`); return r && r.dataset.state === arguments[1];",
            vec![json!(id), json!(state)],
        )
        .await;
}

async fn spent_today(browser: &Session) -> i64 {
    browser
        .execute(
            "const m = document.querySelector('.meter[data-period=\"day\"]'); return m ? Number(m.dataset.spentMicros) : -1;",
            vec![],
        )
        .await
        .as_i64()
        .unwrap_or(-1)
}

/// Everything above, in one browser run against one real berth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let driver = match Driver::start().await {
        Ok(driver) => driver,
        Err(why) if std::env::var_os("BERTH_REQUIRE_BROWSER").is_none() => {
            eprintln!("SKIPPED dashboard_in_a_real_browser: {why}");
            return;
        }
        Err(why) => panic!("BERTH_REQUIRE_BROWSER is set, but: {why}"),
    };
    let scratch = tempfile::tempdir().expect("tempdir");
    let shots = screenshot_dir(&scratch);
    let data = scratch.path().join("data");
    let mut server = Server::start_with_env(
        &data,
        &["--enable-fake", "--allow-private-webhooks"],
        &[("BERTH_LOG", "debug")],
    );
    let admin = server.admin_token();
    let api = Api {
        url: server.url.clone(),
        client: reqwest::Client::new(),
    };

    // Two tenants, each with a `fake` pool whose runners wait for their ready callback.
    let cloud = format!("ui-{:x}", support::inproc::rand_u128() as u64);
    // globex may run one lease at a time: its one lease puts it at its cap.
    for (tenant, cap, active) in [("acme", 50_000_000, 4), ("globex", 20_000_000, 1)] {
        let limits = json!({ "max_active_leases": active, "spend_cap_daily_micros": cap, "spend_cap_monthly_micros": cap * 20 });
        api.call(
            &admin,
            "POST",
            "/v1/tenants",
            Some(json!({ "name": tenant, "limits": limits })),
        )
        .await;
        let account = json!({ "kind": "fake", "config": { "cloud": cloud, "ready": false } });
        api.call(
            &admin,
            "PUT",
            &format!("/v1/tenants/{tenant}/providers/cloud"),
            Some(account),
        )
        .await;
        for (pool, price) in [("linux", 3_600_000), ("arm", 7_200_000)] {
            let body =
                json!({ "provider": "cloud", "machine_type": "s", "hourly_price_micros": price });
            api.call(
                &admin,
                "PUT",
                &format!("/v1/tenants/{tenant}/pools/{pool}"),
                Some(body),
            )
            .await;
        }
    }
    let acme_write = api.token(&admin, "acme", "leases:write").await;
    let acme_admin = api.token(&admin, "acme", "tenant:admin").await;
    let globex_write = api.token(&admin, "globex", "leases:write").await;
    let keys = broker::secrets::Keys::load_or_create(&data, None).expect("master key");
    let lease = |tenant: &'static str, token: String, pool: &'static str, labels: Value| {
        let api = &api;
        async move {
            let body = json!({ "pool": pool, "ttl_s": 600, "labels": labels });
            api.call(
                &token,
                "POST",
                &format!("/v1/tenants/{tenant}/leases"),
                Some(body),
            )
            .await["id"]
                .as_str()
                .expect("id")
                .to_owned()
        }
    };
    let ready = |tenant: &'static str, id: String, metadata: Value| {
        let api = &api;
        let token = keys.runner_token(tenant, &id);
        async move {
            let body = json!({ "address": "10.0.0.7", "metadata": metadata });
            api.call(
                &token,
                "POST",
                &format!("/v1/runners/{id}/ready"),
                Some(body),
            )
            .await;
        }
    };
    // Some history: a released lease of each pool, so the ledger and the charts have rows.
    for pool in ["linux", "arm"] {
        let id = lease(
            "acme",
            acme_write.clone(),
            pool,
            json!({ "repo": "acme/web" }),
        )
        .await;
        ready("acme", id.clone(), json!({})).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        api.call(
            &acme_write,
            "POST",
            &format!("/v1/tenants/acme/leases/{id}/release"),
            None,
        )
        .await;
        server.wait_lease("acme", &id, "ended").await;
    }
    let globex_lease = lease(
        "globex",
        globex_write.clone(),
        "linux",
        json!({ "secret": "globex-confidential" }),
    )
    .await;
    // A receiver for acme's webhook.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_url = format!("http://{}/berth", receiver.local_addr().expect("addr"));
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::NO_CONTENT });
        let _ = axum::serve(receiver, app).await;
    });
    api.call(
        &acme_admin,
        "PUT",
        "/v1/tenants/acme/webhooks/alerts",
        Some(json!({ "url": hook_url, "events": ["lease.ready", "lease.released"] })),
    )
    .await;

    let browser = driver.session(1280, 1000).await;
    let tokens = [&admin, &acme_write, &acme_admin, &globex_write];
    let no_token_in_url = |url: String| {
        for token in tokens {
            assert!(!url.contains(token.as_str()), "a token in the URL {url}");
        }
    };

    // Sign in as acme (leases:write), with the keyboard only.
    browser.goto(&format!("{}/ui", server.url)).await;
    shot(&browser, &shots, "sign-in").await;
    sign_in(&browser, &acme_write).await;
    browser
        .wait_until(
            "the tenant page",
            SHOWN,
            "return location.hash === '#/t/acme' && !document.getElementById('view-tenant').hidden && !document.getElementById('live').hidden;",
            vec![],
        )
        .await;
    no_token_in_url(browser.url().await);
    // A marker that a reload would wipe: everything below happens without one.
    browser
        .execute("window.__stay = 42; return true;", vec![])
        .await;
    let spent_before = spent_today(&browser).await;
    assert!(spent_before >= 0, "the day's spend bar is shown");

    // A lease appears, provisioning; its runner reports ready; it is released.
    let hostile = "<img src=x onerror=\"window.__pwned=1\">";
    let first = lease(
        "acme",
        acme_write.clone(),
        "linux",
        json!({ "repo": "acme/api", "note": hostile }),
    )
    .await;
    row_state(&browser, &first, "provisioning").await;
    browser
        .wait_until(
            "the spend bar moved with the reservation",
            SHOWN,
            "const m = document.querySelector('.meter[data-period=\"day\"]'); return m && Number(m.dataset.spentMicros) > arguments[0];",
            vec![json!(spent_before)],
        )
        .await;
    assert!(spent_today(&browser).await >= spent_before + 600_000);
    ready("acme", first.clone(), json!({ "agent": "<b>v2</b>" })).await;
    row_state(&browser, &first, "ready").await;
    let second = lease(
        "acme",
        acme_write.clone(),
        "arm",
        json!({ "repo": "acme/web" }),
    )
    .await;
    row_state(&browser, &second, "provisioning").await;
    ready("acme", second.clone(), json!({})).await;
    row_state(&browser, &second, "ready").await;
    // The tenant's text is shown as text: the label is there verbatim, and nothing ran.
    let label = browser
        .text_of(&format!("tr[data-lease-id=\"{first}\"] .label:first-child"))
        .await;
    assert_eq!(label.as_deref(), Some(format!("note={hostile}").as_str()));
    let ran = browser
        .execute(
            "return [window.__pwned === undefined, document.querySelector('img[src=\"x\"]') === null];",
            vec![],
        )
        .await;
    assert_eq!(
        ran,
        json!([true, true]),
        "tenant text was never run as HTML"
    );
    // Filters: by pool.
    let pool = browser.find("#filter-pool").await;
    browser.type_text(&pool, "arm").await;
    browser.type_text(&pool, ENTER).await;
    browser
        .wait_until(
            "only the arm pool",
            SHOWN,
            "const rows = [...document.querySelectorAll('#lease-table tbody tr')]; return rows.length > 0 && rows.every((r) => r.children[2].textContent === 'arm');",
            vec![],
        )
        .await;
    let pool = browser.find("#filter-pool").await;
    browser.clear(&pool).await;
    browser.type_text(&pool, ENTER).await;
    row_state(&browser, &first, "ready").await;
    browser
        .wait_until(
            "the queue chart is drawn",
            SHOWN,
            "return document.querySelector('#queue-chart svg') !== null && document.querySelector('#spend-chart svg rect') !== null;",
            vec![],
        )
        .await;
    shot(&browser, &shots, "tenant").await;
    let html = browser.source().await;
    for token in tokens {
        assert!(!html.contains(token.as_str()), "a token in the page");
    }

    // Released through the API: the row follows.
    api.call(
        &acme_write,
        "POST",
        &format!("/v1/tenants/acme/leases/{first}/release"),
        None,
    )
    .await;
    row_state(&browser, &first, "released").await;
    // Released from the page, after a confirmation (cancel first: nothing happens).
    let release = browser
        .find(&format!("tr[data-lease-id=\"{second}\"] button.release"))
        .await;
    browser.click(&release).await;
    let cancel = browser.find("#confirm-cancel").await;
    browser.click(&cancel).await;
    let open = browser
        .execute("return document.getElementById('confirm').open;", vec![])
        .await;
    assert_eq!(open, json!(false));
    row_state(&browser, &second, "ready").await;
    browser.click(&release).await;
    browser
        .wait_until(
            "the confirmation names the lease",
            SHOWN,
            "return document.getElementById('confirm').open && document.getElementById('confirm-text').textContent.includes(arguments[0]);",
            vec![json!(second)],
        )
        .await;
    let ok = browser.find("#confirm-ok").await;
    browser.click(&ok).await;
    row_state(&browser, &second, "released").await;
    let stayed = browser.execute("return window.__stay;", vec![]).await;
    assert_eq!(stayed, json!(42), "no reload happened");

    // The lease page: timeline, runner facts (shown as text), cost.
    let link = browser
        .find(&format!("tr[data-lease-id=\"{first}\"] a"))
        .await;
    browser.click(&link).await;
    browser
        .wait_until(
            "the lease page",
            SHOWN,
            "return !document.getElementById('view-lease').hidden && document.querySelectorAll('#lease-timeline li').length >= 4;",
            vec![],
        )
        .await;
    let runner = browser.text_of("#lease-runner").await.unwrap_or_default();
    assert!(
        runner.contains("10.0.0.7") && runner.contains("<b>v2</b>"),
        "{runner}"
    );
    let cost = browser.text_of("#lease-cost").await.unwrap_or_default();
    assert!(
        cost.contains("Reserved") && cost.contains("Charged"),
        "{cost}"
    );
    no_token_in_url(browser.url().await);
    shot(&browser, &shots, "lease").await;

    // The ledger, paged.
    browser
        .execute("location.hash = '#/t/acme/ledger'; return true;", vec![])
        .await;
    browser
        .wait_until(
            "the ledger",
            SHOWN,
            "return !document.getElementById('view-ledger').hidden && document.querySelectorAll('#ledger-table tbody tr').length >= 6;",
            vec![],
        )
        .await;
    shot(&browser, &shots, "ledger").await;

    // Another tenant's page shows nothing of it.
    browser
        .execute("location.hash = '#/t/globex'; return true;", vec![])
        .await;
    browser
        .wait_until(
            "refused",
            SHOWN,
            "return !document.getElementById('view-missing').hidden;",
            vec![],
        )
        .await;
    let html = browser.source().await;
    assert!(!html.contains("globex-confidential") && !html.contains(&globex_lease));
    shot(&browser, &shots, "refused").await;
    for token in tokens {
        assert!(!html.contains(token.as_str()), "a token in the page");
    }

    // A tenant admin sends a test webhook and sees it delivered.
    sign_out(&browser).await;
    sign_in(&browser, &acme_admin).await;
    browser
        .execute("location.hash = '#/t/acme/webhooks'; return true;", vec![])
        .await;
    let test = browser.find("[data-webhook=\"alerts\"] .head button").await;
    browser.click(&test).await;
    browser
        .wait_until(
            "the test delivery is delivered",
            SHOWN,
            "return [...document.querySelectorAll('[data-webhook=\"alerts\"] tr[data-status]')].some((r) => r.children[1].textContent === 'webhook.test' && r.dataset.status === 'delivered');",
            vec![],
        )
        .await;
    shot(&browser, &shots, "webhooks").await;

    // The operator sees both tenants, and globex's page.
    sign_out(&browser).await;
    sign_in(&browser, &admin).await;
    browser
        .execute("location.hash = '#/'; return true;", vec![])
        .await;
    browser
        .wait_until(
            "the overview",
            SHOWN,
            "const names = [...document.querySelectorAll('#overview-table tbody tr')].map((r) => r.dataset.tenant); return names.join(',') === 'acme,globex';",
            vec![],
        )
        .await;
    let flagged = browser
        .execute(
            "return [...document.querySelectorAll('#overview-table tbody tr')].map((r) => [r.dataset.tenant, r.hasAttribute('data-attention'), r.lastChild.textContent]);",
            vec![],
        )
        .await;
    assert_eq!(
        flagged,
        json!([
            ["acme", false, "ok"],
            ["globex", true, "at concurrency cap"]
        ]),
        "the tenant at a cap is marked"
    );
    shot(&browser, &shots, "overview").await;
    browser
        .execute("location.hash = '#/t/globex'; return true;", vec![])
        .await;
    row_state(&browser, &globex_lease, "provisioning").await;
    // On a phone.
    browser.set_window_size(390, 844).await;
    browser
        .execute("location.hash = '#/t/acme'; return true;", vec![])
        .await;
    row_state(&browser, &first, "released").await;
    shot(&browser, &shots, "tenant-phone").await;
    no_token_in_url(browser.url().await);

    let console = browser.console().await;
    let violations: Vec<&String> = console
        .iter()
        .filter(|line| line.contains("Content Security Policy") || line.contains("Uncaught"))
        .collect();
    assert!(violations.is_empty(), "browser console: {violations:#?}");
    browser.quit().await;

    // No token in any log line of the server.
    support::signal(&server.child, "TERM");
    support::wait_bounded(&mut server.child);
    let lines: Vec<String> = server.log.try_iter().collect();
    assert!(lines.len() > 10, "the server logged");
    for line in &lines {
        for token in tokens {
            assert!(!line.contains(token.as_str()), "a token in the log: {line}");
        }
    }
}
