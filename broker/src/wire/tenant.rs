//! A tenant, its limits, quota, tokens, provider accounts and pools; usage, ledger, pages and
//! problems.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
    /// Most warm runners (ready pools' runners kept ahead of demand) across the tenant's
    /// pools. Default 10.
    #[serde(default = "default_max_warm")]
    pub max_warm: i64,
}

/// [`Quota::max_warm`] when the operator set none (and of quotas stored before it existed).
pub const DEFAULT_MAX_WARM: i64 = 10;

fn default_max_warm() -> i64 {
    DEFAULT_MAX_WARM
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
    /// Fallbacks after `machine_type` and `region`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<super::PoolAlternative>,
    /// Warm runners the pool keeps ready ahead of demand (0: not a ready pool).
    #[serde(default)]
    pub min_ready: i64,
    /// Most warm runners of the pool at once (at least `min_ready`): a request that finds
    /// none ready grows the pool by one, up to this.
    #[serde(default)]
    pub max_ready: i64,
    /// A warm runner not taken this long after it was made is recycled.
    #[serde(default)]
    pub warm_ttl_s: i64,
    /// The pool's warm runners now, and how lease requests fared since the tenant's object
    /// last opened.
    #[serde(default)]
    pub warm: PoolWarm,
    /// Each lease's runner is registered with GitHub just in time.
    #[serde(default)]
    pub github: bool,
    pub updated_at: String,
}

/// A pool's warm runners.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolWarm {
    /// Ready to be taken.
    pub ready: i64,
    /// Being created or booting (not taken: a request that finds none ready goes cold).
    pub provisioning: i64,
    /// Requests that took a warm runner (since the tenant's object opened).
    pub hits: u64,
    /// Requests of this ready pool that found none ready (since the tenant's object opened).
    pub misses: u64,
}

/// Spend of one pool in a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolUsage {
    pub pool: String,
    pub charged_micros: i64,
    pub reserved_micros: i64,
    /// The part of `charged_micros` that paid for warm runners waiting to be taken.
    #[serde(default)]
    pub warm_charged_micros: i64,
}

/// `GET /v1/tenants/{t}/usage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// `day` or `month` (UTC).
    pub period: String,
    pub period_start: String,
    pub period_end: String,
    /// Charged in the period (leases whose runner was destroyed in it, and warm runners'
    /// waiting time).
    pub charged_micros: i64,
    /// The part of `charged_micros` that paid for warm runners waiting to be taken.
    #[serde(default)]
    pub warm_charged_micros: i64,
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
    /// Money set aside when a ready pool made a warm runner (price × `warm_ttl_s`).
    WarmReserve,
    /// A warm runner's reservation given back (it was taken, or it ended).
    WarmRelease,
    /// What a warm runner cost while it waited: price × (made → taken, or → destroyed).
    WarmCharge,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Reserve => "reserve",
            LedgerKind::Release => "release",
            LedgerKind::Charge => "charge",
            LedgerKind::WarmReserve => "warm_reserve",
            LedgerKind::WarmRelease => "warm_release",
            LedgerKind::WarmCharge => "warm_charge",
        }
    }

    /// Parses a kind name.
    pub fn parse(name: &str) -> Option<LedgerKind> {
        [
            LedgerKind::Reserve,
            LedgerKind::Release,
            LedgerKind::Charge,
            LedgerKind::WarmReserve,
            LedgerKind::WarmRelease,
            LedgerKind::WarmCharge,
        ]
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
