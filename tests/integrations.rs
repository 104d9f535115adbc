//! Runner callbacks (the lease token only), the GitHub integration (workflow jobs become
//! leases) and the SSE event stream (resuming from `Last-Event-ID`), over real HTTP on
//! 127.0.0.1 against an in-process server (`tests/support/inproc.rs`).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::github_signature;
use support::inproc::{Harness, Tenant};

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
    h.lease_lifecycle(&tenant).await;
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
    h.lease_lifecycle(&tenant).await;
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
    h.lease_lifecycle(&tenant).await;
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
    h.lease_lifecycle(&tenant).await;
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
