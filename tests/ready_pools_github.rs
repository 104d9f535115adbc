//! A ready pool marked `--github`, through the real binary against the local fake GitHub
//! (`support/fake_github.rs`): a warm runner is not registered with GitHub while it waits (a
//! JIT config is single-use); a lease that takes it is registered then, under the lease id,
//! and its runner can read the config from its runner route. Every wait is bounded.

#[path = "support/cli.rs"]
mod cli_support;
mod support;

use std::time::Duration;

use cli_support::{Berth, run_with_stdin};
use support::fake_github::{FakeGithub, TOKEN};

async fn warm_ids(berth: &Berth) -> Vec<String> {
    let (status, page) = berth
        .server
        .call("GET", "/v1/tenants/acme/leases?state=warm", None)
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|lease| lease["ready_at"].is_string())
        .map(|lease| lease["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_runner_is_registered_when_taken_not_before() {
    let gh = FakeGithub::start();
    let berth = Berth::start_with(&["--allow-private-providers", "--allow-private-webhooks"]);
    let tenant = berth.tenant("acme", &["--max-active", "4"]);
    std::fs::write(
        berth.dir.path().join("secret.txt"),
        "gh-webhook-secret-warm",
    )
    .expect("secret");
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
            &gh.api_url(),
            "--token-stdin",
        ]),
        TOKEN,
    );
    assert_eq!(set.code, Some(0), "github set: {}", set.stderr);
    let pool = |min_ready: &str| {
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
                "linux",
                "--github",
                "--min-ready",
                min_ready,
                "--",
                "sh",
                "-c",
                "exec sleep 120",
            ])
            .ok()
    };
    pool("1");
    let mut warm = Vec::new();
    for _ in 0..300 {
        warm = warm_ids(&berth).await;
        if !warm.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(warm.len(), 1, "one warm runner is ready");
    assert_eq!(
        gh.registrations(),
        0,
        "a waiting warm runner is not registered"
    );
    assert!(gh.runner(&warm[0]).is_none());

    let lease = berth
        .as_tenant(&tenant, &["lease", "request", "--pool", "gh", "-o", "json"])
        .ok()
        .json();
    assert_eq!(
        lease["id"],
        warm[0].as_str(),
        "the request took the warm runner"
    );
    assert_eq!(lease["state"], "ready");
    assert_eq!(lease["runner"]["warm"], true);
    let id = warm[0].clone();
    gh.wait_until_async("the taken warm runner registered under its lease id", |s| {
        s.runners.iter().any(|r| r.name == id)
    })
    .await;
    // The refill is warm again and not registered: only the taken one is.
    for _ in 0..300 {
        if warm_ids(&berth).await.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiting = warm_ids(&berth).await;
    assert_eq!(waiting.len(), 1, "the pool refilled");
    assert!(
        gh.runner(&waiting[0]).is_none(),
        "the refill is not registered"
    );

    // Wind down: no warm runner left, the lease released.
    pool("0");
    berth
        .as_tenant(&tenant, &["lease", "release", &id, "--wait", "30s"])
        .ok();
}
