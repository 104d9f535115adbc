//! A lease as every lease route returns it, its states and end reasons, and a piece of its
//! runner's output.

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
    /// A runner its pool keeps ready ahead of demand (a ready pool): owned by the pool, not
    /// a client, and not counted as active. A lease request for the pool takes it: it becomes
    /// that client's lease, `ready` at once, with the same id.
    Warm,
}

impl LeaseState {
    /// Every state, in lifecycle order.
    pub const ALL: [LeaseState; 9] = [
        LeaseState::Queued,
        LeaseState::Provisioning,
        LeaseState::Ready,
        LeaseState::Releasing,
        LeaseState::Released,
        LeaseState::Expired,
        LeaseState::Failed,
        LeaseState::Canceled,
        LeaseState::Warm,
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
            LeaseState::Warm => "warm",
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
    /// Its runner vanished at the provider (deleted by hand, a host failure): a
    /// reconciliation listing no longer showed it. Charged up to when it was last seen.
    RunnerLost,
    /// Its client canceled it while it was queued.
    Canceled,
    /// Its wait ended before a slot and budget were free.
    QueueTimeout,
    /// A warm runner its pool no longer wanted (`min_ready` lowered, or the pool's provider
    /// or runner settings changed).
    WarmRetired,
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
            EndReason::RunnerLost => "runner_lost",
            EndReason::Canceled => "canceled",
            EndReason::QueueTimeout => "queue_timeout",
            EndReason::WarmRetired => "warm_retired",
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
            EndReason::RunnerLost,
            EndReason::Canceled,
            EndReason::QueueTimeout,
            EndReason::WarmRetired,
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
    /// The runner was made ahead of demand by a ready pool (the lease took a warm runner).
    #[serde(default)]
    pub warm: bool,
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
    /// Every create attempt of the runner, oldest first (at most 20 kept): which machine
    /// type and region were tried, and how each failed. A pool's alternatives show here as
    /// the lease falls back through them.
    #[serde(default)]
    pub provisioning_attempts: Vec<ProvisioningAttempt>,
    /// Set while a `releasing` lease's runner cannot be destroyed (`runner.destroy_stuck`
    /// was announced): since when, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<Stuck>,
    /// The lease's GitHub runner: its just-in-time registration and the job that took it
    /// (never the JIT config). Absent for leases GitHub has nothing to do with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<LeaseGithub>,
}

/// A lease's GitHub side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseGithub {
    /// `none` (not registered), `registering` (a runner that exists already waits for its
    /// registration, retried after a transient failure), `registered`, `removing` (the lease
    /// ended; its registration is being deleted), `removed`, or `abandoned` (deletion gave up; reconciliation may
    /// still remove it).
    pub registration: String,
    /// GitHub's id of the runner registration berth made.
    pub registration_id: Option<i64>,
    /// The job that ran on it (`workflow_job.id`, from `in_progress`).
    pub job_id: Option<i64>,
    /// The runner GitHub says took the job (`workflow_job.runner_name`).
    pub runner_name: Option<String>,
    /// `workflow_job.runner_id`.
    pub runner_id: Option<i64>,
    /// The last error of a registration or removal, if any (GitHub's message; never a secret).
    pub last_error: Option<String>,
}

/// One create attempt of a lease's runner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProvisioningAttempt {
    pub machine_type: String,
    pub region: Option<String>,
    /// `capacity` (the next alternative is tried), `transient` (retried) or `permanent`;
    /// `null` for the attempt that made the runner.
    pub error_class: Option<String>,
    /// The provider's message (never credentials).
    pub message: Option<String>,
    /// When the attempt answered (RFC 3339).
    pub at: String,
}

/// Why a lease's runner cannot be destroyed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Stuck {
    /// When `runner.destroy_stuck` was announced (RFC 3339).
    pub since: String,
    /// The provider's last answer.
    pub reason: String,
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
