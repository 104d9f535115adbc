//! The server's own limits (DESIGN.md §6, "Server limits") through the real `berth` binary:
//! no request, authenticated or not, makes the metrics grow; and the crash points that the
//! reliability suites use exist in the binary they test (and only there).

mod support;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use serde_json::json;
use support::Server;

/// Creates tenant `acme` with a `fake` account and a pool `small` on it. With `ready: false`
/// the runners wait for a runner callback that never comes, so leases stay `provisioning`.
async fn setup_fake_tenant(server: &Server, ready: bool) {
    let (status, body) = server
        .call("POST", "/v1/tenants", Some(json!({ "name": "acme" })))
        .await;
    assert_eq!(status, 201, "{body}");
    let account = json!({ "kind": "fake", "config": { "cloud": "limits", "ready": ready } });
    let (status, body) = server
        .call("PUT", "/v1/tenants/acme/providers/fake", Some(account))
        .await;
    assert_eq!(status, 200, "{body}");
    let pool = json!({ "provider": "fake", "machine_type": "m", "hourly_price_micros": 0 });
    let (status, body) = server
        .call("PUT", "/v1/tenants/acme/pools/small", Some(pool))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The label sets of the request counters in a `/metrics` exposition, without their values.
fn request_series(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| {
            line.starts_with("berth_http_requests_total{")
                || line.starts_with("berth_http_request_seconds_total{")
        })
        .filter_map(|line| {
            line.rsplit_once(' ')
                .map(|(series, _value)| series.to_owned())
        })
        .collect()
}

async fn metrics(client: &reqwest::Client, server: &Server) -> String {
    client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .expect("metrics answers")
        .text()
        .await
        .expect("metrics text")
}

/// 1,000 unauthenticated requests with made-up methods leave the metrics with the series they
/// had: every unknown method is counted as `other`.
#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let paths = |i: usize| {
        [
            "/healthz".to_owned(),
            format!("/v1/tenants/t{i}"),
            format!("/nowhere/{i}"),
        ]
    };
    let send = |method: String, path: String| {
        let client = client.clone();
        let url = format!("{}{path}", server.url);
        async move {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let response = client.request(method, url).send().await.expect("answer");
            assert!(response.status().is_client_error(), "{}", response.status());
        }
    };
    // Every series these requests can make exists before the snapshot: `other` on each kind
    // of path, and `GET /metrics` itself (counted once its first answer is sent).
    for path in paths(0) {
        send("WARMUP".to_owned(), path).await;
    }
    metrics(&client, &server).await;
    let before = request_series(&metrics(&client, &server).await);
    assert!(
        before
            .iter()
            .any(|series| series.contains("method=\"other\"")),
        "{before:#?}"
    );

    for i in 0..1_000 {
        let path = paths(i)[i % 3].clone();
        send(format!("FOO{i}"), path).await;
    }
    let after = request_series(&metrics(&client, &server).await);
    assert_eq!(before, after, "made-up methods added series");
    assert!(!after.iter().any(|series| series.contains("FOO")));
}

/// The `berth` binary `cargo test` builds has failpoints (the root package turns on the
/// broker's `failpoints` feature for its tests): armed with `BERTH_FAILPOINTS`, it aborts when
/// a provider's create returns, before the commit. (`cargo build` leaves them out; see
/// `broker/src/failpoint.rs`.)
#[tokio::test]
async fn failpoints_are_in_the_tested_binary() {
    const {
        assert!(
            broker::failpoint::ENABLED,
            "the root package's dev-dependency must enable berth-broker/failpoints"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_with_env(
        dir.path(),
        &[],
        &[("BERTH_FAILPOINTS", "tenant.created.before_commit")],
    );
    setup_fake_tenant(&server, true).await;
    // The grant may be answered or cut off by the abort: the create runs right after its commit.
    let _ = reqwest::Client::new()
        .post(format!("{}/v1/tenants/acme/leases", server.url))
        .bearer_auth(server.admin_token())
        .json(&json!({ "pool": "small" }))
        .send()
        .await;
    let status = support::wait_bounded(&mut server.child);
    const SIGABRT: i32 = 6;
    assert_eq!(status.signal(), Some(SIGABRT), "{status:?}");
    // The reader thread forwards the last lines until it meets the end of stderr.
    let said = std::iter::from_fn(|| server.log.recv_timeout(Duration::from_secs(30)).ok())
        .any(|line| line.contains("failpoint tenant.created.before_commit reached"));
    assert!(said, "berth did not say which failpoint it reached");
}
