//! Writes the rules the server checks into the spec, from the declarations the checks run
//! (`wire::rules`): each request body's rules into its component schema, each query's into
//! its operation's parameters, and the rules of headers and optional bodies.
//!
//! A rule that names a field or parameter the spec does not have panics while the spec is
//! built: a declaration out of step with its type is a bug the first test of the spec meets.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{Components, OpenApi, RefOr, Required, Schema};
use utoipa::{Modify, ToSchema};

use crate::api::{dashboard, events, leases, logs, reports, tenants, webhooks};
use crate::wire::bounds::{GITHUB_DELIVERY, IDEMPOTENCY_KEY, NAME};
use crate::wire::rules::{Rule, Validate};
use crate::wire::{
    BackupRequest, GithubPut, Heartbeat, LeaseRequest, LimitsPatch, PoolPut, ProviderPut,
    QuotaPatch, RunnerReady, TenantCreate, TenantPatch, TenantRestoreRequest, TokenCreate,
    WebhookPut,
};

pub(super) struct Rules;

impl Modify for Rules {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        body::<LeaseRequest>(components);
        body::<Heartbeat>(components);
        body::<LimitsPatch>(components);
        body::<QuotaPatch>(components);
        body::<TenantCreate>(components);
        body::<TenantPatch>(components);
        body::<TokenCreate>(components);
        body::<ProviderPut>(components);
        body::<PoolPut>(components);
        body::<WebhookPut>(components);
        body::<GithubPut>(components);
        body::<RunnerReady>(components);
        body::<BackupRequest>(components);
        body::<TenantRestoreRequest>(components);

        let leases = "/v1/tenants/{tenant}/leases";
        query::<tenants::ListQuery>(openapi, "get", "/v1/tenants");
        query::<leases::ListQuery>(openapi, "get", leases);
        query::<leases::GetQuery>(openapi, "get", "/v1/tenants/{tenant}/leases/{id}");
        query::<logs::LogsQuery>(openapi, "get", "/v1/tenants/{tenant}/leases/{id}/logs");
        query::<reports::UsageQuery>(openapi, "get", "/v1/tenants/{tenant}/usage");
        query::<reports::LedgerQuery>(openapi, "get", "/v1/tenants/{tenant}/ledger");
        query::<webhooks::DeliveriesQuery>(
            openapi,
            "get",
            "/v1/tenants/{tenant}/webhooks/{name}/deliveries",
        );
        query::<events::EventsQuery>(openapi, "get", "/v1/tenants/{tenant}/events");
        query::<dashboard::OverviewQuery>(openapi, "get", "/v1/overview");
        query::<dashboard::SpendQuery>(openapi, "get", "/v1/tenants/{tenant}/stats/spend");
        query::<dashboard::QueueQuery>(openapi, "get", "/v1/tenants/{tenant}/stats/queue");

        header(
            openapi,
            "post",
            leases,
            "Idempotency-Key",
            &IDEMPOTENCY_KEY,
            false,
        );
        let github = "/v1/tenants/{tenant}/integrations/github";
        header(
            openapi,
            "post",
            github,
            "X-GitHub-Delivery",
            &GITHUB_DELIVERY,
            true,
        );
        for name in ["X-GitHub-Event", "X-Hub-Signature-256"] {
            required_header(openapi, "post", github, name);
        }

        // Names in paths: a tenant's everywhere, and those a PUT creates.
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, operation) in operations(item) {
                for parameter in operation.parameters.iter_mut().flatten() {
                    let named = match parameter.name.as_str() {
                        "tenant" => true,
                        "pool" | "name" => method == "put",
                        _ => false,
                    };
                    if named && parameter.parameter_in == ParameterIn::Path {
                        let what =
                            format!("path parameter `{}` of {method} {path}", parameter.name);
                        NAME.constrain(schema_of(&mut parameter.schema, &what), &what);
                    }
                }
            }
        }

        // Bodies that may be left out (`extract::OptionalBody`).
        for path in [
            "/v1/tenants/{tenant}/leases/{id}/heartbeat",
            "/v1/runners/{lease_id}/ready",
        ] {
            let operation = operation(openapi, "post", path);
            let body = operation
                .request_body
                .as_mut()
                .unwrap_or_else(|| panic!("BUG: post {path} documents no body"));
            body.required = Some(Required::False);
        }
    }
}

/// The rules of a request body, into its component schema's properties.
fn body<T: ToSchema + Validate>(components: &mut Components) {
    let name = T::name();
    let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(name.as_ref()) else {
        panic!("BUG: the spec has no object schema `{name}`");
    };
    for (field, rule) in T::rules() {
        let what = format!("`{name}.{field}`");
        let property = object
            .properties
            .get_mut(field)
            .unwrap_or_else(|| panic!("BUG: a rule names {what}, which the schema lacks"));
        rule.constrain(property, &what);
    }
}

/// The rules of a query, into its operation's query parameters.
fn query<T: Validate>(openapi: &mut OpenApi, method: &str, path: &str) {
    let operation = operation(openapi, method, path);
    for (field, rule) in T::rules() {
        let what = format!("query parameter `{field}` of {method} {path}");
        let parameter = operation
            .parameters
            .iter_mut()
            .flatten()
            .find(|p| p.name == field && p.parameter_in == ParameterIn::Query)
            .unwrap_or_else(|| panic!("BUG: a rule names the {what}, which the spec lacks"));
        rule.constrain(schema_of(&mut parameter.schema, &what), &what);
    }
}

/// A header's rule, and whether the server requires it.
fn header(
    openapi: &mut OpenApi,
    method: &str,
    path: &str,
    name: &str,
    rule: &Rule,
    required: bool,
) {
    let operation = operation(openapi, method, path);
    let what = format!("header `{name}` of {method} {path}");
    let parameter = operation
        .parameters
        .iter_mut()
        .flatten()
        .find(|p| p.name == name && p.parameter_in == ParameterIn::Header)
        .unwrap_or_else(|| panic!("BUG: the spec lacks the {what}"));
    parameter.required = if required {
        Required::True
    } else {
        Required::False
    };
    rule.constrain(schema_of(&mut parameter.schema, &what), &what);
}

/// A header the server requires.
fn required_header(openapi: &mut OpenApi, method: &str, path: &str, name: &str) {
    let operation = operation(openapi, method, path);
    let parameter = operation
        .parameters
        .iter_mut()
        .flatten()
        .find(|p| p.name == name && p.parameter_in == ParameterIn::Header)
        .unwrap_or_else(|| panic!("BUG: the spec lacks the header `{name}` of {method} {path}"));
    parameter.required = Required::True;
}

fn schema_of<'a>(schema: &'a mut Option<RefOr<Schema>>, what: &str) -> &'a mut RefOr<Schema> {
    schema
        .as_mut()
        .unwrap_or_else(|| panic!("BUG: the {what} has no schema"))
}

pub(super) fn operation<'a>(
    openapi: &'a mut OpenApi,
    method: &str,
    path: &str,
) -> &'a mut Operation {
    let item = openapi
        .paths
        .paths
        .get_mut(path)
        .unwrap_or_else(|| panic!("BUG: the spec has no path {path}"));
    operations(item)
        .find(|(m, _)| *m == method)
        .map(|(_, operation)| operation)
        .unwrap_or_else(|| panic!("BUG: the spec has no {method} {path}"))
}

pub(super) fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("patch", &mut item.patch),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|o| (method, o)))
}
