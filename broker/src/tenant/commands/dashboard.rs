//! Reads for dashboards: a tenant's status at a glance ([`Status`]), charges per day
//! ([`SpendHistory`]) and the queue's length over time ([`QueueHistory`]). All read-only: no
//! transaction, no alarm, nothing written.

use std::collections::{BTreeMap, BTreeSet};

use crate::objects::Message;
use crate::objects::clock::rfc3339;
use crate::wire::LeaseState;
use crate::wire::dashboard as wire;

use super::super::broker::TenantBroker;
use super::super::money::Period;
use super::super::rejection::{Failure, Rejection};
use super::super::{Ctx, ledger};

const DAY_MS: i64 = 86_400_000;
const MINUTE_MS: i64 = 60_000;
/// The longest a lease may wait in the queue (`request::MAX_WAIT_S`): a lease that left the
/// queue in a window was created at most this long before it.
const MAX_WAIT_MS: i64 = 86_400_000;

/// The tenant's status now: lease counts, spend against caps, dead-lettered deliveries.
#[derive(Debug)]
pub struct Status {
    /// Count dead-lettered webhook deliveries (only for tokens that may see webhooks).
    pub with_deliveries: bool,
}

impl Message for Status {
    type Reply = Result<wire::TenantStatus, Rejection>;
    const READ_ONLY: bool = true;
}

/// Charges per UTC day for the last `days` days (today included).
#[derive(Debug)]
pub struct SpendHistory {
    pub days: u32,
}

impl Message for SpendHistory {
    type Reply = Result<wire::SpendHistory, Rejection>;
    const READ_ONLY: bool = true;
}

/// The queue's length once a minute over the last `minutes` minutes (now included).
#[derive(Debug)]
pub struct QueueHistory {
    pub minutes: u32,
}

impl Message for QueueHistory {
    type Reply = Result<wire::QueueHistory, Rejection>;
    const READ_ONLY: bool = true;
}

pub async fn status(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    status: Status,
) -> Result<wire::TenantStatus, Failure> {
    let now = ctx.now_ms();
    let (mut provisioning, mut ready, mut releasing) = (0, 0, 0);
    for lease in t.book.open() {
        match lease.state {
            LeaseState::Provisioning => provisioning += 1,
            LeaseState::Ready => ready += 1,
            LeaseState::Releasing => releasing += 1,
            _ => {}
        }
    }
    let limits = t.book.limits().clone();
    let spend = |period: Period| wire::SpendStatus {
        period: period.as_str().to_owned(),
        charged_micros: t.book.charged_in(period, now),
        reserved_micros: t.book.open_reserved(),
        cap_micros: t.book.cap(period),
    };
    let (day, month) = (spend(Period::Day), spend(Period::Month));
    let mut at_cap = Vec::new();
    if t.book.active() >= limits.max_active_leases {
        at_cap.push("concurrency".to_owned());
    }
    if t.book.queued() >= limits.max_queued {
        at_cap.push("queue".to_owned());
    }
    for (name, spend) in [("daily_spend", &day), ("monthly_spend", &month)] {
        if let Some(cap) = spend.cap_micros
            && spend.charged_micros.saturating_add(spend.reserved_micros) >= cap
        {
            at_cap.push(name.to_owned());
        }
    }
    let dead_deliveries = if status.with_deliveries {
        let (dead,): (i64,) = ctx
            .db()?
            .query("SELECT COUNT(*) FROM deliveries WHERE status = 'dead'")
            .fetch_one()?;
        Some(dead)
    } else {
        None
    };
    Ok(wire::TenantStatus {
        tenant: t.name.clone(),
        active: t.book.active(),
        provisioning,
        ready,
        releasing,
        queued: t.book.queued(),
        warm_ready: t.book.warm().totals().0,
        warm_provisioning: t.book.warm().totals().1,
        max_active_leases: limits.max_active_leases,
        max_queued: limits.max_queued,
        day,
        month,
        dead_deliveries,
        at_cap,
    })
}

pub async fn spend_history(
    _: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    history: SpendHistory,
) -> Result<wire::SpendHistory, Failure> {
    let today = Period::Day.bounds(ctx.now_ms()).0;
    let days = i64::from(history.days.max(1));
    let start = today.saturating_sub((days - 1).saturating_mul(DAY_MS));
    let end = today.saturating_add(DAY_MS);
    let mut by_day: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    let mut pools = BTreeSet::new();
    for (day, pool, charged) in ledger::charged_by_day(ctx.db()?, start, end)? {
        pools.insert(pool.clone());
        let slot = by_day.entry(day).or_default().entry(pool).or_default();
        *slot = slot.saturating_add(charged);
    }
    let days = (0..days)
        .map(|n| {
            let at = start.saturating_add(n.saturating_mul(DAY_MS));
            let pools = by_day.remove(&at).unwrap_or_default();
            wire::DaySpend {
                date: rfc3339(at).get(..10).unwrap_or_default().to_owned(),
                charged_micros: pools.values().fold(0_i64, |sum, c| sum.saturating_add(*c)),
                by_pool: pools
                    .into_iter()
                    .map(|(pool, charged_micros)| wire::PoolSpend {
                        pool,
                        charged_micros,
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(wire::SpendHistory {
        days,
        pools: pools.into_iter().collect(),
    })
}

pub async fn queue_history(
    _: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    history: QueueHistory,
) -> Result<wire::QueueHistory, Failure> {
    let now = ctx.now_ms();
    let minutes = i64::from(history.minutes.max(1));
    let since = now.saturating_sub(minutes.saturating_mul(MINUTE_MS));
    // Every lease that waited in the queue at some point of the window was created at most
    // the longest wait before it. Lease ids sort by creation time (`lease_<ms hex>…`), so
    // the primary key bounds the scan.
    let from = format!("lease_{:012x}", since.saturating_sub(MAX_WAIT_MS).max(0));
    let rows: Vec<(i64, Option<i64>, Option<i64>)> = ctx
        .db()?
        .query(
            "SELECT created_at, granted_at, ended_at FROM leases
         WHERE id >= ?1 AND (granted_at IS NULL OR granted_at > created_at)",
        )
        .bind(from)
        .fetch_all()?;
    // A lease is in the queue from its creation until it is granted or ends waiting.
    let spans: Vec<(i64, i64)> = rows
        .into_iter()
        .map(|(created, granted, ended)| (created, granted.or(ended).unwrap_or(i64::MAX)))
        .filter(|(created, left)| *left > since && created < left)
        .collect();
    let points = (0..=minutes)
        .map(|n| {
            let at = since.saturating_add(n.saturating_mul(MINUTE_MS));
            let queued = spans
                .iter()
                .filter(|(created, left)| *created <= at && at < *left)
                .count();
            wire::QueuePoint {
                at: rfc3339(at),
                queued: i64::try_from(queued).unwrap_or(i64::MAX),
            }
        })
        .collect();
    Ok(wire::QueueHistory { points })
}
