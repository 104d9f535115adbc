//! Webhooks over real HTTP on 127.0.0.1 against an in-process server
//! (`tests/support/inproc.rs`), with an injected clock where retries must come due: every
//! event once, in order and signed; retries after a failing receiver; dead letters; private
//! targets refused. Runner callbacks, the GitHub integration and the SSE stream are in
//! `integrations.rs`.

mod support;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use broker::objects::{Clock, SystemClock};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::inproc::{Harness, Tenant};

/// What the test receiver saw.
#[derive(Default)]
struct Received {
    /// (webhook-id, seq, type) of every delivery whose signature verified and that was
    /// answered 2xx.
    good: Vec<(String, Option<i64>, String)>,
    bad_signatures: usize,
    attempts: usize,
}

/// A webhook receiver on 127.0.0.1 that verifies Standard Webhooks signatures (against the
/// server's clock) and answers with a settable status.
struct Receiver {
    url: String,
    secret: Arc<Mutex<Option<String>>>,
    status: Arc<AtomicU16>,
    received: Arc<Mutex<Received>>,
}

impl Receiver {
    async fn start(clock: Arc<dyn Clock>) -> Receiver {
        let secret: Arc<Mutex<Option<String>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(200));
        let received: Arc<Mutex<Received>> = Arc::default();
        let handler = {
            let (secret, status, received) = (secret.clone(), status.clone(), received.clone());
            move |headers: HeaderMap, body: Bytes| {
                let (secret, status, received) = (secret.clone(), status.clone(), received.clone());
                let clock = clock.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let (id, timestamp, signature) = (
                        header("webhook-id"),
                        header("webhook-timestamp"),
                        header("webhook-signature"),
                    );
                    let key = secret.lock().expect("lock").clone().unwrap_or_default();
                    let verified = providers::signing::verify(
                        &key,
                        &providers::signing::Headers {
                            id: &id,
                            timestamp: &timestamp,
                            signature: &signature,
                        },
                        &body,
                        clock.now_ms() / 1_000,
                        Duration::from_secs(300),
                    );
                    let mut seen = received.lock().expect("lock");
                    seen.attempts += 1;
                    if verified.is_err() {
                        seen.bad_signatures += 1;
                        return axum::http::StatusCode::UNAUTHORIZED;
                    }
                    let answer = axum::http::StatusCode::from_u16(status.load(Ordering::SeqCst))
                        .expect("status");
                    if answer.is_success() {
                        let message: Value = serde_json::from_slice(&body).expect("JSON body");
                        let kind = message["type"].as_str().expect("type").to_owned();
                        seen.good.push((id, message["seq"].as_i64(), kind));
                    }
                    answer
                }
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            secret,
            status,
            received,
        }
    }

    /// Verified 2xx deliveries, deduplicated by `webhook-id`, in arrival order.
    fn events(&self) -> Vec<(Option<i64>, String)> {
        let received = self.received.lock().expect("lock");
        let mut seen = std::collections::HashSet::new();
        received
            .good
            .iter()
            .filter(|(id, _, _)| seen.insert(id.clone()))
            .map(|(_, seq, kind)| (*seq, kind.clone()))
            .collect()
    }

    fn attempts(&self) -> usize {
        self.received.lock().expect("lock").attempts
    }
}

fn clock_of(h: &Harness) -> Arc<dyn Clock> {
    match &h.clock {
        Some(clock) => Arc::new(clock.clone()),
        None => Arc::new(SystemClock),
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Adds the endpoint `main` pointing at the receiver and teaches the receiver its secret,
/// which is shown once.
async fn add_webhook(h: &Harness, tenant: &Tenant, receiver: &Receiver) {
    let (status, _, webhook) = h
        .json(
            Method::PUT,
            &tenant.path("/webhooks/main"),
            Some(&tenant.admin),
            Some(json!({ "url": receiver.url })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{webhook}");
    let secret = webhook["secret"]
        .as_str()
        .expect("a generated secret is shown once")
        .to_owned();
    *receiver.secret.lock().expect("lock") = Some(secret);
    let again = h
        .get_ok(&tenant.path("/webhooks/main"), &tenant.admin)
        .await;
    assert!(
        again.get("secret").is_none(),
        "the secret is never shown again"
    );
}

async fn deliveries(h: &Harness, tenant: &Tenant, query: &str) -> Vec<Value> {
    h.get_ok(
        &tenant.path(&format!("/webhooks/main/deliveries{query}")),
        &tenant.admin,
    )
    .await["items"]
        .as_array()
        .expect("items")
        .clone()
}

/// Every event of a lease's life reaches the receiver once, in order, with a valid
/// signature; a test delivery does too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lease_event_arrives_once_in_order_and_signed() {
    let h = Harness::start().await;
    let tenant = h
        .setup_tenant("acme", json!({ "max_active_leases": 5 }))
        .await;
    let receiver = Receiver::start(clock_of(&h)).await;
    add_webhook(&h, &tenant, &receiver).await;
    h.lease_lifecycle(&tenant).await;
    wait_until("three events arrive", || receiver.events().len() >= 3).await;
    let events = receiver.events();
    let kinds: Vec<&str> = events.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds, ["lease.granted", "lease.ready", "lease.released"]);
    let seqs: Vec<i64> = events.iter().map(|(s, _)| s.expect("seq")).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seqs:?}"
    );
    assert_eq!(receiver.received.lock().expect("lock").bad_signatures, 0);
    let (status, _, delivery) = h
        .json(
            Method::POST,
            &tenant.path("/webhooks/main/test"),
            Some(&tenant.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{delivery}");
    assert_eq!(delivery["event_type"], "webhook.test");
    wait_until("the test delivery arrives", || {
        receiver.events().iter().any(|(_, k)| k == "webhook.test")
    })
    .await;
    h.assert_documented().await;
}

/// A receiver that answers 500 for a while gets every event once it recovers, in order, also
/// across a restart of the server: no outbox row is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receiver_gets_every_event_after_recovering() {
    let mut h = Harness::start_manual().await;
    let tenant = h
        .setup_tenant("acme", json!({ "max_active_leases": 5 }))
        .await;
    let receiver = Receiver::start(clock_of(&h)).await;
    add_webhook(&h, &tenant, &receiver).await;
    receiver.status.store(500, Ordering::SeqCst);
    h.lease_lifecycle(&tenant).await;
    wait_until("the first attempt fails", || receiver.attempts() >= 1).await;
    let items = deliveries(&h, &tenant, "").await;
    assert_eq!(items.len(), 3, "one delivery per event");
    let head = items
        .iter()
        .find(|d| d["attempts"] == 1)
        .expect("the head was tried");
    assert_eq!(
        (head["last_status"].as_i64(), head["status"].as_str()),
        (Some(500), Some("pending"))
    );
    assert!(
        items.iter().filter(|d| d["attempts"] == 0).count() == 2,
        "later events wait behind the head"
    );
    // Restart while deliveries are pending: the outbox survives.
    h.restart().await;
    h.lease_lifecycle(&tenant).await;
    receiver.status.store(200, Ordering::SeqCst);
    // Retries come due on the object's alarm: move the clock past every backoff.
    for _ in 0..40 {
        if receiver.events().len() >= 6 {
            break;
        }
        h.advance(Duration::from_secs(3_600));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until("all six events arrive", || receiver.events().len() >= 6).await;
    let events = receiver.events();
    let kinds: Vec<&str> = events.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "lease.granted",
            "lease.ready",
            "lease.released",
            "lease.granted",
            "lease.ready",
            "lease.released"
        ]
    );
    let seqs: Vec<i64> = events.iter().map(|(s, _)| s.expect("seq")).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    assert!(deliveries(&h, &tenant, "?status=pending").await.is_empty());
    assert_eq!(deliveries(&h, &tenant, "?status=delivered").await.len(), 6);
    h.assert_documented().await;
}

/// A receiver that never recovers: after 24 h of retries its delivery is dead-lettered and
/// listed as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_recovering_receiver_ends_dead_lettered() {
    let h = Harness::start_manual().await;
    let tenant = h.setup_tenant("acme", json!({})).await;
    let receiver = Receiver::start(clock_of(&h)).await;
    add_webhook(&h, &tenant, &receiver).await;
    receiver.status.store(503, Ordering::SeqCst);
    let (status, _, _) = h
        .json(
            Method::POST,
            &tenant.path("/webhooks/main/test"),
            Some(&tenant.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_until("the first attempt fails", || receiver.attempts() >= 1).await;
    // The receiver answered; wait until berth recorded the failed attempt too, or the clock
    // could move past the 24 h window before it does (one attempt, not two, would then end
    // the delivery).
    for _ in 0..400 {
        if deliveries(&h, &tenant, "").await[0]["attempts"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(deliveries(&h, &tenant, "").await[0]["attempts"], 1);
    h.advance(Duration::from_secs(25 * 3_600));
    let mut dead = Vec::new();
    for _ in 0..400 {
        dead = deliveries(&h, &tenant, "?status=dead").await;
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dead = dead.first().expect("a dead-lettered delivery");
    assert_eq!(
        (dead["last_status"].as_i64(), dead["attempts"].as_i64()),
        (Some(503), Some(2))
    );
    assert!(
        dead["last_error"]
            .as_str()
            .expect("error")
            .contains("gave up")
    );
    let webhook = h
        .get_ok(&tenant.path("/webhooks/main"), &tenant.admin)
        .await;
    assert_eq!(
        (webhook["pending"].as_i64(), webhook["dead"].as_i64()),
        (Some(0), Some(1))
    );
    h.assert_documented().await;
}

/// Webhook targets on private addresses are refused when they are set, however the host is
/// written (an address, `localhost`, a name that resolves there), with the flag that allows
/// them named, unless the operator allows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_webhook_targets_are_refused_by_default() {
    let h = Harness::start_with(None, |config| config.allow_private_webhooks = false).await;
    let tenant = h.setup_tenant("acme", json!({})).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "http://localhost:9/hook",
        "http://LocalHost./hook",
        "http://api.localhost/hook",
        "ftp://example.com/x",
    ] {
        let (status, _, problem) = h
            .json(
                Method::PUT,
                &tenant.path("/webhooks/bad"),
                Some(&tenant.admin),
                Some(json!({ "url": url })),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert_eq!(
            detail.contains("--allow-private-webhooks"),
            !url.starts_with("ftp:"),
            "{url}: {problem}"
        );
    }
    let list = h.get_ok(&tenant.path("/webhooks"), &tenant.admin).await;
    assert!(list["items"].as_array().expect("items").is_empty());
    h.assert_documented().await;
}
