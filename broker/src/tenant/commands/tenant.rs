//! The tenant itself: creating it, reading it, and changing its limits and quota.

use crate::objects::Message;
use crate::wire::{self, Limits, LimitsPatch, QuotaPatch};

use super::super::broker::{CHARGED_KEY, TenantBroker};
use super::super::rejection::{Failure, Rejection};
use super::super::{Ctx, MAX_SPEND_CAP, MAX_TTL_LIMIT_S, budget, effects, quota};

/// Creates the tenant (idempotent: a second call changes nothing and answers the tenant).
#[derive(Debug)]
pub struct Create {
    pub limits: Option<LimitsPatch>,
    pub quota: Option<QuotaPatch>,
}

impl Message for Create {
    type Reply = Result<wire::Tenant, Rejection>;
}

/// The tenant, its limits and quota.
#[derive(Debug)]
pub struct Get;

impl Message for Get {
    type Reply = Result<wire::Tenant, Rejection>;
    const READ_ONLY: bool = true;
}

/// Changes the quota (the caller checked that the operator asks), then the limits, which must
/// fit the quota; the operator's own limits (`by_operator`) raise the ceilings it did not set
/// with them. Lowering a spend cap of the limits below what is spent ends the newest leases
/// (`spend_cap`); lowering the quota never ends a lease. Raising a cap grants what waits in
/// the queue.
#[derive(Debug)]
pub struct Patch {
    pub limits: LimitsPatch,
    pub quota: Option<QuotaPatch>,
    pub by_operator: bool,
}

impl Message for Patch {
    type Reply = Result<wire::Tenant, Rejection>;
}

pub async fn create(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    create: Create,
) -> Result<wire::Tenant, Failure> {
    if t.created_at.is_some() {
        return Ok(t.tenant_view());
    }
    // The quota's ceilings default to the limits asked for; defaults the operator did not ask
    // for are lowered to fit the quota, limits asked for above it are refused.
    let explicit = create.limits.unwrap_or_default();
    let requested = apply_patch(Limits::default(), &explicit).map_err(Rejection::Invalid)?;
    let quota = quota::patched(
        &quota::matching(&requested),
        &create.quota.unwrap_or_default(),
    )
    .map_err(Rejection::Invalid)?;
    let limits = apply_patch(quota::clamp(&Limits::default(), &quota), &explicit)
        .map_err(Rejection::Invalid)?;
    if let Some(why) = quota::exceeded(&limits, &quota) {
        return Err(Rejection::QuotaExceeded(why).into());
    }
    let now = ctx.now_ms();
    ctx.kv_put("limits", &limits)?;
    ctx.kv_put("quota", &quota)?;
    ctx.kv_put("created_at", &now)?;
    // The totals the load summed: until the day ends, a wake need not sum the ledger again.
    ctx.kv_put(CHARGED_KEY, &t.book.charged())?;
    t.book.set_limits(limits);
    t.quota = quota;
    t.created_at = Some(now);
    Ok(t.tenant_view())
}

pub async fn get(t: &mut TenantBroker, _: &mut Ctx<'_>, _: Get) -> Result<wire::Tenant, Failure> {
    Ok(t.tenant_view())
}

pub async fn patch(
    t: &mut TenantBroker,
    ctx: &mut Ctx<'_>,
    patch: Patch,
) -> Result<wire::Tenant, Failure> {
    let quota = match &patch.quota {
        Some(quota_patch) => quota::patched(&t.quota, quota_patch).map_err(Rejection::Invalid)?,
        None => t.quota.clone(),
    };
    // A lowered quota lowers the limits above it; then the patch applies and must fit.
    let limits = apply_patch(quota::clamp(t.book.limits(), &quota), &patch.limits)
        .map_err(Rejection::Invalid)?;
    // The operator's own limits carry the ceilings it did not pin up with them.
    let quota = if patch.by_operator {
        quota::raised_to_fit(&quota, &limits, &patch.quota.unwrap_or_default())
    } else {
        quota
    };
    if let Some(why) = quota::exceeded(&limits, &quota) {
        return Err(Rejection::QuotaExceeded(why).into());
    }
    ctx.kv_put("limits", &limits)?;
    if quota != t.quota {
        ctx.kv_put("quota", &quota)?;
        t.quota = quota;
    }
    t.book.set_limits(limits);
    // Only a spend cap the tenant itself set ends leases; a lowered quota refuses new grants
    // and lets running leases finish.
    if patch.limits.spend_cap_daily_micros.is_some()
        || patch.limits.spend_cap_monthly_micros.is_some()
    {
        budget::enforce_caps(t, ctx).await?;
    }
    effects::drain_queue(t, ctx).await?;
    budget::check(t, ctx).await?;
    Ok(t.tenant_view())
}

/// Applies a limits patch and checks the result.
fn apply_patch(mut limits: Limits, patch: &LimitsPatch) -> Result<Limits, String> {
    if let Some(v) = patch.max_active_leases {
        limits.max_active_leases = v;
    }
    if let Some(v) = patch.max_queued {
        limits.max_queued = v;
    }
    if let Some(v) = patch.spend_cap_daily_micros {
        limits.spend_cap_daily_micros = v;
    }
    if let Some(v) = patch.spend_cap_monthly_micros {
        limits.spend_cap_monthly_micros = v;
    }
    if let Some(v) = patch.default_ttl_s {
        limits.default_ttl_s = v;
    }
    if let Some(v) = patch.max_ttl_s {
        limits.max_ttl_s = v;
    }
    if let Some(v) = patch.default_idle_timeout_s {
        limits.default_idle_timeout_s = v;
    }
    if !(0..=1_000_000_000).contains(&limits.max_active_leases) {
        return Err("`max_active_leases` must be between 0 and 1000000000".into());
    }
    if !(0..=1_000_000).contains(&limits.max_queued) {
        return Err("`max_queued` must be between 0 and 1000000".into());
    }
    for (name, cap) in [
        ("spend_cap_daily_micros", limits.spend_cap_daily_micros),
        ("spend_cap_monthly_micros", limits.spend_cap_monthly_micros),
    ] {
        if cap.is_some_and(|cap| !(0..=MAX_SPEND_CAP).contains(&cap)) {
            return Err(format!("`{name}` must be between 0 and 10^18"));
        }
    }
    if !(1..=MAX_TTL_LIMIT_S).contains(&limits.max_ttl_s) {
        return Err(format!(
            "`max_ttl_s` must be between 1 and {MAX_TTL_LIMIT_S}"
        ));
    }
    if !(1..=limits.max_ttl_s).contains(&limits.default_ttl_s) {
        return Err("`default_ttl_s` must be between 1 and max_ttl_s".into());
    }
    if limits
        .default_idle_timeout_s
        .is_some_and(|idle| !(1..=MAX_TTL_LIMIT_S).contains(&idle))
    {
        return Err(format!(
            "`default_idle_timeout_s` must be between 1 and {MAX_TTL_LIMIT_S}"
        ));
    }
    Ok(limits)
}
