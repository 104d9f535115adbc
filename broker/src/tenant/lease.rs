//! A lease as the tenant object holds it, and its row in the `leases` table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;

use super::object::{TenantBroker, writer};
use crate::objects::clock::rfc3339;
use crate::objects::{Ctx, Error};
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
}

/// Which provider call is in flight for a lease. Not stored: after a restart nothing is in
/// flight, and the object re-issues what its stored state calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Destroy,
}

/// One lease.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    pub id: String,
    pub pool: String,
    pub state: LeaseState,
    pub created_at: i64,
    pub granted_at: Option<i64>,
    pub ready_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub ttl_s: i64,
    pub idle_timeout_s: Option<i64>,
    pub last_heartbeat_at: Option<i64>,
    pub wait_until: Option<i64>,
    pub labels: BTreeMap<String, String>,
    pub end_reason: Option<EndReason>,
    pub provider: String,
    pub spec: Spec,
    pub runner_id: Option<String>,
    pub runner_address: Option<String>,
    pub runner_metadata: BTreeMap<String, String>,
    pub runner_destroyed_at: Option<i64>,
    pub hourly_price_micros: i64,
    pub reserved_micros: i64,
    pub charged_micros: i64,
    pub provider_attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<i64>,
    /// The provider call in flight, and its deadline (not stored).
    pub op: Option<(Op, i64)>,
}

impl Lease {
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
        }
    }
}

/// A `leases` row as stored.
#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    pool: String,
    state: String,
    created_at: i64,
    granted_at: Option<i64>,
    ready_at: Option<i64>,
    ended_at: Option<i64>,
    expires_at: Option<i64>,
    ttl_s: i64,
    idle_timeout_s: Option<i64>,
    last_heartbeat_at: Option<i64>,
    wait_until: Option<i64>,
    labels: String,
    end_reason: Option<String>,
    provider: String,
    spec: String,
    runner_id: Option<String>,
    runner_address: Option<String>,
    runner_metadata: String,
    runner_destroyed_at: Option<i64>,
    hourly_price_micros: i64,
    reserved_micros: i64,
    charged_micros: i64,
    provider_attempts: i64,
    last_error: Option<String>,
    next_attempt_at: Option<i64>,
}

impl TryFrom<Row> for Lease {
    type Error = Error;
    fn try_from(row: Row) -> Result<Lease, Error> {
        let state = LeaseState::parse(&row.state)
            .ok_or_else(|| Error::corrupt_value("lease state", &row.state))?;
        let end_reason = match row.end_reason {
            Some(reason) => Some(
                EndReason::parse(&reason)
                    .ok_or_else(|| Error::corrupt_value("end reason", &reason))?,
            ),
            None => None,
        };
        Ok(Lease {
            id: row.id,
            pool: row.pool,
            state,
            created_at: row.created_at,
            granted_at: row.granted_at,
            ready_at: row.ready_at,
            ended_at: row.ended_at,
            expires_at: row.expires_at,
            ttl_s: row.ttl_s,
            idle_timeout_s: row.idle_timeout_s,
            last_heartbeat_at: row.last_heartbeat_at,
            wait_until: row.wait_until,
            labels: serde_json::from_str(&row.labels).map_err(Error::corrupt)?,
            end_reason,
            provider: row.provider,
            spec: serde_json::from_str(&row.spec).map_err(Error::corrupt)?,
            runner_id: row.runner_id,
            runner_address: row.runner_address,
            runner_metadata: serde_json::from_str(&row.runner_metadata).map_err(Error::corrupt)?,
            runner_destroyed_at: row.runner_destroyed_at,
            hourly_price_micros: row.hourly_price_micros,
            reserved_micros: row.reserved_micros,
            charged_micros: row.charged_micros,
            provider_attempts: row.provider_attempts,
            last_error: row.last_error,
            next_attempt_at: row.next_attempt_at,
            op: None,
        })
    }
}

/// The batched writer of whole leases (insert or replace), one JSON array per row in the
/// column order of [`Put`]'s serialization. Nested JSON columns are read with `->` (their JSON
/// text), scalars with `->>`; `ORDER BY key` keeps array order, so the last save of a lease in
/// a batch wins. The rows are materialized once (read straight from `json_each`, each of the
/// 26 `->>` would render the row as text again).
pub(crate) const WRITER: &str =
    "WITH r(v) AS MATERIALIZED (SELECT value FROM json_each(?) ORDER BY key)
    INSERT OR REPLACE INTO leases (id, pool, state, created_at,
        granted_at, ready_at, ended_at, expires_at, ttl_s, idle_timeout_s, last_heartbeat_at,
        wait_until, labels, end_reason, provider, spec, runner_id, runner_address,
        runner_metadata, runner_destroyed_at, hourly_price_micros, reserved_micros,
        charged_micros, provider_attempts, last_error, next_attempt_at)
    SELECT v ->> 0, v ->> 1, v ->> 2, v ->> 3, v ->> 4, v ->> 5,
        v ->> 6, v ->> 7, v ->> 8, v ->> 9, v ->> 10, v ->> 11,
        v -> 12, v ->> 13, v ->> 14, v -> 15, v ->> 16, v ->> 17,
        v -> 18, v ->> 19, v ->> 20, v ->> 21, v ->> 22, v ->> 23,
        v ->> 24, v ->> 25
    FROM r";

/// A lease as one row of [`WRITER`]: a JSON array in column order.
struct Put<'a>(&'a Lease);

impl Serialize for Put<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple as _;
        let lease = self.0;
        let mut row = serializer.serialize_tuple(26)?;
        row.serialize_element(&lease.id)?;
        row.serialize_element(&lease.pool)?;
        row.serialize_element(lease.state.as_str())?;
        row.serialize_element(&lease.created_at)?;
        row.serialize_element(&lease.granted_at)?;
        row.serialize_element(&lease.ready_at)?;
        row.serialize_element(&lease.ended_at)?;
        row.serialize_element(&lease.expires_at)?;
        row.serialize_element(&lease.ttl_s)?;
        row.serialize_element(&lease.idle_timeout_s)?;
        row.serialize_element(&lease.last_heartbeat_at)?;
        row.serialize_element(&lease.wait_until)?;
        row.serialize_element(&lease.labels)?;
        row.serialize_element(&lease.end_reason.map(EndReason::as_str))?;
        row.serialize_element(&lease.provider)?;
        row.serialize_element(&lease.spec)?;
        row.serialize_element(&lease.runner_id)?;
        row.serialize_element(&lease.runner_address)?;
        row.serialize_element(&lease.runner_metadata)?;
        row.serialize_element(&lease.runner_destroyed_at)?;
        row.serialize_element(&lease.hourly_price_micros)?;
        row.serialize_element(&lease.reserved_micros)?;
        row.serialize_element(&lease.charged_micros)?;
        row.serialize_element(&lease.provider_attempts)?;
        row.serialize_element(&lease.last_error)?;
        row.serialize_element(&lease.next_attempt_at)?;
        row.end()
    }
}

/// Queues the write of the whole lease (insert or replace) in the event.
pub fn save(ctx: &mut Ctx<'_, TenantBroker>, lease: &Lease) -> Result<(), Error> {
    ctx.put(writer::LEASES, &Put(lease))
}

const COLUMNS: &str =
    "id, pool, state, created_at, granted_at, ready_at, ended_at, expires_at, ttl_s,
    idle_timeout_s, last_heartbeat_at, wait_until, labels, end_reason, provider, spec, runner_id,
    runner_address, runner_metadata, runner_destroyed_at, hourly_price_micros, reserved_micros,
    charged_micros, provider_attempts, last_error, next_attempt_at";

/// Every lease not in a terminal state.
pub async fn load_open(db: &mut SqliteConnection) -> Result<Vec<Lease>, Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM leases WHERE state IN ('queued', 'provisioning', 'ready', 'releasing') ORDER BY id"
    );
    let rows: Vec<Row> = sqlx::query_as(&sql).fetch_all(db).await?;
    rows.into_iter().map(Lease::try_from).collect()
}

/// One lease by id.
pub async fn fetch(db: &mut SqliteConnection, id: &str) -> Result<Option<Lease>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM leases WHERE id = ?1");
    let row: Option<Row> = sqlx::query_as(&sql).bind(id).fetch_optional(db).await?;
    row.map(Lease::try_from).transpose()
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
pub async fn list(db: &mut SqliteConnection, filter: &Filter) -> Result<Vec<Lease>, Error> {
    let mut sql = format!("SELECT {COLUMNS} FROM leases WHERE 1 = 1");
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
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(&filter.pool)
        .bind(key)
        .bind(value)
        .bind(&filter.before)
        .bind(i64::try_from(filter.limit + 1).unwrap_or(i64::MAX))
        .fetch_all(db)
        .await?;
    rows.into_iter().map(Lease::try_from).collect()
}
