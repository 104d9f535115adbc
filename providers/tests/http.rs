//! The `http` provider against a local axum endpoint (127.0.0.1) that implements the protocol
//! of providers/README.md and verifies every request's signature (`berth-signature`, over
//! method, path and body) with `Secret::verify_request`.

// The endpoint's helpers are test code too: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod fixtures;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use fixtures::{by_lease, env, spec};
use providers::signing::{self, Headers, Secret};
use providers::{Error, Provider, Runner, RunnerRef};
use serde_json::{Value, json};

const SECRET: &str = "whsec_YmVydGgtc3RhbmRhcmQtd2ViaG9va3MtdGVzdC1rZXk=";
const OTHER_SECRET: &str = "whsec_YmVydGgtcm90YXRlZC1zZWNyZXQta2V5LTAwMDIhISE=";

/// A scripted answer: operation, status, body, extra headers.
type Scripted = (&'static str, u16, String, Vec<(&'static str, &'static str)>);

/// One request as the endpoint received it, for tests that check its signature themselves.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    target: String,
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

/// The endpoint's state, shared with the test.
#[derive(Default)]
struct Endpoint {
    /// Runners by lease id.
    runners: BTreeMap<String, Runner>,
    /// The installation id each runner was created for, by lease id.
    installations: BTreeMap<String, String>,
    /// Every request, as received.
    received: Vec<Received>,
    /// Every `webhook-id` seen, to check they are unique.
    ids: Vec<String>,
    /// Operations that arrived with a valid signature.
    verified: Vec<String>,
    /// Requests refused for their signature.
    rejected: usize,
    /// Scripted answers: (operation, status, body, headers), used before the normal logic.
    scripted: VecDeque<Scripted>,
    /// Requests never get an answer.
    hang: bool,
}

type Shared = Arc<Mutex<Endpoint>>;

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn json_reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn operation(
    State(shared): State<Shared>,
    UrlPath(op): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if shared.lock().unwrap().hang {
        std::future::pending::<()>().await;
    }
    let mut endpoint = shared.lock().unwrap();
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let target = uri
        .path_and_query()
        .map_or(uri.path(), |target| target.as_str());
    let secret = Secret::parse(SECRET).unwrap();
    let verdict = Headers::from_request_lookup(header).and_then(|signed| {
        secret.verify_request(
            &signed,
            method.as_str(),
            target,
            &body,
            now_s(),
            signing::TOLERANCE,
        )
    });
    if let Some(id) = header(signing::HEADER_ID) {
        endpoint.ids.push(id.to_string());
    }
    endpoint.received.push(Received {
        method: method.to_string(),
        target: target.to_string(),
        id: header(signing::HEADER_ID).unwrap_or_default().to_string(),
        timestamp: header(signing::HEADER_TIMESTAMP)
            .unwrap_or_default()
            .to_string(),
        signature: header(signing::HEADER_REQUEST_SIGNATURE)
            .unwrap_or_default()
            .to_string(),
        body: body.to_vec(),
    });
    if let Err(e) = verdict {
        endpoint.rejected += 1;
        return json_reply(
            StatusCode::UNAUTHORIZED,
            json!({"detail": format!("signature: {e}")}),
        );
    }
    assert_eq!(header("content-type"), Some("application/json"));
    endpoint.verified.push(op.clone());
    if endpoint
        .scripted
        .front()
        .is_some_and(|(route, ..)| *route == op)
    {
        let (_, status, text, extra) = endpoint.scripted.pop_front().unwrap();
        let mut response = (StatusCode::from_u16(status).unwrap(), text).into_response();
        for (name, value) in extra {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        return response;
    }
    let request: Value = serde_json::from_slice(&body).unwrap();
    match op.as_str() {
        "create" => {
            let lease_id = request["lease_id"].as_str().unwrap().to_string();
            if let Some(installation) = request["installation_id"].as_str() {
                endpoint
                    .installations
                    .entry(lease_id.clone())
                    .or_insert_with(|| installation.to_string());
            }
            let runner = endpoint
                .runners
                .entry(lease_id.clone())
                .or_insert_with(|| Runner {
                    id: format!("vm-{lease_id}"),
                    tenant: request["tenant"].as_str().unwrap().to_string(),
                    lease_id,
                    address: Some("203.0.113.10".into()),
                    metadata: BTreeMap::from([(
                        "token_seen".into(),
                        (request["env"]["BERTH_RUNNER_TOKEN"] == "rt_secret_token").to_string(),
                    )]),
                    ready: false,
                });
            json_reply(StatusCode::CREATED, serde_json::to_value(runner).unwrap())
        }
        "destroy" => match endpoint
            .runners
            .remove(request["lease_id"].as_str().unwrap())
        {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => json_reply(StatusCode::NOT_FOUND, json!({"detail": "already gone"})),
        },
        "list" => {
            // Lists every tenant's runners, with their installation: berth must pick its own.
            let items: Vec<Value> = endpoint
                .runners
                .values()
                .map(|runner| {
                    let mut item = serde_json::to_value(runner).unwrap();
                    if let Some(installation) = endpoint.installations.get(&runner.lease_id) {
                        item["installation_id"] = json!(installation);
                    }
                    item
                })
                .collect();
            json_reply(StatusCode::OK, json!({"items": items}))
        }
        "price" => {
            let price = match (
                request["machine_type"].as_str().unwrap(),
                request["region"].as_str(),
            ) {
                ("small", None) => json!(12_000),
                ("small", Some("eu")) => json!(13_000),
                _ => Value::Null,
            };
            json_reply(StatusCode::OK, json!({"hourly_price_micros": price}))
        }
        _ => json_reply(
            StatusCode::NOT_FOUND,
            json!({"detail": "unknown operation"}),
        ),
    }
}

/// Starts the endpoint under `/berth` on 127.0.0.1.
async fn start() -> (SocketAddr, Shared) {
    let shared: Shared = Arc::default();
    let app = Router::new()
        .route("/berth/{op}", post(operation))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, shared)
}

fn http(addr: SocketAddr, secret: &str, extra: Value) -> Arc<dyn Provider> {
    let mut config = json!({"url": format!("http://{addr}/berth/")});
    if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
        config.extend(extra);
    }
    fixtures::build(
        "http",
        config,
        json!({"secret": secret}),
        &env(Path::new("/nonexistent"), true),
    )
}

/// The concrete provider of installation `installation` on the endpoint, so a test can read
/// its counters.
fn http_as(addr: SocketAddr, installation: Option<&str>) -> providers::http::Http {
    let environment = providers::Environment {
        installation_id: installation.map(str::to_string),
        ..env(Path::new("/nonexistent"), true)
    };
    providers::http::Http::new(
        serde_json::from_value(json!({"url": format!("http://{addr}/berth/")})).unwrap(),
        SECRET,
        &environment,
    )
    .unwrap()
}

fn script(
    shared: &Shared,
    op: &'static str,
    status: u16,
    body: &str,
    headers: Vec<(&'static str, &'static str)>,
) {
    shared
        .lock()
        .unwrap()
        .scripted
        .push_back((op, status, body.to_string(), headers));
}

/// The whole protocol: signed create (idempotent), list, price, destroy and destroy again.
#[tokio::test]
async fn protocol_round_trip() {
    let (addr, shared) = start().await;
    let provider = http(addr, SECRET, json!({}));
    let runner = provider.create(&spec("acme", "lease_h1")).await.unwrap();
    assert_eq!(runner.id, "vm-lease_h1");
    assert_eq!(runner.address.as_deref(), Some("203.0.113.10"));
    assert!(!runner.ready);
    assert_eq!(
        runner.metadata["token_seen"], "true",
        "the runner's env did not reach the endpoint"
    );
    assert_eq!(
        provider.create(&spec("acme", "lease_h1")).await.unwrap(),
        runner
    );
    provider.create(&spec("other", "lease_h2")).await.unwrap();

    assert_eq!(provider.list("acme").await.unwrap(), vec![runner.clone()]);
    assert_eq!(provider.price("small", None).await.unwrap(), Some(12_000));
    assert_eq!(
        provider.price("small", Some("eu")).await.unwrap(),
        Some(13_000)
    );
    assert_eq!(provider.price("huge", None).await.unwrap(), None);

    provider
        .destroy(&RunnerRef {
            id: Some(runner.id.clone()),
            ..by_lease("acme", "lease_h1")
        })
        .await
        .unwrap();
    provider
        .destroy(&by_lease("acme", "lease_h1"))
        .await
        .unwrap();
    assert!(provider.list("acme").await.unwrap().is_empty());

    let endpoint = shared.lock().unwrap();
    assert_eq!(endpoint.rejected, 0);
    assert_eq!(endpoint.verified.len(), 10);
    let unique: BTreeSet<&String> = endpoint.ids.iter().collect();
    assert_eq!(unique.len(), endpoint.ids.len(), "webhook-id reused");
    assert!(
        endpoint
            .ids
            .iter()
            .all(|id| id.starts_with("msg_") && !id.contains('.'))
    );
}

/// An endpoint that cannot verify the signature (another secret) answers 401: permanent,
/// with the endpoint's detail.
#[tokio::test]
async fn wrong_secret_is_refused_by_the_endpoint() {
    let (addr, shared) = start().await;
    let provider = http(addr, OTHER_SECRET, json!({}));
    match provider.create(&spec("acme", "lease_h3")).await {
        Err(Error::Permanent(message)) => {
            assert!(
                message.contains("HTTP 401") && message.contains("no matching webhook signature"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(shared.lock().unwrap().rejected, 1);
}

/// Status codes map to transient, capacity and permanent errors as documented.
#[tokio::test]
async fn statuses_map_to_errors() {
    let (addr, shared) = start().await;
    let provider = http(addr, SECRET, json!({}));
    let long = "x".repeat(2000);
    script(&shared, "create", 429, "", vec![("retry-after", "7")]);
    script(&shared, "create", 500, "boom", vec![]);
    script(
        &shared,
        "create",
        503,
        r#"{"code":"capacity","detail":"no small machines"}"#,
        vec![],
    );
    script(&shared, "create", 507, r#"{"code":"capacity"}"#, vec![]);
    script(
        &shared,
        "create",
        503,
        r#"{"detail":"restarting"}"#,
        vec![("retry-after", "2")],
    );
    script(
        &shared,
        "create",
        400,
        r#"{"detail":"unknown machine type `small`"}"#,
        vec![],
    );
    script(&shared, "create", 422, &long, vec![]);
    script(
        &shared,
        "create",
        404,
        r#"{"message":"no create here"}"#,
        vec![],
    );
    script(&shared, "create", 200, r#"{"id": ""}"#, vec![]);
    script(&shared, "create", 201, "not json", vec![]);
    script(&shared, "destroy", 500, "", vec![]);
    script(&shared, "list", 502, "", vec![]);
    script(
        &shared,
        "price",
        200,
        r#"{"hourly_price_micros": -5}"#,
        vec![],
    );
    let spec_h4 = spec("acme", "lease_h4");
    let create = || provider.create(&spec_h4);

    assert!(
        matches!(create().await, Err(Error::Transient { retry_after: Some(wait), .. }) if wait == Duration::from_secs(7))
    );
    assert!(
        matches!(create().await, Err(Error::Transient { message, retry_after: None }) if message.contains("HTTP 500: boom"))
    );
    assert!(
        matches!(create().await, Err(Error::Capacity(message)) if message.contains("no small machines"))
    );
    assert!(matches!(create().await, Err(Error::Capacity(_))));
    assert!(
        matches!(create().await, Err(Error::Transient { retry_after: Some(wait), .. }) if wait == Duration::from_secs(2))
    );
    assert!(
        matches!(create().await, Err(Error::Permanent(message)) if message.contains("unknown machine type `small`"))
    );
    match create().await {
        Err(Error::Permanent(message)) => assert!(
            message.len() < 600 && message.contains(&"x".repeat(500)),
            "{}",
            message.len()
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(create().await, Err(Error::Permanent(message)) if message.contains("no create here"))
    );
    assert!(
        matches!(create().await, Err(Error::Permanent(message)) if message.contains("empty `id`"))
    );
    assert!(
        matches!(create().await, Err(Error::Permanent(message)) if message.contains("not valid"))
    );
    assert!(matches!(
        provider.destroy(&by_lease("acme", "lease_h4")).await,
        Err(Error::Transient { .. })
    ));
    assert!(matches!(
        provider.list("acme").await,
        Err(Error::Transient { .. })
    ));
    assert!(matches!(
        provider.price("small", None).await,
        Err(Error::Permanent(_))
    ));
    assert!(shared.lock().unwrap().scripted.is_empty());
}

/// A runner of another lease or tenant in a create's answer is refused.
#[tokio::test]
async fn answers_must_match_the_request() {
    let (addr, shared) = start().await;
    let provider = http(addr, SECRET, json!({}));
    script(
        &shared,
        "create",
        201,
        r#"{"id": "vm-1", "lease_id": "lease_other"}"#,
        vec![],
    );
    script(
        &shared,
        "create",
        201,
        r#"{"id": "vm-1", "tenant": "other"}"#,
        vec![],
    );
    for _ in 0..2 {
        assert!(
            matches!(provider.create(&spec("acme", "lease_h5")).await, Err(Error::Permanent(m)) if m.contains("another"))
        );
    }
    // A minimal answer is enough for create: the tenant and lease come from the request.
    script(&shared, "create", 200, r#"{"id": "vm-min"}"#, vec![]);
    let runner = provider.create(&spec("acme", "lease_h5")).await.unwrap();
    assert_eq!(
        (
            runner.id.as_str(),
            runner.tenant.as_str(),
            runner.lease_id.as_str()
        ),
        ("vm-min", "acme", "lease_h5")
    );
}

/// No answer in time, or no listener at all, is transient.
#[tokio::test]
async fn timeouts_and_refused_connections_are_transient() {
    let (addr, shared) = start().await;
    shared.lock().unwrap().hang = true;
    let slow = http(addr, SECRET, json!({"timeout_ms": 100}));
    assert!(
        matches!(slow.list("acme").await, Err(Error::Transient { message, .. }) if message.contains("timed out"))
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = http(closed, SECRET, json!({}));
    assert!(
        matches!(refused.list("acme").await, Err(Error::Transient { message, .. }) if message.contains("connect"))
    );
}

/// Private endpoints are refused unless the operator allows private networks: IP literals
/// at build, host names (here `localhost`) before any request is sent.
#[tokio::test]
async fn private_endpoints_are_refused() {
    let (addr, shared) = start().await;
    let public_only = env(Path::new("/nonexistent"), false);
    let account =
        |url: String| fixtures::account("http", json!({"url": url}), json!({"secret": SECRET}));

    let error = providers::build(&account(format!("http://{addr}/berth")), &public_only)
        .expect_err("loopback literal");
    assert!(error.0.contains("loopback"), "{error}");
    let error = providers::build(
        &account("http://[::ffff:10.0.0.1]/berth".into()),
        &public_only,
    )
    .expect_err("mapped private");
    assert!(error.0.contains("private"), "{error}");

    let by_name = providers::build(
        &account(format!("http://localhost:{}/berth", addr.port())),
        &public_only,
    )
    .unwrap();
    match by_name.list("acme").await {
        Err(Error::Permanent(message)) => assert!(message.contains("loopback"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(
        shared.lock().unwrap().ids.is_empty(),
        "a request reached a private endpoint"
    );

    let allowed = env(Path::new("/nonexistent"), true);
    let provider = providers::build(
        &account(format!("http://localhost:{}/berth", addr.port())),
        &allowed,
    )
    .unwrap();
    assert!(provider.list("acme").await.unwrap().is_empty());
}

/// Through the operator's proxy (`Environment::outbound_proxy`; the test endpoint doubles as
/// one, as it routes absolute-form requests by their path) requests reach a target whose name
/// only the proxy would resolve; a target that resolves to loopback is still refused before
/// any request, unless private networks are allowed.
#[tokio::test]
async fn an_outbound_proxy_carries_requests_and_the_guard_still_applies() {
    let (addr, shared) = start().await;
    let proxy = providers::net::parse_proxy(&format!("http://{addr}")).unwrap();
    let through = |allow_private: bool| providers::Environment {
        outbound_proxy: Some(proxy.clone()),
        ..env(Path::new("/nonexistent"), allow_private)
    };
    let account =
        |url: &str| fixtures::account("http", json!({"url": url}), json!({"secret": SECRET}));

    let guarded = providers::build(
        &account(&format!("http://localhost:{}/berth", addr.port())),
        &through(false),
    )
    .unwrap();
    match guarded.list("acme").await {
        Err(Error::Permanent(message)) => assert!(message.contains("loopback"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(
        shared.lock().unwrap().verified.is_empty(),
        "a request went through the proxy to a private target"
    );

    // `.invalid` never resolves: only the proxy could have carried this request.
    let proxied =
        providers::build(&account("http://provider.invalid/berth"), &through(true)).unwrap();
    assert!(proxied.list("acme").await.unwrap().is_empty());
    assert_eq!(shared.lock().unwrap().verified, ["list"]);
}

/// The secret never shows in errors nor in Debug output; bad configs are refused clearly.
#[tokio::test]
async fn secret_never_leaks_and_config_is_checked() {
    let (addr, shared) = start().await;
    script(&shared, "create", 400, &format!("echo {SECRET}"), vec![]);
    let environment = env(Path::new("/nonexistent"), true);
    let concrete = providers::http::Http::new(
        serde_json::from_value(json!({"url": format!("http://{addr}/berth")})).unwrap(),
        SECRET,
        &environment,
    )
    .unwrap();
    let debug = format!("{concrete:?}");
    assert!(
        !debug.contains("YmVydGgtc3RhbmRhcmQ") && debug.contains("redacted"),
        "{debug}"
    );
    // Even an endpoint that echoes the secret does not get it into berth's errors.
    let error = concrete
        .create(&spec("acme", "lease_h6"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("provider error: http provider create: HTTP 400"),
        "{error}"
    );
    assert!(
        !error.contains("YmVydGgtc3RhbmRhcmQ") && error.contains("<redacted>"),
        "{error}"
    );

    let refuse = |config: Value, credentials: Value| {
        providers::build(
            &fixtures::account("http", config, credentials),
            &environment,
        )
        .expect_err("should be refused")
        .0
    };
    let url = json!({"url": format!("http://{addr}/berth")});
    assert!(refuse(json!({}), json!({"secret": SECRET})).contains("missing field `url`"));
    assert!(
        refuse(
            json!({"url": "http://x", "timeout": 5}),
            json!({"secret": SECRET})
        )
        .contains("unknown field `timeout`")
    );
    assert!(
        refuse(
            json!({"url": "http://user:pw@example.com/"}),
            json!({"secret": SECRET})
        )
        .contains("credentials")
    );
    assert!(refuse(url.clone(), json!({})).contains("`secret` is missing"));
    for bad in ["not-a-secret-Zm9v", "whsec_!!!notbase64"] {
        let message = refuse(url.clone(), json!({"secret": bad}));
        assert!(!message.contains(bad), "{message}");
    }
}

/// A listing whose items carry no `tenant` yields nothing (and counts them); one malformed
/// item — or one of another tenant — is skipped and does not hide the valid ones.
#[tokio::test]
async fn a_listing_without_tenants_yields_nothing_and_a_bad_item_hides_nothing() {
    let (addr, shared) = start().await;
    let provider = http_as(addr, None);
    script(
        &shared,
        "list",
        200,
        r#"{"items": [{"id": "vm-1", "lease_id": "lease_a"}, {"id": "vm-2", "lease_id": "lease_b"}]}"#,
        vec![],
    );
    assert!(provider.list("acme").await.unwrap().is_empty());
    assert_eq!(provider.skipped().no_tenant, 2);

    script(
        &shared,
        "list",
        200,
        r#"{"items": [
            {"id": "vm-1", "tenant": "acme", "lease_id": "lease_a"},
            {"id": 42, "tenant": "acme", "lease_id": "lease_b"},
            {"id": "vm-3", "tenant": "acme"},
            "not even an object",
            {"id": "vm-4", "tenant": "other", "lease_id": "lease_d"},
            {"id": "vm-5", "tenant": "acme", "lease_id": "lease_e", "ready": true}
        ]}"#,
        vec![],
    );
    let ids: Vec<String> = provider
        .list("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|runner| runner.id)
        .collect();
    assert_eq!(ids, ["vm-1", "vm-5"]);
    let skipped = provider.skipped();
    assert_eq!(
        (skipped.malformed, skipped.other_tenant),
        (3, 1),
        "{skipped:?}"
    );
}

/// A second installation sharing the endpoint (and the tenant name) lists none of the
/// first's runners: every request carries the installation id, and items of another one are
/// skipped.
#[tokio::test]
async fn a_second_installation_sharing_the_endpoint_lists_none_of_the_first_runners() {
    let (addr, shared) = start().await;
    let first = http_as(addr, Some("1111aaaa"));
    let second = http_as(addr, Some("2222bbbb"));
    let runner = first.create(&spec("acme", "lease_i1")).await.unwrap();
    let create = shared.lock().unwrap().received[0].body.clone();
    let create: Value = serde_json::from_slice(&create).unwrap();
    assert_eq!(create["installation_id"], "1111aaaa");
    assert!(second.list("acme").await.unwrap().is_empty());
    assert_eq!(second.skipped().other_installation, 1);
    assert_eq!(first.list("acme").await.unwrap(), vec![runner]);
    let list: Value =
        serde_json::from_slice(&shared.lock().unwrap().received.last().unwrap().body).unwrap();
    assert_eq!(
        list,
        json!({"tenant": "acme", "installation_id": "1111aaaa"})
    );
}

/// Each request is signed over its method, path and body (`berth-signature: v2,…`): the
/// signature verifies as received, and fails for another path, method or body; the body-only
/// Standard Webhooks signature is not sent at all.
#[tokio::test]
async fn the_signature_covers_method_path_and_body() {
    let (addr, shared) = start().await;
    let provider = http(addr, SECRET, json!({}));
    provider.list("acme").await.unwrap();
    let endpoint = shared.lock().unwrap();
    assert_eq!(endpoint.rejected, 0);
    let request = endpoint.received[0].clone();
    assert_eq!(request.target, "/berth/list");
    assert!(
        request.signature.starts_with("v2,"),
        "{}",
        request.signature
    );
    let secret = Secret::parse(SECRET).unwrap();
    let headers = Headers {
        id: &request.id,
        timestamp: &request.timestamp,
        signature: &request.signature,
    };
    let verify = |method: &str, target: &str, body: &[u8]| {
        secret.verify_request(&headers, method, target, body, now_s(), signing::TOLERANCE)
    };
    assert_eq!(
        verify(&request.method, &request.target, &request.body),
        Ok(())
    );
    assert!(verify("POST", "/berth/destroy", &request.body).is_err());
    assert!(verify("POST", "/other/list", &request.body).is_err());
    assert!(verify("GET", "/berth/list", &request.body).is_err());
    assert!(verify("POST", "/berth/list", br#"{"tenant":"evil"}"#).is_err());
    // A body-only (v1) signature of the same request would not be accepted.
    let v1 = secret.sign(
        &request.id,
        request.timestamp.parse().unwrap(),
        &request.body,
    );
    let v1_headers = Headers {
        signature: &v1,
        ..headers
    };
    assert!(
        secret
            .verify_request(
                &v1_headers,
                "POST",
                "/berth/list",
                &request.body,
                now_s(),
                signing::TOLERANCE
            )
            .is_err()
    );
}

/// An endpoint that echoes the request body (which holds `BERTH_RUNNER_TOKEN`) in its error,
/// or a token in an answer berth cannot read, never gets the token into berth's errors.
#[tokio::test]
async fn error_text_never_contains_the_runner_token() {
    let (addr, shared) = start().await;
    let provider = http(addr, SECRET, json!({}));
    let echoed = serde_json::to_string(&spec("acme", "lease_tok")).unwrap();
    script(&shared, "create", 400, &echoed, vec![]);
    script(
        &shared,
        "create",
        422,
        &serde_json::to_string(&json!({"detail": format!("bad env: {echoed}")})).unwrap(),
        vec![],
    );
    script(
        &shared,
        "create",
        500,
        "token rt_secret_token rejected",
        vec![],
    );
    script(
        &shared,
        "create",
        200,
        r#"{"id": "vm-1", "ready": "rt_secret_token"}"#,
        vec![],
    );
    for _ in 0..4 {
        let error = provider
            .create(&spec("acme", "lease_tok"))
            .await
            .unwrap_err()
            .to_string();
        assert!(!error.contains("rt_secret_token"), "{error}");
    }
    assert!(shared.lock().unwrap().scripted.is_empty());
}
