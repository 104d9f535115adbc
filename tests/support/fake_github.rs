//! A local fake of GitHub's self-hosted runners API that answers as
//! `../shared/reference/github-jit-runners.md` says: JIT registration (a config it remembers
//! per name; 409 on a taken name), listing by name and by page, removal (204, 404 gone, 422
//! while busy), rate limits, and the App installation-token exchange with the JWT verified
//! against the app's public key (`providers/tests/fixtures/github-app-test-key{,.pub}.pem`).
//!
//! It serves `/api/v3/…` (a GitHub Enterprise Server base) for the organisation `acme` and the
//! repository `acme/app`, runs on its own runtime thread (usable from synchronous and async
//! tests alike), and lets a test script failures: the next registrations' answers, busy
//! runners, a rate limit, short-lived installation tokens.
//!
//! Shared by the end-to-end suites (`tests/support`) and the GitHub client's own tests
//! (`providers/tests/github.rs`, which includes this file by path).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

pub const TOKEN: &str = "ghp_fake_token_0123456789abcdef";
pub const APP_ID: u64 = 4242;
pub const INSTALLATION: u64 = 77;
pub const APP_KEY: &str = include_str!("../../providers/tests/fixtures/github-app-test-key.pem");
const APP_PUBLIC_KEY: &str =
    include_str!("../../providers/tests/fixtures/github-app-test-key.pub.pem");

/// One registered runner.
#[derive(Clone, Debug)]
pub struct Runner {
    pub id: i64,
    pub name: String,
    pub labels: Vec<String>,
    pub runner_group_id: i64,
    pub busy: bool,
    pub config: String,
}

/// What the fake knows and what it was asked.
#[derive(Default)]
pub struct State0 {
    pub runners: Vec<Runner>,
    next_id: i64,
    /// Installation tokens issued.
    pub issued: Vec<String>,
    /// The next registrations are answered with these (status, message) first.
    pub fail_registrations: VecDeque<(u16, String)>,
    /// The next request of any kind answers a primary rate limit resetting this far ahead.
    pub rate_limit_in_s: Option<i64>,
    /// Every JIT config handed out, by runner name.
    pub configs: Vec<(String, String)>,
    /// Names of the runners removed.
    pub removed: Vec<String>,
    /// Removal attempts refused with 422 (busy).
    pub busy_refusals: u32,
    /// Registrations attempted (answered or refused).
    pub registrations: u32,
    /// Registrations answer only after this long (a slow GitHub).
    pub registration_delay_ms: u64,
    /// How long the installation tokens issued from now on are valid (`None`: an hour).
    pub token_valid_s: Option<i64>,
    /// The bearer token of every API request (the token exchange aside), in order.
    pub bearers: Vec<String>,
}

pub type Shared = Arc<Mutex<State0>>;

/// A running fake.
pub struct FakeGithub {
    pub addr: SocketAddr,
    pub state: Shared,
}

impl FakeGithub {
    /// Starts the fake on 127.0.0.1 on a runtime thread of its own.
    pub fn start() -> FakeGithub {
        let state: Shared = Arc::new(Mutex::new(State0::default()));
        let app = router(state.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the fake GitHub");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1:0");
                tx.send(listener.local_addr().expect("local addr"))
                    .expect("the test waits for the address");
                axum::serve(listener, app).await.expect("the fake serves");
            });
        });
        let addr = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the fake GitHub starts");
        FakeGithub { addr, state }
    }

    /// The API base URL (GitHub Enterprise Server form).
    pub fn api_url(&self) -> String {
        format!("http://{}/api/v3", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State0> {
        self.state.lock().expect("the fake's lock")
    }

    /// The runner registered under `name`, if any.
    pub fn runner(&self, name: &str) -> Option<Runner> {
        self.lock().runners.iter().find(|r| r.name == name).cloned()
    }

    /// The config handed out for `name` (the last one).
    pub fn config_of(&self, name: &str) -> Option<String> {
        self.lock()
            .configs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
    }

    /// Every config handed out.
    pub fn configs(&self) -> Vec<String> {
        self.lock().configs.iter().map(|(_, c)| c.clone()).collect()
    }

    /// Marks `name`'s runner busy (running a job) or idle.
    pub fn set_busy(&self, name: &str, busy: bool) {
        let mut state = self.lock();
        for runner in state.runners.iter_mut().filter(|r| r.name == name) {
            runner.busy = busy;
        }
    }

    /// Registers a runner berth did not make (as if another tool, or an earlier run, had).
    pub fn add_runner(&self, name: &str) -> i64 {
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.runners.push(Runner {
            id,
            name: name.to_owned(),
            labels: vec!["self-hosted".into()],
            runner_group_id: 1,
            busy: false,
            config: String::new(),
        });
        id
    }

    /// The next registrations answer `status` with `message`, `times` times.
    pub fn fail_registrations(&self, status: u16, message: &str, times: usize) {
        let mut state = self.lock();
        for _ in 0..times {
            state
                .fail_registrations
                .push_back((status, message.to_owned()));
        }
    }

    /// Registrations answer `ms` milliseconds late.
    pub fn delay_registrations(&self, ms: u64) {
        self.lock().registration_delay_ms = ms;
    }

    /// The next request answers a primary rate limit that resets `in_s` seconds later.
    pub fn rate_limit_next(&self, in_s: i64) {
        self.lock().rate_limit_in_s = Some(in_s);
    }

    pub fn removed(&self) -> Vec<String> {
        self.lock().removed.clone()
    }

    pub fn busy_refusals(&self) -> u32 {
        self.lock().busy_refusals
    }

    pub fn registrations(&self) -> u32 {
        self.lock().registrations
    }

    pub fn issued_tokens(&self) -> usize {
        self.lock().issued.len()
    }

    /// Every installation token issued, in order.
    pub fn issued(&self) -> Vec<String> {
        self.lock().issued.clone()
    }

    /// Installation tokens issued from now on are valid for `s` seconds.
    pub fn token_valid_for(&self, s: i64) {
        self.lock().token_valid_s = Some(s);
    }

    /// The bearer token of every API request so far (the token exchange aside).
    pub fn bearers(&self) -> Vec<String> {
        self.lock().bearers.clone()
    }

    /// The runners registered now.
    pub fn runners(&self) -> Vec<Runner> {
        self.lock().runners.clone()
    }

    /// Waits (bounded: 300 × 100 ms) until `done` holds of the fake's state.
    pub fn wait_until(&self, what: &str, done: impl Fn(&State0) -> bool) {
        for _ in 0..300 {
            if done(&self.lock()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the fake GitHub never saw: {what}");
    }

    /// [`FakeGithub::wait_until`] for async tests (sleeps on the runtime).
    pub async fn wait_until_async(&self, what: &str, done: impl Fn(&State0) -> bool) {
        for _ in 0..300 {
            if done(&self.lock()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the fake GitHub never saw: {what}");
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route(
            "/api/v3/orgs/{org}/actions/runners/generate-jitconfig",
            post(generate_org),
        )
        .route(
            "/api/v3/repos/{owner}/{repo}/actions/runners/generate-jitconfig",
            post(generate_repo),
        )
        .route("/api/v3/orgs/{org}/actions/runners", get(list_org))
        .route(
            "/api/v3/repos/{owner}/{repo}/actions/runners",
            get(list_repo),
        )
        .route(
            "/api/v3/orgs/{org}/actions/runners/{id}",
            delete(remove_org),
        )
        .route(
            "/api/v3/repos/{owner}/{repo}/actions/runners/{id}",
            delete(remove_repo),
        )
        .route(
            "/api/v3/app/installations/{id}/access_tokens",
            post(access_token),
        )
        .with_state(state)
}

fn problem(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"message": message, "documentation_url": "https://docs.github.com/rest"})),
    )
        .into_response()
}

/// GitHub's headers, a rate limit if one is scripted, and the bearer token.
fn refuse(state: &mut State0, headers: &HeaderMap) -> Option<Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("accept") != Some("application/vnd.github+json")
        || header("x-github-api-version") != Some("2022-11-28")
    {
        return Some(problem(StatusCode::BAD_REQUEST, "missing GitHub headers"));
    }
    if let Some(reset_in) = state.rate_limit_in_s.take() {
        let reset = chrono::Utc::now().timestamp() + reset_in;
        let mut response = problem(StatusCode::FORBIDDEN, "API rate limit exceeded");
        let h = response.headers_mut();
        h.insert(
            "x-ratelimit-remaining",
            "0".parse().expect("a header value"),
        );
        h.insert(
            "x-ratelimit-reset",
            reset.to_string().parse().expect("a header value"),
        );
        return Some(response);
    }
    let bearer = header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    state.bearers.push(bearer.to_owned());
    if bearer != TOKEN && !state.issued.iter().any(|t| t == bearer) {
        return Some(problem(StatusCode::UNAUTHORIZED, "Bad credentials"));
    }
    None
}

fn known_scope(scope: &str) -> bool {
    scope == "acme" || scope == "acme/app"
}

async fn generate_org(
    State(state): State<Shared>,
    Path(org): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    delay(&state).await;
    generate(&state, &org, &headers, &body)
}

/// Waits the scripted registration delay (outside the lock).
async fn delay(state: &Shared) {
    let ms = state.lock().expect("the fake's lock").registration_delay_ms;
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

async fn generate_repo(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    delay(&state).await;
    generate(&state, &format!("{owner}/{repo}"), &headers, &body)
}

fn generate(state: &Shared, scope: &str, headers: &HeaderMap, body: &Value) -> Response {
    let mut state = state.lock().expect("the fake's lock");
    if let Some(refused) = refuse(&mut state, headers) {
        return refused;
    }
    state.registrations += 1;
    if let Some((status, message)) = state.fail_registrations.pop_front() {
        return problem(StatusCode::from_u16(status).expect("a status"), &message);
    }
    if !known_scope(scope) {
        return problem(StatusCode::NOT_FOUND, "Not Found");
    }
    let Some(group) = body["runner_group_id"].as_i64() else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "runner_group_id is required",
        );
    };
    if group != 1 {
        return problem(StatusCode::NOT_FOUND, "runner group not found");
    }
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    let labels: Vec<String> = body["labels"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if name.is_empty() || labels.is_empty() || labels.len() > 100 {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "name and 1 to 100 labels");
    }
    if state.runners.iter().any(|r| r.name == name) {
        return problem(
            StatusCode::CONFLICT,
            "Already exists - A runner with the name already exists.",
        );
    }
    state.next_id += 1;
    let id = state.next_id;
    let config = format!("eyJGAKEJIT{id:06}{}", name.replace('_', "Z"));
    state.configs.push((name.clone(), config.clone()));
    state.runners.push(Runner {
        id,
        name: name.clone(),
        labels: labels.clone(),
        runner_group_id: group,
        busy: false,
        config: config.clone(),
    });
    let labels: Vec<Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| json!({"id": i + 1, "name": l, "type": "custom"}))
        .collect();
    (
        StatusCode::CREATED,
        Json(json!({
            "runner": {"id": id, "name": name, "os": "unknown", "status": "offline", "busy": false, "labels": labels},
            "encoded_jit_config": config,
        })),
    )
        .into_response()
}

async fn list_org(
    State(state): State<Shared>,
    Path(org): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    list(&state, &org, &query, &headers)
}

async fn list_repo(
    State(state): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    list(&state, &format!("{owner}/{repo}"), &query, &headers)
}

fn list(state: &Shared, scope: &str, query: &[(String, String)], headers: &HeaderMap) -> Response {
    let mut state = state.lock().expect("the fake's lock");
    if let Some(refused) = refuse(&mut state, headers) {
        return refused;
    }
    if !known_scope(scope) {
        return problem(StatusCode::NOT_FOUND, "Not Found");
    }
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let name = param("name");
    let per_page = param("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page = param("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let matching: Vec<&Runner> = state
        .runners
        .iter()
        .filter(|r| name.as_ref().is_none_or(|n| *n == r.name))
        .collect();
    let runners: Vec<Value> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| json!({"id": r.id, "name": r.name, "os": "linux", "status": "online", "busy": r.busy, "labels": []}))
        .collect();
    Json(json!({"total_count": matching.len(), "runners": runners})).into_response()
}

async fn remove_org(
    State(state): State<Shared>,
    Path((org, id)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Response {
    remove(&state, &org, id, &headers)
}

async fn remove_repo(
    State(state): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, i64)>,
    headers: HeaderMap,
) -> Response {
    remove(&state, &format!("{owner}/{repo}"), id, &headers)
}

fn remove(state: &Shared, scope: &str, id: i64, headers: &HeaderMap) -> Response {
    let mut state = state.lock().expect("the fake's lock");
    if let Some(refused) = refuse(&mut state, headers) {
        return refused;
    }
    if !known_scope(scope) {
        return problem(StatusCode::NOT_FOUND, "Not Found");
    }
    match state.runners.iter().position(|r| r.id == id) {
        None => problem(StatusCode::NOT_FOUND, "Not Found"),
        Some(i) if state.runners[i].busy => {
            state.busy_refusals += 1;
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Bad request - Runner \"x\" is still running a job\"",
            )
        }
        Some(i) => {
            let runner = state.runners.remove(i);
            state.removed.push(runner.name);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// The App token exchange: the JWT must verify with the app's public key (RS256), name the
/// app, and live at most ten minutes.
async fn access_token(
    State(state): State<Shared>,
    Path(installation): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let mut state = state.lock().expect("the fake's lock");
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(APP_PUBLIC_KEY.as_bytes())
        .expect("the test public key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let claims = match jsonwebtoken::decode::<Value>(jwt, &key, &validation) {
        Ok(data) => data.claims,
        Err(_) => {
            return problem(
                StatusCode::UNAUTHORIZED,
                "A JSON web token could not be decoded",
            );
        }
    };
    let span = claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0);
    if claims["iss"].as_str() != Some(&APP_ID.to_string()) || span > 600 {
        return problem(
            StatusCode::UNAUTHORIZED,
            "'Expiration time' claim ('exp') is too far in the future",
        );
    }
    if installation != INSTALLATION {
        return problem(StatusCode::NOT_FOUND, "Not Found");
    }
    let token = format!("ghs_fakeinstallation{:04}", state.issued.len() + 1);
    state.issued.push(token.clone());
    let valid_s = state.token_valid_s.unwrap_or(3600);
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(valid_s);
    (
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": expires_at.to_rfc3339()})),
    )
        .into_response()
}
