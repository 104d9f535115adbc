//! The `berth` command line: `berth serve` runs the broker; every other command is a client
//! of its HTTP API (DESIGN.md §8).
//!
//! Reading order:
//!
//! - [`failure`]: the errors that choose the exit code (0 ok, 1 error, 2 usage, 3 cap
//!   reached, 4 timed out, 130 interrupted), and how a failure is printed;
//! - [`explain`]: the server's refusals in the CLI's words (flags, not API fields) with a
//!   `hint:` line saying what to type next;
//! - [`settings`]: `--url`, `--token`, `--tenant` from flags, then `BERTH_*`, then the config
//!   file that `berth login` writes;
//! - [`client`]: the HTTP client (reqwest), speaking the shared wire types of
//!   [`broker::wire`] — the CLI never re-declares a JSON shape;
//! - [`output`]: aligned tables, money as currency, times absolute and relative, `-o json`;
//! - [`input`]: parsers for durations, amounts, labels and JSON arguments;
//! - [`progress`]: the spinner (on a terminal) or plain state lines while waiting;
//! - [`signals`]: SIGINT and SIGTERM stop a wait (exit 130);
//! - [`sse`]: the Server-Sent Events parser behind `berth watch`;
//! - [`sanitize`]: a runner's output made safe to print on a terminal (`berth lease logs`);
//! - `commands/*`: one file per noun (`tenant`, `token`, `provider`, `pool`, `lease`,
//!   `usage`, `ledger`, `webhook`, `github`, `watch`, `login`, `quickstart`, `version`), plus
//!   `serve`;
//! - [`docs`]: `berth completion` and `berth man`, generated from the clap definition.
//!
//! Data goes to stdout, diagnostics to stderr. Client commands run on a current-thread
//! runtime; `berth serve` on a multi-threaded one.

mod cluster;
mod commands;
mod docs;
mod explain;
pub mod failure;
mod input;
mod output;
mod progress;
mod sanitize;
mod serve;
pub mod settings;
mod signals;
mod sse;

pub mod client;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use commands::{
    backup, github, lease, ledger, login, pool, provider, quickstart, tenant, token, usage,
    version, watch, webhook,
};
use failure::Shown;

/// berth: time-bound leases on ephemeral CI runners
///
/// `berth serve` runs the broker; every other command talks to it over HTTP. Exit codes: 0 ok,
/// 1 error, 2 usage, 3 cap reached, 4 timed out.
#[derive(Debug, Parser)]
#[command(name = "berth", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: settings::Global,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker: SQLite files in the data directory, no other service.
    Serve(Box<serve::Args>),
    /// Seal every tenant's secrets under a new master key (stop `berth serve` first; it takes
    /// the same flags). Resumes a rotation that was cut short.
    RotateMasterKey(Box<serve::Args>),
    /// Replace the admin token in the data directory with a new one and print it; a running
    /// berth accepts only the new token within seconds.
    RotateAdminToken(serve::RotateAdminToken),
    /// Cluster mode: the nodes sharing one PostgreSQL, and what each owns.
    #[command(subcommand)]
    Cluster(cluster::Command),
    /// Set up a `demo` tenant with a local `process` pool on a running berth, and log in to it.
    Quickstart(quickstart::Args),
    /// Save the URL, token and tenant in effect to the config file (mode 0600).
    Login(login::Args),
    /// Tenants and their limits (creating and listing needs the admin token).
    #[command(subcommand)]
    Tenant(tenant::Command),
    /// API tokens of the tenant.
    #[command(subcommand)]
    Token(token::Command),
    /// Provider accounts of the tenant (where runners come from).
    #[command(subcommand)]
    Provider(provider::Command),
    /// Pools of the tenant (a kind of runner at a price).
    #[command(subcommand)]
    Pool(pool::Command),
    /// Request, list, show, wait for, renew and release leases on runners; show their output.
    #[command(subcommand)]
    Lease(lease::Command),
    /// Spend of a UTC day or month: charged, reserved, cap, available, by pool.
    Usage(usage::Args),
    /// The tenant's append-only ledger of reservations and charges.
    Ledger(ledger::Args),
    /// Webhook endpoints that receive the tenant's events, and their deliveries.
    #[command(subcommand)]
    Webhook(webhook::Command),
    /// The GitHub integration: `workflow_job` events lease and release runners.
    #[command(subcommand)]
    Github(github::Command),
    /// Follow the tenant's events as they happen (lease and budget events), one line each.
    ///
    /// It starts from now; --after N replays the stored events after event N, --from-start
    /// every stored one. `-o json` prints each event as one JSON document per line. A dropped connection is
    /// resumed where it stopped. Ends after --count events (exit 0), at --timeout (exit 4 if
    /// fewer than --count arrived, else 0), or on Ctrl-C / SIGTERM (exit 130).
    #[command(after_help = "Examples:
  berth watch
  berth watch --from-start --type lease.failed
  berth watch --lease \"$lease\" --type lease.ready --count 1 --timeout 10m
  berth watch --type lease.failed --type budget.threshold -o json")]
    Watch(watch::Args),
    /// Back up the server's data directory into its --backup-dir (admin token), or check a
    /// backup (--verify).
    Backup(backup::BackupArgs),
    /// Restore a backup: into a new data directory with berth stopped (--data-dir), or one
    /// tenant on the running server (--tenant).
    Restore(backup::RestoreArgs),
    /// This client's version and the server's (`--url`; no token needed).
    Version(version::Args),
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    Completion(docs::Completion),
    /// Print berth's man page (roff) to stdout.
    Man(docs::Man),
}

/// Parses the command line and runs the command; returns the process exit code.
pub fn main() -> ExitCode {
    // Before any thread can touch SQLite (sqlite3_config is not thread-safe).
    broker::objects::storage::configure_sqlite();
    let (cli, path) = parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args).map_err(|err| Shown::from_error(&err)),
        Command::RotateMasterKey(args) => {
            serve::rotate_master_key(*args).map_err(|err| Shown::from_error(&err))
        }
        Command::RotateAdminToken(args) => {
            serve::rotate_admin_token(args).map_err(|err| Shown::from_error(&err))
        }
        Command::Cluster(command) => cluster::run(command).map_err(|err| Shown::from_error(&err)),
        Command::Completion(args) => {
            docs::completion(&args, Cli::command());
            Ok(())
        }
        Command::Man(_) => docs::man(Cli::command()).map_err(|err| Shown::from_error(&err)),
        command => run_client(cli.global, command, &path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(shown) => {
            shown.print();
            ExitCode::from(shown.exit_code)
        }
    }
}

/// The note closing each subcommand's help, in place of the global options themselves.
const GLOBAL_NOTE: &str = "Global options (--url, --token, --tenant, -o/--output, \
                           --config-file): see `berth --help`.";

/// Parses the command line (clap exits on a usage error, code 2) and returns it with the
/// subcommand path (`lease request`), which hints name.
///
/// The global options are accepted everywhere but shown once, in `berth --help`: clap would
/// list them again in every subcommand's help (clap-rs/clap#5355), burying each command's
/// own flags under them. Clap makes a global option work below the root by copying it into
/// each subcommand when the command is built, unless the subcommand already has an option of
/// that id; so each subcommand gets the copy beforehand, hidden from its help. It parses as
/// clap's own copy would.
fn parse() -> (Cli, String) {
    let command = Cli::command();
    let globals: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.is_global_set())
        .cloned()
        .collect();
    let mut command = command.mut_subcommands(|sub| with_hidden_globals(sub, &globals));
    let matches = command.get_matches_mut();
    let mut path = Vec::new();
    let mut level = &matches;
    while let Some((name, sub)) = level.subcommand() {
        path.push(name.to_owned());
        level = sub;
    }
    let cli = Cli::from_arg_matches(&matches)
        .map_err(|err| err.format(&mut command))
        .unwrap_or_else(|err| err.exit());
    (cli, path.join(" "))
}

/// Gives `command` and every command below it hidden copies of the global options, and a
/// note where they are documented (not in `serve` and its kin, which take none of them).
fn with_hidden_globals(mut command: clap::Command, globals: &[clap::Arg]) -> clap::Command {
    for arg in globals {
        command = command.arg(arg.clone().hide(true));
    }
    let server_side = matches!(
        command.get_name(),
        "serve"
            | "rotate-master-key"
            | "rotate-admin-token"
            | "cluster"
            | "status"
            | "completion"
            | "man"
    );
    if !server_side {
        let after = match command.get_after_help() {
            Some(text) => format!("{text}\n\n{GLOBAL_NOTE}"),
            None => GLOBAL_NOTE.to_owned(),
        };
        command = command.after_help(after);
    }
    command.mut_subcommands(|sub| with_hidden_globals(sub, globals))
}

/// Runs a client command on a current-thread runtime; a failure comes back in the CLI's
/// words (see [`explain`]).
fn run_client(global: settings::Global, command: Command, path: &str) -> Result<(), Shown> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Shown::from_error(&anyhow::anyhow!("starting the async runtime: {err}")))?;
    runtime.block_on(async move {
        let ctx = commands::Context::new(global).map_err(|err| Shown::from_error(&err))?;
        match dispatch(&ctx, command).await {
            Ok(()) => Ok(()),
            Err(err) => Err(explain::explain(&ctx, path, err).await),
        }
    })
}

/// Runs one client command.
async fn dispatch(ctx: &commands::Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_)
        | Command::RotateMasterKey(_)
        | Command::RotateAdminToken(_)
        | Command::Cluster(_)
        | Command::Completion(_)
        | Command::Man(_) => unreachable_serve(),
        Command::Quickstart(args) => quickstart::run(ctx, args).await,
        Command::Login(args) => login::run(ctx, args).await,
        Command::Tenant(command) => tenant::run(ctx, command).await,
        Command::Token(command) => token::run(ctx, command).await,
        Command::Provider(command) => provider::run(ctx, command).await,
        Command::Pool(command) => pool::run(ctx, command).await,
        Command::Lease(command) => lease::run(ctx, command).await,
        Command::Usage(args) => usage::run(ctx, args).await,
        Command::Ledger(args) => ledger::run(ctx, args).await,
        Command::Webhook(command) => webhook::run(ctx, command).await,
        Command::Github(command) => github::run(ctx, command).await,
        Command::Watch(args) => watch::run(ctx, args).await,
        Command::Version(args) => version::run(ctx, args).await,
        Command::Backup(args) => backup::backup(ctx, args).await,
        Command::Restore(args) => backup::restore(ctx, args).await,
    }
}

/// `serve` is dispatched before the client runtime starts.
fn unreachable_serve() -> anyhow::Result<()> {
    Err(anyhow::anyhow!(
        "BUG: `serve` reached the client dispatcher"
    ))
}
