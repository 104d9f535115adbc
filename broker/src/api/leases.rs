//! Leases: request, list, get (with long poll), heartbeat, release.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{Body, OptionalBody, Params, PathParams};
use super::tenants::page_limit;
use super::{MAX_LONG_POLL, Principal};
use crate::tenant::{self, Filter};
use crate::wire::bounds::{
    IDEMPOTENCY_KEY, LABEL_FILTER, LEASE_CURSOR, LEASE_FILTER, LONG_POLL, PAGE_LIMIT, WAIT_FOR,
};
use crate::wire::{Heartbeat, Lease, LeaseRequest, LeaseState, Page, Problem, Scope};

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route(
            "/v1/tenants/{tenant}/leases",
            get(list_leases).post(request_lease),
        )
        .route(
            "/v1/tenants/{tenant}/leases/{id}",
            get(get_lease).delete(delete_lease),
        )
        .route(
            "/v1/tenants/{tenant}/leases/{id}/heartbeat",
            post(heartbeat),
        )
        .route(
            "/v1/tenants/{tenant}/leases/{id}/release",
            post(release_lease),
        )
}

/// Requests a lease: 201 when granted, 202 when queued (`wait_s > 0` at a full cap), 429 when
/// refused. With an `Idempotency-Key`, a retry with the same body returns the same lease.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/leases", tag = "leases", params(("tenant" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "same key and body → same lease for 24 h")),
    request_body = LeaseRequest,
    responses((status = 201, description = "granted", body = Lease), (status = 202, description = "queued", body = Lease),
        (status = 429, description = "concurrency_cap, spend_cap or queue_full", body = Problem),
        (status = 422, description = "invalid_request or idempotency_mismatch", body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn request_lease(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
    headers: HeaderMap,
    Body(request): Body<LeaseRequest>,
) -> Result<(StatusCode, Json<Lease>), ApiError> {
    principal.require(&state, &tenant, Scope::LeasesWrite)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value.to_str().map_err(|_| {
                ApiError::bad_request("`Idempotency-Key` must be 1–255 visible ASCII characters")
            })?;
            IDEMPOTENCY_KEY
                .check_str("Idempotency-Key", key)
                .map_err(ApiError::bad_request)?;
            Some(key.to_owned())
        }
    };
    let response = state
        .ask(
            &tenant,
            tenant::RequestLease {
                request,
                idempotency_key,
            },
        )
        .await?;
    let tenant::Requested { lease, queued, .. } = response;
    let status = if queued {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(lease)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// One state, or `active` (provisioning, ready, releasing) or `ended`.
    state: Option<String>,
    pool: Option<String>,
    /// `key:value`
    label: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

crate::wire::rules!(ListQuery {
    state: LEASE_FILTER,
    label: LABEL_FILTER,
    limit: PAGE_LIMIT,
    cursor: LEASE_CURSOR,
});

/// Leases, newest first, filtered by state (one state, `active` or `ended`), pool and label.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/leases", tag = "leases",
    params(("tenant" = String, Path), ("state" = Option<String>, Query, description = "a state, `active` or `ended`"),
        ("pool" = Option<String>, Query), ("label" = Option<String>, Query, description = "key:value"),
        ("limit" = Option<usize>, Query, description = "1–1000, default 100"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<Lease>), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn list_leases(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
    Params(query): Params<ListQuery>,
) -> Result<Json<Page<Lease>>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesRead)?;
    let states = match query.state.as_deref() {
        None => Vec::new(),
        Some("active") => vec![
            LeaseState::Provisioning,
            LeaseState::Ready,
            LeaseState::Releasing,
        ],
        Some("ended") => vec![
            LeaseState::Released,
            LeaseState::Expired,
            LeaseState::Failed,
            LeaseState::Canceled,
        ],
        Some(name) => vec![LeaseState::parse(name).ok_or_else(|| {
            ApiError::bad_request("`state` takes a lease state, `active` or `ended`")
        })?],
    };
    let label = match query.label {
        None => None,
        Some(label) => {
            let (key, value) = label
                .split_once(':')
                .ok_or_else(|| ApiError::bad_request("`label` takes `key:value`"))?;
            Some((key.to_owned(), value.to_owned()))
        }
    };
    let filter = Filter {
        states,
        pool: query.pool,
        label,
        before: query.cursor,
        limit: page_limit(query.limit)?,
    };
    let response = state.ask(&tenant, tenant::ListLeases { filter }).await?;
    Ok(Json(response))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GetQuery {
    /// `ready` or `ended`: wait until the lease is ready (or ended) / has ended.
    wait: Option<String>,
    /// Longest wait in seconds (default 30, at most 300).
    timeout_s: Option<u64>,
}

crate::wire::rules!(GetQuery {
    wait: WAIT_FOR,
    timeout_s: LONG_POLL,
});

/// One lease. With `wait=ready|ended`, answers once the lease is ready (or ended) / ended, or
/// when `timeout_s` passes, whichever is first (long poll).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/leases/{id}", tag = "leases",
    params(("tenant" = String, Path), ("id" = String, Path), ("wait" = Option<String>, Query, description = "ready or ended"),
        ("timeout_s" = Option<u64>, Query, description = "default 30, at most 300")),
    responses((status = 200, body = Lease), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn get_lease(
    State(state): State<super::State>,
    principal: Principal,
    PathParams((tenant, id)): PathParams<(String, String)>,
    Params(query): Params<GetQuery>,
) -> Result<Json<Lease>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesRead)?;
    let done: fn(&Lease) -> bool = match query.wait.as_deref() {
        None => {
            let response = state.ask(&tenant, tenant::GetLease { id }).await?;
            return Ok(Json(response));
        }
        Some("ready") => |lease| lease.state == LeaseState::Ready || lease.state.is_terminal(),
        Some("ended") => |lease| lease.state.is_terminal(),
        Some(_) => return Err(ApiError::bad_request("`wait` takes `ready` or `ended`")),
    };
    let timeout = Duration::from_secs(query.timeout_s.unwrap_or(30)).min(MAX_LONG_POLL);
    let deadline = tokio::time::Instant::now() + timeout;
    // Subscribe before reading, so a change between the read and the wait is not missed.
    let mut events = state.tenants.subscribe(state.tenants.id_from_name(&tenant));
    loop {
        let response = state
            .ask(&tenant, tenant::GetLease { id: id.clone() })
            .await?;
        let lease = response;
        if done(&lease) {
            return Ok(Json(lease));
        }
        // Wait for an event of this lease (or a lag, after which we simply read again).
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) if event.lease_id().as_deref() == Some(id.as_str()) => break,
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(Json(lease)),
                },
                () = tokio::time::sleep_until(deadline) => return Ok(Json(lease)),
                () = state.stopping.cancelled() => return Ok(Json(lease)),
                // Cluster mode: the tenant moved; reading again answers `moved`, and the
                // client's retry is forwarded to the new owner.
                () = state.moved_away(&tenant) => break,
            }
        }
    }
}

/// Keeps a lease alive (idle timeout), optionally extending its TTL within `max_ttl_s` and
/// the spend cap. The body may be left out (a plain heartbeat). 409 once the lease has ended.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/leases/{id}/heartbeat", tag = "leases",
    params(("tenant" = String, Path), ("id" = String, Path)), request_body = Heartbeat,
    responses((status = 200, body = Lease), (status = 409, description = "lease_ended", body = Problem),
        (status = 422, body = Problem), (status = 429, description = "spend_cap", body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn heartbeat(
    State(state): State<super::State>,
    principal: Principal,
    PathParams((tenant, id)): PathParams<(String, String)>,
    OptionalBody(body): OptionalBody<Heartbeat>,
) -> Result<Json<Lease>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesWrite)?;
    let extend_ttl_s = body.extend_ttl_s;
    let response = state
        .ask(&tenant, tenant::Heartbeat { id, extend_ttl_s })
        .await?;
    Ok(Json(response))
}

/// Ends a lease (idempotent): a queued one is canceled, a granted one is released and its
/// runner destroyed.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/leases/{id}/release", tag = "leases",
    params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Lease), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn release_lease(
    State(state): State<super::State>,
    principal: Principal,
    PathParams((tenant, id)): PathParams<(String, String)>,
) -> Result<Json<Lease>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesWrite)?;
    let response = state.ask(&tenant, tenant::Release { id }).await?;
    Ok(Json(response))
}

/// Releases the lease, exactly as `POST …/release` does (idempotent): a DELETE here ends the
/// lease, it does not remove it. The lease stays readable (`GET …/leases/{id}` answers it with
/// its final state), listed, and in the ledger and usage.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/leases/{id}", tag = "leases",
    params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Lease), (status = 404, body = Problem)), security(("bearer" = [])))]
pub(super) async fn delete_lease(
    state: State<super::State>,
    principal: Principal,
    path: PathParams<(String, String)>,
) -> Result<Json<Lease>, ApiError> {
    release_lease(state, principal, path).await
}
