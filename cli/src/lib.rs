//! The `berth` command line: `berth serve` runs the broker; every other command is a client
//! of its HTTP API.
//!
//! Data goes to stdout, diagnostics to stderr. Exit codes: 0 ok, 1 error, 2 usage.

mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// berth: time-bound leases on ephemeral CI runners.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker: SQLite files in the data directory, no other service.
    Serve(serve::Args),
}

/// Parses the command line and runs the command; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
