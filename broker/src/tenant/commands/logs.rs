//! Where a lease's runner output can be read: the object confirms the lease is this tenant's
//! and hands out its runner and provider client, so the API reads the output outside the
//! object (it is I/O) and no path ever comes from the request.

use std::sync::Arc;

use crate::objects::Message;
use crate::wire::LeaseState;

use super::super::broker::TenantBroker;
use super::super::lease::{self, Lease};
use super::super::rejection::{Failure, Rejection};
use super::super::{Ctx, printable};
use super::leases::not_found;

/// The runner of lease `id`, to read its output.
#[derive(Debug)]
pub struct LeaseRunner {
    pub id: String,
}

impl Message for LeaseRunner {
    type Reply = Result<RunnerHandle, Rejection>;
    const READ_ONLY: bool = true;
}

/// A lease's runner and the client of the account that made it.
#[derive(Clone, Debug)]
pub struct RunnerHandle {
    pub client: Arc<dyn providers::Provider>,
    pub runner: providers::RunnerRef,
    /// The provider account's name and kind, for people.
    pub account: String,
    pub kind: String,
}

pub async fn runner(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    asked: LeaseRunner,
) -> Result<RunnerHandle, Failure> {
    let stored;
    let lease: &Lease = match t.book.get(&asked.id) {
        Some(open) => open,
        None => match lease::fetch(ctx.db()?, &asked.id)? {
            Some(found) => {
                stored = found;
                &stored
            }
            None => return Err(not_found(&asked.id).into()),
        },
    };
    let id = printable(&lease.id);
    let no_logs = |why: String| Failure::from(Rejection::NoLogs(why));
    match lease.state {
        LeaseState::Queued => {
            return Err(no_logs(format!(
                "lease {id} has no runner yet: it is queued"
            )));
        }
        LeaseState::Canceled => {
            return Err(no_logs(format!(
                "lease {id} never had a runner: it was canceled while queued"
            )));
        }
        state if state.is_terminal() => {
            return Err(no_logs(format!(
                "lease {id} has ended and its runner is gone, with its logs"
            )));
        }
        _ => {}
    }
    let Some(live) = t.accounts.get(&lease.provider) else {
        return Err(no_logs(format!(
            "the provider account `{}` of lease {id} no longer exists",
            lease.provider
        )));
    };
    let client = live.client.clone().map_err(no_logs)?;
    Ok(RunnerHandle {
        client,
        runner: providers::RunnerRef {
            tenant: t.name.clone(),
            lease_id: lease.id.clone(),
            id: lease.runner_id.clone(),
        },
        account: live.account.name.clone(),
        kind: live.account.kind.clone(),
    })
}
