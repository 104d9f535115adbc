//! `berth pool set|list|show`.

use broker::wire::{Page, Pool, PoolAlternative, PoolPut, PriceSource};
use reqwest::Method;

use super::Context;
use crate::input;
use crate::output::{self, Format, Table};

// Parsed once per process: the size of its biggest variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create or replace a pool: a kind of runner from one provider account, at a price.
    ///
    /// For a `process` provider, the runner's command follows `--`. A pool with --label is
    /// matched against the `runs-on` labels of GitHub jobs (`berth github set`).
    #[command(after_help = "Examples:
  berth pool set local --provider local --machine-type local --price 0.12 -- ./agent.sh
  berth pool set linux --provider local --machine-type local --price 0.12 \\
      -- sh -c 'echo \"hello from $BERTH_LEASE_ID\"; exec sleep 3600'
  berth pool set small --provider cloud --machine-type cx22 --label linux --max-active 5
  berth pool set small --provider cloud --machine-type cx22 --min-ready 2 --warm-ttl 1h
  berth pool set big --provider cloud --machine-type cpx42 --region fsn1 --price 0.03 \
      --alternative cpx42@nbg1=0.03 --alternative ccx33@hel1=0.06")]
    Set {
        /// The pool's name, used by `lease request --pool`.
        name: String,
        /// The provider account runners come from (`berth provider set`).
        #[arg(long)]
        provider: String,
        /// The provider's machine type (`cx22` at Hetzner; free text for `process`).
        #[arg(long)]
        machine_type: String,
        /// Price per runner-hour in currency (`0.12`); default: the provider's price list.
        #[arg(long, value_name = "AMOUNT", value_parser = input::money)]
        price: Option<i64>,
        /// Most active leases of this pool at once (within the tenant's cap).
        #[arg(long, value_name = "N")]
        max_active: Option<i64>,
        /// The image runners boot (provider-specific).
        #[arg(long)]
        image: Option<String>,
        /// The region runners are made in (provider-specific).
        #[arg(long)]
        region: Option<String>,
        /// A label matched against GitHub `runs-on`; repeat for several.
        #[arg(long = "label", value_name = "LABEL")]
        labels: Vec<String>,
        /// Register each lease's runner with GitHub just in time (`BERTH_GITHUB_JITCONFIG`;
        /// needs `berth github set` with a scope and credentials, and a `--label`).
        #[arg(long)]
        github: bool,
        /// A fallback when the provider is out of capacity for the machine type and region
        /// before it, as `TYPE[@REGION]=PRICE`; repeat in the order to try them.
        #[arg(long = "alternative", value_name = "TYPE[@REGION]=PRICE", value_parser = alternative)]
        alternatives: Vec<PoolAlternative>,
        /// Warm runners to keep ready ahead of demand (a ready pool): a lease of the pool
        /// takes one and is ready at once. Within the tenant's quota `max_warm`.
        #[arg(long, value_name = "N")]
        min_ready: Option<i64>,
        /// Most warm runners of the pool at once (default: --min-ready).
        #[arg(long, value_name = "N")]
        max_ready: Option<i64>,
        /// A warm runner not taken this long after it was made is recycled (`30m`, `1h`;
        /// default 1h).
        #[arg(long, value_name = "DURATION", value_parser = input::duration)]
        warm_ttl: Option<std::time::Duration>,
        /// The argv a `process` runner runs (after `--`).
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List the pools.
    List,
    /// Show one pool, with its warm runners (ready, provisioning) and how requests fared
    /// (hits took a warm runner, misses found none ready).
    Show {
        /// The pool's name.
        name: String,
    },
}

/// Runs a `pool` subcommand.
///
/// # Errors
///
/// Settings are missing, the server refuses, or it cannot be reached.
pub async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    let api = ctx.api()?;
    let tenant = ctx.tenant(None)?;
    match command {
        Command::Set {
            name,
            provider,
            machine_type,
            price,
            max_active,
            image,
            region,
            labels,
            github,
            alternatives,
            min_ready,
            max_ready,
            warm_ttl,
            command,
        } => {
            let body = PoolPut {
                provider,
                machine_type,
                hourly_price_micros: price,
                max_active,
                image,
                region,
                command: (!command.is_empty()).then_some(command),
                labels: (!labels.is_empty()).then_some(labels),
                alternatives: (!alternatives.is_empty()).then_some(alternatives),
                min_ready,
                max_ready,
                warm_ttl_s: warm_ttl.map(input::seconds),
                github: github.then_some(true),
            };
            let pool: Pool = api
                .write(
                    Method::PUT,
                    &["v1", "tenants", &tenant, "pools", &name],
                    &body,
                )
                .await?
                .body;
            match ctx.format() {
                Format::Json => output::json(&pool),
                format => print(format, &[pool], None),
            }
        }
        Command::List => {
            let page: Page<Pool> = api.get(&["v1", "tenants", &tenant, "pools"], &[]).await?;
            match ctx.format() {
                Format::Json => output::json(&page),
                format => print(format, &page.items, page.next_cursor.as_ref()),
            }
        }
        Command::Show { name } => {
            let page: Page<Pool> = api.get(&["v1", "tenants", &tenant, "pools"], &[]).await?;
            let Some(pool) = page.items.into_iter().find(|pool| pool.name == name) else {
                return Err(anyhow::anyhow!("pool `{name}` does not exist"));
            };
            match ctx.format() {
                Format::Json => output::json(&pool),
                Format::Id => output::ids([pool.name.as_str()]),
                _ => show(&pool),
            }
        }
    }
}

/// Prints one pool's settings and its warm runners.
fn show(pool: &Pool) -> anyhow::Result<()> {
    let mut fields = output::Fields::new();
    fields
        .add("name", pool.name.clone())
        .add("provider", pool.provider.clone())
        .add("machine type", pool.machine_type.clone())
        .add("price/hour", output::money(pool.hourly_price_micros))
        .add(
            "max active",
            pool.max_active.map(|n| n.to_string()).unwrap_or_default(),
        )
        .add("labels", pool.labels.join(", "))
        .add("min ready", pool.min_ready.to_string())
        .add("max ready", pool.max_ready.to_string())
        .add("warm ttl", output::duration(pool.warm_ttl_s))
        .add("warm ready", pool.warm.ready.to_string())
        .add("warm provisioning", pool.warm.provisioning.to_string())
        .add("warm hits", pool.warm.hits.to_string())
        .add("warm misses", pool.warm.misses.to_string());
    output::emit(&fields.render())
}

/// Parses `--alternative TYPE[@REGION]=PRICE`.
fn alternative(text: &str) -> Result<PoolAlternative, String> {
    let (choice, price) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not TYPE[@REGION]=PRICE, like cpx42@nbg1=0.03"))?;
    let (machine_type, region) = match choice.split_once('@') {
        Some((machine_type, region)) => (machine_type, Some(region.to_owned())),
        None => (choice, None),
    };
    if machine_type.is_empty() || region.as_deref() == Some("") {
        return Err(format!(
            "`{text}` is not TYPE[@REGION]=PRICE, like cpx42@nbg1=0.03"
        ));
    }
    Ok(PoolAlternative {
        machine_type: machine_type.to_owned(),
        region,
        hourly_price_micros: input::money(price)?,
    })
}

/// Prints pools as a table or their names.
fn print(format: Format, pools: &[Pool], next_cursor: Option<&String>) -> anyhow::Result<()> {
    if format == Format::Id {
        return output::ids(pools.iter().map(|p| p.name.as_str()));
    }
    let mut table = Table::new(&[
        "name",
        "provider",
        "machine type",
        "price/hour",
        "max active",
        "warm",
        "labels",
        "command",
    ])
    .right(3);
    for pool in pools {
        let price = match pool.price_source {
            PriceSource::Pool => output::money(pool.hourly_price_micros),
            PriceSource::Provider => {
                format!("{} (provider)", output::money(pool.hourly_price_micros))
            }
        };
        table.row(vec![
            pool.name.clone(),
            pool.provider.clone(),
            std::iter::once(pool.machine_type.clone())
                .chain(pool.alternatives.iter().map(|a| match &a.region {
                    Some(region) => format!("{}@{region}", a.machine_type),
                    None => a.machine_type.clone(),
                }))
                .collect::<Vec<_>>()
                .join(" → "),
            price,
            pool.max_active.map(|n| n.to_string()).unwrap_or_default(),
            if pool.min_ready > 0 {
                format!(
                    "{}/{} ready, {} booting",
                    pool.warm.ready, pool.min_ready, pool.warm.provisioning
                )
            } else {
                String::new()
            },
            if pool.github {
                format!("{} (github)", pool.labels.join(", "))
            } else {
                pool.labels.join(", ")
            },
            output::argv(&pool.command),
        ]);
    }
    output::emit(&table.render())?;
    output::more(next_cursor);
    Ok(())
}
