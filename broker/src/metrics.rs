//! The Prometheus families the tenant objects feed (lease time to ready, provider calls,
//! webhook deliveries, leases open per tenant), on the `prometheus-client` crate; `/metrics`
//! (`api/metrics`) registers them with the HTTP, runtime and process metrics.
//!
//! Every label value comes from a closed set: provider kinds and operations are berth's
//! own constants, outcomes are three words. Tenant and pool names are the tenants' input, so
//! they become labels only when the operator asks for it (`--metrics-per-tenant`): then a
//! series exists per tenant (and pool), which is what an operator of a few tenants wants and
//! one of a hundred thousand does not.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Buckets of durations in seconds from 5 ms to about 82 s (×2 each).
pub fn seconds_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 15,
    ))
}

/// Buckets of a runner's time to ready, in seconds: 100 ms to about 1.8 h (×2 each).
fn ready_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.1, 2.0, 17,
    ))
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Labels of the lease families: none unless per-tenant labels are on.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TenantPool {
    tenant: String,
    pool: String,
}

impl EncodeLabelSet for TenantPool {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel as _;
        if self.tenant.is_empty() {
            return Ok(());
        }
        ("tenant", self.tenant.as_str()).encode(encoder.encode_label())?;
        ("pool", self.pool.as_str()).encode(encoder.encode_label())
    }
}

/// Labels of a provider call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderCall {
    /// The provider kind (`fake`, `process`, `hetzner`, `http`).
    provider: &'static str,
    /// `create`, `destroy` or `list`.
    operation: &'static str,
    /// `ok` or `error`.
    outcome: &'static str,
}

/// Labels of a webhook delivery attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Delivery {
    /// `delivered` (2xx), `refused` (another status) or `failed` (no answer).
    outcome: &'static str,
}

/// Open leases of one tenant, as its object last reported them.
#[derive(Debug, Default)]
struct Open {
    active: AtomicI64,
    queued: AtomicI64,
    warm_ready: AtomicI64,
    warm_provisioning: AtomicI64,
}

/// Labels of a ready pool's counter: what happened, and (per-tenant labels on) where.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct WarmOutcome {
    place: TenantPool,
    /// `hit`, `miss` or `refill`.
    outcome: &'static str,
}

impl EncodeLabelSet for WarmOutcome {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel as _;
        ("outcome", self.outcome).encode(encoder.encode_label())?;
        self.place.encode(encoder)
    }
}

/// The families the tenant objects feed. One per server, shared through `tenant::Env`.
#[derive(Debug)]
pub struct Families {
    per_tenant: bool,
    time_to_ready: Histograms<TenantPool>,
    provider_calls: Histograms<ProviderCall>,
    webhook_deliveries: Histograms<Delivery>,
    /// Ready pools' hits, misses and refills.
    warm: Family<WarmOutcome, prometheus_client::metrics::counter::Counter>,
    /// Per tenant that reported open leases since the start: what it holds now. A tenant's
    /// counts stay while it hibernates (nothing changes then); after a restart a tenant is
    /// counted from its first activation (open leases wake it at their deadlines).
    open: Mutex<HashMap<String, std::sync::Arc<Open>>>,
}

impl Default for Families {
    fn default() -> Self {
        Families::new(false)
    }
}

impl Families {
    /// The families; `per_tenant` adds tenant and pool labels where they apply.
    pub fn new(per_tenant: bool) -> Self {
        Families {
            per_tenant,
            time_to_ready: Family::new_with_constructor(ready_buckets),
            provider_calls: Family::new_with_constructor(seconds_buckets),
            webhook_deliveries: Family::new_with_constructor(seconds_buckets),
            warm: Family::default(),
            open: Mutex::default(),
        }
    }

    fn tenant_pool(&self, tenant: &str, pool: &str) -> TenantPool {
        if self.per_tenant {
            TenantPool {
                tenant: tenant.to_owned(),
                pool: pool.to_owned(),
            }
        } else {
            TenantPool {
                tenant: String::new(),
                pool: String::new(),
            }
        }
    }

    /// A lease's runner became ready `elapsed` after the lease was granted.
    pub fn lease_ready(&self, tenant: &str, pool: &str, elapsed: Duration) {
        self.time_to_ready
            .get_or_create(&self.tenant_pool(tenant, pool))
            .observe(elapsed.as_secs_f64());
    }

    /// A ready pool's request took a warm runner (`hit`), found none ready (`miss`), or the
    /// pool started a warm runner (`refill`).
    pub fn warm(&self, tenant: &str, pool: &str, outcome: &'static str) {
        let labels = WarmOutcome {
            place: self.tenant_pool(tenant, pool),
            outcome,
        };
        self.warm.get_or_create(&labels).inc();
    }

    /// A provider call (`create`, `destroy`, `list`) of a `provider` kind ended.
    pub fn provider_call(
        &self,
        provider: &'static str,
        operation: &'static str,
        ok: bool,
        elapsed: Duration,
    ) {
        let labels = ProviderCall {
            provider,
            operation,
            outcome: if ok { "ok" } else { "error" },
        };
        self.provider_calls
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// A webhook delivery attempt ended: answered with `status`, or not answered (`None`).
    pub fn webhook_delivery(&self, status: Option<u16>, elapsed: Duration) {
        let outcome = match status {
            Some(200..=299) => "delivered",
            Some(_) => "refused",
            None => "failed",
        };
        self.webhook_deliveries
            .get_or_create(&Delivery { outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// A tenant's object holds `active` and `queued` open leases (after each event). One
    /// lock and lookup; a tenant that never had a lease adds no entry.
    pub fn report_open(&self, tenant: &str, active: i64, queued: i64, warm: (i64, i64)) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.get(tenant) {
            Some(counts) => {
                counts.active.store(active, Ordering::Relaxed);
                counts.queued.store(queued, Ordering::Relaxed);
                counts.warm_ready.store(warm.0, Ordering::Relaxed);
                counts.warm_provisioning.store(warm.1, Ordering::Relaxed);
            }
            None if active == 0 && queued == 0 && warm == (0, 0) => {}
            None => {
                let counts = std::sync::Arc::new(Open::default());
                counts.active.store(active, Ordering::Relaxed);
                counts.queued.store(queued, Ordering::Relaxed);
                counts.warm_ready.store(warm.0, Ordering::Relaxed);
                counts.warm_provisioning.store(warm.1, Ordering::Relaxed);
                open.insert(tenant.to_owned(), counts);
            }
        }
    }

    /// Registers the families in `registry`.
    pub fn register(self: &std::sync::Arc<Self>, registry: &mut Registry) {
        registry.register(
            "berth_lease_time_to_ready_seconds",
            "From a lease's grant to its runner's ready callback (tenant and pool labels \
             with --metrics-per-tenant)",
            self.time_to_ready.clone(),
        );
        registry.register(
            "berth_provider_call_duration_seconds",
            "Provider calls by provider kind, operation and outcome (each try of a retried \
             call is one)",
            self.provider_calls.clone(),
        );
        registry.register(
            "berth_webhook_delivery_duration_seconds",
            "Webhook delivery attempts by outcome: delivered (2xx), refused (another status), \
             failed (no answer)",
            self.webhook_deliveries.clone(),
        );
        registry.register(
            "berth_pool_warm",
            "Ready pools by outcome: a request took a warm runner (hit), a request found none \
             ready (miss), a warm runner was started (refill); tenant and pool labels with \
             --metrics-per-tenant",
            self.warm.clone(),
        );
        registry.register_collector(Box::new(OpenLeases(self.clone())));
    }
}

/// Encodes `berth_leases` from the tenants' reports at each scrape.
#[derive(Debug)]
struct OpenLeases(std::sync::Arc<Families>);

impl Collector for OpenLeases {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let open = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut family = encoder.encode_descriptor(
            "berth_leases",
            "Open leases by state: active (provisioning, ready or releasing: counting against \
             caps) and queued; per tenant with --metrics-per-tenant.",
            None,
            MetricType::Gauge,
        )?;
        if self.0.per_tenant {
            for (tenant, counts) in open.iter() {
                for (state, n) in [("active", &counts.active), ("queued", &counts.queued)] {
                    let labels = [("state", state), ("tenant", tenant.as_str())];
                    ConstGauge::new(n.load(Ordering::Relaxed))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        } else {
            let (active, queued) = open.values().fold((0i64, 0i64), |(a, q), c| {
                (
                    a.saturating_add(c.active.load(Ordering::Relaxed)),
                    q.saturating_add(c.queued.load(Ordering::Relaxed)),
                )
            });
            for (state, n) in [("active", active), ("queued", queued)] {
                let labels = [("state", state)];
                ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "berth_warm_runners",
            "Ready pools' warm runners by state: ready (to be taken) and provisioning (being \
             made); per tenant with --metrics-per-tenant.",
            None,
            MetricType::Gauge,
        )?;
        if self.0.per_tenant {
            for (tenant, counts) in open.iter() {
                for (state, n) in [
                    ("ready", &counts.warm_ready),
                    ("provisioning", &counts.warm_provisioning),
                ] {
                    let labels = [("state", state), ("tenant", tenant.as_str())];
                    ConstGauge::new(n.load(Ordering::Relaxed))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        } else {
            let (ready, provisioning) = open.values().fold((0i64, 0i64), |(r, p), c| {
                (
                    r.saturating_add(c.warm_ready.load(Ordering::Relaxed)),
                    p.saturating_add(c.warm_provisioning.load(Ordering::Relaxed)),
                )
            });
            for (state, n) in [("ready", ready), ("provisioning", provisioning)] {
                let labels = [("state", state)];
                ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
