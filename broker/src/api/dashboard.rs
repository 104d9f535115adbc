//! The read-only routes the web dashboard (`/ui`) is built on, open to any client:
//! `GET /v1/whoami`, `GET /v1/overview` (operator), `GET /v1/tenants/{t}/status`,
//! `GET /v1/tenants/{t}/stats/spend` and `GET /v1/tenants/{t}/stats/queue`.
//!
//! Scoped like every tenant route ([`Principal::require`]): a token of tenant A gets 404 on
//! anything of tenant B. Dead-lettered webhook deliveries are counted only for tokens that may
//! see webhooks (`tenant:admin`).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{Params, PathParams};
use super::{Principal, TENANT_KIND};
use crate::tenant;
use crate::wire::dashboard::{Overview, QueueHistory, SpendHistory, TenantStatus, Whoami};
use crate::wire::rules::Rule;
use crate::wire::{Problem, Scope};

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/overview", get(overview))
        .route("/v1/tenants/{tenant}/status", get(status))
        .route("/v1/tenants/{tenant}/stats/spend", get(spend))
        .route("/v1/tenants/{tenant}/stats/queue", get(queue))
}

/// Whom the token belongs to: the operator, or a tenant and its scopes.
#[utoipa::path(get, path = "/v1/whoami", tag = "tokens",
    responses((status = 200, body = Whoami), (status = 401, body = Problem)), security(("bearer" = [])))]
pub(super) async fn whoami(principal: Principal) -> Json<Whoami> {
    Json(match principal {
        Principal::Admin => Whoami {
            admin: true,
            tenant: None,
            scopes: vec![Scope::Admin],
        },
        Principal::Tenant { tenant, scopes } => Whoami {
            admin: false,
            tenant: Some(tenant),
            scopes,
        },
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OverviewQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Tenants per overview page: reading a status wakes the tenant.
static OVERVIEW_LIMIT: Rule = Rule::Int { min: 1, max: 100 };
crate::wire::rules!(OverviewQuery {
    limit: OVERVIEW_LIMIT
});

/// Every tenant's status, by name (operator only). Reading a tenant's status wakes its
/// object, so a page holds at most 100 tenants (default 50).
#[utoipa::path(get, path = "/v1/overview", tag = "tenants",
    params(("limit" = Option<usize>, Query, minimum = 1, maximum = 100, description = "1–100, default 50"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Overview), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn overview(
    State(state): State<super::State>,
    principal: Principal,
    Params(query): Params<OverviewQuery>,
) -> Result<Json<Overview>, ApiError> {
    principal.require_admin()?;
    let limit = match query.limit.unwrap_or(50) {
        limit @ 1..=100 => limit,
        _ => return Err(ApiError::bad_request("`limit` must be between 1 and 100")),
    };
    let mut names: Vec<String> = state
        .runtime
        .directory()
        .keys(TENANT_KIND, query.cursor.as_deref(), limit + 1)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let next_cursor = if names.len() > limit {
        names.truncate(limit);
        names.last().cloned()
    } else {
        None
    };
    // One tenant that cannot answer now (its object overloaded, or in cluster mode owned by a
    // node this one cannot reach) is named, not allowed to fail the whole page.
    let answers = futures::future::join_all(names.iter().map(|name| {
        state.ask(
            name,
            tenant::Status {
                with_deliveries: true,
            },
        )
    }))
    .await;
    let mut items = Vec::with_capacity(answers.len());
    let mut unavailable = Vec::new();
    for (name, answer) in names.into_iter().zip(answers) {
        match answer {
            Ok(status) => items.push(status),
            Err(error) => {
                tracing::debug!(tenant = %name, ?error, "overview: no status");
                unavailable.push(name);
            }
        }
    }
    Ok(Json(Overview {
        items,
        unavailable,
        next_cursor,
    }))
}

/// No query parameters: any is 400.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoQuery {}

crate::wire::rules!(NoQuery {});

/// The tenant at a glance: leases by state, spend of the day and month against the caps, the
/// caps it is at, and (for `tenant:admin`) its dead-lettered webhook deliveries.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/status", tag = "usage", params(("tenant" = String, Path)),
    responses((status = 200, body = TenantStatus), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn status(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
    Params(NoQuery {}): Params<NoQuery>,
) -> Result<Json<TenantStatus>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesRead)?;
    let with_deliveries = principal.has(Scope::TenantAdmin);
    let response = state
        .ask(&tenant, tenant::Status { with_deliveries })
        .await?;
    Ok(Json(response))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SpendQuery {
    /// 1–400, default 30.
    days: Option<u32>,
}

static SPEND_DAYS: Rule = Rule::Int { min: 1, max: 400 };
crate::wire::rules!(SpendQuery { days: SPEND_DAYS });

/// Charges per UTC day over the last `days` days (today last), by pool.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/stats/spend", tag = "usage",
    params(("tenant" = String, Path), ("days" = Option<u32>, Query, minimum = 1, maximum = 400, description = "1–400, default 30")),
    responses((status = 200, body = SpendHistory), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn spend(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
    Params(query): Params<SpendQuery>,
) -> Result<Json<SpendHistory>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesRead)?;
    let days = match query.days.unwrap_or(30) {
        days @ 1..=400 => days,
        _ => return Err(ApiError::bad_request("`days` must be between 1 and 400")),
    };
    let response = state.ask(&tenant, tenant::SpendHistory { days }).await?;
    Ok(Json(response))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QueueQuery {
    /// 1–1440, default 60.
    minutes: Option<u32>,
}

static QUEUE_MINUTES: Rule = Rule::Int { min: 1, max: 1440 };
crate::wire::rules!(QueueQuery {
    minutes: QUEUE_MINUTES
});

/// The queue's length once a minute over the last `minutes` minutes (now last).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/stats/queue", tag = "usage",
    params(("tenant" = String, Path), ("minutes" = Option<u32>, Query, minimum = 1, maximum = 1440, description = "1–1440, default 60")),
    responses((status = 200, body = QueueHistory), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn queue(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
    Params(query): Params<QueueQuery>,
) -> Result<Json<QueueHistory>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesRead)?;
    let minutes = match query.minutes.unwrap_or(60) {
        minutes @ 1..=1440 => minutes,
        _ => {
            return Err(ApiError::bad_request(
                "`minutes` must be between 1 and 1440",
            ));
        }
    };
    let response = state.ask(&tenant, tenant::QueueHistory { minutes }).await?;
    Ok(Json(response))
}
