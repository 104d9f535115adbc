//! `berth quickstart`: from a fresh `berth serve` to a first lease.
//!
//! With the operator's admin token (`--admin-token`, else read from `./berth-data/admin-token`
//! when run next to the data directory, else `--token`), it sets up:
//!
//! - tenant `demo` (at most 4 active leases, a $5.00 daily spend cap);
//! - provider account `local` of kind `process`: runners are processes on this machine;
//! - pool `local`: a tiny shell runner that says hello and sleeps, at a demo price;
//! - a `leases:write` token of `demo`, saved to the config file (like `berth login`) unless
//!   that file is already set up for something else, in which case `export` lines are
//!   printed instead. Like every token of a tenant it also reads the setup: `berth pool list`,
//!   `berth tenant show` (limits and quota), usage; a tenant's tokens, accounts and webhooks
//!   stay the admin's.
//!
//! Running it again changes nothing but the token, which it reuses if it still works.

use std::path::PathBuf;

use broker::wire::{
    Lease, LimitsPatch, Page, Pool, PoolPut, ProviderAccount, ProviderPut, Scope, Tenant,
    TenantCreate, TokenCreate, TokenCreated,
};
use reqwest::Method;

use super::Context;
use crate::client::Api;
use crate::failure::{self, Failure};
use crate::output::{self, Format};
use crate::settings::{self, File};

/// The demo tenant's name.
pub const TENANT: &str = "demo";
/// The provider account's and the pool's name.
pub const POOL: &str = "local";
/// The pool's demo price per hour: $0.60, so usage shows some money.
const PRICE_MICROS: i64 = 600_000;

/// The flags of `berth quickstart`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The operator's admin token. Default: read from `<data-dir>/admin-token`, else the
    /// token of --token / BERTH_TOKEN (for a berth on another machine).
    #[arg(
        long,
        env = "BERTH_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    admin_token: Option<String>,
    /// The data directory of the running `berth serve`, where its admin token is.
    #[arg(
        long,
        env = "BERTH_DATA_DIR",
        default_value = "./berth-data",
        value_name = "PATH"
    )]
    data_dir: PathBuf,
    /// Do not save the demo token to the config file; print `export` lines instead.
    #[arg(long)]
    no_login: bool,
}

/// Runs `berth quickstart`.
///
/// # Errors
///
/// No admin token (usage), the server cannot be reached or refuses, or the config file
/// cannot be written.
pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let settings = &ctx.settings;
    // Next to the data directory, its file is surely the operator's token; a BERTH_TOKEN left
    // in the environment may be a tenant's.
    let admin_token = match args.admin_token {
        Some(token) => token,
        None => match (read_admin_token(&args.data_dir), &settings.explicit_token) {
            (Ok(token), _) => token,
            (Err(_), Some(token)) => token.clone(),
            (Err(err), None) => return Err(err),
        },
    };
    let api = Api::new(&settings.url, Some(admin_token))?;
    let tenant_created = create_tenant(&api)
        .await
        .map_err(|err| hint_serve(err, &api))?;

    let provider = ProviderPut {
        kind: "process".into(),
        config: serde_json::json!({ "grace_ms": 2000 }),
        credentials: serde_json::Value::Null,
    };
    let _: ProviderAccount = api
        .write(
            Method::PUT,
            &["v1", "tenants", TENANT, "providers", POOL],
            &provider,
        )
        .await?
        .body;
    let pool = PoolPut {
        provider: POOL.into(),
        machine_type: "local".into(),
        hourly_price_micros: Some(PRICE_MICROS),
        max_active: None,
        image: None,
        region: None,
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            r#"echo "runner for $BERTH_LEASE_ID is ready in $PWD"; exec sleep 86400"#.into(),
        ]),
        labels: None,
        alternatives: None,
        min_ready: None,
        max_ready: None,
        warm_ttl_s: None,
        github: None,
    };
    let pool: Pool = api
        .write(
            Method::PUT,
            &["v1", "tenants", TENANT, "pools", POOL],
            &pool,
        )
        .await?
        .body;

    // Reuse the saved demo token if it still works; otherwise make one.
    let saved = settings.file.clone();
    let reusable = saved.url.as_deref() == Some(settings.url.as_str())
        && saved.tenant.as_deref() == Some(TENANT)
        && match &saved.token {
            Some(token) => works(&settings.url, token).await,
            None => false,
        };
    let (token, token_note) = match (reusable, saved.token.clone()) {
        (true, Some(token)) => (token, "the saved one (still valid)".to_owned()),
        _ => {
            let created: TokenCreated = api
                .write(
                    Method::POST,
                    &["v1", "tenants", TENANT, "tokens"],
                    &TokenCreate {
                        scopes: vec![Scope::LeasesWrite],
                        name: Some("quickstart".into()),
                    },
                )
                .await?
                .body;
            (created.token, format!("{} (leases:write)", created.id))
        }
    };

    // Save it like `berth login` would, unless the config file is someone else's.
    let ours = saved == File::default()
        || (saved.url.as_deref() == Some(settings.url.as_str())
            && saved.tenant.as_deref() == Some(TENANT));
    let saved_to = match &settings.config_path {
        Some(path) if ours && !args.no_login => {
            let file = File {
                url: Some(settings.url.clone()),
                token: Some(token.clone()),
                tenant: Some(TENANT.into()),
            };
            settings::save(path, &file)?;
            Some(path.clone())
        }
        _ => None,
    };

    if ctx.format() == Format::Json {
        return output::json(&serde_json::json!({
            "url": settings.url,
            "tenant": TENANT,
            "tenant_created": tenant_created,
            "provider": POOL,
            "pool": pool,
            "config_path": saved_to,
            // The secret is printed only when it was not saved.
            "token": if saved_to.is_none() { Some(&token) } else { None },
        }));
    }
    let mut text = format!(
        "berth at {} is ready for a first lease:\n\
         \x20 tenant    {TENANT} ({})\n\
         \x20 provider  {POOL} (kind process: runners are processes on this machine)\n\
         \x20 pool      {POOL} at {}/hour (a demo price), runs: {}\n\
         \x20 token     {token_note}\n",
        api.base(),
        if tenant_created {
            "created"
        } else {
            "already there"
        },
        output::money(pool.hourly_price_micros),
        output::argv(&pool.command),
    );
    match &saved_to {
        Some(path) => text.push_str(&format!(
            "\nSaved the URL, tenant {TENANT} and its token to {} (mode 0600).\n",
            path.display()
        )),
        None => {
            if !args.no_login {
                text.push_str(&format!(
                    "\nYour config file ({}) is set up for another berth or tenant, so it was left alone.\n",
                    settings
                        .config_path
                        .as_ref()
                        .map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
                ));
            }
            text.push_str(&format!(
                "Use the demo tenant in this shell with:\n\
                 \x20 export BERTH_URL={}\n\
                 \x20 export BERTH_TENANT={TENANT}\n\
                 \x20 export BERTH_TOKEN={token}\n",
                settings.url
            ));
        }
    }
    text.push_str(
        "\nNext:\n\
         \x20 berth pool list\n\
         \x20 berth lease request --pool local --ttl 10m --wait\n\
         \x20 berth lease list\n\
         \x20 berth lease logs <lease id>\n\
         \x20 berth lease release <lease id>\n\
         \x20 berth usage\n",
    );
    output::emit(&text)
}

/// Reads `<data_dir>/admin-token`.
fn read_admin_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => Err(failure::usage(format!("{} is empty", path.display()))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(failure::usage(format!(
            "no admin token: {} does not exist; run `berth quickstart` in the directory where \
             `berth serve` runs, or pass --data-dir or --admin-token",
            path.display()
        ))),
        Err(err) => Err(anyhow::anyhow!("reading {}: {err}", path.display())),
    }
}

/// Creates the demo tenant; `false` if it already existed.
async fn create_tenant(api: &Api) -> anyhow::Result<bool> {
    let body = TenantCreate {
        name: TENANT.into(),
        limits: Some(LimitsPatch {
            max_active_leases: Some(4),
            spend_cap_daily_micros: Some(Some(5_000_000)),
            ..LimitsPatch::default()
        }),
        quota: None,
    };
    match api
        .write::<Tenant, _>(Method::POST, &["v1", "tenants"], &body)
        .await
    {
        Ok(_) => Ok(true),
        Err(err) if matches!(err.downcast_ref::<Failure>(), Some(f) if f.code() == Some("conflict")) => {
            Ok(false)
        }
        Err(err) => Err(err),
    }
}

/// Whether `token` can read the demo tenant's leases.
async fn works(url: &str, token: &str) -> bool {
    let Ok(api) = Api::new(url, Some(token.to_owned())) else {
        return false;
    };
    api.get::<Page<Lease>>(
        &["v1", "tenants", TENANT, "leases"],
        &[("limit", "1".to_owned())],
    )
    .await
    .is_ok()
}

/// A server that cannot be reached gets a hint to start one.
fn hint_serve(err: anyhow::Error, api: &Api) -> anyhow::Error {
    match err.downcast_ref::<Failure>() {
        Some(Failure::Unreachable { reason, .. }) => Failure::Unreachable {
            url: api.base().to_owned(),
            reason: format!(
                "{reason} (start it first, in another terminal: `berth serve`, or `cargo run --release -- serve`)"
            ),
        }
        .into(),
        _ => err,
    }
}
