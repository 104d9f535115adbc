//! Outbound webhooks: the endpoints, the outbox, and delivery.
//!
//! # How an event reaches an endpoint
//!
//! 1. A state change calls `effects::emit`, which stores the event and, in the same
//!    transaction, one `deliveries` row per enabled endpoint that wants the event's type (the
//!    outbox). A change that does not commit leaves no row; a row that committed is never lost.
//! 2. Each endpoint has a *head*: its oldest pending delivery. After every event the object
//!    starts the heads that are due ([`pump`]; one in flight per endpoint), as background work
//!    signed with the endpoint's secret (Standard Webhooks `v1`) and sent with a timeout,
//!    under the process-wide fair delivery slots.
//! 3. The outcome comes back as an event ([`delivered`]): 2xx marks the row delivered and the
//!    endpoint's next row becomes its head; anything else schedules a retry on the object's
//!    alarm with exponential backoff and jitter, until 24 h after the event, when the row is
//!    dead-lettered. 410 Gone dead-letters at once and disables the endpoint.
//!
//! One delivery in flight per endpoint, in `id` order, keeps each endpoint's events in the
//! order of their `seq`.

use std::collections::BTreeMap;

use crate::objects::Error;
use crate::objects::clock::rfc3339;
use crate::objects::sqlite::{FromRow, Json, Row, SqliteError};
use crate::webhooks::{Attempt, send};
use crate::wire::{self, DeliveryStatus};

use super::broker::{Completion, TenantBroker, Writer};
use super::effects::EVENT_RETENTION_MS;
use super::event::EventBody;
use super::row::{self, AsRow, table};
use super::{Ctx, retry};

/// A delivery is retried until this long after its event, then dead-lettered.
pub const DELIVERY_WINDOW_MS: i64 = 24 * 3_600_000;
/// First retry delay; doubles per attempt up to [`RETRY_MAX_MS`], with ±50 % jitter.
const RETRY_BASE_MS: i64 = 5_000;
const RETRY_MAX_MS: i64 = 3_600_000;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER_MS: i64 = 3_600_000;

table! {
    /// One delivery of one event to one endpoint.
    #[derive(Clone, Debug)]
    pub struct Delivery in "deliveries" {
        pub id: i64,
        pub endpoint: String,
        /// The `webhook-id` header: the same on every attempt.
        pub msg_id: String,
        pub event_seq: Option<i64>,
        pub event_type: String,
        /// The exact bytes sent (signed).
        pub body: String,
        pub status: DeliveryStatus,
        pub attempts: i64,
        pub last_status: Option<i64>,
        pub last_error: Option<String>,
        pub next_attempt_at: i64,
        pub created_at: i64,
        pub dead_at: i64,
        pub finished_at: Option<i64>,
    }
}

impl Delivery {
    /// The delivery as the API shows it.
    pub fn to_wire(&self) -> wire::WebhookDelivery {
        wire::WebhookDelivery {
            id: self.id,
            endpoint: self.endpoint.clone(),
            msg_id: self.msg_id.clone(),
            event_type: self.event_type.clone(),
            seq: self.event_seq,
            status: self.status,
            attempts: self.attempts,
            last_status: self.last_status,
            last_error: self.last_error.clone(),
            next_attempt_at: (self.status == DeliveryStatus::Pending)
                .then(|| rfc3339(self.next_attempt_at)),
            created_at: rfc3339(self.created_at),
            finished_at: self.finished_at.map(rfc3339),
        }
    }
}

/// A webhook endpoint's row, as read ([`Outbox::ENDPOINTS_SQL`]'s columns, in order).
pub struct EndpointRow {
    name: String,
    url: String,
    secret: Vec<u8>,
    events: Vec<String>,
    enabled: bool,
    created_at: i64,
    updated_at: i64,
}

impl FromRow for EndpointRow {
    fn from_row(row: &Row<'_>) -> Result<Self, SqliteError> {
        Ok(EndpointRow {
            name: row.get(0)?,
            url: row.get(1)?,
            secret: row.get(2)?,
            events: row.get::<Json<Vec<String>>>(3)?.0,
            enabled: row.get(4)?,
            created_at: row.get(5)?,
            updated_at: row.get(6)?,
        })
    }
}

/// A webhook endpoint as the object holds it.
pub struct Endpoint {
    pub url: String,
    pub secret: providers::signing::Secret,
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// The oldest pending delivery: `(id, next attempt)`.
    pub head: Option<(i64, i64)>,
    pub in_flight: bool,
    /// `(msg_id, body)` of a head queued by the current event, not yet readable from the
    /// database.
    pub fresh: Option<(String, String)>,
}

impl Endpoint {
    fn wants(&self, kind: &str) -> bool {
        self.enabled && (self.events.is_empty() || self.events.iter().any(|e| e == kind))
    }
}

/// The tenant's endpoints and the id the next delivery gets.
pub struct Outbox {
    pub endpoints: BTreeMap<String, Endpoint>,
    next_delivery_id: i64,
}

impl Outbox {
    /// The read of the endpoints, for [`Outbox::from_rows`].
    pub const ENDPOINTS_SQL: &str =
        "SELECT name, url, secret, events, enabled, created_at, updated_at FROM webhooks";

    /// The read of the last delivery id, one value, for [`Outbox::from_rows`]. The deliveries
    /// table uses AUTOINCREMENT: ids are never reused, also after prunes.
    pub const LAST_DELIVERY_SQL: &str =
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'), 0),
                    COALESCE((SELECT MAX(id) FROM deliveries), 0))";

    /// The endpoints ([`Outbox::ENDPOINTS_SQL`]'s rows) and the next delivery id after `last`
    /// ([`Outbox::LAST_DELIVERY_SQL`]'s value); each endpoint's head is read here (one read
    /// per endpoint: most tenants have none or few).
    pub async fn from_rows(
        ctx: &mut Ctx<'_>,
        tenant: &str,
        rows: Vec<EndpointRow>,
        last: i64,
    ) -> Result<Outbox, Error> {
        let mut endpoints = BTreeMap::new();
        for row in rows {
            let secret = open_secret(ctx, tenant, &row.name, &row.secret)?;
            let head = head_after(ctx, &row.name, 0).await?;
            endpoints.insert(
                row.name,
                Endpoint {
                    fresh: None,
                    url: row.url,
                    secret,
                    events: row.events,
                    enabled: row.enabled,
                    created_at: row.created_at,
                    updated_at: row.updated_at,
                    head,
                    in_flight: false,
                },
            );
        }
        Ok(Outbox {
            endpoints,
            next_delivery_id: last.saturating_add(1),
        })
    }

    /// The earliest due time of a head waiting for its retry.
    pub fn next_due(&self) -> Option<i64> {
        self.endpoints
            .values()
            .filter(|e| e.enabled && !e.in_flight)
            .filter_map(|e| e.head.map(|(_, at)| at))
            .min()
    }
}

/// Queues `body` for every endpoint that wants it (called by `emit`, in its transaction).
pub fn enqueue(t: &mut TenantBroker, ctx: &mut Ctx<'_>, body: &EventBody<'_>) -> Result<(), Error> {
    if t.outbox.endpoints.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = t
        .outbox
        .endpoints
        .iter()
        .filter(|(_, e)| e.wants(body.kind))
        .map(|(n, _)| n.clone())
        .collect();
    for name in names {
        enqueue_one(t, ctx, &name, body)?;
    }
    Ok(())
}

/// Queues one delivery; returns it.
pub fn enqueue_one(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    endpoint: &str,
    body: &EventBody<'_>,
) -> Result<Delivery, Error> {
    let now = ctx.now_ms();
    let msg_id = match body.seq {
        Some(seq) => format!("msg_{}_{seq}", t.name),
        None => providers::signing::new_message_id(),
    };
    let text = serde_json::to_string(body).map_err(Error::encode)?;
    // Ids are given here rather than by SQLite, so the row needs no read-back.
    let id = t.outbox.next_delivery_id;
    t.outbox.next_delivery_id = id.saturating_add(1);
    let dead_at = now.saturating_add(DELIVERY_WINDOW_MS);
    let delivery = Delivery {
        id,
        endpoint: endpoint.to_owned(),
        msg_id,
        event_seq: body.seq,
        event_type: body.kind.to_owned(),
        body: text,
        status: DeliveryStatus::Pending,
        attempts: 0,
        last_status: None,
        last_error: None,
        next_attempt_at: now,
        created_at: now,
        dead_at,
        finished_at: None,
    };
    Writer::Deliveries.put(ctx, &AsRow(&delivery))?;
    // Pending rows of an endpoint disabled later are dead-lettered by the prune.
    t.upkeep.prunable(dead_at);
    if let Some(state) = t.outbox.endpoints.get_mut(endpoint)
        && state.head.is_none()
    {
        state.head = Some((id, now));
        state.fresh = Some((delivery.msg_id.clone(), delivery.body.clone()));
    }
    Ok(delivery)
}

/// Starts every due head that is not in flight. Called after every event.
pub async fn pump(t: &mut TenantBroker, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let now = ctx.now_ms();
    let due: Vec<(String, i64)> = t
        .outbox
        .endpoints
        .iter()
        .filter(|(_, e)| e.enabled && !e.in_flight)
        .filter_map(|(name, e)| {
            e.head
                .filter(|(_, at)| *at <= now)
                .map(|(id, _)| (name.clone(), id))
        })
        .collect();
    for (name, id) in due {
        // A head queued by this very event is not readable yet: its body is in memory.
        let fresh = t
            .outbox
            .endpoints
            .get_mut(&name)
            .and_then(|e| e.fresh.take());
        let row = match fresh {
            Some(row) => Some(row),
            None => ctx
                .db()?
                .query("SELECT msg_id, body FROM deliveries WHERE id = ?1")
                .bind(id)
                .fetch_optional()?,
        };
        let Some((msg_id, body)) = row else { continue };
        let endpoint = t
            .outbox
            .endpoints
            .get_mut(&name)
            .expect("BUG: listed above");
        endpoint.in_flight = true;
        let sender = ctx.env().webhooks.clone();
        let url = endpoint.url.clone();
        let secret = endpoint.secret.clone();
        let timestamp_s = now.div_euclid(1_000);
        let tenant = t.name.clone();
        let families = ctx.env().metrics.families.clone();
        ctx.spawn(async move {
            let started = std::time::Instant::now();
            let attempt = send(&sender, &tenant, &url, &secret, &msg_id, timestamp_s, body).await;
            let status = match &attempt {
                crate::webhooks::Attempt::Answered { status, .. } => Some(*status),
                crate::webhooks::Attempt::Failed(_) => None,
            };
            families.webhook_delivery(status, started.elapsed());
            Completion::Delivered {
                endpoint: name,
                delivery: id,
                attempt,
            }
        });
    }
    Ok(())
}

/// Dead-letters the pending deliveries of disabled endpoints whose 24 h window passed:
/// nothing retries them while the endpoint is off. Returns whether any endpoint is disabled
/// (some rows may have been dead-lettered).
pub fn expire_disabled(t: &mut TenantBroker, ctx: &mut Ctx<'_>) -> bool {
    let now = ctx.now_ms();
    let disabled: Vec<String> = t
        .outbox
        .endpoints
        .iter()
        .filter(|(_, e)| !e.enabled)
        .map(|(name, _)| name.clone())
        .collect();
    let any = !disabled.is_empty();
    for name in disabled {
        ctx.write(
            "UPDATE deliveries SET status = 'dead', finished_at = ?,
                last_error = 'the endpoint was disabled for the whole 24 h delivery window'
             WHERE endpoint = ? AND status = 'pending' AND dead_at < ?",
        )
        .bind(now)
        .bind(name.clone())
        .bind(now);
        // Recomputed from storage when the endpoint is enabled again.
        if let Some(endpoint) = t.outbox.endpoints.get_mut(&name) {
            endpoint.head = None;
            endpoint.fresh = None;
        }
    }
    any
}

/// Records a delivery attempt's outcome.
pub async fn delivered(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    endpoint: &str,
    id: i64,
    attempt: Attempt,
) -> Result<(), Error> {
    let now = ctx.now_ms();
    let Some(state) = t.outbox.endpoints.get_mut(endpoint) else {
        return Ok(());
    };
    state.in_flight = false;
    let row: Option<(i64, i64)> = ctx
        .db()?
        .query("SELECT attempts, dead_at FROM deliveries WHERE id = ?1 AND status = 'pending'")
        .bind(id)
        .fetch_optional()?;
    let Some((attempts, dead_at)) = row else {
        return Ok(());
    };
    let attempts = attempts.saturating_add(1);
    let (status, error, retry_after) = match &attempt {
        Attempt::Answered {
            status,
            retry_after,
        } => (Some(i64::from(*status)), None, *retry_after),
        Attempt::Failed(why) => (None, Some(why.clone()), None),
    };
    let finished = match attempt {
        Attempt::Answered {
            status: 200..=299, ..
        } => Some(("delivered", None)),
        Attempt::Answered { status: 410, .. } => Some((
            "dead",
            Some("the endpoint answered 410 Gone; it is disabled".to_owned()),
        )),
        _ => {
            let retry_after = retry_after.map(|after| {
                after.min(std::time::Duration::from_millis(
                    u64::try_from(MAX_RETRY_AFTER_MS).unwrap_or(u64::MAX),
                ))
            });
            let delay = retry::backoff(
                RETRY_BASE_MS,
                RETRY_MAX_MS,
                attempts,
                retry_after,
                retry::Jitter::Half,
            );
            if now.saturating_add(delay) > dead_at {
                Some((
                    "dead",
                    Some(format!("gave up after {attempts} attempts over 24 h")),
                ))
            } else {
                let error = error
                    .clone()
                    .or_else(|| status.map(|s| format!("the endpoint answered {s}")));
                ctx.write("UPDATE deliveries SET attempts = ?, last_status = ?, last_error = ?, next_attempt_at = ? WHERE id = ?")
                    .bind(attempts)
                    .bind(status)
                    .bind(error)
                    .bind(now.saturating_add(delay))
                    .bind(id);
                t.outbox
                    .endpoints
                    .get_mut(endpoint)
                    .expect("BUG: checked above")
                    .head = Some((id, now.saturating_add(delay)));
                None
            }
        }
    };
    if let Some((final_status, note)) = finished {
        let error = note.or(error);
        ctx.write("UPDATE deliveries SET status = ?, attempts = ?, last_status = ?, last_error = ?, finished_at = ? WHERE id = ?")
            .bind(final_status)
            .bind(attempts)
            .bind(status)
            .bind(error.clone())
            .bind(now)
            .bind(id);
        t.upkeep.prunable(now.saturating_add(EVENT_RETENTION_MS));
        if final_status == "dead" {
            tracing::warn!(tenant = %t.name, %endpoint, delivery = id, error = error.as_deref().unwrap_or(""), "webhook delivery dead-lettered");
        }
        if status == Some(410) {
            ctx.write("UPDATE webhooks SET enabled = 0, updated_at = ? WHERE name = ?")
                .bind(now)
                .bind(endpoint.to_owned());
            t.outbox
                .endpoints
                .get_mut(endpoint)
                .expect("BUG: checked above")
                .enabled = false;
        }
        // This delivery's new status is queued, not yet readable: look past it.
        let head = head_after(ctx, endpoint, id).await?;
        t.outbox
            .endpoints
            .get_mut(endpoint)
            .expect("BUG: checked above")
            .head = head;
    }
    Ok(())
}

/// Pending and dead deliveries of an endpoint.
pub async fn counts(ctx: &mut Ctx<'_>, name: &str) -> Result<(i64, i64), Error> {
    let (pending, dead): (i64, i64) = ctx.db()?.query(
        "SELECT COALESCE(SUM(status = 'pending'), 0), COALESCE(SUM(status = 'dead'), 0) FROM deliveries WHERE endpoint = ?1",
    )
    .bind(name)
    .fetch_one()?;
    Ok((pending, dead))
}

/// A page of an endpoint's deliveries, newest first.
pub async fn page(
    ctx: &mut Ctx<'_>,
    name: &str,
    status: Option<DeliveryStatus>,
    before: Option<i64>,
    limit: usize,
) -> Result<wire::Page<wire::WebhookDelivery>, Error> {
    let rows: Vec<Delivery> = ctx.db()?.query(&format!(
        "SELECT {} FROM deliveries WHERE endpoint = ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR id < ?3)
         ORDER BY id DESC LIMIT ?4",
        row::select_list::<Delivery>()
    ))
    .bind(name)
    .bind(status.map(DeliveryStatus::as_str))
    .bind(before)
    .bind(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX))
    .fetch_all()?;
    let mut items: Vec<wire::WebhookDelivery> = rows.iter().map(Delivery::to_wire).collect();
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|d| d.id.to_string())
    } else {
        None
    };
    Ok(wire::Page { items, next_cursor })
}

/// The oldest pending delivery of an endpoint with an id above `after`.
pub async fn head_after(
    ctx: &mut Ctx<'_>,
    endpoint: &str,
    after: i64,
) -> Result<Option<(i64, i64)>, Error> {
    Ok(ctx.db()?.query(
        "SELECT id, next_attempt_at FROM deliveries WHERE endpoint = ?1 AND status = 'pending' AND id > ?2 ORDER BY id LIMIT 1",
    )
    .bind(endpoint)
    .bind(after)
    .fetch_optional()?)
}

/// The sealing name of an endpoint's secret (bound with the tenant).
pub fn secret_name(endpoint: &str) -> String {
    format!("webhook:{endpoint}")
}

fn open_secret(
    ctx: &Ctx<'_>,
    tenant: &str,
    name: &str,
    sealed: &[u8],
) -> Result<providers::signing::Secret, Error> {
    let plaintext = ctx
        .env()
        .keys
        .open(tenant, &secret_name(name), sealed)
        .map_err(|err| Error::Other(anyhow::anyhow!("webhook `{name}`: {err}")))?;
    let text = String::from_utf8(plaintext).map_err(Error::corrupt)?;
    providers::signing::Secret::parse(&text).map_err(Error::corrupt)
}
