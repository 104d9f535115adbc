//! GitHub just-in-time registration, focused, on the in-process server with the `fake`
//! provider and a local fake GitHub (`support/fake_github.rs`): the connection's validation
//! and write-only answers (token and App credentials), the App token exchange, the runner's
//! config route and its authentication, `in_progress` recorded on the lease, a busy
//! registration retried until its job is done (also across a restart), GitHub's refusals
//! failing the lease with GitHub's message, outages and rate limits retried, and
//! reconciliation removing the registrations of ended leases (and nothing else).

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::fake_github::{APP_ID, APP_KEY, FakeGithub, INSTALLATION, TOKEN};
use support::inproc::{Harness, Tenant};

/// A tenant `acme` with the `fake` pool `small`, a GitHub pool `gh` (labels `self-hosted`,
/// `linux`) and the integration connected to `gh` with `credentials`.
async fn github_tenant(h: &Harness, gh: &FakeGithub, credentials: Value) -> Tenant {
    let tenant = h
        .setup_tenant("acme", json!({ "max_active_leases": 10 }))
        .await;
    put_github_pool(h, &tenant, json!(["self-hosted", "linux"])).await;
    let mut config = json!({ "secret": "gh-secret", "scope": "acme", "api_url": gh.api_url() });
    config
        .as_object_mut()
        .expect("an object")
        .extend(credentials.as_object().expect("an object").clone());
    let (status, _, body) = h
        .json(
            Method::PUT,
            &tenant.path("/integrations/github"),
            Some(&tenant.admin),
            Some(config),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tenant
}

/// Puts the `fake` pool `gh` with `labels`, marked `github`.
async fn put_github_pool(h: &Harness, tenant: &Tenant, labels: Value) {
    let pool = json!({ "provider": "cloud", "machine_type": "s", "hourly_price_micros": 0,
        "labels": labels, "github": true });
    let (status, _, body) = h
        .json(
            Method::PUT,
            &tenant.path("/pools/gh"),
            Some(&tenant.admin),
            Some(pool),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["github"], true);
}

fn token() -> Value {
    json!({ "token": TOKEN })
}

fn runner_token(h: &Harness, lease: &str) -> String {
    broker::secrets::Keys::load_or_create(h.dir.path(), None)
        .expect("master key")
        .runner_token("acme", lease)
}

async fn jitconfig(h: &Harness, lease: &str, token: &str) -> (StatusCode, Value) {
    let (status, _, body) = h
        .json(
            Method::GET,
            &format!("/v1/runners/{lease}/github-jitconfig"),
            Some(token),
            None,
        )
        .await;
    (status, body)
}

fn id_of(lease: &Value) -> String {
    lease["id"].as_str().expect("a lease id").to_owned()
}

/// The connection is checked up front (each refusal names its field) and write-only: the
/// answer shows scope, URL, group, the credentials' kind and the App's ids, never the token
/// or the key; a webhook-only integration still works; with App credentials the key signs a
/// JWT the fake GitHub verifies, and the installation token is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_is_validated_and_write_only() {
    let gh = FakeGithub::start();
    let h = Harness::start().await;
    let tenant = h.setup_tenant("acme", json!({})).await;
    let put = |body: Value| {
        let path = tenant.path("/integrations/github");
        let admin = tenant.admin.clone();
        let h = &h;
        async move { h.json(Method::PUT, &path, Some(&admin), Some(body)).await }
    };
    let url = gh.api_url();
    let refused = [
        (
            json!({ "secret": "s", "scope": "a/b/c", "token": TOKEN }),
            "scope",
        ),
        (
            json!({ "secret": "s", "scope": "..", "token": TOKEN }),
            "scope",
        ),
        (json!({ "secret": "s", "token": TOKEN }), "scope"),
        (json!({ "secret": "s", "scope": "acme" }), "credentials"),
        (
            json!({ "secret": "s", "scope": "acme", "token": TOKEN, "app_id": 1, "installation_id": 2, "private_key": APP_KEY }),
            "token",
        ),
        (
            json!({ "secret": "s", "scope": "acme", "app_id": APP_ID }),
            "installation_id",
        ),
        (
            json!({ "secret": "s", "scope": "acme", "app_id": APP_ID, "installation_id": INSTALLATION }),
            "private_key",
        ),
        (
            json!({ "secret": "s", "scope": "acme", "app_id": APP_ID, "installation_id": INSTALLATION, "private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n" }),
            "private_key",
        ),
        (
            json!({ "secret": "s", "scope": "acme", "token": TOKEN, "api_url": "ftp://example.com" }),
            "api_url",
        ),
        (
            json!({ "secret": "s", "scope": "acme", "token": TOKEN, "runner_group_id": 0 }),
            "runner_group_id",
        ),
    ];
    for (body, field) in refused {
        let (status, _, problem) = put(body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(field), "{body}: {detail} names {field}");
        assert!(!detail.contains(TOKEN) && !detail.contains("PRIVATE KEY"));
    }
    let (_, _, shown) = h
        .json(
            Method::GET,
            &tenant.path("/integrations/github"),
            Some(&tenant.admin),
            None,
        )
        .await;
    assert_eq!(shown["configured"], false, "a refused PUT changes nothing");

    // Webhook-only, as before connections existed.
    let (status, _, shown) = put(json!({ "secret": "s" })).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        shown.get("connection").is_none_or(Value::is_null),
        "{shown}"
    );

    let app = json!({ "secret": "s", "scope": "acme", "api_url": url, "runner_group_id": 1,
        "app_id": APP_ID, "installation_id": INSTALLATION, "private_key": APP_KEY });
    let (status, _, shown) = put(app).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    let (_, _, got) = h
        .json(
            Method::GET,
            &tenant.path("/integrations/github"),
            Some(&tenant.admin),
            None,
        )
        .await;
    for view in [&shown, &got] {
        let connection = &view["connection"];
        assert_eq!(connection["scope"], "acme");
        assert_eq!(connection["api_url"], url.as_str());
        assert_eq!(connection["runner_group_id"], 1);
        assert_eq!(connection["credentials"], "app");
        assert_eq!(connection["app_id"], APP_ID);
        assert_eq!(connection["installation_id"], INSTALLATION);
        assert!(!view.to_string().contains("PRIVATE KEY"), "{view}");
    }

    // The App's key signs the JWT; one installation token serves both registrations.
    put_github_pool(&h, &tenant, json!(["self-hosted"])).await;
    for _ in 0..2 {
        let lease = h.grant(&tenant, json!({ "pool": "gh" })).await;
        let id = id_of(&lease);
        let ready = h.wait_state(&tenant, &id, "ready").await;
        assert_eq!(ready["github"]["registration"], "registered", "{ready}");
        assert!(gh.runner(&id).is_some());
    }
    assert_eq!(gh.issued_tokens(), 1, "the installation token is cached");

    // A GitHub pool needs a label.
    let (status, _, problem) = h
        .json(
            Method::PUT,
            &tenant.path("/pools/nolabels"),
            Some(&tenant.admin),
            Some(json!({ "provider": "cloud", "machine_type": "s", "hourly_price_micros": 0, "github": true })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("label")
    );
}

/// Without `--allow-private-providers`, a GitHub API URL on a private address is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_api_url_needs_the_operator() {
    let h = Harness::start_with(None, |config| config.allow_private_providers = false).await;
    let tenant = h.setup_tenant("acme", json!({})).await;
    let (status, _, problem) = h
        .json(
            Method::PUT,
            &tenant.path("/integrations/github"),
            Some(&tenant.admin),
            Some(json!({ "secret": "s", "scope": "acme", "token": TOKEN, "api_url": "http://127.0.0.1:9/api/v3" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("api_url")
    );
}

/// The runner reads its lease's config with its own runner token only; a lease without a
/// registration answers 404 `no_jitconfig`; an ended lease 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_jitconfig_route_needs_the_lease_token() {
    let gh = FakeGithub::start();
    let h = Harness::start().await;
    let tenant = github_tenant(&h, &gh, token()).await;
    let lease = h.grant(&tenant, json!({ "pool": "gh" })).await;
    let id = id_of(&lease);
    h.wait_state(&tenant, &id, "ready").await;
    let plain = id_of(&h.grant(&tenant, json!({ "pool": "small" })).await);
    let own = runner_token(&h, &id);
    let other = runner_token(&h, &plain);
    for bad in [
        "",
        "brt_acme_0000",
        other.as_str(),
        h.admin.as_str(),
        tenant.admin.as_str(),
        tenant.write.as_str(),
    ] {
        let (status, body) = jitconfig(&h, &id, bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}: {body}");
        assert!(!body.to_string().contains("eyJGAKEJIT"));
    }
    let (status, body) = jitconfig(&h, &id, &own).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["encoded_jit_config"].as_str(),
        gh.config_of(&id).as_deref()
    );
    let (status, body) = jitconfig(&h, &plain, &other).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_jitconfig")),
        "{body}"
    );
    let shown = h.lease(&tenant, &id).await;
    assert!(!shown.to_string().contains("eyJGAKEJIT"), "{shown}");

    h.release(&tenant, &id).await;
    let (status, body) = jitconfig(&h, &id, &own).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    gh.wait_until_async("the registration removed", |s| {
        s.runners.iter().all(|r| r.name != id)
    })
    .await;
    h.assert_documented().await;
}

fn delivery(action: &str, job: i64, runner: Option<(&str, i64)>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": action,
        "workflow_job": { "id": job, "run_id": 9, "labels": ["self-hosted", "linux"],
            "runner_name": runner.map(|r| r.0), "runner_id": runner.map(|r| r.1) },
        "repository": { "full_name": "acme/app" }
    }))
    .expect("json")
}

async fn deliver(h: &Harness, name: &str, body: &[u8]) -> (StatusCode, Value) {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(b"gh-secret").expect("key");
    mac.update(body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let (status, _, value) = h
        .send(
            Method::POST,
            "/v1/tenants/acme/integrations/github",
            None,
            Some("application/json"),
            Some(body.to_vec()),
            &[
                ("x-github-event", "workflow_job"),
                ("x-github-delivery", name),
                ("x-hub-signature-256", signature.as_str()),
            ],
        )
        .await;
    (status, value)
}

/// `in_progress` records the runner GitHub names on the job's lease (shown under `github`);
/// `completed` ends the lease and the registration goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_is_recorded_on_the_lease() {
    let gh = FakeGithub::start();
    let h = Harness::start().await;
    let tenant = github_tenant(&h, &gh, token()).await;
    let (status, outcome) = deliver(&h, "d1", &delivery("queued", 77, None)).await;
    assert_eq!(status, StatusCode::CREATED, "{outcome}");
    let id = id_of(&outcome["lease"]);
    h.wait_state(&tenant, &id, "ready").await;
    let registration = gh.runner(&id).expect("registered").id;
    let (status, outcome) = deliver(
        &h,
        "d2",
        &delivery("in_progress", 77, Some((&id, registration))),
    )
    .await;
    assert!(status.is_success(), "{outcome}");
    assert_eq!(outcome["outcome"], "recorded");
    let lease = h.lease(&tenant, &id).await;
    assert_eq!(lease["github"]["runner_name"], id.as_str());
    assert_eq!(lease["github"]["runner_id"], registration);
    assert_eq!(lease["github"]["job_id"], 77);
    assert_eq!(lease["github"]["registration_id"], registration);
    let (status, _) = deliver(
        &h,
        "d3",
        &delivery("completed", 77, Some((&id, registration))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    h.wait_state(&tenant, &id, "released").await;
    gh.wait_until_async("the registration removed", |s| s.removed.contains(&id))
        .await;
    let listed = h.list_all(&tenant, "").await;
    let ended = listed
        .iter()
        .find(|l| l["id"] == id.as_str())
        .expect("listed");
    assert_eq!(ended["github"]["runner_name"], id.as_str(), "{ended}");
}

/// A registration whose runner is running a job (GitHub's 422) is retried with backoff, from
/// the stored row (also after a restart), until it can be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_registration_is_removed_once_its_job_is_done() {
    let gh = FakeGithub::start();
    let mut h = Harness::start_manual().await;
    let tenant = github_tenant(&h, &gh, token()).await;
    let id = id_of(&h.grant(&tenant, json!({ "pool": "gh" })).await);
    h.wait_state(&tenant, &id, "ready").await;
    gh.set_busy(&id, true);
    h.release(&tenant, &id).await;
    gh.wait_until_async("a busy refusal", |s| s.busy_refusals >= 1)
        .await;
    let lease = h.lease(&tenant, &id).await;
    assert_eq!(lease["github"]["registration"], "removing", "{lease}");
    assert!(
        lease["github"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("running a job")
    );
    h.restart().await;
    gh.set_busy(&id, false);
    // The retry is due 30 s after the refusal (the clock is the test's).
    for _ in 0..20 {
        h.advance(Duration::from_secs(31));
        if gh.removed().contains(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gh.wait_until_async("the registration removed", |s| s.removed.contains(&id))
        .await;
    let mut removed = Value::Null;
    for _ in 0..50 {
        removed = h.lease(&tenant, &id).await;
        if removed["github"]["registration"] == "removed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(removed["github"]["registration"], "removed", "{removed}");
}

/// GitHub refusing the registration (403, a 4xx only a person can fix) fails the lease with
/// GitHub's message and makes no runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_refusal_fails_the_lease_with_its_message() {
    let gh = FakeGithub::start();
    let h = Harness::start().await;
    let tenant = github_tenant(&h, &gh, token()).await;
    gh.fail_registrations(403, "Resource not accessible by personal access token", 1);
    let id = id_of(&h.grant(&tenant, json!({ "pool": "gh" })).await);
    let failed = h.wait_state(&tenant, &id, "failed").await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("Resource not accessible by personal access token"),
        "{failed}"
    );
    assert!(
        h.fake("acme").runner_for("acme", &id).is_none(),
        "no runner was made"
    );
    assert!(gh.runner(&id).is_none());
}

/// A pool marked `github` on a tenant whose integration has no connection cannot register its
/// runners: its lease fails at once, saying what to set up, and no runner is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_pool_without_a_connection_fails_its_lease_saying_why() {
    let h = Harness::start().await;
    let tenant = h
        .setup_tenant("acme", json!({ "max_active_leases": 10 }))
        .await;
    put_github_pool(&h, &tenant, json!(["self-hosted"])).await;
    let id = id_of(&h.grant(&tenant, json!({ "pool": "gh" })).await);
    let failed = h.wait_state(&tenant, &id, "failed").await;
    let why = failed["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("no connection") && why.contains("berth github set"),
        "{failed}"
    );
    assert!(
        h.fake("acme").runner_for("acme", &id).is_none(),
        "no runner was made"
    );
}

/// A 5xx and a rate limit are transient: the lease's create is retried (honouring GitHub's
/// reset) and the runner ends up registered and ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_outages_and_rate_limits_are_retried() {
    let gh = FakeGithub::start();
    let h = Harness::start().await;
    let tenant = github_tenant(&h, &gh, token()).await;
    gh.fail_registrations(502, "Server Error", 1);
    let id = id_of(&h.grant(&tenant, json!({ "pool": "gh" })).await);
    gh.wait_until_async("the first registration refused", |s| s.registrations >= 1)
        .await;
    gh.rate_limit_next(1);
    let ready = h.wait_state(&tenant, &id, "ready").await;
    assert_eq!(ready["github"]["registration"], "registered", "{ready}");
    assert!(gh.registrations() >= 2);
    let errors: Vec<String> = ready["provisioning_attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter_map(|a| a["message"].as_str().map(str::to_owned))
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("Server Error")),
        "{errors:?}"
    );
}

/// Reconciliation lists the scope's registrations and removes those named exactly after an
/// ended lease of this tenant; a registration of an open lease, a lease-like name that is not
/// this tenant's lease, and a name berth did not make are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_removes_registrations_of_ended_leases() {
    let gh = FakeGithub::start();
    let h = Harness::start_with(None, |config| {
        config.reconcile_interval = Duration::from_secs(1);
    })
    .await;
    let tenant = github_tenant(&h, &gh, token()).await;
    let open = id_of(&h.grant(&tenant, json!({ "pool": "gh" })).await);
    h.wait_state(&tenant, &open, "ready").await;
    let ended = id_of(&h.grant(&tenant, json!({ "pool": "small" })).await);
    let (status, _, _) = h
        .json(
            Method::POST,
            &tenant.path(&format!("/leases/{ended}/release")),
            Some(&tenant.write),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    h.wait_state(&tenant, &ended, "released").await;
    // Left behind at GitHub (a crash, another tool): berth has no record of registering it.
    gh.add_runner(&ended);
    gh.add_runner("lease_000000000000000000deadbeef");
    gh.add_runner("build-box-1");
    // Provider work keeps rounds coming while it is recent.
    let busy = id_of(&h.grant(&tenant, json!({ "pool": "small" })).await);
    gh.wait_until_async("the ended lease's registration removed", |s| {
        s.removed.contains(&ended)
    })
    .await;
    assert!(
        gh.runner(&open).is_some(),
        "an open lease's registration stays"
    );
    assert!(gh.runner("lease_000000000000000000deadbeef").is_some());
    assert!(gh.runner("build-box-1").is_some());
    let _ = busy;
}

/// A lease released while GitHub is still answering its registration: the registration that
/// comes back is removed at once, no runner is made, and the lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_released_while_registering_leaves_no_registration() {
    let gh = FakeGithub::start();
    let h = Harness::start().await;
    let tenant = github_tenant(&h, &gh, token()).await;
    gh.delay_registrations(1_500);
    let lease = h.grant(&tenant, json!({ "pool": "gh" })).await;
    let id = id_of(&lease);
    assert_eq!(lease["state"], "provisioning");
    gh.wait_until_async("the registration asked for", |s| s.registrations >= 1)
        .await;
    let (status, _, released) = h
        .json(
            Method::POST,
            &tenant.path(&format!("/leases/{id}/release")),
            Some(&tenant.write),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    let ended = h
        .wait_for(&tenant, &id, "ended", |l| {
            l["state"] != "provisioning" && l["state"] != "releasing"
        })
        .await;
    assert!(
        support::inproc::is_terminal(ended["state"].as_str().unwrap_or_default()),
        "{ended}"
    );
    gh.wait_until_async("the late registration removed", |s| s.removed.contains(&id))
        .await;
    assert!(gh.runner(&id).is_none());
    assert!(
        h.fake("acme").runner_for("acme", &id).is_none(),
        "no runner was made for the ended lease"
    );
}
