//! berth's server library.
//!
//! Reading order:
//!
//! - [`objects`]: the durable-object runtime (generic; knows nothing of leases or HTTP);
//! - [`tenant`]: the TenantBroker object (leases, queue, caps, ledger), built on `objects`;
//! - [`wire`]: the JSON shapes of the API, shared with the CLI;
//! - [`secrets`]: master key, sealed credentials, token hashes, runner tokens;
//! - [`metrics`]: the Prometheus families the tenant objects feed;
//! - [`api`]: the HTTP routes;
//! - [`ui`]: the web dashboard at `/ui`, static assets over the API;
//! - [`config`] and [`server`]: the settings of `berth serve` and the function that runs it.

pub mod objects;

pub mod failpoint;
pub mod metrics;
pub mod secrets;
pub mod tenant;
pub mod webhooks;
pub mod wire;

pub mod api;
pub mod config;
pub mod server;
pub mod ui;

pub use config::Config;
