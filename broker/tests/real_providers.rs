//! The tenant object on real provider kinds against local fakes: a `hetzner` account on a fake
//! of the Hetzner Cloud API that keeps servers (labels, label selectors, protection, create
//! actions, capacity) — two installations sharing a project, a server deleted by hand, a
//! protected server, a sold-out server type, a create action ending in `error`, listings that
//! keep failing — and an `http` account on an operator endpoint whose listing has no
//! tenants.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use broker::secrets::Keys;
use broker::tenant::{self, Timing};
use broker::wire::{self, EndReason, LeaseState};
use serde_json::{Value, json};

mod fixture;

use fixture::{Fixture, T0, fast_timing, limits};

const MINUTE: i64 = 60_000;
const TOKEN: &str = "hz-project-token";

/// The fake project: its servers and what the test scripts.
#[derive(Default)]
struct Project {
    servers: BTreeMap<u64, Value>,
    next_id: u64,
    /// Server types whose creates answer `resource_unavailable`.
    sold_out: Vec<String>,
    /// New servers get delete protection (DELETE answers `protected`).
    protect: bool,
    /// Create actions end in this error (`code`, `message`).
    action_error: Option<(String, String)>,
    /// Every DELETE received, by server id.
    deletes: Vec<u64>,
    /// Listings answer 503 `unavailable`.
    refuse_lists: bool,
}

type Shared = Arc<Mutex<Project>>;

fn error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({ "error": { "code": code, "message": message, "details": null } })),
    )
        .into_response()
}

fn authorized(headers: &axum::http::HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

/// `k==v` / `k=v` terms joined by commas, all of which must hold.
fn matches(labels: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (key, value) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .unwrap();
        labels.get(key).and_then(Value::as_str) == Some(value)
    })
}

async fn list(
    State(project): State<Shared>,
    headers: axum::http::HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return error(401, "unauthorized", "unable to authenticate");
    }
    let project = project.lock().unwrap();
    if project.refuse_lists {
        return error(503, "unavailable", "the service is unavailable");
    }
    let servers: Vec<&Value> = project
        .servers
        .values()
        .filter(|s| {
            query
                .get("label_selector")
                .is_none_or(|sel| matches(&s["labels"], sel))
                && query
                    .get("name")
                    .is_none_or(|name| s["name"] == name.as_str())
        })
        .collect();
    let total = servers.len();
    Json(
        json!({ "servers": servers, "meta": { "pagination": { "page": 1, "per_page": 50,
        "previous_page": null, "next_page": null, "last_page": 1, "total_entries": total } } }),
    )
    .into_response()
}

async fn create(
    State(project): State<Shared>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&headers) {
        return error(401, "unauthorized", "unable to authenticate");
    }
    let mut project = project.lock().unwrap();
    let server_type = body["server_type"].as_str().unwrap_or_default().to_owned();
    if project.sold_out.contains(&server_type) {
        return error(
            412,
            "resource_unavailable",
            &format!("server type {server_type} is unavailable in this location"),
        );
    }
    project.next_id += 1;
    let id = project.next_id;
    let server = json!({
        "id": id, "name": body["name"], "status": "running", "created": "2026-11-27T10:00:00Z",
        "labels": body["labels"], "server_type": { "id": 1, "name": server_type },
        "location": { "id": 1, "name": body["location"].as_str().unwrap_or("fsn1") },
        "public_net": { "ipv4": { "id": id, "ip": format!("203.0.113.{id}"), "blocked": false }, "ipv6": null },
        "protection": { "delete": project.protect, "rebuild": false },
    });
    project.servers.insert(id, server.clone());
    let action = match &project.action_error {
        Some((code, message)) => json!({ "id": id, "command": "create_server", "status": "error",
            "progress": 100, "error": { "code": code, "message": message } }),
        None => {
            json!({ "id": id, "command": "create_server", "status": "success", "progress": 100, "error": null })
        }
    };
    (
        StatusCode::CREATED,
        Json(json!({ "server": server, "action": action, "next_actions": [], "root_password": null })),
    )
        .into_response()
}

async fn server(
    State(project): State<Shared>,
    headers: axum::http::HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    if !authorized(&headers) {
        return error(401, "unauthorized", "unable to authenticate");
    }
    match project.lock().unwrap().servers.get(&id) {
        Some(server) => Json(json!({ "server": server })).into_response(),
        None => error(404, "not_found", "server not found"),
    }
}

async fn delete(
    State(project): State<Shared>,
    headers: axum::http::HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    if !authorized(&headers) {
        return error(401, "unauthorized", "unable to authenticate");
    }
    let mut project = project.lock().unwrap();
    project.deletes.push(id);
    let protected = match project.servers.get(&id) {
        None => return error(404, "not_found", "server not found"),
        Some(server) => server["protection"]["delete"] == true,
    };
    if protected {
        return error(
            403,
            "protected",
            "cannot perform operation due to resource protection",
        );
    }
    project.servers.remove(&id);
    Json(json!({ "action": { "id": 1000 + id, "command": "delete_server", "status": "running", "error": null } }))
        .into_response()
}

async fn action(Path(id): Path<u64>) -> Response {
    Json(json!({ "action": { "id": id, "status": "success", "error": null } })).into_response()
}

/// Starts the fake API on 127.0.0.1; its base URL (`…/v1`) and state.
async fn start() -> (String, Shared) {
    let project: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/v1/servers", get(list).post(create))
        .route("/v1/servers/{id}", get(server).delete(delete))
        .route("/v1/actions/{id}", get(action))
        .with_state(project.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, project)
}

/// Reconciliation every minute, orphans destroyed on their second sighting.
fn timing() -> Timing {
    Timing {
        reconcile_interval: Duration::from_secs(60),
        orphan_grace: Duration::ZERO,
        ..fast_timing()
    }
}

impl Fixture {
    /// A `hetzner` account `hz` on the fake project and a pool `small` of `cx22` (with
    /// `alternatives`).
    async fn hetzner(&self, url: &str, alternatives: Vec<wire::PoolAlternative>) {
        self.ok(tenant::PutProvider {
            name: "hz".into(),
            account: wire::ProviderPut {
                kind: "hetzner".into(),
                config: json!({ "base_url": url, "image": "ubuntu-24.04", "max_retries": 0 }),
                credentials: json!({ "token": TOKEN }),
            },
            by_operator: false,
            force: false,
        })
        .await;
        self.ok(tenant::PutPool {
            name: "small".into(),
            pool: wire::PoolPut {
                provider: "hz".into(),
                machine_type: "cx22".into(),
                hourly_price_micros: Some(3_600_000),
                max_active: None,
                image: None,
                region: Some("fsn1".into()),
                command: None,
                labels: None,
                alternatives: Some(alternatives),
                min_ready: None,
                max_ready: None,
                warm_ttl_s: None,
                github: None,
            },
            provider_price: None,
            by_operator: false,
        })
        .await;
    }

    /// Waits until the lease has a runner (its create answered).
    async fn until_runner(&self, id: &str) -> wire::Lease {
        for _ in 0..2_000 {
            let lease = self.lease(id).await;
            if lease.runner.as_ref().is_some_and(|r| r.id.is_some()) || lease.state.is_terminal() {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("lease {id} never got a runner: {:?}", self.lease(id).await);
    }

    /// A lease whose server exists and called back ready.
    async fn ready_lease(&self) -> wire::Lease {
        let (lease, _) = self.request(3_600, 0).await.expect("granted");
        self.until_runner(&lease.id).await;
        self.ok(tenant::RunnerReady {
            id: lease.id.clone(),
            token: Keys::from_master(&[9; 32]).runner_token("acme", &lease.id),
            address: None,
            metadata: BTreeMap::new(),
        })
        .await;
        self.until(&lease.id, LeaseState::Ready).await
    }

    async fn until_event(&self, kind: &str) -> Value {
        for _ in 0..2_000 {
            if let Some(event) = self
                .events()
                .await
                .into_iter()
                .find(|e| e.kind.as_str() == kind)
            {
                return serde_json::from_str(event.data.get()).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("no `{kind}` event");
    }
}

fn server_ids(project: &Shared) -> Vec<u64> {
    project.lock().unwrap().servers.keys().copied().collect()
}

/// Two berth installations share one Hetzner project and a tenant name. The second one's
/// reconciliation — listing, every round, with no grace period — leaves the first's servers
/// alone (a live one and an orphan of an ended lease); the first destroys its own orphan and
/// keeps its live server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_installation_sharing_the_project_leaves_the_first_servers_alone() {
    let (url, project) = start().await;
    let first = Fixture::of_installation(limits(5), timing(), Some("first0install")).await;
    first.hetzner(&url, Vec::new()).await;
    first.listings(1).await;
    let live = first.ready_lease().await;
    let ended = first.ready_lease().await;
    let ended_server: u64 = ended.runner.unwrap().id.unwrap().parse().unwrap();
    let ended_labels = project.lock().unwrap().servers[&ended_server]["labels"].clone();
    first.release(&ended.id).await;
    first.until(&ended.id, LeaseState::Released).await;
    // The ended lease's server reappears (it outlived its destroy).
    {
        let mut p = project.lock().unwrap();
        p.next_id += 1;
        let id = p.next_id;
        p.servers.insert(id, json!({ "id": id, "name": format!("berth-{}", ended.id), "status": "running",
            "labels": ended_labels, "public_net": { "ipv4": null, "ipv6": null }, "protection": { "delete": false } }));
    }
    let first_servers = server_ids(&project);
    assert_eq!(first_servers.len(), 2);

    let second = Fixture::of_installation(limits(5), timing(), Some("second0install")).await;
    second.hetzner(&url, Vec::new()).await;
    second.listings(1).await;
    // Provider work of its own keeps the second installation reconciling.
    let own = second.ready_lease().await;
    second.release(&own.id).await;
    second.until(&own.id, LeaseState::Released).await;
    second.round(T0 + MINUTE, 2).await;
    second.round(T0 + 2 * MINUTE, 3).await;
    assert_eq!(
        server_ids(&project),
        first_servers,
        "the second installation deleted none of the first's servers"
    );
    assert!(
        project
            .lock()
            .unwrap()
            .deletes
            .iter()
            .all(|id| !first_servers.contains(id)),
        "nor tried to"
    );

    // The first installation's own rounds destroy its orphan and keep its live server.
    first.round(T0 + MINUTE, 2).await;
    first.round(T0 + 2 * MINUTE, 3).await;
    first.until_event("runner.orphan_destroyed").await;
    let live_server: u64 = live.runner.unwrap().id.unwrap().parse().unwrap();
    assert_eq!(server_ids(&project), vec![live_server]);
    assert_eq!(first.lease(&live.id).await.state, LeaseState::Ready);
}

/// A server deleted by hand in the console ends its lease as `runner_lost` once two
/// listings in a row miss it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_deleted_by_hand_ends_its_lease_as_runner_lost() {
    let (url, project) = start().await;
    let f = Fixture::of_installation(limits(5), timing(), Some("install0")).await;
    f.hetzner(&url, Vec::new()).await;
    f.listings(1).await;
    let lease = f.ready_lease().await;
    f.round(T0 + MINUTE, 2).await;
    let server: u64 = lease.runner.unwrap().id.unwrap().parse().unwrap();
    project.lock().unwrap().servers.remove(&server);
    f.round(T0 + 2 * MINUTE, 3).await;
    f.round(T0 + 3 * MINUTE, 4).await;
    let lost = f.until(&lease.id, LeaseState::Failed).await;
    assert_eq!(lost.end_reason, Some(EndReason::RunnerLost));
    assert_eq!(
        lost.cost.charged_micros, 60_000,
        "charged up to when last seen"
    );
}

/// A server with delete protection answers `protected`: the lease raises
/// `runner.destroy_stuck` (permanent), stays releasing and shows why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_that_gets_protected_raises_destroy_stuck() {
    let (url, project) = start().await;
    project.lock().unwrap().protect = true;
    let f = Fixture::of_installation(limits(5), timing(), Some("install0")).await;
    f.hetzner(&url, Vec::new()).await;
    let lease = f.ready_lease().await;
    f.release(&lease.id).await;
    let stuck = f.until_event("runner.destroy_stuck").await;
    assert_eq!(stuck["lease_id"], lease.id.as_str());
    assert_eq!(stuck["permanent"], true);
    assert!(
        stuck["error"].as_str().unwrap().contains("protected"),
        "{stuck}"
    );
    let releasing = f.lease(&lease.id).await;
    assert_eq!(releasing.state, LeaseState::Releasing);
    assert!(
        releasing
            .stuck
            .as_ref()
            .is_some_and(|s| s.reason.contains("protected"))
    );
    assert!(!stuck.to_string().contains(TOKEN));
}

/// `resource_unavailable` for the pool's server type moves the lease to its alternative; the
/// lease records both attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_server_type_falls_back_to_the_alternative() {
    let (url, project) = start().await;
    project.lock().unwrap().sold_out = vec!["cx22".into()];
    let f = Fixture::of_installation(limits(5), timing(), Some("install0")).await;
    let alternative = wire::PoolAlternative {
        machine_type: "cx32".into(),
        region: Some("nbg1".into()),
        hourly_price_micros: 7_200_000,
    };
    f.hetzner(&url, vec![alternative]).await;
    let (lease, _) = f.request(600, 0).await.expect("granted");
    let made = f.until_runner(&lease.id).await;
    let attempts: Vec<(String, Option<String>)> = made
        .provisioning_attempts
        .iter()
        .map(|a| (a.machine_type.clone(), a.error_class.clone()))
        .collect();
    assert_eq!(
        attempts,
        vec![
            ("cx22".to_owned(), Some("capacity".to_owned())),
            ("cx32".to_owned(), None)
        ]
    );
    assert!(
        made.provisioning_attempts[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("resource_unavailable")),
        "{made:?}"
    );
    assert_eq!(made.cost.hourly_price_micros, 7_200_000);
    let server =
        &project.lock().unwrap().servers[&made.runner.unwrap().id.unwrap().parse::<u64>().unwrap()];
    assert_eq!(server["server_type"]["name"], "cx32");
    assert_eq!(server["location"]["name"], "nbg1");
}

/// A create whose action ends in `error` fails the lease at once with the action's message,
/// long before the ready timeout (the clock never moves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_action_ending_in_error_fails_the_lease_at_once() {
    let (url, project) = start().await;
    project.lock().unwrap().action_error = Some((
        "unsupported_error".into(),
        "image ubuntu-24.04 is not available for this server type".into(),
    ));
    let f = Fixture::of_installation(limits(5), timing(), Some("install0")).await;
    f.hetzner(&url, Vec::new()).await;
    let (lease, _) = f.request(600, 0).await.expect("granted");
    let failed = f.until(&lease.id, LeaseState::Failed).await;
    assert_eq!(failed.end_reason, Some(EndReason::ProviderError));
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("is not available for this server type")),
        "{failed:?}"
    );
    assert!(
        server_ids(&project).is_empty(),
        "the failed server was deleted"
    );
}

/// Listings that keep failing raise `provider.reconcile_failing` once, after three rounds in
/// a row, and nothing is destroyed or ended meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_that_keep_failing_raise_reconcile_failing() {
    let (url, project) = start().await;
    let f = Fixture::of_installation(limits(5), timing(), Some("install0")).await;
    f.hetzner(&url, Vec::new()).await;
    f.listings(1).await;
    let lease = f.ready_lease().await;
    project.lock().unwrap().refuse_lists = true;
    for n in 1..=4 {
        f.round(T0 + n * MINUTE, 1 + u64::try_from(n).unwrap())
            .await;
    }
    let failing = f.until_event("provider.reconcile_failing").await;
    assert_eq!(failing["account"], "hz");
    assert_eq!(failing["failures"], 3);
    assert!(failing["error"].as_str().unwrap().contains("unavailable"));
    let count = f
        .events()
        .await
        .iter()
        .filter(|e| e.kind.as_str() == "provider.reconcile_failing")
        .count();
    assert_eq!(count, 1, "once per streak");
    assert_eq!(f.lease(&lease.id).await.state, LeaseState::Ready);
    assert_eq!(server_ids(&project).len(), 1);
}

/// An operator's `http` endpoint that lists its runners without `tenant` (it lists all it
/// holds): berth skips every such item, so its reconciliation destroys nothing — neither the
/// runner of an ended lease nor a live one — and no live lease is taken for lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_listing_without_tenants_destroys_nothing() {
    #[derive(Default)]
    struct Endpoint {
        runners: BTreeMap<String, String>,
        destroys: Vec<String>,
    }
    let endpoint: Arc<Mutex<Endpoint>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/berth/create",
            axum::routing::post(
                |State(e): State<Arc<Mutex<Endpoint>>>, Json(body): Json<Value>| async move {
                    let lease = body["lease_id"].as_str().unwrap().to_owned();
                    let id = format!("vm-{lease}");
                    e.lock().unwrap().runners.insert(id.clone(), lease.clone());
                    Json(
                        json!({ "id": id, "tenant": body["tenant"], "lease_id": lease,
                        "installation_id": body["installation_id"], "ready": true }),
                    )
                },
            ),
        )
        .route(
            "/berth/destroy",
            axum::routing::post(
                |State(e): State<Arc<Mutex<Endpoint>>>, Json(body): Json<Value>| async move {
                    let mut e = e.lock().unwrap();
                    e.destroys
                        .push(body["lease_id"].as_str().unwrap().to_owned());
                    if let Some(id) = body["id"].as_str() {
                        e.runners.remove(id);
                    }
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/berth/list",
            axum::routing::post(|State(e): State<Arc<Mutex<Endpoint>>>| async move {
                // Every runner it holds, none with a tenant.
                let items: Vec<Value> = e
                    .lock()
                    .unwrap()
                    .runners
                    .iter()
                    .map(|(id, lease)| json!({ "id": id, "lease_id": lease, "ready": true }))
                    .collect();
                Json(json!({ "items": items }))
            }),
        )
        .with_state(endpoint.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/berth", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let f = Fixture::of_installation(limits(5), timing(), Some("install0")).await;
    f.ok(tenant::PutProvider {
        name: "ops".into(),
        account: wire::ProviderPut {
            kind: "http".into(),
            config: json!({ "url": url }),
            credentials: json!({ "secret": providers::signing::generate_secret() }),
        },
        by_operator: false,
        force: false,
    })
    .await;
    f.ok(tenant::PutPool {
        name: "small".into(),
        pool: wire::PoolPut {
            provider: "ops".into(),
            machine_type: "small".into(),
            hourly_price_micros: Some(0),
            max_active: None,
            image: None,
            region: None,
            command: None,
            labels: None,
            alternatives: None,
            min_ready: None,
            max_ready: None,
            warm_ttl_s: None,
            github: None,
        },
        provider_price: None,
        by_operator: false,
    })
    .await;
    f.listings(1).await;
    let live = f.ready_lease().await;
    let (ended, _) = f.request(3_600, 0).await.expect("granted");
    f.until(&ended.id, LeaseState::Ready).await;
    f.release(&ended.id).await;
    f.until(&ended.id, LeaseState::Released).await;
    // The ended lease's runner is back at the endpoint (it outlived its destroy), and the
    // endpoint holds one of somebody else's.
    {
        let mut e = endpoint.lock().unwrap();
        e.runners
            .insert(format!("vm-{}", ended.id), ended.id.clone());
        e.runners.insert("vm-theirs".into(), "lease_theirs".into());
    }
    let destroys = endpoint.lock().unwrap().destroys.len();
    // Provider work at T0 keeps rounds going for two intervals.
    for n in 1..=2 {
        f.round(T0 + n * MINUTE, 1 + u64::try_from(n).unwrap())
            .await;
    }
    f.clock.set(T0 + 4 * MINUTE);
    let _ = f.lease(&live.id).await;
    assert_eq!(
        endpoint.lock().unwrap().destroys.len(),
        destroys,
        "nothing destroyed"
    );
    assert_eq!(endpoint.lock().unwrap().runners.len(), 3);
    assert_eq!(f.lease(&live.id).await.state, LeaseState::Ready);
    assert!(
        f.events()
            .await
            .iter()
            .all(|e| e.kind.as_str() != "runner.orphan_destroyed")
    );
}
