//! `berth login`: save the URL, token and tenant in effect to the config file.

use broker::wire::{Lease, Page, TenantSummary};

use super::Context;
use crate::client::Api;
use crate::failure::{self, Failure};
use crate::output::{self, Format};
use crate::settings::{self, File};

/// The flags of `berth login` (besides --url, --token and --tenant, which it saves).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Save without first checking the token against the server.
    #[arg(long)]
    no_verify: bool,
}

/// Runs `berth login`.
///
/// # Errors
///
/// No token or config path (usage), the server refuses the token, or the file cannot be
/// written.
pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let settings = &ctx.settings;
    let path = settings.config_path.clone().ok_or_else(|| {
        failure::usage("no place for the config file: set $HOME, or pass --config-file PATH")
    })?;
    let token = settings.token.clone().ok_or_else(|| {
        failure::usage(
            "pass the token to save: berth login --url URL --token TOKEN [--tenant NAME]",
        )
    })?;
    let api = Api::new(&settings.url, Some(token.clone()))?;
    if !args.no_verify {
        verify(&api, settings.tenant.as_deref()).await?;
    }
    let file = File {
        url: Some(settings.url.clone()),
        token: Some(token),
        tenant: settings.tenant.clone(),
    };
    settings::save(&path, &file)?;
    let who = settings.tenant.as_deref().map_or_else(
        || "the operator (no tenant)".to_owned(),
        |t| format!("tenant {t}"),
    );
    match ctx.format() {
        Format::Json => output::json(&serde_json::json!({
            "url": settings.url,
            "tenant": settings.tenant,
            "config_path": path,
        })),
        Format::Table | Format::Id => output::emit(&format!(
            "Logged in to {} as {who}; saved to {} (mode 0600).\n",
            api.base(),
            path.display()
        )),
    }
}

/// Checks that the token works: on the tenant's leases (every tenant token may read them), or
/// as the admin token when no tenant is given.
async fn verify(api: &Api, tenant: Option<&str>) -> anyhow::Result<()> {
    let limit = [("limit", "1".to_owned())];
    let checked = match tenant {
        Some(tenant) => api
            .get::<Page<Lease>>(&["v1", "tenants", tenant, "leases"], &limit)
            .await
            .map(drop),
        None => api
            .get::<Page<TenantSummary>>(&["v1", "tenants"], &limit)
            .await
            .map(drop),
    };
    match checked {
        Err(err) if tenant.is_none() && forbidden(&err) => Err(failure::usage(
            "this is a tenant's token: add --tenant NAME",
        )),
        other => other,
    }
}

fn forbidden(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<Failure>(), Some(Failure::Api(p)) if p.status == 403)
}
