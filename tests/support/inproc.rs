//! The in-process harness of the HTTP suites: `broker::server::run_with_clock` on a
//! `127.0.0.1:0` listener and a temporary data directory, driven over real HTTP by reqwest.
//!
//! Every answer that goes through [`Harness::json`] or [`Harness::raw`] is checked against the
//! contract's error rules before the test sees it (see [`check_answer`]): no 5xx other than a
//! documented 503, and every error is `application/problem+json` with `type`, `title`,
//! `status`, `detail` and `code` (plus `WWW-Authenticate` on 401 and `Retry-After` on 429 and
//! 503). So each test proves those rules for every request it makes.

use std::sync::Arc;
use std::time::Duration;

use broker::Config;
use broker::objects::{Clock, ManualClock, SystemClock};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where a [`ManualClock`] starts: 2027-01-15T08:00:00Z (mid-day, mid-month, so day and month
/// periods are both far from their ends).
pub const T0: i64 = 1_800_000_000_000;

/// The methods the route suites call with.
pub const GET: Method = Method::GET;
pub const POST: Method = Method::POST;
pub const PUT: Method = Method::PUT;
pub const PATCH: Method = Method::PATCH;
pub const DELETE: Method = Method::DELETE;

/// The `id` of every item.
pub fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The `items` of a page.
pub fn items(page: &Value) -> Vec<Value> {
    page["items"].as_array().expect("items").clone()
}

/// A status, the headers and the body (JSON, `Null` when empty, a string when not JSON).
pub type Answer = (StatusCode, HeaderMap, Value);

/// A berth server running in this process.
pub struct Harness {
    /// `http://127.0.0.1:<port>`; changes at [`Harness::restart`].
    pub url: String,
    /// One client for every request (keep-alive, like the CLI's).
    pub client: reqwest::Client,
    /// The operator's admin token.
    pub admin: String,
    /// The data directory; removed when the harness is dropped.
    pub dir: tempfile::TempDir,
    /// The clock the server runs on, when the test moves time.
    pub clock: Option<ManualClock>,
    /// This harness's `fake` cloud (unique per harness: tests of a binary share the process).
    pub cloud: String,
    config: Config,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A tenant made by [`Harness::setup_tenant`]: a `fake` account `cloud` and a pool `small`.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub name: String,
    /// A `tenant:admin` token.
    pub admin: String,
    /// A `leases:write` token.
    pub write: String,
    /// A `leases:read` token.
    pub read: String,
}

impl Tenant {
    /// `/v1/tenants/<name><rest>`.
    pub fn path(&self, rest: &str) -> String {
        format!("/v1/tenants/{}{rest}", self.name)
    }
}

/// The price of the pool `small`: 3.6 units an hour, one milli-unit (1000 micros) a second.
pub const SMALL_PRICE: i64 = 3_600_000;

impl Harness {
    /// A server on the system clock.
    pub async fn start() -> Harness {
        Harness::boot(None, |_| {}).await
    }

    /// A server on a [`ManualClock`] stopped at [`T0`].
    pub async fn start_manual() -> Harness {
        Harness::boot(Some(ManualClock::new(T0)), |_| {}).await
    }

    /// A server whose config the test adjusts first.
    pub async fn start_with(
        clock: Option<ManualClock>,
        adjust: impl FnOnce(&mut Config),
    ) -> Harness {
        Harness::boot(clock, adjust).await
    }

    async fn boot(clock: Option<ManualClock>, adjust: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin = format!("adm_{:032x}", rand_u128());
        let mut config = Config::for_tests(dir.path());
        config.admin_token = Some(admin.clone());
        // Short waits: a provider call never takes long in these tests, and a stop must not
        // hang a test for long.
        config.provider_timeout = Duration::from_secs(5);
        config.shutdown_grace = Duration::from_secs(10);
        adjust(&mut config);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        let mut harness = Harness {
            url: String::new(),
            client,
            admin,
            dir,
            clock,
            cloud: format!("api-{:016x}", rand_u128() as u64),
            config,
            shutdown: CancellationToken::new(),
            task: None,
        };
        harness.serve().await;
        harness
    }

    async fn serve(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        self.url = format!("http://{}", listener.local_addr().expect("local addr"));
        self.shutdown = CancellationToken::new();
        let clock: Arc<dyn Clock> = match &self.clock {
            Some(clock) => Arc::new(clock.clone()),
            None => Arc::new(SystemClock),
        };
        let task = tokio::spawn(broker::server::run_with_clock(
            listener,
            self.config.clone(),
            self.shutdown.clone(),
            clock,
        ));
        self.task = Some(task);
        // Bounded wait until the server answers (the runtime opens before it accepts).
        for _ in 0..500 {
            if let Ok(response) = self
                .client
                .get(format!("{}/healthz", self.url))
                .send()
                .await
                && response.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("berth did not answer /healthz within 5 s");
    }

    /// Begins a graceful stop (what SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Graceful stop: cancel, then wait (bounded) for `run` to return Ok.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("the server is running");
        let result = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("berth stops within 30 s")
            .expect("the server task did not panic");
        result.expect("berth stopped without error");
    }

    /// A graceful stop, then a new server on the same data directory, config and clock.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// After [`Harness::stop`]: a new server on the same data directory, config and clock.
    pub async fn start_again(&mut self) {
        assert!(self.task.is_none(), "stop the running server first");
        self.serve().await;
    }

    /// The `fake` cloud of `tenant`'s accounts on this harness (clouds are per tenant).
    pub fn fake(&self, tenant: &str) -> Arc<providers::fake::FakeCloud> {
        providers::fake::cloud_of(tenant, &self.cloud)
    }

    /// Moves the manual clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock
            .as_ref()
            .expect("a harness started with a manual clock")
            .advance(by);
    }

    /// Sends `body` (as JSON when `Some`) and returns the checked answer.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let bytes = body.map(|body| body.to_string().into_bytes());
        let content_type = bytes.as_ref().map(|_| "application/json");
        self.send(method, path, token, content_type, bytes, &[])
            .await
    }

    /// Like [`Harness::json`] with extra request headers.
    pub async fn json_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let bytes = body.map(|body| body.to_string().into_bytes());
        let content_type = bytes.as_ref().map(|_| "application/json");
        self.send(method, path, token, content_type, bytes, headers)
            .await
    }

    /// Sends raw bytes with the given content type (none when `None`).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        self.send(method, path, token, content_type, Some(body), &[])
            .await
    }

    /// Sends a request with arbitrary headers (the `Authorization` header is the caller's).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {path}: no answer: {err}"));
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        check_answer(&method, path, status, &headers, &body);
        (status, headers, body)
    }

    /// `GET` with a token, expecting 200; returns the body.
    pub async fn get_ok(&self, path: &str, token: &str) -> Value {
        let (status, _, body) = self.json(Method::GET, path, Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// Creates a tenant as the operator (201).
    pub async fn create_tenant(&self, name: &str, limits: Value) -> Value {
        let (status, _, body) = self
            .json(
                Method::POST,
                "/v1/tenants",
                Some(&self.admin),
                Some(json!({ "name": name, "limits": limits })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create tenant {name}: {body}");
        body
    }

    /// Creates a token of `tenant` with `scopes` as the operator; returns its secret.
    pub async fn token(&self, tenant: &str, scopes: &[&str]) -> String {
        let (status, _, body) = self
            .json(
                Method::POST,
                &format!("/v1/tenants/{tenant}/tokens"),
                Some(&self.admin),
                Some(json!({ "scopes": scopes })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create token: {body}");
        body["token"].as_str().expect("token").to_owned()
    }

    /// A tenant with `limits`, a `fake` account `cloud` on this harness's cloud, a pool
    /// `small` at [`SMALL_PRICE`], and one token of each tenant scope.
    pub async fn setup_tenant(&self, name: &str, limits: Value) -> Tenant {
        self.create_tenant(name, limits).await;
        let tenant = Tenant {
            name: name.to_owned(),
            admin: self.token(name, &["tenant:admin"]).await,
            write: self.token(name, &["leases:write"]).await,
            read: self.token(name, &["leases:read"]).await,
        };
        self.put_fake_account(&tenant, "cloud", json!({})).await;
        self.put_pool(&tenant, "small", SMALL_PRICE).await;
        tenant
    }

    /// PUTs a `fake` account on this harness's cloud with extra config.
    pub async fn put_fake_account(&self, tenant: &Tenant, name: &str, extra: Value) {
        let mut config = json!({ "cloud": self.cloud });
        if let Value::Object(extra) = extra {
            config.as_object_mut().expect("object").extend(extra);
        }
        let (status, _, body) = self
            .json(
                Method::PUT,
                &tenant.path(&format!("/providers/{name}")),
                // Host-runner kinds are the operator's to configure.
                Some(&self.admin),
                Some(json!({ "kind": "fake", "config": config })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "put provider: {body}");
    }

    /// PUTs a pool of the account `cloud` at `price`.
    pub async fn put_pool(&self, tenant: &Tenant, name: &str, price: i64) -> Value {
        let (status, _, body) = self
            .json(
                Method::PUT,
                &tenant.path(&format!("/pools/{name}")),
                Some(&tenant.admin),
                Some(json!({
                    "provider": "cloud",
                    "machine_type": "s",
                    "hourly_price_micros": price,
                })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "put pool: {body}");
        body
    }

    /// Requests a lease; returns the answer unchecked (201, 202 or an error).
    pub async fn request_lease(&self, tenant: &Tenant, body: Value) -> Answer {
        self.json(
            Method::POST,
            &tenant.path("/leases"),
            Some(&tenant.write),
            Some(body),
        )
        .await
    }

    /// Grant, ready, release, released: a whole lease of pool `small`; returns its id.
    pub async fn lease_lifecycle(&self, tenant: &Tenant) -> String {
        let lease = self
            .grant(tenant, json!({ "pool": "small", "ttl_s": 600 }))
            .await;
        let id = lease["id"].as_str().expect("id").to_owned();
        self.wait_state(tenant, &id, "ready").await;
        self.release(tenant, &id).await;
        id
    }

    /// Releases lease `id` (200) and waits until it is `released`.
    pub async fn release(&self, tenant: &Tenant, id: &str) {
        let (status, _, _) = self
            .json(
                Method::POST,
                &tenant.path(&format!("/leases/{id}/release")),
                Some(&tenant.write),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        self.wait_state(tenant, id, "released").await;
    }

    /// Requests a lease of `small` that must be granted (201); returns it.
    pub async fn grant(&self, tenant: &Tenant, body: Value) -> Value {
        let (status, _, lease) = self.request_lease(tenant, body).await;
        assert_eq!(status, StatusCode::CREATED, "lease request: {lease}");
        lease
    }

    /// One lease.
    pub async fn lease(&self, tenant: &Tenant, id: &str) -> Value {
        self.get_ok(&tenant.path(&format!("/leases/{id}")), &tenant.read)
            .await
    }

    /// Long-polls a lease with `wait=ready|ended` until `accept` holds, bounded to 30 s in
    /// total (the server answers each poll at most `timeout_s` later).
    pub async fn wait_for(
        &self,
        tenant: &Tenant,
        id: &str,
        wait: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        let path = tenant.path(&format!("/leases/{id}?wait={wait}&timeout_s=5"));
        let mut last = Value::Null;
        for _ in 0..6 {
            last = self.get_ok(&path, &tenant.read).await;
            if accept(&last) {
                return last;
            }
        }
        panic!("lease {id} never satisfied the wait ({wait}): {last}");
    }

    /// Waits until the lease is in `state` (bounded).
    pub async fn wait_state(&self, tenant: &Tenant, id: &str, state: &str) -> Value {
        let wait = if is_terminal(state) { "ended" } else { "ready" };
        let want = state.to_owned();
        self.wait_for(tenant, id, wait, move |lease| {
            lease["state"] == want.as_str()
        })
        .await
    }

    /// Every lease of the list filtered by `query` (all pages).
    pub async fn list_all(&self, tenant: &Tenant, query: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1_000 {
            let mut path = tenant.path(&format!("/leases?limit=1000&{query}"));
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let page = self.get_ok(&path, &tenant.read).await;
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
        panic!("the lease list never ended");
    }

    /// Every row of the tenant's ledger (all pages).
    pub async fn ledger_all(&self, tenant: &Tenant) -> Vec<Value> {
        let mut rows = Vec::new();
        let mut after = String::new();
        for _ in 0..1_000 {
            let page = self
                .get_ok(
                    &tenant.path(&format!("/ledger?limit=1000&after={after}")),
                    &tenant.read,
                )
                .await;
            rows.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => after = next.to_owned(),
                None => return rows,
            }
        }
        panic!("the ledger never ended");
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("metrics answers");
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.expect("metrics text")
    }
}

impl Harness {
    /// Waits (bounded) until at least `n` requests besides the metrics request itself are
    /// being answered: a long poll started elsewhere is in flight.
    pub async fn wait_in_flight(&self, n: u64) {
        for _ in 0..1_000 {
            let in_flight = self
                .metrics()
                .await
                .lines()
                .find_map(|l| l.strip_prefix("berth_http_requests_in_flight "))
                .and_then(|v| v.parse::<f64>().ok())
                .expect("in-flight gauge");
            // The metrics request counts itself.
            if in_flight >= (n + 1) as f64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} requests never were in flight");
    }

    /// Every (method, route template, status) the server has counted in
    /// `berth_http_requests_total` so far.
    pub async fn served_requests(&self) -> Vec<(String, String, String)> {
        let metrics = self.metrics().await;
        metrics
            .lines()
            .filter(|l| l.starts_with("berth_http_requests_total{"))
            .map(|line| {
                let label = |name: &str| {
                    line.split(&format!("{name}=\""))
                        .nth(1)
                        .and_then(|rest| rest.split('"').next())
                        .expect("label")
                        .to_owned()
                };
                (label("method"), label("route"), label("status"))
            })
            .collect()
    }

    /// Starts `GET path` with `token` in the background (a long poll) and returns its JSON
    /// answer when it comes.
    pub fn spawn_get(&self, path: &str, token: &str) -> tokio::task::JoinHandle<Value> {
        let request = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(token);
        tokio::spawn(async move {
            request
                .send()
                .await
                .expect("long poll answers")
                .json::<Value>()
                .await
                .expect("json")
        })
    }

    /// Every answer this server gave so far — each (method, route, status) its metrics counted
    /// — is documented for that operation in `/openapi.json`. (405 and unrouted paths belong
    /// to no operation.)
    pub async fn assert_documented(&self) {
        let spec = self.get_ok("/openapi.json", &self.admin).await;
        let mut checked = 0;
        for (method, route, status) in self.served_requests().await {
            if route == "unmatched" || status == "405" {
                continue;
            }
            let method = if method == "HEAD" {
                "get".to_owned()
            } else {
                method.to_lowercase()
            };
            let operation = &spec["paths"][&route][&method];
            assert!(
                operation.is_object(),
                "{method} {route} is served but not in /openapi.json"
            );
            assert!(
                operation["responses"][&status].is_object(),
                "{method} {route} answered {status}, which /openapi.json does not document"
            );
            checked += 1;
        }
        assert!(checked > 0, "the metrics counted no request");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One request to a real `berth` process at `base`; the answer is checked like the
/// harness's ([`check_answer`]). Returns the status, the body as JSON (or as a string when it
/// is not JSON) and the raw text.
pub async fn call_process(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value, String) {
    let mut request = client
        .request(method.clone(), format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("berth answers");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    check_answer(&method, path, status, &headers, &value);
    (status, value, text)
}

/// Whether a state name is final.
pub fn is_terminal(state: &str) -> bool {
    matches!(state, "released" | "expired" | "failed" | "canceled")
}

/// The contract's rules for every answer: no 5xx but a documented 503; every error is
/// problem+json with the five members, `status` equal to the real status and `type` naming the
/// `code`; 401 carries `WWW-Authenticate: Bearer`; 429 and 503 carry `Retry-After`.
pub fn check_answer(
    method: &Method,
    path: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &Value,
) {
    let what = format!("{method} {path} → {status}: {body}");
    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "server error (only a documented 503 may be 5xx): {what}"
    );
    if status.as_u16() < 400 {
        return;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(
        content_type, "application/problem+json",
        "error content type: {what}"
    );
    for member in ["type", "title", "detail", "code"] {
        assert!(
            body[member].as_str().is_some_and(|v| !v.is_empty()),
            "problem member `{member}` missing: {what}"
        );
    }
    assert_eq!(
        body["status"].as_u64(),
        Some(u64::from(status.as_u16())),
        "problem status: {what}"
    );
    let code = body["code"].as_str().unwrap_or_default();
    assert!(
        code.len() >= 3
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "code is snake_case: {what}"
    );
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("https://") && t.ends_with(&format!("/{code}"))),
        "type names the code: {what}"
    );
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(
            headers
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "401 without WWW-Authenticate: Bearer: {what}"
        );
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(
            retry_after.is_some_and(|s| s >= 1),
            "{status} without a Retry-After in seconds: {what}"
        );
    }
}

/// Asserts an answer is the error `status` with `code`.
#[track_caller]
pub fn assert_problem(answer: &Answer, status: u16, code: &str) {
    let (got, _, body) = answer;
    assert_eq!(
        (got.as_u16(), body["code"].as_str().unwrap_or_default()),
        (status, code),
        "expected {status} {code}, got: {body}"
    );
}

/// A random number for unique names and tokens.
pub fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    // Two independently keyed SipHashes: random enough for unique test names, no extra crate.
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut second = std::collections::hash_map::RandomState::new().build_hasher();
    second.write_u64(a);
    (u128::from(a) << 64) | u128::from(second.finish())
}

/// Milliseconds of an RFC 3339 time.
pub fn ms(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().expect("a time"))
        .expect("rfc3339")
        .timestamp_millis()
}
