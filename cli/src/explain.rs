//! The server's refusals in the CLI's words.
//!
//! The API answers every refusal as problem+json: a stable `code` and a `detail` written in
//! the API's terms (`ttl_s`, `hourly_price_micros`, `url`). A person at the command line
//! typed flags (`--ttl 10m`, `--price 0.12`, `--target`), so before a client command's failure
//! is printed, [`explain`] turns it into what [`Shown`] prints: one `error:` line in terms of
//! the flags, with values as the flags take them (durations, currency), and the problem's
//! code in parentheses; then, where one helps, one `hint:` line saying what to type next.
//!
//! The API's answers do not change for this: the mapping lives here, keyed by the `code` and,
//! where the code alone is not enough, by the shape of the `detail`. A detail this module
//! does not know is printed as it is, with the API's field names replaced by flags, so a new
//! server message degrades to today's wording, never to a wrong one.
//!
//! Some hints take one more request, best effort (a failure only drops the hint):
//!
//! - an unknown pool (or provider account) lists the ones that exist;
//! - a tenant the token cannot see asks whether the token belongs to a tenant the CLI has
//!   heard of (the config file's, `BERTH_TENANT`), with a read every token may make
//!   (`GET …/leases?limit=1`), and names it. The token itself is never printed.

use broker::wire::{Lease, Page, Pool, Problem, ProviderAccount, TenantSummary};

use crate::commands::Context;
use crate::failure::{Failure, Shown};
use crate::output;

/// How a value of an API field reads on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    /// Whole seconds, shown as a duration (`10m`).
    Seconds,
    /// Micro-units of currency, shown as money (`$0.12`).
    Micros,
    /// A count or text, shown as it is.
    Plain,
}

/// The flag that sets an API field, and how its values read. `quota` picks the operator's
/// `--quota-…` flag for the fields the quota shares with the limits.
fn flag(field: &str, quota: bool) -> Option<(&'static str, Unit)> {
    use Unit::{Micros, Plain, Seconds};
    let found = match (field, quota) {
        ("max_active_leases", true) => ("--quota-max-active", Plain),
        ("max_queued", true) => ("--quota-max-queued", Plain),
        ("spend_cap_daily_micros", true) => ("--quota-daily-cap", Micros),
        ("spend_cap_monthly_micros", true) => ("--quota-monthly-cap", Micros),
        ("max_ttl_s", true) => ("--quota-max-ttl", Seconds),
        ("max_tokens", _) => ("--quota-tokens", Plain),
        ("max_webhooks", _) => ("--quota-webhooks", Plain),
        ("max_pools", _) => ("--quota-pools", Plain),
        ("max_providers", _) => ("--quota-providers", Plain),
        ("max_active_leases", false) => ("--max-active", Plain),
        ("max_queued", false) => ("--max-queued", Plain),
        ("spend_cap_daily_micros", false) => ("--daily-cap", Micros),
        ("spend_cap_monthly_micros", false) => ("--monthly-cap", Micros),
        ("max_ttl_s", false) => ("--max-ttl", Seconds),
        ("default_ttl_s", _) => ("--default-ttl", Seconds),
        ("default_idle_timeout_s", _) => ("--default-idle", Seconds),
        ("ttl_s", _) => ("--ttl", Seconds),
        ("idle_timeout_s", _) => ("--idle", Seconds),
        ("wait_s", _) => ("--wait", Seconds),
        ("extend_ttl_s", _) => ("--extend", Seconds),
        ("hourly_price_micros", _) => ("--price", Micros),
        ("max_active", _) => ("--max-active", Plain),
        ("machine_type", _) => ("--machine-type", Plain),
        ("image", _) => ("--image", Plain),
        ("region", _) => ("--region", Plain),
        ("labels", _) => ("--label", Plain),
        ("command", _) => ("the command after `--`", Plain),
        ("config", _) => ("--config", Plain),
        ("credentials", _) => ("--credentials", Plain),
        ("kind", _) => ("--kind", Plain),
        ("url", _) => ("--target", Plain),
        ("secret", _) => ("--secret", Plain),
        ("events", _) => ("--event", Plain),
        ("limit", _) => ("--limit", Plain),
        ("cursor", _) => ("--cursor", Plain),
        ("after", _) => ("--after", Plain),
        ("period", _) => ("--period", Plain),
        _ => return None,
    };
    Some(found)
}

/// A value of `unit` as the flag takes it; text that is not a number stays as it is.
fn value(text: &str, unit: Unit) -> String {
    match (unit, text.parse::<i64>()) {
        (Unit::Seconds, Ok(seconds)) => output::duration(seconds),
        (Unit::Micros, Ok(micros)) => output::money(micros),
        _ => text.to_owned(),
    }
}

/// Turns a client command's failure into what is printed. `command` is the subcommand path
/// (`lease request`), for hints that name it.
pub async fn explain(ctx: &Context, command: &str, err: anyhow::Error) -> Shown {
    let mut shown = Shown::from_error(&err);
    let Some(failure) = err.downcast_ref::<Failure>() else {
        return shown;
    };
    match failure {
        // `quickstart` already says how to start the server in its message.
        Failure::Unreachable { url, .. } if !shown.message.contains("berth serve") => {
            shown.hint = Some(format!(
                "is `berth serve` running at {url}? Start it with `berth serve`, or point \
                 --url (BERTH_URL) at the server"
            ));
        }
        Failure::Api(problem) => {
            let (message, hint) = problem_words(ctx, command, problem).await;
            // Keep any context the command added around the server's answer.
            shown.message = shown.message.replace(&failure.to_string(), &message);
            shown.hint = hint;
        }
        _ => {}
    }
    shown
}

/// The error line (`detail (code)` in the CLI's words) and the hint for one problem.
async fn problem_words(
    ctx: &Context,
    command: &str,
    problem: &Problem,
) -> (String, Option<String>) {
    let code = problem.code.as_str();
    let detail = reword(&problem.detail, ctx.settings.tenant.as_deref());
    let message = format!("{detail} ({code})");
    let hint = match (problem.status, code) {
        (429, "concurrency_cap") => Some(
            "`--wait 5m` queues the request until a lease ends; `berth lease list --state active` \
             shows the leases holding the cap"
                .to_owned(),
        ),
        (429, "spend_cap") if command == "lease renew" => Some(
            "`berth usage` shows what is charged and reserved; `berth lease list --state active` \
             shows the leases holding reservations"
                .to_owned(),
        ),
        (429, "spend_cap") => Some(
            "`--wait 5m` queues the request until ending leases free their reservations; \
             `berth usage` shows the spend, `berth lease list --state active` the leases holding it"
                .to_owned(),
        ),
        (429, "queue_full") => Some(
            "the queue takes no more: `berth lease list --state queued` shows it, \
             `berth lease list --state active` the leases holding the cap; try again later"
                .to_owned(),
        ),
        (401, _) => Some(
            "check --token (BERTH_TOKEN), or save a working one with `berth login --token …`"
                .to_owned(),
        ),
        (403, "forbidden") => Some(forbidden_hint(command, &problem.detail)),
        (403, "operator_only") => Some(operator_hint("this takes the operator's admin token")),
        (403, "quota_exceeded") => Some(operator_hint(
            "only the operator's admin token raises a quota (`berth tenant set --quota-…`)",
        )),
        (404, _) if quoted_after(&problem.detail, "tenant ").is_some() => {
            tenant_hint(
                ctx,
                quoted_after(&problem.detail, "tenant ").unwrap_or_default(),
            )
            .await
        }
        (422, _)
            if problem.detail.starts_with("pool `")
                && problem.detail.contains("does not exist") =>
        {
            pools_hint(ctx).await
        }
        (422, _)
            if problem.detail.starts_with("provider account `")
                && problem.detail.contains("does not exist") =>
        {
            providers_hint(ctx).await
        }
        (409, "no_logs") if problem.detail.contains("keeps no output") => Some(
            "berth keeps the output of `process` runners only; a cloud runner's output stays on \
             its machine (or in your CI system's job log)"
                .to_owned(),
        ),
        (409, "account_in_use") => Some(
            "release the account's leases first (berth lease list --state active), or repeat \
             with --force: berth keeps the old identity to destroy their runners"
                .to_owned(),
        ),
        (422, _) if problem.detail.contains("--allow-private-webhooks") => Some(
            "use a public URL, or ask the operator to allow targets on berth's own network"
                .to_owned(),
        ),
        _ => None,
    };
    (message, hint)
}

/// The text between the backticks right after `prefix` at the start of `detail`:
/// `tenant `acme` not found` → `acme`.
fn quoted_after<'d>(detail: &'d str, prefix: &str) -> Option<&'d str> {
    let rest = detail.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(quoted, _)| quoted)
}

/// A 403 `forbidden`: which scope or token the command needs.
fn forbidden_hint(command: &str, detail: &str) -> String {
    match detail
        .split_once("lacks the `")
        .and_then(|(_, rest)| rest.split_once('`'))
    {
        Some((scope, _)) => format!(
            "`berth {command}` needs a token with the {scope} scope: a tenant admin makes one with \
             `berth token create --scope {scope}`; the operator's admin token may do everything"
        ),
        None => format!(
            "`berth {command}` needs the operator's admin token (the `admin-token` file in \
             `berth serve`'s data directory)"
        ),
    }
}

/// A refusal only the operator can lift.
fn operator_hint(lead: &str) -> String {
    format!(
        "{lead}: it is the `admin-token` file in `berth serve`'s data directory; ask the \
         operator, or pass it with --token (BERTH_TOKEN)"
    )
}

/// A tenant the token cannot see: 404 for another tenant's token and for no such tenant
/// alike (the server tells a token nothing of other tenants). Say which tenant the token
/// belongs to when one the CLI has heard of answers it.
async fn tenant_hint(ctx: &Context, asked: &str) -> Option<String> {
    let api = ctx.api().ok()?;
    // The admin token sees every tenant: then the tenant really does not exist.
    let limit = [("limit", "1".to_owned())];
    if api
        .get::<Page<TenantSummary>>(&["v1", "tenants"], &limit)
        .await
        .is_ok()
    {
        return Some("`berth tenant list` shows the tenants".to_owned());
    }
    let settings = &ctx.settings;
    let mut candidates = Vec::new();
    if settings.file.token.is_some() && settings.file.token == settings.token {
        candidates.extend(settings.file.tenant.clone());
    }
    candidates.extend(std::env::var("BERTH_TENANT").ok());
    candidates.retain(|candidate| !candidate.is_empty() && candidate != asked);
    candidates.dedup();
    for candidate in candidates {
        // Every token may read its own tenant's leases (a narrower token gets 403, not 404).
        let answer = api
            .get::<Page<Lease>>(&["v1", "tenants", &candidate, "leases"], &limit)
            .await;
        let mine = match &answer {
            Ok(_) => true,
            Err(err) => matches!(
                err.downcast_ref::<Failure>(),
                Some(Failure::Api(problem)) if problem.status == 403
            ),
        };
        if mine {
            return Some(format!(
                "this token belongs to tenant `{candidate}` and sees no other: drop \
                 --tenant {asked}, or use a token of `{asked}`"
            ));
        }
    }
    Some(format!(
        "a tenant's token sees only its own tenant: check --tenant (BERTH_TENANT), or use a \
         token of `{asked}`"
    ))
}

/// An unknown pool: the pools that exist (every token of the tenant may list them).
async fn pools_hint(ctx: &Context) -> Option<String> {
    let api = ctx.api().ok()?;
    let tenant = ctx.tenant(None).ok()?;
    match api
        .get::<Page<Pool>>(&["v1", "tenants", &tenant, "pools"], &[])
        .await
    {
        Ok(page) if page.items.is_empty() => Some(format!(
            "tenant {tenant} has no pools yet; `berth pool set` makes one"
        )),
        Ok(page) => Some(format!(
            "the pools of {tenant}: {}",
            names(page.items.iter().map(|pool| pool.name.as_str()))
        )),
        Err(_) => Some("`berth pool list` shows the pools".to_owned()),
    }
}

/// An unknown provider account: the accounts that exist.
async fn providers_hint(ctx: &Context) -> Option<String> {
    let api = ctx.api().ok()?;
    let tenant = ctx.tenant(None).ok()?;
    let page = api
        .get::<Page<ProviderAccount>>(&["v1", "tenants", &tenant, "providers"], &[])
        .await
        .ok()?;
    Some(if page.items.is_empty() {
        format!("tenant {tenant} has no provider accounts yet; `berth provider set` makes one")
    } else {
        format!(
            "the provider accounts of {tenant}: {}",
            names(page.items.iter().map(|account| account.name.as_str()))
        )
    })
}

/// `a, b, c`, and a count past the first twenty.
fn names<'n>(names: impl Iterator<Item = &'n str>) -> String {
    let all: Vec<&str> = names.collect();
    let mut text = all.iter().take(20).copied().collect::<Vec<_>>().join(", ");
    if all.len() > 20 {
        text.push_str(&format!(" and {} more", all.len() - 20));
    }
    text
}

/// A problem's `detail` in the CLI's words: the known sentences rewritten whole (values in
/// the flags' units), any other with its API field names replaced by flags.
fn reword(detail: &str, tenant: Option<&str>) -> String {
    reword_known(detail, tenant).unwrap_or_else(|| replace_fields(detail))
}

/// The sentences the server says about limits and caps, rewritten whole.
fn reword_known(detail: &str, tenant: Option<&str>) -> Option<String> {
    let who = tenant.map_or_else(|| "the tenant".to_owned(), |t| format!("tenant {t}"));
    // `N of max_active_leases M leases are active`
    if let Some(rest) = detail.strip_suffix(" leases are active")
        && let Some((active, cap)) = rest.split_once(" of max_active_leases ")
    {
        return Some(format!(
            "{who} is at its cap: {active} of {cap} leases active"
        ));
    }
    // pool `P` has N of its max_active M leases active
    if let Some(pool) = quoted_after(detail, "pool ")
        && let Some(rest) = detail.split_once(" has ").map(|(_, rest)| rest)
        && let Some((active, rest)) = rest.split_once(" of its max_active ")
        && let Some(cap) = rest.strip_suffix(" leases active")
    {
        return Some(format!(
            "pool {pool} is at its cap: {active} of {cap} leases active"
        ));
    }
    // the queue is full (N of max_queued M)
    if let Some(rest) = detail.strip_prefix("the queue is full (")
        && let Some((queued, cap)) = rest
            .strip_suffix(')')
            .and_then(|rest| rest.split_once(" of max_queued "))
    {
        return Some(format!(
            "the queue of {who} is full: {queued} of at most {cap} requests wait"
        ));
    }
    // extending by E s would make the TTL N s, past max_ttl_s M (now T s)
    if let Some(rest) = detail.strip_prefix("extending by ") {
        let seconds = |text: &str| value(text.trim().trim_end_matches(" s"), Unit::Seconds);
        if let Some((extend, rest)) = rest.split_once(" would make the TTL ")
            && let Some((ttl, rest)) = rest.split_once(", past max_ttl_s ")
            && let Some((max, now)) = rest.split_once(" (now ")
        {
            return Some(format!(
                "--extend {} would make the TTL {}, past the tenant's max TTL of {} (it is {} now)",
                seconds(extend),
                seconds(ttl),
                seconds(max),
                seconds(now.trim_end_matches(')'))
            ));
        }
        // extending by E s needs X more micros, past the spend cap
        if let Some((extend, rest)) = rest.split_once(" needs ")
            && let Some((micros, _)) = rest.split_once(" more micros")
        {
            return Some(format!(
                "--extend {} would reserve {} more, past the spend cap",
                seconds(extend),
                value(micros, Unit::Micros)
            ));
        }
    }
    // [quota ]`F` must be between A and B[ (max_ttl_s)]
    let (quota, rest) = match detail.strip_prefix("quota ") {
        Some(rest) => (true, rest),
        None => (false, detail),
    };
    if let Some(field) = quoted_after(rest, "")
        && let Some((name, unit)) = flag(field, quota)
        && let Some(range) = rest.split_once(" must be between ").map(|(_, range)| range)
        && let Some((low, high)) = range.split_once(" and ")
    {
        let (high, tail) = high.split_once(' ').unwrap_or((high, ""));
        let high = match flag(high, false) {
            Some((other, _)) => format!("the tenant's {other}"),
            None => value(high, unit),
        };
        let tail = match tail {
            "" => String::new(),
            "(max_ttl_s)" => format!(", {who}'s max TTL"),
            other => format!(" {}", replace_fields(other)),
        };
        return Some(format!(
            "{name} must be between {} and {high}{tail}",
            value(low, unit)
        ));
    }
    // `F` V is above this tenant's quota of Q; …
    if let Some(field) = quoted_after(detail, "")
        && let Some((name, unit)) = flag(field, false)
        && let Some(rest) = detail.split_once("` ").map(|(_, rest)| rest)
    {
        if let Some((limit, rest)) = rest.split_once(" is above this tenant's quota of ") {
            let (ceiling, tail) = rest.split_once(';').unwrap_or((rest, ""));
            return Some(format!(
                "{name} {} is above this tenant's quota of {}{}",
                value(limit, unit),
                value(ceiling, unit),
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(";{tail}")
                }
            ));
        }
        if let Some(rest) = rest.strip_prefix("cannot be removed: this tenant's quota caps it at ")
        {
            let (ceiling, tail) = rest.split_once(';').unwrap_or((rest, ""));
            return Some(format!(
                "{name} cannot be `none`: this tenant's quota caps it at {}{}",
                value(ceiling, unit),
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(";{tail}")
                }
            ));
        }
    }
    None
}

/// Words after which the server quotes a name people chose (`pool `image``), not a field.
const NAMED: [&str; 8] = [
    "pool ", "account ", "webhook ", "tenant ", "lease ", "type ", "scope ", "token ",
];

/// Replaces every API field name in backticks (`` `ttl_s` ``) with the flag that sets it,
/// and names the webhook target by its flag (`webhook `url`: …` → `--target: …`). A quoted
/// name (`pool `image``) stays as it is, whatever it is called.
fn replace_fields(detail: &str) -> String {
    let detail = detail.replace("webhook `url`", "--target");
    let mut text = String::with_capacity(detail.len());
    let mut rest = detail.as_str();
    while let Some((before, after)) = rest.split_once('`') {
        text.push_str(before);
        let named = NAMED.iter().any(|noun| text.ends_with(noun));
        match after.split_once('`') {
            Some((quoted, tail)) => {
                match flag(quoted, false).filter(|_| !named) {
                    Some((name, _)) => text.push_str(name),
                    None => {
                        text.push('`');
                        text.push_str(quoted);
                        text.push('`');
                    }
                }
                rest = tail;
            }
            None => {
                text.push('`');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's limit sentences come out in flags, with durations and money as the flags
    /// take them, and no API field name left.
    #[test]
    fn limits_read_as_flags() {
        let cases = [
            (
                "`ttl_s` must be between 1 and 86400 (max_ttl_s)",
                "--ttl must be between 1s and 1d, tenant acme's max TTL",
            ),
            (
                "`idle_timeout_s` must be between 1 and 2592000",
                "--idle must be between 1s and 30d",
            ),
            (
                "`default_ttl_s` must be between 1 and max_ttl_s",
                "--default-ttl must be between 1s and the tenant's --max-ttl",
            ),
            (
                "quota `max_pools` must be between 0 and 100000",
                "--quota-pools must be between 0 and 100000",
            ),
            (
                "`hourly_price_micros` must be between 0 and 1000000000",
                "--price must be between $0.00 and $1000.00",
            ),
            (
                "`max_active_leases` 6 is above this tenant's quota of 5; the operator sets the quota",
                "--max-active 6 is above this tenant's quota of 5; the operator sets the quota",
            ),
            (
                "`spend_cap_daily_micros` cannot be removed: this tenant's quota caps it at 20000000; the operator sets the quota",
                "--daily-cap cannot be `none`: this tenant's quota caps it at $20.00; the operator sets the quota",
            ),
            (
                "4 of max_active_leases 4 leases are active",
                "tenant acme is at its cap: 4 of 4 leases active",
            ),
            (
                "pool `gpu` has 2 of its max_active 2 leases active",
                "pool gpu is at its cap: 2 of 2 leases active",
            ),
            (
                "the queue is full (3 of max_queued 3)",
                "the queue of tenant acme is full: 3 of at most 3 requests wait",
            ),
            (
                "extending by 600 s would make the TTL 2400 s, past max_ttl_s 1800 (now 1800 s)",
                "--extend 10m would make the TTL 40m, past the tenant's max TTL of 30m (it is 30m now)",
            ),
            (
                "extending by 600 s needs 20000 more micros, past the spend cap",
                "--extend 10m would reserve $0.02 more, past the spend cap",
            ),
            (
                "pool `x` has no price: set `hourly_price_micros`, or use a provider account whose price list has machine type `cx22`",
                "pool `x` has no price: set --price, or use a provider account whose price list has machine type `cx22`",
            ),
            (
                "webhook `url`: address 127.0.0.1 is loopback",
                "--target: address 127.0.0.1 is loopback",
            ),
            ("lease `lease_x` not found", "lease `lease_x` not found"),
            ("pool `image` does not exist", "pool `image` does not exist"),
            (
                "provider account `config` does not exist; create it first",
                "provider account `config` does not exist; create it first",
            ),
        ];
        for (detail, expected) in cases {
            assert_eq!(reword(detail, Some("acme")), expected, "{detail}");
        }
    }
}
