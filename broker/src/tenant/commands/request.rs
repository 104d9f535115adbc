//! Requesting a lease: replayed by its idempotency key, validated, then granted, queued or
//! refused — one commit.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::objects::sqlite::{FromRow, Row, SqliteError};
use crate::objects::{Error, Message};
use crate::wire::{self, LeaseState};

use super::super::book::{Block, Book};
use super::super::broker::TenantBroker;
use super::super::lease::{self, Lease};
use super::super::rejection::{Failure, Rejection};
use super::super::transition::{self, Counter, Taking};
use super::super::{Ctx, MAX_TTL_LIMIT_S, Metrics, budget, effects, money, warm};

/// Idempotency keys are honoured this long.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3_600_000;
use crate::wire::bounds::MAX_WAIT_S;

/// Requests a lease: granted, queued, or refused.
#[derive(Debug)]
pub struct RequestLease {
    pub request: wire::LeaseRequest,
    pub idempotency_key: Option<String>,
}

/// A requested lease.
#[derive(Debug)]
pub struct Requested {
    pub lease: wire::Lease,
    /// It waits (202); else it was granted (201).
    pub queued: bool,
    /// An idempotency key returned an earlier request's lease.
    pub replayed: bool,
}

impl Message for RequestLease {
    type Reply = Result<Requested, Rejection>;
}

/// The stored answer to an idempotency key.
struct Remembered {
    request_hash: String,
    lease_id: String,
    queued: bool,
    created_at: i64,
}

impl FromRow for Remembered {
    fn from_row(row: &Row<'_>) -> Result<Self, SqliteError> {
        Ok(Remembered {
            request_hash: row.get_named("request_hash")?,
            lease_id: row.get_named("lease_id")?,
            queued: row.get_named("queued")?,
            created_at: row.get_named("created_at")?,
        })
    }
}

pub async fn request(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    message: RequestLease,
) -> Result<Requested, Failure> {
    let RequestLease {
        request,
        idempotency_key,
    } = message;
    let now = ctx.now_ms();
    let request_hash = hex::encode(Sha256::digest(
        serde_json::to_vec(&request).map_err(Error::encode)?,
    ));
    if let Some(key) = &idempotency_key
        && let Some(replay) = replay(t, ctx, key, &request_hash, now).await?
    {
        return Ok(replay);
    }

    let limits = t.book.limits();
    let Some(pool) = t.book.pool(&request.pool) else {
        return Err(Rejection::Invalid(format!("pool `{}` does not exist", request.pool)).into());
    };
    let ttl_s = request.ttl_s.unwrap_or(limits.default_ttl_s);
    if ttl_s < 1 || ttl_s > limits.max_ttl_s {
        return Err(Rejection::Invalid(format!(
            "`ttl_s` must be between 1 and {} (max_ttl_s)",
            limits.max_ttl_s
        ))
        .into());
    }
    let idle_timeout_s = request.idle_timeout_s.or(limits.default_idle_timeout_s);
    if idle_timeout_s.is_some_and(|idle| !(1..=MAX_TTL_LIMIT_S).contains(&idle)) {
        return Err(Rejection::Invalid(format!(
            "`idle_timeout_s` must be between 1 and {MAX_TTL_LIMIT_S}"
        ))
        .into());
    }
    let wait_s = request.wait_s.unwrap_or(0);
    if !(0..=MAX_WAIT_S).contains(&wait_s) {
        return Err(
            Rejection::Invalid(format!("`wait_s` must be between 0 and {MAX_WAIT_S}")).into(),
        );
    }
    validate_labels(&request.labels).map_err(Rejection::Invalid)?;
    let reservation = money::reservation(pool.hourly_price_micros, ttl_s);
    // A ready pool hands out a warm runner at once; with none ready (or a cap in the way)
    // the request goes on as a cold one, which admission then grants, queues or refuses.
    let taking = Taking {
        ttl_s,
        idle_timeout_s,
        labels: request.labels.clone(),
    };
    let pool_name = request.pool.clone();
    if let Ok(Some(id)) = warm::take(t, ctx, &pool_name, taking).await? {
        let view = match t.book.get(&id) {
            Some(open) => t.lease_view(open),
            None => return Err(Error::corrupt("a warm runner just taken is not open").into()),
        };
        remember(t, ctx, idempotency_key, request_hash, &id, false, now);
        return Ok(Requested {
            lease: view,
            queued: false,
            replayed: false,
        });
    }
    let Some(pool) = t.book.pool(&pool_name) else {
        return Err(Error::corrupt("a pool vanished during a request").into());
    };
    let lease = Lease {
        pool: pool.name.clone(),
        state: LeaseState::Queued,
        created_at: now,
        ttl_s,
        idle_timeout_s,
        labels: request.labels,
        provider: pool.provider.clone(),
        spec: warm::spec_of(pool),
        hourly_price_micros: pool.hourly_price_micros,
        ..Lease::default()
    };
    let lease = Lease {
        id: t.new_lease_id(now),
        ..lease
    };
    let id = lease.id.clone();
    let queued = match t.book.admit(&lease.pool, reservation, now) {
        Ok(()) => {
            let granted = transition::grant(lease, now, t.book.timing());
            effects::apply(t, ctx, granted).await?;
            false
        }
        Err(block) => {
            if block == Block::Spend {
                budget::announce_exhausted(t, ctx).await?;
            }
            if wait_s == 0 {
                return Err(refusal(block, &t.book, &lease.pool, &ctx.env().metrics).into());
            }
            if t.book.queued() >= t.book.limits().max_queued {
                effects::count(&ctx.env().metrics, Counter::RejectedQueueFull);
                return Err(Rejection::QueueFull(format!(
                    "the queue is full ({} of max_queued {})",
                    t.book.queued(),
                    t.book.limits().max_queued
                ))
                .into());
            }
            let waiting =
                transition::queue(lease, now.saturating_add(wait_s.saturating_mul(1_000)));
            effects::apply(t, ctx, waiting).await?;
            true
        }
    };
    let view = match t.book.get(&id) {
        Some(open) => t.lease_view(open),
        None => return Err(Error::corrupt("a lease just requested is not open").into()),
    };
    remember(t, ctx, idempotency_key, request_hash, &id, queued, now);
    Ok(Requested {
        lease: view,
        queued,
        replayed: false,
    })
}

/// Stores the answer to an idempotency key, if the request had one.
fn remember(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    idempotency_key: Option<String>,
    request_hash: String,
    id: &str,
    queued: bool,
    now: i64,
) {
    if let Some(key) = idempotency_key {
        ctx.write("INSERT OR REPLACE INTO idempotency (key, request_hash, lease_id, queued, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(key)
            .bind(request_hash)
            .bind(id.to_owned())
            .bind(queued)
            .bind(now);
        t.upkeep.prunable(now.saturating_add(IDEMPOTENCY_TTL_MS));
    }
}

/// The earlier answer to `key` within its 24 h, if any; the same key with another body is
/// refused.
async fn replay(
    t: &TenantBroker,
    ctx: &mut Ctx<'_>,
    key: &str,
    request_hash: &str,
    now: i64,
) -> Result<Option<Requested>, Failure> {
    let remembered: Option<Remembered> = ctx
        .db()?
        .query("SELECT request_hash, lease_id, queued, created_at FROM idempotency WHERE key = ?1")
        .bind(key)
        .fetch_optional()?;
    let Some(remembered) = remembered.filter(|r| r.created_at > now - IDEMPOTENCY_TTL_MS) else {
        return Ok(None);
    };
    if remembered.request_hash != request_hash {
        return Err(Rejection::IdempotencyMismatch.into());
    }
    let lease = match t.book.get(&remembered.lease_id) {
        Some(lease) => t.lease_view(lease),
        None => match lease::fetch(ctx.db()?, &remembered.lease_id)? {
            Some(lease) => t.lease_view(&lease),
            None => return Err(Error::corrupt("idempotency key names a missing lease").into()),
        },
    };
    Ok(Some(Requested {
        lease,
        queued: remembered.queued,
        replayed: true,
    }))
}

/// Why a lease cannot be granted now, counted.
fn refusal(block: Block, book: &Book, pool: &str, metrics: &Metrics) -> Rejection {
    match block {
        Block::Concurrency => {
            effects::count(metrics, Counter::RejectedConcurrency);
            let limits = book.limits();
            if book.active() >= limits.max_active_leases {
                Rejection::ConcurrencyCap(format!(
                    "{} of max_active_leases {} leases are active",
                    book.active(),
                    limits.max_active_leases
                ))
            } else {
                let cap = book
                    .pool(pool)
                    .and_then(|p| p.max_active)
                    .unwrap_or_default();
                Rejection::ConcurrencyCap(format!(
                    "pool `{pool}` has {} of its max_active {cap} leases active",
                    book.active_in(pool)
                ))
            }
        }
        Block::Spend => {
            effects::count(metrics, Counter::RejectedSpend);
            Rejection::SpendCap(
                "the lease's reservation (price × TTL) would pass the tenant's spend cap".into(),
            )
        }
    }
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    // The rule of the request body (`wire::bounds`), as the API checked it; GitHub jobs'
    // labels come this way without the API.
    crate::wire::bounds::LEASE_LABELS.check_map("labels", labels)
}
