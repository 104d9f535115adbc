//! Webhooks at the edge of berth: outbound delivery ([`outbound`]) under fair per-tenant
//! shares of the delivery slots ([`slots`]), and inbound signature checks ([`github`]). The state behind them (endpoints, the outbox, retries, which GitHub
//! jobs became which leases) belongs to the tenant object.

pub mod github;
pub mod outbound;
pub mod slots;

pub use outbound::{Attempt, Sender, send};
