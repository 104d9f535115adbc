//! The GitHub runners client against a local fake of GitHub's API that answers as
//! `../shared/reference/github-jit-runners.md` says: JIT registration with 409 on a taken
//! name, listing by name and by page, removal with 404 and 422 busy, rate limits, and the App
//! token exchange with the JWT verified against the app's public key.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use providers::Environment;
use providers::github::{Connection, Credentials, Github, Removal, Scope};
use serde::Deserialize;
use serde_json::{Value, json};

const TOKEN: &str = "ghp_test_token_0123456789";
const APP_ID: u64 = 4242;
const INSTALLATION: u64 = 77;
const APP_KEY: &str = include_str!("fixtures/github-app-test-key.pem");
const APP_PUBLIC_KEY: &str = include_str!("fixtures/github-app-test-key.pub.pem");

#[derive(Clone, Debug)]
struct Registered {
    id: i64,
    name: String,
    labels: Vec<String>,
    busy: bool,
}

#[derive(Default)]
struct Fake {
    runners: Vec<Registered>,
    next_id: i64,
    /// Installation tokens issued, and how long each is valid.
    issued: Vec<String>,
    valid_for_s: i64,
    /// The next request is answered with a primary rate limit resetting this far ahead.
    rate_limit_reset_in_s: Option<i64>,
    /// Every JIT config handed out.
    configs: Vec<String>,
    bearer_seen: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

fn problem(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"message": message, "documentation_url": "https://docs.github.com"})),
    )
        .into_response()
}

/// Checks GitHub's headers and the bearer token; `None` when the request may go on.
fn refuse(fake: &mut Fake, headers: &HeaderMap) -> Option<Response> {
    if headers.get("accept").and_then(|v| v.to_str().ok()) != Some("application/vnd.github+json")
        || headers
            .get("x-github-api-version")
            .and_then(|v| v.to_str().ok())
            != Some("2022-11-28")
    {
        return Some(problem(StatusCode::BAD_REQUEST, "missing GitHub headers"));
    }
    if let Some(reset_in) = fake.rate_limit_reset_in_s.take() {
        let reset = chrono::Utc::now().timestamp() + reset_in;
        let mut response = problem(StatusCode::FORBIDDEN, "API rate limit exceeded");
        let h = response.headers_mut();
        h.insert("x-ratelimit-remaining", "0".parse().expect("a valid value"));
        h.insert(
            "x-ratelimit-reset",
            reset.to_string().parse().expect("a valid value"),
        );
        return Some(response);
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    fake.bearer_seen.push(bearer.clone());
    if bearer != TOKEN && !fake.issued.contains(&bearer) {
        return Some(problem(StatusCode::UNAUTHORIZED, "Bad credentials"));
    }
    None
}

#[derive(Deserialize)]
struct JitRequest {
    name: String,
    runner_group_id: i64,
    labels: Vec<String>,
}

async fn generate(
    State(fake): State<Shared>,
    Path(org): Path<String>,
    headers: HeaderMap,
    Json(body): Json<JitRequest>,
) -> Response {
    let mut fake = fake.lock().expect("the fake's lock");
    if let Some(refused) = refuse(&mut fake, &headers) {
        return refused;
    }
    if org != "acme" {
        return problem(StatusCode::NOT_FOUND, "Not Found");
    }
    if body.runner_group_id != 1 {
        return problem(StatusCode::NOT_FOUND, "runner group not found");
    }
    if body.labels.is_empty() || body.labels.len() > 100 {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "labels: 1 to 100");
    }
    if fake.runners.iter().any(|r| r.name == body.name) {
        return problem(
            StatusCode::CONFLICT,
            "Already exists - A runner with the name already exists.",
        );
    }
    fake.next_id += 1;
    let id = fake.next_id;
    let config = format!("JITCONFIG-{id}-{}", body.name);
    fake.configs.push(config.clone());
    fake.runners.push(Registered {
        id,
        name: body.name.clone(),
        labels: body.labels.clone(),
        busy: false,
    });
    let labels: Vec<Value> = body
        .labels
        .iter()
        .map(|l| json!({"id": 1, "name": l, "type": "custom"}))
        .collect();
    (
        StatusCode::CREATED,
        Json(json!({
            "runner": {"id": id, "name": body.name, "os": "unknown", "status": "offline", "busy": false, "labels": labels},
            "encoded_jit_config": config,
        })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    name: Option<String>,
    per_page: Option<usize>,
    page: Option<usize>,
}

async fn list(
    State(fake): State<Shared>,
    Path(org): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let mut fake = fake.lock().expect("the fake's lock");
    if let Some(refused) = refuse(&mut fake, &headers) {
        return refused;
    }
    if org != "acme" {
        return problem(StatusCode::NOT_FOUND, "Not Found");
    }
    let matching: Vec<&Registered> = fake
        .runners
        .iter()
        .filter(|r| query.name.as_ref().is_none_or(|n| *n == r.name))
        .collect();
    let per_page = query.per_page.unwrap_or(30).clamp(1, 100);
    let page = query.page.unwrap_or(1).max(1);
    let runners: Vec<Value> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| json!({"id": r.id, "name": r.name, "os": "linux", "status": "online", "busy": r.busy, "labels": []}))
        .collect();
    Json(json!({"total_count": matching.len(), "runners": runners})).into_response()
}

async fn remove(
    State(fake): State<Shared>,
    Path((_org, id)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Response {
    let mut fake = fake.lock().expect("the fake's lock");
    if let Some(refused) = refuse(&mut fake, &headers) {
        return refused;
    }
    match fake.runners.iter().position(|r| r.id == id) {
        None => problem(StatusCode::NOT_FOUND, "Not Found"),
        Some(i) if fake.runners[i].busy => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Bad request - Runner is currently running a job",
        ),
        Some(i) => {
            fake.runners.remove(i);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

#[derive(Deserialize)]
struct AppClaims {
    iss: String,
    iat: i64,
    exp: i64,
}

/// The App token exchange: the JWT must verify with the app's public key (RS256), name the
/// app, and live at most ten minutes.
async fn access_token(
    State(fake): State<Shared>,
    Path(installation): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let mut fake = fake.lock().expect("the fake's lock");
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(APP_PUBLIC_KEY.as_bytes())
        .expect("the call succeeds");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let claims = match jsonwebtoken::decode::<AppClaims>(jwt, &key, &validation) {
        Ok(data) => data.claims,
        Err(_) => {
            return problem(
                StatusCode::UNAUTHORIZED,
                "A JSON web token could not be decoded",
            );
        }
    };
    if claims.iss != APP_ID.to_string() || claims.exp - claims.iat > 600 {
        return problem(
            StatusCode::UNAUTHORIZED,
            "'Expiration time' claim ('exp') is too far in the future",
        );
    }
    if installation != INSTALLATION {
        return problem(StatusCode::NOT_FOUND, "Not Found");
    }
    let token = format!("ghs_installation_{}", fake.issued.len() + 1);
    fake.issued.push(token.clone());
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(fake.valid_for_s);
    (
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": expires_at.to_rfc3339()})),
    )
        .into_response()
}

async fn fake_github() -> (SocketAddr, Shared) {
    let fake: Shared = Arc::new(Mutex::new(Fake {
        valid_for_s: 3600,
        ..Fake::default()
    }));
    let app = Router::new()
        .route(
            "/api/v3/orgs/{org}/actions/runners/generate-jitconfig",
            post(generate),
        )
        .route("/api/v3/orgs/{org}/actions/runners", get(list))
        .route("/api/v3/orgs/{org}/actions/runners/{id}", delete(remove))
        .route(
            "/api/v3/app/installations/{id}/access_tokens",
            post(access_token),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("the call succeeds");
    let addr = listener.local_addr().expect("the call succeeds");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("the call succeeds") });
    (addr, fake)
}

fn env() -> Environment {
    let dir = std::env::temp_dir();
    let mut env = Environment::new(&dir, &dir);
    env.allow_private_network = true;
    env
}

fn client(addr: SocketAddr, credentials: Credentials) -> Github {
    Github::new(
        Connection {
            api_url: format!("http://{addr}/api/v3")
                .parse()
                .expect("a valid value"),
            scope: Scope::Org("acme".into()),
            runner_group_id: 1,
            credentials,
        },
        &env(),
    )
    .expect("a valid connection")
}

fn labels() -> Vec<String> {
    vec!["self-hosted".into(), "linux-8c".into()]
}

/// Register, find, list, remove: the lifecycle a lease drives.
#[tokio::test]
async fn a_registration_lives_and_is_removed() {
    let (addr, fake) = fake_github().await;
    let github = client(addr, Credentials::Token(TOKEN.into()));
    let jit = github
        .register("berth-lease-1", &labels())
        .await
        .expect("the call succeeds");
    assert_eq!(jit.name, "berth-lease-1");
    assert_eq!(
        fake.lock().expect("the fake's lock").configs,
        vec![jit.encoded_config().to_string()]
    );
    assert_eq!(
        fake.lock().expect("the fake's lock").runners[0].labels,
        labels()
    );

    let found = github
        .find("berth-lease-1")
        .await
        .expect("the call succeeds")
        .expect("registered");
    assert_eq!(found.id, jit.runner_id);
    assert_eq!(
        github
            .find("berth-lease-2")
            .await
            .expect("the call succeeds"),
        None
    );

    assert_eq!(
        github
            .remove(jit.runner_id)
            .await
            .expect("the call succeeds"),
        Removal::Removed
    );
    assert_eq!(
        github
            .remove(jit.runner_id)
            .await
            .expect("the call succeeds"),
        Removal::Gone
    );
    assert!(fake.lock().expect("the fake's lock").runners.is_empty());
}

/// A name already registered (a retry after a lost answer) is removed and registered afresh
/// when idle; a busy one is refused, permanently, and left alone.
#[tokio::test]
async fn a_taken_name_is_reclaimed_only_when_idle() {
    let (addr, fake) = fake_github().await;
    let github = client(addr, Credentials::Token(TOKEN.into()));
    let first = github
        .register("berth-lease-1", &labels())
        .await
        .expect("the call succeeds");
    let second = github
        .register("berth-lease-1", &labels())
        .await
        .expect("the call succeeds");
    assert_ne!(first.runner_id, second.runner_id);
    assert_eq!(fake.lock().expect("the fake's lock").runners.len(), 1);

    fake.lock().expect("the fake's lock").runners[0].busy = true;
    let refused = github
        .register("berth-lease-1", &labels())
        .await
        .expect_err("the call fails");
    assert!(!refused.is_retryable(), "{refused:?}");
    assert!(
        refused.to_string().contains("already running a job"),
        "{refused}"
    );
    let id = fake.lock().expect("the fake's lock").runners[0].id;
    assert_eq!(
        github.remove(id).await.expect("the call succeeds"),
        Removal::Busy
    );
    assert_eq!(fake.lock().expect("the fake's lock").runners.len(), 1);
}

/// Listings page through every registration.
#[tokio::test]
async fn listings_read_every_page() {
    let (addr, _fake) = fake_github().await;
    let github = client(addr, Credentials::Token(TOKEN.into()));
    for i in 0..205 {
        github
            .register(&format!("r-{i}"), &labels())
            .await
            .expect("the call succeeds");
    }
    let listed = github.list().await.expect("the call succeeds");
    assert_eq!(listed.len(), 205);
    let mut names: Vec<String> = listed.into_iter().map(|r| r.name).collect();
    names.dedup();
    assert_eq!(names.len(), 205);
}

/// A primary rate limit is transient with the wait until its reset; GitHub's refusals that
/// a person must fix are permanent and say GitHub's message; no error carries a secret.
#[tokio::test]
async fn rate_limits_wait_and_refusals_are_permanent() {
    let (addr, fake) = fake_github().await;
    let github = client(addr, Credentials::Token(TOKEN.into()));
    fake.lock().expect("the fake's lock").rate_limit_reset_in_s = Some(120);
    let limited = github
        .register("r", &labels())
        .await
        .expect_err("the call fails");
    match &limited {
        providers::Error::Transient {
            retry_after: Some(wait),
            ..
        } => assert!(
            *wait > Duration::from_secs(100) && *wait <= Duration::from_secs(120),
            "{wait:?}"
        ),
        other => panic!("not a rate limit: {other:?}"),
    }

    let other_org = Github::new(
        Connection {
            api_url: format!("http://{addr}/api/v3")
                .parse()
                .expect("a valid value"),
            scope: Scope::Org("someone-else".into()),
            runner_group_id: 1,
            credentials: Credentials::Token(TOKEN.into()),
        },
        &env(),
    )
    .expect("the call succeeds");
    let missing = other_org
        .register("r", &labels())
        .await
        .expect_err("the call fails");
    assert!(!missing.is_retryable());
    assert!(missing.to_string().contains("Not Found"), "{missing}");

    let bad_token = client(addr, Credentials::Token("ghp_wrong".into()));
    let refused = bad_token
        .register("r", &labels())
        .await
        .expect_err("the call fails");
    assert!(!refused.is_retryable());
    assert!(refused.to_string().contains("Bad credentials"), "{refused}");
    for error in [&limited, &missing, &refused] {
        let text = format!("{error} {error:?}");
        assert!(
            !text.contains(TOKEN) && !text.contains("ghp_wrong") && !text.contains("JITCONFIG")
        );
    }
}

/// An App's JWT verifies at GitHub; its installation token is cached while it has more than
/// five minutes left and renewed after.
#[tokio::test]
async fn app_tokens_are_exchanged_cached_and_renewed() {
    let (addr, fake) = fake_github().await;
    let app = || Credentials::App {
        app_id: APP_ID,
        installation_id: INSTALLATION,
        private_key_pem: APP_KEY.into(),
    };
    let github = client(addr, app());
    github
        .register("a", &labels())
        .await
        .expect("the call succeeds");
    github.find("a").await.expect("the call succeeds");
    github.list().await.expect("the call succeeds");
    {
        let fake = fake.lock().expect("the fake's lock");
        assert_eq!(fake.issued, vec!["ghs_installation_1".to_string()]);
        assert!(fake.bearer_seen.iter().all(|b| b == "ghs_installation_1"));
    }

    // Tokens that expire within five minutes are renewed at every use.
    fake.lock().expect("the fake's lock").valid_for_s = 120;
    let short = client(addr, app());
    short.find("a").await.expect("the call succeeds");
    short.find("a").await.expect("the call succeeds");
    assert_eq!(fake.lock().expect("the fake's lock").issued.len(), 3);

    // Another installation: GitHub's refusal, permanent.
    let other = client(
        addr,
        Credentials::App {
            app_id: APP_ID,
            installation_id: 78,
            private_key_pem: APP_KEY.into(),
        },
    );
    let refused = other.find("a").await.expect_err("the call fails");
    assert!(!refused.is_retryable(), "{refused:?}");
}

/// Bad settings are refused before any request: a key that is not RSA, an empty token, a URL
/// that is not http(s).
#[test]
fn bad_connections_are_refused() {
    let connection = |api_url: &str, credentials| Connection {
        api_url: api_url.parse().expect("a valid value"),
        scope: Scope::Org("acme".into()),
        runner_group_id: 1,
        credentials,
    };
    let key = Credentials::App {
        app_id: 1,
        installation_id: 1,
        private_key_pem: "-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----"
            .into(),
    };
    assert!(Github::new(connection("https://api.github.com", key), &env()).is_err());
    assert!(
        Github::new(
            connection("https://api.github.com", Credentials::Token(" ".into())),
            &env()
        )
        .is_err()
    );
    assert!(
        Github::new(
            connection("ftp://api.github.com", Credentials::Token("t".into())),
            &env()
        )
        .is_err()
    );
    assert!(
        Github::new(
            connection("https://api.github.com", Credentials::Token("t".into())),
            &env()
        )
        .is_ok()
    );
}

/// Without the operator's leave, an API URL on a private address is refused before anything
/// is sent (a tenant cannot aim berth at the operator's network).
#[tokio::test]
async fn a_private_api_url_is_refused_by_default() {
    let (addr, fake) = fake_github().await;
    let dir = std::env::temp_dir();
    let github = Github::new(
        Connection {
            api_url: format!("http://{addr}/api/v3")
                .parse()
                .expect("a valid value"),
            scope: Scope::Org("acme".into()),
            runner_group_id: 1,
            credentials: Credentials::Token(TOKEN.into()),
        },
        &Environment::new(&dir, &dir),
    )
    .expect("the call succeeds");
    let refused = github
        .register("r", &labels())
        .await
        .expect_err("the call fails");
    assert!(!refused.is_retryable(), "{refused:?}");
    assert!(fake.lock().expect("the fake's lock").bearer_seen.is_empty());
}
