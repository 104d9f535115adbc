//! `berth provider set|list`.

use broker::wire::{Page, ProviderAccount, ProviderPut};
use reqwest::Method;

use super::Context;
use crate::input;
use crate::output::{self, Format, Table};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create or replace a provider account. Credentials are stored encrypted and never shown
    /// again; pass them as `@file.json` or `-` (stdin) to keep them out of shell history.
    ///
    /// `process` and `fake` accounts run on berth's own machine: only the operator's admin
    /// token creates or changes them. providers/README.md lists each kind's config.
    ///
    /// An account with live runners holds still: changing its kind, endpoint (`base_url`,
    /// `url`), project token or `root` is refused (`account_in_use`) unless `--force`, which
    /// keeps the old identity to destroy those runners.
    #[command(after_help = "Examples:
  berth provider set local --kind process --config '{\"grace_ms\": 2000}'
  berth provider set cloud --kind hetzner --config '{\"location\": \"fsn1\"}' --credentials @hetzner.json
  berth provider set cloud --kind hetzner --credentials - < hetzner.json")]
    Set {
        /// The account's name, used by pools (`--provider`).
        name: String,
        /// `process` (local processes), `hetzner`, `http` or `fake`.
        #[arg(long)]
        kind: String,
        /// Non-secret settings: JSON text, `@file.json`, or `-` for stdin.
        #[arg(long, value_name = "JSON")]
        config: Option<String>,
        /// Secret settings: JSON text, `@file.json`, or `-` for stdin.
        #[arg(long, value_name = "JSON")]
        credentials: Option<String>,
        /// Change the identity of an account that has live runners (their destroys still go
        /// to the old identity).
        #[arg(long)]
        force: bool,
    },
    /// List the provider accounts (never their credentials).
    List,
}

/// Runs a `provider` subcommand.
///
/// # Errors
///
/// Settings are missing, a JSON argument is unreadable, the server refuses, or it cannot be
/// reached.
pub async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    let api = ctx.api()?;
    let tenant = ctx.tenant(None)?;
    match command {
        Command::Set {
            name,
            kind,
            config,
            credentials,
            force,
        } => {
            if config.as_deref().is_some_and(is_stdin)
                && credentials.as_deref().is_some_and(is_stdin)
            {
                return Err(crate::failure::usage(
                    "only one of --config and --credentials can read stdin",
                ));
            }
            let read = |flag: &str, value: Option<&String>| match value {
                Some(value) => input::json_argument(flag, value),
                None => Ok(serde_json::Value::Null),
            };
            let body = ProviderPut {
                kind,
                config: read("--config", config.as_ref())?,
                credentials: read("--credentials", credentials.as_ref())?,
            };
            let query = if force {
                vec![("force", "true".to_owned())]
            } else {
                Vec::new()
            };
            let account: ProviderAccount = api
                .send(
                    Method::PUT,
                    &["v1", "tenants", &tenant, "providers", &name],
                    &query,
                    Some(&body),
                    None,
                    &[],
                )
                .await?
                .body;
            if ctx.format() == Format::Json {
                return output::json(&account);
            }
            print(ctx.format(), &[account], None)
        }
        Command::List => {
            let page: Page<ProviderAccount> = api
                .get(&["v1", "tenants", &tenant, "providers"], &[])
                .await?;
            if ctx.format() == Format::Json {
                return output::json(&page);
            }
            print(ctx.format(), &page.items, page.next_cursor.as_ref())
        }
    }
}

fn is_stdin(value: &str) -> bool {
    matches!(value, "-" | "@-")
}

/// Prints accounts as a table or their names.
fn print(
    format: Format,
    accounts: &[ProviderAccount],
    next_cursor: Option<&String>,
) -> anyhow::Result<()> {
    match format {
        Format::Id => output::ids(accounts.iter().map(|a| a.name.as_str())),
        Format::Table | Format::Json => {
            let mut table = Table::new(&["name", "kind", "credentials", "updated", "config"]);
            for account in accounts {
                table.row(vec![
                    account.name.clone(),
                    account.kind.clone(),
                    if account.has_credentials {
                        "stored"
                    } else {
                        "none"
                    }
                    .to_owned(),
                    output::time(&account.updated_at),
                    if account.config.is_null() {
                        String::new()
                    } else {
                        account.config.to_string()
                    },
                ]);
            }
            output::emit(&table.render())?;
            output::more(next_cursor);
            Ok(())
        }
    }
}
