//! `berth usage`.

use broker::wire::Usage;

use super::Context;
use crate::output::{self, Fields, Format, Table};

/// The flags of `berth usage`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The UTC period: `day` or `month`.
    #[arg(long, default_value = "day", value_parser = ["day", "month"])]
    period: String,
    /// A time in the period: a date (`2026-11-27`) or RFC 3339; default now.
    #[arg(long, value_name = "WHEN")]
    at: Option<String>,
}

/// Runs `berth usage`.
///
/// # Errors
///
/// Settings are missing, the server refuses, or it cannot be reached.
pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    super::no_ids(ctx.format(), "`berth usage`")?;
    let api = ctx.api()?;
    let tenant = ctx.tenant(None)?;
    let mut query = vec![("period", args.period)];
    if let Some(at) = args.at {
        query.push(("at", at));
    }
    let usage: Usage = api
        .get(&["v1", "tenants", &tenant, "usage"], &query)
        .await?;
    if ctx.format() == Format::Json {
        return output::json(&usage);
    }
    let mut fields = Fields::new();
    fields
        .add("tenant", &tenant)
        .add(
            "period",
            format!(
                "{} from {} to {}",
                usage.period,
                output::time(&usage.period_start),
                output::time(&usage.period_end)
            ),
        )
        .add("charged", output::money(usage.charged_micros))
        .add("reserved", output::money(usage.reserved_micros))
        .add("cap", output::money_or_none(usage.cap_micros))
        .add(
            "available",
            usage
                .available_micros
                .map_or_else(|| "no cap".to_owned(), output::money),
        );
    if usage.warm_charged_micros > 0 {
        // Ready pools' warm runners waiting to be taken (part of `charged`).
        fields.add("of which warm", output::money(usage.warm_charged_micros));
    }
    let mut text = fields.render();
    if !usage.by_pool.is_empty() {
        let mut table = Table::new(&["pool", "charged", "reserved"])
            .right(1)
            .right(2);
        for pool in &usage.by_pool {
            table.row(vec![
                pool.pool.clone(),
                output::money(pool.charged_micros),
                output::money(pool.reserved_micros),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    output::emit(&text)
}
