//! The runner's callbacks: it says it is ready (authenticated by its runner token).

use std::collections::BTreeMap;

use crate::objects::Message;
use crate::wire;

use super::super::broker::TenantBroker;
use super::super::rejection::{Failure, Rejection};
use super::super::{Ctx, effects, transition};
use super::leases::ended_or_missing;

/// The runner reports ready, with how to reach it and facts to show on the lease.
pub struct RunnerReady {
    pub id: String,
    pub token: String,
    pub address: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for RunnerReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerReady")
            .field("id", &self.id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Message for RunnerReady {
    type Reply = Result<wire::Lease, Rejection>;
}

pub async fn runner_ready(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    ready: RunnerReady,
) -> Result<wire::Lease, Failure> {
    check_runner_token(t, ctx, &ready.id, &ready.token)?;
    let Some(lease) = t.book.take(&ready.id) else {
        return Err(ended_or_missing(ctx, &ready.id).await?.into());
    };
    let now = ctx.now_ms();
    match transition::runner_ready(lease, now, ready.address, ready.metadata) {
        Ok(ready_now) => {
            let view = t.lease_view(&ready_now.lease);
            effects::apply(t, ctx, ready_now).await?;
            Ok(view)
        }
        Err(refused) => {
            effects::apply_refused(t, ctx, *refused.lease, &refused.effects).await?;
            Err(refused.rejection.into())
        }
    }
}

/// Refuses a runner token that is not the lease's (compared in constant time).
pub fn check_runner_token(
    t: &TenantBroker,
    ctx: &Ctx<'_>,
    id: &str,
    token: &str,
) -> Result<(), Rejection> {
    if ctx.env().keys.check_runner_token(&t.name, id, token) {
        Ok(())
    } else {
        Err(Rejection::BadRunnerToken)
    }
}
