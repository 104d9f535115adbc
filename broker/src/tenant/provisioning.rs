//! The provider side of a lease: starting its runner's create and destroy as background work
//! (never inside the object), and folding their answers back into the lease through
//! [`transition::created`] and [`transition::destroyed`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::objects::Error;

use super::broker::{Completion, TenantBroker};
use super::lease::Lease;
use super::retry;
use super::{Ctx, effects, transition};

/// Starts the provider's create of `lease`'s runner in the background. The transition that
/// asked for it has marked the call in flight; with no usable client (a bad account,
/// credentials that do not open) the create fails at once, through the same completion.
pub fn start_create(t: &mut TenantBroker, ctx: &mut Ctx<'_>, lease: &Lease) {
    let lease_id = lease.id.clone();
    let account = lease.provider.clone();
    let client = match t.accounts.client(&lease.provider) {
        Ok(client) => client,
        Err(why) => {
            ctx.spawn(async move {
                Completion::Created {
                    lease_id,
                    account,
                    result: Err(providers::Error::Permanent(why)),
                }
            });
            return;
        }
    };
    let jit_config = match super::jit::before_create(t, ctx, lease) {
        super::jit::Prepared::NotNeeded => None,
        super::jit::Prepared::Config(config) => Some(config),
        // The registration's answer starts the create (or fails it).
        super::jit::Prepared::Deferred => return,
        super::jit::Prepared::Refused(why) => {
            ctx.spawn(async move {
                Completion::Created {
                    lease_id,
                    account,
                    result: Err(providers::Error::Permanent(why)),
                }
            });
            return;
        }
    };
    let env = ctx.env();
    let mut vars = BTreeMap::from([
        ("BERTH_LEASE_ID".to_owned(), lease.id.clone()),
        ("BERTH_TENANT".to_owned(), t.name.clone()),
        ("BERTH_POOL".to_owned(), lease.pool.clone()),
        (
            "BERTH_CALLBACK_URL".to_owned(),
            format!("{}/v1/runners/{}", env.public_url, lease.id),
        ),
        (
            "BERTH_RUNNER_TOKEN".to_owned(),
            env.keys.runner_token(&t.name, &lease.id),
        ),
    ]);
    if let Some(config) = jit_config {
        // Not one of the lease variables: `RunnerSpec::secrets` redacts it from provider errors.
        vars.insert(super::jit::CONFIG_VAR.to_owned(), config);
    }
    let spec = providers::RunnerSpec {
        tenant: t.name.clone(),
        lease_id: lease.id.clone(),
        pool: lease.pool.clone(),
        machine_type: lease.spec.machine_type.clone(),
        image: lease.spec.image.clone(),
        region: lease.spec.region.clone(),
        command: lease.spec.command.clone(),
        labels: BTreeMap::from([("berth-pool".to_owned(), lease.pool.clone())]),
        env: vars,
    };
    let timeout = t.book.timing().create_timeout;
    t.upkeep.provider_work(ctx, &t.name, t.book.timing());
    let families = ctx.env().metrics.families.clone();
    ctx.spawn(async move {
        let started = std::time::Instant::now();
        let result = retry::within(timeout, client.create(&spec), |timeout| {
            Err(providers::Error::transient(format!(
                "create did not answer within {} s",
                timeout.as_secs()
            )))
        })
        .await;
        families.provider_call(client.kind(), "create", result.is_ok(), started.elapsed());
        Completion::Created {
            lease_id,
            account,
            result,
        }
    });
}

/// Starts the provider's destroy of `lease`'s runner in the background, through the identity
/// that made it (the account's, or the one it had before a forced change). With no usable
/// client the destroy fails at once (the lease stays releasing and retries: an operator can
/// repair the account).
pub fn start_destroy(t: &mut TenantBroker, ctx: &mut Ctx<'_>, lease: &Lease) {
    let lease_id = lease.id.clone();
    let client = match t.accounts.client_for(&lease.provider, &lease.id) {
        Ok(client) => client,
        Err(why) => {
            ctx.spawn(async move {
                Completion::Destroyed {
                    lease_id,
                    result: Err(providers::Error::Permanent(why)),
                }
            });
            return;
        }
    };
    let runner = providers::RunnerRef {
        tenant: t.name.clone(),
        lease_id: lease.id.clone(),
        id: lease.runner_id.clone(),
    };
    t.upkeep.provider_work(ctx, &t.name, t.book.timing());
    spawn_destroy(
        ctx,
        client,
        runner,
        t.book.timing().destroy_timeout,
        move |result| Completion::Destroyed { lease_id, result },
    );
}

/// Runs a provider destroy with its timeout in the background; `done` makes the completion.
pub fn spawn_destroy(
    ctx: &mut Ctx<'_>,
    client: Arc<dyn providers::Provider>,
    runner: providers::RunnerRef,
    timeout: std::time::Duration,
    done: impl FnOnce(Result<(), providers::Error>) -> Completion + Send + 'static,
) {
    let families = ctx.env().metrics.families.clone();
    ctx.spawn(async move {
        let started = std::time::Instant::now();
        let result = retry::within(timeout, client.destroy(&runner), |timeout| {
            Err(providers::Error::transient(format!(
                "destroy did not answer within {} s",
                timeout.as_secs()
            )))
        })
        .await;
        families.provider_call(client.kind(), "destroy", result.is_ok(), started.elapsed());
        done(result)
    });
}

/// The provider's create answered (from `account`, the lease's).
pub async fn created(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    lease_id: &str,
    account: &str,
    result: Result<providers::Runner, providers::Error>,
) -> Result<(), Error> {
    crate::failpoint::hit("tenant.created.before_commit");
    let Some(lease) = t.book.take(lease_id) else {
        // The lease is gone already (it cannot be: a lease with a create in flight stays
        // open). Destroy the runner rather than leak it, at the account that made it.
        if let Ok(runner) = result {
            tracing::warn!(tenant = %t.name, lease = %lease_id, %account, "runner created for a closed lease; destroying it");
            destroy_stray(t, ctx, account, runner);
        }
        return Ok(());
    };
    if let Err(err) = &result {
        tracing::warn!(tenant = %t.name, lease = %lease.id, error = %err, attempts = lease.provider_attempts, "provider create failed");
    }
    let now = ctx.now_ms();
    let answered = match result {
        Err(err @ providers::Error::Capacity(_)) if transition::can_fall_back(&lease) => {
            tracing::info!(tenant = %t.name, lease = %lease.id, machine_type = %lease.spec.machine_type, "out of capacity; trying the pool's next alternative");
            transition::fall_back(lease, err, &t.book, now, t.book.timing())
        }
        result => transition::created(lease, result, now, t.book.timing()),
    };
    effects::apply(t, ctx, answered).await
}

/// The account `account` was changed: releasing leases of it whose destroy waits (after a
/// refusal, with a long backoff) try again now.
pub async fn retry_destroys_now(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    account: &str,
) -> Result<(), Error> {
    let now = ctx.now_ms();
    let waiting: Vec<String> = t
        .book
        .open()
        .filter(|lease| {
            lease.provider == account
                && lease.state == crate::wire::LeaseState::Releasing
                && lease.op.is_none()
                && lease.next_attempt_at.is_some_and(|at| at > now)
        })
        .map(|lease| lease.id.clone())
        .collect();
    for id in waiting {
        if let Some(mut lease) = t.book.take(&id) {
            lease.next_attempt_at = Some(now);
            let due = transition::deadline(lease, now, t.book.timing());
            effects::apply(t, ctx, due).await?;
        }
    }
    Ok(())
}

/// The provider's destroy answered.
pub async fn destroyed(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    lease_id: &str,
    result: Result<(), providers::Error>,
) -> Result<(), Error> {
    let Some(lease) = t.book.take(lease_id) else {
        return Ok(());
    };
    if let Err(err) = &result {
        tracing::warn!(tenant = %t.name, lease = %lease.id, error = %err, attempts = lease.provider_attempts, "provider destroy failed; the lease stays releasing and is retried");
    }
    let now = ctx.now_ms();
    if result.is_ok() {
        t.accounts.settled(ctx, lease_id)?;
        if t.watch.found(lease_id) {
            super::reconcile::save_watch(t, ctx);
        }
    }
    let answered = transition::destroyed(lease, result, now, t.book.timing());
    effects::apply(t, ctx, answered).await
}

/// Destroys a runner that belongs to no open lease, at the account that made it (best
/// effort, logged by reconciliation's completion; a failure is left to reconciliation).
fn destroy_stray(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    account: &str,
    runner: providers::Runner,
) {
    let Ok(client) = t.accounts.client_for(account, &runner.lease_id) else {
        tracing::warn!(tenant = %t.name, %account, lease = %runner.lease_id, "no client for the account that made a stray runner; reconciliation will find it");
        return;
    };
    let account = account.to_owned();
    let runner_id = runner.id.clone();
    let runner_ref = providers::RunnerRef {
        tenant: t.name.clone(),
        lease_id: runner.lease_id.clone(),
        id: Some(runner.id),
    };
    let lease_id = runner.lease_id;
    spawn_destroy(
        ctx,
        client,
        runner_ref,
        t.book.timing().destroy_timeout,
        move |result| Completion::OrphanDestroyed {
            account,
            lease_id,
            runner_id,
            first_seen_at: None,
            result,
        },
    );
}
