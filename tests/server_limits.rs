//! The server's own limits (DESIGN.md §6, "Server limits") through the real `berth` binary,
//! over raw TCP on 127.0.0.1 where a client has to misbehave: a connection that sends no
//! request, or only part of one, or goes quiet after one, is closed; a body that does not
//! arrive is answered 408; connections beyond `--max-connections` wait for a free slot; long
//! polls and event streams outlive every timeout; no request, authenticated or not, makes the
//! metrics grow; and the crash points that the reliability suites use exist in the binary
//! they test (and only there).
//!
//! Timeouts here are short (1 s) so the tests are quick; every wait for berth to act is
//! bounded by a generous 30 s, and no test asserts how long anything took.

mod support;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use serde_json::{Value, json};
use support::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long a test waits for berth to do something it must do (close, answer).
const BOUND: Duration = Duration::from_secs(30);

/// A raw TCP connection to the server.
async fn connect(server: &Server) -> TcpStream {
    let addr = server.url.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("connect to berth")
}

/// Waits (bounded) until the server closes `stream`: a read returns end of file or an error
/// (a reset, when the server closed with unread bytes). Panics if berth sends anything.
async fn assert_closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0_u8; 1024];
    match timeout(BOUND, stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "berth answered instead of closing: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("berth did not close the connection within {BOUND:?}"),
    }
}

/// An HTTP answer read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header lines, names lower-cased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one answer (headers and a `Content-Length` body) from `stream`, bounded.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    timeout(BOUND, async {
        let mut data = Vec::new();
        let mut buf = [0_u8; 4096];
        let head_end = loop {
            if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let n = stream.read(&mut buf).await.expect("read the answer");
            assert!(n > 0, "connection closed before an answer: {data:?}");
            data.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .expect("a Content-Length");
        let mut body = data[head_end + 4..].to_vec();
        while body.len() < length {
            let n = stream.read(&mut buf).await.expect("read the body");
            assert!(n > 0, "connection closed in the body");
            body.extend_from_slice(&buf[..n]);
        }
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    })
    .await
    .expect("berth answers within the bound")
}

/// Sends `GET <path>` on a kept-alive connection and reads the answer.
async fn get(stream: &mut TcpStream, path: &str) -> Answer {
    let request = format!("GET {path} HTTP/1.1\r\nHost: berth\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send a request");
    read_answer(stream).await
}

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
                || line.starts_with("berth_http_request_duration_seconds_count{")
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
        &["--enable-fake"],
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

/// A client that connects and sends nothing is disconnected after `--header-timeout`.
#[tokio::test]
async fn silent_connection_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--header-timeout", "1s"]);
    let mut silent = connect(&server).await;
    assert_closed_by_server(&mut silent).await;
}

/// A client that sends a request's headers a byte at a time and never finishes them is
/// disconnected after `--header-timeout` (counted from its connect, not from its last byte).
#[tokio::test]
async fn slow_partial_headers_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--header-timeout", "1s"]);
    let stream = connect(&server).await;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: berth\r\nX-Slow: ")
        .await
        .expect("send the start of a request");
    let mut buf = [0_u8; 1024];
    // One more header byte every 100 ms, for at most 30 s, until berth closes.
    for _ in 0..300 {
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => panic!("berth answered: {:?}", String::from_utf8_lossy(&buf[..n])),
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if writer.write_all(b"a").await.is_err() {
                    return;
                }
            }
        }
    }
    panic!("berth kept a trickling client for 30 s");
}

/// A kept-alive connection with no next request is closed after `--keepalive-timeout`.
#[tokio::test]
async fn idle_kept_alive_connection_is_closed_after_the_keepalive_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--keepalive-timeout", "1s"]);
    let mut stream = connect(&server).await;
    assert_eq!(get(&mut stream, "/healthz").await.status, 200);
    assert_closed_by_server(&mut stream).await;
}

/// The wait for a next request on a kept-alive connection is timed by `--keepalive-timeout`,
/// not by the shorter `--header-timeout` (which hyper's own timer would apply to it).
#[tokio::test]
async fn kept_alive_connection_outlives_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path(),
        &["--header-timeout", "1s", "--keepalive-timeout", "60s"],
    );
    let mut stream = connect(&server).await;
    assert_eq!(get(&mut stream, "/healthz").await.status, 200);
    // Idle for three header timeouts (well within the keep-alive timeout), then reuse it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(get(&mut stream, "/healthz").await.status, 200);
}

/// A request whose body stops arriving is answered 408 `body_timeout` (problem+json) after
/// `--body-timeout`, and its connection is closed.
#[tokio::test]
async fn stalled_body_is_answered_408() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--body-timeout", "1s"]);
    let mut stream = connect(&server).await;
    let head = format!(
        "POST /v1/tenants HTTP/1.1\r\nHost: berth\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\": \"",
        server.admin_token()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the start of a request");
    let answer = read_answer(&mut stream).await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(answer.header("connection"), Some("close"));
    let problem: Value = serde_json::from_str(&answer.body).expect("problem json");
    assert_eq!(problem["code"], "body_timeout", "{problem}");
    assert_closed_by_server(&mut stream).await;
}

/// With `--max-connections 4`, four clients that connect and send nothing do not lock out a
/// fifth: the header timeout closes them and the fifth is answered.
#[tokio::test]
async fn idle_connections_do_not_lock_out_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path(),
        &["--max-connections", "4", "--header-timeout", "1s"],
    );
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect(&server).await);
    }
    let client = reqwest::Client::builder()
        .timeout(BOUND)
        .build()
        .expect("client");
    let answer = client
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .expect("the fifth client is answered");
    assert_eq!(answer.status(), 200);
    for stream in &mut idle {
        assert_closed_by_server(stream).await;
    }
}

/// With `--max-connections 1`, a second client is served only once the first connection
/// closes: its request, sent while the first client goes on making requests on its kept-alive
/// connection for a second, is answered after all of them (the metrics it gets count them all).
#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--max-connections", "1"]);
    let mut first = connect(&server).await;
    assert_eq!(get(&mut first, "/healthz").await.status, 200);

    let mut second = connect(&server).await;
    second
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: berth\r\n\r\n")
        .await
        .expect("send a request");
    // Spread over a second, so that a server without the limit would have answered the
    // second client in between (the count below would then be lower).
    let mut sent = 1;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(get(&mut first, "/healthz").await.status, 200);
        sent += 1;
    }
    drop(first);

    let answer = read_answer(&mut second).await;
    assert_eq!(answer.status, 200);
    let healthz = "berth_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} ";
    let count = answer
        .body
        .lines()
        .find_map(|line| line.strip_prefix(healthz))
        .expect("the /healthz counter");
    assert_eq!(
        count,
        sent.to_string(),
        "the second client was served before the first left"
    );
}

/// Long polls and event streams are not cut by the connection timeouts: with every timeout at
/// 1 s, a long poll of 3 s answers 200, and an event stream opened before it still delivers
/// the lease's release afterwards.
#[tokio::test]
async fn long_polls_and_streams_outlive_the_timeouts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path(),
        &[
            "--enable-fake",
            "--header-timeout",
            "1s",
            "--body-timeout",
            "1s",
            "--keepalive-timeout",
            "1s",
        ],
    );
    setup_fake_tenant(&server, false).await;
    let client = reqwest::Client::builder()
        .timeout(BOUND)
        .build()
        .expect("client");
    let mut events = client
        .get(format!("{}/v1/tenants/acme/events", server.url))
        .bearer_auth(server.admin_token())
        .send()
        .await
        .expect("the event stream opens");
    assert_eq!(events.status(), 200);

    let (status, lease) = server
        .call(
            "POST",
            "/v1/tenants/acme/leases",
            Some(json!({ "pool": "small" })),
        )
        .await;
    assert_eq!(status, 201, "{lease}");
    let id = lease["id"].as_str().expect("lease id").to_owned();
    // The runner never reports ready, so the long poll runs to its end.
    let (status, polled) = server
        .call(
            "GET",
            &format!("/v1/tenants/acme/leases/{id}?wait=ready&timeout_s=3"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{polled}");
    assert_eq!(polled["state"], "provisioning", "{polled}");

    let (status, body) = server
        .call("DELETE", &format!("/v1/tenants/acme/leases/{id}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    // Each read is bounded by the client's timeout.
    let mut seen = String::new();
    while !(seen.contains(&id) && seen.contains("event: lease.released")) {
        let chunk = events
            .chunk()
            .await
            .expect("the event stream is still open")
            .expect("the event stream has not ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// The soft limit of the process `pid`'s open files, and its hard limit, as
/// `/proc/<pid>/limits` shows them (`unlimited` as `u64::MAX`).
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("the open-files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .skip(3)
        .take(2)
        .map(|n| n.parse().unwrap_or(u64::MAX))
        .collect();
    (numbers[0], numbers[1])
}

/// Whether the server logged, by the time it answers, a line at `level` about the open-file
/// limit that contains every one of `parts`.
async fn logged_of_the_file_limit(server: &Server, level: &str, parts: &[&str]) -> bool {
    let (status, _) = server.call("GET", "/healthz", None).await;
    assert_eq!(status, 200);
    server
        .early
        .iter()
        .cloned()
        .chain(server.drain_log())
        .any(|line| {
            line.contains(level)
                && line.contains("open-file limit")
                && parts.iter().all(|part| line.contains(part))
        })
}

/// berth raises its soft limit on open files to the hard one. Unless told otherwise, it keeps
/// no more object databases open than that limit holds (two files each, one per connection,
/// 256 more), so many tenants under a short limit take turns instead of failing to open
/// with 503; an explicit `--max-live-objects` the limit cannot hold is warned of at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_and_bounds_the_open_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A low soft limit under whatever hard limit this machine has: raised to the hard one.
    let server = Server::start_after(
        &dir.path().join("data"),
        &["--max-live-objects", "100", "--max-connections", "64"],
        "ulimit -Sn 512",
    );
    let (soft, hard) = open_file_limits(server.child.id());
    assert_eq!(
        soft,
        hard.min(1 << 20),
        "the soft limit is raised to the hard one"
    );
    // 100 objects and 64 connections need 2 × 100 + 64 + 256 = 520 files.
    if soft >= 520 {
        assert!(
            !logged_of_the_file_limit(&server, "WARN", &[]).await,
            "caps within the limit: no warning"
        );
    }
    assert!(server.terminate().success());

    // The default cap (10,000 objects, ~20,000 files) under a hard limit of 2,000: lowered to
    // (2,000 − 1,024 connections − 256) / 2 = 360, said at start, not warned of.
    let server = Server::start_after(&dir.path().join("data"), &[], "ulimit -n 2000");
    assert_eq!(open_file_limits(server.child.id()), (2000, 2000));
    assert!(
        logged_of_the_file_limit(&server, "INFO", &["\"max_live_objects\":360"]).await,
        "the default cap is lowered to what 2,000 files hold, and berth says so"
    );
    assert!(
        !logged_of_the_file_limit(&server, "WARN", &[]).await,
        "a lowered default is no reason to warn"
    );
    assert!(server.terminate().success());

    // The operator's own cap is kept, and warned of when the limit cannot hold it.
    let server = Server::start_after(
        &dir.path().join("data"),
        &["--max-live-objects", "10000"],
        "ulimit -n 2000",
    );
    assert!(
        logged_of_the_file_limit(&server, "WARN", &["\"max_live_objects\":10000"]).await,
        "an explicit cap the limit cannot hold: berth warns"
    );
    assert!(server.terminate().success());

    // Under a limit of 400 with 16 connections the default cap is (400 − 16 − 256) / 2 = 64:
    // 200 tenants, each woken by its creation, all answer, the least recently used
    // hibernating to make room. With the cap left at 10,000, openings past ~170 databases
    // would fail for want of files and answer 503.
    let server = Server::start_after(
        &dir.path().join("many"),
        &["--max-connections", "16"],
        "ulimit -n 400",
    );
    for n in 0..200 {
        let name = format!("t{n}");
        let (status, body) = server
            .call("POST", "/v1/tenants", Some(json!({ "name": name })))
            .await;
        assert_eq!(status, 201, "tenant {name}: {body}");
    }
    let open: f64 = metrics(&reqwest::Client::new(), &server)
        .await
        .lines()
        .find_map(|line| line.strip_prefix("berth_open_objects "))
        .and_then(|value| value.trim().parse().ok())
        .expect("berth_open_objects in the metrics");
    assert!(
        open <= 64.0,
        "{open} object databases open under a cap of 64"
    );
    assert!(server.terminate().success());
}
