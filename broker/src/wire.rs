//! The JSON shapes of the HTTP API (DESIGN.md §6), shared by the server and the CLI, so the
//! CLI never re-declares them.
//!
//! Request bodies reject unknown fields. Money is integer micro-units of the tenant's
//! currency; times are RFC 3339 UTC strings; durations are whole seconds (`*_s`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The states of a lease (DESIGN.md §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Waiting for a slot or budget (`wait_s > 0`).
    #[default]
    Queued,
    /// Granted; the runner is being created or is booting.
    Provisioning,
    /// The runner said it is ready (or the provider knows it is).
    Ready,
    /// Ended; the runner is being destroyed. Still counts against the cap.
    Releasing,
    /// Ended by its client or its runner; the runner is gone.
    Released,
    /// Ended by TTL, idle timeout or the spend cap; the runner is gone.
    Expired,
    /// The provider could not create a working runner; any runner it made is gone.
    Failed,
    /// Left the queue without a grant.
    Canceled,
}

impl LeaseState {
    /// Every state, in lifecycle order.
    pub const ALL: [LeaseState; 8] = [
        LeaseState::Queued,
        LeaseState::Provisioning,
        LeaseState::Ready,
        LeaseState::Releasing,
        LeaseState::Released,
        LeaseState::Expired,
        LeaseState::Failed,
        LeaseState::Canceled,
    ];

    /// The state's name as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Queued => "queued",
            LeaseState::Provisioning => "provisioning",
            LeaseState::Ready => "ready",
            LeaseState::Releasing => "releasing",
            LeaseState::Released => "released",
            LeaseState::Expired => "expired",
            LeaseState::Failed => "failed",
            LeaseState::Canceled => "canceled",
        }
    }

    /// Parses a state name.
    pub fn parse(name: &str) -> Option<LeaseState> {
        LeaseState::ALL
            .into_iter()
            .find(|state| state.as_str() == name)
    }

    /// Counts against the tenant's and the pool's active cap: provisioning, ready, releasing.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            LeaseState::Provisioning | LeaseState::Ready | LeaseState::Releasing
        )
    }

    /// Will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            LeaseState::Released | LeaseState::Expired | LeaseState::Failed | LeaseState::Canceled
        )
    }
}

/// Why a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Its client released it.
    Released,
    /// Its TTL ran out.
    Ttl,
    /// No heartbeat within its idle timeout.
    Idle,
    /// The tenant's spend cap ran out.
    SpendCap,
    /// The provider could not create a working runner.
    ProviderError,
    /// Its runner said the job ended.
    RunnerDone,
    /// Its runner's process exited on its own (`last_error` says how: its exit code or
    /// signal, and the last line of its stderr).
    RunnerExited,
    /// Its client canceled it while it was queued.
    Canceled,
    /// Its wait ended before a slot and budget were free.
    QueueTimeout,
}

impl EndReason {
    /// The reason's name as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Released => "released",
            EndReason::Ttl => "ttl",
            EndReason::Idle => "idle",
            EndReason::SpendCap => "spend_cap",
            EndReason::ProviderError => "provider_error",
            EndReason::RunnerDone => "runner_done",
            EndReason::RunnerExited => "runner_exited",
            EndReason::Canceled => "canceled",
            EndReason::QueueTimeout => "queue_timeout",
        }
    }

    /// Parses a reason name.
    pub fn parse(name: &str) -> Option<EndReason> {
        [
            EndReason::Released,
            EndReason::Ttl,
            EndReason::Idle,
            EndReason::SpendCap,
            EndReason::ProviderError,
            EndReason::RunnerDone,
            EndReason::RunnerExited,
            EndReason::Canceled,
            EndReason::QueueTimeout,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == name)
    }
}

/// The runner of a lease, once the provider made one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Runner {
    /// The provider account that made it.
    pub provider: String,
    /// The provider's id for it.
    pub id: Option<String>,
    /// How to reach it (IP address, host name or work directory), if known.
    pub address: Option<String>,
    /// Provider-specific facts (status, location, pid, …).
    pub metadata: BTreeMap<String, String>,
}

/// What a lease costs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cost {
    /// The pool's price when the lease was requested.
    pub hourly_price_micros: i64,
    /// Reserved against the spend caps while the lease runs (price × TTL).
    pub reserved_micros: i64,
    /// Charged once the runner is gone (price × runner lifetime, rounded up to the second).
    pub charged_micros: i64,
}

/// A lease, as every lease route returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    /// `lease_…`; sorts by creation time.
    pub id: String,
    pub tenant: String,
    pub pool: String,
    pub state: LeaseState,
    pub created_at: String,
    pub granted_at: Option<String>,
    pub ready_at: Option<String>,
    /// When the lease ended (released, expired, failed or canceled was decided).
    pub ended_at: Option<String>,
    /// `granted_at + ttl_s`; idle expiry is `last_heartbeat_at + idle_timeout_s`.
    pub expires_at: Option<String>,
    pub ttl_s: i64,
    pub idle_timeout_s: Option<i64>,
    pub last_heartbeat_at: Option<String>,
    /// While queued: the deadline of the wait.
    pub wait_until: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// While queued: 1 for the head of the queue.
    pub queue_position: Option<i64>,
    pub end_reason: Option<EndReason>,
    pub runner: Option<Runner>,
    /// When the provider confirmed the runner gone.
    pub runner_destroyed_at: Option<String>,
    pub cost: Cost,
    /// Provider calls made for this lease's runner (creates and destroys), failed ones
    /// included.
    pub provider_attempts: i64,
    /// The last provider error, if any.
    pub last_error: Option<String>,
}

/// `POST /v1/tenants/{t}/leases`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// The pool to take a runner from.
    pub pool: String,
    /// Lease length in seconds; default the tenant's `default_ttl_s`, at most `max_ttl_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<i64>,
    /// End the lease when no heartbeat came for this long; default the tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<i64>,
    /// At a full cap, wait this long in the queue (0, the default, answers 429 at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<i64>,
    /// Free-form labels (for example repository and job id), filterable in the list.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/tenants/{t}/leases/{id}/heartbeat`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Add this many seconds to the lease's TTL (within `max_ttl_s` and the spend cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extend_ttl_s: Option<i64>,
}

/// A tenant's limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Leases in provisioning, ready or releasing at once. Default 10.
    pub max_active_leases: i64,
    /// Requests waiting in the queue at once. Default 100.
    pub max_queued: i64,
    /// Spend cap per UTC day (charged + open reservations), if any.
    pub spend_cap_daily_micros: Option<i64>,
    /// Spend cap per UTC month, if any.
    pub spend_cap_monthly_micros: Option<i64>,
    /// TTL of a lease that asks for none. Default 1800.
    pub default_ttl_s: i64,
    /// Longest TTL, extensions included. Default 86400.
    pub max_ttl_s: i64,
    /// Idle timeout of a lease that asks for none; none by default.
    pub default_idle_timeout_s: Option<i64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_active_leases: 10,
            max_queued: 100,
            spend_cap_daily_micros: None,
            spend_cap_monthly_micros: None,
            default_ttl_s: 1800,
            max_ttl_s: 86_400,
            default_idle_timeout_s: None,
        }
    }
}

/// A partial update of [`Limits`]: absent fields stay; `null` clears an optional one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_leases: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    #[schema(value_type = Option<i64>)]
    pub spend_cap_daily_micros: Option<Option<i64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    #[schema(value_type = Option<i64>)]
    pub spend_cap_monthly_micros: Option<Option<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ttl_s: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl_s: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    #[schema(value_type = Option<i64>)]
    pub default_idle_timeout_s: Option<Option<i64>>,
}

/// The operator's ceilings for one tenant (DESIGN.md §6 "Who may do what"): a tenant admin
/// sets the tenant's [`Limits`] anywhere at or below them, never above (403
/// `quota_exceeded`), and never removes a spend cap the quota sets. Only the admin token
/// changes a quota. Lowering a quota lowers the limits above it at once: new grants are
/// refused while the tenant is over, running leases are never ended by it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Ceiling of `max_active_leases`.
    pub max_active_leases: i64,
    /// Ceiling of `max_queued`.
    pub max_queued: i64,
    /// Ceiling of the daily spend cap; `null`: the tenant may run without a daily cap.
    pub spend_cap_daily_micros: Option<i64>,
    /// Ceiling of the monthly spend cap; `null`: the tenant may run without a monthly cap.
    pub spend_cap_monthly_micros: Option<i64>,
    /// Ceiling of `max_ttl_s`.
    pub max_ttl_s: i64,
    /// Most tokens the tenant may hold. Default 50.
    pub max_tokens: i64,
    /// Most webhook endpoints. Default 10.
    pub max_webhooks: i64,
    /// Most pools. Default 50.
    pub max_pools: i64,
    /// Most provider accounts. Default 10.
    pub max_providers: i64,
}

/// A partial update of a [`Quota`]: absent fields stay; `null` lifts a spend-cap ceiling.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_leases: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    #[schema(value_type = Option<i64>)]
    pub spend_cap_daily_micros: Option<Option<i64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    #[schema(value_type = Option<i64>)]
    pub spend_cap_monthly_micros: Option<Option<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl_s: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_webhooks: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pools: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_providers: Option<i64>,
}

/// `null` vs absent for optional fields of a patch.
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Option<i64>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
        Option::<i64>::deserialize(d).map(Some)
    }
}

/// `POST /v1/tenants`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantCreate {
    /// 1–63 characters: lowercase letters, digits and `-`, starting with a letter or digit.
    pub name: String,
    /// Starting limits; anything left out takes its default (lowered to fit the quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsPatch>,
    /// The operator's ceilings; anything left out is the tenant's starting limit (so the
    /// tenant admin may lower its limits but not raise them) or the default count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaPatch>,
}

/// `PATCH /v1/tenants/{t}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    /// The tenant's limits: within its quota (tenant admin or operator).
    #[serde(default)]
    pub limits: LimitsPatch,
    /// The tenant's quota: the admin token only (403 `operator_only` otherwise). Applied
    /// before `limits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaPatch>,
}

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub name: String,
    pub created_at: String,
    /// What applies to leases: set by the tenant admin within `quota`.
    pub limits: Limits,
    /// The operator's ceilings of the limits and counts.
    pub quota: Quota,
}

/// A tenant in the operator's list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantSummary {
    pub name: String,
    pub created_at: String,
}

/// What a token may do. Each scope includes the ones after it:
/// `admin` ⊃ `tenant:admin` ⊃ `leases:write` ⊃ `leases:read`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub enum Scope {
    /// Read leases, usage, ledger and events.
    #[serde(rename = "leases:read")]
    LeasesRead,
    /// Request, heartbeat and release leases.
    #[serde(rename = "leases:write")]
    LeasesWrite,
    /// Everything about one tenant: limits, pools, providers, webhooks, tokens.
    #[serde(rename = "tenant:admin")]
    TenantAdmin,
    /// The operator: everything, on every tenant.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    /// The scope's name as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::LeasesRead => "leases:read",
            Scope::LeasesWrite => "leases:write",
            Scope::TenantAdmin => "tenant:admin",
            Scope::Admin => "admin",
        }
    }
}

/// `POST /v1/tenants/{t}/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// At least one of `tenant:admin`, `leases:write`, `leases:read`.
    pub scopes: Vec<Scope>,
    /// A note for people ("ci-main", "alice").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A token, as shown once when it is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub id: String,
    /// The secret. berth stores only its hash: it is never shown again.
    pub token: String,
    pub scopes: Vec<Scope>,
    pub name: Option<String>,
}

/// A token as listed: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenSummary {
    pub id: String,
    pub scopes: Vec<Scope>,
    pub name: Option<String>,
    pub created_at: String,
}

/// `PUT /v1/tenants/{t}/providers/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderPut {
    /// `fake`, `process`, `hetzner` or `http`.
    pub kind: String,
    /// Non-secret settings of the kind.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// Secret settings of the kind; stored encrypted, never returned.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub credentials: serde_json::Value,
}

/// A provider account, without its credentials.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProviderAccount {
    pub name: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// Whether credentials are stored (they are never shown).
    pub has_credentials: bool,
    pub updated_at: String,
}

/// `PUT /v1/tenants/{t}/pools/{pool}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolPut {
    /// The provider account runners of this pool come from.
    pub provider: String,
    pub machine_type: String,
    /// Price per runner-hour; taken from the provider's price list when absent. A pool
    /// without a price cannot be created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_price_micros: Option<i64>,
    /// Most active leases of this pool at once (within the tenant's cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The argv a `process` runner runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Labels matched against GitHub `runs-on` (all of a pool's labels must be in the job's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// Where a pool's price came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriceSource {
    /// Set on the pool.
    #[default]
    Pool,
    /// Read from the provider's price list when the pool was stored.
    Provider,
}

impl PriceSource {
    /// The source's name as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PriceSource::Pool => "pool",
            PriceSource::Provider => "provider",
        }
    }

    /// Parses a source name.
    pub fn parse(name: &str) -> Option<PriceSource> {
        [PriceSource::Pool, PriceSource::Provider]
            .into_iter()
            .find(|source| source.as_str() == name)
    }
}

/// A pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    pub name: String,
    pub provider: String,
    pub machine_type: String,
    pub hourly_price_micros: i64,
    pub price_source: PriceSource,
    pub max_active: Option<i64>,
    pub image: Option<String>,
    pub region: Option<String>,
    pub command: Vec<String>,
    pub labels: Vec<String>,
    pub updated_at: String,
}

/// Spend of one pool in a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolUsage {
    pub pool: String,
    pub charged_micros: i64,
    pub reserved_micros: i64,
}

/// `GET /v1/tenants/{t}/usage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// `day` or `month` (UTC).
    pub period: String,
    pub period_start: String,
    pub period_end: String,
    /// Charged in the period (leases whose runner was destroyed in it).
    pub charged_micros: i64,
    /// Open reservations of running leases (counted against every period's cap).
    pub reserved_micros: i64,
    /// The period's cap, if any.
    pub cap_micros: Option<i64>,
    /// `cap - charged - reserved`, if there is a cap (may be negative).
    pub available_micros: Option<i64>,
    pub by_pool: Vec<PoolUsage>,
}

/// The kinds of ledger rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// Money set aside at grant (or TTL extension).
    Reserve,
    /// A reservation given back when the lease ended.
    Release,
    /// What the lease cost: price × runner lifetime.
    Charge,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Reserve => "reserve",
            LedgerKind::Release => "release",
            LedgerKind::Charge => "charge",
        }
    }

    /// Parses a kind name.
    pub fn parse(name: &str) -> Option<LedgerKind> {
        [LedgerKind::Reserve, LedgerKind::Release, LedgerKind::Charge]
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

/// One append-only row of the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntry {
    /// Increases by one per row; pass the last one seen as `after` to page.
    pub seq: i64,
    pub at: String,
    pub lease_id: String,
    pub pool: String,
    pub kind: LedgerKind,
    pub amount_micros: i64,
}

/// A page of a list: `next_cursor` is `null` on the last page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// An error, as `application/problem+json` (RFC 9457).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`https://berth.dev/problems/<code>`).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, for example `concurrency_cap`.
    pub code: String,
    /// The id of the request this answers (its `X-Request-Id`), as in the server's log
    /// lines about it. Absent in answers made outside a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The kinds of events berth sends (webhooks) and streams (SSE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "lease.queued")]
    LeaseQueued,
    #[serde(rename = "lease.granted")]
    LeaseGranted,
    #[serde(rename = "lease.ready")]
    LeaseReady,
    #[serde(rename = "lease.released")]
    LeaseReleased,
    #[serde(rename = "lease.expired")]
    LeaseExpired,
    #[serde(rename = "lease.failed")]
    LeaseFailed,
    #[serde(rename = "lease.canceled")]
    LeaseCanceled,
    #[serde(rename = "budget.threshold")]
    BudgetThreshold,
    #[serde(rename = "budget.exhausted")]
    BudgetExhausted,
}

impl EventKind {
    /// Every kind, in the order they are documented.
    pub const ALL: [EventKind; 9] = [
        EventKind::LeaseQueued,
        EventKind::LeaseGranted,
        EventKind::LeaseReady,
        EventKind::LeaseReleased,
        EventKind::LeaseExpired,
        EventKind::LeaseFailed,
        EventKind::LeaseCanceled,
        EventKind::BudgetThreshold,
        EventKind::BudgetExhausted,
    ];

    /// The kind's name, the `type` of an event.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::LeaseQueued => "lease.queued",
            EventKind::LeaseGranted => "lease.granted",
            EventKind::LeaseReady => "lease.ready",
            EventKind::LeaseReleased => "lease.released",
            EventKind::LeaseExpired => "lease.expired",
            EventKind::LeaseFailed => "lease.failed",
            EventKind::LeaseCanceled => "lease.canceled",
            EventKind::BudgetThreshold => "budget.threshold",
            EventKind::BudgetExhausted => "budget.exhausted",
        }
    }

    /// Parses a kind's name.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

/// The event types berth sends (webhooks) and streams (SSE): the names of [`EventKind`].
pub const EVENT_TYPES: [&str; EventKind::ALL.len()] = {
    let mut names = [""; EventKind::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = EventKind::ALL[i].as_str();
        i += 1;
    }
    names
};

/// The body of a webhook delivery and the `data` of an SSE message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventMessage {
    /// `lease.granted`, `budget.threshold`, … (`webhook.test` for test deliveries).
    #[serde(rename = "type")]
    pub kind: String,
    /// When the event happened (RFC 3339).
    pub timestamp: String,
    /// Per-tenant event number: events of one tenant are numbered 1, 2, 3, … in the order
    /// they happened. `null` for test deliveries.
    pub seq: Option<i64>,
    /// The lease (lease events) or the budget figures (budget events).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// `PUT /v1/tenants/{t}/webhooks/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPut {
    /// Where deliveries go (http or https).
    pub url: String,
    /// The signing secret (`whsec_…`). Generated when a new endpoint gives none, and shown
    /// once in the answer; an update without one keeps the old secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Event types to send; empty or absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A webhook endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_at: String,
    pub updated_at: String,
    /// Deliveries waiting or being retried.
    pub pending: i64,
    /// Deliveries given up on (dead-lettered).
    pub dead: i64,
    /// The signing secret: present only in the answer that generated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its turn or for a retry.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up on after 24 h of retries (or the endpoint answered 410 Gone).
    Dead,
}

impl DeliveryStatus {
    /// The status's name as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    /// Parses a status name.
    pub fn parse(name: &str) -> Option<DeliveryStatus> {
        [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::Dead,
        ]
        .into_iter()
        .find(|status| status.as_str() == name)
    }
}

/// One delivery of one event to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDelivery {
    pub id: i64,
    pub endpoint: String,
    /// The `webhook-id` header: the same on every attempt.
    pub msg_id: String,
    pub event_type: String,
    pub seq: Option<i64>,
    pub status: DeliveryStatus,
    pub attempts: i64,
    /// HTTP status of the last attempt, if it got one.
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// `PUT /v1/tenants/{t}/integrations/github`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubPut {
    /// The webhook secret configured at GitHub (verifies `X-Hub-Signature-256`).
    pub secret: String,
    /// TTL of the leases requested for jobs; default the tenant's `default_ttl_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<i64>,
    /// How long a job's lease request may wait in the queue; default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<i64>,
    /// Idle timeout of the leases; default the tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<i64>,
}

/// The GitHub integration of a tenant, without its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Github {
    pub configured: bool,
    pub ttl_s: Option<i64>,
    pub wait_s: i64,
    pub idle_timeout_s: Option<i64>,
}

/// What a GitHub delivery did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GithubOutcome {
    /// `leased`, `queued`, `released`, `ignored` or `duplicate`.
    pub outcome: String,
    pub lease: Option<Lease>,
    pub detail: Option<String>,
}

/// `POST /v1/runners/{lease_id}/ready`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunnerReady {
    /// How to reach the runner, if the provider did not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Facts the runner wants shown on the lease (at most 32 entries).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// `GET /v1/tenants/{t}/leases/{id}/logs`: a piece of one output stream of a lease's runner.
/// The text is the runner's (a CI job's) own output: show it as data, and strip terminal
/// escape sequences before printing it to a terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseLogs {
    pub lease_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Where `text` starts in the stream, in bytes.
    pub offset: u64,
    /// Where the next piece starts: pass it as `offset` to read on.
    pub next_offset: u64,
    /// The stream's size in bytes when it was read; `next_offset` below it means there is
    /// more to read now.
    pub size: u64,
    /// The bytes from `offset` to `next_offset` as UTF-8 (a byte that is not UTF-8 reads as
    /// U+FFFD). At most 1 MiB of bytes per answer.
    pub text: String,
}

/// `POST /v1/admin/backups` (admin token): where the server writes a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// A new directory inside the server's `--backup-dir`: a relative path (`nightly-1`) or
    /// an absolute one within it. Default: `berth-<UTC time>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Put the master key in the backup (`master.key`, mode 0600). Default `false`: the
    /// backup names the key it needs by fingerprint.
    #[serde(default)]
    pub include_master_key: bool,
}

/// A backup the server wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Backup {
    /// The backup's directory on the server's machine (absolute).
    pub path: String,
    pub started_at: String,
    pub finished_at: String,
    /// Object databases copied (one per tenant that was ever used).
    pub objects: u64,
    /// Files copied, the manifest not counted.
    pub files: u64,
    pub bytes: u64,
    /// The master key's fingerprint (never the key).
    pub master_key_fingerprint: String,
    pub master_key_included: bool,
}

/// `POST /v1/admin/restores` (admin token): replace one tenant's state with a backup's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRestoreRequest {
    /// The backup: a directory inside the server's `--backup-dir` (relative, or absolute
    /// within it).
    pub from: String,
    /// The tenant whose state is replaced; it must exist here and in the backup.
    pub tenant: String,
}

/// What a tenant's restore did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantRestored {
    pub tenant: String,
    /// When the backup began: the tenant's state is as of then (or a little later).
    pub backup_started_at: String,
    /// Runners the replaced state owned that the restored state has no open lease for:
    /// being destroyed.
    pub runners_destroying: u64,
    /// Leases whose runners could not be destroyed (their provider account is not in the
    /// restored state): remove them at the provider by hand.
    pub runners_left: Vec<String>,
}
