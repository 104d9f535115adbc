//! Who may do what (DESIGN.md §6): tenants are isolated from each other, scopes are enforced
//! on every route, and missing, unknown or revoked tokens get 401. That credentials never
//! leave the server is in `api_credentials.rs`.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::inproc::{Harness, Tenant, assert_problem, rand_u128};

/// The least a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Read,
    Write,
    TenantAdmin,
    Operator,
}

/// One route of the table: method, path template and a body that the route accepts.
///
/// Placeholders: `{t}` tenant, `{lease}` a lease that stays running, `{lease_rel}` and
/// `{lease_del}` leases released through POST and DELETE, `{token}` a fresh token id, `{n}` a
/// number unique to the call.
struct Route {
    method: Method,
    template: &'static str,
    need: Need,
    body: Option<Value>,
}

fn route(method: Method, template: &'static str, need: Need, body: Option<Value>) -> Route {
    Route {
        method,
        template,
        need,
        body,
    }
}

/// Every route of a tenant that needs a token (all but the operator's and the open ones).
fn tenant_routes(cloud: &str) -> Vec<Route> {
    use Need::*;
    vec![
        route(Method::GET, "/v1/tenants/{t}", Read, None),
        route(
            Method::PATCH,
            "/v1/tenants/{t}",
            TenantAdmin,
            Some(json!({ "limits": {} })),
        ),
        route(
            Method::POST,
            "/v1/tenants/{t}/tokens",
            TenantAdmin,
            Some(json!({ "scopes": ["leases:read"] })),
        ),
        route(Method::GET, "/v1/tenants/{t}/tokens", TenantAdmin, None),
        route(
            Method::DELETE,
            "/v1/tenants/{t}/tokens/{token}",
            TenantAdmin,
            None,
        ),
        // Host-runner kinds and the quota are the operator's, also on the tenant's own paths.
        route(
            Method::PUT,
            "/v1/tenants/{t}/providers/extra-{n}",
            Operator,
            Some(json!({ "kind": "fake", "config": { "cloud": cloud } })),
        ),
        route(
            Method::PATCH,
            "/v1/tenants/{t}",
            Operator,
            Some(json!({ "quota": { "max_pools": 40 } })),
        ),
        route(Method::GET, "/v1/tenants/{t}/providers", TenantAdmin, None),
        route(
            Method::PUT,
            "/v1/tenants/{t}/pools/extra-{n}",
            TenantAdmin,
            Some(json!({ "provider": "cloud", "machine_type": "s", "hourly_price_micros": 1 })),
        ),
        route(Method::GET, "/v1/tenants/{t}/pools", Read, None),
        route(
            Method::POST,
            "/v1/tenants/{t}/leases",
            Write,
            Some(json!({ "pool": "small", "ttl_s": 600 })),
        ),
        route(Method::GET, "/v1/tenants/{t}/leases", Read, None),
        route(
            Method::GET,
            "/v1/tenants/{t}/leases?state=active&label=k:v&limit=5",
            Read,
            None,
        ),
        route(Method::GET, "/v1/tenants/{t}/leases/{lease}", Read, None),
        route(
            Method::GET,
            "/v1/tenants/{t}/leases/{lease}?wait=ready&timeout_s=1",
            Read,
            None,
        ),
        route(
            Method::POST,
            "/v1/tenants/{t}/leases/{lease}/heartbeat",
            Write,
            Some(json!({})),
        ),
        route(
            Method::POST,
            "/v1/tenants/{t}/leases/{lease_rel}/release",
            Write,
            None,
        ),
        route(
            Method::DELETE,
            "/v1/tenants/{t}/leases/{lease_del}",
            Write,
            None,
        ),
        route(
            Method::GET,
            "/v1/tenants/{t}/usage?period=month",
            Read,
            None,
        ),
        route(Method::GET, "/v1/tenants/{t}/ledger?limit=10", Read, None),
        route(
            Method::PUT,
            "/v1/tenants/{t}/webhooks/w-{n}",
            TenantAdmin,
            Some(json!({ "url": "http://127.0.0.1:9/hook" })),
        ),
        route(Method::GET, "/v1/tenants/{t}/webhooks", TenantAdmin, None),
        route(
            Method::GET,
            "/v1/tenants/{t}/webhooks/hook",
            TenantAdmin,
            None,
        ),
        route(
            Method::GET,
            "/v1/tenants/{t}/webhooks/hook/deliveries",
            TenantAdmin,
            None,
        ),
        route(
            Method::POST,
            "/v1/tenants/{t}/webhooks/hook/test",
            TenantAdmin,
            None,
        ),
        route(
            Method::DELETE,
            "/v1/tenants/{t}/webhooks/{hook_del}",
            TenantAdmin,
            None,
        ),
        route(
            Method::PUT,
            "/v1/tenants/{t}/integrations/github",
            TenantAdmin,
            Some(json!({ "secret": "gh-{n}" })),
        ),
        route(
            Method::GET,
            "/v1/tenants/{t}/integrations/github",
            TenantAdmin,
            None,
        ),
        // The dashboard's reads.
        route(Method::GET, "/v1/tenants/{t}/status", Read, None),
        route(Method::GET, "/v1/tenants/{t}/stats/spend", Read, None),
        route(Method::GET, "/v1/tenants/{t}/stats/queue", Read, None),
    ]
}

/// The operator's routes.
fn operator_routes() -> Vec<Route> {
    vec![
        route(
            Method::POST,
            "/v1/tenants",
            Need::Operator,
            Some(json!({ "name": "made-{n}" })),
        ),
        route(Method::GET, "/v1/tenants", Need::Operator, None),
        route(Method::GET, "/v1/overview", Need::Operator, None),
    ]
}

/// A tenant of the table tests, with the leases its placeholders name.
struct Subject {
    tenant: Tenant,
    lease: String,
    lease_rel: String,
    lease_del: String,
    /// The token id `{token}` names; `None` makes a fresh token for each call (for routes
    /// that succeed in revoking it).
    token_id: Option<String>,
}

async fn subject(h: &Harness, name: &str) -> Subject {
    let tenant = h
        .setup_tenant(name, json!({ "max_active_leases": 100 }))
        .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let lease = h.grant(&tenant, json!({ "pool": "small" })).await;
        let id = lease["id"].as_str().expect("id").to_owned();
        h.wait_state(&tenant, &id, "ready").await;
        ids.push(id);
    }
    let tokens = h
        .get_ok(&format!("/v1/tenants/{name}/tokens"), &h.admin)
        .await;
    for name in ["hook", "hook-del"] {
        let (status, _, hook) = h
            .json(
                Method::PUT,
                &tenant.path(&format!("/webhooks/{name}")),
                Some(&h.admin),
                Some(json!({ "url": "http://127.0.0.1:9/hook" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{hook}");
    }
    Subject {
        tenant,
        lease: ids[0].clone(),
        lease_rel: ids[1].clone(),
        lease_del: ids[2].clone(),
        token_id: tokens["items"][0]["id"].as_str().map(str::to_owned),
    }
}

/// The concrete path and body of `route` on `subject` for call number `n`; makes a fresh
/// token when the route revokes one.
async fn concrete(
    h: &Harness,
    route: &Route,
    subject: &Subject,
    n: u64,
) -> (String, Option<Value>) {
    let mut path = route
        .template
        .replace("{t}", &subject.tenant.name)
        .replace("{lease}", &subject.lease)
        .replace("{lease_rel}", &subject.lease_rel)
        .replace("{lease_del}", &subject.lease_del)
        .replace("{n}", &n.to_string());
    if let Some(id) = &subject.token_id {
        path = path.replace("{token}", id);
    } else if path.contains("{token}") {
        let (status, _, token) = h
            .json(
                Method::POST,
                &format!("/v1/tenants/{}/tokens", subject.tenant.name),
                Some(&h.admin),
                Some(json!({ "scopes": ["leases:read"] })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        path = path.replace("{token}", token["id"].as_str().expect("id"));
    }
    if path.contains("{hook_del}") {
        // The webhook to delete: made again only when an earlier, allowed call deleted it,
        // so a refused call always meets it and a snapshot taken before sees it.
        let hook = format!("/v1/tenants/{}/webhooks/hook-del", subject.tenant.name);
        let (status, _, _) = h.json(Method::GET, &hook, Some(&h.admin), None).await;
        if status == StatusCode::NOT_FOUND {
            let (status, _, _) = h
                .json(
                    Method::PUT,
                    &hook,
                    Some(&h.admin),
                    Some(json!({ "url": "http://127.0.0.1:9/hook" })),
                )
                .await;
            assert!(
                status == StatusCode::OK || status == StatusCode::NOT_FOUND,
                "{status}"
            );
        }
        path = path.replace("{hook_del}", "hook-del");
    }
    let body = route.body.as_ref().map(|body| {
        serde_json::from_str(&body.to_string().replace("{n}", &n.to_string())).expect("json")
    });
    (path, body)
}

/// Everything the operator can read of a tenant, and the tenant list, to show that nothing
/// changed.
async fn snapshot(h: &Harness, tenant: &str) -> Value {
    let mut all = serde_json::Map::new();
    for part in [
        "",
        "/tokens",
        "/providers",
        "/pools",
        "/leases",
        "/usage",
        "/ledger",
        "/webhooks",
        "/integrations/github",
    ] {
        let path = format!("/v1/tenants/{tenant}{part}");
        all.insert(path.clone(), h.get_ok(&path, &h.admin).await);
    }
    // The operator's list too: a refused tenant creation must not have made one.
    all.insert(
        "/v1/tenants".to_owned(),
        h.get_ok("/v1/tenants?limit=1000", &h.admin).await,
    );
    Value::Object(all)
}

/// Every token of tenant A gets 404 on every route of tenant B, as for a missing tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_tokens_never_reach_another_tenant() {
    // Every token of tenant A — `tenant:admin`, `leases:write`, `leases:read` — gets 404
    // `not_found` on every route and method of tenant B, exactly as for a tenant that does not
    // exist, never B's data; A's paths with B's lease ids are 404 too; B is unchanged after.
    let h = Harness::start().await;
    let a = subject(&h, "alpha").await;
    let b = subject(&h, "bravo").await;
    let before = snapshot(&h, "bravo").await;
    let b_secrets: Vec<String> = [&b.lease, &b.lease_rel, &b.lease_del]
        .into_iter()
        .cloned()
        .chain(
            h.get_ok("/v1/tenants/bravo/tokens", &h.admin).await["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|t| t["id"].as_str().expect("id").to_owned()),
        )
        .collect();
    let ghost = Subject {
        tenant: Tenant {
            name: "ghost".into(),
            admin: String::new(),
            write: String::new(),
            read: String::new(),
        },
        lease: b.lease.clone(),
        lease_rel: b.lease_rel.clone(),
        lease_del: b.lease_del.clone(),
        token_id: b.token_id.clone(),
    };
    let mut n = 0;
    for route in tenant_routes(&h.cloud) {
        for token in [&a.tenant.admin, &a.tenant.write, &a.tenant.read] {
            n += 1;
            let (path, body) = concrete(&h, &route, &b, n).await;
            let answer = h
                .json(route.method.clone(), &path, Some(token), body.clone())
                .await;
            assert_problem(&answer, 404, "not_found");
            let text = answer.2.to_string();
            for secret in &b_secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{path} leaked {secret}: {text}"
                );
            }
            // The same answer as for a tenant that does not exist.
            let (ghost_path, _) = concrete(&h, &route, &ghost, n).await;
            let ghost_answer = h
                .json(route.method.clone(), &ghost_path, Some(token), body)
                .await;
            assert_eq!(ghost_answer.0, answer.0);
            assert_eq!(
                ghost_answer.2["detail"]
                    .as_str()
                    .map(|d| d.replace("ghost", "bravo")),
                answer.2["detail"].as_str().map(str::to_owned),
                "{path}: B's 404 differs from a missing tenant's"
            );
        }
    }
    // B's lease ids under A's own paths: not found in A.
    for (method, rest) in [
        (Method::GET, "/leases/{id}"),
        (Method::GET, "/leases/{id}?wait=ended&timeout_s=1"),
        (Method::GET, "/leases/{id}/logs"),
        (Method::POST, "/leases/{id}/heartbeat"),
        (Method::POST, "/leases/{id}/release"),
        (Method::DELETE, "/leases/{id}"),
    ] {
        let path = a.tenant.path(&rest.replace("{id}", &b.lease));
        for token in [&a.tenant.admin, &h.admin] {
            let answer = h.json(method.clone(), &path, Some(token), None).await;
            assert_problem(&answer, 404, "not_found");
        }
    }
    // A's token revoking B's token id under A's path: not found.
    let b_token_id = &b_secrets[3];
    assert_problem(
        &h.json(
            Method::DELETE,
            &a.tenant.path(&format!("/tokens/{b_token_id}")),
            Some(&a.tenant.admin),
            None,
        )
        .await,
        404,
        "not_found",
    );
    assert_eq!(snapshot(&h, "bravo").await, before, "B is unchanged");
    assert_eq!(h.lease(&b.tenant, &b.lease).await["state"], "ready");
    h.assert_documented().await;
}

/// Each scope may do exactly what it covers on every route; anything else is 403, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_are_enforced_on_every_route() {
    // Scopes on every route: `leases:read` reads but cannot write or administer, `leases:write`
    // requests, heartbeats and releases but cannot administer, `tenant:admin` does everything of
    // its tenant but cannot create or list tenants, and the operator's token does everything;
    // a refusal is 403 `forbidden` and changes nothing.
    let h = Harness::start().await;
    let mut a = subject(&h, "alpha").await;
    // Revoking succeeds for some tokens here: make a fresh token for each call.
    a.token_id = None;
    let combo = h.token("alpha", &["leases:read", "tenant:admin"]).await;
    let tokens = [
        ("leases:read", Need::Read, a.tenant.read.clone()),
        ("leases:write", Need::Write, a.tenant.write.clone()),
        ("tenant:admin", Need::TenantAdmin, a.tenant.admin.clone()),
        ("leases:read+tenant:admin", Need::TenantAdmin, combo),
        ("admin", Need::Operator, h.admin.clone()),
    ];
    let mut n = 0;
    let routes: Vec<Route> = tenant_routes(&h.cloud)
        .into_iter()
        .chain(operator_routes())
        .collect();
    for route in &routes {
        for (scope, holds, token) in &tokens {
            n += 1;
            let (path, body) = concrete(&h, route, &a, n).await;
            let before = if route.need > *holds {
                Some(snapshot(&h, "alpha").await)
            } else {
                None
            };
            let answer = h.json(route.method.clone(), &path, Some(token), body).await;
            if route.need <= *holds {
                assert!(
                    answer.0.is_success(),
                    "{scope} may {} {path}: {} {}",
                    route.method,
                    answer.0,
                    answer.2
                );
                // Let a new lease settle, so that later snapshots compare stable states.
                if answer.0 == StatusCode::CREATED && answer.2["state"].is_string() {
                    let id = answer.2["id"].as_str().expect("id");
                    h.wait_state(&a.tenant, id, "ready").await;
                }
            } else {
                // A tenant's own admin passes the scope check and meets the operator's rule.
                let code = if *holds == Need::TenantAdmin
                    && route.template.starts_with("/v1/tenants/{t}")
                {
                    "operator_only"
                } else {
                    "forbidden"
                };
                assert_problem(&answer, 403, code);
                assert_eq!(
                    Some(snapshot(&h, "alpha").await),
                    before,
                    "a refused {} {path} changed nothing",
                    route.method
                );
            }
        }
    }
    // A tenant's own admin cannot mint an operator token either.
    assert_problem(
        &h.json(
            Method::POST,
            &a.tenant.path("/tokens"),
            Some(&a.tenant.admin),
            Some(json!({ "scopes": ["admin"] })),
        )
        .await,
        422,
        "invalid_request",
    );
    h.assert_documented().await;
}

/// No, unknown, revoked or malformed tokens get 401 with `WWW-Authenticate: Bearer` on every route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unknown_and_revoked_tokens_get_401() {
    // No token, an unknown token, a revoked token, an empty one or another scheme: 401
    // `unauthorized` with `WWW-Authenticate: Bearer` on every route that needs a token, before
    // the body is even read; the open routes answer without one.
    let h = Harness::start().await;
    let a = subject(&h, "alpha").await;
    let revoked = {
        let (status, _, created) = h
            .json(
                Method::POST,
                &a.tenant.path("/tokens"),
                Some(&h.admin),
                Some(json!({ "scopes": ["tenant:admin"] })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let id = created["id"].as_str().expect("id");
        let (status, _, _) = h
            .json(
                Method::DELETE,
                &a.tenant.path(&format!("/tokens/{id}")),
                Some(&h.admin),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        created["token"].as_str().expect("token").to_owned()
    };
    let unknown = format!("bt_{:032x}", rand_u128());
    let before = snapshot(&h, "alpha").await;
    let routes: Vec<Route> = tenant_routes(&h.cloud)
        .into_iter()
        .chain(operator_routes())
        .collect();
    let mut n = 0;
    for route in &routes {
        n += 1;
        let (path, body) = concrete(&h, route, &a, n).await;
        let bytes = body.map(|b| b.to_string().into_bytes());
        let content_type = bytes.as_ref().map(|_| "application/json");
        let bad_headers: [Vec<(&str, String)>; 7] = [
            vec![],
            vec![("authorization", format!("Bearer {unknown}"))],
            vec![("authorization", format!("Bearer {revoked}"))],
            vec![("authorization", "Bearer ".to_owned())],
            vec![("authorization", "Bearer".to_owned())],
            vec![("authorization", format!("Basic {}", a.tenant.admin))],
            vec![("authorization", a.tenant.admin.clone())],
        ];
        for headers in &bad_headers {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let answer = h
                .send(
                    route.method.clone(),
                    &path,
                    None,
                    content_type,
                    bytes.clone(),
                    &headers,
                )
                .await;
            assert_problem(&answer, 401, "unauthorized");
        }
        // Authentication comes before the body: a malformed body without a token is 401.
        if route.body.is_some() {
            let answer = h
                .raw(
                    route.method.clone(),
                    &path,
                    None,
                    Some("application/json"),
                    b"{oops".to_vec(),
                )
                .await;
            assert_problem(&answer, 401, "unauthorized");
        }
    }
    assert_eq!(snapshot(&h, "alpha").await, before, "nothing changed");
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let (status, _, _) = h.json(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path} is open");
    }
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (status, _, _) = h
            .send(
                Method::GET,
                &a.tenant.path("/leases"),
                None,
                None,
                None,
                &[("authorization", &format!("{scheme} {}", a.tenant.read))],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "scheme {scheme}");
    }
    h.assert_documented().await;
}

// ----- credentials ---------------------------------------------------------------------------
