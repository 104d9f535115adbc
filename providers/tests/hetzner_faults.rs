//! The `hetzner` provider's failures against a local fake of the Hetzner Cloud API
//! (`hetzner_fake`): rate limits waited out and shared per project, permanent and transient
//! errors, capacity codes, timeouts, a create action ending in error, refused private hosts
//! and bad configuration — and the API token and runner tokens never in an error.

// The fake server's helpers are test code too: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod fixtures;
mod hetzner_fake;

use std::collections::BTreeMap;
use std::time::Duration;

use fixtures::env;
use hetzner_fake::{
    Injected, Limiter, TOKEN, cpx, hetzner, hetzner_of, hetzner_with_token, inject, requests_to,
    start,
};
use providers::{Error, RunnerSpec};
use serde_json::{Value, json};

/// A 429 is waited out for one request's worth of refill (here 20 per second, so tens of
/// milliseconds), then the call succeeds: exactly one retry.
#[tokio::test]
async fn rate_limit_is_waited_out() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().limiter = Some(Limiter::spent(20, 20.0));
    let provider = hetzner(addr, json!({}));
    assert!(provider.list("acme").await.unwrap().is_empty());
    let requests = shared.lock().unwrap().requests.clone();
    assert_eq!(
        requests_to(&shared, "GET /servers?"),
        2,
        "one 429, one answer: {requests:?}"
    );
}

/// A 429 whose `RateLimit-Reset` is an hour away (3600/h, nothing left) makes the next
/// request wait one request's worth — about a second — not the hour: the wait goes back to
/// the broker as `retry_after` when it is longer than the call may wait.
#[tokio::test]
async fn a_far_rate_limit_reset_waits_one_request_not_the_reset() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().limiter = Some(Limiter::spent(3600, 1.0));
    let provider = hetzner(addr, json!({"max_retry_wait_ms": 100}));
    match provider.create(&cpx("acme", "lease_far")).await {
        Err(Error::Transient {
            message,
            retry_after: Some(wait),
        }) => {
            assert!(
                wait >= Duration::from_millis(500) && wait <= Duration::from_secs(2),
                "{wait:?} is not one request's worth"
            );
            assert!(
                message.contains("rate_limit_exceeded") && message.contains("HTTP 429"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(requests_to(&shared, "GET /servers?"), 1);
}

/// The budget is the project's: after one account met the rate limit, another account with
/// the same token is told to wait (about one request's worth) without sending anything.
#[tokio::test]
async fn the_rate_limit_budget_is_shared_by_accounts_of_one_project() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().limiter = Some(Limiter::spent(3600, 1.0));
    let first = hetzner(addr, json!({"max_retry_wait_ms": 100}));
    assert!(first.create(&cpx("acme", "lease_first")).await.is_err());
    let sent = shared.lock().unwrap().requests.len();
    let second = hetzner_of(
        addr,
        json!({"max_retry_wait_ms": 100}),
        TOKEN,
        Some("b0b0b0b0"),
    );
    match second.create(&cpx("other", "lease_second")).await {
        Err(Error::Transient {
            retry_after: Some(wait),
            message,
        }) => {
            assert!(
                wait >= Duration::from_millis(500) && wait <= Duration::from_secs(3),
                "{wait:?}"
            );
            assert!(message.contains("budget"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        shared.lock().unwrap().requests.len(),
        sent,
        "the second account sent a request into a spent budget"
    );
}

/// 422 `invalid_input` is permanent and carries the API's message, code and correlation id.
#[tokio::test]
async fn invalid_input_is_permanent() {
    let (addr, shared) = start().await;
    inject(
        &shared,
        "POST /servers",
        422,
        "invalid_input",
        "invalid input in field 'server_type'",
    );
    let provider = hetzner(addr, json!({}));
    match provider.create(&cpx("acme", "lease_bad")).await {
        Err(Error::Permanent(message)) => {
            assert!(message.contains("invalid_input"), "{message}");
            assert!(
                message.contains("invalid input in field 'server_type'"),
                "{message}"
            );
            assert!(
                message.contains("HTTP 422") && message.contains("correlation id corr-"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        requests_to(&shared, "POST /servers"),
        1,
        "a permanent error was retried"
    );
}

/// Capacity codes map to `Capacity`.
#[tokio::test]
async fn capacity_codes() {
    let (addr, shared) = start().await;
    let provider = hetzner(addr, json!({}));
    for code in [
        "resource_unavailable",
        "placement_error",
        "resource_limit_exceeded",
    ] {
        inject(
            &shared,
            "POST /servers",
            422,
            code,
            "not available right now",
        );
        match provider.create(&cpx("acme", "lease_cap")).await {
            Err(Error::Capacity(message)) => assert!(message.contains(code), "{message}"),
            other => panic!("{code}: {other:?}"),
        }
    }
}

/// 5xx and retryable codes are transient; with retries off the first one is returned.
#[tokio::test]
async fn server_errors_are_transient() {
    let (addr, shared) = start().await;
    let provider = hetzner(addr, json!({"max_retries": 0}));
    for (status, code) in [
        (500, "server_error"),
        (503, "unavailable"),
        (409, "conflict"),
        (423, "locked"),
        (502, ""),
    ] {
        inject(&shared, "GET /servers", status, code, "try again later");
        match provider.list("acme").await {
            Err(Error::Transient { message, .. }) => {
                assert!(message.contains(&format!("HTTP {status}")), "{message}")
            }
            other => panic!("{status} {code}: {other:?}"),
        }
    }
    assert_eq!(requests_to(&shared, "GET /servers?"), 5);
}

/// A transient failure inside a call is retried and the call succeeds.
#[tokio::test]
async fn transient_failure_is_retried_in_call() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().injected.push_back(Injected {
        route: "POST /servers",
        status: 503,
        code: "unavailable",
        message: "maintenance".into(),
        headers: vec![("retry-after", "0".into())],
    });
    let provider = hetzner(addr, json!({}));
    provider.create(&cpx("acme", "lease_retry")).await.unwrap();
    assert_eq!(requests_to(&shared, "POST /servers"), 2);
    assert_eq!(shared.lock().unwrap().servers.len(), 1);
}

/// A request that gets no answer times out as a transient error.
#[tokio::test]
async fn timeout_is_transient() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().hang = true;
    let provider = hetzner(addr, json!({"request_timeout_ms": 100, "max_retries": 0}));
    match provider.list("acme").await {
        Err(Error::Transient { message, .. }) => {
            assert!(message.contains("timed out"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// The token never shows in errors (401, echoed in a message, connection refused) nor in the
/// provider's Debug output.
#[tokio::test]
async fn token_never_leaks() {
    let (addr, shared) = start().await;
    let wrong = hetzner_with_token(addr, json!({}), "hcloud-wrong-token-SECRET");
    let mut messages = Vec::new();
    match wrong.list("acme").await {
        Err(Error::Permanent(message)) => {
            assert!(message.contains("unauthorized"), "{message}");
            messages.push(message);
        }
        other => panic!("{other:?}"),
    }

    let provider = hetzner(addr, json!({}));
    inject(
        &shared,
        "POST /servers",
        400,
        "invalid_input",
        &format!("bad request with Bearer {TOKEN}"),
    );
    messages.push(
        provider
            .create(&cpx("acme", "lease_echo"))
            .await
            .unwrap_err()
            .to_string(),
    );
    assert!(messages.last().unwrap().contains("<redacted>"));

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = hetzner(closed, json!({"max_retries": 0}));
    messages.push(refused.list("acme").await.unwrap_err().to_string());

    let concrete = providers::hetzner::Hetzner::new(
        serde_json::from_value(json!({"base_url": format!("http://{addr}/v1")})).unwrap(),
        TOKEN,
        &env(&std::env::temp_dir(), true),
    )
    .unwrap();
    let debug = format!("{concrete:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
    messages.push(debug);
    for message in messages {
        assert!(
            !message.contains(TOKEN) && !message.contains("hcloud-wrong-token-SECRET"),
            "{message}"
        );
    }
}

/// Without `allow_private_network`, a host name that resolves to loopback is refused when
/// connecting (the client's resolver drops non-public addresses): no request arrives.
#[tokio::test]
async fn private_host_names_are_refused_at_connect() {
    let (addr, shared) = start().await;
    let config =
        json!({"base_url": format!("http://localhost:{}/v1", addr.port()), "max_retries": 0});
    let dir = std::env::temp_dir();
    let provider = fixtures::build(
        "hetzner",
        config,
        json!({"token": TOKEN}),
        &env(&dir, false),
    );
    match provider.list("acme").await {
        Err(Error::Transient { message, .. }) => {
            assert!(message.contains("no public address"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(shared.lock().unwrap().requests.is_empty());
}

/// Through the operator's proxy (the test server doubles as one: it routes absolute-form
/// requests by their path) a `base_url` whose name resolves to loopback is refused before
/// any request, since the client's resolver only sees the proxy's name.
#[tokio::test]
async fn private_host_names_are_refused_through_a_proxy() {
    let (addr, shared) = start().await;
    let config =
        json!({"base_url": format!("http://localhost:{}/v1", addr.port()), "max_retries": 0});
    let dir = std::env::temp_dir();
    let environment = providers::Environment {
        outbound_proxy: Some(providers::net::parse_proxy(&format!("http://{addr}")).unwrap()),
        ..env(&dir, false)
    };
    let provider = fixtures::build("hetzner", config, json!({"token": TOKEN}), &environment);
    match provider.list("acme").await {
        Err(Error::Permanent(message)) => assert!(message.contains("loopback"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(shared.lock().unwrap().requests.is_empty());
}

/// Invalid labels and missing images fail permanently before any request.
#[tokio::test]
async fn invalid_specs_are_permanent() {
    let (addr, shared) = start().await;
    let provider = hetzner(addr, json!({"image": null}));
    let mut bad_label = cpx("acme", "lease_l");
    bad_label.image = Some("ubuntu-24.04".into());
    bad_label.labels.insert("team/".into(), "infra".into());
    let mut reserved = bad_label.clone();
    reserved.labels = BTreeMap::from([("berth-installation".to_string(), "x".to_string())]);
    let bad_lease = RunnerSpec {
        image: Some("ubuntu-24.04".into()),
        ..cpx("acme", "lease:01")
    };
    let no_image = cpx("acme", "lease_i");
    for spec in [bad_label, reserved, bad_lease, no_image] {
        assert!(
            matches!(provider.create(&spec).await, Err(Error::Permanent(_))),
            "{spec:?}"
        );
    }
    assert!(shared.lock().unwrap().requests.is_empty());
}

/// Config problems are refused at build, without echoing the token.
#[test]
fn bad_config_is_refused() {
    let dir = std::env::temp_dir();
    let refuse = |config: Value, credentials: Value, allow_private: bool| {
        providers::build(
            &fixtures::account("hetzner", config, credentials),
            &env(&dir, allow_private),
        )
        .expect_err("should be refused")
        .0
    };
    let token = json!({"token": TOKEN});
    assert!(
        refuse(json!({"locaton": "fsn1"}), token.clone(), true).contains("unknown field `locaton`")
    );
    assert!(refuse(json!({"price": "cheap"}), token.clone(), true).contains("unknown variant"));
    assert!(
        refuse(
            json!({"base_url": "http://127.0.0.1:1/v1"}),
            token.clone(),
            false
        )
        .contains("loopback")
    );
    assert!(
        refuse(
            json!({"base_url": "ftp://example.com"}),
            token.clone(),
            true
        )
        .contains("scheme")
    );
    assert!(refuse(json!({}), json!({}), true).contains("`token` is missing"));
    for credentials in [
        json!({"token": "has space SECRET"}),
        json!({"token": TOKEN, "extra": TOKEN}),
    ] {
        let message = refuse(json!({}), credentials, true);
        assert!(
            !message.contains("SECRET") && !message.contains(TOKEN),
            "{message}"
        );
    }
    assert!(
        providers::build(
            &fixtures::account("hetzner", json!({}), token),
            &env(&dir, false)
        )
        .is_ok()
    );
}

/// A create whose action ends in `error` fails at once with the action's message — permanent
/// or capacity by its code — and its failed server is deleted.
#[tokio::test]
async fn a_create_action_ending_in_error_fails_the_create_at_once() {
    let (addr, shared) = start().await;
    let provider = hetzner(addr, json!({}));
    shared.lock().unwrap().action_outcome = Some(("action_failed", "image could not be applied"));
    match provider.create(&cpx("acme", "lease_act_1")).await {
        Err(Error::Permanent(message)) => assert!(
            message.contains("action_failed") && message.contains("image could not be applied"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        shared.lock().unwrap().servers.is_empty(),
        "the failed server lives"
    );
    shared.lock().unwrap().action_outcome = Some(("resource_unavailable", "no cpx22 in fsn1"));
    match provider.create(&cpx("acme", "lease_act_2")).await {
        Err(Error::Capacity(message)) => assert!(message.contains("no cpx22 in fsn1"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(shared.lock().unwrap().servers.is_empty());
    assert_eq!(requests_to(&shared, "GET /actions/"), 2);
    shared.lock().unwrap().action_outcome = None;
    provider.create(&cpx("acme", "lease_act_3")).await.unwrap();
    assert_eq!(shared.lock().unwrap().servers.len(), 1);
}

/// An API error that echoes the request (here the rendered `user_data`) never brings the
/// runner token into the create's error.
#[tokio::test]
async fn create_errors_never_contain_the_runner_token() {
    let (addr, shared) = start().await;
    let provider = hetzner(
        addr,
        json!({"user_data": "#cloud-config\nruncmd: [agent --token {{BERTH_RUNNER_TOKEN}}]"}),
    );
    inject(
        &shared,
        "POST /servers",
        422,
        "invalid_input",
        "invalid user_data: runcmd: [agent --token rt_secret_token]",
    );
    let error = provider
        .create(&cpx("acme", "lease_echo_token"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid user_data"), "{error}");
    assert!(!error.contains("rt_secret_token"), "{error}");
    assert!(error.contains("<redacted>"), "{error}");
}
