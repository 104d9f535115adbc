//! `berth ledger`.

use broker::wire::{LedgerEntry, Page};

use super::Context;
use crate::output::{self, Format, Table};

/// The flags of `berth ledger`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rows after this sequence number (the previous page's last `seq`).
    #[arg(long, value_name = "SEQ")]
    after: Option<u64>,
    /// At most this many rows (1–1000; the server's default is 100).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

/// Runs `berth ledger`.
///
/// # Errors
///
/// Settings are missing, the server refuses, or it cannot be reached.
pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let api = ctx.api()?;
    let tenant = ctx.tenant(None)?;
    let mut query = Vec::new();
    if let Some(after) = args.after {
        query.push(("after", after.to_string()));
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    }
    let page: Page<LedgerEntry> = api
        .get(&["v1", "tenants", &tenant, "ledger"], &query)
        .await?;
    match ctx.format() {
        Format::Json => output::json(&page),
        Format::Id => {
            let seqs: Vec<String> = page.items.iter().map(|row| row.seq.to_string()).collect();
            output::ids(seqs.iter().map(String::as_str))
        }
        Format::Table => {
            let mut table = Table::new(&["seq", "at", "lease", "pool", "kind", "amount"])
                .right(0)
                .right(5);
            for row in &page.items {
                table.row(vec![
                    row.seq.to_string(),
                    output::time(&row.at),
                    row.lease_id.clone(),
                    row.pool.clone(),
                    row.kind.as_str().to_owned(),
                    output::money(row.amount_micros),
                ]);
            }
            output::emit(&table.render())?;
            if let Some(cursor) = &page.next_cursor {
                eprintln!("(more: add --after {cursor})");
            }
            Ok(())
        }
    }
}
