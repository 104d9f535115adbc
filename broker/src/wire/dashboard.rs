//! The JSON shapes of the read-only routes the web dashboard (`/ui`) uses and the API offers
//! to anyone: who a token is, a tenant's status at a glance, spend per day and queue length
//! over time. Money is integer micros, times RFC 3339 UTC, as everywhere in [`super`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Scope;

/// `GET /v1/whoami`: whom the token belongs to. Never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    /// `true` for the operator's admin token.
    pub admin: bool,
    /// The tenant of a tenant token; `null` for the admin token.
    pub tenant: Option<String>,
    /// The token's scopes (`["admin"]` for the admin token).
    pub scopes: Vec<Scope>,
}

/// Spend of one period against its cap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SpendStatus {
    /// `day` or `month` (UTC).
    pub period: String,
    /// Charged in the period so far.
    pub charged_micros: i64,
    /// Open reservations of running leases (they count against every period's cap).
    pub reserved_micros: i64,
    /// The period's cap, if any.
    pub cap_micros: Option<i64>,
}

/// `GET /v1/tenants/{t}/status`: a tenant at a glance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantStatus {
    pub tenant: String,
    /// Leases counting against the cap (provisioning, ready, releasing).
    pub active: i64,
    pub provisioning: i64,
    pub ready: i64,
    pub releasing: i64,
    /// Leases waiting in the queue.
    pub queued: i64,
    /// Ready pools' warm runners ready to be taken (not counted as active).
    #[serde(default)]
    pub warm_ready: i64,
    /// Ready pools' warm runners being made.
    #[serde(default)]
    pub warm_provisioning: i64,
    pub max_active_leases: i64,
    pub max_queued: i64,
    pub day: SpendStatus,
    pub month: SpendStatus,
    /// Dead-lettered webhook deliveries still kept (7 days); `null` unless the token may see
    /// webhooks (`tenant:admin`).
    pub dead_deliveries: Option<i64>,
    /// The caps the tenant is at right now: `concurrency`, `queue`, `daily_spend`,
    /// `monthly_spend`.
    pub at_cap: Vec<String>,
}

/// `GET /v1/overview`: one page of tenants with their status (operator only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    pub items: Vec<TenantStatus>,
    /// Tenants of this page whose status could not be read just now (their object is
    /// overloaded, or in cluster mode another node owns them and did not answer); retry.
    pub unavailable: Vec<String>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// What one pool was charged on one day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolSpend {
    pub pool: String,
    pub charged_micros: i64,
}

/// What was charged on one UTC day, by pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DaySpend {
    /// `YYYY-MM-DD`.
    pub date: String,
    pub charged_micros: i64,
    /// Pools charged that day, by name.
    pub by_pool: Vec<PoolSpend>,
}

/// `GET /v1/tenants/{t}/stats/spend`: charges per UTC day, oldest first, today last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SpendHistory {
    pub days: Vec<DaySpend>,
    /// Every pool charged in the range, by name.
    pub pools: Vec<String>,
}

/// Queue length at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueuePoint {
    pub at: String,
    pub queued: i64,
}

/// `GET /v1/tenants/{t}/stats/queue`: the queue's length once a minute, oldest first, now last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueHistory {
    pub points: Vec<QueuePoint>,
}
