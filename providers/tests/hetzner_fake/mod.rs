//! A local fake of the Hetzner Cloud API (axum on 127.0.0.1) for the `hetzner` provider's
//! suites: it checks the bearer token and answers with the shapes, codes and headers
//! documented in `shared/reference/hetzner-cloud.md`, and lets a test script failures, rate
//! limits, lost races and unindexed servers.

// Each suite uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::fixtures::{env, spec};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use providers::{Provider, RunnerSpec};
use serde_json::{Value, json};

pub const TOKEN: &str = "hcloud-test-token-7Qx9ZpL2";

/// A scripted answer for the next request to `route` (`"POST /servers"`, …).
pub struct Injected {
    pub route: &'static str,
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub headers: Vec<(&'static str, String)>,
}

/// The project's rate limit as the API documents it: a budget of `limit` requests that
/// refills `per_s` requests per second; every answer carries `RateLimit-Limit`,
/// `RateLimit-Remaining` and `RateLimit-Reset` (the Unix second at which it is full again),
/// and a request with nothing left gets 429 `rate_limit_exceeded`.
pub struct Limiter {
    pub limit: u64,
    pub tokens: f64,
    pub per_s: f64,
    pub at: Instant,
}

impl Limiter {
    /// A spent budget of `limit` that refills `per_s` per second.
    pub fn spent(limit: u64, per_s: f64) -> Limiter {
        Limiter {
            limit,
            tokens: 0.0,
            per_s,
            at: Instant::now(),
        }
    }

    pub fn refill(&mut self) {
        let now = Instant::now();
        let gained = now.duration_since(self.at).as_secs_f64() * self.per_s;
        self.tokens = (self.tokens + gained).min(self.limit as f64);
        self.at = now;
    }

    /// Takes one request's token; `false` when none is left.
    pub fn take(&mut self) -> bool {
        self.refill();
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    pub fn headers(&self) -> Vec<(&'static str, String)> {
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
pub struct Cloud {
    pub servers: BTreeMap<u64, Value>,
    pub next_id: u64,
    /// Every request as `"<METHOD> <path>?<query>"`, in order.
    pub requests: Vec<String>,
    /// Bodies of `POST /servers`.
    pub create_bodies: Vec<Value>,
    pub injected: VecDeque<Injected>,
    /// The project's rate limit; `None`: unlimited, and no rate-limit headers.
    pub limiter: Option<Limiter>,
    /// The next create loses a race: another caller's server with the same labels appears
    /// and the create gets 409 `uniqueness_error`.
    pub lose_create_race: bool,
    /// Servers the label index does not show yet (label selectors miss them; a `name`
    /// query and `GET /servers/{id}` find them).
    pub unindexed: BTreeSet<u64>,
    /// A lost race's server is not in the label index yet.
    pub race_winner_unindexed: bool,
    /// Actions by id: `(status, error)`; a `running` create action ends as `action_outcome`
    /// says when it is first read.
    pub actions: BTreeMap<u64, (String, Value)>,
    pub next_action: u64,
    /// How create actions end: `None` in `success`, `Some((code, message))` in `error`.
    pub action_outcome: Option<(&'static str, &'static str)>,
    /// New servers get no public IPv4.
    pub no_ipv4: bool,
    /// Requests never get an answer.
    pub hang: bool,
    pub correlation: u64,
}

pub type Shared = Arc<Mutex<Cloud>>;

pub fn server_json(
    id: u64,
    name: &str,
    server_type: &str,
    location: &str,
    labels: &Value,
) -> Value {
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

pub fn action(id: u64, command: &str, server_id: u64) -> Value {
    json!({"id": id, "command": command, "status": "running", "progress": 0,
           "started": "2026-11-27T10:00:00Z", "finished": null, "error": null,
           "resources": [{"id": server_id, "type": "server"}]})
}

pub fn action_json(id: u64, status: &str, error: &Value, server_id: u64) -> Value {
    json!({"id": id, "command": "create_server", "status": status, "progress": 100,
           "started": "2026-11-27T10:00:00Z", "finished": null, "error": error,
           "resources": [{"id": server_id, "type": "server"}]})
}

/// A label selector of `k==v` / `k=v` terms joined by commas.
pub fn matches_selector(labels: &Value, selector: &str) -> bool {
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

pub fn error_response(
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

pub fn ok(cloud: &mut Cloud, status: StatusCode, body: Value) -> Response {
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
pub fn add_limits(cloud: &Cloud, response: &mut Response) {
    if let Some(limiter) = &cloud.limiter {
        for (name, value) in limiter.headers() {
            if !response.headers().contains_key(name) {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
        }
    }
}

pub async fn handle(
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
pub async fn start() -> (SocketAddr, Shared) {
    let shared: Shared = Arc::default();
    let app = Router::new().fallback(handle).with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, shared)
}

/// A provider on the fake, with `extra` config merged in.
pub fn hetzner(addr: SocketAddr, extra: Value) -> Arc<dyn Provider> {
    hetzner_with_token(addr, extra, TOKEN)
}

pub fn hetzner_with_token(addr: SocketAddr, extra: Value, token: &str) -> Arc<dyn Provider> {
    hetzner_of(addr, extra, token, None)
}

/// A provider on the fake for the berth installation `installation`.
pub fn hetzner_as(addr: SocketAddr, installation: &str) -> Arc<dyn Provider> {
    hetzner_of(addr, json!({}), TOKEN, Some(installation))
}

pub fn hetzner_of(
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
    super::fixtures::build("hetzner", config, json!({"token": token}), &environment)
}

pub fn cpx(tenant: &str, lease_id: &str) -> RunnerSpec {
    RunnerSpec {
        machine_type: "cpx22".into(),
        ..spec(tenant, lease_id)
    }
}

/// Adds a server as if berth made it earlier.
pub fn insert_server(shared: &Shared, tenant: &str, lease_id: &str, managed: bool) -> u64 {
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
pub fn requests_to(shared: &Shared, prefix: &str) -> usize {
    shared
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|r| r.starts_with(prefix))
        .count()
}

pub fn inject(
    shared: &Shared,
    route: &'static str,
    status: u16,
    code: &'static str,
    message: &str,
) {
    shared.lock().unwrap().injected.push_back(Injected {
        route,
        status,
        code,
        message: message.into(),
        headers: vec![],
    });
}
