//! `berth tenant create|list|show|set`.

use std::time::Duration;

use broker::wire::{
    LimitsPatch, Page, QuotaPatch, Tenant, TenantCreate, TenantPatch, TenantSummary,
};
use reqwest::Method;

use super::Context;
use crate::input::{self, Clearable};
use crate::output::{self, Fields, Format, Table};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a tenant (admin token). Limits left out take their defaults; the quota's
    /// ceilings left out equal the tenant's starting limits, so its own admin may lower its
    /// limits but not raise them.
    Create {
        /// 1–63 characters: lowercase letters, digits and `-`.
        name: String,
        #[command(flatten)]
        limits: LimitFlags,
        #[command(flatten)]
        quota: QuotaFlags,
    },
    /// List the tenants (admin token).
    List {
        #[command(flatten)]
        page: PageFlags,
    },
    /// Show a tenant's limits and quota (default: the tenant in effect).
    Show {
        /// The tenant; default --tenant / BERTH_TENANT / the config file's.
        name: Option<String>,
    },
    /// Change a tenant's limits (within its quota) and, with the admin token, its quota;
    /// flags left out stay as they are.
    Set {
        /// The tenant; default --tenant / BERTH_TENANT / the config file's.
        name: Option<String>,
        #[command(flatten)]
        limits: LimitFlags,
        #[command(flatten)]
        quota: QuotaFlags,
    },
}

/// The limits of a tenant, as flags.
#[derive(Debug, clap::Args)]
pub struct LimitFlags {
    /// Most leases active at once (provisioning, ready or releasing). Default 10.
    #[arg(long, value_name = "N")]
    max_active: Option<i64>,
    /// Most requests waiting in the queue at once. Default 100.
    #[arg(long, value_name = "N")]
    max_queued: Option<i64>,
    /// Spend cap per UTC day, in currency (`25`, `12.50`); `none` removes it.
    #[arg(long, value_name = "AMOUNT", value_parser = input::clearable_money)]
    daily_cap: Option<Clearable<i64>>,
    /// Spend cap per UTC month, in currency; `none` removes it.
    #[arg(long, value_name = "AMOUNT", value_parser = input::clearable_money)]
    monthly_cap: Option<Clearable<i64>>,
    /// TTL of a lease that asks for none (`30m`). Default 30m.
    #[arg(long, value_name = "DURATION", value_parser = input::duration)]
    default_ttl: Option<Duration>,
    /// Longest TTL a lease may have, extensions included (`24h`). Default 24h.
    #[arg(long, value_name = "DURATION", value_parser = input::duration)]
    max_ttl: Option<Duration>,
    /// Idle timeout of a lease that asks for none (`10m`); `none` removes it. Default none.
    #[arg(long, value_name = "DURATION", value_parser = input::clearable_duration)]
    default_idle: Option<Clearable<Duration>>,
}

impl LimitFlags {
    /// The patch these flags describe.
    fn patch(&self) -> LimitsPatch {
        LimitsPatch {
            max_active_leases: self.max_active,
            max_queued: self.max_queued,
            spend_cap_daily_micros: self.daily_cap.map(Clearable::into_option),
            spend_cap_monthly_micros: self.monthly_cap.map(Clearable::into_option),
            default_ttl_s: self.default_ttl.map(input::seconds),
            max_ttl_s: self.max_ttl.map(input::seconds),
            default_idle_timeout_s: self
                .default_idle
                .map(|idle| idle.into_option().map(input::seconds)),
        }
    }
}

/// The operator's quota of a tenant, as flags (admin token only).
#[derive(Debug, clap::Args)]
pub struct QuotaFlags {
    /// Ceiling of --max-active the tenant's admin may set.
    #[arg(long, value_name = "N")]
    quota_max_active: Option<i64>,
    /// Ceiling of --max-queued.
    #[arg(long, value_name = "N")]
    quota_max_queued: Option<i64>,
    /// Ceiling of the daily spend cap, in currency; the tenant can then never run without a
    /// daily cap. `none` lifts the ceiling.
    #[arg(long, value_name = "AMOUNT", value_parser = input::clearable_money)]
    quota_daily_cap: Option<Clearable<i64>>,
    /// Ceiling of the monthly spend cap, in currency; `none` lifts the ceiling.
    #[arg(long, value_name = "AMOUNT", value_parser = input::clearable_money)]
    quota_monthly_cap: Option<Clearable<i64>>,
    /// Ceiling of --max-ttl (`24h`).
    #[arg(long, value_name = "DURATION", value_parser = input::duration)]
    quota_max_ttl: Option<Duration>,
    /// Most tokens the tenant may hold. Default 50.
    #[arg(long, value_name = "N")]
    quota_tokens: Option<i64>,
    /// Most webhook endpoints. Default 10.
    #[arg(long, value_name = "N")]
    quota_webhooks: Option<i64>,
    /// Most pools. Default 50.
    #[arg(long, value_name = "N")]
    quota_pools: Option<i64>,
    /// Most provider accounts. Default 10.
    #[arg(long, value_name = "N")]
    quota_providers: Option<i64>,
    /// Most warm runners (ready pools' runners kept ahead of demand) across the tenant's
    /// pools. Default 10.
    #[arg(long, value_name = "N")]
    quota_warm: Option<i64>,
}

impl QuotaFlags {
    /// The patch these flags describe, or `None` when no quota flag was given.
    fn patch(&self) -> Option<QuotaPatch> {
        let patch = QuotaPatch {
            max_active_leases: self.quota_max_active,
            max_queued: self.quota_max_queued,
            spend_cap_daily_micros: self.quota_daily_cap.map(Clearable::into_option),
            spend_cap_monthly_micros: self.quota_monthly_cap.map(Clearable::into_option),
            max_ttl_s: self.quota_max_ttl.map(input::seconds),
            max_tokens: self.quota_tokens,
            max_webhooks: self.quota_webhooks,
            max_pools: self.quota_pools,
            max_providers: self.quota_providers,
            max_warm: self.quota_warm,
        };
        (patch != QuotaPatch::default()).then_some(patch)
    }
}

/// `--limit` and `--cursor` of a list.
#[derive(Debug, clap::Args)]
pub struct PageFlags {
    /// At most this many items (1–1000; the server's default is 100).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Continue after this cursor (the previous page's `next_cursor`).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

impl PageFlags {
    /// The query parameters.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(limit) = self.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &self.cursor {
            query.push(("cursor", cursor.clone()));
        }
        query
    }
}

/// Runs a `tenant` subcommand.
///
/// # Errors
///
/// Settings are missing, the server refuses, or it cannot be reached.
pub async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    let api = ctx.api()?;
    match command {
        Command::Create {
            name,
            limits,
            quota,
        } => {
            let patch = limits.patch();
            let body = TenantCreate {
                name,
                limits: (patch != LimitsPatch::default()).then_some(patch),
                quota: quota.patch(),
            };
            let tenant: Tenant = api
                .write(Method::POST, &["v1", "tenants"], &body)
                .await?
                .body;
            show(ctx.format(), &tenant)
        }
        Command::List { page } => {
            let page: Page<TenantSummary> = api.get(&["v1", "tenants"], &page.query()).await?;
            match ctx.format() {
                Format::Json => output::json(&page),
                Format::Id => output::ids(page.items.iter().map(|t| t.name.as_str())),
                Format::Table => {
                    let mut table = Table::new(&["name", "created"]);
                    for tenant in &page.items {
                        table.row(vec![tenant.name.clone(), output::time(&tenant.created_at)]);
                    }
                    output::emit(&table.render())?;
                    output::more(page.next_cursor.as_ref());
                    Ok(())
                }
            }
        }
        Command::Show { name } => {
            let name = ctx.tenant(name.as_deref())?;
            let tenant: Tenant = api.get(&["v1", "tenants", &name], &[]).await?;
            show(ctx.format(), &tenant)
        }
        Command::Set {
            name,
            limits,
            quota,
        } => {
            let name = ctx.tenant(name.as_deref())?;
            let body = TenantPatch {
                limits: limits.patch(),
                quota: quota.patch(),
            };
            let tenant: Tenant = api
                .write(Method::PATCH, &["v1", "tenants", &name], &body)
                .await?
                .body;
            show(ctx.format(), &tenant)
        }
    }
}

/// Prints a tenant, its limits and, beside each, the operator's quota.
fn show(format: Format, tenant: &Tenant) -> anyhow::Result<()> {
    match format {
        Format::Json => output::json(tenant),
        Format::Id => output::ids([tenant.name.as_str()]),
        Format::Table => {
            let (limits, quota) = (&tenant.limits, &tenant.quota);
            let within = |limit: String, ceiling: String| format!("{limit} (quota {ceiling})");
            let mut fields = Fields::new();
            fields
                .add("name", &tenant.name)
                .add("created", output::time(&tenant.created_at))
                .add(
                    "max active leases",
                    within(
                        limits.max_active_leases.to_string(),
                        quota.max_active_leases.to_string(),
                    ),
                )
                .add(
                    "max queued",
                    within(limits.max_queued.to_string(), quota.max_queued.to_string()),
                )
                .add(
                    "daily spend cap",
                    within(
                        output::money_or_none(limits.spend_cap_daily_micros),
                        output::money_or_none(quota.spend_cap_daily_micros),
                    ),
                )
                .add(
                    "monthly spend cap",
                    within(
                        output::money_or_none(limits.spend_cap_monthly_micros),
                        output::money_or_none(quota.spend_cap_monthly_micros),
                    ),
                )
                .add("default ttl", output::duration(limits.default_ttl_s))
                .add(
                    "max ttl",
                    within(
                        output::duration(limits.max_ttl_s),
                        output::duration(quota.max_ttl_s),
                    ),
                )
                .add(
                    "default idle timeout",
                    limits
                        .default_idle_timeout_s
                        .map_or_else(|| "none".to_owned(), output::duration),
                )
                .add(
                    "quota: tokens, webhooks, pools, providers",
                    format!(
                        "{}, {}, {}, {}",
                        quota.max_tokens, quota.max_webhooks, quota.max_pools, quota.max_providers
                    ),
                )
                .add("quota: warm runners", quota.max_warm.to_string());
            output::emit(&fields.render())
        }
    }
}
