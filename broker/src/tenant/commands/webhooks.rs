//! Webhook endpoints: configuring them, testing one, and reading their deliveries. The outbox
//! itself (queueing, sending, retrying) is `outbox`.

use serde_json::json;

use crate::objects::clock::rfc3339;
use crate::objects::{Error, Message};
use crate::wire::{self, DeliveryStatus, EVENT_TYPES};

use super::super::broker::TenantBroker;
use super::super::event::EventBody;
use super::super::outbox::{self, Endpoint};
use super::super::rejection::{Failure, Rejection};
use super::super::{Ctx, quota, valid_name};
use super::name_rule;

/// Creates or replaces a webhook endpoint.
#[derive(Debug)]
pub struct PutWebhook {
    pub name: String,
    pub webhook: wire::WebhookPut,
}

impl Message for PutWebhook {
    type Reply = Result<wire::Webhook, Rejection>;
}

/// One webhook endpoint.
#[derive(Debug)]
pub struct GetWebhook {
    pub name: String,
}

impl Message for GetWebhook {
    type Reply = Result<wire::Webhook, Rejection>;
    const READ_ONLY: bool = true;
}

/// Every webhook endpoint.
#[derive(Debug)]
pub struct ListWebhooks;

impl Message for ListWebhooks {
    type Reply = Result<Vec<wire::Webhook>, Rejection>;
    const READ_ONLY: bool = true;
}

/// Deletes a webhook endpoint and its deliveries.
#[derive(Debug)]
pub struct DeleteWebhook {
    pub name: String,
}

impl Message for DeleteWebhook {
    type Reply = Result<(), Rejection>;
}

/// Queues a `webhook.test` delivery to one endpoint.
#[derive(Debug)]
pub struct TestWebhook {
    pub name: String,
}

impl Message for TestWebhook {
    type Reply = Result<wire::WebhookDelivery, Rejection>;
}

/// A page of an endpoint's deliveries, newest first.
#[derive(Debug)]
pub struct ListDeliveries {
    pub name: String,
    pub status: Option<DeliveryStatus>,
    pub before: Option<i64>,
    pub limit: usize,
}

impl Message for ListDeliveries {
    type Reply = Result<wire::Page<wire::WebhookDelivery>, Rejection>;
    const READ_ONLY: bool = true;
}

pub async fn put(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    put: PutWebhook,
) -> Result<wire::Webhook, Failure> {
    let PutWebhook { name, webhook: put } = put;
    if !valid_name(&name) {
        return Err(Rejection::Invalid(name_rule("webhook")).into());
    }
    crate::wire::bounds::WEBHOOK_URL
        .check_str("url", &put.url)
        .map_err(Rejection::Invalid)?;
    if let Err(why) = ctx.env().webhooks.check_url(&put.url) {
        return Err(Rejection::Invalid(format!("webhook `url`: {why}")).into());
    }
    let events = put.events.unwrap_or_default();
    if let Some(bad) = events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
        return Err(Rejection::Invalid(format!(
            "unknown event type `{}`; known: {}",
            bad.chars().take(64).collect::<String>(),
            EVENT_TYPES.join(", ")
        ))
        .into());
    }
    let existing = t.outbox.endpoints.get(&name);
    if existing.is_none()
        && let Some(why) = quota::count_exceeded(
            "webhook endpoints",
            t.outbox.endpoints.len(),
            t.quota.max_webhooks,
        )
    {
        return Err(Rejection::QuotaExceeded(why).into());
    }
    let (secret_text, generated) = match (&put.secret, existing) {
        (Some(secret), _) => (Some(secret.clone()), false),
        (None, Some(_)) => (None, false),
        (None, None) => (Some(providers::signing::generate_secret()), true),
    };
    let secret = match &secret_text {
        Some(text) => providers::signing::Secret::parse(text).map_err(|_| {
            Rejection::Invalid("`secret` must be `whsec_` followed by base64".into())
        })?,
        None => existing.expect("BUG: matched above").secret.clone(),
    };
    let now = ctx.now_ms();
    let created_at = existing.map_or(now, |e| e.created_at);
    let enabled = put.enabled.unwrap_or(true);
    let was_enabled = existing.is_some_and(|e| e.enabled);
    let mut head = existing.and_then(|e| e.head);
    let in_flight = existing.is_some_and(|e| e.in_flight);
    let fresh = existing.and_then(|e| e.fresh.clone());
    let reenabled = existing.is_some() && enabled && !was_enabled;
    if reenabled {
        // Enabled again: start from what is still pending in storage.
        head = outbox::head_after(ctx, &name, 0).await?;
    }
    let events_json = serde_json::to_string(&events).map_err(Error::encode)?;
    if let Some(text) = &secret_text {
        let sealed = ctx
            .env()
            .keys
            .seal(&t.name, &outbox::secret_name(&name), text.as_bytes());
        ctx.write("INSERT OR REPLACE INTO webhooks (name, url, secret, events, enabled, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(name.clone())
            .bind(put.url.clone())
            .bind(sealed)
            .bind(events_json)
            .bind(enabled)
            .bind(created_at)
            .bind(now);
    } else {
        ctx.write(
            "UPDATE webhooks SET url = ?, events = ?, enabled = ?, updated_at = ? WHERE name = ?",
        )
        .bind(put.url.clone())
        .bind(events_json)
        .bind(enabled)
        .bind(now)
        .bind(name.clone());
    }
    t.outbox.endpoints.insert(
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
    let (pending, dead) = outbox::counts(ctx, &name).await?;
    Ok(view(
        t,
        &name,
        pending,
        dead,
        secret_text.filter(|_| generated),
    ))
}

pub async fn get(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    get: GetWebhook,
) -> Result<wire::Webhook, Failure> {
    if !t.outbox.endpoints.contains_key(&get.name) {
        return Err(not_found(&get.name).into());
    }
    let (pending, dead) = outbox::counts(ctx, &get.name).await?;
    Ok(view(t, &get.name, pending, dead, None))
}

pub async fn list(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    _: ListWebhooks,
) -> Result<Vec<wire::Webhook>, Failure> {
    let names: Vec<String> = t.outbox.endpoints.keys().cloned().collect();
    let mut items = Vec::with_capacity(names.len());
    for name in names {
        let (pending, dead) = outbox::counts(ctx, &name).await?;
        items.push(view(t, &name, pending, dead, None));
    }
    Ok(items)
}

pub async fn delete(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    delete: DeleteWebhook,
) -> Result<(), Failure> {
    if t.outbox.endpoints.remove(&delete.name).is_none() {
        return Err(not_found(&delete.name).into());
    }
    ctx.write("DELETE FROM webhooks WHERE name = ?")
        .bind(delete.name.clone());
    ctx.write("DELETE FROM deliveries WHERE endpoint = ?")
        .bind(delete.name);
    Ok(())
}

pub async fn test(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    test: TestWebhook,
) -> Result<wire::WebhookDelivery, Failure> {
    match t.outbox.endpoints.get(&test.name) {
        None => return Err(not_found(&test.name).into()),
        Some(endpoint) if !endpoint.enabled => {
            return Err(Rejection::Invalid(format!(
                "webhook `{}` is disabled; enable it before testing it",
                test.name
            ))
            .into());
        }
        Some(_) => {}
    }
    let data = serde_json::value::to_raw_value(&json!({ "tenant": t.name, "endpoint": test.name }))
        .map_err(Error::encode)?;
    let body = EventBody {
        kind: "webhook.test",
        timestamp: rfc3339(ctx.now_ms()),
        seq: None,
        data: &data,
    };
    let delivery = outbox::enqueue_one(t, ctx, &test.name, &body)?;
    Ok(delivery.to_wire())
}

pub async fn deliveries(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    list: ListDeliveries,
) -> Result<wire::Page<wire::WebhookDelivery>, Failure> {
    if !t.outbox.endpoints.contains_key(&list.name) {
        return Err(not_found(&list.name).into());
    }
    Ok(outbox::page(ctx, &list.name, list.status, list.before, list.limit).await?)
}

fn not_found(name: &str) -> Rejection {
    Rejection::NotFound(format!("webhook `{name}` not found"))
}

/// An endpoint as the API shows it; `secret` only in the answer that generated it.
fn view(
    t: &TenantBroker,
    name: &str,
    pending: i64,
    dead: i64,
    secret: Option<String>,
) -> wire::Webhook {
    let endpoint = &t.outbox.endpoints[name];
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
