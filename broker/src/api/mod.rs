//! The HTTP API (DESIGN.md §6): axum routes, one module per resource, merged in [`router`].
//!
//! Handlers never touch SQLite: they authenticate ([`auth`]), validate, and send a request
//! to the tenant's object through a stub. Every error is `application/problem+json` with a
//! stable `code` ([`error`]).

pub mod access;
pub mod admin;
pub mod admission;
pub mod auth;
mod dashboard;
pub mod error;
mod events;
pub mod extract;
pub mod forward;
mod github;
mod health;
mod leases;
mod logs;
mod metrics;
pub mod name_lock;
pub mod openapi;
mod reports;
mod resources;
mod runners;
mod tenants;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::objects::{Handler, Message};
use crate::objects::{Namespace, Runtime, Stub};
use crate::tenant::{self, Rejection, TenantBroker};

pub use auth::{Auth, Principal};
pub use error::ApiError;
pub use metrics::HttpMetrics;

/// Directory kind of tenant records (key: the tenant name).
pub const TENANT_KIND: &str = "tenant";

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct State {
    /// The object runtime of the data directory.
    pub runtime: Runtime,
    /// The tenant objects.
    pub tenants: Namespace<TenantBroker>,
    /// The admin token's hash.
    pub auth: Arc<Auth>,
    /// Counters of the HTTP layer.
    pub http_metrics: Arc<HttpMetrics>,
    /// Counters of the tenant objects.
    pub tenant_metrics: Arc<tenant::Metrics>,
    /// Cancelled when a shutdown begins: `/readyz` answers 503 from then on, while every
    /// other route is still served for the drain delay.
    pub draining: CancellationToken,
    /// Cancelled when the drain delay is over and the listener stops accepting: long polls
    /// and event streams answer at once.
    pub stopping: CancellationToken,
    /// Per tenant name: two creates of one name cannot both get 201, and two token creates
    /// cannot both take the last token the quota allows.
    pub creating: Arc<name_lock::NameLocks>,
    /// Cluster mode: forwards requests to the nodes that own their tenants.
    pub forwarder: Option<Arc<forward::Forwarder>>,
    /// Where backups go (`--backup-dir`) and what they need.
    pub backups: Arc<admin::Backups>,
    /// How many requests may be inside the tenant objects at once ([`admission`]).
    pub admission: Arc<admission::Admission>,
}

impl State {
    /// Whether the tenant exists (was created).
    pub fn tenant_exists(&self, name: &str) -> bool {
        self.runtime.directory().key(TENANT_KIND, name).is_some()
    }

    /// The stub of a tenant's object.
    pub fn tenant(&self, name: &str) -> Stub<TenantBroker> {
        self.tenants.get_by_name(name)
    }

    /// Resolves when this node no longer serves `tenant` (cluster mode: another node owns it
    /// now, or this node's membership lapsed); never on one node. Long polls and event
    /// streams wait on it, so a client of a node that lost the tenant (it was paused, or cut
    /// off) reconnects and is forwarded to the new owner instead of waiting on a broadcast
    /// that no longer comes.
    pub async fn moved_away(&self, tenant: &str) {
        let Some(forwarder) = &self.forwarder else {
            return std::future::pending().await;
        };
        let id = self.tenants.id_from_name(tenant);
        loop {
            tokio::time::sleep(MOVED_CHECK).await;
            let cluster = forwarder.cluster();
            if !cluster.membership().is_valid() {
                return;
            }
            if let Ok(crate::objects::cluster::Placement::Remote { .. }) =
                cluster.locate("tenant", id).await
            {
                return;
            }
        }
    }

    /// Sends `message` to a tenant's object and returns its answer; rejections and runtime
    /// failures become errors. Waits its turn at the admission gate ([`admission`]) first.
    pub async fn ask<M, T>(&self, tenant: &str, message: M) -> Result<T, ApiError>
    where
        M: Message<Reply = Result<T, Rejection>>,
        TenantBroker: Handler<M>,
    {
        Ok(self
            .admission
            .admit(tenant, self.tenant(tenant).ask(message))
            .await??)
    }
}

/// Every route of the API, with the body limit, panic catching, request ids, the access log
/// and request metrics.
pub fn router(state: State) -> Router {
    let metrics = state.http_metrics.clone();
    let routes = Router::new()
        .merge(health::router())
        .merge(tenants::router())
        .merge(resources::router())
        .merge(leases::router())
        .merge(logs::router())
        .merge(reports::router())
        .merge(webhooks::router())
        .merge(runners::router())
        .merge(github::router())
        .merge(events::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .merge(dashboard::router())
        .merge(crate::ui::router::<State>())
        .merge(admin::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
    // Cluster mode only: one node's requests pay nothing for it.
    let routes = match state.forwarder {
        Some(_) => routes.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::forward,
        )),
        None => routes,
    };
    // The request id layer is outermost, so the panic handler's 500 carries the id and is
    // counted and logged like any answer.
    routes
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            use axum::response::IntoResponse;
            ApiError::internal("a handler panicked").into_response()
        }))
        .layer(axum::middleware::from_fn(move |req, next| {
            access::layer(metrics.clone(), req, next)
        }))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take this method; see /openapi.json",
    )
}

/// How often a long poll or event stream checks, in cluster mode, that its tenant is still
/// served here.
const MOVED_CHECK: Duration = Duration::from_secs(2);

/// How long a long poll waits at most.
pub const MAX_LONG_POLL: Duration = Duration::from_secs(300);
