//! `berth github set|show`: the GitHub integration of the tenant.
//!
//! GitHub sends `workflow_job` events to `POST /v1/tenants/{t}/integrations/github`, signed
//! with a secret both sides know; a `queued` job requests a lease on the pool its `runs-on`
//! labels name, a `completed` one releases it. The secret is write-only: berth never shows it.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use broker::wire::{Github, GithubPut};
use reqwest::Method;

use super::Context;
use crate::client::Api;
use crate::input;
use crate::output::{self, Fields, Format};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Configure the integration (tenant:admin): the webhook secret set at GitHub, and the
    /// leases jobs get.
    ///
    /// Replaces the whole configuration: flags left out take their defaults. The secret is
    /// read from a file or stdin, so it stays out of the shell's history, and never shown.
    #[command(after_help = "Examples:
  berth github set --secret-file github-secret.txt
  berth github set --secret-stdin --ttl 30m --wait 1h --idle 10m < github-secret.txt
  berth github show")]
    Set(SetArgs),
    /// Show the integration (never its secret) and the URL GitHub delivers to.
    Show,
}

/// The flags of `berth github set`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("secret").required(true).args(["secret_file", "secret_stdin"])))]
pub struct SetArgs {
    /// Read the webhook secret from this file (surrounding whitespace is ignored).
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// Read the webhook secret from stdin.
    #[arg(long)]
    secret_stdin: bool,
    /// TTL of a job's lease (`30m`). Default: the tenant's default TTL.
    #[arg(long, value_parser = input::duration, value_name = "DURATION")]
    ttl: Option<Duration>,
    /// How long a job's lease request may wait in the queue at a full cap (`1h`; `0s`: not
    /// at all). Default 1h.
    #[arg(long, value_parser = input::duration, value_name = "DURATION")]
    wait: Option<Duration>,
    /// Idle timeout of a job's lease (`10m`). Default: the tenant's.
    #[arg(long, value_parser = input::duration, value_name = "DURATION")]
    idle: Option<Duration>,
}

/// Runs a `github` subcommand.
///
/// # Errors
///
/// Settings are missing, the secret cannot be read, the server refuses, or it cannot be
/// reached.
pub async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    super::no_ids(ctx.format(), "the GitHub integration")?;
    let api = ctx.api()?;
    let tenant = ctx.tenant(None)?;
    let path = ["v1", "tenants", &tenant, "integrations", "github"];
    let github: Github = match command {
        Command::Set(args) => {
            let secret = match &args.secret_file {
                Some(file) => input::secret_file(file)?,
                None => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("reading the secret from stdin")?;
                    input::secret(&text, "stdin")?
                }
            };
            let body = GithubPut {
                secret,
                ttl_s: args.ttl.map(input::seconds),
                wait_s: args.wait.map(input::seconds),
                idle_timeout_s: args.idle.map(input::seconds),
            };
            api.write(Method::PUT, &path, &body).await?.body
        }
        Command::Show => api.get(&path, &[]).await?,
    };
    match ctx.format() {
        Format::Json => output::json(&github),
        Format::Table | Format::Id => print(&api, &tenant, &github),
    }
}

fn print(api: &Api, tenant: &str, github: &Github) -> anyhow::Result<()> {
    let mut fields = Fields::new();
    fields.add("configured", if github.configured { "yes" } else { "no" });
    if github.configured {
        fields
            .add(
                "ttl",
                github
                    .ttl_s
                    .map_or_else(|| "the tenant's default".to_owned(), output::duration),
            )
            .add("queue wait", output::duration(github.wait_s))
            .add(
                "idle timeout",
                github
                    .idle_timeout_s
                    .map_or_else(|| "the tenant's default".to_owned(), output::duration),
            )
            .add("secret", "stored");
    }
    fields.add(
        "payload url",
        api.url(&["v1", "tenants", tenant, "integrations", "github"])
            .to_string(),
    );
    output::emit(&fields.render())?;
    if !github.configured {
        eprintln!("Configure it with `berth github set --secret-file FILE`.");
    }
    Ok(())
}
