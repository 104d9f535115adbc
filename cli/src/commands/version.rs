//! `berth version`: this binary's version and the server's (from `GET /healthz`, which needs
//! no token).

use anyhow::Context as _;

use super::Context;
use crate::client::Api;

/// `berth version`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print only the client's version; ask no server.
    #[arg(long)]
    pub client: bool,
}

/// Prints `client <version>` and, unless `--client`, `server <version> (<url>)`.
///
/// # Errors
///
/// The server cannot be reached or does not say its version (the client line is printed
/// first).
pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    println!("client {}", env!("CARGO_PKG_VERSION"));
    if args.client {
        return Ok(());
    }
    let api = Api::new(&ctx.settings.url, None)?;
    let health: serde_json::Value = api
        .get(&["healthz"], &[])
        .await
        .with_context(|| format!("asking {} for its version", api.base()))?;
    let version = health["version"]
        .as_str()
        .context("the server does not say its version (berth older than 0.2?)")?;
    println!("server {version} ({})", api.base());
    Ok(())
}
