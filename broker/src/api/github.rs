//! `PUT/GET /v1/tenants/{t}/integrations/github` (configuration) and
//! `POST /v1/tenants/{t}/integrations/github` (GitHub's `workflow_job` deliveries).

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;

use super::error::ApiError;
use super::extract::{Body, PathParams, RawBody};
use super::{Principal, expect_response};
use crate::tenant::{GithubDelivery, Request, Response};
use crate::wire::{Github, GithubOutcome, GithubPut, Problem, Scope};

/// GitHub payloads with long step lists pass the API's usual limit.
const GITHUB_BODY_LIMIT: usize = 1024 * 1024;

pub(super) fn router() -> Router<super::State> {
    Router::new().route(
        "/v1/tenants/{tenant}/integrations/github",
        get(get_github)
            .put(put_github)
            .post(deliver)
            .layer(DefaultBodyLimit::max(GITHUB_BODY_LIMIT)),
    )
}

/// Configures the GitHub integration: the webhook secret and the leases jobs get.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/integrations/github", tag = "github", params(("tenant" = String, Path)),
    request_body = GithubPut,
    responses((status = 200, body = Github), (status = 422, body = Problem)), security(("bearer" = [])))]
pub(super) async fn put_github(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
    Body(github): Body<GithubPut>,
) -> Result<Json<Github>, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    let response = state.call(&tenant, Request::PutGithub { github }).await?;
    Ok(Json(
        expect_response!(response, Response::Github(github) => github),
    ))
}

/// The GitHub integration, without its secret.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/integrations/github", tag = "github", params(("tenant" = String, Path)),
    responses((status = 200, body = Github)), security(("bearer" = [])))]
pub(super) async fn get_github(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
) -> Result<Json<Github>, ApiError> {
    principal.require(&state, &tenant, Scope::TenantAdmin)?;
    let response = state.call(&tenant, Request::GetGithub).await?;
    Ok(Json(
        expect_response!(response, Response::Github(github) => github),
    ))
}

/// A GitHub webhook delivery (`workflow_job`), authenticated by `X-Hub-Signature-256`:
/// `queued` requests a lease (201, or 202 queued), `completed` releases it (200); other
/// actions and redeliveries change nothing (202 / 200); other events 204.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/integrations/github", tag = "github",
    params(("tenant" = String, Path), ("X-GitHub-Event" = String, Header), ("X-GitHub-Delivery" = String, Header),
        ("X-Hub-Signature-256" = String, Header)),
    request_body(content = Object, description = "GitHub's workflow_job payload"),
    responses((status = 201, body = GithubOutcome), (status = 202, body = GithubOutcome), (status = 200, body = GithubOutcome),
        (status = 204, description = "not a workflow_job event"), (status = 401, body = Problem), (status = 429, body = Problem)))]
pub(super) async fn deliver(
    State(state): State<super::State>,
    PathParams(tenant): PathParams<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<HttpResponse, ApiError> {
    if !state.tenant_exists(&tenant) {
        return Err(ApiError::not_found("tenant not found"));
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let event =
        header("x-github-event").ok_or_else(|| ApiError::bad_request("missing X-GitHub-Event"))?;
    let delivery = header("x-github-delivery")
        .filter(|d| !d.is_empty() && d.len() <= 100)
        .ok_or_else(|| ApiError::bad_request("missing or invalid X-GitHub-Delivery"))?;
    let signature = header("x-hub-signature-256");
    let request = Request::Github(GithubDelivery {
        event: event.clone(),
        delivery,
        signature,
        body: body.to_vec(),
    });
    let response = state.call(&tenant, request).await?;
    let outcome = expect_response!(response, Response::GithubOutcome(outcome) => outcome);
    let status = match outcome.outcome.as_str() {
        "leased" => StatusCode::CREATED,
        "queued" => StatusCode::ACCEPTED,
        "released" | "duplicate" => StatusCode::OK,
        "refused" => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "refused",
                outcome
                    .detail
                    .unwrap_or_else(|| "the lease request was refused".into()),
            ));
        }
        _ if event != "workflow_job" => return Ok(StatusCode::NO_CONTENT.into_response()),
        _ => StatusCode::ACCEPTED,
    };
    Ok((status, Json(outcome)).into_response())
}
