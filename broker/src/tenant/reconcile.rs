//! Reconciliation: a round lists the tenant's runners at every account and compares them with
//! the leases.
//!
//! **Orphans.** A listed runner is destroyed only when all of these hold, so that berth never
//! destroys what it does not own:
//!
//! - the provider listed it for this installation (it carries this installation's id, or
//!   none: see "Ownership" in the `providers` crate) and for this tenant;
//! - its lease id is one of this tenant's leases and that lease has **ended** (berth writes
//!   every lease before it asks for its runner, so a runner of a lease berth has no record of
//!   is not berth's: another installation sharing the account, a restored backup);
//! - a round saw it at least `--orphan-grace` earlier ([`super::watch`]) and this round sees it
//!   again;
//! - fewer than `--reconcile-max-destroys` orphans of this account were destroyed this round;
//! - `--reconcile-mode` is `destroy` (in `report` mode it is logged, counted and announced
//!   once with `report_only: true`, and left alone).
//!
//! The destroy itself goes by the runner's provider id *and* its tenant and lease, and a
//! provider that can read a runner's labels re-reads them just before deleting (`hetzner`
//! deletes nothing carrying another installation's id, tenant or lease). A destroyed orphan is
//! announced (`runner.orphan_destroyed`) and counted.
//!
//! **Exits and lost runners.** A listing also shows which runners of open leases have exited
//! (a provider marks them with `providers::exits::EXIT_STATUS`): their leases end with
//! `runner_exited`. On a provider whose listing shows every runner
//! (`Provider::lists_every_runner`), a ready lease whose runner two listings in a row did not
//! show ends `runner_lost`, charged up to when its runner was last seen. After a restart, the
//! first activation of a tenant with open leases on `process` runners starts a round at once
//! ([`after_restart`]), which also has the provider watch those still running.
//!
//! **Failing listings.** A failed listing skips the account for the round (nothing is
//! destroyed or ended on a partial view); after `reconcile_failing_after` failures in a row
//! `provider.reconcile_failing` is announced, once per streak. When rounds are due is
//! `upkeep`'s business.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use crate::objects::Error;
use crate::objects::clock::rfc3339;
use crate::wire::{self, EventKind, LeaseState};

use super::book::{ReconcileMode, ms};
use super::broker::{Completion, TenantBroker};
use super::commands::exited;
use super::{Ctx, effects, lease, provisioning, retry, transition, watch};

/// At activation: a round now if this server has not yet looked at this tenant's runners and
/// some open lease has a `process` runner (one an earlier run of berth may have started, whose
/// exit nothing in this run would see).
pub fn after_restart(t: &mut TenantBroker, ctx: &mut Ctx<'_>) {
    let Some(exits) = ctx.env().providers.runner_exits.clone() else {
        return;
    };
    let has_process_runners = t.book.open().any(|lease| {
        lease.granted_at.is_some()
            && !lease.state.is_terminal()
            && t.accounts
                .get(&lease.provider)
                .is_some_and(|live| live.account.kind == "process")
    });
    if has_process_runners && exits.first_look(&t.name) {
        start(t, ctx);
    }
}

/// Starts a round: one listing per account with a usable client; their results come back as
/// [`Completion::Listed`].
pub fn start(t: &mut TenantBroker, ctx: &mut Ctx<'_>) {
    let now = ctx.now_ms();
    let clients: Vec<(String, std::sync::Arc<dyn providers::Provider>)> = t
        .accounts
        .clients()
        .map(|(name, client)| (name.to_owned(), client.clone()))
        .collect();
    let timing = t.book.timing().clone();
    if !t
        .upkeep
        .round_started(now, timing.reconcile_interval, clients.len())
    {
        return;
    }
    super::jit::start_listing(t, ctx);
    for (account, client) in clients {
        let tenant = t.name.clone();
        let families = ctx.env().metrics.families.clone();
        ctx.spawn(async move {
            let started = std::time::Instant::now();
            let result = retry::within(timing.create_timeout, client.list(&tenant), |_| {
                Err(providers::Error::transient("list timed out"))
            })
            .await;
            families.provider_call(client.kind(), "list", result.is_ok(), started.elapsed());
            Completion::Listed {
                account,
                started_at: now,
                result,
            }
        });
    }
}

/// Stores what reconciliation remembers (in the current event).
pub fn save_watch(t: &TenantBroker, ctx: &mut Ctx<'_>) {
    if let Err(err) = ctx.kv_put(watch::KEY, &t.watch) {
        tracing::error!(tenant = %t.name, error = %err, "storing reconciliation's sightings");
    }
}

/// One account's listing came back (from the round started at `started_at`).
pub async fn listed(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    account: &str,
    started_at: i64,
    result: Result<Vec<providers::Runner>, providers::Error>,
) -> Result<(), Error> {
    let ok = result.is_ok();
    match result {
        Ok(runners) => compare(t, ctx, account, started_at, runners).await?,
        Err(err) => listing_failed(t, ctx, account, &err).await?,
    }
    save_watch(t, ctx);
    let now = ctx.now_ms();
    t.upkeep.keep_looking(t.watch.pending(), now);
    t.upkeep.listing_done(ctx, &t.name, ok);
    ctx.env()
        .metrics
        .reconcile_listings
        .fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// A listing failed: the account is skipped this round; a streak is announced once.
async fn listing_failed(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    account: &str,
    err: &providers::Error,
) -> Result<(), Error> {
    let failures = t.watch.listing_failed(account);
    let metrics = ctx.env().metrics.clone();
    metrics
        .reconcile_list_failures
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(tenant = %t.name, %account, failures, error = %err, "reconciliation could not list runners");
    if failures == t.book.timing().reconcile_failing_after {
        metrics.reconcile_failing.fetch_add(1, Ordering::Relaxed);
        tracing::error!(tenant = %t.name, %account, failures, error = %err, "reconciliation keeps failing for this account: orphans and lost runners there go unnoticed");
        let data = wire::ReconcileFailing {
            account: account.to_owned(),
            failures,
            error: err.to_string(),
        };
        effects::emit(t, ctx, EventKind::ProviderReconcileFailing, &data).await?;
    }
    Ok(())
}

/// Compares one account's listing with the leases: exits and lost runners end their leases,
/// orphans are sighted, and destroyed (or reported) once their grace period passed.
async fn compare(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    account: &str,
    started_at: i64,
    runners: Vec<providers::Runner>,
) -> Result<(), Error> {
    let previous_listing = t.watch.listing_ok(account, started_at);
    let Ok(client) = t.accounts.client(account) else {
        return Ok(());
    };
    let timing = t.book.timing().clone();
    let grace = ms(timing.orphan_grace);
    let mut listed_leases = BTreeSet::new();
    let mut orphans = BTreeSet::new();
    let mut destroys = 0usize;
    for runner in runners {
        if runner.tenant != t.name {
            continue;
        }
        listed_leases.insert(runner.lease_id.clone());
        // An open lease owns its runner, even before its create reports back; if the listing
        // says that runner's process is gone, the lease ends.
        if let Some(open) = t.book.get(&runner.lease_id) {
            if open.provider == account
                && let Some(status) = runner.metadata.get(providers::exits::EXIT_STATUS)
            {
                let status = providers::exits::ExitStatus::parse(status);
                exited::end(t, ctx, &runner.lease_id, status, None).await?;
            }
            continue;
        }
        if !lease::exists(ctx.db()?, &runner.lease_id)? {
            tracing::warn!(tenant = %t.name, %account, lease = %runner.lease_id, "a runner for a lease berth has no record of; not berth's to destroy, leaving it");
            continue;
        }
        orphans.insert(runner.id.clone());
        let sighting = t
            .watch
            .sight(account, &runner.id, &runner.lease_id, started_at);
        let first_seen_at = sighting.first_seen_at;
        if started_at.saturating_sub(first_seen_at) < grace {
            tracing::info!(tenant = %t.name, %account, lease = %runner.lease_id, runner = %runner.id, "a runner of an ended lease; destroyed if the next rounds still see it after the grace period");
            continue;
        }
        if timing.reconcile_mode == ReconcileMode::Report {
            if !sighting.reported {
                sighting.reported = true;
                ctx.env()
                    .metrics
                    .orphans_reported
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tenant = %t.name, %account, lease = %runner.lease_id, runner = %runner.id, "report mode: reconciliation would destroy this orphan runner; leaving it");
                let data = orphan_data(account, &runner, first_seen_at, true);
                effects::emit(t, ctx, EventKind::RunnerOrphanDestroyed, &data).await?;
            }
            continue;
        }
        if destroys >= timing.max_orphan_destroys {
            tracing::warn!(tenant = %t.name, %account, lease = %runner.lease_id, runner = %runner.id, cap = timing.max_orphan_destroys, "orphan destroys of this round reached the cap; the next round takes it");
            continue;
        }
        destroys += 1;
        tracing::info!(tenant = %t.name, %account, lease = %runner.lease_id, runner = %runner.id, "orphan runner seen again after its grace period; destroying it");
        t.upkeep.provider_work(ctx, &t.name, &timing);
        let runner_ref = providers::RunnerRef {
            tenant: t.name.clone(),
            lease_id: runner.lease_id.clone(),
            id: Some(runner.id.clone()),
        };
        let (account, lease_id, runner_id) = (account.to_owned(), runner.lease_id, runner.id);
        provisioning::spawn_destroy(
            ctx,
            client.clone(),
            runner_ref,
            timing.destroy_timeout,
            move |result| Completion::OrphanDestroyed {
                account,
                lease_id,
                runner_id,
                first_seen_at: Some(first_seen_at),
                result,
            },
        );
    }
    t.watch.keep_only(account, &orphans);
    if client.lists_every_runner() {
        lost(
            t,
            ctx,
            account,
            started_at,
            previous_listing,
            &listed_leases,
        )
        .await?;
    }
    Ok(())
}

/// Ready leases of `account` whose runner the listing did not show: a first miss is noted, a
/// second in a row ends the lease `runner_lost`; a runner listed again is forgiven.
async fn lost(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    account: &str,
    started_at: i64,
    previous_listing: Option<i64>,
    listed: &BTreeSet<String>,
) -> Result<(), Error> {
    let mut candidates = Vec::new();
    for open in t.book.open() {
        let running = open.state == LeaseState::Ready || open.warm_ready();
        if open.provider != account || !running || open.op.is_some() {
            continue;
        }
        if listed.contains(&open.id) {
            candidates.push((open.id.clone(), None));
            continue;
        }
        // Only a runner that existed before the round started can be missing from it.
        let Some(ready_at) = open.ready_at.filter(|at| *at < started_at) else {
            continue;
        };
        if open.runner_id.is_none() {
            continue;
        }
        // The runner was seen by the last listing that came after it was ready (else that
        // listing would have missed it), or at least when it reported ready.
        let last_seen = previous_listing
            .filter(|at| *at > ready_at)
            .unwrap_or(ready_at);
        candidates.push((open.id.clone(), Some(last_seen)));
    }
    let now = ctx.now_ms();
    for (id, missing) in candidates {
        let Some(last_seen) = missing else {
            t.watch.found(&id);
            continue;
        };
        let (miss, first) = t.watch.missed(&id, last_seen);
        if first {
            tracing::warn!(tenant = %t.name, %account, lease = %id, "the runner of a ready lease is missing from the provider's listing; the lease ends if the next listing misses it too");
            continue;
        }
        t.watch.found(&id);
        let Some(lease) = t.book.take(&id) else {
            continue;
        };
        tracing::warn!(tenant = %t.name, %account, lease = %id, last_seen = %rfc3339(miss.last_seen_at), "the runner vanished at the provider; its lease ends (runner_lost)");
        let ended = transition::runner_lost(lease, miss.last_seen_at, now, t.book.timing());
        effects::apply(t, ctx, ended).await?;
    }
    Ok(())
}

fn orphan_data(
    account: &str,
    runner: &providers::Runner,
    first_seen_at: i64,
    report_only: bool,
) -> wire::OrphanRunner {
    wire::OrphanRunner {
        account: account.to_owned(),
        runner_id: runner.id.clone(),
        lease_id: runner.lease_id.clone(),
        first_seen_at: rfc3339(first_seen_at),
        report_only,
    }
}

/// An orphan's destroy, as its completion names it.
pub struct Destroyed {
    pub account: String,
    pub lease_id: String,
    pub runner_id: String,
    pub first_seen_at: Option<i64>,
}

/// The destroy of an orphan (or of a runner a create made for a closed lease) answered:
/// counted, logged and announced; a failure is retried by the next round.
pub async fn orphan_destroyed(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    destroyed: Destroyed,
    result: Result<(), providers::Error>,
) -> Result<(), Error> {
    let Destroyed {
        account,
        lease_id,
        runner_id,
        first_seen_at,
    } = destroyed;
    match result {
        Ok(()) => {
            ctx.env()
                .metrics
                .reconcile_destroyed
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tenant = %t.name, %account, lease = %lease_id, runner = %runner_id, "reconciliation destroyed a runner no live lease owns");
            t.watch.forget(&account, &runner_id);
            save_watch(t, ctx);
            let data = wire::OrphanRunner {
                account,
                runner_id,
                lease_id,
                first_seen_at: rfc3339(first_seen_at.unwrap_or_else(|| ctx.now_ms())),
                report_only: false,
            };
            effects::emit(t, ctx, EventKind::RunnerOrphanDestroyed, &data).await?;
        }
        Err(err) => {
            tracing::warn!(tenant = %t.name, %account, lease = %lease_id, runner = %runner_id, error = %err, "reconciliation could not destroy an orphan runner; next round retries")
        }
    }
    Ok(())
}
