//! Usage and ledger: `GET /v1/tenants/{t}/usage`, `GET /v1/tenants/{t}/ledger`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;

use super::Principal;
use super::error::ApiError;
use super::extract::{Params, PathParams};
use super::tenants::page_limit;
use crate::tenant;
use crate::tenant::money::Period;
use crate::wire::bounds::{PAGE_LIMIT, PERIOD, SEQUENCE, TIME};
use crate::wire::rules::parse_time;
use crate::wire::{LedgerEntry, Page, Problem, Scope, Usage};

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route("/v1/tenants/{tenant}/usage", get(usage))
        .route("/v1/tenants/{tenant}/ledger", get(ledger))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsageQuery {
    /// `day` or `month` (UTC); default `day`.
    period: Option<String>,
    /// A time in the period: RFC 3339 or `YYYY-MM-DD`; default now.
    at: Option<String>,
}

crate::wire::rules!(UsageQuery {
    period: PERIOD,
    at: TIME,
});

/// Spend of a UTC day or month: charged, reserved, cap, available, by pool.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/usage", tag = "usage",
    params(("tenant" = String, Path), ("period" = Option<String>, Query, description = "day (default) or month"),
        ("at" = Option<String>, Query, description = "RFC 3339 or YYYY-MM-DD; default now")),
    responses((status = 200, body = Usage), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn usage(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
    Params(query): Params<UsageQuery>,
) -> Result<Json<Usage>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesRead)?;
    let period = match query.period.as_deref() {
        None => Period::Day,
        Some(text) => Period::parse(text)
            .ok_or_else(|| ApiError::bad_request("`period` takes `day` or `month`"))?,
    };
    let at = match query.at.as_deref() {
        None => state.runtime.clock().now_ms(),
        Some(text) => parse_time(text).ok_or_else(|| {
            ApiError::bad_request(
                "`at` takes RFC 3339 (2026-11-27T12:00:00Z) or a date (2026-11-27)",
            )
        })?,
    };
    let response = state.ask(&tenant, tenant::Usage { period, at }).await?;
    Ok(Json(response))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LedgerQuery {
    /// Rows after this sequence number (the previous page's `next_cursor`).
    after: Option<String>,
    limit: Option<usize>,
}

crate::wire::rules!(LedgerQuery {
    after: SEQUENCE,
    limit: PAGE_LIMIT,
});

/// The append-only ledger, oldest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/ledger", tag = "usage",
    params(("tenant" = String, Path), ("after" = Option<String>, Query, description = "a sequence number"),
        ("limit" = Option<usize>, Query, description = "1–1000, default 100")),
    responses((status = 200, body = Page<LedgerEntry>), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn ledger(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
    Params(query): Params<LedgerQuery>,
) -> Result<Json<Page<LedgerEntry>>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesRead)?;
    let after = match query.after.as_deref() {
        None | Some("") => 0,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::bad_request("`after` takes a sequence number"))?,
    };
    let limit = page_limit(query.limit)?;
    let response = state.ask(&tenant, tenant::Ledger { after, limit }).await?;
    Ok(Json(response))
}
