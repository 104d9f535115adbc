//! One module per command (or family of commands on one thing): each declares its messages —
//! the request type with its reply type ([`Message`](crate::objects::Message)) — and the
//! function that handles them. `broker.rs` routes each message to its function; lease changes
//! go through the pure transitions (`transition`) and are carried out by `effects`.
//!
//! Reading order follows a lease: [`request`], [`ready`], [`heartbeat`], [`release`],
//! [`exited`] (its runner's process ended on its own), then the reads ([`leases`], [`logs`],
//! [`reports`]) and the configuration ([`tenant`], [`accounts`],
//! [`pools`], [`webhooks`], [`github`]).

pub mod accounts;
pub mod dashboard;
pub mod exited;
pub mod github;
pub mod heartbeat;
pub mod leases;
pub mod logs;
pub mod pools;
pub mod ready;
pub mod release;
pub mod reports;
pub mod request;
pub mod restored;
pub mod tenant;
pub mod webhooks;

/// What a name of `what` may be, for refusals.
fn name_rule(what: &str) -> String {
    format!(
        "a {what} name is 1–63 characters of lowercase letters, digits and `-`, starting with a letter or digit"
    )
}
