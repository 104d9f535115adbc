//! Reconciliation: a round lists the tenant's runners at every account and destroys those of
//! leases this tenant knows to have ended — the repair for a runner that outlived its
//! destroy. It never destroys a runner of a lease berth has no record of: berth writes every
//! lease before it asks for its runner, so such a runner is not berth's (another installation
//! sharing the account, a restored backup). When rounds are due is `upkeep`'s business.
//!
//! A listing also shows which runners of open leases have exited (a provider marks them with
//! `providers::exits::EXIT_STATUS`): their leases end with `runner_exited`. That is how an exit
//! nobody saw — the runner ended while berth was stopped — is found; so after a restart, the
//! first activation of a tenant with open leases on `process` runners starts a round at once
//! ([`after_restart`]), which also has the provider watch those still running.

use std::sync::atomic::Ordering;

use crate::objects::Error;

use super::broker::{Completion, TenantBroker};
use super::commands::exited;
use super::{Ctx, lease, provisioning, retry};

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
            Completion::Listed { account, result }
        });
    }
}

/// One account's listing came back: destroys the listed runners that belong to a lease of
/// this tenant that has ended.
pub async fn listed(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    account: &str,
    result: Result<Vec<providers::Runner>, providers::Error>,
) -> Result<(), Error> {
    t.upkeep.listing_done(ctx, &t.name, result.is_ok());
    let runners = match result {
        Ok(runners) => runners,
        Err(err) => {
            tracing::warn!(tenant = %t.name, %account, error = %err, "reconciliation could not list runners");
            return Ok(());
        }
    };
    let Ok(client) = t.accounts.client(account) else {
        return Ok(());
    };
    for runner in runners {
        if runner.tenant != t.name {
            continue;
        }
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
        if !lease::exists(ctx.db().await?, &runner.lease_id).await? {
            tracing::warn!(tenant = %t.name, %account, lease = %runner.lease_id, "a runner for a lease berth has no record of; not berth's to destroy, leaving it");
            continue;
        }
        let runner_ref = providers::RunnerRef {
            tenant: t.name.clone(),
            lease_id: runner.lease_id.clone(),
            id: Some(runner.id),
        };
        tracing::info!(tenant = %t.name, %account, lease = %runner_ref.lease_id, "orphan runner found; destroying it");
        t.upkeep.provider_work(ctx, &t.name, t.book.timing());
        let (account, lease_id) = (account.to_owned(), runner.lease_id);
        provisioning::spawn_destroy(
            ctx,
            client.clone(),
            runner_ref,
            t.book.timing().destroy_timeout,
            move |result| Completion::OrphanDestroyed {
                account,
                lease_id,
                result,
            },
        );
    }
    Ok(())
}

/// Reconciliation's destroy of an orphan answered (counted and logged; a failure is retried by
/// the next round).
pub fn orphan_destroyed(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    account: &str,
    lease_id: &str,
    result: Result<(), providers::Error>,
) {
    match result {
        Ok(()) => {
            ctx.env()
                .metrics
                .reconcile_destroyed
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tenant = %t.name, %account, lease = %lease_id, "reconciliation destroyed a runner no live lease owns");
        }
        Err(err) => {
            tracing::warn!(tenant = %t.name, %account, lease = %lease_id, error = %err, "reconciliation could not destroy an orphan runner; next round retries")
        }
    }
}
