//! Budget events: `budget.threshold` at 50, 80 and 100 % of a spend cap (once each per
//! period) and `budget.exhausted` when a cap refuses or ends a lease (once per period); and
//! ending the newest leases when the tenant lowers a cap below what is spent.

use serde_json::json;

use crate::objects::Error;
use crate::objects::clock::rfc3339;
use crate::wire::{EndReason, EventKind, LeaseState};

use super::broker::TenantBroker;
use super::money::Period;
use super::{Ctx, effects, transition};

/// Budget thresholds announced, in percent of a cap.
const THRESHOLDS: [i64; 3] = [50, 80, 100];

/// What was announced in the current day and month (kv `budget`): per period, its start, the
/// highest threshold announced and whether `budget.exhausted` was.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BudgetMarks {
    day: (i64, i64, bool),
    month: (i64, i64, bool),
}

impl BudgetMarks {
    /// The marks of `period` as of `start`, reset when a new period began.
    fn current(&mut self, period: Period, start: i64) -> &mut (i64, i64, bool) {
        let mark = match period {
            Period::Day => &mut self.day,
            Period::Month => &mut self.month,
        };
        if mark.0 != start {
            *mark = (start, 0, false);
        }
        mark
    }
}

/// Announces every threshold (50, 80, 100 % of a cap) crossed since the last announcement of
/// the period.
pub async fn check(t: &mut TenantBroker, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let now = ctx.now_ms();
    let mut marks = t.budget.clone();
    let mut announcements = Vec::new();
    for period in [Period::Day, Period::Month] {
        let Some(cap) = t.book.cap(period) else {
            continue;
        };
        let start = period.bounds(now).0;
        let spent = t.book.spent(period, now);
        let percent = if cap == 0 {
            100
        } else {
            i64::try_from(i128::from(spent) * 100 / i128::from(cap)).unwrap_or(i64::MAX)
        };
        let mark = marks.current(period, start);
        for threshold in THRESHOLDS {
            if percent >= threshold && mark.1 < threshold {
                mark.1 = threshold;
                announcements.push(json!({
                    "period": period.as_str(),
                    "period_start": rfc3339(start),
                    "threshold_percent": threshold,
                    "spent_micros": spent,
                    "cap_micros": cap,
                }));
            }
        }
    }
    store(t, ctx, marks)?;
    for data in announcements {
        effects::emit(t, ctx, EventKind::BudgetThreshold, &data).await?;
    }
    Ok(())
}

/// Announces `budget.exhausted` once per period when a spend cap refuses or ends a lease.
pub async fn announce_exhausted(t: &mut TenantBroker, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let now = ctx.now_ms();
    let mut marks = t.budget.clone();
    let mut announcements = Vec::new();
    for period in [Period::Day, Period::Month] {
        let Some(cap) = t.book.cap(period) else {
            continue;
        };
        let start = period.bounds(now).0;
        let spent = t.book.spent(period, now);
        let mark = marks.current(period, start);
        if !mark.2 {
            mark.2 = true;
            announcements.push(json!({
                "period": period.as_str(),
                "period_start": rfc3339(start),
                "spent_micros": spent,
                "cap_micros": cap,
            }));
        }
    }
    store(t, ctx, marks)?;
    for data in announcements {
        effects::emit(t, ctx, EventKind::BudgetExhausted, &data).await?;
    }
    Ok(())
}

/// Ends the newest running leases while charged + open reservations pass a spend cap the
/// tenant lowered.
pub async fn enforce_caps(t: &mut TenantBroker, ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let now = ctx.now_ms();
    let mut over = [Period::Day, Period::Month]
        .into_iter()
        .filter_map(|period| {
            t.book
                .cap(period)
                .map(|cap| t.book.spent(period, now).saturating_sub(cap))
        })
        .max()
        .unwrap_or(0);
    if over <= 0 {
        return Ok(());
    }
    let running: Vec<String> = t
        .book
        .open()
        .filter(|l| {
            matches!(
                l.state,
                LeaseState::Provisioning | LeaseState::Ready | LeaseState::Warm
            )
        })
        .map(|l| l.id.clone())
        .collect();
    for id in running.into_iter().rev() {
        if over <= 0 {
            break;
        }
        let lease = t.book.take(&id).expect("BUG: listed from the book");
        over = over.saturating_sub(lease.reserved_micros);
        let ended = transition::end(lease, EndReason::SpendCap, now, t.book.timing());
        effects::apply(t, ctx, ended).await?;
    }
    announce_exhausted(t, ctx).await
}

/// Keeps the marks, writing them only when they changed.
fn store(t: &mut TenantBroker, ctx: &mut Ctx<'_>, marks: BudgetMarks) -> Result<(), Error> {
    if marks != t.budget {
        ctx.kv_put("budget", &marks)?;
        t.budget = marks;
    }
    Ok(())
}
