//! Webhooks, runner callbacks, the GitHub integration and the SSE event stream, over real
//! HTTP on 127.0.0.1 against an in-process server (`tests/support/inproc.rs`), with an
//! injected clock where retries must come due.

mod support;

use std::collections::BTreeMap;
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

/// Grant, ready, release, released.
async fn lease_lifecycle(h: &Harness, tenant: &Tenant) -> String {
    let lease = h
        .grant(tenant, json!({ "pool": "small", "ttl_s": 600 }))
        .await;
    let id = lease["id"].as_str().expect("id").to_owned();
    h.wait_state(tenant, &id, "ready").await;
    let (status, _, _) = h
        .json(
            Method::POST,
            &tenant.path(&format!("/leases/{id}/release")),
            Some(&tenant.write),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    h.wait_state(tenant, &id, "released").await;
    id
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
    lease_lifecycle(&h, &tenant).await;
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
    lease_lifecycle(&h, &tenant).await;
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
    lease_lifecycle(&h, &tenant).await;
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

/// The runner token of a lease, derived with the server's master key.
fn runner_token(h: &Harness, tenant: &str, lease: &str) -> String {
    broker::secrets::Keys::load_or_create(h.dir.path(), None)
        .expect("master key")
        .runner_token(tenant, lease)
}

/// Runner callbacks: a wrong token is refused and changes nothing; the right one makes the
/// lease ready, then ends it (`runner_done`); once ended the token is useless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_callbacks_need_the_lease_token() {
    let h = Harness::start().await;
    let tenant = h.setup_tenant("acme", json!({})).await;
    h.put_fake_account(&tenant, "cloud", json!({ "ready": false }))
        .await;
    let lease = h.grant(&tenant, json!({ "pool": "small" })).await;
    let id = lease["id"].as_str().expect("id").to_owned();
    let token = runner_token(&h, "acme", &id);
    let other = runner_token(&h, "acme", "lease_other");
    for bad in [
        "",
        "brt_acme_0000",
        other.as_str(),
        h.admin.as_str(),
        tenant.write.as_str(),
    ] {
        let (status, _, problem) = h
            .json(
                Method::POST,
                &format!("/v1/runners/{id}/ready"),
                Some(bad),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}: {problem}");
    }
    assert_eq!(h.lease(&tenant, &id).await["state"], "provisioning");
    let body = json!({ "address": "10.1.2.3", "metadata": { "agent": "v2" } });
    let (status, _, ready) = h
        .json(
            Method::POST,
            &format!("/v1/runners/{id}/ready"),
            Some(&token),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(
        (ready["state"].as_str(), ready["runner"]["address"].as_str()),
        (Some("ready"), Some("10.1.2.3"))
    );
    let (status, _, _) = h
        .json(
            Method::POST,
            &format!("/v1/runners/{id}/release"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let ended = h.wait_state(&tenant, &id, "released").await;
    assert_eq!(ended["end_reason"], "runner_done");
    let (status, _, _) = h
        .json(
            Method::POST,
            &format!("/v1/runners/{id}/ready"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "useless once the lease ended");
    h.assert_documented().await;
}

fn workflow_job(action: &str, job_id: i64, labels: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": action,
        "workflow_job": {
            "id": job_id, "run_id": 11_289_937_455_i64, "run_attempt": 1, "status": action, "conclusion": null,
            "labels": labels, "name": "test (linux)", "workflow_name": "CI", "head_branch": "main",
            "runner_id": null, "runner_name": null, "steps": []
        },
        "repository": { "id": 812_345_678, "name": "widgets", "full_name": "acme/widgets", "owner": { "login": "acme", "type": "Organization" } },
        "organization": { "login": "acme" },
        "sender": { "login": "octocat", "type": "User" }
    }))
    .expect("json")
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, as GitHub signs.
fn github_signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn github(
    h: &Harness,
    event: &str,
    delivery: &str,
    body: &[u8],
    secret: Option<&str>,
) -> (StatusCode, Value) {
    let signature = secret.map(|s| github_signature(s, body));
    let mut headers = vec![("x-github-event", event), ("x-github-delivery", delivery)];
    if let Some(signature) = &signature {
        headers.push(("x-hub-signature-256", signature.as_str()));
    }
    let (status, _, value) = h
        .send(
            Method::POST,
            "/v1/tenants/acme/integrations/github",
            None,
            Some("application/json"),
            Some(body.to_vec()),
            &headers,
        )
        .await;
    (status, value)
}

/// GitHub: `queued` leases from the pool whose labels the job has, `completed` releases; a
/// redelivery, a second delivery of the same job and action (under another delivery id), a
/// `queued` after its job's `completed`, a tampered body, a missing signature, a signature of
/// a rotated secret, and unknown events change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_workflow_jobs_become_leases() {
    let h = Harness::start().await;
    let tenant = h
        .setup_tenant("acme", json!({ "max_active_leases": 5 }))
        .await;
    let pool = json!({ "provider": "cloud", "machine_type": "m", "hourly_price_micros": 0, "labels": ["self-hosted", "linux"] });
    let (status, _, body) = h
        .json(
            Method::PUT,
            &tenant.path("/pools/linux"),
            Some(&tenant.admin),
            Some(pool),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let config = json!({ "secret": "gh-secret-1", "wait_s": 60 });
    let (status, _, shown) = h
        .json(
            Method::PUT,
            &tenant.path("/integrations/github"),
            Some(&tenant.admin),
            Some(config),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !shown.to_string().contains("gh-secret-1"),
        "the secret is never shown"
    );
    let count = || async { h.list_all(&tenant, "").await.len() };

    let queued = workflow_job("queued", 30_433_642_207, &["self-hosted", "Linux", "x64"]);
    let (status, outcome) = github(&h, "workflow_job", "d-1", &queued, Some("gh-secret-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{outcome}");
    assert_eq!(outcome["outcome"], "leased");
    let lease = &outcome["lease"];
    assert_eq!(lease["pool"], "linux");
    assert_eq!(lease["labels"]["github-job-id"], "30433642207");
    assert_eq!(lease["labels"]["github-repository"], "acme/widgets");
    assert_eq!(lease["labels"]["github-run-id"], "11289937455");
    let id = lease["id"].as_str().expect("id").to_owned();

    let (status, outcome) = github(&h, "workflow_job", "d-1", &queued, Some("gh-secret-1")).await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (StatusCode::OK, Some("duplicate")),
        "a redelivery"
    );
    let (status, outcome) = github(&h, "workflow_job", "d-2", &queued, Some("gh-secret-1")).await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (StatusCode::OK, Some("duplicate")),
        "another delivery of the same job and action (GitHub does not sign the delivery id)"
    );
    assert_eq!(count().await, 1);

    let other = workflow_job("queued", 999, &["self-hosted", "linux"]);
    let tampered = github_signature("gh-secret-1", &queued);
    let (status, _, problem) = h
        .send(
            Method::POST,
            "/v1/tenants/acme/integrations/github",
            None,
            Some("application/json"),
            Some(other.clone()),
            &[
                ("x-github-event", "workflow_job"),
                ("x-github-delivery", "d-3"),
                ("x-hub-signature-256", tampered.as_str()),
            ],
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized")),
        "a tampered body"
    );
    let (status, _) = github(&h, "workflow_job", "d-4", &other, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no signature");
    let (status, _) = github(&h, "workflow_job", "d-5", &other, Some("not-the-secret")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a wrong secret");
    h.json(
        Method::PUT,
        &tenant.path("/integrations/github"),
        Some(&tenant.admin),
        Some(json!({ "secret": "gh-secret-2" })),
    )
    .await;
    let (status, _) = github(&h, "workflow_job", "d-6", &other, Some("gh-secret-1")).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a signature of the rotated-out secret is stale"
    );
    assert_eq!(count().await, 1);

    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#.to_vec();
    let (status, _) = github(&h, "ping", "d-7", &ping, Some("gh-secret-2")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "unknown events are ignored");
    let hosted = workflow_job("queued", 555, &["ubuntu-latest"]);
    let (status, outcome) = github(&h, "workflow_job", "d-8", &hosted, Some("gh-secret-2")).await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (StatusCode::ACCEPTED, Some("ignored")),
        "no pool fits"
    );
    assert_eq!(count().await, 1);

    // Deliveries come in any order: a job's `queued` after its `completed` leases nothing.
    let early = workflow_job("completed", 777, &["self-hosted", "linux"]);
    let (status, outcome) = github(&h, "workflow_job", "d-8a", &early, Some("gh-secret-2")).await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (StatusCode::ACCEPTED, Some("ignored")),
        "{outcome}"
    );
    let late = workflow_job("queued", 777, &["self-hosted", "linux"]);
    let (status, outcome) = github(&h, "workflow_job", "d-8b", &late, Some("gh-secret-2")).await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (StatusCode::ACCEPTED, Some("ignored")),
        "a queued after its completed: {outcome}"
    );
    assert_eq!(count().await, 1);

    let completed = workflow_job(
        "completed",
        30_433_642_207,
        &["self-hosted", "linux", "x64"],
    );
    let (status, outcome) =
        github(&h, "workflow_job", "d-9", &completed, Some("gh-secret-2")).await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (StatusCode::OK, Some("released")),
        "{outcome}"
    );
    let ended = h.wait_state(&tenant, &id, "released").await;
    assert_eq!(ended["end_reason"], "runner_done");
    let (status, outcome) =
        github(&h, "workflow_job", "d-10", &completed, Some("gh-secret-2")).await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (StatusCode::OK, Some("duplicate")),
        "a completed job's redelivery"
    );
    h.assert_documented().await;
}

/// Reads SSE messages (`id`, `event`, parsed `data`) until `n` arrived (bounded).
async fn read_sse(
    response: &mut reqwest::Response,
    buffer: &mut String,
    n: usize,
) -> Vec<(i64, String, Value)> {
    let mut messages = Vec::new();
    while messages.len() < n {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut fields = BTreeMap::new();
            for line in block.lines() {
                if let Some((key, value)) = line.split_once(':') {
                    fields.insert(key.to_owned(), value.trim_start().to_owned());
                }
            }
            if let (Some(id), Some(event), Some(data)) =
                (fields.get("id"), fields.get("event"), fields.get("data"))
            {
                let data = serde_json::from_str(data).expect("data is JSON");
                messages.push((id.parse().expect("numeric id"), event.clone(), data));
            }
        }
        if messages.len() >= n {
            break;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("SSE data within 10 s")
            .expect("stream")
            .expect("stream open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
    messages
}

async fn sse(h: &Harness, tenant: &Tenant, last_event_id: Option<i64>) -> reqwest::Response {
    let mut request = h
        .client
        .get(format!("{}{}", h.url, tenant.path("/events")))
        .bearer_auth(&tenant.read);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.expect("events answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/event-stream")
    );
    response
}

/// SSE: a client reconnecting with `Last-Event-ID` gets exactly the events it missed, then
/// live ones; a new stream starts from now (`after=0` replays); another tenant's token gets
/// 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_from_last_event_id() {
    let h = Harness::start().await;
    let tenant = h
        .setup_tenant("acme", json!({ "max_active_leases": 5 }))
        .await;
    let other = h.setup_tenant("other", json!({})).await;
    let (status, _, _) = h
        .json(
            Method::GET,
            &tenant.path("/events"),
            Some(&other.read),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's token sees nothing"
    );

    let mut stream = sse(&h, &tenant, None).await;
    let mut buffer = String::new();
    lease_lifecycle(&h, &tenant).await;
    let first = read_sse(&mut stream, &mut buffer, 2).await;
    assert_eq!(first.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        (
            first[0].1.as_str(),
            first[0].2["type"].as_str(),
            first[0].2["seq"].as_i64()
        ),
        ("lease.granted", Some("lease.granted"), Some(1))
    );
    drop(stream);
    // Missed while away: event 3 (released) and the three of another lease.
    lease_lifecycle(&h, &tenant).await;
    let mut stream = sse(&h, &tenant, Some(2)).await;
    let mut buffer = String::new();
    let missed = read_sse(&mut stream, &mut buffer, 4).await;
    assert_eq!(missed.iter().map(|m| m.0).collect::<Vec<_>>(), [3, 4, 5, 6]);
    assert_eq!(
        missed.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(),
        [
            "lease.released",
            "lease.granted",
            "lease.ready",
            "lease.released"
        ]
    );
    // Live events follow without a gap.
    lease_lifecycle(&h, &tenant).await;
    let live = read_sse(&mut stream, &mut buffer, 3).await;
    assert_eq!(live.iter().map(|m| m.0).collect::<Vec<_>>(), [7, 8, 9]);
    drop(stream);

    // Without `Last-Event-ID` a stream starts from now: it opens with a bare `id: 9` (no
    // event) and sends only what happens next; `?after=0` replays every stored event.
    let mut from_now = sse(&h, &tenant, None).await;
    let mut opening = String::new();
    while !opening.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), from_now.chunk())
            .await
            .expect("the opening within 10 s")
            .expect("stream")
            .expect("stream open");
        opening.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(opening.starts_with("id: 9\n\n"), "{opening:?}");
    let mut buffer = opening["id: 9\n\n".len()..].to_owned();
    lease_lifecycle(&h, &tenant).await;
    let next = read_sse(&mut from_now, &mut buffer, 1).await;
    assert_eq!((next[0].0, next[0].1.as_str()), (10, "lease.granted"));
    let mut replay = h
        .client
        .get(format!("{}{}?after=0", h.url, tenant.path("/events")))
        .bearer_auth(&tenant.read)
        .send()
        .await
        .expect("events answer");
    let mut buffer = String::new();
    let replayed = read_sse(&mut replay, &mut buffer, 2).await;
    assert_eq!(replayed.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2]);
}
