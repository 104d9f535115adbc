//! Server hardening on berth's outbound and inbound edges, end to end on 127.0.0.1: fair
//! shares of the webhook delivery slots among tenants, proxies that must not carry
//! deliveries past the private-address guard, and a GitHub endpoint that neither tells who
//! exists nor leases twice for one job.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use support::inproc::{Harness, T0, Tenant, check_answer};
use support::{Server, github_signature};

/// Who reached the test's listeners, in arrival order (`'A'`, `'B'`, …).
type Arrivals = Arc<Mutex<Vec<char>>>;

/// Reads one HTTP request's head (up to the blank line), bounded; returns it as text.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A webhook target on 127.0.0.1 that records each request as `mark` in `arrivals`, then
/// holds it without an answer until the test adds a permit to `release` (one permit answers
/// one request with 204 and closes the connection). Returns its base URL.
async fn held_target(mark: char, arrivals: Arrivals, release: Arc<Semaphore>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (arrivals, release) = (arrivals.clone(), release.clone());
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_empty() {
                    return;
                }
                arrivals.lock().expect("lock").push(mark);
                let Ok(permit) = release.acquire().await else {
                    return;
                };
                permit.forget();
                let _ = stream
                    .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    url
}

/// Waits (bounded, 30 s) until `done` holds.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..3_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Waits (bounded, 30 s) for a log line of the server that `matches`.
async fn wait_log(server: &Server, what: &str, matches: impl Fn(&Value) -> bool) {
    for _ in 0..3_000 {
        for line in server.log.try_iter() {
            let value: Value = serde_json::from_str(&line).unwrap_or_default();
            if matches(&value) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server never logged {what}");
}

/// A checked operator call: asserts the status, returns the body.
async fn call_ok(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    let (got, answer) = server.call(method, path, body).await;
    assert_eq!(got, status, "{method} {path}: {answer}");
    answer
}

/// The deliveries of one webhook endpoint.
async fn deliveries(server: &Server, tenant: &str, webhook: &str) -> Vec<Value> {
    let path = format!("/v1/tenants/{tenant}/webhooks/{webhook}/deliveries");
    call_ok(server, "GET", &path, None, 200).await["items"]
        .as_array()
        .expect("items")
        .clone()
}

/// One tenant's endpoints stuck behind a target that never answers do not hold back another
/// tenant beyond its fair share: with 4 slots, tenant `a` fills all 4 with 4 more attempts
/// waiting; `b`'s delivery, waiting too, gets the first slot that frees, ahead of `a`'s
/// earlier waiters, while `a`'s other deliveries stay stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tenant_does_not_hold_back_another_beyond_its_share() {
    let arrivals: Arrivals = Arc::default();
    let release_a = Arc::new(Semaphore::new(0));
    let slow = held_target('A', arrivals.clone(), release_a.clone()).await;
    // `b`'s receiver answers at once.
    let fast = held_target('B', arrivals.clone(), Arc::new(Semaphore::new(1_000))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with_env(
        dir.path(),
        &["--webhook-concurrency", "4", "--allow-private-webhooks"],
        &[("BERTH_LOG", "info,broker::webhooks=debug")],
    );
    for tenant in ["a", "b"] {
        call_ok(
            &server,
            "POST",
            "/v1/tenants",
            Some(json!({ "name": tenant })),
            201,
        )
        .await;
    }
    for n in 1..=8 {
        let url = format!("{slow}/hook/{n}");
        let path = format!("/v1/tenants/a/webhooks/slow-{n}");
        call_ok(&server, "PUT", &path, Some(json!({ "url": url })), 200).await;
    }
    let url = format!("{fast}/hook");
    let body = Some(json!({ "url": url }));
    call_ok(&server, "PUT", "/v1/tenants/b/webhooks/main", body, 200).await;

    for n in 1..=8 {
        let path = format!("/v1/tenants/a/webhooks/slow-{n}/test");
        call_ok(&server, "POST", &path, None, 202).await;
    }
    let count = |mark: char| {
        arrivals
            .lock()
            .expect("lock")
            .iter()
            .filter(|m| **m == mark)
            .count()
    };
    wait_until("4 of a's deliveries hold the 4 slots", || count('A') == 4).await;
    call_ok(
        &server,
        "POST",
        "/v1/tenants/b/webhooks/main/test",
        None,
        202,
    )
    .await;
    wait_log(&server, "that b's delivery waits for a slot", |line| {
        line["fields"]["tenant"] == "b"
            && line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("waits for a delivery slot"))
    })
    .await;
    assert_eq!(count('A'), 4, "a's other 4 deliveries wait too");

    // One of a's attempts ends: its slot goes to b (below its share of 2), not to a's next.
    release_a.add_permits(1);
    wait_until("b is delivered or a 5th attempt of a arrives", || {
        count('B') == 1 || count('A') == 5
    })
    .await;
    let order: String = arrivals.lock().expect("lock").iter().collect();
    assert!(
        order.starts_with("AAAAB"),
        "b was served before a's waiting deliveries: {order}"
    );
    let mut delivered = Vec::new();
    for _ in 0..3_000 {
        delivered = deliveries(&server, "b", "main").await;
        if delivered
            .first()
            .is_some_and(|d| d["status"] == "delivered")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(delivered[0]["status"], "delivered", "{delivered:?}");
    // a: one delivered (the released one), the other seven still pending (stuck or waiting).
    let mut statuses = Vec::new();
    for _ in 0..3_000 {
        statuses.clear();
        for n in 1..=8 {
            let list = deliveries(&server, "a", &format!("slow-{n}")).await;
            statuses.push(list[0]["status"].as_str().unwrap_or_default().to_owned());
        }
        statuses.sort();
        if statuses[0] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        statuses,
        [
            "delivered",
            "pending",
            "pending",
            "pending",
            "pending",
            "pending",
            "pending",
            "pending"
        ],
        "a's deliveries"
    );
}

/// A listener on 127.0.0.1 that records the head of every request it gets (an empty string
/// for a connection that sent none) and answers each with `answer`, or closes it.
struct Recorder {
    /// `http://127.0.0.1:<port>`.
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start(answer: Option<&'static [u8]>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        tokio::spawn({
            let heads = heads.clone();
            async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let heads = heads.clone();
                    tokio::spawn(async move {
                        let head = read_head(&mut stream).await;
                        heads.lock().expect("lock").push(head);
                        if let Some(answer) = answer {
                            let _ = stream.write_all(answer).await;
                        }
                    });
                }
            }
        });
        Recorder { url, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }

    /// `host:port` of the listener.
    fn authority(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

/// Every spelling of the proxy variables reqwest reads, pointing at `proxy`, and no
/// exclusions inherited from the test's environment.
fn proxy_env(proxy: &str) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .into_iter()
    .map(|name| (name, proxy.to_owned()))
    .collect();
    env.push(("NO_PROXY", String::new()));
    env.push(("no_proxy", String::new()));
    env
}

/// Starts berth with `flags` and `env`, makes tenant `t` with a webhook `hook` to `url`,
/// sends it a test delivery and returns the delivery once its first attempt is recorded.
///
/// Without `--allow-private-webhooks` in `flags`, a private `url` is refused when it is set;
/// to reach the guard of each attempt, the webhook is set by a berth that allows private
/// targets, which is then restarted without it (as when an operator stops allowing them).
async fn first_attempt(
    dir: &std::path::Path,
    flags: &[&str],
    env: &[(&str, String)],
    url: &str,
) -> (Server, Value) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let allowed = flags.contains(&"--allow-private-webhooks");
    let setup = if allowed {
        Server::start_with_env(dir, flags, &env)
    } else {
        Server::start(dir, &["--allow-private-webhooks"])
    };
    call_ok(
        &setup,
        "POST",
        "/v1/tenants",
        Some(json!({ "name": "t" })),
        201,
    )
    .await;
    let body = Some(json!({ "url": url }));
    call_ok(&setup, "PUT", "/v1/tenants/t/webhooks/hook", body, 200).await;
    let server = if allowed {
        setup
    } else {
        assert!(setup.terminate().success());
        Server::start_with_env(dir, flags, &env)
    };
    call_ok(
        &server,
        "POST",
        "/v1/tenants/t/webhooks/hook/test",
        None,
        202,
    )
    .await;
    for _ in 0..3_000 {
        let list = deliveries(&server, "t", "hook").await;
        if list[0]["attempts"].as_i64().unwrap_or_default() >= 1 || list[0]["status"] != "pending" {
            let delivery = list[0].clone();
            return (server, delivery);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the test delivery was never attempted");
}

/// Proxy variables in berth's environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, in both
/// cases) do not carry a delivery past the private-address guard: a webhook to a name that
/// resolves to loopback fails with the private-address reason, and neither the proxy nor the
/// target hears from berth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_variables_do_not_bypass_the_private_address_guard() {
    let proxy = Recorder::start(Some(
        b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
    ))
    .await;
    let target = Recorder::start(Some(
        b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
    ))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    // `localhost` resolves to loopback: the guard of each attempt refuses it.
    let url = format!(
        "http://localhost:{}/hook",
        target.authority().rsplit(':').next().expect("port")
    );
    let (_server, delivery) = first_attempt(dir.path(), &[], &proxy_env(&proxy.url), &url).await;
    let error = delivery["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("loopback") && error.contains("refused"),
        "the private-address reason: {delivery}"
    );
    assert_ne!(delivery["status"], "delivered");
    assert_eq!(
        proxy.heads(),
        Vec::<String>::new(),
        "the proxy got no connection"
    );
    assert_eq!(
        target.heads(),
        Vec::<String>::new(),
        "the target got no connection"
    );
}

/// Through the operator's `--outbound-proxy` the guard still judges the target: a webhook to
/// a name that resolves to loopback fails with the private-address reason, and the proxy
/// (itself on loopback, which is allowed) gets no connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_proxy_still_refuses_private_targets() {
    let proxy = Recorder::start(Some(
        b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
    ))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = ["--outbound-proxy", proxy.url.as_str()];
    let (_server, delivery) =
        first_attempt(dir.path(), &flags, &[], "http://localhost:9/hook").await;
    let error = delivery["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("loopback") && error.contains("refused"),
        "the private-address reason: {delivery}"
    );
    assert_eq!(
        proxy.heads(),
        Vec::<String>::new(),
        "the proxy got no connection"
    );
}

/// With `--outbound-proxy` (and private targets allowed) deliveries go through that proxy,
/// not through the one the environment names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_proxy_carries_the_deliveries() {
    let proxy = Recorder::start(Some(
        b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
    ))
    .await;
    let env_proxy = Recorder::start(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = [
        "--outbound-proxy",
        proxy.url.as_str(),
        "--allow-private-webhooks",
    ];
    let url = "http://localhost:9/hook";
    let (server, mut delivery) =
        first_attempt(dir.path(), &flags, &proxy_env(&env_proxy.url), url).await;
    for _ in 0..3_000 {
        if delivery["status"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        delivery = deliveries(&server, "t", "hook").await[0].clone();
    }
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    let heads = proxy.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with(&format!("POST {url} HTTP/1.1\r\n")),
        "the proxy was asked for the target: {heads:?}"
    );
    assert_eq!(
        env_proxy.heads(),
        Vec::<String>::new(),
        "the environment's proxy is ignored"
    );
}

/// A `workflow_job` payload of job `id` with `action`, created at `created_at_ms`.
fn workflow_job(action: &str, id: i64, created_at_ms: i64) -> Vec<u8> {
    let created_at = chrono::DateTime::from_timestamp_millis(created_at_ms)
        .expect("a time")
        .to_rfc3339();
    serde_json::to_vec(&json!({
        "action": action,
        "workflow_job": {
            "id": id, "run_id": 11_289_937_455_i64, "run_attempt": 1, "status": action,
            "labels": ["self-hosted", "linux"], "created_at": created_at, "steps": []
        },
        "repository": { "full_name": "acme/widgets" }
    }))
    .expect("json")
}

/// POSTs a delivery to `tenant`'s GitHub endpoint; returns the status and the raw body (the
/// answer is checked against the error contract first).
async fn deliver(
    h: &Harness,
    tenant: &str,
    delivery: &str,
    body: &[u8],
    signature: Option<&str>,
) -> (StatusCode, Vec<u8>) {
    let path = format!("/v1/tenants/{tenant}/integrations/github");
    let mut request = h
        .client
        .post(format!("{}{path}", h.url))
        .header("content-type", "application/json")
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", delivery)
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    let response = request.send().await.expect("berth answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body").to_vec();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    check_answer(&Method::POST, &path, status, &headers, &value);
    (status, bytes)
}

/// A tenant with a pool `linux` (labels `self-hosted`, `linux`) and the GitHub secret
/// `gh-secret`.
async fn github_tenant(h: &Harness, name: &str) -> Tenant {
    let tenant = h
        .setup_tenant(name, json!({ "max_active_leases": 5 }))
        .await;
    let pool = json!({ "provider": "cloud", "machine_type": "m", "hourly_price_micros": 0,
        "labels": ["self-hosted", "linux"] });
    let (status, _, body) = h
        .json(
            Method::PUT,
            &tenant.path("/pools/linux"),
            Some(&tenant.admin),
            Some(pool),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = h
        .json(
            Method::PUT,
            &tenant.path("/integrations/github"),
            Some(&tenant.admin),
            Some(json!({ "secret": "gh-secret", "wait_s": 60 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tenant
}

/// A captured `queued` delivery resent under a new delivery id makes no second lease: not
/// at once, not after the lease request's 24 h idempotency window, and not after the 7 days
/// a job is remembered (the job is stale by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_github_job_makes_no_second_lease() {
    let h = Harness::start_manual().await;
    let tenant = github_tenant(&h, "acme").await;
    let queued = workflow_job("queued", 30_433_642_207, T0);
    let signature = github_signature("gh-secret", &queued);
    let (status, body) = deliver(&h, "acme", "d-1", &queued, Some(&signature)).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let outcome: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(outcome["outcome"], "leased");

    let (status, body) = deliver(&h, "acme", "d-2", &queued, Some(&signature)).await;
    let outcome: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );

    h.advance(Duration::from_secs(25 * 3_600));
    let (status, body) = deliver(&h, "acme", "d-3", &queued, Some(&signature)).await;
    let outcome: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (StatusCode::OK, Some("duplicate")),
        "past the 24 h idempotency window"
    );

    h.advance(Duration::from_secs(7 * 24 * 3_600));
    let (status, body) = deliver(&h, "acme", "d-4", &queued, Some(&signature)).await;
    let outcome: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (StatusCode::ACCEPTED, Some("ignored")),
        "past the 7 days a job is remembered: {outcome}"
    );
    assert_eq!(
        h.list_all(&tenant, "").await.len(),
        1,
        "one lease for one job"
    );
    h.assert_documented().await;
}

/// The GitHub endpoint gives an unauthenticated caller one answer, byte for byte, whether the
/// tenant does not exist, has no GitHub integration, or the signature is wrong or missing;
/// and a delivery to a tenant that does not exist opens or creates no object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_endpoint_tells_nothing_to_unauthenticated_callers() {
    let h = Harness::start().await;
    github_tenant(&h, "acme").await;
    h.create_tenant("bare", json!({})).await;
    let body = workflow_job("queued", 7, T0);
    let signed = github_signature("gh-secret", &body);
    let wrong = github_signature("not-the-secret", &body);
    let files = |dir: &std::path::Path| {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.push(path.display().to_string());
                }
            }
        }
        found.sort();
        found
    };
    let before = files(h.dir.path());

    let answers = [
        deliver(&h, "nobody", "d-1", &body, Some(&signed)).await,
        deliver(&h, "bare", "d-2", &body, Some(&signed)).await,
        deliver(&h, "acme", "d-3", &body, Some(&wrong)).await,
        deliver(&h, "acme", "d-4", &body, None).await,
        deliver(&h, "acme", "d-5", b"{}", Some(&signed)).await,
    ];
    // Identical but for the request id, which is each request's own (random, it tells
    // nothing about the tenant).
    let without_id = |bytes: &[u8]| -> Vec<u8> {
        let mut problem: serde_json::Value = serde_json::from_slice(bytes).expect("problem");
        assert!(problem["request_id"].is_string(), "{problem}");
        problem
            .as_object_mut()
            .expect("object")
            .remove("request_id");
        serde_json::to_vec(&problem).expect("json")
    };
    for (status, bytes) in &answers {
        assert_eq!(*status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            without_id(bytes),
            without_id(&answers[0].1),
            "{} vs {}",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&answers[0].1)
        );
    }
    let problem: Value = serde_json::from_slice(&answers[0].1).expect("json");
    assert_eq!(problem["code"], "unauthorized");

    let nobody = broker::objects::ObjectId::from_name("tenant", "nobody").to_hex();
    let after = files(h.dir.path());
    assert!(
        !after.iter().any(|path| path.contains(&nobody)),
        "an object file of the missing tenant: {after:?}"
    );
    let new: Vec<&String> = after
        .iter()
        .filter(|path| !before.contains(path) && !path.contains("-wal") && !path.contains("-shm"))
        .collect();
    assert!(
        new.is_empty(),
        "files made by unauthenticated deliveries: {new:?}"
    );
    let tenants = h.get_ok("/v1/tenants", &h.admin).await;
    assert_eq!(tenants["items"].as_array().expect("items").len(), 2);
    assert_eq!(
        deliver(&h, "acme", "d-6", &body, Some(&signed)).await.0,
        StatusCode::CREATED,
        "the right signature still leases"
    );
    h.assert_documented().await;
}
