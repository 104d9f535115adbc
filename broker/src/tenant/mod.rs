//! The TenantBroker durable object: one per tenant (`id_from_name(tenant)`), holding the
//! tenant's limits, provider accounts, pools, leases, queue, ledger and events.
//!
//! The object is the lock, the cache and the row: every grant, release and expiry of a tenant
//! runs inside this one single-threaded object, so two grants can never race past a cap.
//!
//! - [`book`]: the open leases, counts, spend and deadlines in memory, and the pure decisions
//!   over them (admission, next deadline, what is due);
//! - [`lease`]: a lease and its row;
//! - [`money`]: micro-unit arithmetic and UTC spend periods;
//! - [`quota`]: the operator's ceilings of the limits and counts, and the rule that keeps the
//!   limits within them;
//! - `object`: the [`Object`](crate::objects::Object) implementation — requests, provider
//!   completions and the alarm, each applied to the book and written in the same event.
//!
//! This module never imports axum: the API turns [`Rejection`]s into HTTP answers.

pub mod book;
pub mod lease;
pub mod money;
mod object;
pub mod quota;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde_json::value::RawValue;

use crate::secrets::Keys;
use crate::wire;

pub use crate::webhooks::Sender as WebhookSender;
pub use book::Timing;
pub use lease::Filter;
pub use object::TenantBroker;

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
}

/// A request to a tenant object.
#[derive(Debug)]
pub enum Request {
    /// Creates the tenant (idempotent: a second call changes nothing).
    Create {
        limits: Option<wire::LimitsPatch>,
        quota: Option<wire::QuotaPatch>,
    },
    /// The tenant and its limits.
    Get,
    /// Changes the quota (the caller checked that the operator asks), then the limits, which
    /// must fit the quota; the operator's own limits (`by_operator`) raise the ceilings it did
    /// not set with them. Lowering a spend cap of the limits below what is spent ends the
    /// newest leases (`spend_cap`); lowering the quota never ends a lease. Raising a cap
    /// grants what waits in the queue.
    Patch {
        limits: wire::LimitsPatch,
        quota: Option<wire::QuotaPatch>,
        by_operator: bool,
    },
    /// Creates or replaces a provider account. Accounts of the host-runner kinds (`process`,
    /// `fake`) are the operator's: `by_operator` says whether the admin token asks.
    PutProvider {
        name: String,
        account: wire::ProviderPut,
        by_operator: bool,
    },
    /// Every provider account (without credentials).
    ListProviders,
    /// A live provider client for an account, for calls made outside the object (price
    /// lookups).
    ProviderHandle { name: String },
    /// Creates or replaces a pool. `provider_price` is the provider's price for the pool's
    /// machine type, looked up by the caller when the pool sets none. The command of a pool on
    /// a `process` account is the operator's: `by_operator` says whether the admin token asks.
    PutPool {
        name: String,
        pool: wire::PoolPut,
        provider_price: Option<i64>,
        by_operator: bool,
    },
    /// Every pool.
    ListPools,
    /// Requests a lease: granted, queued, or refused.
    RequestLease {
        request: wire::LeaseRequest,
        idempotency_key: Option<String>,
    },
    /// One lease.
    GetLease { id: String },
    /// A page of leases.
    ListLeases { filter: Filter },
    /// A heartbeat, optionally extending the TTL.
    Heartbeat {
        id: String,
        extend_ttl_s: Option<i64>,
    },
    /// Ends a lease (client release); idempotent.
    Release { id: String },
    /// The runner reports ready (authenticated by its runner token).
    RunnerReady {
        id: String,
        token: String,
        address: Option<String>,
        metadata: BTreeMap<String, String>,
    },
    /// The runner reports its job done: the lease ends with `runner_done`.
    RunnerDone { id: String, token: String },
    /// Usage of a period.
    Usage { period: money::Period, at: i64 },
    /// A page of the ledger.
    Ledger { after: i64, limit: usize },
    /// Events after `after` (for resuming an event stream), at most `limit`.
    Events { after: i64, limit: usize },
    /// Creates or replaces a webhook endpoint.
    PutWebhook {
        name: String,
        webhook: wire::WebhookPut,
    },
    /// One webhook endpoint.
    GetWebhook { name: String },
    /// Every webhook endpoint.
    ListWebhooks,
    /// Deletes a webhook endpoint and its deliveries.
    DeleteWebhook { name: String },
    /// Queues a `webhook.test` delivery to one endpoint.
    TestWebhook { name: String },
    /// A page of an endpoint's deliveries, newest first.
    ListDeliveries {
        name: String,
        status: Option<wire::DeliveryStatus>,
        before: Option<i64>,
        limit: usize,
    },
    /// Configures the GitHub integration.
    PutGithub { github: wire::GithubPut },
    /// The GitHub integration (without its secret).
    GetGithub,
    /// The GitHub integration's webhook secret, opened, so that the API can verify a
    /// delivery's signature before the delivery reaches the object's write path. Read-only;
    /// `None` when the integration is not configured.
    GithubSecret,
    /// A `workflow_job` delivery whose signature the caller has verified with the secret of
    /// [`Request::GithubSecret`].
    Github(GithubDelivery),
}

/// A verified GitHub `workflow_job` delivery.
#[derive(Debug)]
pub struct GithubDelivery {
    /// `X-GitHub-Delivery`, for people reading the remembered jobs: GitHub does not sign it,
    /// so deliveries are deduplicated by job and action instead.
    pub delivery: String,
    /// The parsed payload.
    pub job: crate::webhooks::github::WorkflowJob,
}

/// A successful answer.
pub enum Response {
    Tenant {
        tenant: wire::Tenant,
        created: bool,
    },
    Provider(wire::ProviderAccount),
    Providers(Vec<wire::ProviderAccount>),
    ProviderHandle(Arc<dyn providers::Provider>),
    Pool(wire::Pool),
    Pools(Vec<wire::Pool>),
    /// A requested lease; `queued` when it waits (202), else granted (201). `replayed` when
    /// an idempotency key returned an earlier request's lease.
    LeaseRequested {
        lease: wire::Lease,
        queued: bool,
        replayed: bool,
    },
    Lease(wire::Lease),
    Leases(wire::Page<wire::Lease>),
    Usage(wire::Usage),
    Ledger(wire::Page<wire::LedgerEntry>),
    Events(Vec<Event>),
    Webhook(wire::Webhook),
    Webhooks(Vec<wire::Webhook>),
    Deleted,
    Delivery(wire::WebhookDelivery),
    Deliveries(wire::Page<wire::WebhookDelivery>),
    Github(wire::Github),
    /// The opened GitHub secret (`Debug` redacts it), `None` when not configured.
    GithubSecret(Option<crate::webhooks::github::Secret>),
    GithubOutcome(wire::GithubOutcome),
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Response::ProviderHandle(provider) => write!(f, "ProviderHandle({})", provider.kind()),
            Response::Tenant { tenant, created } => {
                write!(f, "Tenant({tenant:?}, created: {created})")
            }
            Response::Provider(p) => write!(f, "Provider({p:?})"),
            Response::Providers(p) => write!(f, "Providers({p:?})"),
            Response::Pool(p) => write!(f, "Pool({p:?})"),
            Response::Pools(p) => write!(f, "Pools({p:?})"),
            Response::LeaseRequested {
                lease,
                queued,
                replayed,
            } => {
                write!(
                    f,
                    "LeaseRequested({lease:?}, queued: {queued}, replayed: {replayed})"
                )
            }
            Response::Lease(l) => write!(f, "Lease({l:?})"),
            Response::Leases(l) => write!(f, "Leases({l:?})"),
            Response::Usage(u) => write!(f, "Usage({u:?})"),
            Response::Ledger(l) => write!(f, "Ledger({l:?})"),
            Response::Events(e) => write!(f, "Events({e:?})"),
            Response::Webhook(w) => write!(f, "Webhook({w:?})"),
            Response::Webhooks(w) => write!(f, "Webhooks({w:?})"),
            Response::Deleted => write!(f, "Deleted"),
            Response::Delivery(d) => write!(f, "Delivery({d:?})"),
            Response::Deliveries(d) => write!(f, "Deliveries({d:?})"),
            Response::Github(g) => write!(f, "Github({g:?})"),
            Response::GithubSecret(s) => write!(f, "GithubSecret({s:?})"),
            Response::GithubOutcome(o) => write!(f, "GithubOutcome({o:?})"),
        }
    }
}

/// An expected refusal: the request was understood and changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The tenant does not exist (was never created).
    #[error("tenant not found")]
    NoTenant,
    /// A lease, pool or provider account that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but not acceptable (a TTL past `max_ttl_s`, an unknown
    /// pool, a bad provider config).
    #[error("{0}")]
    Invalid(String),
    /// The lease already ended.
    #[error("{0}")]
    LeaseEnded(String),
    /// The same idempotency key came with another body.
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyMismatch,
    /// The tenant's or pool's active cap is reached.
    #[error("{0}")]
    ConcurrencyCap(String),
    /// The reservation would pass a spend cap.
    #[error("{0}")]
    SpendCap(String),
    /// The queue is full.
    #[error("{0}")]
    QueueFull(String),
    /// A runner token that does not match the lease.
    #[error("invalid runner token")]
    BadRunnerToken,
    /// A limit above the tenant's quota, or one more token, endpoint, pool or account than
    /// the quota allows.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Something only the operator (the admin token) may do: host-runner accounts and their
    /// pools' commands.
    #[error("{0}")]
    OperatorOnly(String),
}

/// A lease or budget event: stored in the tenant's `events` table and broadcast to
/// subscribers once committed.
#[derive(Clone, Debug)]
pub struct Event {
    /// Per-tenant sequence number, 1, 2, 3, …
    pub seq: i64,
    /// `lease.granted`, `budget.threshold`, …
    pub kind: String,
    /// Unix ms.
    pub at: i64,
    /// The lease, or the budget figures, as JSON text: serialized once when the event happens
    /// and written verbatim to the events table, webhook bodies and streams.
    pub data: Box<RawValue>,
}

impl Event {
    /// The event as webhooks and streams send it.
    pub fn message(&self) -> Message<'_> {
        Message {
            kind: &self.kind,
            timestamp: crate::objects::clock::rfc3339(self.at),
            seq: Some(self.seq),
            data: &self.data,
        }
    }

    /// The `id` field of the data (the lease's id, for lease events).
    pub fn lease_id(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Id {
            id: Option<String>,
        }
        serde_json::from_str::<Id>(self.data.get()).ok()?.id
    }
}

/// An event on the wire: serializes exactly as [`crate::wire::EventMessage`] (which clients
/// parse), but borrows its data as JSON text instead of building a tree of values.
#[derive(Debug, serde::Serialize)]
pub struct Message<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub timestamp: String,
    pub seq: Option<i64>,
    pub data: &'a RawValue,
}

/// Longest TTL a tenant may allow (the largest `max_ttl_s` of limits and quotas).
pub const MAX_TTL_LIMIT_S: i64 = 30 * 86_400;
/// Largest spend cap, in micros (10^18: a trillion currency units).
pub const MAX_SPEND_CAP: i64 = 1_000_000_000_000_000_000;

/// Client text echoed in an error, cut short and without control characters.
pub fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(80).collect()
}

/// Whether `name` is a valid tenant, pool or provider account name: 1–63 characters of
/// lowercase letters, digits and `-`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What webhooks and streams send parses as the documented `EventMessage`, field for field.
    #[test]
    fn message_serializes_as_the_wire_event_message() {
        let data = serde_json::json!({"id": "lease_1", "labels": {"a": "b"}, "cost": 3});
        let event = Event {
            seq: 7,
            kind: "lease.granted".into(),
            at: 1_700_000_000_123,
            data: serde_json::value::to_raw_value(&data).unwrap(),
        };
        let text = serde_json::to_string(&event.message()).unwrap();
        let parsed: wire::EventMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            wire::EventMessage {
                kind: "lease.granted".into(),
                timestamp: crate::objects::clock::rfc3339(event.at),
                seq: Some(7),
                data,
            }
        );
        assert_eq!(event.lease_id().as_deref(), Some("lease_1"));
    }
}
