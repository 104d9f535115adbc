//! `berth github set|show`: the GitHub integration of the tenant.
//!
//! GitHub sends `workflow_job` events to `POST /v1/tenants/{t}/integrations/github`, signed
//! with a secret both sides know; a `queued` job requests a lease on the pool its `runs-on`
//! labels name, a `completed` one releases it. The secret is write-only: berth never shows it.
//!
//! With a scope and credentials (a token, or a GitHub App), berth also registers each lease's
//! runner with GitHub just in time (`BERTH_GITHUB_JITCONFIG`). Credentials are read from files
//! or stdin, never from the command line, and never shown.

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
  berth github set --secret-file github-secret.txt --scope acme --token-file gh-token.txt
  berth github set --secret-file github-secret.txt --scope acme/app \\
      --app-id 123456 --installation-id 7890123 --private-key-file app.private-key.pem
  berth github show")]
    Set(Box<SetArgs>),
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
    /// Where runners are registered just in time: an organisation (`acme`) or a repository
    /// (`acme/app`). Needs credentials (`--token-file`/`--token-stdin`, or the App flags).
    #[arg(long, value_name = "ORG|OWNER/REPO")]
    scope: Option<String>,
    /// GitHub's API. Default https://api.github.com (GitHub Enterprise Server:
    /// https://HOST/api/v3).
    #[arg(long, value_name = "URL")]
    api_url: Option<String>,
    /// The runner group runners join. Default 1 (the organisation's default group).
    #[arg(long, value_name = "ID")]
    runner_group: Option<i64>,
    /// Read a GitHub token from this file (organisation "Self-hosted runners: write", or
    /// repository "Administration: write").
    #[arg(long, value_name = "PATH", conflicts_with_all = ["token_stdin", "app_id"])]
    token_file: Option<PathBuf>,
    /// Read a GitHub token from stdin (not with --secret-stdin).
    #[arg(long, conflicts_with_all = ["secret_stdin", "app_id"])]
    token_stdin: bool,
    /// A GitHub App's id (with --installation-id and --private-key-file).
    #[arg(long, value_name = "ID", requires_all = ["installation_id", "private_key_file"])]
    app_id: Option<i64>,
    /// The App's installation id in the organisation or repository.
    #[arg(long, value_name = "ID", requires = "app_id")]
    installation_id: Option<i64>,
    /// The App's private key (PEM), read from this file.
    #[arg(long, value_name = "PATH", requires = "app_id")]
    private_key_file: Option<PathBuf>,
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
            let token = match (&args.token_file, args.token_stdin) {
                (Some(file), _) => Some(input::secret_file(file)?),
                (None, true) => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("reading the token from stdin")?;
                    Some(input::secret(&text, "stdin")?)
                }
                (None, false) => None,
            };
            let private_key = match &args.private_key_file {
                Some(file) => Some(
                    std::fs::read_to_string(file)
                        .with_context(|| format!("reading the private key {}", file.display()))?,
                ),
                None => None,
            };
            let body = GithubPut {
                secret,
                ttl_s: args.ttl.map(input::seconds),
                wait_s: args.wait.map(input::seconds),
                idle_timeout_s: args.idle.map(input::seconds),
                scope: args.scope,
                api_url: args.api_url,
                runner_group_id: args.runner_group,
                token,
                app_id: args.app_id,
                installation_id: args.installation_id,
                private_key,
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
        match &github.connection {
            Some(connection) => {
                fields
                    .add("scope", connection.scope.as_str())
                    .add("api url", connection.api_url.as_str())
                    .add("runner group", connection.runner_group_id.to_string());
                match (connection.app_id, connection.installation_id) {
                    (Some(app), Some(installation)) => fields.add(
                        "credentials",
                        format!("app {app}, installation {installation} (key stored)"),
                    ),
                    _ => fields.add(
                        "credentials",
                        format!("{} (stored)", connection.credentials),
                    ),
                };
            }
            None => {
                fields.add("runner registration", "off (no scope and credentials)");
            }
        }
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
