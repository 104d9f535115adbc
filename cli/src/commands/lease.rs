//! `berth lease request|list|show|wait|renew|release|logs` (`logs` lives in `commands/logs.rs`).
//!
//! Waiting uses the API's long poll (`GET …/leases/{id}?wait=ready|ended&timeout_s=`) in a
//! loop until the command's own deadline. While waiting, a spinner (on a terminal) or plain
//! lines show the state and queue position; SIGINT or SIGTERM stops the wait (and
//! `lease request --wait` then releases the lease it asked for, so no runner is left behind).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use broker::wire::{EndReason, Heartbeat, Lease, LeaseRequest, LeaseState, Page};
use reqwest::Method;
use tokio::time::Instant;

use super::Context;
use super::tenant::PageFlags;
use crate::client::{Api, NO_BODY, is_transient};
use crate::failure::{self, Failure};
use crate::input;
use crate::output::{self, Fields, Format, Table};
use crate::progress::Progress;
use crate::signals::Signals;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Request a lease on a runner of a pool.
    ///
    /// Without --wait, a request at a full cap is refused at once (exit 3); a granted lease is
    /// printed at once, while its runner may still be provisioning. With --wait, a request at
    /// a full cap queues, and berth waits until the runner is ready; if it is not ready in
    /// time the lease is released (a queued one canceled) and berth exits 4.
    #[command(after_help = "Examples:
  berth lease request --pool linux --ttl 30m
  lease=$(berth lease request --pool linux --ttl 30m --wait 5m -o id)
  berth lease request --pool linux --wait --label repo=acme/web --idle 10m --github-output")]
    Request(RequestArgs),
    /// List leases, newest first.
    List(ListArgs),
    /// Show one lease.
    Show {
        /// The lease id (`lease_…`).
        id: String,
    },
    /// Wait until a lease's runner is ready (--for ready, the default) or until the lease has
    /// ended and its runner is gone (--for ended); exit 4 on timeout.
    #[command(after_help = "Examples:
  berth lease wait \"$lease\"
  berth lease wait \"$lease\" --for ready --timeout 10m
  berth lease wait \"$lease\" --for ended --timeout 2m")]
    Wait {
        /// The lease id (`lease_…`).
        id: String,
        /// `ready`: the runner is ready (a lease that ends instead exits 1); `ended`: the
        /// lease has ended and its runner is gone.
        #[arg(long = "for", value_enum, default_value_t = Until::Ready)]
        until: Until,
        /// How long to wait at most (`90s`, `10m`).
        #[arg(long, default_value = "5m", value_parser = input::duration, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Keep a lease alive (a heartbeat resets its idle timeout), optionally extending its TTL.
    Renew {
        /// The lease id (`lease_…`).
        id: String,
        /// Add this much to the TTL (within the tenant's max TTL and spend cap).
        #[arg(long, value_parser = input::duration, value_name = "DURATION")]
        extend: Option<Duration>,
    },
    /// Show what a lease's runner wrote: its stdout on stdout, its stderr on stderr.
    ///
    /// berth keeps the output of `process` runners (in the runner's directory) until the runner
    /// is destroyed, when the lease ends; other providers keep none. Terminal escape sequences
    /// and control characters are dropped unless --raw. --follow prints what comes next until
    /// the lease ends.
    #[command(after_help = "Examples:
  berth lease logs \"$lease\"
  berth lease logs \"$lease\" --follow
  berth lease logs \"$lease\" --stream stderr --raw > stderr.log")]
    Logs(super::logs::Args),
    /// End a lease: a queued one is canceled, a granted one released and its runner destroyed.
    Release {
        /// The lease id (`lease_…`).
        id: String,
        /// Then wait until the runner is gone (default at most 2m).
        #[arg(long, num_args = 0..=1, default_missing_value = "2m", value_parser = input::duration, value_name = "DURATION")]
        wait: Option<Duration>,
    },
}

/// The flags of `berth lease request`.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// The pool to take a runner from.
    #[arg(long)]
    pool: String,
    /// How long the lease lasts (`30m`); default the tenant's default TTL.
    #[arg(long, value_parser = input::duration, value_name = "DURATION")]
    ttl: Option<Duration>,
    /// End the lease when no `berth lease renew` came for this long (`10m`).
    #[arg(long, value_parser = input::duration, value_name = "DURATION")]
    idle: Option<Duration>,
    /// Wait until the runner is ready, queueing at a full cap, for at most this long
    /// (10m when given without a value).
    #[arg(long, num_args = 0..=1, default_missing_value = "10m", value_parser = input::duration, value_name = "DURATION")]
    wait: Option<Duration>,
    /// A label `key=value` (repository, job id, …); repeat for several.
    #[arg(long = "label", value_parser = input::label, value_name = "KEY=VALUE")]
    labels: Vec<(String, String)>,
    /// Makes a retried request return the same lease instead of a second one (24 h).
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Append `lease_id=…` and `runner_address=…` to the file named by $GITHUB_OUTPUT
    /// (GitHub Actions step outputs).
    #[arg(long)]
    github_output: bool,
}

/// The flags of `berth lease list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only leases in this state: a state name, `active` (provisioning, ready, releasing) or
    /// `ended`; `warm` lists ready pools' warm runners.
    #[arg(long, value_parser = [
        "active", "ended", "queued", "provisioning", "ready", "releasing", "released", "expired",
        "failed", "canceled", "warm",
    ])]
    state: Option<String>,
    /// Only leases of this pool.
    #[arg(long)]
    pool: Option<String>,
    /// Only leases with this label (`key=value`).
    #[arg(long, value_parser = input::label, value_name = "KEY=VALUE")]
    label: Option<(String, String)>,
    #[command(flatten)]
    page: PageFlags,
}

/// What `lease wait` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Until {
    /// The runner is ready (or the lease ended).
    Ready,
    /// The lease ended and its runner is gone.
    Ended,
}

impl Until {
    fn as_str(self) -> &'static str {
        match self {
            Until::Ready => "ready",
            Until::Ended => "ended",
        }
    }

    /// Whether a long poll for this condition would answer at once.
    fn reached(self, lease: &Lease) -> bool {
        match self {
            Until::Ready => lease.state == LeaseState::Ready || lease.state.is_terminal(),
            Until::Ended => lease.state.is_terminal(),
        }
    }
}

/// Runs a `lease` subcommand.
///
/// # Errors
///
/// Settings are missing, the server refuses (exit 3 at a cap), a wait times out (exit 4),
/// or the server cannot be reached.
pub async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    let api = ctx.api()?;
    let tenant = ctx.tenant(None)?;
    let leases = Leases {
        api: &api,
        tenant: &tenant,
    };
    match command {
        Command::Request(args) => request(ctx, &leases, args).await,
        Command::List(args) => list(ctx, &leases, args).await,
        Command::Show { id } => {
            let lease = leases.get(&id).await?;
            print(ctx.format(), &lease)
        }
        Command::Wait { id, until, timeout } => {
            let lease = leases.get(&id).await?;
            let mut progress = Progress::start();
            let waited = leases
                .wait(lease, until, Instant::now() + timeout, &mut progress)
                .await;
            progress.finish();
            match waited? {
                Waited::Reached(lease) => {
                    if until == Until::Ready && lease.state != LeaseState::Ready {
                        return Err(anyhow::anyhow!(
                            "{} ended before it was ready",
                            describe_end(&lease)
                        ));
                    }
                    print(ctx.format(), &lease)
                }
                Waited::TimedOut(lease) => Err(Failure::TimedOut(format!(
                    "lease {} {} after {} (it is {})",
                    lease.id,
                    match until {
                        Until::Ready => "is not ready",
                        Until::Ended => "has not ended",
                    },
                    output::duration(input::seconds(timeout)),
                    lease.state.as_str(),
                ))
                .into()),
                Waited::Interrupted(lease) => Err(Failure::Interrupted(format!(
                    "interrupted while waiting for lease {} ({})",
                    lease.id,
                    lease.state.as_str()
                ))
                .into()),
            }
        }
        Command::Logs(args) => super::logs::run(ctx, args).await,
        Command::Renew { id, extend } => {
            let body = Heartbeat {
                extend_ttl_s: extend.map(input::seconds),
            };
            let lease: Lease = api
                .write(Method::POST, &leases.path(&id, Some("heartbeat")), &body)
                .await?
                .body;
            print(ctx.format(), &lease)
        }
        Command::Release { id, wait } => {
            let lease = leases.release(&id).await?;
            let Some(wait) = wait else {
                return print(ctx.format(), &lease);
            };
            let mut progress = Progress::start();
            let waited = leases
                .wait(lease, Until::Ended, Instant::now() + wait, &mut progress)
                .await;
            progress.finish();
            match waited? {
                Waited::Reached(lease) => print(ctx.format(), &lease),
                Waited::TimedOut(lease) => Err(Failure::TimedOut(format!(
                    "lease {} is released but its runner is not gone after {} ({}); berth keeps trying",
                    lease.id,
                    output::duration(input::seconds(wait)),
                    lease.state.as_str()
                ))
                .into()),
                Waited::Interrupted(lease) => Err(Failure::Interrupted(format!(
                    "interrupted; lease {} is released and berth is destroying its runner",
                    lease.id
                ))
                .into()),
            }
        }
    }
}

/// `berth lease request`.
async fn request(ctx: &Context, leases: &Leases<'_>, args: RequestArgs) -> anyhow::Result<()> {
    if args.wait.is_some_and(|wait| wait.is_zero()) {
        return Err(failure::usage(
            "--wait needs a duration above zero (leave it out to not wait)",
        ));
    }
    // Check the GitHub output file before asking for a runner, so a usage error leaves none.
    let github_output = if args.github_output {
        Some(github_output_path()?)
    } else {
        None
    };
    let body = LeaseRequest {
        pool: args.pool,
        ttl_s: args.ttl.map(input::seconds),
        idle_timeout_s: args.idle.map(input::seconds),
        wait_s: args.wait.map(input::seconds),
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
    };
    let headers: Vec<(&'static str, String)> = args
        .idempotency_key
        .map(|key| ("idempotency-key", key))
        .into_iter()
        .collect();
    let lease: Lease = leases
        .api
        .send(
            Method::POST,
            &leases.collection(),
            &[],
            Some(&body),
            None,
            &headers,
        )
        .await?
        .body;

    let lease = match args.wait {
        None => lease,
        Some(wait) => {
            let mut progress = Progress::start();
            let waited = leases
                .wait(
                    lease.clone(),
                    Until::Ready,
                    Instant::now() + wait,
                    &mut progress,
                )
                .await;
            progress.finish();
            let waited = match waited {
                Ok(waited) => waited,
                Err(err) => {
                    // The wait broke (the server went away?): do not leave a runner behind.
                    leases.release_quietly(&lease.id).await;
                    return Err(err);
                }
            };
            match waited {
                Waited::Reached(lease) if lease.state == LeaseState::Ready => lease,
                Waited::Reached(lease) if lease.end_reason == Some(EndReason::QueueTimeout) => {
                    return Err(Failure::TimedOut(format!(
                        "lease {} waited {} in the queue without a free slot; it was canceled",
                        lease.id,
                        output::duration(input::seconds(wait))
                    ))
                    .into());
                }
                Waited::Reached(lease) => {
                    return Err(anyhow::anyhow!(
                        "{} before it was ready",
                        describe_end(&lease)
                    ));
                }
                Waited::TimedOut(lease) => {
                    leases.release_quietly(&lease.id).await;
                    return Err(Failure::TimedOut(format!(
                        "lease {} was not ready within {} (it was {}); released it",
                        lease.id,
                        output::duration(input::seconds(wait)),
                        lease.state.as_str()
                    ))
                    .into());
                }
                Waited::Interrupted(lease) => {
                    leases.release_quietly(&lease.id).await;
                    return Err(Failure::Interrupted(format!(
                        "interrupted; released lease {}",
                        lease.id
                    ))
                    .into());
                }
            }
        }
    };
    if let Some(path) = github_output {
        append_github_output(&path, &lease)?;
    }
    print(ctx.format(), &lease)
}

/// `berth lease list`.
async fn list(ctx: &Context, leases: &Leases<'_>, args: ListArgs) -> anyhow::Result<()> {
    let mut query = args.page.query();
    if let Some(state) = args.state {
        query.push(("state", state));
    }
    if let Some(pool) = args.pool {
        query.push(("pool", pool));
    }
    if let Some((key, value)) = args.label {
        query.push(("label", format!("{key}:{value}")));
    }
    let page: Page<Lease> = leases.api.get(&leases.collection(), &query).await?;
    match ctx.format() {
        Format::Json => output::json(&page),
        Format::Id => output::ids(page.items.iter().map(|lease| lease.id.as_str())),
        Format::Table => {
            // Leases waiting on their runner's destroy say why: an operator reading
            // `--state releasing` wants to know what is stuck.
            let why = page
                .items
                .iter()
                .any(|lease| lease.state == LeaseState::Releasing && lease.last_error.is_some());
            let mut columns = vec!["id", "pool", "state", "created", "ends", "cost"];
            if why {
                columns.push("why");
            }
            let mut table = Table::new(&columns).right(5);
            for lease in &page.items {
                let mut row = vec![
                    lease.id.clone(),
                    lease.pool.clone(),
                    state_text(lease),
                    output::time(&lease.created_at),
                    output::time_opt(ends(lease)),
                    cost_text(lease),
                ];
                if why {
                    row.push(releasing_why(lease));
                }
                table.row(row);
            }
            if table.is_empty() {
                eprintln!("no leases");
                return Ok(());
            }
            output::emit(&table.render())?;
            output::more(page.next_cursor.as_ref());
            Ok(())
        }
    }
}

/// The lease routes of one tenant.
struct Leases<'a> {
    api: &'a Api,
    tenant: &'a str,
}

/// How a wait ended.
enum Waited {
    /// The condition holds (for `ready`: ready, or ended).
    Reached(Lease),
    /// The deadline passed first.
    TimedOut(Lease),
    /// SIGINT or SIGTERM arrived first.
    Interrupted(Lease),
}

impl Leases<'_> {
    /// `v1/tenants/{t}/leases`.
    fn collection(&self) -> [&str; 4] {
        ["v1", "tenants", self.tenant, "leases"]
    }

    /// `v1/tenants/{t}/leases/{id}[/{action}]`.
    fn path<'s>(&'s self, id: &'s str, action: Option<&'s str>) -> Vec<&'s str> {
        let mut path = vec!["v1", "tenants", self.tenant, "leases", id];
        path.extend(action);
        path
    }

    async fn get(&self, id: &str) -> anyhow::Result<Lease> {
        self.api.get(&self.path(id, None), &[]).await
    }

    async fn release(&self, id: &str) -> anyhow::Result<Lease> {
        Ok(self
            .api
            .send::<Lease, ()>(
                Method::POST,
                &self.path(id, Some("release")),
                &[],
                NO_BODY,
                None,
                &[],
            )
            .await?
            .body)
    }

    /// Releases a lease the command gave up on; a failure is reported, not returned.
    async fn release_quietly(&self, id: &str) {
        if let Err(err) = self.release(id).await {
            eprintln!("warning: could not release lease {id}: {err:#}; it ends at its TTL");
        }
    }

    /// Long-polls until `until` holds for the lease, `deadline` passes or a signal arrives.
    /// Connection failures and 5xx answers are retried until the deadline (a server
    /// restarting is not the end of a CI job's wait).
    async fn wait(
        &self,
        mut lease: Lease,
        until: Until,
        deadline: Instant,
        progress: &mut Progress,
    ) -> anyhow::Result<Waited> {
        let mut signals = Signals::new();
        // On a terminal, poll often so the queue position shown stays current; elsewhere
        // often enough that the progress shows a line at least every 30 s.
        let longest = if progress.is_live() {
            Duration::from_secs(2)
        } else {
            crate::progress::PLAIN_POLL
        };
        // Whether the current outage was reported (once per outage, not once per retry).
        let mut warned = false;
        loop {
            progress.update(&lease);
            if until.reached(&lease) {
                return Ok(Waited::Reached(lease));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(Waited::TimedOut(lease));
            }
            let poll = remaining.min(longest);
            let timeout_s = poll.as_millis().div_ceil(1_000).max(1);
            let query = [
                ("wait", until.as_str().to_owned()),
                ("timeout_s", timeout_s.to_string()),
            ];
            let path = self.path(&lease.id, None);
            let answer = tokio::select! {
                answer = self.api.long_poll::<Lease>(&path, &query, poll) => answer,
                () = signals.recv() => return Ok(Waited::Interrupted(lease)),
            };
            match answer {
                Ok(fresh) => {
                    lease = fresh;
                    warned = false;
                }
                Err(err) if is_transient(&err) => {
                    if !warned {
                        eprintln!("warning: {err:#}; retrying until the wait ends");
                        warned = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1).min(remaining)) => {}
                        () = signals.recv() => return Ok(Waited::Interrupted(lease)),
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// `$GITHUB_OUTPUT`, which GitHub Actions sets for every step.
fn github_output_path() -> anyhow::Result<PathBuf> {
    std::env::var_os("GITHUB_OUTPUT")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            failure::usage(
                "--github-output needs $GITHUB_OUTPUT, which GitHub Actions sets for each step",
            )
        })
}

/// Appends the step outputs `lease_id` and `runner_address`.
fn append_github_output(path: &PathBuf, lease: &Lease) -> anyhow::Result<()> {
    let address = lease
        .runner
        .as_ref()
        .and_then(|runner| runner.address.clone())
        .unwrap_or_default();
    let mut text = String::new();
    for (name, value) in [
        ("lease_id", lease.id.as_str()),
        ("runner_address", &address),
    ] {
        if value.contains('\n') {
            // GitHub's multi-line syntax; berth's values have no newlines, but be safe.
            text.push_str(&format!("{name}<<BERTH_EOF\n{value}\nBERTH_EOF\n"));
        } else {
            text.push_str(&format!("{name}={value}\n"));
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening $GITHUB_OUTPUT ({})", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing $GITHUB_OUTPUT ({})", path.display()))
}

/// Why a releasing lease is still releasing: `stuck: <error>` once `runner.destroy_stuck`
/// was announced, else the last provider error (the destroy is being retried).
fn releasing_why(lease: &Lease) -> String {
    if lease.state != LeaseState::Releasing {
        return String::new();
    }
    let error = lease.last_error.as_deref().unwrap_or_default();
    let text = match &lease.stuck {
        Some(stuck) => format!(
            "stuck since {}: {}",
            output::time(&stuck.since),
            stuck.reason
        ),
        None => format!("retrying: {error}"),
    };
    text.chars().filter(|c| !c.is_control()).take(160).collect()
}

/// `lease_… expired (ttl)`, `lease_… failed (provider_error): boom`.
pub(super) fn describe_end(lease: &Lease) -> String {
    let mut text = format!("lease {} {}", lease.id, lease.state.as_str());
    if let Some(reason) = lease.end_reason {
        text.push_str(&format!(" ({})", reason.as_str()));
    }
    if let Some(error) = &lease.last_error {
        text.push_str(&format!(": {error}"));
    }
    text
}

/// `ready`, `queued (#2)`, `expired (ttl)`, `releasing (idle)`.
///
/// The reason is shown only when it says more than the state: a lease its client released is
/// `releasing`, then `released`, never `releasing (released)`.
fn state_text(lease: &Lease) -> String {
    let state = lease.state.as_str();
    match (lease.queue_position, lease.end_reason) {
        (Some(position), _) => format!("{state} (#{position})"),
        (None, Some(EndReason::Released)) => state.to_owned(),
        (None, Some(reason)) if reason.as_str() != state => {
            format!("{state} ({})", reason.as_str())
        }
        _ => state.to_owned(),
    }
}

/// Whether the lease's end is decided (releasing, or in a final state): its expiry no longer
/// applies, so it is not shown.
fn has_ended(lease: &Lease) -> bool {
    lease.state.is_terminal() || lease.state == LeaseState::Releasing
}

/// When the lease ends or ended: its expiry while granted, its wait deadline while queued,
/// its end once ended.
fn ends(lease: &Lease) -> Option<&String> {
    match lease.state {
        LeaseState::Queued => lease.wait_until.as_ref(),
        _ if has_ended(lease) => lease.ended_at.as_ref(),
        _ => lease.expires_at.as_ref(),
    }
}

/// What the lease costs: the charge once the runner is gone, else what is reserved.
fn cost_text(lease: &Lease) -> String {
    let cost = &lease.cost;
    if lease.state.is_terminal() {
        output::money(cost.charged_micros)
    } else if cost.reserved_micros > 0 {
        format!("{} reserved", output::money(cost.reserved_micros))
    } else {
        String::new()
    }
}

/// Prints one lease.
fn print(format: Format, lease: &Lease) -> anyhow::Result<()> {
    match format {
        Format::Json => output::json(lease),
        Format::Id => output::ids([lease.id.as_str()]),
        Format::Table => {
            let mut fields = Fields::new();
            fields
                .add("id", &lease.id)
                .add("tenant", &lease.tenant)
                .add("pool", &lease.pool)
                .add("state", state_text(lease))
                .add("created", output::time(&lease.created_at))
                .add("wait until", output::time_opt(lease.wait_until.as_ref()))
                .add("granted", output::time_opt(lease.granted_at.as_ref()))
                .add("ready", output::time_opt(lease.ready_at.as_ref()))
                .add(
                    "expires",
                    if has_ended(lease) {
                        String::new()
                    } else {
                        output::time_opt(lease.expires_at.as_ref())
                    },
                )
                .add("ttl", output::duration(lease.ttl_s))
                .add(
                    "idle timeout",
                    lease
                        .idle_timeout_s
                        .map(output::duration)
                        .unwrap_or_default(),
                )
                .add(
                    "last heartbeat",
                    output::time_opt(lease.last_heartbeat_at.as_ref()),
                )
                .add("ended", output::time_opt(lease.ended_at.as_ref()))
                .add("labels", output::labels(&lease.labels));
            if let Some(runner) = &lease.runner {
                fields
                    .add("runner", runner.id.clone().unwrap_or_default())
                    .add("runner address", runner.address.clone().unwrap_or_default())
                    .add("provider", &runner.provider);
            }
            fields
                .add(
                    "runner gone",
                    output::time_opt(lease.runner_destroyed_at.as_ref()),
                )
                .add(
                    "price",
                    format!("{}/hour", output::money(lease.cost.hourly_price_micros)),
                )
                .add("reserved", output::money(lease.cost.reserved_micros))
                .add("charged", output::money(lease.cost.charged_micros))
                .add("last error", lease.last_error.clone().unwrap_or_default());
            if let Some(stuck) = &lease.stuck {
                fields.add(
                    "stuck",
                    format!("since {}: {}", output::time(&stuck.since), stuck.reason),
                );
            }
            let attempts: Vec<String> = lease
                .provisioning_attempts
                .iter()
                .map(|attempt| {
                    let place = match &attempt.region {
                        Some(region) => format!("{}@{region}", attempt.machine_type),
                        None => attempt.machine_type.clone(),
                    };
                    let outcome = match (&attempt.error_class, &attempt.message) {
                        (None, _) => "made the runner".to_owned(),
                        (Some(class), Some(message)) => format!("{class}: {message}"),
                        (Some(class), None) => class.clone(),
                    };
                    format!("{place} at {}: {outcome}", output::time(&attempt.at))
                })
                .collect();
            fields.add("attempts", attempts.join("; "));
            output::emit(&fields.render())
        }
    }
}
