//! Heartbeats: a lease is alive, and may grow its TTL within `max_ttl_s` and the spend caps.

use crate::objects::Message;
use crate::wire;

use super::super::broker::TenantBroker;
use super::super::rejection::{Failure, Rejection};
use super::super::{Ctx, effects, transition};
use super::leases::ended_or_missing;

/// A heartbeat, optionally extending the TTL.
#[derive(Debug)]
pub struct Heartbeat {
    pub id: String,
    pub extend_ttl_s: Option<i64>,
}

impl Message for Heartbeat {
    type Reply = Result<wire::Lease, Rejection>;
}

pub async fn heartbeat(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    heartbeat: Heartbeat,
) -> Result<wire::Lease, Failure> {
    let Some(lease) = t.book.take(&heartbeat.id) else {
        return Err(ended_or_missing(ctx, &heartbeat.id).await?.into());
    };
    let now = ctx.now_ms();
    match transition::heartbeat(lease, &t.book, now, heartbeat.extend_ttl_s) {
        Ok(beat) => {
            effects::apply(t, ctx, beat).await?;
            let lease = t
                .book
                .get(&heartbeat.id)
                .expect("BUG: a live lease stays open");
            Ok(t.lease_view(lease))
        }
        Err(refused) => {
            effects::apply_refused(t, ctx, *refused.lease, &refused.effects).await?;
            Err(refused.rejection.into())
        }
    }
}
