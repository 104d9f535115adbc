//! `berth token create|list|revoke`.

use broker::wire::{Page, Scope, TokenCreate, TokenCreated, TokenSummary};
use reqwest::Method;

use super::Context;
use super::tenant::PageFlags;
use crate::client::NO_BODY;
use crate::output::{self, Fields, Format, Table};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a token of the tenant. Its secret is printed once, here, and never again.
    Create {
        /// What the token may do; repeat for several. Each includes the ones after it:
        /// `tenant:admin` ⊃ `leases:write` ⊃ `leases:read`.
        #[arg(long = "scope", required = true, value_parser = parse_scope, value_name = "SCOPE")]
        scopes: Vec<Scope>,
        /// A note for people (`ci-main`, `alice`).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the tenant's tokens (never their secrets).
    List {
        #[command(flatten)]
        page: PageFlags,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        /// The token's id (`tok_…`).
        id: String,
    },
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    [Scope::TenantAdmin, Scope::LeasesWrite, Scope::LeasesRead]
        .into_iter()
        .find(|scope| scope.as_str() == text)
        .ok_or_else(|| {
            format!("`{text}` is not a scope: use tenant:admin, leases:write or leases:read")
        })
}

/// Runs a `token` subcommand.
///
/// # Errors
///
/// Settings are missing, the server refuses, or it cannot be reached.
pub async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    let api = ctx.api()?;
    let tenant = ctx.tenant(None)?;
    match command {
        Command::Create { scopes, name } => {
            let body = TokenCreate { scopes, name };
            let created: TokenCreated = api
                .write(Method::POST, &["v1", "tenants", &tenant, "tokens"], &body)
                .await?
                .body;
            match ctx.format() {
                Format::Json => output::json(&created),
                Format::Id => output::ids([created.id.as_str()]),
                Format::Table => {
                    let mut fields = Fields::new();
                    fields
                        .add("id", &created.id)
                        .add("tenant", &tenant)
                        .add("scopes", scopes_text(&created.scopes))
                        .add("name", created.name.clone().unwrap_or_default())
                        .add("token", &created.token);
                    output::emit(&fields.render())?;
                    eprintln!("Store the token now: berth shows it only this once.");
                    Ok(())
                }
            }
        }
        Command::List { page } => {
            let page: Page<TokenSummary> = api
                .get(&["v1", "tenants", &tenant, "tokens"], &page.query())
                .await?;
            match ctx.format() {
                Format::Json => output::json(&page),
                Format::Id => output::ids(page.items.iter().map(|t| t.id.as_str())),
                Format::Table => {
                    let mut table = Table::new(&["id", "scopes", "name", "created"]);
                    for token in &page.items {
                        table.row(vec![
                            token.id.clone(),
                            scopes_text(&token.scopes),
                            token.name.clone().unwrap_or_default(),
                            output::time(&token.created_at),
                        ]);
                    }
                    output::emit(&table.render())?;
                    output::more(page.next_cursor.as_ref());
                    Ok(())
                }
            }
        }
        Command::Revoke { id } => {
            api.send::<(), ()>(
                Method::DELETE,
                &["v1", "tenants", &tenant, "tokens", &id],
                &[],
                NO_BODY,
                None,
                &[],
            )
            .await?;
            match ctx.format() {
                Format::Json => output::json(&serde_json::json!({ "id": id, "revoked": true })),
                Format::Id => output::ids([id.as_str()]),
                Format::Table => output::emit(&format!("revoked {id}\n")),
            }
        }
    }
}

fn scopes_text(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|scope| scope.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
