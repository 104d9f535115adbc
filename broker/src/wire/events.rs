//! Events (webhook deliveries, SSE messages), webhook endpoints and their deliveries, and the
//! GitHub integration's answers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Lease;

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
    /// Reconciliation destroyed (or, in report mode, would destroy) a runner of an ended
    /// lease; data: [`OrphanRunner`].
    #[serde(rename = "runner.orphan_destroyed")]
    RunnerOrphanDestroyed,
    /// A lease's runner could not be destroyed after several attempts, or the provider
    /// refused for good (`protected`, `unauthorized`); data: [`DestroyStuck`].
    #[serde(rename = "runner.destroy_stuck")]
    RunnerDestroyStuck,
    /// Reconciliation could not list an account's runners several rounds in a row; data:
    /// [`ReconcileFailing`].
    #[serde(rename = "provider.reconcile_failing")]
    ProviderReconcileFailing,
    /// A ready pool's warm runner is ready to be taken; data: the warm lease.
    #[serde(rename = "pool.warm_ready")]
    PoolWarmReady,
    /// A lease request took a warm runner; data: the lease (same id as the warm runner).
    #[serde(rename = "pool.warm_taken")]
    PoolWarmTaken,
    /// A warm runner was recycled (older than `warm_ttl_s`, its runner exited or vanished)
    /// or retired (its pool wants fewer, or other ones); data: the warm lease.
    #[serde(rename = "pool.warm_recycled")]
    PoolWarmRecycled,
    /// A warm runner could not be created; data: the warm lease with `last_error`.
    #[serde(rename = "pool.warm_failed")]
    PoolWarmFailed,
}

impl EventKind {
    /// Every kind, in the order they are documented.
    pub const ALL: [EventKind; 16] = [
        EventKind::LeaseQueued,
        EventKind::LeaseGranted,
        EventKind::LeaseReady,
        EventKind::LeaseReleased,
        EventKind::LeaseExpired,
        EventKind::LeaseFailed,
        EventKind::LeaseCanceled,
        EventKind::BudgetThreshold,
        EventKind::BudgetExhausted,
        EventKind::RunnerOrphanDestroyed,
        EventKind::RunnerDestroyStuck,
        EventKind::ProviderReconcileFailing,
        EventKind::PoolWarmReady,
        EventKind::PoolWarmTaken,
        EventKind::PoolWarmRecycled,
        EventKind::PoolWarmFailed,
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
            EventKind::RunnerOrphanDestroyed => "runner.orphan_destroyed",
            EventKind::RunnerDestroyStuck => "runner.destroy_stuck",
            EventKind::ProviderReconcileFailing => "provider.reconcile_failing",
            EventKind::PoolWarmReady => "pool.warm_ready",
            EventKind::PoolWarmTaken => "pool.warm_taken",
            EventKind::PoolWarmRecycled => "pool.warm_recycled",
            EventKind::PoolWarmFailed => "pool.warm_failed",
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

/// The `data` of `runner.orphan_destroyed`: a runner of a lease this tenant knows ended,
/// carrying this installation's id (or none), seen on two reconciliations a grace period
/// apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrphanRunner {
    /// The provider account that holds it.
    pub account: String,
    /// The provider's id of the runner.
    pub runner_id: String,
    /// The ended lease it was made for.
    pub lease_id: String,
    /// When a reconciliation first saw it (RFC 3339).
    pub first_seen_at: String,
    /// `true` in report mode (`--reconcile-mode report`): berth would have destroyed it and
    /// did not.
    pub report_only: bool,
}

/// The `data` of `runner.destroy_stuck`: a lease whose runner berth cannot destroy. The lease
/// stays `releasing` (and counts against the caps); its destroy is retried with a long
/// backoff, and at once when the account is changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DestroyStuck {
    pub lease_id: String,
    /// The provider account of the runner.
    pub account: String,
    /// The provider's id of the runner, if known.
    pub runner_id: Option<String>,
    /// Destroy attempts so far (creates included, as in the lease's `provider_attempts`).
    pub attempts: i64,
    /// The provider's last answer (never credentials).
    pub error: String,
    /// Whether the provider refused for good (for example `protected`, `unauthorized`):
    /// someone must change something at the provider or in the account.
    pub permanent: bool,
}

/// The `data` of `provider.reconcile_failing`: an account whose runners could not be listed
/// on several reconciliations in a row, so orphans and lost runners there go unnoticed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReconcileFailing {
    pub account: String,
    /// Failed listings in a row.
    pub failures: u32,
    /// The last listing's error (never credentials).
    pub error: String,
}

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
    /// The lease (lease events), the budget figures (budget events), an [`OrphanRunner`]
    /// (`runner.orphan_destroyed`), a [`DestroyStuck`] (`runner.destroy_stuck`) or a
    /// [`ReconcileFailing`] (`provider.reconcile_failing`).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
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

/// The GitHub integration of a tenant, without its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Github {
    pub configured: bool,
    pub ttl_s: Option<i64>,
    pub wait_s: i64,
    pub idle_timeout_s: Option<i64>,
    /// The connection that registers just-in-time runners, if set (never its credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<GithubConnection>,
}

/// A tenant's GitHub connection as the API shows it: where and how, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GithubConnection {
    /// `org` or `owner/repo`.
    pub scope: String,
    pub api_url: String,
    pub runner_group_id: i64,
    /// `token` or `app`.
    pub credentials: String,
    /// The App's id and installation (`app` credentials only).
    pub app_id: Option<i64>,
    pub installation_id: Option<i64>,
}

/// What a GitHub delivery did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GithubOutcome {
    /// `leased`, `queued`, `released`, `recorded` (`in_progress`: the runner that took the job
    /// is noted on its lease), `ignored` or `duplicate`.
    pub outcome: String,
    pub lease: Option<Lease>,
    pub detail: Option<String>,
}

/// `GET /v1/runners/{lease_id}/github-jitconfig`: the lease's just-in-time runner config, for
/// its runner only (`./run.sh --jitconfig "$encoded_jit_config"`). A secret: never log it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GithubJitConfig {
    pub encoded_jit_config: String,
}

impl std::fmt::Debug for GithubJitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GithubJitConfig(<redacted>)")
    }
}
