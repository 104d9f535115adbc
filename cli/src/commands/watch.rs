//! `berth watch`: follows the tenant's event stream (`GET /v1/tenants/{t}/events`, Server-Sent
//! Events) and prints each event as it happens.
//!
//! It starts from now: the server opens the stream with the number of the newest event, and
//! only later ones are printed (`--after N` starts after event N, `--from-start` replays every
//! stored event first).
//!
//! Each SSE message has `id:` = the event's per-tenant sequence number, `event:` = its type
//! and `data:` = the [`EventMessage`]. A dropped connection is resumed with `Last-Event-ID` =
//! the last sequence number received, so no event is missed or repeated; reconnections back
//! off from 0.5 s to 10 s and each outage is reported once. The command ends after `--count`
//! events (exit 0), at `--timeout` (exit 4 if fewer than `--count` arrived, else 0), on
//! SIGINT or SIGTERM (exit 130), or when the reader of stdout goes away.

use std::time::Duration;

use broker::wire::{EventMessage, Lease};
use tokio::time::Instant;

use super::Context;
use crate::client::{Api, is_transient};
use crate::failure::{self, Failure};
use crate::input;
use crate::output::{self, Format};
use crate::signals::Signals;
use crate::sse;

/// The first pause before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The flags of `berth watch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Start after this event (its `seq`), replaying the stored ones after it; default: from
    /// now, only events that happen after `berth watch` starts.
    #[arg(long, value_name = "SEQ", conflicts_with = "from_start")]
    after: Option<u64>,
    /// Replay every stored event (the last 7 days) first, then follow.
    #[arg(long)]
    from_start: bool,
    /// Only events of this type (`lease.ready`, `budget.threshold`, …); repeat for several.
    #[arg(long = "type", value_parser = super::webhook::event_type, value_name = "TYPE")]
    types: Vec<String>,
    /// Only the events of this lease (`lease_…`).
    #[arg(long, value_name = "ID")]
    lease: Option<String>,
    /// Stop after this many events (those the filters let through).
    #[arg(long, value_name = "N", value_parser = positive)]
    count: Option<u64>,
    /// Stop after this long (`30s`, `10m`); exit 4 if --count events did not arrive by then.
    #[arg(long, value_parser = input::duration, value_name = "DURATION")]
    timeout: Option<Duration>,
}

/// A count of at least 1.
fn positive(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(format!("`{text}` is not a count of at least 1")),
    }
}

/// How following the stream ended, short of an error.
enum End {
    /// `--count` events arrived, or stdout was closed.
    Done,
    /// `--timeout` passed.
    TimedOut,
    /// SIGINT or SIGTERM.
    Interrupted,
}

/// Runs `berth watch`.
///
/// # Errors
///
/// Settings are missing, the server refuses the stream or cannot be reached at first (exit
/// 1), fewer than `--count` events arrived by `--timeout` (exit 4), or a signal arrived (exit
/// 130).
pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    super::no_ids(ctx.format(), "`berth watch`")?;
    if args.timeout.is_some_and(|timeout| timeout.is_zero()) {
        return Err(failure::usage("--timeout needs a duration above zero"));
    }
    let api = ctx.api()?;
    let tenant = ctx.tenant(None)?;
    let mut watch = Watch {
        api: &api,
        tenant: &tenant,
        format: ctx.format(),
        last: match (args.after, args.from_start) {
            (Some(after), _) => Some(i64::try_from(after).unwrap_or(i64::MAX)),
            (None, true) => Some(0),
            (None, false) => None,
        },
        seen: 0,
        args: &args,
    };
    let deadline = args.timeout.map(|timeout| Instant::now() + timeout);
    let mut signals = Signals::new();
    let end = tokio::select! {
        end = watch.follow() => end?,
        () = sleep_until(deadline) => End::TimedOut,
        () = signals.recv() => End::Interrupted,
    };
    let seen = watch.seen;
    match end {
        End::Done => Ok(()),
        End::TimedOut => match args.count {
            Some(count) if seen < count => Err(Failure::TimedOut(format!(
                "{seen} of {count} events arrived within {}",
                output::duration(input::seconds(args.timeout.unwrap_or_default()))
            ))
            .into()),
            _ => Ok(()),
        },
        End::Interrupted => Err(Failure::Interrupted(format!(
            "interrupted after {seen} {}",
            if seen == 1 { "event" } else { "events" }
        ))
        .into()),
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The state of one `berth watch`.
struct Watch<'a> {
    api: &'a Api,
    tenant: &'a str,
    format: Format,
    /// The last event received (filtered out or not): where a reconnection resumes.
    last: Option<i64>,
    /// Events printed.
    seen: u64,
    args: &'a Args,
}

impl Watch<'_> {
    /// Follows the stream, reconnecting after drops, until `--count` events are printed or
    /// stdout closes. Returns an error only for a first connection that fails or an answer
    /// that will not change by retrying (401, 404, …).
    async fn follow(&mut self) -> anyhow::Result<End> {
        let path = ["v1", "tenants", self.tenant, "events"];
        let mut connected = false;
        let mut backoff = FIRST_BACKOFF;
        // Whether the current outage was reported (once per outage, not once per retry).
        let mut warned = false;
        loop {
            let headers: Vec<(&'static str, String)> = self
                .last
                .map(|seq| ("last-event-id", seq.to_string()))
                .into_iter()
                .collect();
            let broke = match self.api.stream(&path, &headers).await {
                Ok(mut response) => {
                    connected = true;
                    backoff = FIRST_BACKOFF;
                    if std::mem::take(&mut warned) {
                        eprintln!("reconnected to {}", self.api.base());
                    }
                    let mut parser = sse::Parser::new();
                    loop {
                        match response.chunk().await {
                            Ok(Some(chunk)) => {
                                let events = parser.push(&chunk);
                                self.started(parser.take_bare_id());
                                for event in events {
                                    if let Some(end) = self.event(&event)? {
                                        return Ok(end);
                                    }
                                }
                            }
                            Ok(None) => break "the server closed the stream".to_owned(),
                            Err(err) => break format!("{:#}", self.api.broken(&err)),
                        }
                    }
                }
                Err(err) if connected && is_transient(&err) => format!("{err:#}"),
                Err(err) => return Err(err),
            };
            if !warned {
                eprintln!("warning: {broke}; reconnecting");
                warned = true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The server opened a stream from now, after event `id`: resume from there, and say so
    /// once (on stderr: it is not an event).
    fn started(&mut self, id: Option<String>) {
        let Some(seq) = id.and_then(|id| id.parse::<i64>().ok()) else {
            return;
        };
        if self.last.is_none() {
            self.last = Some(seq);
            eprintln!(
                "watching the events of {} from now (after event {seq}); --from-start replays the stored ones",
                self.tenant
            );
        }
    }

    /// Handles one SSE event: `Some` when the command is done.
    fn event(&mut self, event: &sse::Event) -> anyhow::Result<Option<End>> {
        let message: EventMessage = serde_json::from_str(&event.data).map_err(|err| {
            anyhow::anyhow!(
                "unexpected event from {} (is it a berth of the same version?): {err}",
                self.api.base()
            )
        })?;
        let seq = message
            .seq
            .or_else(|| event.id.as_deref().and_then(|id| id.parse().ok()));
        if let Some(seq) = seq {
            self.last = Some(seq);
        }
        if !self.wanted(&message) {
            return Ok(None);
        }
        let line = match self.format {
            Format::Json => serde_json::to_string(&message)
                .map_err(|err| anyhow::anyhow!("encoding JSON: {err}"))?,
            Format::Table | Format::Id => line(&message),
        };
        if !output::emit_live(&format!("{line}\n"))? {
            return Ok(Some(End::Done));
        }
        self.seen += 1;
        Ok((self.args.count == Some(self.seen)).then_some(End::Done))
    }

    /// Whether the filters let `message` through.
    fn wanted(&self, message: &EventMessage) -> bool {
        if !self.args.types.is_empty() && !self.args.types.contains(&message.kind) {
            return false;
        }
        match &self.args.lease {
            Some(lease) => {
                message.kind.starts_with("lease.")
                    && message.data.get("id").and_then(|id| id.as_str()) == Some(lease.as_str())
            }
            None => true,
        }
    }
}

/// One line for people: time, seq, type, and the lease's id and state or the budget's figures.
fn line(message: &EventMessage) -> String {
    let seq = message.seq.map(|seq| seq.to_string()).unwrap_or_default();
    format!(
        "{}  {seq:>5}  {:<16}  {}",
        output::time_absolute(&message.timestamp),
        message.kind,
        detail(message)
    )
    .trim_end()
    .to_owned()
}

/// `lease_… ready  pool linux`, `day: 80% of the cap ($8.00 of $10.00)`.
fn detail(message: &EventMessage) -> String {
    if message.kind.starts_with("lease.")
        && let Ok(lease) = serde_json::from_value::<Lease>(message.data.clone())
    {
        let mut state = lease.state.as_str().to_owned();
        if let Some(position) = lease.queue_position {
            state.push_str(&format!(" (#{position})"));
        }
        if let Some(reason) = lease.end_reason
            && reason.as_str() != lease.state.as_str()
        {
            state.push_str(&format!(" ({})", reason.as_str()));
        }
        let mut text = format!("{}  {state}  pool {}", lease.id, lease.pool);
        if lease.state.is_terminal() {
            text.push_str(&format!(
                "  charged {}",
                output::money(lease.cost.charged_micros)
            ));
        }
        if let Some(error) = &lease.last_error {
            text.push_str(&format!("  error: {error}"));
        }
        return text;
    }
    let data = &message.data;
    let money = |field: &str| {
        data.get(field)
            .and_then(serde_json::Value::as_i64)
            .map(output::money)
    };
    let period = data.get("period").and_then(|p| p.as_str());
    match (
        message.kind.as_str(),
        period,
        money("spent_micros"),
        money("cap_micros"),
    ) {
        ("budget.threshold", Some(period), Some(spent), Some(cap)) => {
            let percent = data
                .get("threshold_percent")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or_default();
            format!("{period}: {percent}% of the cap spent ({spent} of {cap})")
        }
        ("budget.exhausted", Some(period), Some(spent), Some(cap)) => {
            format!("{period}: the cap is reached ({spent} of {cap})")
        }
        _ => data.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Budget events read as figures in currency; unknown shapes show their JSON.
    #[test]
    fn budget_lines() {
        let message = EventMessage {
            kind: "budget.threshold".into(),
            timestamp: "2026-11-27T12:00:05Z".into(),
            seq: Some(12),
            data: serde_json::json!({
                "period": "day", "threshold_percent": 80,
                "spent_micros": 8_000_000, "cap_micros": 10_000_000,
            }),
        };
        assert_eq!(
            line(&message),
            "2026-11-27 12:00:05Z     12  budget.threshold  day: 80% of the cap spent ($8.00 of $10.00)"
        );
        let other = EventMessage {
            kind: "lease.ready".into(),
            data: serde_json::json!({"id": "lease_x"}),
            ..message
        };
        assert!(line(&other).ends_with(r#"{"id":"lease_x"}"#));
    }
}
