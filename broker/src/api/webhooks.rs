//! Webhook endpoints of a tenant and their deliveries:
//! `PUT/GET/DELETE /v1/tenants/{t}/webhooks/{name}`, `GET …/webhooks`,
//! `POST …/webhooks/{name}/test`, `GET …/webhooks/{name}/deliveries`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;

use super::Principal;
use super::error::ApiError;
use super::extract::{Body, Params, PathParams};
use super::tenants::page_limit;
use crate::tenant;
use crate::wire::bounds::{DELIVERY_STATUS, PAGE_LIMIT, SEQUENCE};
use crate::wire::{DeliveryStatus, Page, Problem, Scope, Webhook, WebhookDelivery, WebhookPut};

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route("/v1/tenants/{tenant}/webhooks", get(list_webhooks))
        .route(
            "/v1/tenants/{tenant}/webhooks/{name}",
            get(get_webhook).put(put_webhook).delete(delete_webhook),
        )
        .route(
            "/v1/tenants/{tenant}/webhooks/{name}/test",
            post(test_webhook),
        )
        .route(
            "/v1/tenants/{tenant}/webhooks/{name}/deliveries",
            get(list_deliveries),
        )
}

/// Creates or replaces a webhook endpoint. A new endpoint without a `secret` gets a
/// generated one, shown in this answer only. Targets on loopback, private or link-local
/// addresses are refused unless the operator allows them (`--allow-private-webhooks`),
/// whether written as an address, as `localhost`, or as a name that resolves there.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/webhooks/{name}", tag = "webhooks",
    params(("tenant" = String, Path), ("name" = String, Path)), request_body = WebhookPut,
    responses((status = 200, body = Webhook), (status = 403, description = "quota_exceeded", body = Problem), (status = 422, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn put_webhook(
    State(state): State<super::State>,
    principal: Principal,
    PathParams((tenant, name)): PathParams<(String, String)>,
    Body(webhook): Body<WebhookPut>,
) -> Result<Json<Webhook>, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    // Resolving the target's host is I/O: it happens here, before the object, which judges
    // only what needs no DNS. Without this, `localhost` would be accepted and then fail every
    // delivery for 24 h while `127.0.0.1` is refused at once.
    state
        .tenants
        .env()
        .webhooks
        .check_target_to_configure(&webhook.url)
        .await
        .map_err(|why| ApiError::invalid(format!("webhook `url`: {why}")))?;
    let response = state
        .ask(&tenant, tenant::PutWebhook { name, webhook })
        .await?;
    Ok(Json(response))
}

/// One webhook endpoint (never its secret), with its pending and dead delivery counts.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks/{name}", tag = "webhooks",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Webhook), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn get_webhook(
    State(state): State<super::State>,
    principal: Principal,
    PathParams((tenant, name)): PathParams<(String, String)>,
) -> Result<Json<Webhook>, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    let response = state.ask(&tenant, tenant::GetWebhook { name }).await?;
    Ok(Json(response))
}

/// Every webhook endpoint of the tenant.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks", tag = "webhooks", params(("tenant" = String, Path)),
    responses((status = 200, body = Page<Webhook>), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn list_webhooks(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Json<Page<Webhook>>, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    let response = state.ask(&tenant, tenant::ListWebhooks).await?;
    let items = response;
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// Deletes a webhook endpoint and its deliveries.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/webhooks/{name}", tag = "webhooks",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn delete_webhook(
    State(state): State<super::State>,
    principal: Principal,
    PathParams((tenant, name)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    state.ask(&tenant, tenant::DeleteWebhook { name }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Queues a `webhook.test` delivery to this endpoint; follow it in the deliveries list.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/{name}/test", tag = "webhooks",
    params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 202, body = WebhookDelivery), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn test_webhook(
    State(state): State<super::State>,
    principal: Principal,
    PathParams((tenant, name)): PathParams<(String, String)>,
) -> Result<(StatusCode, Json<WebhookDelivery>), ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    let response = state.ask(&tenant, tenant::TestWebhook { name }).await?;
    Ok((StatusCode::ACCEPTED, Json(response)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveriesQuery {
    status: Option<DeliveryStatus>,
    limit: Option<usize>,
    cursor: Option<String>,
}

crate::wire::rules!(DeliveriesQuery {
    status: DELIVERY_STATUS,
    limit: PAGE_LIMIT,
    cursor: SEQUENCE,
});

/// An endpoint's deliveries, newest first, with status, attempts, last response code and
/// error.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/webhooks/{name}/deliveries", tag = "webhooks",
    params(("tenant" = String, Path), ("name" = String, Path),
        ("status" = Option<String>, Query, description = "pending, delivered or dead"),
        ("limit" = Option<usize>, Query, description = "1–1000, default 100"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<WebhookDelivery>), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn list_deliveries(
    State(state): State<super::State>,
    principal: Principal,
    PathParams((tenant, name)): PathParams<(String, String)>,
    Params(query): Params<DeliveriesQuery>,
) -> Result<Json<Page<WebhookDelivery>>, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    let before = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| ApiError::bad_request("invalid `cursor`"))?,
        ),
    };
    let limit = page_limit(query.limit)?;
    let response = state
        .ask(
            &tenant,
            tenant::ListDeliveries {
                name,
                status: query.status,
                before,
                limit,
            },
        )
        .await?;
    Ok(Json(response))
}
