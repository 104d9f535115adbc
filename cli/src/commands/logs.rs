//! `berth lease logs <id> [--follow]`: what a lease's runner wrote
//! (`GET /v1/tenants/{t}/leases/{id}/logs`, a bounded piece per request, read on from each
//! answer's `next_offset`).
//!
//! By default the runner's stdout goes to stdout and its stderr to stderr (each read whole,
//! one after the other: berth keeps no timing between them). The output is a CI job's, so on
//! its way to a terminal every escape sequence and control character but newline and tab is
//! dropped ([`Sanitizer`]) unless `--raw`. `--follow` reads on every second until the lease's
//! runner is gone (then says how the lease ended, exit 0) or a signal comes (exit 130).

use std::io::Write as _;
use std::time::Duration;

use broker::wire::{Lease, LeaseLogs};

use super::Context;
use crate::client::{Api, is_transient};
use crate::failure::Failure;
use crate::output::{self, Format};
use crate::sanitize::Sanitizer;
use crate::signals::Signals;

/// How often `--follow` asks for more.
const POLL: Duration = Duration::from_secs(1);

/// The flags of `berth lease logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The lease id (`lease_…`).
    id: String,
    /// Which output: `both` (the runner's stdout on stdout, its stderr on stderr), `stdout`
    /// or `stderr`.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    stream: Which,
    /// Keep printing what the runner writes until its lease ends (Ctrl-C stops).
    #[arg(long, short)]
    follow: bool,
    /// Print the output exactly as the runner wrote it, terminal escape sequences and control
    /// characters included (only for output you trust, or a file).
    #[arg(long)]
    raw: bool,
}

/// Which of the runner's outputs to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Both,
    Stdout,
    Stderr,
}

/// One output being read: where it goes on, and how it is printed.
struct Cursor {
    stream: &'static str,
    offset: u64,
    sanitizer: Sanitizer,
}

/// How reading ended, short of an error.
enum End {
    /// Everything there is was printed (without `--follow`), or stdout closed.
    Done,
    /// The runner is gone (while following).
    Gone,
    Interrupted,
}

/// Runs `berth lease logs`.
///
/// # Errors
///
/// The lease does not exist or has no logs (`no_logs`: its provider keeps none, it has no
/// runner yet, or its runner is gone), the server cannot be reached, or a signal arrived while
/// following (exit 130).
pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    super::no_ids(ctx.format(), "`berth lease logs`")?;
    let api = ctx.api()?;
    let tenant = ctx.tenant(None)?;
    let streams: &[&'static str] = match args.stream {
        Which::Both => &["stdout", "stderr"],
        Which::Stdout => &["stdout"],
        Which::Stderr => &["stderr"],
    };
    let mut cursors: Vec<Cursor> = streams
        .iter()
        .map(|stream| Cursor {
            stream,
            offset: 0,
            sanitizer: Sanitizer::new(),
        })
        .collect();
    let reader = Reader {
        api: &api,
        tenant: &tenant,
        args: &args,
        format: ctx.format(),
    };
    let mut signals = Signals::new();
    let end = tokio::select! {
        end = reader.read(&mut cursors) => end?,
        () = signals.recv() => End::Interrupted,
    };
    match end {
        End::Done => Ok(()),
        End::Gone => {
            let path = ["v1", "tenants", tenant.as_str(), "leases", args.id.as_str()];
            if let Ok(lease) = api.get::<Lease>(&path, &[]).await {
                eprintln!("{}", super::lease::describe_end(&lease));
            }
            Ok(())
        }
        End::Interrupted => {
            Err(Failure::Interrupted(format!("interrupted; lease {} runs on", args.id)).into())
        }
    }
}

/// What one `berth lease logs` reads and how it prints.
struct Reader<'a> {
    api: &'a Api,
    tenant: &'a str,
    args: &'a Args,
    format: Format,
}

impl Reader<'_> {
    /// Prints what there is of each stream; with `--follow`, again every second.
    async fn read(&self, cursors: &mut [Cursor]) -> anyhow::Result<End> {
        let mut read_before = false;
        let mut warned = false;
        loop {
            for cursor in cursors.iter_mut() {
                match self.drain(cursor).await {
                    Ok(true) => read_before = true,
                    Ok(false) => return Ok(End::Done),
                    // Following a runner that went away: its lease ended.
                    Err(err) if self.args.follow && read_before && is_no_logs(&err) => {
                        return Ok(End::Gone);
                    }
                    Err(err) if self.args.follow && read_before && is_transient(&err) => {
                        if !warned {
                            eprintln!("warning: {err:#}; trying again");
                            warned = true;
                        }
                    }
                    Err(err) => return Err(err),
                }
            }
            if !self.args.follow {
                return Ok(End::Done);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Reads and prints `cursor`'s stream up to its current end; `false` once stdout closed.
    async fn drain(&self, cursor: &mut Cursor) -> anyhow::Result<bool> {
        loop {
            let path = [
                "v1",
                "tenants",
                self.tenant,
                "leases",
                self.args.id.as_str(),
                "logs",
            ];
            let query = [
                ("stream", cursor.stream.to_owned()),
                ("offset", cursor.offset.to_string()),
            ];
            let piece: LeaseLogs = self.api.get(&path, &query).await?;
            if !self.print(cursor, &piece)? {
                return Ok(false);
            }
            let advanced = piece.next_offset > cursor.offset;
            cursor.offset = piece.next_offset;
            if !advanced || piece.next_offset >= piece.size {
                return Ok(true);
            }
        }
    }

    /// Prints one piece: its text (sanitized unless `--raw`) on stdout or stderr, or the
    /// answer as one JSON line. `false` once stdout closed.
    fn print(&self, cursor: &mut Cursor, piece: &LeaseLogs) -> anyhow::Result<bool> {
        if self.format == Format::Json {
            let line = serde_json::to_string(piece)
                .map_err(|err| anyhow::anyhow!("encoding JSON: {err}"))?;
            return output::emit_live(&format!("{line}\n"));
        }
        if piece.text.is_empty() {
            return Ok(true);
        }
        let text = if self.args.raw {
            piece.text.clone()
        } else {
            cursor.sanitizer.push(&piece.text)
        };
        if cursor.stream == "stderr" && self.args.stream == Which::Both {
            let mut err = std::io::stderr().lock();
            // A closed stderr is no reason to stop printing stdout.
            let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
            return Ok(true);
        }
        output::emit_live(&text)
    }
}

/// Whether the server said the lease has no logs (any more).
fn is_no_logs(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<Failure>(), Some(failure) if failure.code() == Some("no_logs"))
}
