//! `GET /metrics` (Prometheus text) and the middleware that counts requests.
//!
//! Every label value comes from a closed set, so no request — least of all an
//! unauthenticated one — can add series: methods are the seven berth knows or `other`
//! ([`method_label`]), routes are the router's templates or `unmatched`, statuses are the
//! ones berth answers, and the other labels are constants.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::objects::Metrics as ObjectMetrics;

/// Requests by method, route template and status; time spent by method and route; open
/// connections and the ones closed by a timeout (counted by the server's transport).
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    seconds: Mutex<BTreeMap<(&'static str, String), f64>>,
    in_flight: AtomicU64,
    connections_open: AtomicU64,
    header_timeouts: AtomicU64,
    keepalive_timeouts: AtomicU64,
}

impl HttpMetrics {
    /// A connection was accepted.
    pub(crate) fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed (after [`HttpMetrics::connection_opened`]).
    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection was closed because its request's headers did not arrive in time.
    pub(crate) fn header_timed_out(&self) {
        self.header_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// A kept-alive connection was closed because no next request came in time.
    pub(crate) fn keepalive_timed_out(&self) {
        self.keepalive_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, method: &'static str, route: &str, status: u16, seconds: f64) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests
            .entry((method, route.to_owned(), status))
            .or_default() += 1;
        drop(requests);
        let mut time = self.seconds.lock().unwrap_or_else(|p| p.into_inner());
        *time.entry((method, route.to_owned())).or_default() += seconds;
    }
}

/// The `method` label of a request: one of the methods an HTTP API is called with, or
/// `other`. HTTP lets a client send any token as a method, and each distinct label value
/// would be a new series kept for the life of the process.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts every request under its route template (never its concrete path, which would
/// hold tenant names and lease ids) and its method label ([`method_label`]).
pub(super) async fn track(
    metrics: std::sync::Arc<HttpMetrics>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = method_label(req.method());
    let start = Instant::now();
    metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let response = next.run(req).await;
    metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    metrics.record(
        method,
        &route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

pub(super) fn router() -> Router<super::State> {
    Router::new().route("/metrics", get(render))
}

/// Prometheus metrics: requests, lease outcomes, objects, alarms.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub(super) async fn render(State(state): State<super::State>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    let http = &state.http_metrics;
    family(
        &mut out,
        "berth_http_requests_total",
        "counter",
        "HTTP requests by method, route and status.",
    );
    for ((method, route, status), n) in http
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "berth_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    family(
        &mut out,
        "berth_http_request_seconds_total",
        "counter",
        "Time spent answering, by method and route.",
    );
    for ((method, route), seconds) in http
        .seconds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "berth_http_request_seconds_total{{method=\"{method}\",route=\"{route}\"}} {seconds:.6}"
        );
    }
    gauge(
        &mut out,
        "berth_http_requests_in_flight",
        "Requests being answered.",
        http.in_flight.load(Ordering::Relaxed) as f64,
    );
    gauge(
        &mut out,
        "berth_http_connections_open",
        "HTTP connections open (at most --max-connections).",
        http.connections_open.load(Ordering::Relaxed) as f64,
    );
    family(
        &mut out,
        "berth_http_connections_timed_out_total",
        "counter",
        "HTTP connections closed because a request's headers (header) or, on a kept-alive \
         connection, the next request (keepalive) did not arrive in time.",
    );
    for (phase, c) in [
        ("header", &http.header_timeouts),
        ("keepalive", &http.keepalive_timeouts),
    ] {
        let _ = writeln!(
            out,
            "berth_http_connections_timed_out_total{{phase=\"{phase}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }

    let t = &state.tenant_metrics;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    counter(
        &mut out,
        "berth_lease_grants_total",
        "Leases granted (at request or from the queue).",
        get(&t.grants),
    );
    counter(
        &mut out,
        "berth_lease_queued_total",
        "Lease requests queued.",
        get(&t.queued),
    );
    family(
        &mut out,
        "berth_lease_rejections_total",
        "counter",
        "Lease requests refused, by reason.",
    );
    for (reason, c) in [
        ("concurrency_cap", &t.rejected_concurrency),
        ("spend_cap", &t.rejected_spend),
        ("queue_full", &t.rejected_queue_full),
    ] {
        let _ = writeln!(
            out,
            "berth_lease_rejections_total{{reason=\"{reason}\"}} {}",
            get(c)
        );
    }
    family(
        &mut out,
        "berth_leases_ended_total",
        "counter",
        "Leases that reached a final state, by state.",
    );
    for (state_name, c) in [
        ("released", &t.ended_released),
        ("expired", &t.ended_expired),
        ("failed", &t.ended_failed),
        ("canceled", &t.ended_canceled),
    ] {
        let _ = writeln!(
            out,
            "berth_leases_ended_total{{state=\"{state_name}\"}} {}",
            get(c)
        );
    }
    counter(
        &mut out,
        "berth_provider_errors_total",
        "Failed provider calls (each is retried or fails its lease).",
        get(&t.provider_errors),
    );
    counter(
        &mut out,
        "berth_reconcile_destroyed_total",
        "Orphan runners destroyed by reconciliation.",
        get(&t.reconcile_destroyed),
    );
    counter(
        &mut out,
        "berth_reconcile_orphans_reported_total",
        "Orphan runners reconciliation would have destroyed in report mode (--reconcile-mode report).",
        get(&t.orphans_reported),
    );
    counter(
        &mut out,
        "berth_reconcile_listings_total",
        "Reconciliation listings of a provider account handled (successful or not).",
        get(&t.reconcile_listings),
    );
    counter(
        &mut out,
        "berth_reconcile_list_failures_total",
        "Reconciliation listings of a provider account that failed.",
        get(&t.reconcile_list_failures),
    );
    counter(
        &mut out,
        "berth_reconcile_failing_total",
        "provider.reconcile_failing events: an account's listings failed several rounds in a row.",
        get(&t.reconcile_failing),
    );
    counter(
        &mut out,
        "berth_destroy_stuck_total",
        "runner.destroy_stuck events: a runner's destroy failed repeatedly or was refused for good.",
        get(&t.destroy_stuck),
    );
    counter(
        &mut out,
        "berth_runners_lost_total",
        "Leases ended runner_lost: their runner vanished at the provider.",
        get(&t.runners_lost),
    );
    counter(
        &mut out,
        "berth_capacity_fallbacks_total",
        "Creates moved to a pool's next alternative after a capacity error.",
        get(&t.capacity_fallbacks),
    );

    let o: &ObjectMetrics = state.runtime.metrics();
    gauge(
        &mut out,
        "berth_live_objects",
        "Objects with a running task.",
        o.live_objects.load(Ordering::Relaxed) as f64,
    );
    gauge(
        &mut out,
        "berth_open_objects",
        "Object databases open (bounded by --max-live-objects).",
        state.runtime.open_objects() as f64,
    );
    gauge(
        &mut out,
        "berth_pending_alarms",
        "Objects with a pending alarm.",
        state.runtime.pending_alarms() as f64,
    );
    counter(
        &mut out,
        "berth_object_activations_total",
        "Objects opened.",
        get(&o.activations),
    );
    counter(
        &mut out,
        "berth_object_hibernations_total",
        "Objects closed for idleness or eviction.",
        get(&o.hibernations),
    );
    counter(
        &mut out,
        "berth_object_events_total",
        "Events handled by objects.",
        get(&o.events),
    );
    counter(
        &mut out,
        "berth_object_failed_events_total",
        "Events rolled back.",
        get(&o.failed_events),
    );
    counter(
        &mut out,
        "berth_object_commits_total",
        "Object transactions committed (one WAL fsync each).",
        get(&o.commits),
    );
    counter(
        &mut out,
        "berth_object_failed_commits_total",
        "Object commits that failed.",
        get(&o.failed_commits),
    );
    counter(
        &mut out,
        "berth_alarms_total",
        "Alarm handlers run.",
        get(&o.alarms),
    );
    counter(
        &mut out,
        "berth_alarm_failures_total",
        "Alarm handlers that failed and were retried.",
        get(&o.alarm_failures),
    );
    family(
        &mut out,
        "berth_alarm_lateness_ms",
        "histogram",
        "How late alarms ran (handler start minus alarm time), in ms.",
    );
    let (buckets, count, sum, _max) = o.alarm_lateness.snapshot();
    for (le, n) in buckets {
        let _ = writeln!(out, "berth_alarm_lateness_ms_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "berth_alarm_lateness_ms_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "berth_alarm_lateness_ms_sum {sum}");
    let _ = writeln!(out, "berth_alarm_lateness_ms_count {count}");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The methods berth serves keep their names; any other token is `other`.
    #[test]
    fn method_labels_are_a_closed_set() {
        for known in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            let method = Method::from_bytes(known.as_bytes()).expect("method");
            assert_eq!(method_label(&method), known);
        }
        for made_up in ["CONNECT", "TRACE", "PROPFIND", "FOO0", "get"] {
            let method = Method::from_bytes(made_up.as_bytes()).expect("method");
            assert_eq!(method_label(&method), "other", "{made_up}");
        }
    }
}
