//! The metrics read at each scrape: the runtime's and the tenant layer's counters (kept as
//! atomics where they are counted), alarm lateness, `berth_build_info` and the process
//! metrics Prometheus client libraries export (`process_*`, read from `/proc` on Linux).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::objects::Runtime;
use crate::tenant;

/// Registers the scrape-time collectors and `berth_build_info`.
pub(super) fn register(registry: &mut Registry, state: &super::super::State) {
    registry.register(
        "berth_build",
        "The berth binary serving: its version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register(
        "berth_alarm_lateness_seconds",
        "How late alarms ran (handler start minus alarm time), in seconds",
        state.runtime.metrics().alarm_lateness.histogram().clone(),
    );
    registry.register_collector(Box::new(Counters {
        runtime: RuntimeRef(state.runtime.clone()),
        tenant: state.tenant_metrics.clone(),
        admission: state.admission.clone(),
    }));
    registry.register_collector(Box::new(Process));
}

/// The runtime, for a collector (which must be `Debug`).
struct RuntimeRef(Runtime);

impl std::fmt::Debug for RuntimeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runtime")
    }
}

#[derive(Debug)]
struct Counters {
    runtime: RuntimeRef,
    tenant: Arc<tenant::Metrics>,
    admission: Arc<super::super::admission::Admission>,
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A counter family with one label whose values are constants.
fn labelled(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(&'static str, &AtomicU64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in values {
        ConstCounter::new(count.load(Ordering::Relaxed))
            .encode(family.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

impl Collector for Counters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let t = &self.tenant;
        let e = &mut encoder;
        counter(
            e,
            "berth_lease_grants",
            "Leases granted (at request or from the queue).",
            get(&t.grants),
        )?;
        counter(
            e,
            "berth_lease_queued",
            "Lease requests queued.",
            get(&t.queued),
        )?;
        labelled(
            e,
            "berth_lease_rejections",
            "Lease requests refused, by reason.",
            "reason",
            &[
                ("concurrency_cap", &t.rejected_concurrency),
                ("spend_cap", &t.rejected_spend),
                ("queue_full", &t.rejected_queue_full),
            ],
        )?;
        labelled(
            e,
            "berth_leases_ended",
            "Leases that reached a final state, by state.",
            "state",
            &[
                ("released", &t.ended_released),
                ("expired", &t.ended_expired),
                ("failed", &t.ended_failed),
                ("canceled", &t.ended_canceled),
            ],
        )?;
        labelled(
            e,
            "berth_warm",
            "Ready pools: requests that took a warm runner (hit), requests of a ready pool that found none ready (miss), warm runners started (refill).",
            "outcome",
            &[
                ("hit", &t.warm_hits),
                ("miss", &t.warm_misses),
                ("refill", &t.warm_refills),
            ],
        )?;
        counter(
            e,
            "berth_provider_errors",
            "Failed provider calls (each is retried or fails its lease).",
            get(&t.provider_errors),
        )?;
        counter(
            e,
            "berth_reconcile_destroyed",
            "Orphan runners destroyed by reconciliation.",
            get(&t.reconcile_destroyed),
        )?;
        for (name, help, value) in [
            (
                "berth_reconcile_orphans_reported",
                "Orphan runners reconciliation would have destroyed in report mode (--reconcile-mode report).",
                &t.orphans_reported,
            ),
            (
                "berth_reconcile_listings",
                "Reconciliation listings of a provider account handled (successful or not).",
                &t.reconcile_listings,
            ),
            (
                "berth_reconcile_list_failures",
                "Reconciliation listings of a provider account that failed.",
                &t.reconcile_list_failures,
            ),
            (
                "berth_reconcile_failing",
                "provider.reconcile_failing events: an account's listings failed several rounds in a row.",
                &t.reconcile_failing,
            ),
            (
                "berth_destroy_stuck",
                "runner.destroy_stuck events: a runner's destroy failed repeatedly or was refused for good.",
                &t.destroy_stuck,
            ),
            (
                "berth_runners_lost",
                "Leases ended runner_lost: their runner vanished at the provider.",
                &t.runners_lost,
            ),
            (
                "berth_capacity_fallbacks",
                "Creates moved to a pool's next alternative after a capacity error.",
                &t.capacity_fallbacks,
            ),
        ] {
            counter(e, name, help, get(value))?;
        }

        gauge(
            e,
            "berth_admission_limit",
            "How many API requests may be inside the tenant objects at once: lowered while alarms run late (deadlines first), 4096 when they are on time.",
            i64::try_from(self.admission.limit()).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "berth_admission_inside",
            "API requests inside the tenant objects now.",
            i64::try_from(self.admission.inside()).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "berth_admission_waiting",
            "API requests waiting for a place (each tenant's in turn).",
            i64::try_from(self.admission.waiting()).unwrap_or(i64::MAX),
        )?;
        let runtime = &self.runtime.0;
        let o = runtime.metrics();
        gauge(
            e,
            "berth_live_objects",
            "Objects with a running task.",
            o.live_objects.load(Ordering::Relaxed),
        )?;
        gauge(
            e,
            "berth_open_objects",
            "Object databases open (bounded by --max-live-objects).",
            i64::try_from(runtime.open_objects()).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "berth_warm_objects",
            "Hibernated objects whose database stays open (the warm tier; counted in berth_open_objects).",
            i64::try_from(runtime.warm_objects()).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "berth_pending_alarms",
            "Objects with a pending alarm.",
            i64::try_from(runtime.pending_alarms()).unwrap_or(i64::MAX),
        )?;
        for (name, help, value) in [
            (
                "berth_object_activations",
                "Objects opened.",
                &o.activations,
            ),
            (
                "berth_object_hibernations",
                "Objects closed for idleness or eviction.",
                &o.hibernations,
            ),
            (
                "berth_object_events",
                "Events handled by objects.",
                &o.events,
            ),
            (
                "berth_object_failed_events",
                "Events rolled back.",
                &o.failed_events,
            ),
            (
                "berth_object_commits",
                "Object transactions committed (one WAL fsync each).",
                &o.commits,
            ),
            (
                "berth_object_warm_activations",
                "Activations that took a hibernated object's open database from the warm tier.",
                &o.warm_activations,
            ),
            (
                "berth_object_parked_closes",
                "Parked databases of hibernated objects closed (warm tier).",
                &o.parked_closes,
            ),
            (
                "berth_durability_syncs",
                "Shared durability barrier syncs (syncfs), each covering every commit before it.",
                &o.durability_syncs,
            ),
            (
                "berth_checkpoint_syncs",
                "Syncs (syncfs) shared by the checkpoints of closing object databases.",
                &o.checkpoint_syncs,
            ),
            (
                "berth_object_failed_commits",
                "Object commits that failed.",
                &o.failed_commits,
            ),
            ("berth_alarms", "Alarm handlers run.", &o.alarms),
            (
                "berth_heap_trims",
                "Times freed heap memory was handed back to the system.",
                &o.heap_trims,
            ),
            (
                "berth_alarm_failures",
                "Alarm handlers that failed and were retried.",
                &o.alarm_failures,
            ),
        ] {
            counter(e, name, help, get(value))?;
        }
        Ok(())
    }
}

/// `process_*` from `/proc/self` (Linux); absent elsewhere.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let e = &mut encoder;
        ConstCounter::new(stats.cpu_seconds).encode(e.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            MetricType::Counter,
        )?)?;
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            i64::try_from(stats.resident_bytes).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            i64::try_from(stats.virtual_bytes).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            i64::try_from(stats.open_fds).unwrap_or(i64::MAX),
        )?;
        if let Some(max) = stats.max_fds {
            gauge(
                e,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                i64::try_from(max).unwrap_or(i64::MAX),
            )?;
        }
        gauge(
            e,
            "process_threads",
            "Number of OS threads in the process.",
            i64::try_from(stats.threads).unwrap_or(i64::MAX),
        )?;
        if let Some(start) = stats.start_time_seconds {
            ConstGauge::new(start).encode(e.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// What `/proc/self` says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: Option<u64>,
    threads: u64,
    start_time_seconds: Option<f64>,
}

/// Clock ticks per second of `/proc`'s times (`USER_HZ`): 100 on every Linux architecture
/// berth builds for.
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|size| u64::try_from(size).ok())
            .unwrap_or(4096);
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let mut stats = parse_stat(&stat, page_size, boot_time)?;
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|dir| dir.count() as u64)
            .unwrap_or(0);
        stats.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| parse_max_fds(&text));
        Some(stats)
    }
}

/// Parses `/proc/self/stat` (fields after the command name, which may hold spaces and
/// parentheses, so the text after the last `)` is split).
fn parse_stat(stat: &str, page_size: u64, boot_time: Option<u64>) -> Option<ProcessStats> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields from the 3rd (state) on; field n of proc(5) is index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = field(14)?.saturating_add(field(15)?);
    Some(ProcessStats {
        cpu_seconds: ticks as f64 / TICKS_PER_SECOND,
        threads: field(20)?,
        start_time_seconds: boot_time
            .map(|boot| boot as f64 + field(22).unwrap_or(0) as f64 / TICKS_PER_SECOND),
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page_size),
        ..ProcessStats::default()
    })
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/self/stat` is read past a command name with spaces and parentheses.
    #[test]
    fn proc_stat_is_parsed() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 \
                    5000 104857600 2560 18446744073709551615";
        let stats = parse_stat(stat, 4096, Some(1_700_000_000)).expect("parsed");
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.threads, 7);
        assert_eq!(stats.virtual_bytes, 104_857_600);
        assert_eq!(stats.resident_bytes, 2560 * 4096);
        assert_eq!(stats.start_time_seconds, Some(1_700_000_050.0));
        assert!(ProcessStats::read().is_some_and(|s| s.open_fds > 0));
    }

    /// The soft limit of open files is read from `/proc/self/limits`.
    #[test]
    fn max_fds_is_parsed() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
    }
}
