//! The request bodies of the API, each with its rules ([`rules!`]): the same declaration
//! checks a request (the API's body extractor calls [`Validate::validate`]) and writes the
//! bounds into `/openapi.json`. Every body is a JSON object, also where serde's derives would
//! take an array ([`object`]), and integers are read as JSON Schema reads them ([`integer`]).
//!
//! [`Validate::validate`]: super::rules::Validate::validate

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Scope;
use super::bounds::{
    COMMAND, COUNT, EXTEND_TTL, GITHUB_API_URL, GITHUB_APP_ID, GITHUB_PRIVATE_KEY,
    GITHUB_RUNNER_GROUP, GITHUB_SCOPE, GITHUB_SECRET, GITHUB_TOKEN, GITHUB_WAIT, IDLE_TIMEOUT,
    LEASE_LABELS, MACHINE_TYPE, MAX_ACTIVE_LEASES, MAX_QUEUED, NAME, POOL_LABELS, POOL_MAX_ACTIVE,
    POOL_SETTING, PRICE, PROVIDER_KIND, SPEND_CAP, TOKEN_NAME, TOKEN_SCOPES, TTL, WAIT, WARM_COUNT,
    WARM_TTL, WEBHOOK_EVENTS, WEBHOOK_SECRET, WEBHOOK_URL,
};
use super::decode::{integer, object};
use super::rules::{Checked, Rule};
use crate::wire::rules;

/// `POST /v1/tenants/{t}/leases`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// The pool to take a runner from.
    pub pool: String,
    /// Lease length in seconds; default the tenant's `default_ttl_s`, at most `max_ttl_s`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub ttl_s: Option<i64>,
    /// End the lease when no heartbeat came for this long; default the tenant's.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub idle_timeout_s: Option<i64>,
    /// At a full cap, wait this long in the queue (0, the default, answers 429 at once).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
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
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub extend_ttl_s: Option<i64>,
}

/// A partial update of [`Limits`]: absent fields stay; `null` clears an optional one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub max_active_leases: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
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
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub default_ttl_s: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub max_ttl_s: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    #[schema(value_type = Option<i64>)]
    pub default_idle_timeout_s: Option<Option<i64>>,
}

/// A partial update of a [`Quota`]: absent fields stay; `null` lifts a spend-cap ceiling.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaPatch {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub max_active_leases: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
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
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub max_ttl_s: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub max_tokens: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub max_webhooks: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub max_pools: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub max_providers: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub max_warm: Option<i64>,
}

/// `null` vs absent for optional fields of a patch.
mod double_option {
    use serde::{Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Option<i64>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
        super::integer::nullable(d)
    }
}

/// `POST /v1/tenants`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantCreate {
    /// 1–63 characters: lowercase letters, digits and `-`, starting with a letter or digit.
    pub name: String,
    /// Starting limits; anything left out takes its default (lowered to fit the quota).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object::optional"
    )]
    pub limits: Option<LimitsPatch>,
    /// The operator's ceilings; anything left out is the tenant's starting limit (so the
    /// tenant admin may lower its limits but not raise them) or the default count.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object::optional"
    )]
    pub quota: Option<QuotaPatch>,
}

/// `PATCH /v1/tenants/{t}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    /// The tenant's limits: within its quota (tenant admin or operator).
    #[serde(default, deserialize_with = "object::deserialize")]
    pub limits: LimitsPatch,
    /// The tenant's quota: the admin token only (403 `operator_only` otherwise). Applied
    /// before `limits`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object::optional"
    )]
    pub quota: Option<QuotaPatch>,
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

/// `PUT /v1/tenants/{t}/providers/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderPut {
    /// `fake`, `process`, `hetzner` or `http`.
    pub kind: String,
    /// Non-secret settings of the kind.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub config: serde_json::Value,
    /// Secret settings of the kind; stored encrypted, never returned.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub credentials: serde_json::Value,
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
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub hourly_price_micros: Option<i64>,
    /// Most active leases of this pool at once (within the tenant's cap).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
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
    /// Ordered fallbacks when the provider is out of capacity (`resource_unavailable`,
    /// `placement_error`, `resource_limit_exceeded`) for the pool's own machine type and
    /// region: each create that fails for capacity moves to the next. At most 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternatives: Option<Vec<PoolAlternative>>,
    /// Warm runners to keep ready ahead of demand (a ready pool); default 0. The tenant's
    /// pools together keep at most the quota's `max_warm`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub min_ready: Option<i64>,
    /// Most warm runners of the pool at once; at least `min_ready`, default `min_ready`. A
    /// request that finds none ready grows the pool by one warm runner up to `max_ready`;
    /// refills keep `min_ready`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub max_ready: Option<i64>,
    /// A warm runner not taken this long after it was made is recycled (destroyed and made
    /// again); 60–86400, default 3600.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub warm_ttl_s: Option<i64>,
    /// Register each lease's runner with GitHub just in time (needs the tenant's GitHub
    /// connection, and at least one label). Default `false`; leases from `workflow_job`
    /// deliveries are registered whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<bool>,
}

/// A fallback of a pool: another machine type and region, with its price. Read from a JSON
/// object only, like every request object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolAlternative {
    pub machine_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The price per runner-hour of this choice; the lease's reservation and charge follow
    /// the choice that made its runner.
    pub hourly_price_micros: i64,
}

impl<'de> Deserialize<'de> for PoolAlternative {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            machine_type: String,
            #[serde(default)]
            region: Option<String>,
            #[serde(deserialize_with = "integer::required")]
            hourly_price_micros: i64,
        }
        object::deserialize::<D, Fields>(d).map(|f| PoolAlternative {
            machine_type: f.machine_type,
            region: f.region,
            hourly_price_micros: f.hourly_price_micros,
        })
    }
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

/// `PUT /v1/tenants/{t}/integrations/github`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubPut {
    /// The webhook secret configured at GitHub (verifies `X-Hub-Signature-256`).
    pub secret: String,
    /// TTL of the leases requested for jobs; default the tenant's `default_ttl_s`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub ttl_s: Option<i64>,
    /// How long a job's lease request may wait in the queue; default 3600.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub wait_s: Option<i64>,
    /// Idle timeout of the leases; default the tenant's.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub idle_timeout_s: Option<i64>,
    /// Where berth registers just-in-time runners: an organisation (`acme`) or a repository
    /// (`acme/app`). With credentials (`token`, or `app_id` + `installation_id` +
    /// `private_key`) it makes the connection that registers a runner per lease; without
    /// both, the integration only turns deliveries into leases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// GitHub's API; default `https://api.github.com` (GitHub Enterprise Server:
    /// `https://<host>/api/v3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The runner group new runners join; default 1 (the organisation's default group).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub runner_group_id: Option<i64>,
    /// A fine-grained token (organisation "Self-hosted runners: write", or repository
    /// "Administration: write"). Stored encrypted, never returned. Excludes the App fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A GitHub App's id (with `installation_id` and `private_key`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub app_id: Option<i64>,
    /// The App's installation in the organisation or repository.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer::optional"
    )]
    pub installation_id: Option<i64>,
    /// The App's RSA private key, PEM. Stored encrypted, never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

impl std::fmt::Debug for GithubPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubPut")
            .field("ttl_s", &self.ttl_s)
            .field("wait_s", &self.wait_s)
            .field("idle_timeout_s", &self.idle_timeout_s)
            .field("scope", &self.scope)
            .field("api_url", &self.api_url)
            .field("runner_group_id", &self.runner_group_id)
            .field("app_id", &self.app_id)
            .field("installation_id", &self.installation_id)
            .finish_non_exhaustive()
    }
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

rules!(LeaseRequest {
    ttl_s: TTL,
    idle_timeout_s: IDLE_TIMEOUT,
    wait_s: WAIT,
    labels: LEASE_LABELS,
});
rules!(Heartbeat {
    extend_ttl_s: EXTEND_TTL,
});
rules!(LimitsPatch {
    max_active_leases: MAX_ACTIVE_LEASES,
    max_queued: MAX_QUEUED,
    spend_cap_daily_micros: SPEND_CAP,
    spend_cap_monthly_micros: SPEND_CAP,
    default_ttl_s: TTL,
    max_ttl_s: TTL,
    default_idle_timeout_s: IDLE_TIMEOUT,
});
rules!(QuotaPatch {
    max_active_leases: MAX_ACTIVE_LEASES,
    max_queued: MAX_QUEUED,
    spend_cap_daily_micros: SPEND_CAP,
    spend_cap_monthly_micros: SPEND_CAP,
    max_ttl_s: TTL,
    max_tokens: COUNT,
    max_webhooks: COUNT,
    max_pools: COUNT,
    max_providers: COUNT,
    max_warm: WARM_COUNT,
});
rules!(TenantCreate { name: NAME } nested { limits, quota });
rules!(TenantPatch {} nested { limits, quota });
rules!(TokenCreate {
    scopes: TOKEN_SCOPES,
    name: TOKEN_NAME,
});
rules!(ProviderPut {
    kind: PROVIDER_KIND
});
rules!(PoolPut {
    machine_type: MACHINE_TYPE,
    hourly_price_micros: PRICE,
    max_active: POOL_MAX_ACTIVE,
    image: POOL_SETTING,
    region: POOL_SETTING,
    command: COMMAND,
    labels: POOL_LABELS,
    min_ready: WARM_COUNT,
    max_ready: WARM_COUNT,
    warm_ttl_s: WARM_TTL,
});
rules!(WebhookPut {
    url: WEBHOOK_URL,
    secret: WEBHOOK_SECRET,
    events: WEBHOOK_EVENTS,
});
rules!(GithubPut {
    secret: GITHUB_SECRET,
    ttl_s: TTL,
    wait_s: GITHUB_WAIT,
    idle_timeout_s: IDLE_TIMEOUT,
    scope: GITHUB_SCOPE,
    api_url: GITHUB_API_URL,
    runner_group_id: GITHUB_RUNNER_GROUP,
    token: GITHUB_TOKEN,
    app_id: GITHUB_APP_ID,
    installation_id: GITHUB_APP_ID,
    private_key: GITHUB_PRIVATE_KEY,
});
rules!(RunnerReady {});

impl Checked for Vec<Scope> {
    fn check(&self, rule: &Rule, field: &str) -> Result<(), String> {
        rule.check_list(field, self.iter().map(|scope| scope.as_str()))
    }
}

impl Checked for super::DeliveryStatus {
    fn check(&self, rule: &Rule, field: &str) -> Result<(), String> {
        rule.check_str(field, self.as_str())
    }
}
