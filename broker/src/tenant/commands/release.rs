//! Ending a lease on request: its client releases it, or its runner says its job is done.

use crate::objects::Message;
use crate::wire::{self, EndReason};

use super::super::broker::TenantBroker;
use super::super::lease;
use super::super::rejection::{Failure, Rejection};
use super::super::{Ctx, effects, transition};
use super::leases::not_found;
use super::ready::check_runner_token;

/// Ends a lease (client release); idempotent: an ending or ended lease is answered as it is.
#[derive(Debug)]
pub struct Release {
    pub id: String,
}

impl Message for Release {
    type Reply = Result<wire::Lease, Rejection>;
}

/// The runner reports its job done (authenticated by its runner token): the lease ends with
/// `runner_done`.
pub struct RunnerDone {
    pub id: String,
    pub token: String,
}

impl std::fmt::Debug for RunnerDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerDone")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Message for RunnerDone {
    type Reply = Result<wire::Lease, Rejection>;
}

pub async fn release(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    release: Release,
) -> Result<wire::Lease, Failure> {
    end(t, ctx, &release.id, EndReason::Released).await
}

pub async fn runner_done(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    done: RunnerDone,
) -> Result<wire::Lease, Failure> {
    check_runner_token(t, ctx, &done.id, &done.token)?;
    end(t, ctx, &done.id, EndReason::RunnerDone).await
}

/// Ends the lease `id` for `reason` and answers it as it is then.
pub async fn end(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    id: &str,
    reason: EndReason,
) -> Result<wire::Lease, Failure> {
    let Some(lease) = t.book.take(id) else {
        return match lease::fetch(ctx.db()?, id)? {
            Some(lease) => Ok(t.lease_view(&lease)),
            None => Err(not_found(id).into()),
        };
    };
    if lease.state == crate::wire::LeaseState::Warm && reason == EndReason::Released {
        // A warm runner is its pool's, not a client's: lowering the pool's min_ready retires it.
        let pool = lease.pool.clone();
        t.book.put(lease);
        return Err(Rejection::Invalid(format!(
            "lease {id} is a warm runner of pool `{pool}`: request a lease of the pool to take it, or lower the pool's min_ready"
        ))
        .into());
    }
    let now = ctx.now_ms();
    let ended = transition::end(lease, reason, now, t.book.timing());
    let view = t.lease_view(&ended.lease);
    effects::apply(t, ctx, ended).await?;
    Ok(match t.book.get(id) {
        Some(open) => t.lease_view(open),
        None => view,
    })
}
