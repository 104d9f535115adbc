//! A lease as the tenant object holds it — which is also its row in the `leases` table,
//! declared once with [`table!`](super::row::table) — and the queries that read leases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::row::{self, table};
use crate::objects::Error;
use crate::objects::clock::rfc3339;
use crate::objects::sqlite::Db;
use crate::wire::{self, EndReason, LeaseState};

/// The pool's runner settings, copied into the lease when it is requested, so a later change
/// of the pool never changes a running lease (nor a create retried after a restart).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub machine_type: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    /// The pool's fallbacks after `machine_type` and `region`, in order (a create that fails
    /// for capacity moves to the next; see [`Lease::alternative`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<wire::PoolAlternative>,
}

/// One create attempt of a lease's runner, as the lease keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub machine_type: String,
    #[serde(default)]
    pub region: Option<String>,
    /// `capacity`, `transient` or `permanent`; `None` for the attempt that made the runner.
    #[serde(default)]
    pub error_class: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// Unix ms.
    pub at: i64,
}

/// Most attempts a lease keeps (the oldest go first): retries must not grow a row forever.
pub const MAX_ATTEMPTS_KEPT: usize = 20;

impl Attempt {
    /// The attempt as the API shows it.
    pub fn to_wire(&self) -> wire::ProvisioningAttempt {
        wire::ProvisioningAttempt {
            machine_type: self.machine_type.clone(),
            region: self.region.clone(),
            error_class: self.error_class.clone(),
            message: self.message.clone(),
            at: rfc3339(self.at),
        }
    }
}

/// Which provider call is in flight for a lease. Not stored: after a restart nothing is in
/// flight, and the object re-issues what its stored state calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Destroy,
}

table! {
    /// One lease: its state, its runner and its money. Every column is declared here and
    /// nowhere else.
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct Lease in "leases" {
        pub id: String,
        pub pool: String,
        pub state: LeaseState,
        pub created_at: i64,
        pub granted_at: Option<i64>,
        pub ready_at: Option<i64>,
        /// When the end was decided (the final state comes when the runner is gone).
        pub ended_at: Option<i64>,
        pub expires_at: Option<i64>,
        pub ttl_s: i64,
        pub idle_timeout_s: Option<i64>,
        pub last_heartbeat_at: Option<i64>,
        /// While queued: when the wait ends.
        pub wait_until: Option<i64>,
        pub labels: BTreeMap<String, String> [json],
        pub end_reason: Option<EndReason>,
        /// The provider account the runner comes from.
        pub provider: String,
        pub spec: Spec [json],
        pub runner_id: Option<String>,
        pub runner_address: Option<String>,
        pub runner_metadata: BTreeMap<String, String> [json],
        pub runner_destroyed_at: Option<i64>,
        pub hourly_price_micros: i64,
        pub reserved_micros: i64,
        pub charged_micros: i64,
        pub provider_attempts: i64,
        pub last_error: Option<String>,
        /// When a failed provider call is retried.
        pub next_attempt_at: Option<i64>,
        /// Every create attempt, oldest first (at most [`MAX_ATTEMPTS_KEPT`]).
        pub provisioning_attempts: Vec<Attempt> [json],
        /// Which choice the next create tries: 0 is the pool's own machine type and region
        /// (as copied into `spec`), `n` the pool's `n`-th alternative. `spec.machine_type`
        /// and `spec.region` always hold the current choice.
        pub alternative: i64,
        /// For a lease ended `runner_lost`: when a listing last showed its runner; its
        /// charge ends there.
        pub runner_last_seen_at: Option<i64>,
        /// When `runner.destroy_stuck` was announced for this lease.
        pub stuck_at: Option<i64>,
        /// When a ready pool made this lease's runner ahead of demand (`None`: it never was
        /// warm).
        pub warm_since: Option<i64>,
        /// When a lease request took this warm runner (`None` while it waits in its pool).
        pub taken_at: Option<i64>,
    }
    transient {
        /// The provider call in flight, and its deadline (not stored).
        pub op: Option<(Op, i64)>,
    }
}

impl Lease {
    /// A warm runner still owned by its pool (in any state, up to its end): its time and
    /// money go under the warm ledger kinds.
    pub fn pool_owned(&self) -> bool {
        self.warm_since.is_some() && self.taken_at.is_none()
    }

    /// A warm runner ready to be taken.
    pub fn warm_ready(&self) -> bool {
        self.state == LeaseState::Warm && self.ready_at.is_some()
    }

    /// When the lease goes idle: its last heartbeat (or grant) plus its idle timeout.
    pub fn idle_at(&self) -> Option<i64> {
        let timeout = self.idle_timeout_s?;
        let since = self.last_heartbeat_at.or(self.granted_at)?;
        Some(since.saturating_add(timeout.saturating_mul(1_000)))
    }

    /// The lease as the API shows it.
    pub fn to_wire(&self, tenant: &str, queue_position: Option<i64>) -> wire::Lease {
        let runner = (self.state != LeaseState::Queued
            && self.state != LeaseState::Canceled
            && (self.runner_id.is_some() || self.granted_at.is_some()))
        .then(|| wire::Runner {
            provider: self.provider.clone(),
            id: self.runner_id.clone(),
            address: self.runner_address.clone(),
            metadata: self.runner_metadata.clone(),
            warm: self.warm_since.is_some(),
        });
        wire::Lease {
            id: self.id.clone(),
            tenant: tenant.to_owned(),
            pool: self.pool.clone(),
            state: self.state,
            created_at: rfc3339(self.created_at),
            granted_at: self.granted_at.map(rfc3339),
            ready_at: self.ready_at.map(rfc3339),
            ended_at: self.ended_at.map(rfc3339),
            expires_at: self.expires_at.map(rfc3339),
            ttl_s: self.ttl_s,
            idle_timeout_s: self.idle_timeout_s,
            last_heartbeat_at: self.last_heartbeat_at.map(rfc3339),
            wait_until: self.wait_until.map(rfc3339),
            labels: self.labels.clone(),
            queue_position,
            end_reason: self.end_reason,
            runner,
            runner_destroyed_at: self.runner_destroyed_at.map(rfc3339),
            cost: wire::Cost {
                hourly_price_micros: self.hourly_price_micros,
                reserved_micros: self.reserved_micros,
                charged_micros: self.charged_micros,
            },
            provider_attempts: self.provider_attempts,
            last_error: self.last_error.clone(),
            provisioning_attempts: self
                .provisioning_attempts
                .iter()
                .map(Attempt::to_wire)
                .collect(),
            stuck: (self.state == LeaseState::Releasing && self.stuck_at.is_some()).then(|| {
                wire::Stuck {
                    since: rfc3339(self.stuck_at.unwrap_or_default()),
                    reason: self.last_error.clone().unwrap_or_default(),
                }
            }),
            github: None,
        }
    }
}

/// The read of every lease not in a terminal state, oldest first.
pub fn open_sql() -> String {
    format!(
        "SELECT {} FROM leases WHERE state IN ('queued', 'provisioning', 'ready', 'releasing', 'warm') ORDER BY id",
        row::select_list::<Lease>()
    )
}

/// One lease by id.
pub fn fetch(db: &mut Db, id: &str) -> Result<Option<Lease>, Error> {
    let sql = format!(
        "SELECT {} FROM leases WHERE id = ?1",
        row::select_list::<Lease>()
    );
    Ok(db.query(&sql).bind(id).fetch_optional()?)
}

/// Whether a lease with this id was ever stored (in any state).
pub fn exists(db: &mut Db, id: &str) -> Result<bool, Error> {
    let found: Option<(i64,)> = db
        .query("SELECT 1 FROM leases WHERE id = ?1")
        .bind(id)
        .fetch_optional()?;
    Ok(found.is_some())
}

/// What a lease list is filtered by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Any of these states (empty: all).
    pub states: Vec<LeaseState>,
    pub pool: Option<String>,
    /// A label that must be present with this value.
    pub label: Option<(String, String)>,
    /// Only leases with an id below this (the previous page's last id).
    pub before: Option<String>,
    pub limit: usize,
}

/// A page of leases, newest first; returns one more than `limit` when there is a next page.
pub fn list(db: &mut Db, filter: &Filter) -> Result<Vec<Lease>, Error> {
    let mut sql = format!(
        "SELECT {} FROM leases WHERE 1 = 1",
        row::select_list::<Lease>()
    );
    if !filter.states.is_empty() {
        let states: Vec<String> = filter
            .states
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        // The state names are our own constants, never client text.
        sql.push_str(&format!(" AND state IN ({})", states.join(", ")));
    }
    if filter.pool.is_some() {
        sql.push_str(" AND pool = ?1");
    }
    if filter.label.is_some() {
        sql.push_str(" AND EXISTS (SELECT 1 FROM json_each(leases.labels) WHERE json_each.key = ?2 AND json_each.value = ?3)");
    }
    if filter.before.is_some() {
        sql.push_str(" AND id < ?4");
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?5");
    let (key, value) = filter.label.clone().unzip();
    Ok(db
        .query(&sql)
        .bind(&filter.pool)
        .bind(key)
        .bind(value)
        .bind(&filter.before)
        .bind(i64::try_from(filter.limit.saturating_add(1)).unwrap_or(i64::MAX))
        .fetch_all()?)
}
