//! What a tenant reads from its tables when it wakes, in as few statements as it can.
//!
//! Every statement read here is prepared afresh at every cold wake (they are not kept: see
//! [`read`]), and preparing is a large part of what a wake costs. So the single values come
//! in one row, and the tables most tenants leave empty ([`Sparse`]) are read only when that
//! row says they hold something: a tenant with no webhooks, no GitHub runners and no retired
//! provider identities runs four statements, not nine.

use std::sync::LazyLock;

use crate::objects::Error;
use crate::objects::sqlite::{Db, FromRow, RowSets};

use super::accounts::{Account, Accounts, Retired};
use super::lease::{self, Lease};
use super::outbox::{EndpointRow, Outbox};
use super::pool::Pool;
use super::upkeep::{self, Upkeep};
use super::{jit, row};

/// A tenant's tables as a wake reads them.
pub(super) struct Tables {
    pub accounts: Vec<Account>,
    pub retired: Vec<Retired>,
    pub pools: Vec<Pool>,
    /// The open leases, oldest first.
    pub leases: Vec<Lease>,
    /// The last event's sequence number (0: none yet).
    pub last_seq: i64,
    pub runners: Vec<jit::Row>,
    /// When the oldest prunable row expires ([`Upkeep::load_sql`]).
    pub prunable_from: Option<i64>,
    pub endpoints: Vec<EndpointRow>,
    /// The last delivery id given ([`Outbox::LAST_DELIVERY_SQL`]).
    pub last_delivery: i64,
}

/// Tables most tenants leave empty, in the order their reads run.
#[derive(Clone, Copy)]
enum Sparse {
    Retired,
    Runners,
    Webhooks,
}

impl Sparse {
    const ALL: [Sparse; 3] = [Sparse::Retired, Sparse::Runners, Sparse::Webhooks];

    fn table(self) -> &'static str {
        match self {
            Sparse::Retired => "retired_providers",
            Sparse::Runners => "github_runners",
            Sparse::Webhooks => "webhooks",
        }
    }

    fn sql(self) -> String {
        match self {
            Sparse::Retired => Accounts::retired_sql(),
            Sparse::Runners => jit::Runners::load_sql(),
            Sparse::Webhooks => Outbox::ENDPOINTS_SQL.to_owned(),
        }
    }
}

/// The reads every wake runs, as one list (`sqlite::Query::fetch_sets`): first one row of the
/// single values and of whether each [`Sparse`] table holds a row, then the tables every
/// tenant fills. One parameter: `?1` [`upkeep::EVERY_ROW`].
static LOAD_SQL: LazyLock<String> = LazyLock::new(|| {
    let exists = Sparse::ALL.map(|t| format!("EXISTS (SELECT 1 FROM {})", t.table()));
    [
        format!(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM events), ({}), ({}), {}",
            Upkeep::load_sql("?1"),
            Outbox::LAST_DELIVERY_SQL,
            exists.join(", ")
        ),
        Accounts::load_sql(),
        format!("SELECT {} FROM pools", row::select_list::<Pool>()),
        lease::open_sql(),
    ]
    .join(";\n")
});

/// The list of reads of the sparse tables that hold rows, for each combination (bit `i`:
/// `Sparse::ALL[i]` holds rows).
static SPARSE_SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
    (0..1_usize << Sparse::ALL.len())
        .map(|mask| {
            Sparse::ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, t)| t.sql())
                .collect::<Vec<_>>()
                .join(";\n")
        })
        .collect()
});

/// Reads the tenant's tables (see the module docs).
pub(super) fn read(db: &mut Db) -> Result<Tables, Error> {
    let mut sets = db
        .query(&LOAD_SQL)
        // Run once per activation: kept prepared, these statements were ~18 % of an open
        // tenant's resident memory (W2), and every wake but a warm one (`objects::warm`)
        // prepares them anew anyway.
        .persistent(false)
        .bind(upkeep::EVERY_ROW)
        .fetch_sets()?;
    let (last_seq, prunable_from, last_delivery, retired, runners, webhooks): (
        i64,
        Option<i64>,
        i64,
        bool,
        bool,
        bool,
    ) = sets.one()?;
    let accounts = sets.rows()?;
    let pools = sets.rows()?;
    let leases = sets.rows()?;
    let present = [retired, runners, webhooks];
    let mask = present
        .iter()
        .enumerate()
        .filter(|(_, held)| **held)
        .fold(0_usize, |mask, (i, _)| mask | 1 << i);
    let mut more = match mask {
        0 => None,
        mask => Some(db.query(&SPARSE_SQL[mask]).persistent(false).fetch_sets()?),
    };
    // In `Sparse::ALL`'s order.
    let retired = rows_if(present[Sparse::Retired as usize], &mut more)?;
    let runners = rows_if(present[Sparse::Runners as usize], &mut more)?;
    let endpoints = rows_if(present[Sparse::Webhooks as usize], &mut more)?;
    Ok(Tables {
        accounts,
        retired,
        pools,
        leases,
        last_seq,
        runners,
        prunable_from,
        endpoints,
        last_delivery,
    })
}

/// The next row set of `sets` if the table holds rows (its read ran), else none.
fn rows_if<T: FromRow>(held: bool, sets: &mut Option<RowSets>) -> Result<Vec<T>, Error> {
    match (held, sets) {
        (true, Some(sets)) => Ok(sets.rows()?),
        _ => Ok(Vec::new()),
    }
}
