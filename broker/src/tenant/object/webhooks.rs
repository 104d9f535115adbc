//! Outbound webhooks: endpoints, the outbox, and delivery.
//!
//! # How an event reaches an endpoint
//!
//! 1. A state change calls `emit`, which stores the event and, in the same transaction,
//!    one `deliveries` row per enabled endpoint that wants the event's type (the outbox). A
//!    change that does not commit leaves no row; a row that committed is never lost.
//! 2. Each endpoint has a *head*: its oldest pending delivery. After every event the object
//!    starts the heads that are due (one in flight per endpoint), as background work signed
//!    with the endpoint's secret (Standard Webhooks `v1`) and sent with a timeout, holding
//!    one of the process-wide delivery slots (each competing tenant gets a fair share).
//! 3. The outcome comes back as an event: 2xx marks the row delivered and the endpoint's next
//!    row becomes its head; anything else schedules a retry on the object's alarm with
//!    exponential backoff and jitter, until 24 h after the event, when the row is
//!    dead-lettered. 410 Gone dead-letters at once and disables the endpoint.
//!
//! One delivery in flight per endpoint, in `id` order, keeps each endpoint's events in the
//! order of their `seq`.

use std::collections::BTreeMap;

use serde_json::json;

use crate::objects::clock::rfc3339;
use crate::objects::{Ctx, Error};
use crate::tenant::{Message, Rejection, Response, valid_name};
use crate::wire::{self, DeliveryStatus, EVENT_TYPES};

use super::{Done, TenantBroker, writer};
use crate::webhooks::{Attempt, send};

/// A delivery is retried until this long after its event, then dead-lettered.
pub const DELIVERY_WINDOW_MS: i64 = 24 * 3_600_000;
/// First retry delay; doubles per attempt up to [`RETRY_MAX_MS`], with ±50 % jitter.
const RETRY_BASE_MS: i64 = 5_000;
const RETRY_MAX_MS: i64 = 3_600_000;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER_MS: i64 = 3_600_000;

/// A webhook endpoint as the object holds it.
pub(super) struct Endpoint {
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

impl TenantBroker {
    /// Loads endpoints and their heads.
    pub(super) async fn load_endpoints(
        ctx: &mut Ctx<'_, Self>,
        tenant: &str,
    ) -> Result<BTreeMap<String, Endpoint>, Error> {
        type Row = (String, String, Vec<u8>, String, bool, i64, i64);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT name, url, secret, events, enabled, created_at, updated_at FROM webhooks",
        )
        .fetch_all(ctx.db().await?)
        .await?;
        let mut endpoints = BTreeMap::new();
        for (name, url, sealed, events, enabled, created_at, updated_at) in rows {
            let secret = open_secret(ctx, tenant, &name, &sealed)?;
            let events: Vec<String> = serde_json::from_str(&events).map_err(Error::corrupt)?;
            let head = head_of(ctx, &name).await?;
            endpoints.insert(
                name,
                Endpoint {
                    fresh: None,
                    url,
                    secret,
                    events,
                    enabled,
                    created_at,
                    updated_at,
                    head,
                    in_flight: false,
                },
            );
        }
        Ok(endpoints)
    }

    /// Queues `message` for every endpoint that wants it (called by `emit`, in its
    /// transaction).
    pub(super) async fn enqueue(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        message: &Message<'_>,
    ) -> Result<(), Error> {
        if self.endpoints.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.wants(message.kind))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.enqueue_one(ctx, &name, message)?;
        }
        Ok(())
    }

    /// Queues one delivery; returns it as the API shows it.
    fn enqueue_one(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        endpoint: &str,
        message: &Message<'_>,
    ) -> Result<wire::WebhookDelivery, Error> {
        let now = ctx.now_ms();
        let msg_id = match message.seq {
            Some(seq) => format!("msg_{}_{seq}", self.name),
            None => providers::signing::new_message_id(),
        };
        let body = serde_json::to_string(message).map_err(Error::corrupt)?;
        // Ids are given here rather than by SQLite, so the row needs no read-back.
        let id = self.next_delivery_id;
        self.next_delivery_id += 1;
        let dead_at = now.saturating_add(DELIVERY_WINDOW_MS);
        let row = (
            id,
            endpoint,
            &msg_id,
            message.seq,
            &message.kind,
            &body,
            now,
            dead_at,
        );
        ctx.put(writer::DELIVERIES, &row)?;
        // Pending rows of an endpoint disabled later are dead-lettered by the prune.
        self.prunable(dead_at);
        if let Some(state) = self.endpoints.get_mut(endpoint)
            && state.head.is_none()
        {
            state.head = Some((id, now));
            state.fresh = Some((msg_id.clone(), body));
        }
        Ok(wire::WebhookDelivery {
            id,
            endpoint: endpoint.to_owned(),
            msg_id,
            event_type: message.kind.to_owned(),
            seq: message.seq,
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            next_attempt_at: Some(rfc3339(now)),
            created_at: rfc3339(now),
            finished_at: None,
        })
    }

    /// Starts every due head that is not in flight. Called after every event.
    pub(super) async fn pump_deliveries(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<(), Error> {
        let now = ctx.now_ms();
        let due: Vec<(String, i64)> = self
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
            let fresh = self.endpoints.get_mut(&name).and_then(|e| e.fresh.take());
            let row = match fresh {
                Some(row) => Some(row),
                None => {
                    sqlx::query_as("SELECT msg_id, body FROM deliveries WHERE id = ?1")
                        .bind(id)
                        .fetch_optional(ctx.db().await?)
                        .await?
                }
            };
            let Some((msg_id, body)) = row else { continue };
            let endpoint = self.endpoints.get_mut(&name).expect("BUG: listed above");
            endpoint.in_flight = true;
            let sender = ctx.env().webhooks.clone();
            let url = endpoint.url.clone();
            let secret = endpoint.secret.clone();
            let timestamp_s = now.div_euclid(1_000);
            let tenant = self.name.clone();
            ctx.spawn(async move {
                let attempt =
                    send(&sender, &tenant, &url, &secret, &msg_id, timestamp_s, body).await;
                Done::Delivered {
                    endpoint: name,
                    delivery: id,
                    attempt,
                }
            });
        }
        Ok(())
    }

    /// Dead-letters the pending deliveries of disabled endpoints whose 24 h window passed:
    /// nothing retries them while the endpoint is off.
    ///
    /// Returns whether any endpoint is disabled (some rows may have been dead-lettered).
    pub(super) fn expire_disabled(&mut self, ctx: &mut Ctx<'_, Self>) -> bool {
        let now = ctx.now_ms();
        let disabled: Vec<String> = self
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
            if let Some(endpoint) = self.endpoints.get_mut(&name) {
                endpoint.head = None;
                endpoint.fresh = None;
            }
        }
        any
    }

    /// The earliest due time of a head waiting for its retry.
    pub(super) fn next_delivery(&self) -> Option<i64> {
        self.endpoints
            .values()
            .filter(|e| e.enabled && !e.in_flight)
            .filter_map(|e| e.head.map(|(_, at)| at))
            .min()
    }

    /// Records a delivery attempt's outcome.
    pub(super) async fn delivered(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        endpoint: &str,
        id: i64,
        attempt: Attempt,
    ) -> Result<(), Error> {
        let now = ctx.now_ms();
        let Some(state) = self.endpoints.get_mut(endpoint) else {
            return Ok(());
        };
        state.in_flight = false;
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT attempts, dead_at FROM deliveries WHERE id = ?1 AND status = 'pending'",
        )
        .bind(id)
        .fetch_optional(ctx.db().await?)
        .await?;
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
                let mut delay = (RETRY_BASE_MS << (attempts - 1).clamp(0, 20)).min(RETRY_MAX_MS);
                // ±50 % jitter, so many endpoints failing together do not retry together.
                delay = delay / 2 + rand::random_range(0..=delay);
                if let Some(after) = retry_after {
                    delay = delay.max(
                        i64::try_from(after.as_millis())
                            .unwrap_or(i64::MAX)
                            .min(MAX_RETRY_AFTER_MS),
                    );
                }
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
                    self.endpoints
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
            self.prunable(now.saturating_add(super::EVENT_RETENTION_MS));
            if final_status == "dead" {
                tracing::warn!(tenant = %self.name, %endpoint, delivery = id, error = error.as_deref().unwrap_or(""), "webhook delivery dead-lettered");
            }
            if status == Some(410) {
                ctx.write("UPDATE webhooks SET enabled = 0, updated_at = ? WHERE name = ?")
                    .bind(now)
                    .bind(endpoint.to_owned());
                self.endpoints
                    .get_mut(endpoint)
                    .expect("BUG: checked above")
                    .enabled = false;
            }
            // This delivery's new status is queued, not yet readable: look past it.
            let head = head_after(ctx, endpoint, id).await?;
            self.endpoints
                .get_mut(endpoint)
                .expect("BUG: checked above")
                .head = head;
        }
        Ok(())
    }

    // ----- requests ------------------------------------------------------------------------

    pub(super) fn webhook_view(
        &self,
        name: &str,
        pending: i64,
        dead: i64,
        secret: Option<String>,
    ) -> wire::Webhook {
        let endpoint = &self.endpoints[name];
        wire::Webhook {
            name: name.to_owned(),
            url: endpoint.url.clone(),
            events: endpoint.events.clone(),
            enabled: endpoint.enabled,
            created_at: rfc3339(endpoint.created_at),
            updated_at: rfc3339(endpoint.updated_at),
            pending,
            dead,
            secret,
        }
    }

    pub(super) async fn counts(ctx: &mut Ctx<'_, Self>, name: &str) -> Result<(i64, i64), Error> {
        let (pending, dead): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(status = 'pending'), 0), COALESCE(SUM(status = 'dead'), 0) FROM deliveries WHERE endpoint = ?1",
        )
        .bind(name)
        .fetch_one(ctx.db().await?)
        .await?;
        Ok((pending, dead))
    }

    pub(super) async fn put_webhook(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        name: String,
        put: wire::WebhookPut,
    ) -> Result<Result<Response, Rejection>, Error> {
        if !valid_name(&name) {
            return Ok(Err(Rejection::Invalid("a webhook name is 1–63 characters of lowercase letters, digits and `-`, starting with a letter or digit".into())));
        }
        if put.url.len() > 2048 {
            return Ok(Err(Rejection::Invalid(
                "`url` is at most 2048 characters".into(),
            )));
        }
        if let Err(why) = ctx.env().webhooks.check_url(&put.url) {
            return Ok(Err(Rejection::Invalid(format!("webhook `url`: {why}"))));
        }
        let events = put.events.unwrap_or_default();
        if let Some(bad) = events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
            return Ok(Err(Rejection::Invalid(format!(
                "unknown event type `{}`; known: {}",
                bad.chars().take(64).collect::<String>(),
                EVENT_TYPES.join(", ")
            ))));
        }
        let existing = self.endpoints.get(&name);
        if existing.is_none()
            && let Some(why) = crate::tenant::quota::count_exceeded(
                "webhook endpoints",
                self.endpoints.len(),
                self.quota.max_webhooks,
            )
        {
            return Ok(Err(Rejection::QuotaExceeded(why)));
        }
        let (secret_text, generated) = match (&put.secret, existing) {
            (Some(secret), _) => (Some(secret.clone()), false),
            (None, Some(_)) => (None, false),
            (None, None) => (Some(providers::signing::generate_secret()), true),
        };
        let secret = match &secret_text {
            Some(text) => match providers::signing::Secret::parse(text) {
                Ok(secret) => secret,
                Err(_) => {
                    return Ok(Err(Rejection::Invalid(
                        "`secret` must be `whsec_` followed by base64".into(),
                    )));
                }
            },
            None => existing.expect("BUG: matched above").secret.clone(),
        };
        let now = ctx.now_ms();
        let created_at = existing.map_or(now, |e| e.created_at);
        let enabled = put.enabled.unwrap_or(true);
        let was_enabled = existing.is_some_and(|e| e.enabled);
        let mut head = existing.and_then(|e| e.head);
        let in_flight = existing.is_some_and(|e| e.in_flight);
        let fresh = existing.and_then(|e| e.fresh.clone());
        if existing.is_some() && enabled && !was_enabled {
            // Enabled again: start from what is still pending in storage.
            head = head_of(ctx, &name).await?;
        }
        if let Some(text) = &secret_text {
            let sealed =
                ctx.env()
                    .keys
                    .seal(&self.name, &format!("webhook:{name}"), text.as_bytes());
            ctx.write("INSERT OR REPLACE INTO webhooks (name, url, secret, events, enabled, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
                .bind(name.clone())
                .bind(put.url.clone())
                .bind(sealed)
                .bind(serde_json::to_string(&events).map_err(Error::corrupt)?)
                .bind(enabled)
                .bind(created_at)
                .bind(now);
        } else {
            ctx.write("UPDATE webhooks SET url = ?, events = ?, enabled = ?, updated_at = ? WHERE name = ?")
                .bind(put.url.clone())
                .bind(serde_json::to_string(&events).map_err(Error::corrupt)?)
                .bind(enabled)
                .bind(now)
                .bind(name.clone());
        }
        self.endpoints.insert(
            name.clone(),
            Endpoint {
                url: put.url,
                secret,
                events,
                enabled,
                created_at,
                updated_at: now,
                head,
                in_flight,
                fresh,
            },
        );
        let (pending, dead) = Self::counts(ctx, &name).await?;
        Ok(Ok(Response::Webhook(self.webhook_view(
            &name,
            pending,
            dead,
            secret_text.filter(|_| generated),
        ))))
    }

    pub(super) async fn delete_webhook(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        name: &str,
    ) -> Result<Result<Response, Rejection>, Error> {
        if self.endpoints.remove(name).is_none() {
            return Ok(Err(Rejection::NotFound(format!(
                "webhook `{name}` not found"
            ))));
        }
        ctx.write("DELETE FROM webhooks WHERE name = ?")
            .bind(name.to_owned());
        ctx.write("DELETE FROM deliveries WHERE endpoint = ?")
            .bind(name.to_owned());
        Ok(Ok(Response::Deleted))
    }

    pub(super) async fn test_webhook(
        &mut self,
        ctx: &mut Ctx<'_, Self>,
        name: &str,
    ) -> Result<Result<Response, Rejection>, Error> {
        match self.endpoints.get(name) {
            None => {
                return Ok(Err(Rejection::NotFound(format!(
                    "webhook `{name}` not found"
                ))));
            }
            Some(endpoint) if !endpoint.enabled => {
                return Ok(Err(Rejection::Invalid(format!(
                    "webhook `{name}` is disabled; enable it before testing it"
                ))));
            }
            Some(_) => {}
        }
        let data =
            serde_json::value::to_raw_value(&json!({ "tenant": self.name, "endpoint": name }))
                .map_err(Error::corrupt)?;
        let message = Message {
            kind: "webhook.test",
            timestamp: rfc3339(ctx.now_ms()),
            seq: None,
            data: &data,
        };
        let delivery = self.enqueue_one(ctx, name, &message)?;
        Ok(Ok(Response::Delivery(delivery)))
    }

    pub(super) async fn list_deliveries(
        &self,
        ctx: &mut Ctx<'_, Self>,
        name: &str,
        status: Option<DeliveryStatus>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Result<Response, Rejection>, Error> {
        if !self.endpoints.contains_key(name) {
            return Ok(Err(Rejection::NotFound(format!(
                "webhook `{name}` not found"
            ))));
        }
        let status = status.map(|s| match s {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        });
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE endpoint = ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC LIMIT ?4"
        ))
        .bind(name)
        .bind(status)
        .bind(before)
        .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
        .fetch_all(ctx.db().await?)
        .await?;
        let mut items: Vec<wire::WebhookDelivery> = rows
            .into_iter()
            .map(DeliveryRow::into_wire)
            .collect::<Result<_, _>>()?;
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|d| d.id.to_string())
        } else {
            None
        };
        Ok(Ok(Response::Deliveries(wire::Page { items, next_cursor })))
    }
}

/// The oldest pending delivery of an endpoint.
/// The oldest pending delivery of an endpoint.
async fn head_of(
    ctx: &mut Ctx<'_, TenantBroker>,
    endpoint: &str,
) -> Result<Option<(i64, i64)>, Error> {
    head_after(ctx, endpoint, 0).await
}

/// The oldest pending delivery of an endpoint with an id above `after`.
async fn head_after(
    ctx: &mut Ctx<'_, TenantBroker>,
    endpoint: &str,
    after: i64,
) -> Result<Option<(i64, i64)>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, next_attempt_at FROM deliveries WHERE endpoint = ?1 AND status = 'pending' AND id > ?2 ORDER BY id LIMIT 1",
    )
    .bind(endpoint)
    .bind(after)
    .fetch_optional(ctx.db().await?)
    .await?)
}

fn open_secret(
    ctx: &Ctx<'_, TenantBroker>,
    tenant: &str,
    name: &str,
    sealed: &[u8],
) -> Result<providers::signing::Secret, Error> {
    let plaintext = ctx
        .env()
        .keys
        .open(tenant, &format!("webhook:{name}"), sealed)
        .map_err(|err| Error::Other(anyhow::anyhow!("webhook `{name}`: {err}")))?;
    let text = String::from_utf8(plaintext).map_err(Error::corrupt)?;
    providers::signing::Secret::parse(&text).map_err(Error::corrupt)
}

const DELIVERY_COLUMNS: &str = "id, endpoint, msg_id, event_type, event_seq, status, attempts, last_status, last_error, next_attempt_at, created_at, finished_at";

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: i64,
    endpoint: String,
    msg_id: String,
    event_type: String,
    event_seq: Option<i64>,
    status: String,
    attempts: i64,
    last_status: Option<i64>,
    last_error: Option<String>,
    next_attempt_at: i64,
    created_at: i64,
    finished_at: Option<i64>,
}

impl DeliveryRow {
    fn into_wire(self) -> Result<wire::WebhookDelivery, Error> {
        let status = match self.status.as_str() {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            "dead" => DeliveryStatus::Dead,
            other => return Err(Error::corrupt_value("delivery status", other)),
        };
        Ok(wire::WebhookDelivery {
            id: self.id,
            endpoint: self.endpoint,
            msg_id: self.msg_id,
            event_type: self.event_type,
            seq: self.event_seq,
            status,
            attempts: self.attempts,
            last_status: self.last_status,
            last_error: self.last_error,
            next_attempt_at: (status == DeliveryStatus::Pending)
                .then(|| rfc3339(self.next_attempt_at)),
            created_at: rfc3339(self.created_at),
            finished_at: self.finished_at.map(rfc3339),
        })
    }
}
