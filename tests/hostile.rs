//! Hostile input over real HTTP: generated bodies for every route that takes one, generated
//! query strings for every route that reads one, generated path segments, and a catalogue of
//! classic attacks (oversized bodies, deep nesting, huge label maps, absurd TTLs, unicode and
//! path tricks in names). Every answer goes through the harness's contract check: no 5xx but
//! a documented 503, every error `application/problem+json` with a `code`. Afterwards the
//! server still answers and the tenant is intact.
//!
//! proptest with a fixed seed; `BERTH_FUZZ_CASES` sets the number of cases per generator
//! (default 256; CI uses the default, a longer run sets e.g. 20000).

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::inproc::{Harness, Tenant};

const SEED: [u8; 32] = *b"berth hostile input, fixed seed!";

fn cases() -> u32 {
    std::env::var("BERTH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn runner() -> TestRunner {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &SEED))
}

/// Which token a route takes.
#[derive(Clone, Copy, Debug)]
enum Who {
    Operator,
    TenantAdmin,
    Write,
    Read,
    Runner,
}

/// Every route that takes a body: method, path (`{t}` tenant, `{lease}` a live lease).
const BODY_ROUTES: &[(&str, &str, Who)] = &[
    ("POST", "/v1/tenants", Who::Operator),
    ("PATCH", "/v1/tenants/{t}", Who::TenantAdmin),
    ("POST", "/v1/tenants/{t}/tokens", Who::TenantAdmin),
    ("PUT", "/v1/tenants/{t}/providers/fuzz", Who::TenantAdmin),
    ("PUT", "/v1/tenants/{t}/pools/fuzz", Who::TenantAdmin),
    ("POST", "/v1/tenants/{t}/leases", Who::Write),
    (
        "POST",
        "/v1/tenants/{t}/leases/{lease}/heartbeat",
        Who::Write,
    ),
    ("PUT", "/v1/tenants/{t}/webhooks/fuzz", Who::TenantAdmin),
    ("PATCH", "/v1/tenants/{t}/webhooks/hook", Who::TenantAdmin),
    (
        "PUT",
        "/v1/tenants/{t}/integrations/github",
        Who::TenantAdmin,
    ),
    ("POST", "/v1/tenants/{t}/integrations/github", Who::Operator),
    ("POST", "/v1/runners/{lease}/ready", Who::Runner),
    ("POST", "/v1/runners/{lease}/release", Who::Runner),
];

/// Every route that reads a query string.
const QUERY_ROUTES: &[(&str, Who)] = &[
    ("/v1/tenants", Who::Operator),
    ("/v1/tenants/{t}/leases", Who::Read),
    ("/v1/tenants/{t}/leases/{lease}", Who::Read),
    ("/v1/tenants/{t}/leases/{lease}/logs", Who::Read),
    ("/v1/tenants/{t}/usage", Who::Read),
    ("/v1/tenants/{t}/ledger", Who::Read),
    ("/v1/tenants/{t}/webhooks/hook/deliveries", Who::TenantAdmin),
    ("/v1/tenants/{t}/tokens", Who::TenantAdmin),
];

/// Field names the API knows, so generated objects reach validation, not only the parser.
const FIELDS: &[&str] = &[
    "name",
    "limits",
    "max_active_leases",
    "max_queued",
    "max_ttl_s",
    "spend_cap_daily_micros",
    "spend_cap_monthly_micros",
    "pool",
    "ttl_s",
    "wait_s",
    "idle_timeout_s",
    "labels",
    "kind",
    "config",
    "credentials",
    "provider",
    "machine_type",
    "hourly_price_micros",
    "max_active",
    "image",
    "region",
    "command",
    "url",
    "events",
    "enabled",
    "secret",
    "scopes",
    "extend_s",
    "address",
    "metadata",
    "action",
    "workflow_job",
];

struct World {
    h: Harness,
    t: Tenant,
    lease: String,
    runner_token: String,
}

impl World {
    fn token(&self, who: Who) -> &str {
        match who {
            Who::Operator => &self.h.admin,
            Who::TenantAdmin => &self.t.admin,
            Who::Write => &self.t.write,
            Who::Read => &self.t.read,
            Who::Runner => &self.runner_token,
        }
    }

    fn path(&self, template: &str) -> String {
        template
            .replace("{t}", &self.t.name)
            .replace("{lease}", &self.lease)
    }
}

async fn world() -> World {
    let h = Harness::start().await;
    let t = h
        .setup_tenant("fuzz", json!({ "max_active_leases": 1000 }))
        .await;
    let (status, _, body) = h
        .json(
            Method::PUT,
            &t.path("/webhooks/hook"),
            Some(&t.admin),
            Some(json!({ "url": "https://hooks.example.com/berth" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Runners wait for their callback, so the lease stays open for the runner routes.
    h.put_fake_account(&t, "cloud", json!({ "ready": false }))
        .await;
    let lease = h.grant(&t, json!({ "pool": "small", "ttl_s": 3600 })).await;
    let id = lease["id"].as_str().expect("id").to_owned();
    // Settle before any snapshot: the runner exists (its create returned) and the lease stays
    // provisioning until a callback that never comes.
    for _ in 0..500 {
        if !h.lease(&t, &id).await["runner"]["id"].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        !h.lease(&t, &id).await["runner"]["id"].is_null(),
        "the runner was created"
    );
    let runner_token = broker::secrets::Keys::load_or_create(h.dir.path(), None)
        .expect("master key")
        .runner_token(&t.name, &id);
    World {
        h,
        t,
        lease: id,
        runner_token,
    }
}

/// Any JSON value, up to a few levels deep, with hostile leaves.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(json!(-1)),
            Just(json!(0)),
            Just(json!(u64::MAX)),
            Just(json!(1e300)),
            Just(json!(-0.5))
        ],
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just(json!("../../etc/passwd")),
            Just(json!("a/b")),
            Just(json!("%2e%2e%2f")),
            Just(json!("\u{0}")),
            Just(json!("\u{202e}gnp.exe")),
            Just(json!("ｆｕｌｌｗｉｄｔｈ")),
            Just(json!("http://169.254.169.254/latest/meta-data/")),
            Just(json!("http://[::1]:22/")),
            Just(json!("'; DROP TABLE leases; --")),
        ],
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..8).prop_map(|fields| {
                Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// A request body: raw bytes, any JSON, or an object of known fields with hostile values.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::btree_map(prop::sample::select(FIELDS), json_value(), 0..10)
            .prop_map(|m| json!(m).to_string().into_bytes()),
    ]
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        8 => Just(Some("application/json")),
        1 => Just(None),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/json; charset=latin1")),
    ]
}

/// A query string of known and unknown keys with hostile values, percent-encoded or not.
fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("state".to_owned()),
        Just("pool".to_owned()),
        Just("label".to_owned()),
        Just("limit".to_owned()),
        Just("cursor".to_owned()),
        Just("after".to_owned()),
        Just("period".to_owned()),
        Just("wait".to_owned()),
        Just("timeout_s".to_owned()),
        "[a-z_]{1,8}",
    ];
    let value = prop_oneof![
        "[ -~]{0,30}",
        ".{0,20}",
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("%00".to_owned()),
        Just("%ff%fe".to_owned()),
        Just("ready".to_owned()),
        Just("0".to_owned()),
    ];
    prop::collection::vec((key, value), 0..5).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| {
                let v: String = v
                    .chars()
                    .map(|c| match c {
                        '&' | '#' | ' ' | '+' => '_',
                        c => c,
                    })
                    .collect();
                format!("{k}={}", urlencode_loose(&v))
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// Percent-encodes what a URL cannot carry, leaving `%` escapes as the generator wrote them.
fn urlencode_loose(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~%:/,=".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Generated bodies on every route that takes one.
#[test]
fn generated_bodies_never_break_the_contract() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let w = rt.block_on(world());
    let mut runner = runner();
    let strategy = (0..BODY_ROUTES.len(), body(), content_type());
    runner
        .run(&strategy, |(route, bytes, content_type)| {
            let (method, template, who) = BODY_ROUTES[route];
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            rt.block_on(w.h.send(
                method,
                &w.path(template),
                Some(w.token(who)),
                content_type,
                Some(bytes),
                &[],
            ));
            Ok(())
        })
        .expect("every generated body was answered within the contract");
    rt.block_on(still_serving(&w));
}

/// Generated query strings on every route that reads one.
#[test]
fn generated_queries_never_break_the_contract() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let w = rt.block_on(world());
    let mut runner = runner();
    let strategy = (0..QUERY_ROUTES.len(), query());
    runner
        .run(&strategy, |(route, query)| {
            let (template, who) = QUERY_ROUTES[route];
            // A lease wait must stay short: the generator may ask for one.
            let query = query.replace("timeout_s=", "timeout_x=");
            let path = format!("{}?{query}&timeout_s=0", w.path(template));
            rt.block_on(w.h.send(Method::GET, &path, Some(w.token(who)), None, None, &[]));
            Ok(())
        })
        .expect("every generated query was answered within the contract");
    rt.block_on(still_serving(&w));
}

/// Generated names and ids in path segments: tenants, pools, providers, leases, webhooks.
#[test]
fn generated_path_segments_never_break_the_contract() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let w = rt.block_on(world());
    let mut runner = runner();
    let segment = prop_oneof![
        "[a-z0-9-]{0,70}",
        ".{1,20}",
        Just("..".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("%2F".to_owned()),
        Just("%00".to_owned()),
        Just("lease_".to_owned() + &"0".repeat(300)),
    ];
    let templates = [
        (Method::GET, "/v1/tenants/{s}", Who::Operator),
        (Method::GET, "/v1/tenants/{t}/leases/{s}", Who::Read),
        (Method::GET, "/v1/tenants/{t}/leases/{s}/logs", Who::Read),
        (
            Method::POST,
            "/v1/tenants/{t}/leases/{s}/release",
            Who::Write,
        ),
        (Method::PUT, "/v1/tenants/{t}/pools/{s}", Who::TenantAdmin),
        (
            Method::PUT,
            "/v1/tenants/{t}/providers/{s}",
            Who::TenantAdmin,
        ),
        (
            Method::GET,
            "/v1/tenants/{t}/webhooks/{s}",
            Who::TenantAdmin,
        ),
        (
            Method::DELETE,
            "/v1/tenants/{t}/tokens/{s}",
            Who::TenantAdmin,
        ),
        (Method::POST, "/v1/runners/{s}/ready", Who::Runner),
    ];
    let strategy = (0..templates.len(), segment);
    runner
        .run(&strategy, |(which, segment)| {
            let (method, template, who) = &templates[which];
            let segment = urlencode_loose(&segment);
            let path = w.path(template).replace("{s}", &segment);
            let body = matches!(*method, Method::PUT | Method::POST).then(|| {
                json!({ "provider": "cloud", "machine_type": "s", "hourly_price_micros": 1, "kind": "fake", "config": {} })
                    .to_string()
                    .into_bytes()
            });
            rt.block_on(w.h.send(
                method.clone(),
                &path,
                Some(w.token(*who)),
                Some("application/json"),
                body,
                &[],
            ));
            Ok(())
        })
        .expect("every generated path was answered within the contract");
    rt.block_on(still_serving(&w));
}

/// The classic attacks, each refused cleanly (4xx problem+json) and changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_attacks_are_refused_and_change_nothing() {
    let w = world().await;
    let before = snapshot(&w).await;
    let lease_path = w.t.path("/leases");
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let labels: serde_json::Map<String, Value> =
        (0..5_000).map(|i| (format!("k{i}"), json!("v"))).collect();
    oversized_body_is_refused(&w, &lease_path).await;
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "deep nesting",
            lease_path.clone(),
            format!(r#"{{"pool":"small","labels":{}}}"#, nested(20_000)).into_bytes(),
        ),
        (
            "huge label map",
            lease_path.clone(),
            json!({ "pool": "small", "labels": labels })
                .to_string()
                .into_bytes(),
        ),
        (
            "negative TTL",
            lease_path.clone(),
            br#"{"pool":"small","ttl_s":-5}"#.to_vec(),
        ),
        (
            "enormous TTL",
            lease_path.clone(),
            br#"{"pool":"small","ttl_s":9223372036854775807}"#.to_vec(),
        ),
        (
            "TTL past i64",
            lease_path.clone(),
            br#"{"pool":"small","ttl_s":1e30}"#.to_vec(),
        ),
        (
            "negative wait",
            lease_path.clone(),
            br#"{"pool":"small","wait_s":-1}"#.to_vec(),
        ),
        (
            "unknown pool with path tricks",
            lease_path.clone(),
            br#"{"pool":"../small"}"#.to_vec(),
        ),
        (
            "duplicate keys",
            lease_path.clone(),
            br#"{"pool":"small","pool":"other","ttl_s":1,"ttl_s":2}"#.to_vec(),
        ),
        (
            "not UTF-8",
            lease_path.clone(),
            vec![0xff, 0xfe, 0x00, 0x7b],
        ),
        (
            "tenant name with unicode",
            "/v1/tenants".to_owned(),
            "{\"name\":\"ａcme\"}".as_bytes().to_vec(),
        ),
        (
            "tenant name with path",
            "/v1/tenants".to_owned(),
            br#"{"name":"../etc"}"#.to_vec(),
        ),
        (
            "tenant name too long",
            "/v1/tenants".to_owned(),
            format!(r#"{{"name":"{}"}}"#, "a".repeat(64)).into_bytes(),
        ),
        (
            "pool name with NUL",
            w.t.path("/pools/a%00b"),
            br#"{"provider":"cloud","machine_type":"s","hourly_price_micros":1}"#.to_vec(),
        ),
        (
            "negative price",
            w.t.path("/pools/neg"),
            br#"{"provider":"cloud","machine_type":"s","hourly_price_micros":-1}"#.to_vec(),
        ),
    ];
    for (what, path, bytes) in cases {
        let method = if path.contains("/pools/") {
            Method::PUT
        } else {
            Method::POST
        };
        let token = if path == "/v1/tenants" {
            w.h.admin.clone()
        } else if path.contains("/pools/") {
            w.t.admin.clone()
        } else {
            w.t.write.clone()
        };
        let (status, _, body) =
            w.h.send(
                method,
                &path,
                Some(&token),
                Some("application/json"),
                Some(bytes),
                &[],
            )
            .await;
        assert!(
            status.is_client_error(),
            "{what}: expected a 4xx, got {status}: {body}"
        );
    }
    assert_eq!(
        snapshot(&w).await,
        before,
        "the refused requests changed nothing"
    );
}

/// A 2 MiB body is refused with 413 as soon as its `Content-Length` is read. The server does
/// not read the rest, so a client still writing may see the connection closed before it
/// reads the answer (HTTP allows this); either way nothing is stored and berth serves on.
async fn oversized_body_is_refused(w: &World, path: &str) {
    let answer =
        w.h.client
            .post(format!("{}{path}", w.h.url))
            .bearer_auth(&w.t.write)
            .header("content-type", "application/json")
            .body(vec![b' '; 2 * 1024 * 1024])
            .send()
            .await;
    match answer {
        Ok(response) => {
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(
                response.headers()["connection"],
                "close",
                "the unread connection is not reused"
            );
            let body: Value = response.json().await.expect("problem+json");
            assert_eq!(body["code"], "payload_too_large", "{body}");
        }
        Err(err) => assert!(
            !err.is_timeout() && (err.is_request() || err.is_body()),
            "the server closed the connection, nothing else: {err}"
        ),
    }
    still_serving(w).await;
}

/// What a tenant looks like from outside: leases, pools, providers, tenants.
async fn snapshot(w: &World) -> Value {
    json!({
        "leases": w.h.list_all(&w.t, "").await,
        "pools": w.h.get_ok(&w.t.path("/pools"), &w.t.admin).await,
        "providers": w.h.get_ok(&w.t.path("/providers"), &w.t.admin).await,
        "tenants": w.h.get_ok("/v1/tenants", &w.h.admin).await,
    })
}

/// The server still answers and the tenant's lease is where it was.
async fn still_serving(w: &World) {
    let (status, _, _) =
        w.h.send(Method::GET, "/healthz", None, None, None, &[])
            .await;
    assert_eq!(status, StatusCode::OK);
    let lease = w.h.lease(&w.t, &w.lease).await;
    assert_eq!(lease["id"], w.lease.as_str());
}
