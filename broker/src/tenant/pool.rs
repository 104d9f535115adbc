//! A pool: a kind of runner from one provider account at a price — its row in the `pools`
//! table, declared once.

use crate::objects::clock::rfc3339;
use crate::wire::{self, PriceSource};

use super::row::table;

table! {
    /// A pool as the tenant object holds and stores it.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Pool in "pools" {
        pub name: String,
        /// The provider account its runners come from.
        pub provider: String,
        pub machine_type: String,
        pub hourly_price_micros: i64,
        /// Set on the pool, or read from the provider's price list when it was stored.
        pub price_source: PriceSource,
        /// Most active leases of this pool at once (within the tenant's cap).
        pub max_active: Option<i64>,
        pub image: Option<String>,
        pub region: Option<String>,
        /// The argv a `process` runner runs.
        pub command: Vec<String> [json],
        /// Labels matched against GitHub `runs-on`.
        pub labels: Vec<String> [json],
        pub updated_at: i64,
        /// Fallbacks after `machine_type` and `region`, in order.
        pub alternatives: Vec<wire::PoolAlternative> [json],
        /// Warm runners kept ready ahead of demand (0: not a ready pool).
        pub min_ready: i64,
        /// Most warm runners of the pool at once (≥ `min_ready`).
        pub max_ready: i64,
        /// A warm runner not taken this long after it was made is recycled.
        pub warm_ttl_s: i64,
        /// Each lease's runner is registered with GitHub just in time.
        pub github: bool,
    }
}

impl Pool {
    /// The pool as the API shows it, with its warm runners now.
    pub fn to_wire(&self, warm: wire::PoolWarm) -> wire::Pool {
        wire::Pool {
            name: self.name.clone(),
            provider: self.provider.clone(),
            machine_type: self.machine_type.clone(),
            hourly_price_micros: self.hourly_price_micros,
            price_source: self.price_source,
            max_active: self.max_active,
            image: self.image.clone(),
            region: self.region.clone(),
            command: self.command.clone(),
            labels: self.labels.clone(),
            alternatives: self.alternatives.clone(),
            min_ready: self.min_ready,
            max_ready: self.max_ready,
            warm_ttl_s: self.warm_ttl_s,
            warm,
            github: self.github,
            updated_at: rfc3339(self.updated_at),
        }
    }
}
