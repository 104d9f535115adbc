//! Tenants and their tokens: `POST/GET /v1/tenants`, `GET/PATCH /v1/tenants/{t}`,
//! `POST/GET /v1/tenants/{t}/tokens`, `DELETE /v1/tenants/{t}/tokens/{id}`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use serde::Deserialize;

use super::auth::{TOKEN_ID_KIND, TOKEN_KIND, TokenRecord};
use super::error::ApiError;
use super::extract::{Body, Params, PathParams};
use super::{Principal, TENANT_KIND};
use crate::objects::clock::rfc3339;
use crate::secrets;
use crate::tenant::{self, printable, quota};
use crate::wire::bounds::PAGE_LIMIT;
use crate::wire::rules::Checked;
use crate::wire::{
    Page, Problem, Scope, Tenant, TenantCreate, TenantPatch, TenantSummary, TokenCreate,
    TokenCreated, TokenSummary,
};

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/tenants/{tenant}", get(get_tenant).patch(patch_tenant))
        .route(
            "/v1/tenants/{tenant}/tokens",
            get(list_tokens).post(create_token),
        )
        .route("/v1/tenants/{tenant}/tokens/{id}", delete(revoke_token))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

crate::wire::rules!(ListQuery { limit: PAGE_LIMIT });

/// Creates a tenant (operator only).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = TenantCreate,
    responses((status = 201, body = Tenant), (status = 409, description = "exists", body = Problem),
              (status = 422, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn create_tenant(
    State(state): State<super::State>,
    principal: Principal,
    Body(body): Body<TenantCreate>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    principal.require_admin()?;
    // The body's rules held: `name` is a valid tenant name (`wire::bounds::NAME`).
    let _creating = state.creating.lock(&body.name).await;
    if state.tenant_exists(&body.name) {
        return Err(ApiError::conflict(format!(
            "tenant `{}` already exists",
            body.name
        )));
    }
    // The object first, then the directory row that makes the tenant visible. A crash in
    // between leaves an invisible object; the next create of the name completes it.
    let response = state
        .ask(
            &body.name,
            tenant::Create {
                limits: body.limits,
                quota: body.quota,
            },
        )
        .await?;
    let tenant = response;
    let record = serde_json::json!({ "created_at": tenant.created_at });
    state
        .runtime
        .directory()
        .put_key(TENANT_KIND, &body.name, record.to_string())
        .await
        .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// Lists tenants (operator only), by name.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    params(("limit" = Option<usize>, Query, description = "1–1000, default 100"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<TenantSummary>), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn list_tenants(
    State(state): State<super::State>,
    principal: Principal,
    Params(query): Params<ListQuery>,
) -> Result<Json<Page<TenantSummary>>, ApiError> {
    principal.require_admin()?;
    let limit = page_limit(query.limit)?;
    let mut rows = state
        .runtime
        .directory()
        .keys(TENANT_KIND, query.cursor.as_deref(), limit + 1);
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|(name, _)| name.clone())
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(|(name, value)| {
            let created_at = serde_json::from_str::<serde_json::Value>(&value)
                .ok()
                .and_then(|v| v["created_at"].as_str().map(str::to_owned))
                .unwrap_or_default();
            TenantSummary { name, created_at }
        })
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

/// A page size: 1–1000 (`wire::bounds::PAGE_LIMIT`, which the query's rules checked), default
/// 100.
pub(super) fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(100);
    limit
        .check(&PAGE_LIMIT, "limit")
        .map_err(ApiError::bad_request)?;
    Ok(limit)
}

/// A tenant, its limits and its quota. Every token of the tenant may read them (`leases:read`
/// and up): a CI pipeline needs its caps as much as its admin does, and they hold no secret.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants", params(("tenant" = String, Path)),
    responses((status = 200, body = Tenant), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn get_tenant(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Json<Tenant>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesRead)?;
    crate::failpoint::panic_if_armed("api.get_tenant.panic");
    let response = state.ask(&tenant, tenant::Get).await?;
    Ok(Json(response))
}

/// Changes a tenant's quota (admin token only: 403 `operator_only` otherwise) and limits,
/// which must fit the quota (403 `quota_exceeded`); limits the admin token sets raise the
/// ceilings it does not set in the same request. Absent fields stay; `null` clears a spend
/// cap or the default idle timeout. Lowering a spend cap of the limits below what is spent
/// ends the newest leases; lowering the quota lowers the limits above it and ends no lease.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}", tag = "tenants", params(("tenant" = String, Path)),
    request_body = TenantPatch,
    responses((status = 200, body = Tenant), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn patch_tenant(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
    Body(body): Body<TenantPatch>,
) -> Result<Json<Tenant>, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    if body.quota.is_some() {
        principal.require_operator("a tenant's quota")?;
    }
    let response = state
        .ask(
            &tenant,
            tenant::Patch {
                limits: body.limits,
                quota: body.quota,
                by_operator: matches!(principal, Principal::Admin),
            },
        )
        .await?;
    Ok(Json(response))
}

/// Creates a token of the tenant (at most the quota's `max_tokens`: 403 `quota_exceeded`).
/// The secret is in this answer only.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/tokens", tag = "tokens", params(("tenant" = String, Path)),
    request_body = TokenCreate,
    responses((status = 201, body = TokenCreated), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn create_token(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
    Body(body): Body<TokenCreate>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    // The body's rules (`wire::bounds::TOKEN_SCOPES`, `TOKEN_NAME`) held: one or more scopes,
    // never `admin`; a name of 1–100 characters without control characters.
    let mut scopes = body.scopes;
    scopes.sort();
    scopes.dedup();
    // Tokens live in the directory, not the object: count them under the tenant's lock, so
    // two requests cannot both take the last one the quota allows.
    let _creating = state.creating.lock(&tenant).await;
    let response = state.ask(&tenant, tenant::Get).await?;
    let quota = response.quota;
    let held = token_records(&state, &tenant).len();
    if let Some(why) = quota::count_exceeded("tokens", held, quota.max_tokens) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "quota_exceeded",
            format!("{why}; revoke one with `DELETE …/tokens/{{id}}`"),
        ));
    }
    let token = secrets::new_token();
    let id = format!("tok_{}", &secrets::token_hash(&token)[..16]);
    let record = TokenRecord {
        id: id.clone(),
        tenant: tenant.clone(),
        scopes: scopes.clone(),
        name: body.name.clone(),
        created_at: state.runtime.clock().now_ms(),
    };
    let hash = secrets::token_hash(&token);
    let directory = state.runtime.directory();
    let json = serde_json::to_string(&record).map_err(ApiError::internal)?;
    directory
        .put_key(TOKEN_ID_KIND, &format!("{tenant}/{id}"), hash.clone())
        .await
        .map_err(ApiError::internal)?;
    directory
        .put_key(TOKEN_KIND, &hash, json)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id,
            token,
            scopes,
            name: body.name,
        }),
    ))
}

/// The tenant's tokens, without their secrets.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/tokens", tag = "tokens", params(("tenant" = String, Path)),
    responses((status = 200, body = Page<TokenSummary>), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn list_tokens(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Json<Page<TokenSummary>>, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    let items = token_records(&state, &tenant)
        .into_iter()
        .map(|record| TokenSummary {
            id: record.id,
            scopes: record.scopes,
            name: record.name,
            created_at: rfc3339(record.created_at),
        })
        .collect();
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// The tenant's tokens, from the directory's index.
fn token_records(state: &super::State, tenant: &str) -> Vec<TokenRecord> {
    let directory = state.runtime.directory();
    let prefix = format!("{tenant}/");
    directory
        .keys(TOKEN_ID_KIND, Some(&prefix), 10_000)
        .into_iter()
        .take_while(|(key, _)| key.starts_with(&prefix))
        .filter_map(|(_, hash)| directory.key(TOKEN_KIND, &hash))
        .filter_map(|json| serde_json::from_str::<TokenRecord>(&json).ok())
        .collect()
}

/// Revokes a token: it stops working at once.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/tokens/{id}", tag = "tokens",
    params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn revoke_token(
    State(state): State<super::State>,
    principal: Principal,
    PathParams((tenant, id)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    let directory = state.runtime.directory();
    let index = format!("{tenant}/{id}");
    let hash = directory
        .key(TOKEN_ID_KIND, &index)
        .ok_or_else(|| ApiError::not_found(format!("token `{}` not found", printable(&id))))?;
    directory
        .delete_key(TOKEN_KIND, &hash)
        .await
        .map_err(ApiError::internal)?;
    directory
        .delete_key(TOKEN_ID_KIND, &index)
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}
