//! Provider accounts: creating or replacing one (host-runner kinds are the operator's), listing
//! them, and handing out a live client for calls made outside the object (price lookups).

use std::sync::Arc;

use serde_json::json;

use crate::objects::Message;
use crate::wire;

use super::super::accounts::{self, Account, Live};
use super::super::broker::TenantBroker;
use super::super::rejection::{Failure, Rejection};
use super::super::{Ctx, printable, quota, row, valid_name};
use super::name_rule;

/// Creates or replaces a provider account. Accounts of the host-runner kinds (`process`,
/// `fake`) are the operator's: `by_operator` says whether the admin token asks.
///
/// An account with live runners (leases granted and not yet confirmed destroyed) holds
/// still: a change of its identity (kind, endpoint or project, root — see
/// [`accounts::identity`]) is refused with `account_in_use` unless `force`, and a forced change
/// keeps the old identity for the destroys those runners are owed. Force changes nothing
/// else: the leases keep counting against every cap until their runners are gone.
#[derive(Debug)]
pub struct PutProvider {
    pub name: String,
    pub account: wire::ProviderPut,
    pub by_operator: bool,
    pub force: bool,
}

impl Message for PutProvider {
    type Reply = Result<wire::ProviderAccount, Rejection>;
}

/// Every provider account (without credentials).
#[derive(Debug)]
pub struct ListProviders;

impl Message for ListProviders {
    type Reply = Result<Vec<wire::ProviderAccount>, Rejection>;
    const READ_ONLY: bool = true;
}

/// A live provider client for an account, for calls made outside the object (price lookups).
#[derive(Debug)]
pub struct ProviderHandle {
    pub name: String,
}

impl Message for ProviderHandle {
    type Reply = Result<Arc<dyn providers::Provider>, Rejection>;
    const READ_ONLY: bool = true;
}

pub async fn put(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    put: PutProvider,
) -> Result<wire::ProviderAccount, Failure> {
    let PutProvider {
        name,
        account: put,
        by_operator,
        force,
    } = put;
    if !valid_name(&name) {
        return Err(Rejection::Invalid(name_rule("provider account")).into());
    }
    let existing = t.accounts.get(&name).map(|live| live.account.kind.clone());
    if !by_operator
        && (providers::runs_on_host(&put.kind)
            || existing.as_deref().is_some_and(providers::runs_on_host))
    {
        let kind = if providers::runs_on_host(&put.kind) {
            printable(&put.kind)
        } else {
            existing.unwrap_or_default()
        };
        return Err(Rejection::OperatorOnly(format!(
            "only the operator's admin token may create or change `{kind}` provider accounts: they run code and touch paths on berth's own machine"
        ))
        .into());
    }
    if existing.is_none()
        && let Some(why) =
            quota::count_exceeded("provider accounts", t.accounts.len(), t.quota.max_providers)
    {
        return Err(Rejection::QuotaExceeded(why).into());
    }
    let config = if put.config.is_null() {
        json!({})
    } else {
        put.config
    };
    if !config.is_object() {
        return Err(Rejection::Invalid("`config` must be a JSON object".into()).into());
    }
    let credentials = if put.credentials.is_null() {
        json!({})
    } else {
        put.credentials
    };
    if !credentials.is_object() {
        return Err(Rejection::Invalid("`credentials` must be a JSON object".into()).into());
    }
    let spec = providers::Account {
        tenant: t.name.clone(),
        name: name.clone(),
        kind: put.kind.clone(),
        config: config.clone(),
        credentials: credentials.clone(),
    };
    let client = providers::build(&spec, &ctx.env().providers)
        .map_err(|err| Rejection::Invalid(format!("provider account `{name}`: {err}")))?;
    let now = ctx.now_ms();
    let mut repointed = false;
    if let Some(old) = t.accounts.get(&name).map(|live| live.account.clone()) {
        let same = accounts::stored_identity(ctx.env(), &t.name, &old)
            .is_some_and(|was| was == accounts::identity(&put.kind, &config, &credentials));
        let owed: Vec<String> = t
            .book
            .open()
            .filter(|lease| lease.provider == name && lease.granted_at.is_some())
            .map(|lease| lease.id.clone())
            .collect();
        if !same && !owed.is_empty() {
            if !force {
                return Err(Rejection::AccountInUse(format!(
                    "provider account `{name}` has {} live runner(s); changing its kind, endpoint, project (token) or root now would lose track of them. Release those leases first, or force the change (`?force=true`): berth then keeps the old identity to destroy them",
                    owed.len()
                ))
                .into());
            }
            let env = ctx.env().clone();
            t.accounts.retire(ctx, &env, &t.name, &old, owed, now)?;
            tracing::warn!(tenant = %t.name, account = %name, "provider account re-pointed by force while it had live runners; its old identity is kept for their destroys");
        }
        repointed = !same;
    }
    let sealed = credentials
        .as_object()
        .is_some_and(|c| !c.is_empty())
        .then(|| {
            let plaintext = serde_json::to_vec(&credentials).expect("BUG: a JSON value serialises");
            ctx.env().keys.seal(&t.name, &name, &plaintext)
        });
    let account = Account {
        name: name.clone(),
        kind: put.kind,
        config,
        credentials: sealed,
        updated_at: now,
    };
    row::insert(ctx, &account)?;
    let view = accounts::view(&account);
    t.accounts.put(Live {
        account,
        client: Ok(client),
    });
    // The account may hold runners from before it was (re)configured.
    t.upkeep.account_changed(now);
    if repointed {
        // What reconciliation saw at the old identity says nothing about the new one.
        t.watch.forget_account(&name);
        super::super::reconcile::save_watch(t, ctx);
    }
    // A destroy the provider refused may succeed with the changed account: try it now.
    super::super::provisioning::retry_destroys_now(t, ctx, &name).await?;
    Ok(view)
}

pub async fn list(
    t: &mut TenantBroker,
    _: &mut Ctx<'_>,
    _: ListProviders,
) -> Result<Vec<wire::ProviderAccount>, Failure> {
    Ok(t.accounts.views())
}

pub async fn handle(
    t: &mut TenantBroker,
    _: &mut Ctx<'_>,
    handle: ProviderHandle,
) -> Result<Arc<dyn providers::Provider>, Failure> {
    match t.accounts.get(&handle.name) {
        None => {
            Err(Rejection::NotFound(format!("provider account `{}` not found", handle.name)).into())
        }
        Some(Live {
            client: Ok(client), ..
        }) => Ok(client.clone()),
        Some(Live {
            client: Err(why), ..
        }) => Err(Rejection::Invalid(why.clone()).into()),
    }
}
