//! OpenAPI links: from each operation that creates something to the operations that read,
//! change or end it, with the parameters taken from the answer (or the request), so a client
//! generator or a stateful test can follow "create a token → revoke it", "request a lease →
//! wait for it → heartbeat → release it".

use utoipa::Modify;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::{OpenApi, RefOr};

use super::rules::operation;

pub(super) struct Links;

/// One create: its method, path and success statuses, and where its links lead: (link name,
/// operation id, parameters as (name, runtime expression)).
type Create = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [(
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    )],
);

const TENANT: (&str, &str) = ("tenant", "$request.path.tenant");

const CREATES: &[Create] = &[
    (
        "post",
        "/v1/tenants",
        &["201"],
        &[
            (
                "GetTenant",
                "get_tenant",
                &[("tenant", "$response.body#/name")],
            ),
            (
                "PatchTenant",
                "patch_tenant",
                &[("tenant", "$response.body#/name")],
            ),
        ],
    ),
    (
        "post",
        "/v1/tenants/{tenant}/tokens",
        &["201"],
        &[
            ("ListTokens", "list_tokens", &[TENANT]),
            (
                "RevokeToken",
                "revoke_token",
                &[TENANT, ("id", "$response.body#/id")],
            ),
        ],
    ),
    (
        "put",
        "/v1/tenants/{tenant}/providers/{name}",
        &["200"],
        &[("ListProviders", "list_providers", &[TENANT])],
    ),
    (
        "put",
        "/v1/tenants/{tenant}/pools/{pool}",
        &["200"],
        &[("ListPools", "list_pools", &[TENANT])],
    ),
    (
        "post",
        "/v1/tenants/{tenant}/leases",
        &["201", "202"],
        &[
            (
                "GetLease",
                "get_lease",
                &[TENANT, ("id", "$response.body#/id")],
            ),
            (
                "Heartbeat",
                "heartbeat",
                &[TENANT, ("id", "$response.body#/id")],
            ),
            (
                "ReleaseLease",
                "release_lease",
                &[TENANT, ("id", "$response.body#/id")],
            ),
            (
                "DeleteLease",
                "delete_lease",
                &[TENANT, ("id", "$response.body#/id")],
            ),
            ("LeaseLogs", "logs", &[TENANT, ("id", "$response.body#/id")]),
        ],
    ),
    (
        "put",
        "/v1/tenants/{tenant}/webhooks/{name}",
        &["200"],
        &[
            (
                "GetWebhook",
                "get_webhook",
                &[TENANT, ("name", "$request.path.name")],
            ),
            (
                "TestWebhook",
                "test_webhook",
                &[TENANT, ("name", "$request.path.name")],
            ),
            (
                "ListDeliveries",
                "list_deliveries",
                &[TENANT, ("name", "$request.path.name")],
            ),
            (
                "DeleteWebhook",
                "delete_webhook",
                &[TENANT, ("name", "$request.path.name")],
            ),
        ],
    ),
    (
        "put",
        "/v1/tenants/{tenant}/integrations/github",
        &["200"],
        &[("GetGithub", "get_github", &[TENANT])],
    ),
];

impl Modify for Links {
    fn modify(&self, openapi: &mut OpenApi) {
        let operation_ids: Vec<String> = openapi
            .paths
            .paths
            .values_mut()
            .flat_map(|item| {
                super::rules::operations(item)
                    .filter_map(|(_, o)| o.operation_id.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        for (method, path, statuses, links) in CREATES {
            let operation = operation(openapi, method, path);
            for status in *statuses {
                let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status)
                else {
                    panic!("BUG: {method} {path} documents no {status} answer");
                };
                for (name, target, parameters) in *links {
                    assert!(
                        operation_ids.iter().any(|id| id == target),
                        "BUG: a link of {method} {path} leads to `{target}`, no operation's id"
                    );
                    let link = parameters
                        .iter()
                        .fold(LinkBuilder::new().operation_id(*target), |link, (p, e)| {
                            link.parameter(*p, *e)
                        })
                        .build();
                    response.links.insert((*name).to_owned(), RefOr::T(link));
                }
            }
        }
    }
}

/// utoipa 5 writes a link's fields as `operation_id`, `operation_ref` and `request_body`;
/// OpenAPI names them `operationId`, `operationRef` and `requestBody`, and tools that follow
/// links (schemathesis, client generators) read only those.
pub(super) fn name_fields(document: &mut serde_json::Value) {
    let Some(paths) = document["paths"].as_object_mut() else {
        return;
    };
    let responses = paths
        .values_mut()
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses"))
        .filter_map(serde_json::Value::as_object_mut)
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let Some(links) = response.get_mut("links").and_then(|l| l.as_object_mut()) else {
            continue;
        };
        for link in links
            .values_mut()
            .filter_map(serde_json::Value::as_object_mut)
        {
            for (from, to) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(from) {
                    link.insert(to.to_owned(), value);
                }
            }
        }
    }
}
