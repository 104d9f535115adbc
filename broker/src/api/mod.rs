//! The HTTP API: axum routes, one module per resource, merged in [`router`].
//!
//! Handlers never touch SQLite: they authenticate, validate, and send a request to an object
//! through a stub.

mod health;

use axum::Router;

use crate::objects::Runtime;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct State {
    /// The object runtime of the data directory.
    pub runtime: Runtime,
}

/// Every route of the API.
pub fn router(state: State) -> Router {
    Router::new().merge(health::router()).with_state(state)
}
