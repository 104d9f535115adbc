//! Runner callbacks: `POST /v1/runners/{lease_id}/ready` and `…/release`, and
//! `GET …/github-jitconfig`, authenticated by the lease's runner token (`BERTH_RUNNER_TOKEN`).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};

use super::error::ApiError;
use super::extract::{OptionalBody, PathParams};
use crate::secrets;
use crate::tenant;
use crate::wire::{GithubJitConfig, Lease, Problem, RunnerReady};

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route("/v1/runners/{lease_id}/ready", post(ready))
        .route("/v1/runners/{lease_id}/release", post(release))
        .route(
            "/v1/runners/{lease_id}/github-jitconfig",
            get(github_jitconfig),
        )
}

/// The runner token of the request and the tenant it names.
fn runner_token(state: &super::State, headers: &HeaderMap) -> Result<(String, String), ApiError> {
    let unauthorized = || {
        ApiError::unauthorized(
            "send the lease's runner token as `Authorization: Bearer <BERTH_RUNNER_TOKEN>`",
        )
    };
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(unauthorized)?;
    let tenant = secrets::runner_token_tenant(token).ok_or_else(unauthorized)?;
    if !state.tenant_exists(tenant) {
        return Err(unauthorized());
    }
    Ok((tenant.to_owned(), token.to_owned()))
}

/// The runner is ready for work (optionally with its address and facts to show).
#[utoipa::path(post, path = "/v1/runners/{lease_id}/ready", tag = "runners", params(("lease_id" = String, Path)),
    request_body(content = RunnerReady, description = "optional"),
    responses((status = 200, body = Lease), (status = 401, body = Problem), (status = 409, description = "lease_ended", body = Problem)),
    security(("runner_token" = [])))]
pub(super) async fn ready(
    State(state): State<super::State>,
    PathParams(id): PathParams<String>,
    headers: HeaderMap,
    OptionalBody(body): OptionalBody<RunnerReady>,
) -> Result<Json<Lease>, ApiError> {
    let (tenant, token) = runner_token(&state, &headers)?;
    if body.address.as_ref().is_some_and(|a| a.len() > 255)
        || body.metadata.len() > 32
        || body
            .metadata
            .iter()
            .any(|(k, v)| k.len() > 63 || v.len() > 255)
    {
        return Err(ApiError::invalid(
            "`address` is at most 255 bytes; `metadata` at most 32 entries of 63-byte keys and 255-byte values",
        ));
    }
    let response = state
        .ask(
            &tenant,
            tenant::RunnerReady {
                id,
                token,
                address: body.address,
                metadata: body.metadata,
            },
        )
        .await?;
    Ok(Json(response))
}

/// The runner's job is done: the lease ends (`end_reason: runner_done`) and the runner is
/// destroyed. Idempotent.
#[utoipa::path(post, path = "/v1/runners/{lease_id}/release", tag = "runners", params(("lease_id" = String, Path)),
    responses((status = 200, body = Lease), (status = 401, body = Problem)), security(("runner_token" = [])))]
pub(super) async fn release(
    State(state): State<super::State>,
    PathParams(id): PathParams<String>,
    headers: HeaderMap,
) -> Result<Json<Lease>, ApiError> {
    let (tenant, token) = runner_token(&state, &headers)?;
    let response = state.ask(&tenant, tenant::RunnerDone { id, token }).await?;
    Ok(Json(response))
}

/// The lease's GitHub just-in-time runner config, for a runner that started before its
/// registration (a ready pool's warm runner): `./run.sh --jitconfig "$encoded_jit_config"`.
/// 404 `no_jitconfig` until the lease has one (ask again); only the lease's own runner token
/// opens it.
#[utoipa::path(get, path = "/v1/runners/{lease_id}/github-jitconfig", tag = "runners", params(("lease_id" = String, Path)),
    responses((status = 200, body = GithubJitConfig), (status = 401, body = Problem),
        (status = 404, description = "no_jitconfig: not registered (yet); not_found: no such lease", body = Problem),
        (status = 409, description = "lease_ended", body = Problem)),
    security(("runner_token" = [])))]
pub(super) async fn github_jitconfig(
    State(state): State<super::State>,
    PathParams(id): PathParams<String>,
    headers: HeaderMap,
) -> Result<Json<GithubJitConfig>, ApiError> {
    let (tenant, token) = runner_token(&state, &headers)?;
    let response = state
        .ask(&tenant, tenant::RunnerJitConfig { id, token })
        .await?;
    Ok(Json(response))
}
