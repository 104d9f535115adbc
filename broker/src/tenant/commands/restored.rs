//! After a tenant's state was replaced by a backup's (`berth restore --tenant`): the runners
//! the replaced state owned that the restored state has no open lease for are destroyed, and
//! a reconciliation round starts, so no runner is left behind by the swap.
//!
//! Reconciliation alone would not do it: it never destroys a runner of a lease berth has no
//! record of, and a lease granted after the backup was taken is exactly that. So the server
//! reads the runners of the replaced file ([`owned_runners`]) before the swap and hands them
//! to the restored object ([`Restored`]), which destroys those its own book does not own.

use std::path::Path;

use crate::objects::sqlite::{Db, OpenFlags};
use crate::objects::{Error, Message};

use super::super::broker::{Completion, TenantBroker};
use super::super::rejection::{Failure, Rejection};
use super::super::{Ctx, provisioning, reconcile};

/// A runner the tenant's state owned: its lease (not ended, runner not confirmed gone), the
/// account it came from and the runner's id when the create reported one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRunner {
    pub lease_id: String,
    pub account: String,
    pub runner_id: Option<String>,
}

/// The runners a tenant database at rest owns (read-only; the object must be closed).
///
/// # Errors
///
/// The file cannot be read.
pub async fn owned_runners(path: &Path) -> Result<Vec<OwnedRunner>, Error> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let path = path.to_owned();
    let rows: Vec<(String, String, Option<String>)> = tokio::task::spawn_blocking(move || {
        let mut db = Db::open(
            &path,
            OpenFlags {
                create: false,
                read_only: true,
                vfs: None,
            },
        )?;
        let rows = db
            .query(
                "SELECT id, provider, runner_id FROM leases \
                 WHERE granted_at IS NOT NULL AND runner_destroyed_at IS NULL",
            )
            .fetch_all()?;
        db.close()?;
        Ok::<_, Error>(rows)
    })
    .await
    .map_err(|err| Error::Other(anyhow::anyhow!("reading a replaced tenant file: {err}")))??;
    Ok(rows
        .into_iter()
        .map(|(lease_id, account, runner_id)| OwnedRunner {
            lease_id,
            account,
            runner_id,
        })
        .collect())
}

/// The tenant's state was just restored; `runners` are what the replaced state owned.
#[derive(Debug)]
pub struct Restored {
    pub runners: Vec<OwnedRunner>,
}

/// How many runners the restored object set out to destroy, and how many it could not (no
/// such account in the restored state).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RestoredReply {
    pub destroying: usize,
    pub without_account: Vec<String>,
}

impl Message for Restored {
    type Reply = Result<RestoredReply, Rejection>;
}

pub async fn restored(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    restored: Restored,
) -> Result<RestoredReply, Failure> {
    let mut reply = RestoredReply::default();
    for runner in restored.runners {
        // An open lease of the restored state owns its runner (it goes on, or ends by the
        // usual path).
        if t.book.get(&runner.lease_id).is_some() {
            continue;
        }
        let Ok(client) = t.accounts.client(&runner.account) else {
            tracing::error!(tenant = %t.name, account = %runner.account, lease = %runner.lease_id,
                "restored state has no such provider account: this runner must be removed by hand");
            reply.without_account.push(runner.lease_id);
            continue;
        };
        tracing::info!(tenant = %t.name, account = %runner.account, lease = %runner.lease_id,
            "restore: the restored state has no open lease for this runner; destroying it");
        let runner_ref = providers::RunnerRef {
            tenant: t.name.clone(),
            lease_id: runner.lease_id.clone(),
            id: runner.runner_id,
        };
        t.upkeep.provider_work(ctx, &t.name, t.book.timing());
        let (account, lease_id) = (runner.account, runner.lease_id);
        // The provider's id when the replaced state had recorded it (events name it).
        let runner_id = runner_ref.id.clone().unwrap_or_default();
        provisioning::spawn_destroy(
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
        reply.destroying += 1;
    }
    // Runners of leases the restored state holds as ended, and exits nobody saw.
    reconcile::start(t, ctx);
    Ok(reply)
}
