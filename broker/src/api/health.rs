//! `GET /healthz` (the process answers) and `GET /readyz` (it is not shutting down and, in
//! cluster mode, is a member of its cluster).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use super::error::ApiError;

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Liveness: answers as long as the process serves HTTP, with berth's version (what
/// `berth version` shows for the server). Touches no object.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive: `{\"status\": \"ok\", \"version\": \"…\"}`")))]
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// Readiness: 503 from the moment a shutdown begins, through the drain delay while every
/// other route is still served, so load balancers stop sending work here first.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"),
        (status = 503, description = "unavailable: berth is shutting down, or (cluster mode) this node is not a member of its cluster", body = crate::wire::Problem)))]
pub(super) async fn readyz(State(state): State<super::State>) -> Result<Json<Value>, ApiError> {
    if state.draining.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "berth is shutting down; send new work to another instance",
        )
        .retry_after(1));
    }
    if let Some(forwarder) = &state.forwarder
        && !forwarder.cluster().membership().is_valid()
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_membership",
            "this node is not a member of its cluster right now (PostgreSQL unreachable, or it was paused); it rejoins on its own",
        )
        .retry_after(2));
    }
    Ok(Json(json!({ "status": "ready" })))
}
