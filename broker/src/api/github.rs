//! `PUT/GET /v1/tenants/{t}/integrations/github` (configuration) and
//! `POST /v1/tenants/{t}/integrations/github` (GitHub's `workflow_job` deliveries).

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;

use super::Principal;
use super::error::ApiError;
use super::extract::{Body, PathParams, RawBody};
use crate::tenant::{self, GithubDelivery, Rejection};
use crate::webhooks::github::WorkflowJob;
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
    Ok(Json(
        state.ask(&tenant, tenant::PutGithub { github }).await?,
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
    Ok(Json(state.ask(&tenant, tenant::GetGithub).await?))
}

/// The one answer to a delivery berth cannot authenticate, whatever the reason: no such
/// tenant, no GitHub integration, a missing or wrong signature. An unauthenticated caller
/// learns nothing about which tenants exist or how they are set up.
const UNAUTHENTICATED: &str = "X-Hub-Signature-256 is missing or does not verify: check the \
    tenant in the webhook URL and that the webhook's secret is the tenant's GitHub secret";

/// A GitHub webhook delivery (`workflow_job`), authenticated by `X-Hub-Signature-256`:
/// `queued` requests a lease (201, or 202 queued), `completed` releases it (200); other
/// actions change nothing (202); a job and action handled before is a duplicate (200); other
/// events 204. An unknown tenant, an unconfigured integration and a bad or missing signature
/// all answer the same 401.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/integrations/github", tag = "github",
    params(("tenant" = String, Path), ("X-GitHub-Event" = String, Header), ("X-GitHub-Delivery" = String, Header),
        ("X-Hub-Signature-256" = String, Header)),
    request_body(content = Object, description = "GitHub's workflow_job payload"),
    responses((status = 201, body = GithubOutcome), (status = 202, body = GithubOutcome), (status = 200, body = GithubOutcome),
        (status = 204, description = "not a workflow_job event"),
        (status = 400, body = Problem, description = "a missing X-GitHub-Event or X-GitHub-Delivery"),
        (status = 401, body = Problem, description = "no such tenant, no GitHub integration, or a missing or wrong signature (one answer for all)"),
        (status = 413, body = Problem, description = "a body over 1 MiB"),
        (status = 422, body = Problem, description = "not a workflow_job payload"),
        (status = 429, body = Problem)))]
pub(super) async fn deliver(
    State(state): State<super::State>,
    PathParams(tenant): PathParams<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<HttpResponse, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let unauthenticated = || ApiError::unauthorized(UNAUTHENTICATED);
    // The directory answers for a tenant that does not exist: no object is woken or made.
    if !state.tenant_exists(&tenant) {
        return Err(unauthenticated());
    }
    // Verified here, with the secret a read-only request hands over, so that an unsigned
    // delivery never reaches the object's write path.
    let secret = match state.tenant(&tenant).ask(tenant::GithubSecret).await? {
        Ok(Some(secret)) => secret,
        Ok(None) | Err(Rejection::NoTenant) => return Err(unauthenticated()),
        Err(rejection) => return Err(rejection.into()),
    };
    if !secret.verifies(&body, header("x-hub-signature-256").as_deref()) {
        return Err(unauthenticated());
    }
    drop(secret);
    let event =
        header("x-github-event").ok_or_else(|| ApiError::bad_request("missing X-GitHub-Event"))?;
    let delivery = header("x-github-delivery")
        .filter(|d| !d.is_empty() && d.len() <= 100)
        .ok_or_else(|| ApiError::bad_request("missing or invalid X-GitHub-Delivery"))?;
    if event != "workflow_job" {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let job = WorkflowJob::parse(&body).map_err(ApiError::invalid)?;
    let outcome = state.ask(&tenant, GithubDelivery { delivery, job }).await?;
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
            )
            .retry_after(5));
        }
        _ => StatusCode::ACCEPTED,
    };
    Ok((status, Json(outcome)).into_response())
}
