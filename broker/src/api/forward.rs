//! Cluster mode: any node accepts any request, and one that does not own the tenant forwards
//! it to the node that does (DESIGN.md §10).
//!
//! A middleware in front of every route finds the request's tenant — the `{tenant}` of
//! `/v1/tenants/{tenant}/…`, or the tenant a runner token names on `/v1/runners/…` — and asks
//! where its object lives: here when it is live here, or when no live node owns it (this node
//! claims it on activation); otherwise the owner's advertised URL, to which the request is
//! proxied as it came (method, path, headers, body streamed), and the answer streamed back —
//! long polls and event streams included. A forwarded request carries `berth-forwarded` with
//! its hop count; past [`MAX_HOPS`] (two nodes disagreeing about an owner that is moving) the
//! node answers 503 `moved` with `Retry-After` instead of forwarding again. Nothing is done
//! twice: a request is either served here or forwarded, never both.
//!
//! Requests without a tenant (the tenant list, tenant creation, health, metrics, the OpenAPI
//! document) are served by whichever node gets them: they read the shared directory or
//! activate a new object.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt as _;

use super::error::ApiError;
use crate::objects::cluster::{Cluster, Placement};
use crate::secrets;

/// The header that counts how often a request was forwarded.
pub const FORWARDED: &str = "berth-forwarded";
/// Most forwards of one request.
pub const MAX_HOPS: u8 = 2;

/// Forwards requests to the nodes that own their tenants.
pub struct Forwarder {
    cluster: Arc<Cluster>,
    client: reqwest::Client,
}

impl Forwarder {
    /// A forwarder for this node of `cluster`.
    ///
    /// # Errors
    ///
    /// The HTTP client cannot be built (no TLS roots).
    pub fn new(cluster: Arc<Cluster>) -> Result<Forwarder, reqwest::Error> {
        let client = reqwest::Client::builder()
            // Nodes talk to each other directly: never through a proxy from the environment.
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Forwarder { cluster, client })
    }

    /// The cluster this node belongs to.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }
}

/// The middleware: serves the request here or forwards it to its tenant's owner.
pub(super) async fn forward(
    State(state): State<super::State>,
    request: Request,
    next: Next,
) -> Response {
    let Some(forwarder) = state.forwarder.clone() else {
        return next.run(request).await;
    };
    let Some(tenant) = tenant_of(&request) else {
        return next.run(request).await;
    };
    if !state.tenant_exists(&tenant) {
        // Perhaps created on another node a moment ago, before its notification came.
        let _ = state
            .runtime
            .directory()
            .refresh_key(super::TENANT_KIND, &tenant)
            .await;
        if !state.tenant_exists(&tenant) {
            // The handler answers as it would on one node (404, or 401 for a runner).
            return next.run(request).await;
        }
    }
    let id = state.tenants.id_from_name(&tenant);
    if state.tenants.is_live(id) {
        return next.run(request).await;
    }
    match forwarder.cluster.locate("tenant", id).await {
        Ok(Placement::Local) => next.run(request).await,
        Ok(Placement::Remote { url }) => {
            let hops = hops(request.headers());
            if hops >= MAX_HOPS {
                return moved();
            }
            proxy(&forwarder.client, &url, request, hops + 1).await
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot tell which node owns a tenant");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                "the cluster's database does not answer; retry shortly (nothing was done)",
            )
            .retry_after(2)
            .into_response()
        }
    }
}

fn moved() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "moved",
        "this tenant is moving between berth nodes; retry shortly (nothing was done)",
    )
    .retry_after(1)
    .into_response()
}

/// The tenant a request is about, if any.
fn tenant_of(request: &Request) -> Option<String> {
    let path = request.uri().path();
    if let Some(rest) = path.strip_prefix("/v1/tenants/") {
        let tenant = rest.split('/').next().unwrap_or_default();
        return (!tenant.is_empty()).then(|| tenant.to_owned());
    }
    if path.starts_with("/v1/runners/") {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .trim();
        return secrets::runner_token_tenant(token).map(str::to_owned);
    }
    None
}

fn hops(headers: &HeaderMap) -> u8 {
    headers
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Headers that belong to one connection, not to the request or answer (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HOST,
        header::CONTENT_LENGTH,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Sends `request` to the node at `base` and streams its answer back.
async fn proxy(client: &reqwest::Client, base: &str, request: Request, hops: u8) -> Response {
    let (parts, body) = request.into_parts();
    let target = format!(
        "{}{}",
        base.trim_end_matches('/'),
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) && name.as_str() != FORWARDED {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        HeaderName::from_static(FORWARDED),
        HeaderValue::from(u16::from(hops)),
    );
    let sent = client
        .request(parts.method, &target)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(err) => {
            // The owner does not answer: it may be dying. Once its membership lapses another
            // node (this one, perhaps) takes the tenant over; until then, retry.
            tracing::warn!(error = %err, owner = %base, "forwarding to a tenant's owner failed");
            return moved();
        }
    };
    let mut response = Response::builder().status(answer.status());
    if let Some(headers) = response.headers_mut() {
        for (name, value) in answer.headers() {
            if !hop_by_hop(name) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    let stream = answer.bytes_stream().map_err(std::io::Error::other);
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| moved())
}
