//! Quotas: the operator's ceilings of a tenant's limits, and of how many tokens, webhook
//! endpoints, pools and provider accounts it may hold (DESIGN.md §6 "Who may do what").
//!
//! The tenant admin sets the tenant's [`Limits`]; only the operator (the admin token) sets its
//! [`Quota`]. Every writer of either keeps one rule, field by field:
//!
//! - `limits ≤ quota` for `max_active_leases`, `max_queued` and `max_ttl_s`;
//! - a spend cap the quota sets is never absent from the limits, and never above it;
//! - the pools' `min_ready` add up to at most `max_warm` (checked when a pool is set; refills
//!   also stop at `max_warm` warm runners, so a lowered quota lets warm runners run out
//!   without making new ones).
//!
//! A tenant admin's change that would break the rule is refused (403 `quota_exceeded`) and
//! changes nothing. An operator's change of the quota that the current limits break lowers
//! those limits to the quota in the same event ([`clamp`]); that refuses new grants while the
//! tenant is over, and never ends a running lease.
//!
//! # Example
//!
//! The quota allows 20 active leases and the tenant runs with a limit of 10. Its admin may set
//! any limit from 0 to 20; 21 is refused. The operator then lowers the quota to 5 while 8
//! leases run: the limit becomes 5, the 8 leases run on to their end, and the next grant
//! happens once fewer than 5 are active.
//!
//! Tenants made before quotas existed have no stored quota; they get [`matching`] their
//! limits (DESIGN.md §9), so nothing they do today is refused and nothing can be raised.

use crate::wire::{Limits, Quota, QuotaPatch};

/// Tokens a tenant may hold when the operator set no count.
pub const DEFAULT_MAX_TOKENS: i64 = 50;
/// Webhook endpoints a tenant may hold when the operator set no count.
pub const DEFAULT_MAX_WEBHOOKS: i64 = 10;
/// Pools a tenant may hold when the operator set no count.
pub const DEFAULT_MAX_POOLS: i64 = 50;
/// Provider accounts a tenant may hold when the operator set no count.
pub const DEFAULT_MAX_PROVIDERS: i64 = 10;
use crate::wire::bounds::MAX_COUNT;

/// The quota that allows exactly `limits` (ceilings equal to them) and the default counts:
/// what a tenant gets when its operator set no quota.
pub fn matching(limits: &Limits) -> Quota {
    Quota {
        max_active_leases: limits.max_active_leases,
        max_queued: limits.max_queued,
        spend_cap_daily_micros: limits.spend_cap_daily_micros,
        spend_cap_monthly_micros: limits.spend_cap_monthly_micros,
        max_ttl_s: limits.max_ttl_s,
        max_tokens: DEFAULT_MAX_TOKENS,
        max_webhooks: DEFAULT_MAX_WEBHOOKS,
        max_pools: DEFAULT_MAX_POOLS,
        max_providers: DEFAULT_MAX_PROVIDERS,
        max_warm: crate::wire::DEFAULT_MAX_WARM,
    }
}

/// `quota` with `patch` applied: absent fields stay, `null` lifts a spend-cap ceiling.
///
/// # Errors
///
/// A message naming the first field out of its range.
pub fn patched(quota: &Quota, patch: &QuotaPatch) -> Result<Quota, String> {
    let mut quota = quota.clone();
    let QuotaPatch {
        max_active_leases,
        max_queued,
        spend_cap_daily_micros,
        spend_cap_monthly_micros,
        max_ttl_s,
        max_tokens,
        max_webhooks,
        max_pools,
        max_providers,
        max_warm,
    } = patch;
    let set = |slot: &mut i64, value: &Option<i64>| {
        if let Some(value) = value {
            *slot = *value;
        }
    };
    set(&mut quota.max_active_leases, max_active_leases);
    set(&mut quota.max_queued, max_queued);
    set(&mut quota.max_ttl_s, max_ttl_s);
    set(&mut quota.max_tokens, max_tokens);
    set(&mut quota.max_webhooks, max_webhooks);
    set(&mut quota.max_pools, max_pools);
    set(&mut quota.max_providers, max_providers);
    set(&mut quota.max_warm, max_warm);
    if let Some(cap) = spend_cap_daily_micros {
        quota.spend_cap_daily_micros = *cap;
    }
    if let Some(cap) = spend_cap_monthly_micros {
        quota.spend_cap_monthly_micros = *cap;
    }
    let ranges: [(&str, i64, i64, i64); 8] = [
        (
            "max_active_leases",
            quota.max_active_leases,
            0,
            1_000_000_000,
        ),
        ("max_queued", quota.max_queued, 0, 1_000_000),
        ("max_ttl_s", quota.max_ttl_s, 1, super::MAX_TTL_LIMIT_S),
        ("max_tokens", quota.max_tokens, 0, MAX_COUNT),
        ("max_webhooks", quota.max_webhooks, 0, MAX_COUNT),
        ("max_pools", quota.max_pools, 0, MAX_COUNT),
        ("max_providers", quota.max_providers, 0, MAX_COUNT),
        ("max_warm", quota.max_warm, 0, 1_000),
    ];
    for (name, value, low, high) in ranges {
        if !(low..=high).contains(&value) {
            return Err(format!("quota `{name}` must be between {low} and {high}"));
        }
    }
    for (name, cap) in [
        ("spend_cap_daily_micros", quota.spend_cap_daily_micros),
        ("spend_cap_monthly_micros", quota.spend_cap_monthly_micros),
    ] {
        if cap.is_some_and(|cap| !(0..=super::MAX_SPEND_CAP).contains(&cap)) {
            return Err(format!("quota `{name}` must be between 0 and 10^18"));
        }
    }
    Ok(quota)
}

/// `limits` lowered, field by field, to fit `quota` (a default TTL above a lowered maximum
/// comes down with it). Limits within the quota come back unchanged.
pub fn clamp(limits: &Limits, quota: &Quota) -> Limits {
    let cap = |limit: Option<i64>, ceiling: Option<i64>| match ceiling {
        Some(ceiling) => Some(limit.map_or(ceiling, |limit| limit.min(ceiling))),
        None => limit,
    };
    let max_ttl_s = limits.max_ttl_s.min(quota.max_ttl_s);
    Limits {
        max_active_leases: limits.max_active_leases.min(quota.max_active_leases),
        max_queued: limits.max_queued.min(quota.max_queued),
        spend_cap_daily_micros: cap(limits.spend_cap_daily_micros, quota.spend_cap_daily_micros),
        spend_cap_monthly_micros: cap(
            limits.spend_cap_monthly_micros,
            quota.spend_cap_monthly_micros,
        ),
        default_ttl_s: limits.default_ttl_s.min(max_ttl_s),
        max_ttl_s,
        default_idle_timeout_s: limits.default_idle_timeout_s,
    }
}

/// `quota` with every ceiling that `set` (the operator's patch) leaves alone raised to fit
/// `limits`: when the operator sets a tenant's limits, the quota follows them up, so the
/// operator needs no second step. A ceiling the operator set in the same patch stays, and
/// [`exceeded`] then refuses limits above it.
pub fn raised_to_fit(quota: &Quota, limits: &Limits, set: &QuotaPatch) -> Quota {
    let mut quota = quota.clone();
    let raise = |ceiling: &mut i64, limit: i64, set: &Option<i64>| {
        if set.is_none() {
            *ceiling = (*ceiling).max(limit);
        }
    };
    raise(
        &mut quota.max_active_leases,
        limits.max_active_leases,
        &set.max_active_leases,
    );
    raise(&mut quota.max_queued, limits.max_queued, &set.max_queued);
    raise(&mut quota.max_ttl_s, limits.max_ttl_s, &set.max_ttl_s);
    let lift = |ceiling: &mut Option<i64>, limit: Option<i64>, set: &Option<Option<i64>>| {
        if set.is_none() {
            *ceiling = match (*ceiling, limit) {
                (Some(ceiling), Some(limit)) => Some(ceiling.max(limit)),
                // No cap in the limits: the operator removed it, so the ceiling goes too.
                (_, None) => None,
                (None, Some(_)) => None,
            };
        }
    };
    lift(
        &mut quota.spend_cap_daily_micros,
        limits.spend_cap_daily_micros,
        &set.spend_cap_daily_micros,
    );
    lift(
        &mut quota.spend_cap_monthly_micros,
        limits.spend_cap_monthly_micros,
        &set.spend_cap_monthly_micros,
    );
    quota
}

/// Why `limits` break `quota`, for the tenant admin who asked for them; `None` when they fit.
pub fn exceeded(limits: &Limits, quota: &Quota) -> Option<String> {
    let above = |name: &str, value: i64, ceiling: i64| {
        (value > ceiling).then(|| {
            format!(
                "`{name}` {value} is above this tenant's quota of {ceiling}; the operator sets the quota"
            )
        })
    };
    let capped = |name: &str, value: Option<i64>, ceiling: Option<i64>| {
        let ceiling = ceiling?;
        match value {
            None => Some(format!(
                "`{name}` cannot be removed: this tenant's quota caps it at {ceiling}; the operator sets the quota"
            )),
            Some(value) => above(name, value, ceiling),
        }
    };
    above(
        "max_active_leases",
        limits.max_active_leases,
        quota.max_active_leases,
    )
    .or_else(|| above("max_queued", limits.max_queued, quota.max_queued))
    .or_else(|| above("max_ttl_s", limits.max_ttl_s, quota.max_ttl_s))
    .or_else(|| {
        capped(
            "spend_cap_daily_micros",
            limits.spend_cap_daily_micros,
            quota.spend_cap_daily_micros,
        )
    })
    .or_else(|| {
        capped(
            "spend_cap_monthly_micros",
            limits.spend_cap_monthly_micros,
            quota.spend_cap_monthly_micros,
        )
    })
}

/// Why one more of `what` (the tenant holds `held`) would pass the quota's `max`; `None`
/// when it fits.
pub fn count_exceeded(what: &str, held: usize, max: i64) -> Option<String> {
    let held = i64::try_from(held).unwrap_or(i64::MAX);
    (held >= max).then(|| {
        format!(
            "this tenant holds {held} {what}, its quota's maximum; delete one, or ask the operator to raise the quota"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota() -> Quota {
        Quota {
            spend_cap_daily_micros: Some(1_000),
            ..matching(&Limits::default())
        }
    }

    /// Limits at the quota fit; one above any ceiling, or a removed cap, is named.
    #[test]
    fn exceeded_names_the_first_limit_above_its_ceiling() {
        let quota = quota();
        let fits = Limits {
            spend_cap_daily_micros: Some(1_000),
            ..Limits::default()
        };
        assert_eq!(exceeded(&fits, &quota), None);
        let more = Limits {
            max_active_leases: 11,
            ..fits.clone()
        };
        assert!(
            exceeded(&more, &quota)
                .is_some_and(|why| why.contains("max_active_leases") && why.contains("10"))
        );
        let uncapped = Limits {
            spend_cap_daily_micros: None,
            ..fits.clone()
        };
        assert!(exceeded(&uncapped, &quota).is_some_and(|why| why.contains("cannot be removed")));
        let above = Limits {
            spend_cap_daily_micros: Some(1_001),
            ..fits.clone()
        };
        assert!(exceeded(&above, &quota).is_some());
        // A monthly cap the quota does not set may be anything, or nothing.
        let monthly = Limits {
            spend_cap_monthly_micros: Some(5),
            ..fits
        };
        assert_eq!(exceeded(&monthly, &quota), None);
    }

    /// Clamping lowers exactly what is above the quota and yields limits that fit it.
    #[test]
    fn clamp_lowers_to_fit() {
        let limits = Limits {
            max_active_leases: 50,
            spend_cap_daily_micros: None,
            default_ttl_s: 7_200,
            ..Limits::default()
        };
        let quota = Quota {
            max_active_leases: 5,
            max_ttl_s: 3_600,
            ..quota()
        };
        let clamped = clamp(&limits, &quota);
        assert_eq!(clamped.max_active_leases, 5);
        assert_eq!(clamped.spend_cap_daily_micros, Some(1_000));
        assert_eq!((clamped.max_ttl_s, clamped.default_ttl_s), (3_600, 3_600));
        assert_eq!(clamped.max_queued, limits.max_queued);
        assert_eq!(exceeded(&clamped, &quota), None);
        assert_eq!(clamp(&clamped, &quota), clamped);
    }

    /// Patches keep absent fields, lift a ceiling with `null`, and refuse out-of-range values.
    #[test]
    fn patches_are_validated() {
        let quota = quota();
        let lifted = patched(
            &quota,
            &QuotaPatch {
                spend_cap_daily_micros: Some(None),
                max_pools: Some(3),
                ..QuotaPatch::default()
            },
        )
        .expect("valid");
        assert_eq!(lifted.spend_cap_daily_micros, None);
        assert_eq!(lifted.max_pools, 3);
        assert_eq!(lifted.max_active_leases, quota.max_active_leases);
        for bad in [
            QuotaPatch {
                max_tokens: Some(-1),
                ..QuotaPatch::default()
            },
            QuotaPatch {
                max_ttl_s: Some(0),
                ..QuotaPatch::default()
            },
            QuotaPatch {
                spend_cap_monthly_micros: Some(Some(-5)),
                ..QuotaPatch::default()
            },
        ] {
            assert!(patched(&quota, &bad).is_err(), "{bad:?}");
        }
    }

    /// The operator's limits raise the ceilings it did not set, and only those.
    #[test]
    fn operator_limits_raise_unset_ceilings() {
        let quota = quota();
        let limits = Limits {
            max_active_leases: 40,
            max_queued: 3,
            spend_cap_daily_micros: None,
            ..Limits::default()
        };
        let raised = raised_to_fit(&quota, &limits, &QuotaPatch::default());
        assert_eq!(raised.max_active_leases, 40);
        assert_eq!(raised.max_queued, quota.max_queued, "never lowered");
        assert_eq!(
            raised.spend_cap_daily_micros, None,
            "a removed cap lifts its ceiling"
        );
        assert_eq!(exceeded(&limits, &raised), None);
        let pinned = QuotaPatch {
            max_active_leases: Some(20),
            ..QuotaPatch::default()
        };
        let kept = raised_to_fit(&patched(&quota, &pinned).expect("valid"), &limits, &pinned);
        assert_eq!(kept.max_active_leases, 20);
        assert!(exceeded(&limits, &kept).is_some());
    }

    /// A count quota refuses the one past its maximum.
    #[test]
    fn counts() {
        assert_eq!(count_exceeded("pools", 1, 2), None);
        assert!(count_exceeded("pools", 2, 2).is_some_and(|why| why.contains("2 pools")));
        assert!(count_exceeded("pools", 0, 0).is_some());
    }
}
