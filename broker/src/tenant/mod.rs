//! The TenantBroker durable object: one per tenant (`id_from_name(tenant)`), holding the
//! tenant's limits and quota, provider accounts, pools, leases, queue, ledger, events and
//! webhooks.
//!
//! The object is the lock, the cache and the row: every grant, release and expiry of a tenant
//! runs inside this one single-threaded object, so two grants can never race past a cap.
//!
//! # Reading order
//!
//! 1. [`broker`]: the object — its state, how it opens, and how each event (a typed message,
//!    a provider's answer, the alarm) reaches the module that handles it; [`load`]: what it
//!    reads from its tables when it wakes.
//! 2. `commands`: one module per command, each declaring its messages and handling them
//!    (`commands::request` is the one a lease starts with).
//! 3. [`transition`]: the lease state machine, pure — a transition takes a lease and returns
//!    it changed with a list of [`transition::Effect`]s; `effects` carries them out.
//! 4. [`book`]: open leases, counts, spend and deadlines in memory, and the pure decisions
//!    over them (admission, next deadline, what is due).
//! 5. The rows, each declared once ([`row`]): [`lease`], [`pool`], [`accounts`], [`ledger`],
//!    [`event`], `outbox::Delivery`.
//! 6. Around the leases: `provisioning` (provider calls), `reconcile`, `upkeep` (when
//!    reconciliation and pruning are due), `outbox` (webhook delivery), `budget`,
//!    [`quota`], [`money`], `retry`, `reseal`, [`jit`] (GitHub just-in-time runners:
//!    registration before the create, removal when the lease ends), and [`warm`] (ready pools:
//!    warm runners made ahead of demand and taken by requests).
//!
//! This module never imports axum: the API turns [`Rejection`]s into HTTP answers.

pub mod accounts;
pub mod book;
mod broker;
mod budget;
pub mod commands;
mod effects;
pub mod event;
pub mod jit;
pub mod lease;
pub mod ledger;
mod load;
pub mod money;
mod outbox;
pub mod pool;
mod provisioning;
pub mod quota;
mod reconcile;
mod rejection;
mod reseal;
mod retry;
pub mod row;
pub mod transition;
mod upkeep;
pub mod warm;
mod watch;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::secrets::Keys;

pub use crate::webhooks::Sender as WebhookSender;
pub use book::{ReconcileMode, Timing};
pub use broker::{Completion, TenantBroker};
pub use commands::accounts::{ListProviders, ProviderHandle, PutProvider};
pub use commands::dashboard::{QueueHistory, SpendHistory, Status};
pub use commands::exited::RunnerExited;
pub use commands::github::{GetGithub, GithubDelivery, GithubSecret, PutGithub};
pub use commands::heartbeat::Heartbeat;
pub use commands::leases::{GetLease, ListLeases};
pub use commands::logs::{LeaseRunner, RunnerHandle};
pub use commands::pools::{ListPools, PutPool};
pub use commands::ready::RunnerReady;
pub use commands::release::{Release, RunnerDone};
pub use commands::reports::{Events, LatestEvent, Ledger, Usage};
pub use commands::request::{RequestLease, Requested};
pub use commands::restored::{OwnedRunner, Restored, RestoredReply, owned_runners};
pub use commands::tenant::{Create, Get, Patch};
pub use commands::webhooks::{
    DeleteWebhook, GetWebhook, ListDeliveries, ListWebhooks, PutWebhook, TestWebhook,
};
pub use event::{Event, EventBody};
pub use jit::RunnerJitConfig;
pub use lease::Filter;
pub use rejection::Rejection;

/// What a tenant command's code gets for one event.
pub(crate) type Ctx<'a> = crate::objects::Ctx<'a, TenantBroker>;

/// What every tenant object shares.
pub struct Env {
    /// Keys for sealing credentials and deriving runner tokens.
    pub keys: Keys,
    /// What providers need from the process (data directory, private-network policy).
    pub providers: providers::Environment,
    /// The URL runners call back (`BERTH_CALLBACK_URL` = `<public_url>/v1/runners/<lease>`).
    pub public_url: String,
    /// Provider timeouts and retries.
    pub timing: Timing,
    /// Delivers outbound webhooks.
    pub webhooks: Arc<crate::webhooks::Sender>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// Counters the tenant objects keep, for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub grants: AtomicU64,
    pub queued: AtomicU64,
    pub rejected_concurrency: AtomicU64,
    pub rejected_spend: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub ended_released: AtomicU64,
    pub ended_expired: AtomicU64,
    pub ended_failed: AtomicU64,
    pub ended_canceled: AtomicU64,
    pub provider_errors: AtomicU64,
    pub reconcile_destroyed: AtomicU64,
    pub orphans_reported: AtomicU64,
    pub reconcile_listings: AtomicU64,
    pub reconcile_list_failures: AtomicU64,
    pub reconcile_failing: AtomicU64,
    pub destroy_stuck: AtomicU64,
    pub runners_lost: AtomicU64,
    pub capacity_fallbacks: AtomicU64,
    /// Lease requests that took a warm runner.
    pub warm_hits: AtomicU64,
    /// Lease requests of a ready pool that found no warm runner ready.
    pub warm_misses: AtomicU64,
    /// Warm runners started by ready pools.
    pub warm_refills: AtomicU64,
    /// Histograms and gauges with labels (`crate::metrics`).
    pub families: Arc<crate::metrics::Families>,
}

pub use crate::wire::bounds::{MAX_SPEND_CAP, MAX_TTL_LIMIT_S, valid_name};

/// Client text echoed in an error, cut short and without control characters.
pub fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(80).collect()
}
