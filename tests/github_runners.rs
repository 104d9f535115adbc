//! GitHub just-in-time runners through the real binary: `berth github set` with a scope and a
//! token against a local fake GitHub (`support/fake_github.rs`), a pool marked `--github`
//! on the `process` provider, and signed `workflow_job` deliveries.
//!
//! - a `queued` job leads to a runner process whose environment holds exactly the JIT config
//!   the fake GitHub issued for its lease (the runner writes `$BERTH_GITHUB_JITCONFIG` into its
//!   work directory); `in_progress` names the runner on the lease; `completed` ends the lease
//!   and removes the registration;
//! - a lease that ends before its job started (released by the client) leaves no
//!   registration, and one canceled while queued never had one;
//! - the config never appears in an API answer (lease show and list, `github show`), the
//!   event stream, a webhook delivery, the server's log or `/metrics`.
//!
//! Every wait is bounded and nothing asserts how long anything took.

#[path = "support/cli.rs"]
mod cli_support;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cli_support::{Berth, Tenant, run_with_stdin};
use serde_json::{Value, json};
use support::fake_github::{FakeGithub, TOKEN};

/// The runner: writes its JIT config where the test can read it, then waits to be stopped.
const RUNNER: &str = r#"printf '%s' "$BERTH_GITHUB_JITCONFIG" > jitconfig.tmp && mv jitconfig.tmp jitconfig; exec sleep 120"#;
const SECRET: &str = "gh-webhook-secret-e2e";

/// A server, a tenant with a `--github` pool `gh` (labels `self-hosted`, `linux`) and the
/// GitHub integration pointed at the fake with a token.
fn setup(gh: &FakeGithub) -> (Berth, Tenant) {
    let berth = Berth::start_with(&["--allow-private-providers", "--allow-private-webhooks"]);
    let tenant = berth.tenant("acme", &["--max-active", "4"]);
    berth
        .admin(&[
            "--tenant",
            "acme",
            "pool",
            "set",
            "gh",
            "--provider",
            "local",
            "--machine-type",
            "local",
            "--price",
            "0.12",
            "--label",
            "self-hosted",
            "--label",
            "linux",
            "--github",
            "--",
            "sh",
            "-c",
            RUNNER,
        ])
        .ok();
    let files = berth.dir.path();
    std::fs::write(files.join("secret.txt"), SECRET).expect("secret file");
    let api_url = gh.api_url();
    let set = run_with_stdin(
        berth.admin_cmd().args([
            "--tenant",
            "acme",
            "github",
            "set",
            "--secret-file",
            "secret.txt",
            "--scope",
            "acme",
            "--api-url",
            &api_url,
            "--token-stdin",
        ]),
        TOKEN,
    );
    assert_eq!(set.code, Some(0), "github set: {}", set.stderr);
    assert!(!set.stdout.contains(TOKEN), "the token is never shown");
    let shown = berth
        .admin(&["--tenant", "acme", "github", "show", "-o", "json"])
        .ok()
        .json();
    assert_eq!(shown["connection"]["scope"], "acme");
    assert_eq!(shown["connection"]["credentials"], "token");
    assert_eq!(shown["connection"]["runner_group_id"], 1);
    assert!(!shown.to_string().contains(TOKEN));
    (berth, tenant)
}

fn workflow_job(action: &str, job_id: i64, runner: Option<(&str, i64)>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": action,
        "workflow_job": {
            "id": job_id, "run_id": 7_001, "run_attempt": 1, "status": action,
            "labels": ["self-hosted", "linux"], "name": "test", "workflow_name": "CI",
            "runner_id": runner.map(|r| r.1), "runner_name": runner.map(|r| r.0), "steps": []
        },
        "repository": { "full_name": "acme/app" },
        "organization": { "login": "acme" }
    }))
    .expect("json")
}

/// Sends a signed delivery; returns status and body.
async fn deliver(berth: &Berth, delivery: &str, body: &[u8]) -> (u16, Value) {
    use hmac::Mac;
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1/tenants/acme/integrations/github",
            berth.server.url
        ))
        .header("content-type", "application/json")
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(body.to_vec())
        .send()
        .await
        .expect("berth answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// The work directory of a lease's runner (`runner.address`).
fn work_dir(lease: &Value) -> PathBuf {
    PathBuf::from(lease["runner"]["address"].as_str().expect("an address"))
}

/// Waits (bounded) for the runner's `jitconfig` file; returns its text.
async fn runner_config(work: &Path) -> String {
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(work.join("jitconfig")) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the runner never wrote its JIT config");
}

/// Everything berth shows about the tenant, as text: leases (show and list, API and CLI),
/// the integration, the stored event stream, webhook deliveries and `/metrics`.
async fn everything_shown(berth: &Berth, lease_ids: &[String]) -> String {
    let mut seen = String::new();
    for id in lease_ids {
        seen.push_str(
            &berth
                .server
                .call("GET", &format!("/v1/tenants/acme/leases/{id}"), None)
                .await
                .1
                .to_string(),
        );
        seen.push_str(
            &berth
                .admin(&["--tenant", "acme", "lease", "show", id, "-o", "json"])
                .stdout,
        );
    }
    seen.push_str(
        &berth
            .server
            .call("GET", "/v1/tenants/acme/leases?limit=100", None)
            .await
            .1
            .to_string(),
    );
    seen.push_str(
        &berth
            .admin(&["--tenant", "acme", "lease", "list", "-o", "json"])
            .stdout,
    );
    seen.push_str(
        &berth
            .server
            .call("GET", "/v1/tenants/acme/integrations/github", None)
            .await
            .1
            .to_string(),
    );
    seen.push_str(
        &berth
            .server
            .call("GET", "/v1/tenants/acme/webhooks/audit/deliveries", None)
            .await
            .1
            .to_string(),
    );
    // The stored events (SSE from the first), read for a bounded moment.
    let client = reqwest::Client::new();
    let mut response = client
        .get(format!(
            "{}/v1/tenants/acme/events?after=0",
            berth.server.url
        ))
        .bearer_auth(&berth.admin)
        .send()
        .await
        .expect("the event stream opens");
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, response.chunk()).await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let metrics = client
        .get(format!("{}/metrics", berth.server.url))
        .bearer_auth(&berth.admin)
        .send()
        .await
        .expect("metrics");
    seen.push_str(&metrics.text().await.unwrap_or_default());
    seen
}

/// A `queued` job becomes a lease whose runner process gets exactly the config the fake
/// GitHub issued for it (named after the lease, with the pool's labels); `in_progress` names
/// the runner on the lease; `completed` releases the lease and removes the registration; the
/// config shows nowhere but in the runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_runs_on_a_runner_with_its_jit_config() {
    let gh = FakeGithub::start();
    let (berth, _tenant) = setup(&gh);
    berth
        .admin(&[
            "--tenant",
            "acme",
            "webhook",
            "set",
            "audit",
            "--target",
            "http://127.0.0.1:9/hook",
        ])
        .ok();

    let (status, outcome) = deliver(&berth, "d-1", &workflow_job("queued", 501, None)).await;
    assert_eq!(status, 201, "{outcome}");
    assert_eq!(outcome["lease"]["pool"], "gh");
    let id = outcome["lease"]["id"]
        .as_str()
        .expect("a lease id")
        .to_owned();
    let lease = berth.server.wait_lease("acme", &id, "ready").await;
    assert_eq!(lease["state"], "ready", "{lease}");
    let config = runner_config(&work_dir(&lease)).await;
    let registered = gh
        .runner(&id)
        .expect("a registration named after the lease");
    assert_eq!(Some(config.clone()), gh.config_of(&id));
    assert!(!config.is_empty());
    assert_eq!(registered.labels, vec!["self-hosted", "linux"]);
    assert_eq!(registered.runner_group_id, 1);
    assert_eq!(lease["github"]["registration"], "registered");
    assert_eq!(lease["github"]["registration_id"], registered.id);

    let started = workflow_job("in_progress", 501, Some((&id, registered.id)));
    let (status, outcome) = deliver(&berth, "d-2", &started).await;
    assert!(status < 300, "{outcome}");
    assert_eq!(outcome["outcome"], "recorded");
    let (_, shown) = berth
        .server
        .call("GET", &format!("/v1/tenants/acme/leases/{id}"), None)
        .await;
    assert_eq!(shown["github"]["runner_name"], id.as_str());
    assert_eq!(shown["github"]["runner_id"], registered.id);
    assert_eq!(shown["github"]["job_id"], 501);

    let (status, outcome) = deliver(&berth, "d-3", &workflow_job("completed", 501, None)).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["outcome"], "released");
    let ended = berth.server.wait_lease("acme", &id, "ended").await;
    assert_eq!(ended["state"], "released");
    let removed = id.clone();
    gh.wait_until_async("the registration removed", move |s| {
        s.removed.contains(&removed)
    })
    .await;
    assert!(gh.runner(&id).is_none());
    let (_, shown) = berth
        .server
        .call("GET", &format!("/v1/tenants/acme/leases/{id}"), None)
        .await;
    assert_eq!(shown["github"]["registration"], "removed", "{shown}");

    let seen = everything_shown(&berth, std::slice::from_ref(&id)).await;
    assert!(seen.contains(&id), "the scan saw the lease");
    for config in gh.configs() {
        assert!(!seen.contains(&config), "a JIT config was shown");
    }
    let log = berth.server.drain_log().join("\n");
    assert!(log.contains(&id), "the log names the lease");
    for config in gh.configs() {
        assert!(!log.contains(&config), "a JIT config was logged");
    }
    assert!(
        !log.contains(TOKEN) && !seen.contains(TOKEN),
        "the token leaked"
    );
}

/// A lease released by its client before any job started on it leaves no registration at
/// GitHub; a lease canceled while queued was never registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_ends_before_its_job_leaves_no_registration() {
    let gh = FakeGithub::start();
    let (berth, tenant) = setup(&gh);
    let lease = berth
        .as_tenant(
            &tenant,
            &[
                "lease", "request", "--pool", "gh", "--ttl", "30m", "--wait", "1m", "-o", "json",
            ],
        )
        .ok()
        .json();
    let id = lease["id"].as_str().expect("an id").to_owned();
    let config = runner_config(&work_dir(&lease)).await;
    assert_eq!(Some(config), gh.config_of(&id));
    assert!(gh.runner(&id).is_some());

    // Fill the tenant's cap (4) so the next request queues, then cancel it.
    let mut others = Vec::new();
    for _ in 0..3 {
        let other = berth
            .as_tenant(
                &tenant,
                &[
                    "lease", "request", "--pool", "local", "--ttl", "30m", "-o", "json",
                ],
            )
            .ok()
            .json();
        others.push(other["id"].as_str().expect("an id").to_owned());
    }
    let (status, queued) = berth
        .server
        .call(
            "POST",
            "/v1/tenants/acme/leases",
            Some(json!({ "pool": "gh", "ttl_s": 600, "wait_s": 600 })),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let queued_id = queued["id"].as_str().expect("an id").to_owned();
    berth
        .as_tenant(&tenant, &["lease", "release", &queued_id])
        .ok();
    let canceled = berth.server.wait_lease("acme", &queued_id, "ended").await;
    assert_eq!(canceled["state"], "canceled");
    assert!(
        canceled.get("github").is_none_or(Value::is_null),
        "{canceled}"
    );

    berth
        .as_tenant(&tenant, &["lease", "release", &id, "--wait", "30s"])
        .ok();
    let removed = id.clone();
    gh.wait_until_async("the unused registration removed", move |s| {
        s.removed.contains(&removed)
    })
    .await;
    assert!(gh.runner(&id).is_none());
    assert!(gh.runner(&queued_id).is_none() && gh.config_of(&queued_id).is_none());
    for other in others {
        berth
            .as_tenant(&tenant, &["lease", "release", &other, "--wait", "30s"])
            .ok();
    }
    assert!(
        gh.state.lock().expect("the fake's lock").runners.is_empty(),
        "no registration is left"
    );
}

/// `berth github set` takes an App's credentials from a file (never from an argument value),
/// refuses half an App before asking the server, and `github show` prints the App's ids and
/// never its key.
#[test]
fn github_set_takes_app_credentials_from_files() {
    let berth = Berth::start_with(&["--allow-private-providers"]);
    berth.tenant("acme", &[]);
    let files = berth.dir.path();
    std::fs::write(files.join("secret.txt"), SECRET).expect("secret file");
    std::fs::write(files.join("app.pem"), support::fake_github::APP_KEY).expect("key file");
    let set = |extra: &[&str]| {
        berth.admin(
            &[
                &[
                    "--tenant",
                    "acme",
                    "github",
                    "set",
                    "--secret-file",
                    "secret.txt",
                    "--scope",
                    "acme/app",
                    "--api-url",
                    "http://127.0.0.1:9/api/v3",
                ][..],
                extra,
            ]
            .concat(),
        )
    };
    let half = set(&["--app-id", "4242"]);
    assert_eq!(half.code, Some(2), "{}", half.stderr);
    let both = set(&[
        "--app-id",
        "4242",
        "--installation-id",
        "77",
        "--private-key-file",
        "app.pem",
        "--token-file",
        "secret.txt",
    ]);
    assert_eq!(both.code, Some(2), "{}", both.stderr);
    let shown = set(&[
        "--app-id",
        "4242",
        "--installation-id",
        "77",
        "--private-key-file",
        "app.pem",
        "--runner-group",
        "3",
    ])
    .ok();
    assert!(
        shown.stdout.contains("app 4242, installation 77"),
        "{}",
        shown.stdout
    );
    let table = berth.admin(&["--tenant", "acme", "github", "show"]).ok();
    for out in [&shown.stdout, &table.stdout] {
        assert!(
            out.contains("acme/app") && out.contains("runner group"),
            "{out}"
        );
        assert!(
            !out.contains("PRIVATE KEY") && !out.contains(SECRET),
            "{out}"
        );
    }
    let json = berth
        .admin(&["--tenant", "acme", "github", "show", "-o", "json"])
        .ok()
        .json();
    assert_eq!(json["connection"]["runner_group_id"], 3);
    assert_eq!(json["connection"]["credentials"], "app");
}

/// `berth rotate-master-key` re-seals the GitHub credentials and the stored JIT configs: after
/// it, the runner of a lease made before still reads its config, and a new lease registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_key_rotation_reseals_credentials_and_configs() {
    let gh = FakeGithub::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let flags = ["--allow-private-providers"];
    let server = support::Server::start(&data, &flags);
    let setup = [
        ("POST", "/v1/tenants".to_owned(), json!({ "name": "acme" })),
        (
            "PUT",
            "/v1/tenants/acme/providers/local".to_owned(),
            json!({ "kind": "process", "config": { "grace_ms": 1000 } }),
        ),
        (
            "PUT",
            "/v1/tenants/acme/pools/gh".to_owned(),
            json!({ "provider": "local", "machine_type": "local", "hourly_price_micros": 0,
                "command": ["sh", "-c", RUNNER], "labels": ["self-hosted"], "github": true }),
        ),
        (
            "PUT",
            "/v1/tenants/acme/integrations/github".to_owned(),
            json!({ "secret": SECRET, "scope": "acme", "api_url": gh.api_url(), "token": TOKEN }),
        ),
    ];
    for (method, path, body) in setup {
        let (status, answer) = server.call(method, &path, Some(body)).await;
        assert!(status < 300, "{path}: {answer}");
    }
    let request = json!({ "pool": "gh", "ttl_s": 600 });
    let (status, lease) = server
        .call("POST", "/v1/tenants/acme/leases", Some(request.clone()))
        .await;
    assert_eq!(status, 201, "{lease}");
    let first = lease["id"].as_str().expect("an id").to_owned();
    server.wait_lease("acme", &first, "ready").await;
    assert!(server.terminate().success());

    let output = support::berth()
        .args(["rotate-master-key", "--data-dir"])
        .arg(&data)
        .env_remove("BERTH_MASTER_KEY")
        .env_remove("BERTH_PREVIOUS_MASTER_KEY")
        .output()
        .expect("berth runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let server = support::Server::start(&data, &flags);
    let token = broker::secrets::Keys::load_or_create(&data, None)
        .expect("the master key")
        .runner_token("acme", &first);
    let answer = reqwest::Client::new()
        .get(format!(
            "{}/v1/runners/{first}/github-jitconfig",
            server.url
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("berth answers");
    assert_eq!(answer.status().as_u16(), 200);
    let config: Value = answer.json().await.expect("json");
    assert_eq!(
        config["encoded_jit_config"].as_str(),
        gh.config_of(&first).as_deref()
    );
    let (status, lease) = server
        .call("POST", "/v1/tenants/acme/leases", Some(request))
        .await;
    assert_eq!(status, 201, "{lease}");
    let second = lease["id"].as_str().expect("an id").to_owned();
    let ready = server.wait_lease("acme", &second, "ready").await;
    assert_eq!(ready["github"]["registration"], "registered", "{ready}");
    for id in [&first, &second] {
        let (status, _) = server
            .call(
                "POST",
                &format!("/v1/tenants/acme/leases/{id}/release"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        server.wait_lease("acme", id, "ended").await;
    }
}
