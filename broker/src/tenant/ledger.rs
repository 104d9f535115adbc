//! The ledger: append-only rows of money reserved, released and charged, declared once; and
//! the sums the tenant reads from it.

use crate::objects::Error;
use crate::objects::clock::rfc3339;
use crate::objects::sqlite::Db;
use crate::wire::{self, LedgerKind};

use super::row::{self, table};

table! {
    /// One row of the ledger. `seq` is given by SQLite when the row is written (`None`).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Entry in "ledger" {
        pub seq: Option<i64>,
        pub at: i64,
        pub lease_id: String,
        pub pool: String,
        pub kind: LedgerKind,
        pub amount_micros: i64,
    }
}

impl Entry {
    /// The row as the API shows it.
    pub fn to_wire(&self) -> wire::LedgerEntry {
        wire::LedgerEntry {
            seq: self.seq.unwrap_or_default(),
            at: rfc3339(self.at),
            lease_id: self.lease_id.clone(),
            pool: self.pool.clone(),
            kind: self.kind,
            amount_micros: self.amount_micros,
        }
    }
}

/// A page of the ledger after `after`, oldest first; returns one more than `limit` when there
/// is a next page.
pub fn page(db: &mut Db, after: i64, limit: usize) -> Result<wire::Page<wire::LedgerEntry>, Error> {
    let rows: Vec<Entry> = db
        .query(&format!(
            "SELECT {} FROM ledger WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            row::select_list::<Entry>()
        ))
        .bind(after)
        .bind(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX))
        .fetch_all()?;
    let mut items: Vec<wire::LedgerEntry> = rows.iter().map(Entry::to_wire).collect();
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok(wire::Page { items, next_cursor })
}

/// Sums `amount_micros` in two halves (`amount / 2^32` and `amount % 2^32`), each of which
/// cannot overflow SQLite's integer `SUM` (which throws instead of saturating); [`join`]
/// puts them back together in 128 bits and saturates.
const SUM: &str =
    "COALESCE(SUM(amount_micros / 4294967296), 0), COALESCE(SUM(amount_micros % 4294967296), 0)";

/// [`SUM`] of `amount`, an expression.
fn sum_of(amount: &str) -> String {
    SUM.replace("amount_micros", amount)
}

/// Joins the two halves [`SUM`] selects into one saturated sum.
fn join(high: i64, low: i64) -> i64 {
    let sum = i128::from(high) * (1 << 32) + i128::from(low);
    i64::try_from(sum).unwrap_or(if sum < 0 { i64::MIN } else { i64::MAX })
}

/// The ledger kinds that are money spent (a lease's runner time, a warm runner's waiting
/// time); the partial index `ledger_charges` holds exactly these rows.
const CHARGES: &str = "kind IN ('charge', 'warm_charge')";

/// What was charged since `day` and since `month` (Unix ms), saturating, read
/// with one statement through the partial index `ledger_charges`. Not kept prepared: a tenant
/// needs it only at its first wake of a day or a month.
pub fn charged_since(db: &mut Db, day: i64, month: i64) -> Result<(i64, i64), Error> {
    let (day_high, day_low, month_high, month_low): (i64, i64, i64, i64) = db
        .query(&format!(
            "SELECT {}, {} FROM ledger WHERE {CHARGES} AND at >= min(?1, ?2)",
            sum_of("iif(at >= ?1, amount_micros, 0)"),
            sum_of("iif(at >= ?2, amount_micros, 0)"),
        ))
        .persistent(false)
        .bind(day)
        .bind(month)
        .fetch_one()?;
    Ok((join(day_high, day_low), join(month_high, month_low)))
}

/// Charges of `[start, end)` by pool: `(pool, charged, of which warm)`, saturating.
pub fn charged_by_pool(
    db: &mut Db,
    start: i64,
    end: i64,
) -> Result<Vec<(String, i64, i64)>, Error> {
    let rows: Vec<(String, i64, i64, i64, i64)> = db.query(&format!(
        "SELECT pool, {SUM}, {WARM_SUM} FROM ledger WHERE {CHARGES} AND at >= ?1 AND at < ?2 GROUP BY pool"
    ))
    .bind(start)
    .bind(end)
    .fetch_all()?;
    Ok(rows
        .into_iter()
        .map(|(pool, high, low, warm_high, warm_low)| {
            (pool, join(high, low), join(warm_high, warm_low))
        })
        .collect())
}

/// [`SUM`] of the warm charges only.
const WARM_SUM: &str = "COALESCE(SUM(CASE WHEN kind = 'warm_charge' THEN amount_micros / 4294967296 END), 0), \
     COALESCE(SUM(CASE WHEN kind = 'warm_charge' THEN amount_micros % 4294967296 END), 0)";

/// Charges of `[start, end)` by UTC day and pool: `(day start in Unix ms, pool, charged)`,
/// saturating.
pub fn charged_by_day(db: &mut Db, start: i64, end: i64) -> Result<Vec<(i64, String, i64)>, Error> {
    let rows: Vec<(i64, String, i64, i64)> = db
        .query(&format!(
            "SELECT (at / 86400000) * 86400000 AS day, pool, {SUM} FROM ledger
         WHERE {CHARGES} AND at >= ?1 AND at < ?2 GROUP BY day, pool"
        ))
        .bind(start)
        .bind(end)
        .fetch_all()?;
    Ok(rows
        .into_iter()
        .map(|(day, pool, high, low)| (day, pool, join(high, low)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ledger sums saturate instead of failing: SQLite's `SUM` throws on overflow, which
    /// would fail every wake and usage report of a tenant whose charges passed `i64::MAX`.
    #[test]
    fn ledger_sums_saturate() {
        let mut db = Db::open_memory().expect("in-memory SQLite");
        db.execute_batch("CREATE TABLE ledger (amount_micros INTEGER NOT NULL)")
            .expect("table");
        fn sum(db: &mut Db) -> i64 {
            let (high, low): (i64, i64) = db
                .query(&format!("SELECT {SUM} FROM ledger"))
                .fetch_one()
                .expect("the sum never fails");
            join(high, low)
        }
        assert_eq!(sum(&mut db), 0);
        for amount in [i64::MAX - 7, 5_000_000_123, -3] {
            db.query("INSERT INTO ledger VALUES (?1)")
                .bind(amount)
                .execute()
                .expect("insert");
        }
        let plain: Result<(i64,), _> = db
            .query("SELECT SUM(amount_micros) FROM ledger")
            .fetch_one();
        assert!(plain.is_err(), "SQLite's SUM overflows: {plain:?}");
        assert_eq!(sum(&mut db), i64::MAX);
        db.execute_batch("DELETE FROM ledger WHERE amount_micros > 5000000123")
            .expect("delete");
        assert_eq!(sum(&mut db), 5_000_000_120);
    }
}
