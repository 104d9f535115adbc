//! The event commands as people and scripts run them: `berth webhook …`, `berth github …` and
//! `berth watch`, the real binary against a real `berth serve` on 127.0.0.1, with small HTTP
//! peers (a webhook receiver, a scripted event stream) made with axum inside the tests.
//!
//! Success paths are checked through `-o json` (parsed) and tables; failures by exit code and
//! the one line on stderr. Every wait is bounded; nothing asserts how long anything took.

#[path = "support/cli.rs"]
mod cli_support;
mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use cli_support::{Berth, Run, Tenant, run, run_with_stdin};
use futures::StreamExt as _;

/// A webhook receiver on 127.0.0.1 that answers every POST with one status and keeps what it
/// got (the runtime serving it lives as long as the receiver).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(HeaderMap, serde_json::Value)>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn answering(status: u16) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let got = Arc::new(Mutex::new(Vec::new()));
        let kept = got.clone();
        let status = StatusCode::from_u16(status).expect("status");
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let kept = kept.clone();
                async move {
                    let body = serde_json::from_str(&body).unwrap_or_default();
                    kept.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((headers, body));
                    status
                }
            }),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        runtime.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            got,
            _runtime: runtime,
        }
    }

    fn got(&self) -> Vec<(HeaderMap, serde_json::Value)> {
        self.got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A `berth` child process that is killed if the test ends before it does.
struct Running(Child);

impl Running {
    /// The child's stdout lines, sent by a reader thread.
    fn lines(&mut self) -> mpsc::Receiver<String> {
        let stdout = self.0.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Waits (at most 30 s) for the exit; returns the code and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = support::wait_bounded(&mut self.0);
        let mut stderr = String::new();
        if let Some(mut pipe) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        (status.code(), stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `berth ARGS` with a tenant's token, stdout and stderr piped.
fn spawn(berth: &Berth, tenant: &Tenant, args: &[&str]) -> Running {
    Running(
        berth
            .tenant_cmd(tenant)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("berth starts"),
    )
}

/// The next line from `lines`, waiting at most 30 s.
#[track_caller]
fn next_line(lines: &mpsc::Receiver<String>) -> String {
    lines
        .recv_timeout(Duration::from_secs(30))
        .expect("a line within 30 s")
}

/// stdout as one JSON document per line.
#[track_caller]
fn json_lines(run: &Run) -> Vec<serde_json::Value> {
    run.stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON document per line"))
        .collect()
}

/// `berth --tenant NAME ARGS` as the operator (webhooks and GitHub need tenant:admin).
fn admin_of(berth: &Berth, tenant: &str, args: &[&str]) -> Run {
    berth.admin(&[&["--tenant", tenant], args].concat())
}

/// Webhook set/list/show/delete via `-o json`: a generated secret shows once, never again.
#[test]
fn webhook_set_list_show_delete() {
    let berth = Berth::start_with(&["--allow-private-webhooks"]);
    let tenant = berth.tenant("acme", &[]);
    let hook = |args: &[&str]| admin_of(&berth, &tenant.name, &[&["webhook"], args].concat());
    let target = "http://127.0.0.1:9/hook";

    let created = hook(&["set", "alerts", "--target", target, "-o", "json"])
        .ok()
        .json();
    assert_eq!(created["name"], "alerts");
    assert_eq!(created["url"], target);
    assert_eq!(created["enabled"], true);
    let secret = created["secret"].as_str().expect("a generated secret");
    assert!(secret.starts_with("whsec_"), "{created}");

    let updated = hook(&[
        "set",
        "alerts",
        "--target",
        target,
        "--event",
        "lease.ready",
        "--event",
        "lease.failed",
        "--disable",
        "-o",
        "json",
    ])
    .ok()
    .json();
    assert_eq!(
        updated["events"],
        serde_json::json!(["lease.ready", "lease.failed"])
    );
    assert_eq!(updated["enabled"], false);
    assert!(
        updated.get("secret").is_none(),
        "kept, not shown: {updated}"
    );

    let file = berth.dir.path().join("hook-secret");
    std::fs::write(&file, "whsec_c2VjcmV0LWZyb20tYS1maWxlLTMyLWJ5dGVzIQ==\n").expect("write");
    let given = hook(&[
        "set",
        "audit",
        "--target",
        target,
        "--secret-file",
        &file.display().to_string(),
    ])
    .ok();
    assert!(!given.stdout.contains("whsec_"), "{given:#?}");
    assert!(given.stdout.contains("events   all"), "{given:#?}");

    let table = hook(&["set", "third", "--target", target]).ok();
    assert!(table.stdout.contains("whsec_"), "{table:#?}");
    assert!(table.stderr.contains("only this once"), "{table:#?}");

    let list = hook(&["list", "-o", "json"]).ok().json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["alerts", "audit", "third"]);
    assert!(
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|w| w.get("secret").is_none())
    );
    assert_eq!(
        hook(&["list", "-o", "id"]).ok().stdout,
        "alerts\naudit\nthird\n"
    );
    let table = hook(&["list"]).ok();
    assert!(table.stdout.starts_with("NAME"), "{table:#?}");
    assert!(!table.stdout.contains("whsec_"), "{table:#?}");

    let shown = hook(&["show", "alerts", "-o", "json"]).ok().json();
    assert_eq!(shown["pending"], 0);
    assert_eq!(shown["dead"], 0);
    assert!(shown.get("secret").is_none());
    let table = hook(&["show", "alerts"]).ok();
    assert!(
        table.stdout.contains("lease.ready, lease.failed"),
        "{table:#?}"
    );
    let deliveries = hook(&["deliveries", "alerts", "-o", "json"]).ok().json();
    assert_eq!(deliveries["items"], serde_json::json!([]));

    let deleted = hook(&["delete", "third", "-o", "json"]).ok().json();
    assert_eq!(deleted["deleted"], true);
    hook(&["show", "third"])
        .code(1)
        .one_line_error(&["third", "(not_found)"]);
}

/// `webhook test --wait 30s` (a duration, like `lease request --wait 5m`): 200 → exit 0,
/// 500 → pending with last status 500, 410 → dead, exit 1.
#[test]
fn webhook_test_and_deliveries() {
    let berth = Berth::start_with(&["--allow-private-webhooks"]);
    let tenant = berth.tenant("acme", &[]);
    let hook = |args: &[&str]| admin_of(&berth, &tenant.name, &[&["webhook"], args].concat());

    let ok = Receiver::answering(200);
    hook(&["set", "ok", "--target", &ok.url]).ok();
    let delivered = hook(&["test", "ok", "--wait", "30s", "-o", "json"])
        .ok()
        .json();
    assert_eq!(delivered["status"], "delivered");
    assert_eq!(delivered["attempts"], 1);
    assert_eq!(delivered["last_status"], 200);
    let got = ok.got();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1["type"], "webhook.test");
    assert!(got[0].0.contains_key("webhook-signature"), "{got:?}");

    let failing = Receiver::answering(500);
    hook(&["set", "failing", "--target", &failing.url]).ok();
    let queued = hook(&["test", "failing", "-o", "json"]).ok().json();
    assert_eq!(queued["status"], "pending");
    assert_eq!(queued["event_type"], "webhook.test");
    let id = queued["id"].clone();
    let mut tried = serde_json::Value::Null;
    for _ in 0..300 {
        let page = hook(&["deliveries", "failing", "--status", "pending", "-o", "json"])
            .ok()
            .json();
        if let Some(row) = page["items"]
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["id"] == id))
            && row["attempts"].as_i64().unwrap_or_default() >= 1
        {
            tried = row.clone();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tried["status"], "pending", "attempted within 15 s: {tried}");
    assert_eq!(tried["last_status"], 500);
    assert!(tried["next_attempt_at"].is_string());
    let table = hook(&["deliveries", "failing"]).ok();
    assert!(table.stdout.starts_with("ID"), "{table:#?}");
    assert!(table.stdout.contains("500"), "{table:#?}");
    assert!(table.stdout.contains("pending"), "{table:#?}");
    let delivered_only = hook(&[
        "deliveries",
        "failing",
        "--status",
        "delivered",
        "-o",
        "json",
    ])
    .ok()
    .json();
    assert_eq!(delivered_only["items"], serde_json::json!([]));
    // The endpoint's deliveries go one at a time, oldest first: this one waits behind the
    // failing one, whose retry is seconds away and fails again.
    hook(&["test", "failing", "--wait", "1s"])
        .code(4)
        .last_line_error(&["still pending"]);

    let gone = Receiver::answering(410);
    hook(&["set", "gone", "--target", &gone.url]).ok();
    // `--timeout` is the spelling from before `--wait` took a duration; it still works.
    hook(&["test", "gone", "--wait", "--timeout", "30s"])
        .code(1)
        .last_line_error(&["dead", "410"]);
    let shown = hook(&["show", "gone", "-o", "json"]).ok().json();
    assert_eq!(shown["dead"], 1);
    assert_eq!(shown["enabled"], false, "410 Gone disables the endpoint");
    hook(&["test", "gone"])
        .code(1)
        .one_line_error(&["disabled", "berth webhook set gone"]);
    let shown = hook(&["show", "gone", "-o", "json"]).ok().json();
    assert_eq!(
        shown["pending"], 0,
        "nothing queued for a disabled endpoint"
    );
}

/// Without --allow-private-webhooks a private target is refused when it is set, however it
/// is written (`localhost`, `127.0.0.1`, `[::1]`, a private network): exit 1, one line naming
/// `--target` (not the API's `url`) and the server flag that allows it, a hint, nothing
/// stored.
#[test]
fn private_webhook_target_is_refused() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    for target in [
        "http://localhost:9/hook",
        "http://127.0.0.1:9/hook",
        "http://[::1]:9/hook",
        "http://10.0.0.1/hook",
    ] {
        let refused = admin_of(
            &berth,
            &tenant.name,
            &["webhook", "set", "internal", "--target", target],
        )
        .code(1)
        .one_line_error(&["--target:", "--allow-private-webhooks", "(invalid_request)"])
        .hint(&["public URL"]);
        assert!(!refused.stderr.contains("`url`"), "{refused:#?}");
    }
    let list = admin_of(&berth, &tenant.name, &["webhook", "list", "-o", "json"])
        .ok()
        .json();
    assert_eq!(list["items"], serde_json::json!([]));
}

/// `github set` reads the secret from a file or stdin and never prints it; `show` reads back.
#[test]
fn github_set_and_show() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    let github = |args: &[&str]| admin_of(&berth, &tenant.name, &[&["github"], args].concat());
    let before = github(&["show", "-o", "json"]).ok().json();
    assert_eq!(before["configured"], false);

    let file = berth.dir.path().join("gh-secret");
    std::fs::write(&file, "gh-s3cret-from-file\n").expect("write");
    let file = file.display().to_string();
    let set = github(&[
        "set",
        "--secret-file",
        &file,
        "--ttl",
        "30m",
        "--wait",
        "1h",
        "--idle",
        "10m",
        "-o",
        "json",
    ])
    .ok();
    assert!(!set.stdout.contains("s3cret") && !set.stderr.contains("s3cret"));
    let set = set.json();
    assert_eq!(set["configured"], true);
    assert_eq!(set["ttl_s"], 1800);
    assert_eq!(set["wait_s"], 3600);
    assert_eq!(set["idle_timeout_s"], 600);
    let shown = github(&["show"]).ok();
    assert!(shown.stdout.contains("stored"), "{shown:#?}");
    assert!(shown.stdout.contains("30m"), "{shown:#?}");
    assert!(
        shown
            .stdout
            .contains("/v1/tenants/acme/integrations/github"),
        "{shown:#?}"
    );
    assert!(!shown.stdout.contains("s3cret"));

    let from_stdin = run_with_stdin(
        berth.admin_cmd().args([
            "--tenant",
            "acme",
            "github",
            "set",
            "--secret-stdin",
            "-o",
            "json",
        ]),
        "gh-s3cret-from-stdin\n",
    )
    .ok();
    assert!(!from_stdin.stdout.contains("s3cret"));
    assert!(
        from_stdin.json()["ttl_s"].is_null(),
        "set replaces the whole configuration"
    );

    github(&["set", "--secret-file", &file, "--ttl", "48h"])
        .code(1)
        .one_line_error(&["--ttl must be between 1s and 1d", "(invalid_request)"]);
    let empty = berth.dir.path().join("empty");
    std::fs::write(&empty, "\n").expect("write");
    github(&["set", "--secret-file", &empty.display().to_string()])
        .code(2)
        .one_line_error(&["no secret"]);
}

/// `watch` prints a lease's events in order, resumes `--after` a seq, times out with exit 4.
/// (It replays from the start here: a watch from now could start after the lease's first
/// events; `cli_runners.rs` shows that.)
#[test]
fn watch_follows_a_lease() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    let mut watcher = spawn(
        &berth,
        &tenant,
        &["watch", "--from-start", "--count", "3", "-o", "json"],
    );
    let lines = watcher.lines();
    let id = berth
        .as_tenant(
            &tenant,
            &[
                "lease", "request", "--pool", "local", "--wait", "1m", "-o", "id",
            ],
        )
        .ok()
        .stdout
        .trim()
        .to_owned();
    berth
        .as_tenant(&tenant, &["lease", "release", &id, "--wait", "1m"])
        .ok();
    let events: Vec<serde_json::Value> = (0..3)
        .map(|_| serde_json::from_str(&next_line(&lines)).expect("a JSON line"))
        .collect();
    let (code, stderr) = watcher.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["lease.granted", "lease.ready", "lease.released"]);
    assert!(events.iter().all(|e| e["data"]["id"] == id.as_str()));
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let first = seqs[0].to_string();
    let resumed = berth
        .as_tenant(
            &tenant,
            &["watch", "--after", &first, "--count", "2", "-o", "json"],
        )
        .ok();
    assert_eq!(json_lines(&resumed), events[1..]);

    let last = seqs[2].to_string();
    berth
        .as_tenant(
            &tenant,
            &["watch", "--after", &last, "--timeout", "1s", "--count", "5"],
        )
        .code(4)
        .one_line_error(&["0 of 5 events"]);
    berth
        .as_tenant(&tenant, &["watch", "--after", &last, "--timeout", "1s"])
        .ok();

    let table = berth
        .as_tenant(&tenant, &["watch", "--from-start", "--count", "3"])
        .ok();
    let rows: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{table:#?}");
    assert!(
        rows[1].contains("lease.ready") && rows[1].contains(&id),
        "{table:#?}"
    );
    assert!(rows[2].contains("released"), "{table:#?}");
    let ready = berth
        .as_tenant(
            &tenant,
            &[
                "watch",
                "--from-start",
                "--type",
                "lease.ready",
                "--lease",
                &id,
                "--count",
                "1",
                "-o",
                "json",
            ],
        )
        .ok();
    assert_eq!(json_lines(&ready), events[1..2]);
    berth
        .as_tenant(
            &tenant,
            &[
                "watch",
                "--lease",
                "lease_other",
                "--timeout",
                "1s",
                "--count",
                "1",
            ],
        )
        .code(4);

    let mut follower = spawn(&berth, &tenant, &["watch", "--from-start", "-o", "json"]);
    let lines = follower.lines();
    next_line(&lines);
    support::signal(&follower.0, "TERM");
    let (code, stderr) = follower.finish();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
}

/// After a dropped stream `watch` resumes with `Last-Event-ID`, warning once per outage.
#[test]
fn watch_resumes_after_a_drop() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let calls = Arc::new(AtomicUsize::new(0));
    let resumed_from = Arc::new(Mutex::new(Vec::new()));
    let (counter, seen) = (calls.clone(), resumed_from.clone());
    let event = |seq: i64, kind: &str| {
        let message = serde_json::json!({
            "type": kind, "timestamp": "2026-11-27T12:00:00Z", "seq": seq,
            "data": {"id": "lease_x"},
        });
        format!("id: {seq}\nevent: {kind}\ndata: {message}\n\n")
    };
    let (one, two) = (event(1, "lease.granted"), event(2, "lease.ready"));
    // First connection: a keep-alive and event 1, then the stream ends. Second: 503. Third:
    // event 2, then the stream stays open.
    let app = axum::Router::new().route(
        "/v1/tenants/acme/events",
        axum::routing::get(move |headers: HeaderMap| {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap_or_else(PoisonError::into_inner).push(
                headers
                    .get("last-event-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            );
            let (one, two) = (one.clone(), two.clone());
            async move {
                let sse = [("content-type", "text/event-stream")];
                match call {
                    0 => (sse, format!(":keep-alive\n\n{one}")).into_response(),
                    1 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    _ => {
                        let chunks = futures::stream::iter([Ok::<_, std::io::Error>(two)])
                            .chain(futures::stream::pending());
                        (sse, axum::body::Body::from_stream(chunks)).into_response()
                    }
                }
            }
        }),
    );
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    runtime.spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let watched = run(support::berth()
        .env_clear()
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .args(["--url", &url, "--token", "t", "--tenant", "acme"])
        .args(["watch", "--count", "2", "--timeout", "30s", "-o", "json"]))
    .ok();
    let seqs: Vec<i64> = json_lines(&watched)
        .iter()
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(
        *resumed_from.lock().unwrap_or_else(PoisonError::into_inner),
        [None, Some("1".to_owned()), Some("1".to_owned())]
    );
    let warnings = watched.stderr.matches("warning:").count();
    assert_eq!(warnings, 1, "{watched:#?}");
    assert!(watched.stderr.contains("reconnected"), "{watched:#?}");
}

/// Bad flags exit 2 and send nothing; an unknown webhook is exit 1 with one line.
#[test]
fn bad_flags_and_unknown_webhooks() {
    let berth = Berth::start_with(&["--allow-private-webhooks"]);
    let tenant = berth.tenant("acme", &[]);
    for args in [
        &["webhook", "set", "a"][..],
        &[
            "webhook",
            "set",
            "a",
            "--target",
            "http://127.0.0.1:9/",
            "--event",
            "lease.lunch",
        ],
        &[
            "webhook",
            "set",
            "a",
            "--target",
            "http://127.0.0.1:9/",
            "--secret",
            "whsec_eA==",
            "--secret-file",
            "f",
        ],
        &["webhook", "deliveries", "a", "--status", "lost"],
        &["webhook", "test", "a", "--timeout", "5s"],
        &["webhook", "test", "a", "--wait", "--timeout", "soon"],
        &["webhook", "frobnicate"],
        &["github", "set"],
        &["github", "set", "--secret-file", "f", "--secret-stdin"],
        &["github", "set", "--secret-stdin", "--ttl", "long"],
        &["github", "show", "-o", "id"],
        &["watch", "--count", "0"],
        &["watch", "--type", "lease.lunch"],
        &["watch", "--timeout", "0s"],
        &["watch", "-o", "id"],
    ] {
        admin_of(&berth, &tenant.name, args).code(2);
    }
    let list = admin_of(&berth, &tenant.name, &["webhook", "list", "-o", "id"]).ok();
    assert!(
        list.stdout.is_empty(),
        "no usage error stored anything: {list:#?}"
    );

    for args in [
        &["webhook", "show", "nope"][..],
        &["webhook", "delete", "nope"],
        &["webhook", "test", "nope"],
        &["webhook", "test", "nope", "--wait"],
        &["webhook", "deliveries", "nope"],
    ] {
        admin_of(&berth, &tenant.name, args)
            .code(1)
            .one_line_error(&["nope", "(not_found)"]);
    }
    // A lease token may not manage webhooks.
    berth
        .as_tenant(&tenant, &["webhook", "list"])
        .code(1)
        .one_line_error(&["(forbidden)"]);
}
