//! The `hetzner` provider against a local fake of the Hetzner Cloud API (axum on 127.0.0.1),
//! which checks the bearer token and answers with the shapes, codes and headers documented
//! in `shared/reference/hetzner-cloud.md`.

// The fake server's helpers are test code too: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod fixtures;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use fixtures::{by_lease, env, spec};
use providers::{Error, Provider, RunnerRef, RunnerSpec};
use serde_json::{Value, json};

const TOKEN: &str = "hcloud-test-token-7Qx9ZpL2";

/// A scripted answer for the next request to `route` (`"POST /servers"`, …).
struct Injected {
    route: &'static str,
    status: u16,
    code: &'static str,
    message: String,
    headers: Vec<(&'static str, String)>,
}

/// The project's rate limit as the API documents it: a budget of `limit` requests that
/// refills `per_s` requests per second; every answer carries `RateLimit-Limit`,
/// `RateLimit-Remaining` and `RateLimit-Reset` (the Unix second at which it is full again),
/// and a request with nothing left gets 429 `rate_limit_exceeded`.
struct Limiter {
    limit: u64,
    tokens: f64,
    per_s: f64,
    at: Instant,
}

impl Limiter {
    /// A spent budget of `limit` that refills `per_s` per second.
    fn spent(limit: u64, per_s: f64) -> Limiter {
        Limiter {
            limit,
            tokens: 0.0,
            per_s,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let gained = now.duration_since(self.at).as_secs_f64() * self.per_s;
        self.tokens = (self.tokens + gained).min(self.limit as f64);
        self.at = now;
    }

    /// Takes one request's token; `false` when none is left.
    fn take(&mut self) -> bool {
        self.refill();
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let to_full = (self.limit as f64 - self.tokens) / self.per_s;
        vec![
            ("ratelimit-limit", self.limit.to_string()),
            (
                "ratelimit-remaining",
                (self.tokens.floor() as u64).to_string(),
            ),
            (
                "ratelimit-reset",
                ((now + to_full).ceil() as u64).to_string(),
            ),
        ]
    }
}

/// The fake API's state, shared with the test.
#[derive(Default)]
struct Cloud {
    servers: BTreeMap<u64, Value>,
    next_id: u64,
    /// Every request as `"<METHOD> <path>?<query>"`, in order.
    requests: Vec<String>,
    /// Bodies of `POST /servers`.
    create_bodies: Vec<Value>,
    injected: VecDeque<Injected>,
    /// The project's rate limit; `None`: unlimited, and no rate-limit headers.
    limiter: Option<Limiter>,
    /// The next create loses a race: another caller's server with the same labels appears
    /// and the create gets 409 `uniqueness_error`.
    lose_create_race: bool,
    /// Servers the label index does not show yet (label selectors miss them; a `name`
    /// query and `GET /servers/{id}` find them).
    unindexed: BTreeSet<u64>,
    /// A lost race's server is not in the label index yet.
    race_winner_unindexed: bool,
    /// Actions by id: `(status, error)`; a `running` create action ends as `action_outcome`
    /// says when it is first read.
    actions: BTreeMap<u64, (String, Value)>,
    next_action: u64,
    /// How create actions end: `None` in `success`, `Some((code, message))` in `error`.
    action_outcome: Option<(&'static str, &'static str)>,
    /// New servers get no public IPv4.
    no_ipv4: bool,
    /// Requests never get an answer.
    hang: bool,
    correlation: u64,
}

type Shared = Arc<Mutex<Cloud>>;

fn server_json(id: u64, name: &str, server_type: &str, location: &str, labels: &Value) -> Value {
    json!({
        "id": id, "name": name, "status": "initializing", "created": "2026-11-27T10:00:00Z",
        "public_net": {
            "ipv4": {"id": 7, "ip": format!("203.0.113.{}", id % 250), "blocked": false, "dns_ptr": "static.example"},
            "ipv6": {"id": 8, "ip": format!("2001:db8:0:{id:x}::/64"), "blocked": false, "dns_ptr": []},
            "floating_ips": [], "firewalls": []
        },
        "labels": labels,
        "server_type": {"id": 1, "name": server_type}, "location": {"id": 1, "name": location},
        "locked": false, "protection": {"delete": false, "rebuild": false}, "private_net": [],
        "image": {"id": 4711, "name": "ubuntu-24.04"}
    })
}

fn action(id: u64, command: &str, server_id: u64) -> Value {
    json!({"id": id, "command": command, "status": "running", "progress": 0,
           "started": "2026-11-27T10:00:00Z", "finished": null, "error": null,
           "resources": [{"id": server_id, "type": "server"}]})
}

fn action_json(id: u64, status: &str, error: &Value, server_id: u64) -> Value {
    json!({"id": id, "command": "create_server", "status": status, "progress": 100,
           "started": "2026-11-27T10:00:00Z", "finished": null, "error": error,
           "resources": [{"id": server_id, "type": "server"}]})
}

/// A label selector of `k==v` / `k=v` terms joined by commas.
fn matches_selector(labels: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|term| !term.is_empty())
        .all(|term| {
            let (key, value) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .unwrap();
            labels.get(key).and_then(Value::as_str) == Some(value)
        })
}

fn error_response(
    cloud: &mut Cloud,
    status: u16,
    code: &str,
    message: &str,
    headers: &[(&'static str, String)],
) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"error": {"code": code, "message": message, "details": null}})),
    )
        .into_response();
    cloud.correlation += 1;
    response.headers_mut().insert(
        "x-correlation-id",
        format!("corr-{}", cloud.correlation).parse().unwrap(),
    );
    for (name, value) in headers {
        response.headers_mut().insert(*name, value.parse().unwrap());
    }
    add_limits(cloud, &mut response);
    response
}

fn ok(cloud: &mut Cloud, status: StatusCode, body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    cloud.correlation += 1;
    response.headers_mut().insert(
        "x-correlation-id",
        format!("corr-{}", cloud.correlation).parse().unwrap(),
    );
    add_limits(cloud, &mut response);
    response
}

/// Every answer carries the rate-limit headers, as the API's do.
fn add_limits(cloud: &Cloud, response: &mut Response) {
    if let Some(limiter) = &cloud.limiter {
        for (name, value) in limiter.headers() {
            if !response.headers().contains_key(name) {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
        }
    }
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if shared.lock().unwrap().hang {
        std::future::pending::<()>().await;
    }
    let mut cloud = shared.lock().unwrap();
    let cloud = &mut *cloud;
    let path = uri
        .path()
        .strip_prefix("/v1")
        .unwrap_or(uri.path())
        .to_string();
    cloud
        .requests
        .push(format!("{method} {path}?{}", uri.query().unwrap_or("")));

    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    if !authorized {
        return error_response(cloud, 401, "unauthorized", "unable to authenticate", &[]);
    }
    if let Some(limiter) = &mut cloud.limiter
        && !limiter.take()
    {
        let message = format!("limit of {} requests per hour reached", limiter.limit);
        return error_response(cloud, 429, "rate_limit_exceeded", &message, &[]);
    }
    let route = match (method.as_str(), path.as_str()) {
        ("POST", "/servers") => "POST /servers",
        ("GET", "/servers") => "GET /servers",
        ("GET", "/server_types") => "GET /server_types",
        ("GET", p) if p.starts_with("/servers/") => "GET /servers/{id}",
        ("GET", p) if p.starts_with("/actions/") => "GET /actions/{id}",
        ("DELETE", p) if p.starts_with("/servers/") => "DELETE /servers",
        _ => "other",
    };
    if cloud
        .injected
        .front()
        .is_some_and(|injected| injected.route == route)
    {
        let injected = cloud.injected.pop_front().unwrap();
        return error_response(
            cloud,
            injected.status,
            injected.code,
            &injected.message,
            &injected.headers,
        );
    }
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();

    match route {
        "POST /servers" => {
            let body: Value = serde_json::from_slice(&body).unwrap();
            cloud.create_bodies.push(body.clone());
            let name = body["name"].as_str().unwrap().to_string();
            if cloud.lose_create_race {
                cloud.lose_create_race = false;
                cloud.next_id += 1;
                let id = cloud.next_id;
                let server = server_json(
                    id,
                    &name,
                    body["server_type"].as_str().unwrap(),
                    "fsn1",
                    &body["labels"],
                );
                cloud.servers.insert(id, server);
                if cloud.race_winner_unindexed {
                    cloud.unindexed.insert(id);
                }
            }
            if cloud.servers.values().any(|server| server["name"] == name) {
                return error_response(
                    cloud,
                    409,
                    "uniqueness_error",
                    "server name is already used",
                    &[],
                );
            }
            cloud.next_id += 1;
            let id = cloud.next_id;
            let location = body["location"].as_str().unwrap_or("nbg1");
            let mut server = server_json(
                id,
                &name,
                body["server_type"].as_str().unwrap(),
                location,
                &body["labels"],
            );
            if cloud.no_ipv4 {
                server["public_net"]["ipv4"] = Value::Null;
            }
            cloud.servers.insert(id, server.clone());
            cloud.next_action += 1;
            let action_id = cloud.next_action;
            cloud
                .actions
                .insert(action_id, ("running".to_string(), Value::Null));
            let reply = json!({"server": server, "action": action(action_id, "create_server", id),
                               "next_actions": [action(1000 + action_id, "start_server", id)], "root_password": null});
            ok(cloud, StatusCode::CREATED, reply)
        }
        "GET /actions/{id}" => {
            let id: u64 = path.trim_start_matches("/actions/").parse().unwrap_or(0);
            let outcome = cloud.action_outcome;
            let Some((status, error)) = cloud.actions.get_mut(&id) else {
                return error_response(cloud, 404, "not_found", "action not found", &[]);
            };
            if status == "running" {
                match outcome {
                    None => *status = "success".to_string(),
                    Some((code, message)) => {
                        *status = "error".to_string();
                        *error = json!({"code": code, "message": message});
                    }
                }
            }
            let action = action_json(id, status, error, 0);
            ok(cloud, StatusCode::OK, json!({ "action": action }))
        }
        "GET /servers/{id}" => {
            let id: u64 = path.trim_start_matches("/servers/").parse().unwrap_or(0);
            match cloud.servers.get(&id).cloned() {
                Some(server) => ok(cloud, StatusCode::OK, json!({ "server": server })),
                None => error_response(cloud, 404, "not_found", "server not found", &[]),
            }
        }
        "GET /servers" => {
            let selector = query.get("label_selector").cloned().unwrap_or_default();
            let name = query.get("name").cloned();
            let per_page: usize = query
                .get("per_page")
                .map_or(25, |n| n.parse().unwrap())
                .min(50);
            let page: usize = query.get("page").map_or(1, |n| n.parse().unwrap());
            let matching: Vec<Value> = cloud
                .servers
                .iter()
                .filter(|(id, server)| {
                    (selector.is_empty() || !cloud.unindexed.contains(id))
                        && matches_selector(&server["labels"], &selector)
                        && name
                            .as_ref()
                            .is_none_or(|name| server["name"] == name.as_str())
                })
                .map(|(_, server)| server.clone())
                .collect();
            let last_page = matching.len().div_ceil(per_page).max(1);
            let items: Vec<Value> = matching
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .cloned()
                .collect();
            let pagination = json!({
                "page": page, "per_page": per_page,
                "previous_page": if page > 1 { json!(page - 1) } else { Value::Null },
                "next_page": if page < last_page { json!(page + 1) } else { Value::Null },
                "last_page": last_page, "total_entries": matching.len()
            });
            ok(
                cloud,
                StatusCode::OK,
                json!({"servers": items, "meta": {"pagination": pagination}}),
            )
        }
        "DELETE /servers" => {
            let id: u64 = path.trim_start_matches("/servers/").parse().unwrap_or(0);
            if cloud.servers.remove(&id).is_some() {
                ok(
                    cloud,
                    StatusCode::OK,
                    json!({"action": action(2, "delete_server", id)}),
                )
            } else {
                error_response(cloud, 404, "not_found", "server not found", &[])
            }
        }
        "GET /server_types" => {
            let types = json!([{
                "id": 1, "name": "cpx22", "description": "CPX22", "cores": 2, "memory": 4.0, "disk": 80,
                "cpu_type": "shared", "architecture": "x86", "storage_type": "local", "deprecated": false,
                "deprecation": null,
                "locations": [{"id": 1, "name": "fsn1", "deprecation": null}, {"id": 2, "name": "hel1", "deprecation": null}],
                "prices": [
                    {"location": "fsn1", "included_traffic": 21990232555520_u64,
                     "price_hourly": {"net": "0.0060000000", "gross": "0.0071400000000000"},
                     "price_monthly": {"net": "3.7900000000", "gross": "4.5101000000000000"},
                     "price_per_tb_traffic": {"net": "1.0000000000", "gross": "1.1900000000000000"}},
                    {"location": "hel1", "included_traffic": 21990232555520_u64,
                     "price_hourly": {"net": "0.00650000011", "gross": "0.0077350001309"},
                     "price_monthly": {"net": "4.0000000000", "gross": "4.7600000000"},
                     "price_per_tb_traffic": {"net": "1.0000000000", "gross": "1.1900000000000000"}}
                ]
            }]);
            let name = query.get("name").cloned().unwrap_or_default();
            let selected: Vec<Value> = types
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| name.is_empty() || t["name"] == name.as_str())
                .cloned()
                .collect();
            let pagination = json!({"page": 1, "per_page": 25, "previous_page": null, "next_page": null,
                                    "last_page": 1, "total_entries": selected.len()});
            ok(
                cloud,
                StatusCode::OK,
                json!({"server_types": selected, "meta": {"pagination": pagination}}),
            )
        }
        _ => error_response(cloud, 404, "not_found", "no such route", &[]),
    }
}

/// Starts the fake API on 127.0.0.1; returns its address and state.
async fn start() -> (SocketAddr, Shared) {
    let shared: Shared = Arc::default();
    let app = Router::new().fallback(handle).with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, shared)
}

/// A provider on the fake, with `extra` config merged in.
fn hetzner(addr: SocketAddr, extra: Value) -> Arc<dyn Provider> {
    hetzner_with_token(addr, extra, TOKEN)
}

fn hetzner_with_token(addr: SocketAddr, extra: Value, token: &str) -> Arc<dyn Provider> {
    hetzner_of(addr, extra, token, None)
}

/// A provider on the fake for the berth installation `installation`.
fn hetzner_as(addr: SocketAddr, installation: &str) -> Arc<dyn Provider> {
    hetzner_of(addr, json!({}), TOKEN, Some(installation))
}

fn hetzner_of(
    addr: SocketAddr,
    extra: Value,
    token: &str,
    installation: Option<&str>,
) -> Arc<dyn Provider> {
    let mut config = json!({"base_url": format!("http://{addr}/v1"), "image": "ubuntu-24.04", "location": "fsn1"});
    if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
        config.extend(extra);
    }
    let dir = std::env::temp_dir();
    let environment = providers::Environment {
        installation_id: installation.map(str::to_string),
        ..env(&dir, true)
    };
    fixtures::build("hetzner", config, json!({"token": token}), &environment)
}

fn cpx(tenant: &str, lease_id: &str) -> RunnerSpec {
    RunnerSpec {
        machine_type: "cpx22".into(),
        ..spec(tenant, lease_id)
    }
}

/// Adds a server as if berth made it earlier.
fn insert_server(shared: &Shared, tenant: &str, lease_id: &str, managed: bool) -> u64 {
    let mut cloud = shared.lock().unwrap();
    cloud.next_id += 1;
    let id = cloud.next_id;
    let mut labels = json!({"berth-tenant": tenant, "berth-lease": lease_id});
    if managed {
        labels["managed-by"] = json!("berth");
    }
    let name = format!("pre-{id}");
    cloud
        .servers
        .insert(id, server_json(id, &name, "cpx22", "fsn1", &labels));
    id
}

/// Requests whose `"<METHOD> <path>?"` starts with `prefix` (`"GET /servers?"` is the list,
/// `"GET /servers/"` a read by id).
fn requests_to(shared: &Shared, prefix: &str) -> usize {
    shared
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|r| r.starts_with(prefix))
        .count()
}

fn inject(shared: &Shared, route: &'static str, status: u16, code: &'static str, message: &str) {
    shared.lock().unwrap().injected.push_back(Injected {
        route,
        status,
        code,
        message: message.into(),
        headers: vec![],
    });
}

/// Create posts the documented body (name, type, image, location, labels, user data, keys,
/// firewalls) and returns the server as a not-yet-ready runner at its IPv4.
#[tokio::test]
async fn create_posts_the_documented_body() {
    let (addr, shared) = start().await;
    let provider = hetzner(
        addr,
        json!({
            "ssh_keys": [4711, "ops"], "firewall_ids": [9],
            "user_data": "#cloud-config\nruncmd: [agent --lease {{BERTH_LEASE_ID}} --url {{BERTH_CALLBACK_URL}} --token {{BERTH_RUNNER_TOKEN}}]"
        }),
    );
    let mut spec = cpx("acme", "lease_01JD0Z");
    spec.labels.insert("team".into(), "infra".into());
    spec.region = Some("hel1".into());
    let runner = provider.create(&spec).await.unwrap();

    assert!(!runner.ready);
    assert_eq!(
        (runner.tenant.as_str(), runner.lease_id.as_str()),
        ("acme", "lease_01JD0Z")
    );
    assert_eq!(runner.address.as_deref(), Some("203.0.113.1"));
    assert_eq!(runner.id, "1");
    assert_eq!(runner.metadata["status"], "initializing");
    assert_eq!(runner.metadata["location"], "hel1");

    let body = shared.lock().unwrap().create_bodies[0].clone();
    assert_eq!(body["name"], "berth-lease-01jd0z");
    assert_eq!(body["server_type"], "cpx22");
    assert_eq!(body["image"], "ubuntu-24.04");
    assert_eq!(body["location"], "hel1");
    assert_eq!(
        body["labels"],
        json!({"managed-by": "berth", "berth-tenant": "acme", "berth-lease": "lease_01JD0Z", "team": "infra"})
    );
    assert_eq!(body["ssh_keys"], json!([4711, "ops"]));
    assert_eq!(body["firewalls"], json!([{"firewall": 9}]));
    assert_eq!(
        body["user_data"],
        "#cloud-config\nruncmd: [agent --lease lease_01JD0Z --url http://127.0.0.1:9/v1/runners --token rt_secret_token]"
    );
    assert!(body.get("datacenter").is_none());
}

/// `{{BERTH_GITHUB_JITCONFIG}}` in the user data is the lease's GitHub JIT config (empty when
/// the lease has none).
#[tokio::test]
async fn user_data_carries_the_github_jit_config() {
    let (addr, shared) = start().await;
    let provider = hetzner(
        addr,
        json!({ "user_data": "#cloud-config\nruncmd: [./run.sh --jitconfig '{{BERTH_GITHUB_JITCONFIG}}']" }),
    );
    let mut spec = cpx("acme", "lease_jit");
    spec.env
        .insert("BERTH_GITHUB_JITCONFIG".into(), "eyJjaXRjb25maWci".into());
    provider.create(&spec).await.unwrap();
    provider.create(&cpx("acme", "lease_nojit")).await.unwrap();
    let bodies = shared.lock().unwrap().create_bodies.clone();
    assert_eq!(
        bodies[0]["user_data"],
        "#cloud-config\nruncmd: [./run.sh --jitconfig 'eyJjaXRjb25maWci']"
    );
    assert_eq!(
        bodies[1]["user_data"],
        "#cloud-config\nruncmd: [./run.sh --jitconfig '']"
    );
}

/// A lease that already has a server gets that server back; no second POST.
#[tokio::test]
async fn create_is_idempotent_by_lease_label() {
    let (addr, shared) = start().await;
    let existing = insert_server(&shared, "acme", "lease_again", true);
    let provider = hetzner(addr, json!({}));
    let runner = provider.create(&cpx("acme", "lease_again")).await.unwrap();
    assert_eq!(runner.id, existing.to_string());
    let again = provider.create(&cpx("acme", "lease_again")).await.unwrap();
    assert_eq!(again, runner);
    assert_eq!(requests_to(&shared, "POST /servers"), 0);
    let lookup = shared.lock().unwrap().requests[0].clone();
    assert!(lookup.contains("label_selector=berth-tenant%3D%3Dacme%2Cberth-lease%3D%3Dlease_again%2Cmanaged-by%3D%3Dberth"), "{lookup}");
}

/// A create that loses a race (409 `uniqueness_error`) returns the winner's server, found
/// by its exact name.
#[tokio::test]
async fn create_after_uniqueness_error_finds_the_server() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().lose_create_race = true;
    let provider = hetzner(addr, json!({}));
    let runner = provider.create(&cpx("acme", "lease_race")).await.unwrap();
    assert_eq!(runner.lease_id, "lease_race");
    assert_eq!(shared.lock().unwrap().servers.len(), 1);
    assert_eq!(requests_to(&shared, "POST /servers"), 1);
    assert_eq!(requests_to(&shared, "GET /servers?"), 2);
}

/// After `uniqueness_error` the server is looked up by its exact name, so a create finds the
/// winner's server even while the label index does not show it yet; a server of that name
/// that is not this lease's is never adopted (nor deleted).
#[tokio::test]
async fn the_exact_name_lookup_finds_the_server_after_uniqueness_error() {
    let (addr, shared) = start().await;
    {
        let mut cloud = shared.lock().unwrap();
        cloud.lose_create_race = true;
        cloud.race_winner_unindexed = true;
    }
    let provider = hetzner(addr, json!({}));
    let runner = provider
        .create(&cpx("acme", "lease_unindexed"))
        .await
        .unwrap();
    let winner = *shared.lock().unwrap().servers.keys().next().unwrap();
    assert_eq!(runner.id, winner.to_string());
    assert_eq!(runner.lease_id, "lease_unindexed");
    assert_eq!(shared.lock().unwrap().servers.len(), 1, "a second server");
    let lookups = shared.lock().unwrap().requests.clone();
    assert!(
        lookups
            .iter()
            .any(|r| r.starts_with("GET /servers?") && r.contains("name=berth-lease-unindexed")),
        "{lookups:?}"
    );

    // A hand-made server that took the name is nobody's runner.
    let stranger = {
        let mut cloud = shared.lock().unwrap();
        cloud.next_id += 1;
        let id = cloud.next_id;
        let server = server_json(id, "berth-lease-taken", "cpx22", "fsn1", &json!({}));
        cloud.servers.insert(id, server);
        id
    };
    match provider.create(&cpx("acme", "lease_taken")).await {
        Err(Error::Permanent(message)) => {
            assert!(message.contains("not this lease's"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(shared.lock().unwrap().servers.contains_key(&stranger));
}

/// List follows `next_page` over three pages and keeps to the tenant's berth servers.
#[tokio::test]
async fn list_follows_pagination() {
    let (addr, shared) = start().await;
    for i in 0..120 {
        insert_server(&shared, "acme", &format!("lease_{i}"), true);
    }
    insert_server(&shared, "other", "lease_x", true);
    insert_server(&shared, "acme", "lease_hand_made", false);
    let provider = hetzner(addr, json!({}));
    let runners = provider.list("acme").await.unwrap();
    assert_eq!(runners.len(), 120);
    assert!(
        runners
            .iter()
            .all(|runner| runner.tenant == "acme" && runner.lease_id.starts_with("lease_"))
    );
    let pages: Vec<String> = shared.lock().unwrap().requests.clone();
    assert_eq!(pages.len(), 3);
    for (i, request) in pages.iter().enumerate() {
        assert!(
            request.contains("per_page=50") && request.contains(&format!("page={}", i + 1)),
            "{request}"
        );
    }
    assert!(provider.list("nobody").await.unwrap().is_empty());
}

/// Destroy by id re-reads the server, then deletes it; a repeat finds it gone (404): both
/// are success.
#[tokio::test]
async fn destroy_by_id_is_idempotent() {
    let (addr, shared) = start().await;
    let provider = hetzner(addr, json!({}));
    let runner = provider.create(&cpx("acme", "lease_del")).await.unwrap();
    let reference = RunnerRef {
        id: Some(runner.id.clone()),
        ..by_lease("acme", "lease_del")
    };
    provider.destroy(&reference).await.unwrap();
    provider.destroy(&reference).await.unwrap();
    assert!(shared.lock().unwrap().servers.is_empty());
    assert_eq!(requests_to(&shared, "GET /servers/"), 2);
    assert_eq!(requests_to(&shared, "DELETE /servers"), 1);
}

/// Without an id, destroy finds the lease's server by its labels; nothing found is success.
#[tokio::test]
async fn destroy_by_lease_labels() {
    let (addr, shared) = start().await;
    insert_server(&shared, "acme", "lease_lost", true);
    let keep = insert_server(&shared, "acme", "lease_keep", true);
    let provider = hetzner(addr, json!({}));
    provider
        .destroy(&by_lease("acme", "lease_lost"))
        .await
        .unwrap();
    provider
        .destroy(&by_lease("acme", "lease_lost"))
        .await
        .unwrap();
    let left: Vec<u64> = shared.lock().unwrap().servers.keys().copied().collect();
    assert_eq!(left, vec![keep]);
}

/// Prices: decimal strings to exact micros, gross or net, per location, rounding up.
#[tokio::test]
async fn prices_are_exact_micros() {
    let (addr, _shared) = start().await;
    let gross = hetzner(addr, json!({}));
    assert_eq!(gross.price("cpx22", None).await.unwrap(), Some(7_140));
    assert_eq!(
        gross.price("cpx22", Some("hel1")).await.unwrap(),
        Some(7_736)
    );
    assert_eq!(gross.price("cpx22", Some("ash")).await.unwrap(), None);
    assert_eq!(gross.price("cx99", None).await.unwrap(), None);
    let net = hetzner(addr, json!({"price": "net", "location": null}));
    assert_eq!(net.price("cpx22", None).await.unwrap(), Some(6_000));
    assert_eq!(net.price("cpx22", Some("hel1")).await.unwrap(), Some(6_501));
}

/// A 429 is waited out for one request's worth of refill (here 20 per second, so tens of
/// milliseconds), then the call succeeds: exactly one retry.
#[tokio::test]
async fn rate_limit_is_waited_out() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().limiter = Some(Limiter::spent(20, 20.0));
    let provider = hetzner(addr, json!({}));
    assert!(provider.list("acme").await.unwrap().is_empty());
    let requests = shared.lock().unwrap().requests.clone();
    assert_eq!(
        requests_to(&shared, "GET /servers?"),
        2,
        "one 429, one answer: {requests:?}"
    );
}

/// A 429 whose `RateLimit-Reset` is an hour away (3600/h, nothing left) makes the next
/// request wait one request's worth — about a second — not the hour: the wait goes back to
/// the broker as `retry_after` when it is longer than the call may wait.
#[tokio::test]
async fn a_far_rate_limit_reset_waits_one_request_not_the_reset() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().limiter = Some(Limiter::spent(3600, 1.0));
    let provider = hetzner(addr, json!({"max_retry_wait_ms": 100}));
    match provider.create(&cpx("acme", "lease_far")).await {
        Err(Error::Transient {
            message,
            retry_after: Some(wait),
        }) => {
            assert!(
                wait >= Duration::from_millis(500) && wait <= Duration::from_secs(2),
                "{wait:?} is not one request's worth"
            );
            assert!(
                message.contains("rate_limit_exceeded") && message.contains("HTTP 429"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(requests_to(&shared, "GET /servers?"), 1);
}

/// The budget is the project's: after one account met the rate limit, another account with
/// the same token is told to wait (about one request's worth) without sending anything.
#[tokio::test]
async fn the_rate_limit_budget_is_shared_by_accounts_of_one_project() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().limiter = Some(Limiter::spent(3600, 1.0));
    let first = hetzner(addr, json!({"max_retry_wait_ms": 100}));
    assert!(first.create(&cpx("acme", "lease_first")).await.is_err());
    let sent = shared.lock().unwrap().requests.len();
    let second = hetzner_of(
        addr,
        json!({"max_retry_wait_ms": 100}),
        TOKEN,
        Some("b0b0b0b0"),
    );
    match second.create(&cpx("other", "lease_second")).await {
        Err(Error::Transient {
            retry_after: Some(wait),
            message,
        }) => {
            assert!(
                wait >= Duration::from_millis(500) && wait <= Duration::from_secs(3),
                "{wait:?}"
            );
            assert!(message.contains("budget"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        shared.lock().unwrap().requests.len(),
        sent,
        "the second account sent a request into a spent budget"
    );
}

/// 422 `invalid_input` is permanent and carries the API's message, code and correlation id.
#[tokio::test]
async fn invalid_input_is_permanent() {
    let (addr, shared) = start().await;
    inject(
        &shared,
        "POST /servers",
        422,
        "invalid_input",
        "invalid input in field 'server_type'",
    );
    let provider = hetzner(addr, json!({}));
    match provider.create(&cpx("acme", "lease_bad")).await {
        Err(Error::Permanent(message)) => {
            assert!(message.contains("invalid_input"), "{message}");
            assert!(
                message.contains("invalid input in field 'server_type'"),
                "{message}"
            );
            assert!(
                message.contains("HTTP 422") && message.contains("correlation id corr-"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        requests_to(&shared, "POST /servers"),
        1,
        "a permanent error was retried"
    );
}

/// Capacity codes map to `Capacity`.
#[tokio::test]
async fn capacity_codes() {
    let (addr, shared) = start().await;
    let provider = hetzner(addr, json!({}));
    for code in [
        "resource_unavailable",
        "placement_error",
        "resource_limit_exceeded",
    ] {
        inject(
            &shared,
            "POST /servers",
            422,
            code,
            "not available right now",
        );
        match provider.create(&cpx("acme", "lease_cap")).await {
            Err(Error::Capacity(message)) => assert!(message.contains(code), "{message}"),
            other => panic!("{code}: {other:?}"),
        }
    }
}

/// 5xx and retryable codes are transient; with retries off the first one is returned.
#[tokio::test]
async fn server_errors_are_transient() {
    let (addr, shared) = start().await;
    let provider = hetzner(addr, json!({"max_retries": 0}));
    for (status, code) in [
        (500, "server_error"),
        (503, "unavailable"),
        (409, "conflict"),
        (423, "locked"),
        (502, ""),
    ] {
        inject(&shared, "GET /servers", status, code, "try again later");
        match provider.list("acme").await {
            Err(Error::Transient { message, .. }) => {
                assert!(message.contains(&format!("HTTP {status}")), "{message}")
            }
            other => panic!("{status} {code}: {other:?}"),
        }
    }
    assert_eq!(requests_to(&shared, "GET /servers?"), 5);
}

/// A transient failure inside a call is retried and the call succeeds.
#[tokio::test]
async fn transient_failure_is_retried_in_call() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().injected.push_back(Injected {
        route: "POST /servers",
        status: 503,
        code: "unavailable",
        message: "maintenance".into(),
        headers: vec![("retry-after", "0".into())],
    });
    let provider = hetzner(addr, json!({}));
    provider.create(&cpx("acme", "lease_retry")).await.unwrap();
    assert_eq!(requests_to(&shared, "POST /servers"), 2);
    assert_eq!(shared.lock().unwrap().servers.len(), 1);
}

/// A request that gets no answer times out as a transient error.
#[tokio::test]
async fn timeout_is_transient() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().hang = true;
    let provider = hetzner(addr, json!({"request_timeout_ms": 100, "max_retries": 0}));
    match provider.list("acme").await {
        Err(Error::Transient { message, .. }) => {
            assert!(message.contains("timed out"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// The token never shows in errors (401, echoed in a message, connection refused) nor in the
/// provider's Debug output.
#[tokio::test]
async fn token_never_leaks() {
    let (addr, shared) = start().await;
    let wrong = hetzner_with_token(addr, json!({}), "hcloud-wrong-token-SECRET");
    let mut messages = Vec::new();
    match wrong.list("acme").await {
        Err(Error::Permanent(message)) => {
            assert!(message.contains("unauthorized"), "{message}");
            messages.push(message);
        }
        other => panic!("{other:?}"),
    }

    let provider = hetzner(addr, json!({}));
    inject(
        &shared,
        "POST /servers",
        400,
        "invalid_input",
        &format!("bad request with Bearer {TOKEN}"),
    );
    messages.push(
        provider
            .create(&cpx("acme", "lease_echo"))
            .await
            .unwrap_err()
            .to_string(),
    );
    assert!(messages.last().unwrap().contains("<redacted>"));

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = hetzner(closed, json!({"max_retries": 0}));
    messages.push(refused.list("acme").await.unwrap_err().to_string());

    let concrete = providers::hetzner::Hetzner::new(
        serde_json::from_value(json!({"base_url": format!("http://{addr}/v1")})).unwrap(),
        TOKEN,
        &env(&std::env::temp_dir(), true),
    )
    .unwrap();
    let debug = format!("{concrete:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
    messages.push(debug);
    for message in messages {
        assert!(
            !message.contains(TOKEN) && !message.contains("hcloud-wrong-token-SECRET"),
            "{message}"
        );
    }
}

/// Without `allow_private_network`, a host name that resolves to loopback is refused when
/// connecting (the client's resolver drops non-public addresses): no request arrives.
#[tokio::test]
async fn private_host_names_are_refused_at_connect() {
    let (addr, shared) = start().await;
    let config =
        json!({"base_url": format!("http://localhost:{}/v1", addr.port()), "max_retries": 0});
    let dir = std::env::temp_dir();
    let provider = fixtures::build(
        "hetzner",
        config,
        json!({"token": TOKEN}),
        &env(&dir, false),
    );
    match provider.list("acme").await {
        Err(Error::Transient { message, .. }) => {
            assert!(message.contains("no public address"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(shared.lock().unwrap().requests.is_empty());
}

/// Through the operator's proxy (the test server doubles as one: it routes absolute-form
/// requests by their path) a `base_url` whose name resolves to loopback is refused before
/// any request, since the client's resolver only sees the proxy's name.
#[tokio::test]
async fn private_host_names_are_refused_through_a_proxy() {
    let (addr, shared) = start().await;
    let config =
        json!({"base_url": format!("http://localhost:{}/v1", addr.port()), "max_retries": 0});
    let dir = std::env::temp_dir();
    let environment = providers::Environment {
        outbound_proxy: Some(providers::net::parse_proxy(&format!("http://{addr}")).unwrap()),
        ..env(&dir, false)
    };
    let provider = fixtures::build("hetzner", config, json!({"token": TOKEN}), &environment);
    match provider.list("acme").await {
        Err(Error::Permanent(message)) => assert!(message.contains("loopback"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(shared.lock().unwrap().requests.is_empty());
}

/// Invalid labels and missing images fail permanently before any request.
#[tokio::test]
async fn invalid_specs_are_permanent() {
    let (addr, shared) = start().await;
    let provider = hetzner(addr, json!({"image": null}));
    let mut bad_label = cpx("acme", "lease_l");
    bad_label.image = Some("ubuntu-24.04".into());
    bad_label.labels.insert("team/".into(), "infra".into());
    let mut reserved = bad_label.clone();
    reserved.labels = BTreeMap::from([("berth-installation".to_string(), "x".to_string())]);
    let bad_lease = RunnerSpec {
        image: Some("ubuntu-24.04".into()),
        ..cpx("acme", "lease:01")
    };
    let no_image = cpx("acme", "lease_i");
    for spec in [bad_label, reserved, bad_lease, no_image] {
        assert!(
            matches!(provider.create(&spec).await, Err(Error::Permanent(_))),
            "{spec:?}"
        );
    }
    assert!(shared.lock().unwrap().requests.is_empty());
}

/// Config problems are refused at build, without echoing the token.
#[test]
fn bad_config_is_refused() {
    let dir = std::env::temp_dir();
    let refuse = |config: Value, credentials: Value, allow_private: bool| {
        providers::build(
            &fixtures::account("hetzner", config, credentials),
            &env(&dir, allow_private),
        )
        .expect_err("should be refused")
        .0
    };
    let token = json!({"token": TOKEN});
    assert!(
        refuse(json!({"locaton": "fsn1"}), token.clone(), true).contains("unknown field `locaton`")
    );
    assert!(refuse(json!({"price": "cheap"}), token.clone(), true).contains("unknown variant"));
    assert!(
        refuse(
            json!({"base_url": "http://127.0.0.1:1/v1"}),
            token.clone(),
            false
        )
        .contains("loopback")
    );
    assert!(
        refuse(
            json!({"base_url": "ftp://example.com"}),
            token.clone(),
            true
        )
        .contains("scheme")
    );
    assert!(refuse(json!({}), json!({}), true).contains("`token` is missing"));
    for credentials in [
        json!({"token": "has space SECRET"}),
        json!({"token": TOKEN, "extra": TOKEN}),
    ] {
        let message = refuse(json!({}), credentials, true);
        assert!(
            !message.contains("SECRET") && !message.contains(TOKEN),
            "{message}"
        );
    }
    assert!(
        providers::build(
            &fixtures::account("hetzner", json!({}), token),
            &env(&dir, false)
        )
        .is_ok()
    );
}

/// A second berth installation sharing the project (and the tenant name) lists none of the
/// first's servers, and destroying what it lists — or the first's servers by lease or by id
/// — deletes none of them; servers made before installation ids (no label) both may see.
#[tokio::test]
async fn a_second_installation_sharing_the_project_sees_none_of_the_first_servers() {
    let (addr, shared) = start().await;
    let first = hetzner_as(addr, "1111aaaa");
    let second = hetzner_as(addr, "2222bbbb");
    let one = first.create(&cpx("acme", "lease_first_1")).await.unwrap();
    let two = first.create(&cpx("acme", "lease_first_2")).await.unwrap();
    let legacy = insert_server(&shared, "acme", "lease_legacy", true);
    let labels = shared.lock().unwrap().create_bodies[0]["labels"].clone();
    assert_eq!(labels["berth-installation"], "1111aaaa", "{labels}");

    let seen = second.list("acme").await.unwrap();
    assert_eq!(
        seen.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![legacy.to_string()],
        "the second installation lists the first's servers"
    );
    for runner in &seen {
        if runner.id != legacy.to_string() {
            second
                .destroy(&RunnerRef {
                    id: Some(runner.id.clone()),
                    ..by_lease("acme", &runner.lease_id)
                })
                .await
                .unwrap();
        }
    }
    for (runner, lease) in [(&one, "lease_first_1"), (&two, "lease_first_2")] {
        second.destroy(&by_lease("acme", lease)).await.unwrap();
        second
            .destroy(&RunnerRef {
                id: Some(runner.id.clone()),
                ..by_lease("acme", lease)
            })
            .await
            .unwrap();
    }
    assert_eq!(
        shared.lock().unwrap().servers.len(),
        3,
        "a server was deleted"
    );
    assert_eq!(requests_to(&shared, "DELETE"), 0);
    let mut mine: Vec<String> = first
        .list("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    mine.sort();
    let mut want = vec![one.id.clone(), two.id.clone(), legacy.to_string()];
    want.sort();
    assert_eq!(mine, want);
}

/// A create whose action ends in `error` fails at once with the action's message — permanent
/// or capacity by its code — and its failed server is deleted.
#[tokio::test]
async fn a_create_action_ending_in_error_fails_the_create_at_once() {
    let (addr, shared) = start().await;
    let provider = hetzner(addr, json!({}));
    shared.lock().unwrap().action_outcome = Some(("action_failed", "image could not be applied"));
    match provider.create(&cpx("acme", "lease_act_1")).await {
        Err(Error::Permanent(message)) => assert!(
            message.contains("action_failed") && message.contains("image could not be applied"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        shared.lock().unwrap().servers.is_empty(),
        "the failed server lives"
    );
    shared.lock().unwrap().action_outcome = Some(("resource_unavailable", "no cpx22 in fsn1"));
    match provider.create(&cpx("acme", "lease_act_2")).await {
        Err(Error::Capacity(message)) => assert!(message.contains("no cpx22 in fsn1"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(shared.lock().unwrap().servers.is_empty());
    assert_eq!(requests_to(&shared, "GET /actions/"), 2);
    shared.lock().unwrap().action_outcome = None;
    provider.create(&cpx("acme", "lease_act_3")).await.unwrap();
    assert_eq!(shared.lock().unwrap().servers.len(), 1);
}

/// Tenant and pool names ending in `-` (valid in berth) become valid Hetzner label values,
/// and the server is found again by them.
#[tokio::test]
async fn label_values_from_names_ending_in_a_dash_are_valid() {
    let (addr, shared) = start().await;
    let provider = hetzner(addr, json!({}));
    let mut spec = cpx("acme-", "lease_dash");
    spec.labels.insert("berth-pool".into(), "linux-".into());
    let runner = provider.create(&spec).await.unwrap();
    assert_eq!(runner.tenant, "acme-");
    let labels = shared.lock().unwrap().create_bodies[0]["labels"].clone();
    for (key, value) in labels.as_object().unwrap() {
        let value = value.as_str().unwrap();
        assert!(
            providers::hetzner::valid_label_value(value),
            "{key}={value} is not a valid label value"
        );
    }
    assert_ne!(labels["berth-tenant"], labels["berth-pool"]);
    assert_eq!(provider.list("acme-").await.unwrap(), vec![runner.clone()]);
    assert!(provider.list("acme").await.unwrap().is_empty());
    provider
        .destroy(&by_lease("acme-", "lease_dash"))
        .await
        .unwrap();
    assert!(shared.lock().unwrap().servers.is_empty());
}

/// A server without a public IPv4 is reported at a concrete IPv6 address (`<prefix>::1` of
/// its /64), not at the network.
#[tokio::test]
async fn an_ipv6_only_server_has_a_concrete_address() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().no_ipv4 = true;
    let provider = hetzner(addr, json!({}));
    let runner = provider.create(&cpx("acme", "lease_v6")).await.unwrap();
    let address = runner.address.expect("an address");
    let parsed: Ipv6Addr = address.parse().expect("a concrete IPv6 address");
    assert_eq!(parsed, "2001:db8:0:1::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(runner.metadata["ipv6"], "2001:db8:0:1::/64");
}

/// An API error that echoes the request (here the rendered `user_data`) never brings the
/// runner token into the create's error.
#[tokio::test]
async fn create_errors_never_contain_the_runner_token() {
    let (addr, shared) = start().await;
    let provider = hetzner(
        addr,
        json!({"user_data": "#cloud-config\nruncmd: [agent --token {{BERTH_RUNNER_TOKEN}}]"}),
    );
    inject(
        &shared,
        "POST /servers",
        422,
        "invalid_input",
        "invalid user_data: runcmd: [agent --token rt_secret_token]",
    );
    let error = provider
        .create(&cpx("acme", "lease_echo_token"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid user_data"), "{error}");
    assert!(!error.contains("rt_secret_token"), "{error}");
    assert!(error.contains("<redacted>"), "{error}");
}
