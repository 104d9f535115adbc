//! berth's server library.
//!
//! Reading order:
//!
//! - [`objects`]: the durable-object runtime (generic; knows nothing of leases or HTTP);
//! - [`api`]: the HTTP routes;
//! - [`config`] and [`server`]: the settings of `berth serve` and the function that runs it.

pub mod objects;

pub mod api;
pub mod config;
pub mod server;

pub use config::Config;
