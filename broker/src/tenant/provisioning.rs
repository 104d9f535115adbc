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
    let client = match t.accounts.client(&lease.provider) {
        Ok(client) => client,
        Err(why) => {
            ctx.spawn(async move {
                Completion::Created {
                    lease_id,
                    result: Err(providers::Error::Permanent(why)),
                }
            });
            return;
        }
    };
    let env = ctx.env();
    let vars = BTreeMap::from([
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
        Completion::Created { lease_id, result }
    });
}

/// Starts the provider's destroy of `lease`'s runner in the background. With no usable client
/// the destroy fails at once (the lease stays releasing and retries: an operator can repair
/// the account).
pub fn start_destroy(t: &mut TenantBroker, ctx: &mut Ctx<'_>, lease: &Lease) {
    let lease_id = lease.id.clone();
    let client = match t.accounts.client(&lease.provider) {
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

/// The provider's create answered.
pub async fn created(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    lease_id: &str,
    result: Result<providers::Runner, providers::Error>,
) -> Result<(), Error> {
    crate::failpoint::hit("tenant.created.before_commit");
    let Some(lease) = t.book.take(lease_id) else {
        // The lease is gone already (it cannot be: a lease with a create in flight stays
        // open). Destroy the runner rather than leak it.
        if let Ok(runner) = result {
            tracing::warn!(tenant = %t.name, lease = %lease_id, "runner created for a closed lease; destroying it");
            destroy_stray(t, ctx, runner);
        }
        return Ok(());
    };
    if let Err(err) = &result {
        tracing::warn!(tenant = %t.name, lease = %lease.id, error = %err, attempts = lease.provider_attempts, "provider create failed");
    }
    let now = ctx.now_ms();
    let answered = transition::created(lease, result, now, t.book.timing());
    effects::apply(t, ctx, answered).await
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
    let answered = transition::destroyed(lease, result, now, t.book.timing());
    effects::apply(t, ctx, answered).await
}

/// Destroys a runner that belongs to no open lease (best effort, logged by reconciliation's
/// completion).
fn destroy_stray(t: &mut TenantBroker, ctx: &mut Ctx<'_>, runner: providers::Runner) {
    let Some((account, client)) = t
        .accounts
        .clients()
        .next()
        .map(|(name, client)| (name.to_owned(), client.clone()))
    else {
        return;
    };
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
            result,
        },
    );
}
