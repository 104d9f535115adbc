//! `berth webhook set|list|show|delete|test|deliveries`.
//!
//! An endpoint receives the tenant's events signed as Standard Webhooks; berth retries a
//! failed delivery with backoff for 24 h, then dead-letters it (DESIGN.md §7). `webhook test
//! --wait [DURATION]` follows one test delivery through the deliveries list until it is delivered
//! (exit 0) or dead (exit 1), or the wait runs out (exit 4).

use std::path::PathBuf;
use std::time::Duration;

use broker::wire::{DeliveryStatus, EVENT_TYPES, Page, Webhook, WebhookDelivery, WebhookPut};
use reqwest::Method;
use tokio::time::Instant;

use super::Context;
use crate::client::{Api, NO_BODY, is_transient};
use crate::failure::{self, Failure};
use crate::input;
use crate::output::{self, Fields, Format, Table};
use crate::signals::Signals;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create or replace a webhook endpoint (tenant:admin).
    ///
    /// Flags left out take their defaults (every event type, enabled); the signing secret is
    /// kept unless one is given. A new endpoint without --secret gets a generated one, printed
    /// this once.
    #[command(after_help = "Examples:
  berth webhook set alerts --target https://ci.example.com/berth
  berth webhook set alerts --target https://ci.example.com/berth --event lease.ready --event lease.failed
  berth webhook set audit --target https://audit.example.com/hook --secret-file whsec.txt
  berth webhook test alerts --wait 30s")]
    Set(SetArgs),
    /// List the webhook endpoints (never their secrets).
    List,
    /// Show one endpoint with its pending and dead-lettered delivery counts.
    Show {
        /// The endpoint's name.
        name: String,
    },
    /// Delete an endpoint and its deliveries.
    Delete {
        /// The endpoint's name.
        name: String,
    },
    /// Send a `webhook.test` event to an endpoint.
    ///
    /// With --wait, follow the delivery until it is delivered (exit 0) or dead-lettered
    /// (exit 1); exit 4 if neither happens in time. A disabled endpoint takes no test.
    Test {
        /// The endpoint's name.
        name: String,
        /// Wait for the delivery's outcome, at most this long (`30s`, `5m`; 30s when given
        /// without a value).
        #[arg(long, num_args = 0..=1, default_missing_value = "30s", value_parser = input::duration, value_name = "DURATION")]
        wait: Option<Duration>,
        /// How long --wait waits: the spelling from before --wait took a duration, kept so
        /// scripts that use it go on working; it wins over --wait's value.
        #[arg(long, hide = true, value_parser = input::duration, value_name = "DURATION", requires = "wait")]
        timeout: Option<Duration>,
    },
    /// An endpoint's deliveries, newest first: status, attempts, last answer, next attempt.
    Deliveries {
        /// The endpoint's name.
        name: String,
        /// Only deliveries in this status.
        #[arg(long, value_enum)]
        status: Option<StatusFlag>,
        /// At most this many deliveries (1–1000; the server's default is 100).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Continue after this cursor (the previous page's `next_cursor`).
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
    },
}

/// The flags of `berth webhook set`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The endpoint's name: lowercase letters, digits and `-`.
    name: String,
    /// The URL deliveries go to (http or https). Loopback and private addresses are refused
    /// unless the server runs with --allow-private-webhooks. (Not `--url`: that is the berth
    /// server's, on every command.)
    #[arg(long, value_name = "URL")]
    target: String,
    /// The signing secret, `whsec_` followed by base64. Prefer --secret-file: a secret on the
    /// command line stays in the shell's history.
    #[arg(long, value_name = "SECRET", conflicts_with = "secret_file")]
    secret: Option<String>,
    /// Read the signing secret from this file (surrounding whitespace is ignored).
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// An event type to send; repeat for several. Default: every type.
    #[arg(long = "event", value_parser = event_type, value_name = "TYPE")]
    events: Vec<String>,
    /// Store the endpoint disabled: no events are queued or sent for it until it is set again
    /// without --disable.
    #[arg(long)]
    disable: bool,
}

/// `--status` of `webhook deliveries`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFlag {
    /// Waiting for its first attempt or a retry.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up on (24 h of retries, or 410 Gone).
    Dead,
}

impl StatusFlag {
    fn as_str(self) -> &'static str {
        match self {
            StatusFlag::Pending => "pending",
            StatusFlag::Delivered => "delivered",
            StatusFlag::Dead => "dead",
        }
    }
}

/// An event type berth sends.
pub fn event_type(text: &str) -> Result<String, String> {
    if EVENT_TYPES.contains(&text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{text}` is not an event type; known: {}",
            EVENT_TYPES.join(", ")
        ))
    }
}

/// Runs a `webhook` subcommand.
///
/// # Errors
///
/// Settings are missing, the secret file is unreadable, the server refuses, it cannot be
/// reached, or a test delivery is dead (exit 1) or still pending when the wait ends (exit 4).
pub async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    let api = ctx.api()?;
    let tenant = ctx.tenant(None)?;
    let hooks = Hooks {
        api: &api,
        tenant: &tenant,
    };
    match command {
        Command::Set(args) => set(ctx, &hooks, args).await,
        Command::List => {
            let page: Page<Webhook> = api.get(&hooks.path(None, None), &[]).await?;
            match ctx.format() {
                Format::Json => output::json(&page),
                Format::Id => output::ids(page.items.iter().map(|hook| hook.name.as_str())),
                Format::Table => {
                    if page.items.is_empty() {
                        eprintln!("no webhooks");
                        return Ok(());
                    }
                    let mut table = Table::new(&[
                        "name", "url", "events", "enabled", "pending", "dead", "updated",
                    ])
                    .right(4)
                    .right(5);
                    for hook in &page.items {
                        table.row(vec![
                            hook.name.clone(),
                            hook.url.clone(),
                            events_text(&hook.events),
                            yes_no(hook.enabled),
                            hook.pending.to_string(),
                            hook.dead.to_string(),
                            output::time(&hook.updated_at),
                        ]);
                    }
                    output::emit(&table.render())?;
                    output::more(page.next_cursor.as_ref());
                    Ok(())
                }
            }
        }
        Command::Show { name } => {
            let hook: Webhook = api.get(&hooks.path(Some(&name), None), &[]).await?;
            print(ctx.format(), &hook)
        }
        Command::Delete { name } => {
            api.send::<(), ()>(
                Method::DELETE,
                &hooks.path(Some(&name), None),
                &[],
                NO_BODY,
                None,
                &[],
            )
            .await?;
            match ctx.format() {
                Format::Json => output::json(&serde_json::json!({ "name": name, "deleted": true })),
                Format::Id => output::ids([name.as_str()]),
                Format::Table => output::emit(&format!("deleted webhook {name}\n")),
            }
        }
        Command::Test {
            name,
            wait,
            timeout,
        } => {
            let wait = timeout.or(wait);
            if wait.is_some_and(|wait| wait.is_zero()) {
                return Err(failure::usage(
                    "--wait needs a duration above zero (leave it out to not wait)",
                ));
            }
            // The server queues a test for a disabled endpoint but sends nothing while it is.
            let hook: Webhook = api.get(&hooks.path(Some(&name), None), &[]).await?;
            if !hook.enabled {
                return Err(anyhow::anyhow!(
                    "webhook `{name}` is disabled, so nothing would be sent; enable it with \
                     `berth webhook set {name} --target {}`",
                    hook.url
                ));
            }
            let delivery: WebhookDelivery = api
                .send::<_, ()>(
                    Method::POST,
                    &hooks.path(Some(&name), Some("test")),
                    &[],
                    NO_BODY,
                    None,
                    &[],
                )
                .await?
                .body;
            let Some(wait) = wait else {
                print_delivery(ctx.format(), &delivery)?;
                if ctx.format() == Format::Table {
                    eprintln!("Follow it with `berth webhook deliveries {name}`.");
                }
                return Ok(());
            };
            let delivery = hooks.follow(&name, delivery, Instant::now() + wait).await?;
            match delivery.status {
                DeliveryStatus::Delivered => print_delivery(ctx.format(), &delivery),
                DeliveryStatus::Dead => Err(anyhow::anyhow!(
                    "test delivery {} to webhook `{name}` is dead after {} {}{}",
                    delivery.id,
                    delivery.attempts,
                    plural(delivery.attempts, "attempt"),
                    last_answer(&delivery)
                        .map(|last| format!(": {last}"))
                        .unwrap_or_default()
                )),
                DeliveryStatus::Pending => Err(Failure::TimedOut(format!(
                    "test delivery {} to webhook `{name}` is still pending after {} ({})",
                    delivery.id,
                    output::duration(input::seconds(wait)),
                    match last_answer(&delivery) {
                        Some(last) => format!(
                            "{} {}, last: {last}",
                            delivery.attempts,
                            plural(delivery.attempts, "attempt")
                        ),
                        None => "not tried yet: an endpoint gets its deliveries one at a time, \
                                 oldest first"
                            .to_owned(),
                    }
                ))
                .into()),
            }
        }
        Command::Deliveries {
            name,
            status,
            limit,
            cursor,
        } => {
            let mut query = Vec::new();
            if let Some(status) = status {
                query.push(("status", status.as_str().to_owned()));
            }
            if let Some(limit) = limit {
                query.push(("limit", limit.to_string()));
            }
            if let Some(cursor) = cursor {
                query.push(("cursor", cursor));
            }
            let page: Page<WebhookDelivery> = api
                .get(&hooks.path(Some(&name), Some("deliveries")), &query)
                .await?;
            match ctx.format() {
                Format::Json => output::json(&page),
                Format::Id => {
                    let ids: Vec<String> = page.items.iter().map(|d| d.id.to_string()).collect();
                    output::ids(ids.iter().map(String::as_str))
                }
                Format::Table => {
                    if page.items.is_empty() {
                        eprintln!("no deliveries");
                        return Ok(());
                    }
                    let mut table = Table::new(&[
                        "id",
                        "event",
                        "seq",
                        "status",
                        "attempts",
                        "last status",
                        "next attempt",
                        "last error",
                    ])
                    .right(0)
                    .right(2)
                    .right(4)
                    .right(5);
                    for delivery in &page.items {
                        table.row(vec![
                            delivery.id.to_string(),
                            delivery.event_type.clone(),
                            delivery.seq.map(|seq| seq.to_string()).unwrap_or_default(),
                            status_text(delivery.status).to_owned(),
                            delivery.attempts.to_string(),
                            delivery
                                .last_status
                                .map(|status| status.to_string())
                                .unwrap_or_default(),
                            next_attempt(delivery),
                            delivery.last_error.clone().unwrap_or_default(),
                        ]);
                    }
                    output::emit(&table.render())?;
                    output::more(page.next_cursor.as_ref());
                    Ok(())
                }
            }
        }
    }
}

/// `berth webhook set`.
async fn set(ctx: &Context, hooks: &Hooks<'_>, args: SetArgs) -> anyhow::Result<()> {
    let secret = match (args.secret, &args.secret_file) {
        (Some(secret), _) => Some(secret),
        (None, Some(path)) => Some(input::secret_file(path)?),
        (None, None) => None,
    };
    let body = WebhookPut {
        url: args.target,
        secret,
        events: (!args.events.is_empty()).then_some(args.events),
        enabled: Some(!args.disable),
    };
    let hook: Webhook = hooks
        .api
        .write(Method::PUT, &hooks.path(Some(&args.name), None), &body)
        .await?
        .body;
    print(ctx.format(), &hook)?;
    if hook.secret.is_some() && ctx.format() == Format::Table {
        eprintln!(
            "Store the secret now: berth shows it only this once. Receivers verify deliveries with it."
        );
    }
    Ok(())
}

/// The webhook routes of one tenant.
struct Hooks<'a> {
    api: &'a Api,
    tenant: &'a str,
}

impl Hooks<'_> {
    /// `v1/tenants/{t}/webhooks[/{name}[/{action}]]`.
    fn path<'s>(&'s self, name: Option<&'s str>, action: Option<&'s str>) -> Vec<&'s str> {
        let mut path = vec!["v1", "tenants", self.tenant, "webhooks"];
        path.extend(name);
        path.extend(action);
        path
    }

    /// Polls the deliveries list until `delivery` is no longer pending, `deadline` passes
    /// (returned still pending) or a signal arrives (exit 130). Attempts are shown on stderr as
    /// they happen; connection failures and 5xx answers are retried until the deadline.
    async fn follow(
        &self,
        name: &str,
        mut delivery: WebhookDelivery,
        deadline: Instant,
    ) -> anyhow::Result<WebhookDelivery> {
        let mut signals = Signals::new();
        let path = self.path(Some(name), Some("deliveries"));
        // Deliveries list newest first and the cursor means "ids below": this is exactly ours.
        let query = [
            ("cursor", (delivery.id + 1).to_string()),
            ("limit", "1".to_owned()),
        ];
        let mut shown = (delivery.status, delivery.attempts);
        let mut warned = false;
        let mut pause = Duration::from_millis(200);
        while delivery.status == DeliveryStatus::Pending {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(pause.min(remaining)) => {}
                () = signals.recv() => return Err(Failure::Interrupted(format!(
                    "interrupted while waiting for test delivery {} (pending)",
                    delivery.id
                )).into()),
            }
            pause = (pause * 2).min(Duration::from_secs(2));
            let answer = tokio::select! {
                answer = self.api.get::<Page<WebhookDelivery>>(&path, &query) => answer,
                () = signals.recv() => return Err(Failure::Interrupted(format!(
                    "interrupted while waiting for test delivery {} (pending)",
                    delivery.id
                )).into()),
            };
            match answer {
                Ok(page) => {
                    warned = false;
                    let Some(fresh) = page.items.into_iter().find(|d| d.id == delivery.id) else {
                        return Err(anyhow::anyhow!(
                            "test delivery {} is gone (was webhook `{name}` deleted?)",
                            delivery.id
                        ));
                    };
                    delivery = fresh;
                }
                Err(err) if is_transient(&err) => {
                    if !warned {
                        eprintln!("warning: {err:#}; retrying until the wait ends");
                        warned = true;
                    }
                }
                Err(err) => return Err(err),
            }
            if (delivery.status, delivery.attempts) != shown {
                shown = (delivery.status, delivery.attempts);
                if delivery.status == DeliveryStatus::Pending {
                    eprintln!(
                        "delivery {}: attempt {} {}; next attempt {}",
                        delivery.id,
                        delivery.attempts,
                        last_answer(&delivery).unwrap_or_else(|| "failed".to_owned()),
                        next_attempt(&delivery)
                    );
                }
            }
        }
        Ok(delivery)
    }
}

/// `the endpoint answered 500`, or the error of the last attempt.
fn last_answer(delivery: &WebhookDelivery) -> Option<String> {
    delivery
        .last_error
        .clone()
        .or_else(|| delivery.last_status.map(|s| format!("answered {s}")))
}

/// When a pending delivery is tried next; empty once it is finished.
fn next_attempt(delivery: &WebhookDelivery) -> String {
    match delivery.status {
        DeliveryStatus::Pending => delivery
            .next_attempt_at
            .as_deref()
            .map_or_else(|| "now".to_owned(), output::time),
        DeliveryStatus::Delivered | DeliveryStatus::Dead => String::new(),
    }
}

fn status_text(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Pending => "pending",
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Dead => "dead",
    }
}

fn plural(count: i64, word: &str) -> String {
    if count == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

/// The event types of an endpoint: `all` when it names none.
fn events_text(events: &[String]) -> String {
    if events.is_empty() {
        "all".to_owned()
    } else {
        events.join(", ")
    }
}

/// Prints one endpoint (with its secret, when the answer holds the generated one).
fn print(format: Format, hook: &Webhook) -> anyhow::Result<()> {
    match format {
        Format::Json => output::json(hook),
        Format::Id => output::ids([hook.name.as_str()]),
        Format::Table => {
            let mut fields = Fields::new();
            fields
                .add("name", &hook.name)
                .add("url", &hook.url)
                .add("events", events_text(&hook.events))
                .add("enabled", yes_no(hook.enabled))
                .add("pending", hook.pending.to_string())
                .add("dead", hook.dead.to_string())
                .add("created", output::time(&hook.created_at))
                .add("updated", output::time(&hook.updated_at))
                .add("secret", hook.secret.clone().unwrap_or_default());
            output::emit(&fields.render())
        }
    }
}

/// Prints one delivery.
fn print_delivery(format: Format, delivery: &WebhookDelivery) -> anyhow::Result<()> {
    match format {
        Format::Json => output::json(delivery),
        Format::Id => output::ids([delivery.id.to_string().as_str()]),
        Format::Table => {
            let mut fields = Fields::new();
            fields
                .add("id", delivery.id.to_string())
                .add("webhook", &delivery.endpoint)
                .add("message id", &delivery.msg_id)
                .add("event", &delivery.event_type)
                .add(
                    "seq",
                    delivery.seq.map(|seq| seq.to_string()).unwrap_or_default(),
                )
                .add("status", status_text(delivery.status))
                .add("attempts", delivery.attempts.to_string())
                .add(
                    "last status",
                    delivery
                        .last_status
                        .map(|status| status.to_string())
                        .unwrap_or_default(),
                )
                .add(
                    "last error",
                    delivery.last_error.clone().unwrap_or_default(),
                )
                .add("next attempt", next_attempt(delivery))
                .add("created", output::time(&delivery.created_at))
                .add("finished", output::time_opt(delivery.finished_at.as_ref()));
            output::emit(&fields.render())
        }
    }
}
