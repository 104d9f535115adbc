//! Webhooks at the edge of berth: outbound delivery ([`outbound`]) and inbound signature
//! checks ([`github`]). The state behind them (endpoints, the outbox, retries, which GitHub
//! jobs became which leases) belongs to the tenant object.

pub mod github;
pub mod outbound;

pub use outbound::{Attempt, Sender, send};
