//! Credentials never leave the server (DESIGN.md §6): not in answers, not in its SQLite files
//! in plaintext, not in its logs. Every kind of secret berth holds is set through the real
//! API, then every answer, every file of the data directory and the server's log are searched
//! for it.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::inproc::{Harness, call_process, rand_u128};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The credentials the secret tests store, each distinctive enough to grep for.
struct Secrets {
    hetzner: String,
    http: String,
}

impl Secrets {
    fn new() -> Secrets {
        Secrets {
            hetzner: format!("hcloudSECRET{:032x}", rand_u128()),
            // `whsec_` + base64 (hex digits are base64 characters; 64 of them decode to 48 bytes).
            http: format!("whsec_{:032x}{:032x}", rand_u128(), rand_u128()),
        }
    }

    fn all(&self) -> [&str; 2] {
        [&self.hetzner, &self.http]
    }
}

/// A stand-in for a provider API on 127.0.0.1 that refuses every request with 401 and echoes
/// the whole request head (its `Authorization` header included) in its error message — the
/// worst an upstream can do.
async fn echo_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then as much body as Content-Length says (bounded).
                let head_end = loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    if buffer.len() > 1 << 20 {
                        return;
                    }
                };
                let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0)
                    .min(1 << 20);
                while buffer.len() < head_end + length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
                let message = format!("invalid credentials in request: {head}");
                let body =
                    json!({ "error": { "code": "unauthorized", "message": message } }).to_string();
                let response = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

/// What [`exercise`] saw: every answer as `METHOD path → status body`, and the tokens made.
struct Exercise {
    answers: Vec<String>,
    tokens: Vec<String>,
}

/// Drives a server at `base`: tenant `vault` with a `hetzner` and an `http` account holding
/// `secrets`, on the echo server; requests that could echo a secret (bad credentials, a price
/// lookup and lease creates the upstream refuses, reconciliation); then every GET route as the
/// tenant's admin and as the operator.
async fn exercise(base: &str, admin: &str, secrets: &Secrets, echo: &str) -> Exercise {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let mut answers = Vec::new();
    let mut call = async |method: Method, path: &str, token: &str, body: Option<Value>| {
        let (status, value, text) =
            call_process(&client, base, method.clone(), path, token, body).await;
        answers.push(format!("{method} {path} → {status} {text}"));
        (status, value)
    };
    let (status, _) = call(
        Method::POST,
        "/v1/tenants",
        admin,
        Some(json!({ "name": "vault" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut tokens = Vec::new();
    for scope in ["tenant:admin", "leases:write", "leases:read"] {
        let (status, created) = call(
            Method::POST,
            "/v1/tenants/vault/tokens",
            admin,
            Some(json!({ "scopes": [scope] })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        tokens.push(created["token"].as_str().expect("token").to_owned());
    }
    let owner = tokens[0].clone();
    let hetzner = json!({
        "kind": "hetzner",
        "config": { "base_url": echo, "max_retries": 0, "request_timeout_ms": 5000 },
        "credentials": { "token": secrets.hetzner },
    });
    let (status, account) = call(
        Method::PUT,
        "/v1/tenants/vault/providers/hz",
        &owner,
        Some(hetzner),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{account}");
    assert_eq!(account["has_credentials"], true);
    let (status, account) = call(
        Method::PUT,
        "/v1/tenants/vault/providers/hooks",
        &owner,
        Some(json!({
            "kind": "http",
            "config": { "url": echo, "timeout_ms": 5000 },
            "credentials": { "secret": secrets.http },
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{account}");
    // Credentials of the wrong shape are refused without being echoed.
    for body in [
        json!({ "kind": "hetzner", "credentials": { "token": secrets.hetzner, "extra": secrets.hetzner } }),
        json!({ "kind": "hetzner", "credentials": { secrets.hetzner.as_str(): "x" } }),
        json!({ "kind": "hetzner", "credentials": { "token": format!("has space {}", secrets.hetzner) } }),
        json!({ "kind": "hetzner", "credentials": secrets.hetzner }),
        json!({ "kind": "http", "config": { "url": echo }, "credentials": { "secret": format!("nope{}", secrets.hetzner) } }),
        json!({ "kind": "fake", "credentials": { "token": secrets.hetzner } }),
    ] {
        // A tenant admin may not configure `fake` at all: refused before it is read.
        let refused = if body["kind"] == "fake" {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        let (status, _) = call(
            Method::PUT,
            "/v1/tenants/vault/providers/bad",
            &owner,
            Some(body),
        )
        .await;
        assert_eq!(status, refused);
    }
    // A price lookup the upstream refuses, echoing the token.
    let (status, _) = call(
        Method::PUT,
        "/v1/tenants/vault/pools/hz-auto",
        &owner,
        Some(json!({ "provider": "hz", "machine_type": "cx22", "image": "ubuntu-24.04" })),
    )
    .await;
    assert!(status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE);
    let mut leases = Vec::new();
    for (pool, provider) in [("hz-pool", "hz"), ("http-pool", "hooks")] {
        let (status, _) = call(
            Method::PUT,
            &format!("/v1/tenants/vault/pools/{pool}"),
            &owner,
            Some(json!({
                "provider": provider, "machine_type": "cx22", "image": "ubuntu-24.04",
                "hourly_price_micros": 1_000,
            })),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, lease) = call(
            Method::POST,
            "/v1/tenants/vault/leases",
            &tokens[1],
            Some(json!({ "pool": pool, "labels": { "job": "1" } })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{lease}");
        leases.push(lease["id"].as_str().expect("id").to_owned());
    }
    // The creates fail at the echo server: wait (bounded) until each lease records the error.
    for id in &leases {
        let mut recorded = false;
        for _ in 0..100 {
            let (_, lease) = call(
                Method::GET,
                &format!("/v1/tenants/vault/leases/{id}"),
                &tokens[2],
                None,
            )
            .await;
            if lease["last_error"].is_string() {
                recorded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(recorded, "the provider's refusal of {id} is recorded");
    }
    for token in [owner.as_str(), admin] {
        for path in [
            "/v1/tenants/vault".to_owned(),
            "/v1/tenants/vault/tokens".to_owned(),
            "/v1/tenants/vault/providers".to_owned(),
            "/v1/tenants/vault/pools".to_owned(),
            "/v1/tenants/vault/leases".to_owned(),
            format!("/v1/tenants/vault/leases/{}", leases[0]),
            format!(
                "/v1/tenants/vault/leases/{}?wait=ended&timeout_s=1",
                leases[1]
            ),
            "/v1/tenants/vault/usage".to_owned(),
            "/v1/tenants/vault/ledger".to_owned(),
            "/v1/tenants".to_owned(),
            "/metrics".to_owned(),
            "/openapi.json".to_owned(),
            "/healthz".to_owned(),
            "/readyz".to_owned(),
        ] {
            let (status, _) = call(Method::GET, &path, token, None).await;
            let expected = if path == "/v1/tenants" && token == owner {
                StatusCode::FORBIDDEN // the operator's list
            } else {
                StatusCode::OK
            };
            assert_eq!(status, expected, "GET {path}");
        }
    }
    tokens.push(admin.to_owned());
    Exercise { answers, tokens }
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path.display().to_string(), bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Provider secrets and tokens never appear in any answer, nor in plaintext in the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_answers_or_files() {
    // Credentials never leave the server: no answer of any route — success, refusal, or a
    // provider error that echoed the token upstream — contains a provider secret; the SQLite
    // files hold neither the secrets nor any tenant token in plaintext (token hashes only).
    let h = Harness::start().await;
    let echo = echo_server().await;
    let secrets = Secrets::new();
    let seen = exercise(&h.url, &h.admin, &secrets, &echo).await;
    assert!(seen.answers.len() > 40);
    for answer in &seen.answers {
        for secret in secrets.all() {
            assert!(!answer.contains(secret), "a secret in an answer: {answer}");
        }
    }
    let listed = seen
        .answers
        .iter()
        .find(|a| a.starts_with("GET /v1/tenants/vault/providers "))
        .expect("providers listed");
    assert!(listed.contains("\"has_credentials\":true"), "{listed}");
    for token in &seen.tokens[..3] {
        assert_eq!(
            seen.answers
                .iter()
                .filter(|a| a.contains(token.as_str()))
                .count(),
            1,
            "a tenant token is shown once, when created"
        );
    }

    h.assert_documented().await;
    // Stop, so that every byte is in the files (WAL included), then read them all.
    let mut h = h;
    h.stop().await;
    let files = files(h.dir.path());
    let directory: Vec<&(String, Vec<u8>)> = files
        .iter()
        .filter(|(path, _)| path.contains("directory.sqlite"))
        .collect();
    assert!(!directory.is_empty());
    for (path, bytes) in &files {
        for secret in secrets.all() {
            assert!(
                !contains(bytes, secret),
                "{path} holds a secret in plaintext"
            );
        }
        for token in &seen.tokens {
            assert!(!contains(bytes, token), "{path} holds a token in plaintext");
        }
    }
    // The checks read the right files: the directory holds the tokens' hashes, and the
    // tenant's database the accounts' non-secret config.
    for token in &seen.tokens[..3] {
        let hash = broker::secrets::token_hash(token);
        assert!(
            directory.iter().any(|(_, bytes)| contains(bytes, &hash)),
            "the token's hash is in the directory"
        );
    }
    assert!(
        files
            .iter()
            .any(|(path, bytes)| path.contains("objects") && contains(bytes, "\"max_retries\":0")),
        "the tenant's database holds the account config"
    );
}

/// The real binary at `BERTH_LOG=debug` never logs a provider secret or a bearer token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_logs() {
    // Credentials never appear in any log line: the real `berth` binary with `BERTH_LOG=debug`
    // and JSON logs, driven through the same requests (provider errors that echo the token
    // included), logs neither a provider secret nor a bearer token.
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = format!("adm_{:032x}", rand_u128());
    let echo = echo_server().await;
    let secrets = Secrets::new();
    let mut server = support::Server::start_with_env(
        dir.path(),
        &["--allow-private-providers", "--provider-timeout", "5s"],
        &[("BERTH_LOG", "debug"), ("BERTH_ADMIN_TOKEN", &admin)],
    );
    let seen = exercise(&server.url, &admin, &secrets, &echo).await;
    // The provider failures were logged before the leases recorded them (exercise waited for
    // that); stop the server and read everything it logged.
    support::signal(&server.child, "TERM");
    let status = support::wait_bounded(&mut server.child);
    assert!(status.success(), "berth exits 0 on SIGTERM");
    let mut lines = Vec::new();
    for _ in 0..100_000 {
        match server.log.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let levels: BTreeMap<String, usize> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["level"].as_str().map(str::to_owned))
        .fold(BTreeMap::new(), |mut counts, level| {
            *counts.entry(level).or_default() += 1;
            counts
        });
    assert!(
        levels.get("DEBUG").is_some_and(|n| *n > 0),
        "debug logging is on: {levels:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("hetzner") || l.contains("provider")),
        "the provider failures were logged"
    );
    for line in &lines {
        for secret in secrets.all() {
            assert!(!line.contains(secret), "a secret in a log line: {line}");
        }
        for token in &seen.tokens {
            assert!(
                !line.contains(token.as_str()),
                "a token in a log line: {line}"
            );
        }
    }
    // And the answers of the real binary, like the in-process server's, hold no secret.
    for answer in &seen.answers {
        for secret in secrets.all() {
            assert!(!answer.contains(secret), "a secret in an answer: {answer}");
        }
    }
}
