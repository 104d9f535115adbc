//! A tenant's provider accounts and pools: `PUT/GET /v1/tenants/{t}/providers[/{name}]`,
//! `PUT/GET /v1/tenants/{t}/pools[/{pool}]`.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, put};

use super::Principal;
use super::error::ApiError;
use super::extract::{Body, Params, PathParams};
use crate::tenant;
use crate::wire::{Page, Pool, PoolPut, Problem, ProviderAccount, ProviderPut, Scope};

/// How long a pool creation waits for the provider's price list.
const PRICE_TIMEOUT: Duration = Duration::from_secs(20);
/// `Retry-After` of a price list that failed transiently.
const PRICE_RETRY_AFTER_S: u64 = 5;

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route("/v1/tenants/{tenant}/providers", get(list_providers))
        .route("/v1/tenants/{tenant}/providers/{name}", put(put_provider))
        .route("/v1/tenants/{tenant}/pools", get(list_pools))
        .route("/v1/tenants/{tenant}/pools/{pool}", put(put_pool))
}

/// `PUT …/providers/{name}` query.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutProviderQuery {
    /// Change the account's identity even though it has live runners.
    force: Option<bool>,
}

crate::wire::rules!(PutProviderQuery {});

/// Creates or replaces a provider account. Credentials are stored encrypted and never
/// returned. `process` and `fake` accounts run on berth's own machine: only the admin token
/// may create or change them (403 `operator_only`). At most the quota's `max_providers`
/// accounts (403 `quota_exceeded`). Changing the identity of an account with live runners
/// (its kind, `base_url`/`url`, project token, `root`) is 409 `account_in_use` unless
/// `force=true`; a forced change keeps the old identity for those runners' destroys.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/providers/{name}", tag = "providers",
    params(("tenant" = String, Path), ("name" = String, Path),
        ("force" = Option<bool>, Query, description = "change the identity of an account with live runners (their destroys go to the old identity)")),
    request_body = ProviderPut,
    responses((status = 200, body = ProviderAccount), (status = 403, body = Problem), (status = 422, body = Problem),
              (status = 404, body = Problem), (status = 409, description = "account_in_use", body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn put_provider(
    State(state): State<super::State>,
    principal: Principal,
    PathParams((tenant, name)): PathParams<(String, String)>,
    Params(query): Params<PutProviderQuery>,
    Body(account): Body<ProviderPut>,
) -> Result<Json<ProviderAccount>, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    let response = state
        .ask(
            &tenant,
            tenant::PutProvider {
                name,
                account,
                by_operator: matches!(principal, Principal::Admin),
                force: query.force.unwrap_or(false),
            },
        )
        .await?;
    Ok(Json(response))
}

/// The tenant's provider accounts, without credentials.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/providers", tag = "providers", params(("tenant" = String, Path)),
    responses((status = 200, body = Page<ProviderAccount>), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn list_providers(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Json<Page<ProviderAccount>>, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    let response = state.ask(&tenant, tenant::ListProviders).await?;
    let items = response;
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// Creates or replaces a pool. Without `hourly_price_micros` the provider's price list is
/// asked; a pool without a price is refused. The `command` of a pool on a `process` account
/// runs on berth's own machine, so it is the operator's: a tenant token may change such a
/// pool only with its command unchanged (403 `operator_only`). At most the quota's
/// `max_pools` pools (403 `quota_exceeded`).
#[utoipa::path(put, path = "/v1/tenants/{tenant}/pools/{pool}", tag = "pools",
    params(("tenant" = String, Path), ("pool" = String, Path)), request_body = PoolPut,
    responses((status = 200, body = Pool), (status = 403, body = Problem), (status = 422, body = Problem), (status = 404, body = Problem),
              (status = 503, description = "the provider's price list did not answer", body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn put_pool(
    State(state): State<super::State>,
    principal: Principal,
    PathParams((tenant, name)): PathParams<(String, String)>,
    Body(pool): Body<PoolPut>,
) -> Result<Json<Pool>, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    // The price list is I/O: ask it here, outside the object, with a client the object
    // hands out.
    let provider_price = if pool.hourly_price_micros.is_none() {
        let response = state
            .ask(
                &tenant,
                tenant::ProviderHandle {
                    name: pool.provider.clone(),
                },
            )
            .await
            .map_err(|err| {
                if err.code == "not_found" {
                    ApiError::invalid(format!(
                        "provider account `{}` does not exist; create it first",
                        pool.provider
                    ))
                } else {
                    err
                }
            })?;
        let client = response;
        match tokio::time::timeout(
            PRICE_TIMEOUT,
            client.price(&pool.machine_type, pool.region.as_deref()),
        )
        .await
        {
            Ok(Ok(price)) => price,
            Ok(Err(err)) if err.is_retryable() => {
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "provider_unavailable",
                    format!(
                        "the provider's price list failed ({err}); retry, or set `hourly_price_micros`"
                    ),
                )
                .retry_after(PRICE_RETRY_AFTER_S));
            }
            Ok(Err(err)) => {
                return Err(ApiError::invalid(format!(
                    "the provider's price list refused: {err}"
                )));
            }
            Err(_) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "provider_unavailable",
                    "the provider's price list did not answer in time; retry, or set `hourly_price_micros`",
                )
                .retry_after(PRICE_RETRY_AFTER_S));
            }
        }
    } else {
        None
    };
    let response = state
        .ask(
            &tenant,
            tenant::PutPool {
                name,
                pool,
                provider_price,
                by_operator: matches!(principal, Principal::Admin),
            },
        )
        .await?;
    Ok(Json(response))
}

/// The tenant's pools. Every token of the tenant may list them (`leases:read` and up): a CI
/// pipeline chooses the pool it leases from. A pool holds no secret (credentials live in
/// provider accounts, which only a tenant admin lists); its `command` is visible to every
/// token of the tenant, as to every runner of the pool.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/pools", tag = "pools", params(("tenant" = String, Path)),
    responses((status = 200, body = Page<Pool>), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn list_pools(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Json<Page<Pool>>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesRead)?;
    let response = state.ask(&tenant, tenant::ListPools).await?;
    let items = response;
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}
