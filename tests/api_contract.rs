//! The API's contract is exact: every rule the server checks a request with is in
//! `/openapi.json`, and the server accepts what the spec allows at its bounds and refuses
//! what it does not. Bodies are JSON objects, never arrays in their place. The published spec
//! is the checked-in `docs/openapi.json` (regenerate it with `BERTH_BLESS=1`).

mod support;

use proptest::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::inproc::{Harness, assert_problem};

const GET: Method = Method::GET;
const POST: Method = Method::POST;
const PUT: Method = Method::PUT;
const PATCH: Method = Method::PATCH;

/// The schema of a component's property.
fn property<'a>(spec: &'a Value, component: &str, field: &str) -> &'a Value {
    let schema = &spec["components"]["schemas"][component]["properties"][field];
    assert!(schema.is_object(), "{component}.{field} is not in the spec");
    schema
}

/// The schema of an operation's parameter.
fn parameter<'a>(spec: &'a Value, method: &str, path: &str, name: &str) -> &'a Value {
    spec["paths"][path][method]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{method} {path} has no parameters"))
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
}

fn int(value: &Value) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("{value} is no integer"))
}

/// A body sent as a JSON array where an object belongs is refused with 422 and changes
/// nothing: at the top level (serde's derived structs would read it field by field) and
/// nested (`{"limits": [null, null]}` on a tenant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_array_where_an_object_belongs_is_refused_with_422() {
    let h = Harness::start().await;
    let t = h.setup_tenant("acme", json!({})).await;
    let before = h.get_ok(&t.path(""), &h.admin).await;

    let cases: Vec<(Method, String, Value)> = vec![
        (POST, "/v1/tenants".into(), json!(["array", null, null])),
        (
            POST,
            "/v1/tenants".into(),
            json!({ "name": "other", "limits": [5, 5] }),
        ),
        (
            POST,
            "/v1/tenants".into(),
            json!({ "name": "other", "quota": [5] }),
        ),
        (PATCH, t.path(""), json!({ "limits": [null, null] })),
        (
            PATCH,
            t.path(""),
            json!({ "limits": [1, 1, null, null, 60, 60, null] }),
        ),
        (PATCH, t.path(""), json!({ "quota": [1] })),
        (PATCH, t.path(""), json!([{ "max_active_leases": 1 }])),
        (POST, t.path("/leases"), json!(["small"])),
        (POST, t.path("/tokens"), json!([["leases:read"]])),
        (PUT, t.path("/pools/other"), json!(["cloud", "m"])),
        (PUT, t.path("/providers/other"), json!(["fake"])),
        (
            PUT,
            t.path("/webhooks/hook"),
            json!(["https://example.com/hook"]),
        ),
        (PUT, t.path("/integrations/github"), json!(["secret"])),
    ];
    for (method, path, body) in cases {
        let answer = h
            .json(method.clone(), &path, Some(&h.admin), Some(body.clone()))
            .await;
        assert_problem(&answer, 422, "invalid_request");
        let detail = answer.2["detail"].as_str().unwrap_or_default().to_owned();
        assert!(
            detail.contains("object"),
            "{method} {path} {body}: the detail says what was expected: {detail}"
        );
    }
    // A heartbeat's optional body, sent as an array, is refused too.
    let lease = h.grant(&t, json!({ "pool": "small" })).await;
    let id = lease["id"].as_str().expect("id");
    let answer = h
        .json(
            POST,
            &t.path(&format!("/leases/{id}/heartbeat")),
            Some(&t.write),
            Some(json!([60])),
        )
        .await;
    assert_problem(&answer, 422, "invalid_request");

    // Nothing changed: no tenant `other`, the same limits, no second lease.
    let after = h.get_ok(&t.path(""), &h.admin).await;
    assert_eq!(before["limits"], after["limits"]);
    assert_eq!(before["quota"], after["quota"]);
    let (status, _, _) = h.json(GET, "/v1/tenants/other", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let leases = h.list_all(&t, "").await;
    assert_eq!(leases.len(), 1);
    h.assert_documented().await;
}

/// The spec holds the rules the server checks: ranges, enumerations, patterns, lengths,
/// formats, required headers, optional bodies, the release that `DELETE` of a lease is, and
/// links from each create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_holds_every_rule_the_server_checks() {
    let h = Harness::start().await;
    let spec = h.get_ok("/openapi.json", &h.admin).await;

    // `limit` of every list: 1–1000.
    for (path, method) in [
        ("/v1/tenants", "get"),
        ("/v1/tenants/{tenant}/leases", "get"),
        ("/v1/tenants/{tenant}/ledger", "get"),
        ("/v1/tenants/{tenant}/webhooks/{name}/deliveries", "get"),
    ] {
        let schema = &parameter(&spec, method, path, "limit")["schema"];
        assert_eq!(
            (int(&schema["minimum"]), int(&schema["maximum"])),
            (1, 1000),
            "{path}"
        );
    }
    let enumeration = |method: &str, path: &str, name: &str| -> Vec<String> {
        parameter(&spec, method, path, name)["schema"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} `{name}` has no enum"))
            .iter()
            .map(|v| v.as_str().expect("a name").to_owned())
            .collect()
    };
    assert_eq!(
        enumeration("get", "/v1/tenants/{tenant}/leases/{id}", "wait"),
        ["ready", "ended"]
    );
    assert_eq!(
        enumeration("get", "/v1/tenants/{tenant}/usage", "period"),
        ["day", "month"]
    );
    assert!(enumeration("get", "/v1/tenants/{tenant}/leases", "state").contains(&"active".into()));
    let label = &parameter(&spec, "get", "/v1/tenants/{tenant}/leases", "label")["schema"];
    assert!(label["pattern"].as_str().is_some_and(|p| p.contains(':')));

    // Tenant names: the pattern and 1–63.
    let name = property(&spec, "TenantCreate", "name");
    assert_eq!(name["pattern"], "^[a-z0-9][a-z0-9-]*$");
    assert_eq!((int(&name["minLength"]), int(&name["maxLength"])), (1, 63));
    let tenant = &parameter(&spec, "get", "/v1/tenants/{tenant}", "tenant")["schema"];
    assert_eq!(tenant["pattern"], name["pattern"]);
    let pool = &parameter(&spec, "put", "/v1/tenants/{tenant}/pools/{pool}", "pool")["schema"];
    assert_eq!(pool["pattern"], name["pattern"]);

    // Spend caps 0..=10^18, in the limits and the quota.
    for component in ["LimitsPatch", "QuotaPatch"] {
        for field in ["spend_cap_daily_micros", "spend_cap_monthly_micros"] {
            let cap = property(&spec, component, field);
            assert_eq!(int(&cap["minimum"]), 0);
            assert_eq!(int(&cap["maximum"]), 1_000_000_000_000_000_000);
        }
    }
    // Token scopes: an enumeration without `admin`, at least one.
    let scopes = property(&spec, "TokenCreate", "scopes");
    assert_eq!(int(&scopes["minItems"]), 1);
    assert_eq!(
        scopes["items"]["enum"],
        json!(["tenant:admin", "leases:write", "leases:read"])
    );
    assert_eq!(
        property(&spec, "ProviderPut", "kind")["enum"],
        json!(["fake", "process", "hetzner", "http"])
    );
    let url = property(&spec, "WebhookPut", "url");
    assert_eq!(url["format"], "uri");
    assert_eq!(int(&url["maxLength"]), 2048);
    assert!(property(&spec, "WebhookPut", "secret")["pattern"].is_string());
    assert_eq!(
        int(&property(&spec, "GithubPut", "secret")["maxLength"]),
        256
    );
    assert_eq!(
        int(&property(&spec, "Heartbeat", "extend_ttl_s")["minimum"]),
        1
    );
    let labels = property(&spec, "LeaseRequest", "labels");
    assert_eq!(int(&labels["maxProperties"]), 32);
    assert!(labels["propertyNames"]["pattern"].is_string());

    // Headers: `Idempotency-Key` 1–255 visible ASCII; GitHub's delivery headers required.
    let key = parameter(
        &spec,
        "post",
        "/v1/tenants/{tenant}/leases",
        "Idempotency-Key",
    );
    assert_eq!(key["required"], false);
    assert_eq!(key["schema"]["pattern"], "^[!-~]*$");
    assert_eq!(
        (
            int(&key["schema"]["minLength"]),
            int(&key["schema"]["maxLength"])
        ),
        (1, 255)
    );
    for header in ["X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256"] {
        let github = "/v1/tenants/{tenant}/integrations/github";
        assert_eq!(
            parameter(&spec, "post", github, header)["required"],
            true,
            "{header}"
        );
    }

    // Bodies: every request body refuses unknown fields; a heartbeat's may be left out.
    for component in [
        "LeaseRequest",
        "TenantCreate",
        "TenantPatch",
        "LimitsPatch",
        "PoolPut",
    ] {
        assert_eq!(
            spec["components"]["schemas"][component]["additionalProperties"], false,
            "{component}"
        );
    }
    let heartbeat = &spec["paths"]["/v1/tenants/{tenant}/leases/{id}/heartbeat"]["post"];
    assert_eq!(heartbeat["requestBody"]["required"], false);

    // `DELETE` of a lease is a release: the lease stays readable.
    let delete = &spec["paths"]["/v1/tenants/{tenant}/leases/{id}"]["delete"];
    let said = format!("{} {}", delete["summary"], delete["description"]);
    assert!(
        said.contains("Releases") && said.contains("stays readable"),
        "{said}"
    );

    // Links from each create to what reads, changes or ends it.
    let links = &spec["paths"]["/v1/tenants/{tenant}/leases"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["GetLease"]["operationId"], "get_lease");
    assert_eq!(links["GetLease"]["parameters"]["id"], "$response.body#/id");
    assert_eq!(links["DeleteLease"]["operationId"], "delete_lease");
    let links = &spec["paths"]["/v1/tenants/{tenant}/tokens"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["RevokeToken"]["operationId"], "revoke_token");
    let links =
        &spec["paths"]["/v1/tenants/{tenant}/webhooks/{name}"]["put"]["responses"]["200"]["links"];
    assert_eq!(links["TestWebhook"]["operationId"], "test_webhook");
    h.assert_documented().await;
}

/// At the bounds the spec publishes, read from `/openapi.json` itself: the server accepts
/// the values the spec allows and refuses the ones just past them (400 for a query, 422 for a
/// body), so the spec and the checks agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_and_schema_agree_at_the_bounds() {
    let h = Harness::start().await;
    let t = h.setup_tenant("acme", json!({})).await;
    let spec = h.get_ok("/openapi.json", &h.admin).await;

    // `limit` of the lease list.
    let limit = &parameter(&spec, "get", "/v1/tenants/{tenant}/leases", "limit")["schema"];
    let (low, high) = (int(&limit["minimum"]), int(&limit["maximum"]));
    for (value, status) in [(low - 1, 400), (low, 200), (high, 200), (high + 1, 400)] {
        let (got, _, body) = h
            .json(
                GET,
                &t.path(&format!("/leases?limit={value}")),
                Some(&t.read),
                None,
            )
            .await;
        assert_eq!(got.as_u16(), status, "limit={value}: {body}");
    }
    // Enumerations of queries: every value is taken, and the empty string is not.
    for (path, name) in [
        ("/v1/tenants/{tenant}/usage", "period"),
        ("/v1/tenants/{tenant}/leases", "state"),
    ] {
        let schema = &parameter(&spec, "get", path, name)["schema"];
        let concrete = path.replace("{tenant}", &t.name);
        for value in schema["enum"].as_array().expect("enum") {
            let value = value.as_str().expect("a name");
            let (got, _, body) = h
                .json(
                    GET,
                    &format!("{concrete}?{name}={value}"),
                    Some(&t.read),
                    None,
                )
                .await;
            assert_eq!(got, StatusCode::OK, "{name}={value}: {body}");
        }
        let (got, _, _) = h
            .json(GET, &format!("{concrete}?{name}="), Some(&t.read), None)
            .await;
        assert_eq!(got, StatusCode::BAD_REQUEST, "{name}= is outside the enum");
    }
    let (got, _, _) = h
        .json(GET, &t.path("/leases?label=nocolon"), Some(&t.read), None)
        .await;
    assert_eq!(got, StatusCode::BAD_REQUEST);

    // Tenant names: the longest allowed, one more, and off the pattern.
    let name = property(&spec, "TenantCreate", "name");
    let longest = int(&name["maxLength"]) as usize;
    for (candidate, status) in [
        ("a".repeat(longest), 201),
        ("b".repeat(longest + 1), 422),
        ("-leading-dash".to_owned(), 422),
        ("Upper".to_owned(), 422),
    ] {
        let (got, _, body) = h
            .json(
                POST,
                "/v1/tenants",
                Some(&h.admin),
                Some(json!({ "name": candidate })),
            )
            .await;
        assert_eq!(got.as_u16(), status, "{candidate}: {body}");
    }

    // Spend caps: the bounds of the spec are taken, past them refused.
    let cap = property(&spec, "LimitsPatch", "spend_cap_daily_micros");
    let (low, high) = (int(&cap["minimum"]), int(&cap["maximum"]));
    for (value, status) in [(low - 1, 422), (low, 200), (high, 200), (high + 1, 422)] {
        let body = json!({ "limits": { "spend_cap_daily_micros": value } });
        let (got, _, answer) = h.json(PATCH, &t.path(""), Some(&h.admin), Some(body)).await;
        assert_eq!(
            got.as_u16(),
            status,
            "spend_cap_daily_micros={value}: {answer}"
        );
    }

    // `Idempotency-Key`: the longest visible-ASCII key is taken; a longer one is not.
    let key = &parameter(
        &spec,
        "post",
        "/v1/tenants/{tenant}/leases",
        "Idempotency-Key",
    )["schema"];
    let longest = int(&key["maxLength"]) as usize;
    for (value, ok) in [
        ("k".repeat(longest), true),
        ("k".repeat(longest + 1), false),
    ] {
        let (got, _, body) = h
            .json_with(
                POST,
                &t.path("/leases"),
                Some(&t.write),
                Some(json!({ "pool": "small" })),
                &[("Idempotency-Key", &value)],
            )
            .await;
        assert_eq!(
            got.is_success(),
            ok,
            "a key of {} characters: {body}",
            value.len()
        );
    }

    // Token scopes: `admin` is outside the enumeration, and refused.
    let (got, _, _) = h
        .json(
            POST,
            &t.path("/tokens"),
            Some(&t.admin),
            Some(json!({ "scopes": ["admin"] })),
        )
        .await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY);
    h.assert_documented().await;
}

/// A refusal by a rule says which field broke which rule, in the words of the rule, and
/// never echoes a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_the_field_and_its_rule() {
    let h = Harness::start().await;
    let t = h.setup_tenant("acme", json!({})).await;
    let secret = "not-a-secret-but-do-not-echo-it!";
    let cases = [
        (
            POST,
            "/v1/tenants".to_owned(),
            json!({ "name": "Upper" }),
            422,
            "`name` must be 1–63 characters of lowercase letters, digits and `-`, starting with a letter or digit",
        ),
        (
            POST,
            t.path("/tokens"),
            json!({ "scopes": [] }),
            422,
            "`scopes` takes at least one item",
        ),
        (
            PUT,
            t.path("/webhooks/hook"),
            json!({ "url": "https://example.com/", "secret": secret }),
            422,
            "`secret` must be `whsec_` followed by base64",
        ),
        (
            POST,
            t.path("/leases"),
            json!({ "pool": "small", "labels": { "bad key": "v" } }),
            422,
            "`labels` key `bad key` must be 1–63 characters of letters, digits",
        ),
        (
            PATCH,
            t.path(""),
            json!({ "limits": { "spend_cap_daily_micros": -1 } }),
            422,
            "`spend_cap_daily_micros` must be between 0 and 1000000000000000000",
        ),
        (
            GET,
            t.path("/usage?period=week"),
            Value::Null,
            400,
            "`period` takes `day` or `month`",
        ),
        (
            GET,
            t.path("/leases?limit=0"),
            Value::Null,
            400,
            "`limit` must be between 1 and 1000",
        ),
    ];
    for (method, path, body, status, said) in cases {
        let body = (!body.is_null()).then_some(body);
        let answer = h.json(method.clone(), &path, Some(&h.admin), body).await;
        assert_eq!(answer.0.as_u16(), status, "{method} {path}: {}", answer.2);
        let detail = answer.2["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(said),
            "{method} {path}: {detail:?} does not say {said:?}"
        );
        assert!(
            !detail.contains(secret),
            "{method} {path} echoed the secret"
        );
    }
    h.assert_documented().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The published pattern of a webhook secret accepts exactly the secrets the signer can
    /// use.
    #[test]
    fn the_webhook_secret_pattern_is_what_the_signer_accepts(secret in "(whsec_)?[A-Za-z0-9+/=]{0,10}") {
        let by_rule = broker::wire::bounds::WEBHOOK_SECRET.check_str("secret", &secret).is_ok();
        let by_signer = providers::signing::Secret::parse(&secret).is_ok();
        prop_assert_eq!(by_rule, by_signer, "{}", secret);
    }

    /// The published pattern of names accepts exactly lowercase letters, digits and `-`, not
    /// leading, 1–63 characters.
    #[test]
    fn the_name_rule_is_the_documented_one(name in "[a-zA-Z0-9_-]{0,65}") {
        let documented = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with('-')
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        prop_assert_eq!(broker::wire::bounds::valid_name(&name), documented);
    }
}

/// `/openapi.json` is the checked-in `docs/openapi.json`, so every change of the contract is a
/// deliberate change of that file, seen in review (`BERTH_BLESS=1 cargo test --test
/// api_contract` rewrites it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_spec_is_the_checked_in_one() {
    let h = Harness::start().await;
    let spec = h.get_ok("/openapi.json", &h.admin).await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let text = serde_json::to_string_pretty(&spec).expect("the spec serializes") + "\n";
    if std::env::var_os("BERTH_BLESS").is_some() {
        std::fs::write(path, &text).expect("docs/openapi.json is writable");
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == text,
        "/openapi.json differs from docs/openapi.json; if the change is meant, run \
         `BERTH_BLESS=1 cargo test --test api_contract` and commit docs/openapi.json"
    );
}
