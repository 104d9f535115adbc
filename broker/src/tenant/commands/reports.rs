//! Reading the money and the events: usage of a period, the ledger, events to resume a stream.

use std::collections::BTreeMap;

use crate::objects::Message;
use crate::objects::clock::rfc3339;
use crate::wire;

use super::super::broker::TenantBroker;
use super::super::event::Event;
use super::super::money::Period;
use super::super::rejection::{Failure, Rejection};
use super::super::{Ctx, ledger, row};

/// Usage of the period containing `at`.
#[derive(Debug)]
pub struct Usage {
    pub period: Period,
    pub at: i64,
}

impl Message for Usage {
    type Reply = Result<wire::Usage, Rejection>;
    const READ_ONLY: bool = true;
}

/// A page of the ledger after `after`.
#[derive(Debug)]
pub struct Ledger {
    pub after: i64,
    pub limit: usize,
}

impl Message for Ledger {
    type Reply = Result<wire::Page<wire::LedgerEntry>, Rejection>;
    const READ_ONLY: bool = true;
}

/// Events after `after` (for resuming an event stream), at most `limit`.
#[derive(Debug)]
pub struct Events {
    pub after: i64,
    pub limit: usize,
}

impl Message for Events {
    type Reply = Result<Vec<Event>, Rejection>;
    const READ_ONLY: bool = true;
}

/// The sequence number of the newest event (0 when there is none): where a stream that
/// starts from now begins.
#[derive(Debug)]
pub struct LatestEvent;

impl Message for LatestEvent {
    type Reply = Result<i64, Rejection>;
    const READ_ONLY: bool = true;
}

pub async fn usage(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    usage: Usage,
) -> Result<wire::Usage, Failure> {
    let (start, end) = usage.period.bounds(usage.at);
    let mut by_pool: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for (pool, charged, warm) in ledger::charged_by_pool(ctx.db()?, start, end)? {
        let entry = by_pool.entry(pool).or_default();
        entry.0 = entry.0.saturating_add(charged);
        entry.2 = entry.2.saturating_add(warm);
    }
    for lease in t.book.open() {
        if lease.reserved_micros > 0 {
            let entry = by_pool.entry(lease.pool.clone()).or_default();
            entry.1 = entry.1.saturating_add(lease.reserved_micros);
        }
    }
    let charged_micros = by_pool
        .values()
        .fold(0_i64, |sum, (charged, _, _)| sum.saturating_add(*charged));
    let warm_charged_micros = by_pool
        .values()
        .fold(0_i64, |sum, (_, _, warm)| sum.saturating_add(*warm));
    let reserved_micros = t.book.open_reserved();
    let cap_micros = t.book.cap(usage.period);
    Ok(wire::Usage {
        period: usage.period.as_str().to_owned(),
        period_start: rfc3339(start),
        period_end: rfc3339(end),
        charged_micros,
        warm_charged_micros,
        reserved_micros,
        cap_micros,
        available_micros: cap_micros.map(|cap| {
            cap.saturating_sub(charged_micros)
                .saturating_sub(reserved_micros)
        }),
        by_pool: by_pool
            .into_iter()
            .map(
                |(pool, (charged_micros, reserved_micros, warm_charged_micros))| wire::PoolUsage {
                    pool,
                    charged_micros,
                    reserved_micros,
                    warm_charged_micros,
                },
            )
            .collect(),
    })
}

pub async fn ledger(
    _: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    page: Ledger,
) -> Result<wire::Page<wire::LedgerEntry>, Failure> {
    Ok(ledger::page(ctx.db()?, page.after, page.limit)?)
}

pub async fn events(
    _: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    events: Events,
) -> Result<Vec<Event>, Failure> {
    Ok(ctx
        .db()?
        .query(&format!(
            "SELECT {} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            row::select_list::<Event>()
        ))
        .bind(events.after)
        .bind(i64::try_from(events.limit).unwrap_or(i64::MAX))
        .fetch_all()?)
}

pub async fn latest_event(
    t: &mut TenantBroker,
    _: &mut Ctx<'_>,
    _: LatestEvent,
) -> Result<i64, Failure> {
    Ok(t.next_seq.saturating_sub(1))
}
