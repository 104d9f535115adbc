//! Pools: creating or replacing one (the command of a pool on a `process` account is the
//! operator's), and listing them.

use crate::objects::Message;
use crate::wire::{self, PriceSource};

use super::super::broker::{TenantBroker, Writer};
use super::super::pool::Pool;
use super::super::rejection::{Failure, Rejection};
use super::super::row::AsRow;
use super::super::{Ctx, effects, quota, valid_name, warm};
use super::name_rule;

use crate::wire::bounds::MAX_PRICE;

/// Most fallbacks a pool lists.
const MAX_ALTERNATIVES: usize = 8;

/// Creates or replaces a pool. `provider_price` is the provider's price for the pool's machine
/// type, looked up by the caller when the pool sets none. The command of a pool on a `process`
/// account is the operator's: `by_operator` says whether the admin token asks.
#[derive(Debug)]
pub struct PutPool {
    pub name: String,
    pub pool: wire::PoolPut,
    pub provider_price: Option<i64>,
    pub by_operator: bool,
}

impl Message for PutPool {
    type Reply = Result<wire::Pool, Rejection>;
}

/// Every pool.
#[derive(Debug)]
pub struct ListPools;

impl Message for ListPools {
    type Reply = Result<Vec<wire::Pool>, Rejection>;
    const READ_ONLY: bool = true;
}

pub async fn put(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    put: PutPool,
) -> Result<wire::Pool, Failure> {
    let PutPool {
        name,
        pool: put,
        provider_price,
        by_operator,
    } = put;
    if !valid_name(&name) {
        return Err(Rejection::Invalid(name_rule("pool")).into());
    }
    let Some(account) = t.accounts.get(&put.provider) else {
        return Err(Rejection::Invalid(format!(
            "provider account `{}` does not exist; create it first",
            put.provider
        ))
        .into());
    };
    let kind = account.account.kind.clone();
    let existing = t.book.pool(&name);
    // What a host runner runs is the operator's choice. A tenant admin may still change the
    // rest of such a pool (price, caps, labels) by sending its command unchanged.
    let same_command = existing.is_some_and(|pool| {
        pool.provider == put.provider
            && put.command.as_deref().unwrap_or_default() == pool.command.as_slice()
    });
    if !by_operator && kind == "process" && !same_command {
        return Err(Rejection::OperatorOnly(format!(
            "only the operator's admin token may set the command of a pool on the `{kind}` account `{}`: it runs on berth's own machine",
            put.provider
        ))
        .into());
    }
    if existing.is_none()
        && let Some(why) = quota::count_exceeded("pools", t.book.pool_count(), t.quota.max_pools)
    {
        return Err(Rejection::QuotaExceeded(why).into());
    }
    validate(&put, &kind).map_err(Rejection::Invalid)?;
    let (price, price_source) = match (put.hourly_price_micros, provider_price) {
        (Some(price), _) => (price, PriceSource::Pool),
        (None, Some(price)) => (price, PriceSource::Provider),
        (None, None) => {
            return Err(Rejection::Invalid(format!(
                "pool `{name}` has no price: set `hourly_price_micros`, or use a provider account whose price list has machine type `{}`",
                put.machine_type
            ))
            .into());
        }
    };
    if !(0..=MAX_PRICE).contains(&price) {
        return Err(Rejection::Invalid(format!(
            "`hourly_price_micros` must be between 0 and {MAX_PRICE}"
        ))
        .into());
    }
    let (min_ready, max_ready, warm_ttl_s) = ready_settings(&put).map_err(Rejection::Invalid)?;
    // The quota's max_warm bounds the warm runners of all the tenant's pools together: the
    // pools' min_ready may not add up past it (only the operator raises the quota).
    let others: i64 = t
        .book
        .pools()
        .filter(|p| p.name != name)
        .map(|p| p.min_ready)
        .sum();
    if max_ready > t.quota.max_warm {
        return Err(Rejection::QuotaExceeded(format!(
            "`max_ready` {max_ready} is above this tenant's quota of {} warm runners (`max_warm`); the operator sets the quota",
            t.quota.max_warm
        ))
        .into());
    }
    if min_ready > 0 && others.saturating_add(min_ready) > t.quota.max_warm {
        return Err(Rejection::QuotaExceeded(format!(
            "`min_ready` {min_ready} with the tenant's other pools' {others} is above this tenant's quota of {} warm runners (`max_warm`); the operator sets the quota",
            t.quota.max_warm
        ))
        .into());
    }
    let pool = Pool {
        name,
        provider: put.provider,
        machine_type: put.machine_type,
        hourly_price_micros: price,
        price_source,
        max_active: put.max_active,
        image: put.image,
        region: put.region,
        command: put.command.unwrap_or_default(),
        labels: put.labels.unwrap_or_default(),
        updated_at: ctx.now_ms(),
        alternatives: put.alternatives.unwrap_or_default(),
        min_ready,
        max_ready,
        warm_ttl_s,
        github: put.github.unwrap_or(false),
    };
    Writer::Pools.put(ctx, &AsRow(&pool))?;
    let pool_name = pool.name.clone();
    t.book.put_pool(pool);
    effects::drain_queue(t, ctx).await?;
    warm::pool_changed(t, ctx, &pool_name).await?;
    let Some(pool) = t.book.pool(&pool_name) else {
        return Err(crate::objects::Error::corrupt("a pool just stored is missing").into());
    };
    Ok(pool.to_wire(t.book.warm().view(&pool_name)))
}

pub async fn list(
    t: &mut TenantBroker,
    _: &mut Ctx<'_>,
    _: ListPools,
) -> Result<Vec<wire::Pool>, Failure> {
    Ok(t.book
        .pools()
        .map(|pool| pool.to_wire(t.book.warm().view(&pool.name)))
        .collect())
}

/// A ready pool's `(min_ready, max_ready, warm_ttl_s)`: `max_ready` defaults to `min_ready`
/// and may not be below it; `warm_ttl_s` defaults to an hour.
fn ready_settings(put: &wire::PoolPut) -> Result<(i64, i64, i64), String> {
    let min_ready = put.min_ready.unwrap_or(0);
    let max_ready = put.max_ready.unwrap_or(min_ready);
    if max_ready < min_ready {
        return Err(format!(
            "`max_ready` {max_ready} must be at least `min_ready` {min_ready}"
        ));
    }
    Ok((
        min_ready,
        max_ready,
        put.warm_ttl_s.unwrap_or(warm::DEFAULT_WARM_TTL_S),
    ))
}

fn validate(pool: &wire::PoolPut, kind: &str) -> Result<(), String> {
    // The rules of the body (`wire::bounds`), as the API checked them.
    wire::rules::Validate::validate(pool)?;
    if pool.github == Some(true) && pool.labels.as_deref().unwrap_or_default().is_empty() {
        return Err(
            "`github`: a GitHub pool needs at least one label (its runners register with the pool's labels)".into(),
        );
    }
    let command = pool.command.as_deref().unwrap_or_default();
    if kind == "process" && command.is_empty() {
        return Err(
            "a pool of a `process` provider needs a `command` (the argv each runner runs)".into(),
        );
    }
    let alternatives = pool.alternatives.as_deref().unwrap_or_default();
    if alternatives.len() > MAX_ALTERNATIVES {
        return Err(format!(
            "`alternatives` takes at most {MAX_ALTERNATIVES} machine types"
        ));
    }
    for alternative in alternatives {
        if alternative.machine_type.is_empty() || alternative.machine_type.len() > 200 {
            return Err("each alternative's `machine_type` must be 1–200 characters".into());
        }
        if alternative
            .region
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 200)
        {
            return Err("each alternative's `region` must be 1–200 characters".into());
        }
        if !(0..=MAX_PRICE).contains(&alternative.hourly_price_micros) {
            return Err(format!(
                "each alternative's `hourly_price_micros` must be between 0 and {MAX_PRICE}"
            ));
        }
    }
    Ok(())
}
