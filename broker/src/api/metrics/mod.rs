//! `GET /metrics` in the OpenMetrics text format, written by the `prometheus-client` crate,
//! and the HTTP layer's own metrics.
//!
//! Families (see README "Metrics" for the whole list):
//!
//! - HTTP: `berth_http_requests_total` (method, route, status),
//!   `berth_http_request_duration_seconds` (histogram: method, route, status class),
//!   `berth_http_requests_in_flight`, `berth_http_connections_open`,
//!   `berth_http_connections_timed_out_total` (phase);
//! - the tenant objects' ([`crate::metrics`]): lease time to ready, provider calls, webhook
//!   deliveries, open leases;
//! - the runtime's and the tenant layer's counters, alarm lateness in seconds
//!   (`berth_alarm_lateness_seconds`), `berth_build_info` and the `process_*` metrics
//!   ([`collect`]).
//!
//! Every label value comes from a closed set, so no request — least of all an
//! unauthenticated one — can add series: methods are the seven berth knows or `other`
//! ([`method_label`]), routes are the router's templates or `unmatched`, statuses are the
//! ones berth answers, and the other labels are constants.

mod collect;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{Method, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of the answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Requests {
    method: &'static str,
    route: Arc<str>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Durations {
    method: &'static str,
    route: Arc<str>,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Phase {
    phase: &'static str,
}

/// Requests by method, route template and status; their durations by method, route and
/// status class; open connections and the ones closed by a timeout (counted by the server's
/// transport).
#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<Requests, Counter>,
    durations: Family<Durations, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    connections_open: Gauge,
    timed_out: Family<Phase, Counter>,
    /// The route templates seen, so a label is an `Arc` clone, not a new string per request.
    routes: RwLock<HashSet<Arc<str>>>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(crate::metrics::seconds_buckets),
            in_flight: Gauge::default(),
            connections_open: Gauge::default(),
            timed_out: Family::default(),
            routes: RwLock::default(),
        }
    }
}

impl HttpMetrics {
    /// A connection was accepted.
    pub(crate) fn connection_opened(&self) {
        self.connections_open.inc();
    }

    /// A connection closed (after [`HttpMetrics::connection_opened`]).
    pub(crate) fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// A connection was closed because its request's headers did not arrive in time.
    pub(crate) fn header_timed_out(&self) {
        self.timed_out
            .get_or_create(&Phase { phase: "header" })
            .inc();
    }

    /// A kept-alive connection was closed because no next request came in time.
    pub(crate) fn keepalive_timed_out(&self) {
        self.timed_out
            .get_or_create(&Phase { phase: "keepalive" })
            .inc();
    }

    /// A request is being answered.
    pub(super) fn started(&self) {
        self.in_flight.inc();
    }

    /// A request was answered (after [`HttpMetrics::started`]).
    pub(super) fn finished(&self) {
        self.in_flight.dec();
    }

    /// The shared label value of a route template (interned: the router has a fixed set).
    fn route(&self, route: &str) -> Arc<str> {
        if let Some(known) = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
        {
            return known.clone();
        }
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = routes.get(route) {
            return known.clone();
        }
        let interned: Arc<str> = Arc::from(route);
        routes.insert(interned.clone());
        interned
    }

    /// Counts an answered request under its route template (never its concrete path, which
    /// would hold tenant names and lease ids; `unmatched` when no route matched) and its
    /// method label ([`method_label`]), and observes its duration.
    pub(super) fn observe(
        &self,
        method: &'static str,
        route: Option<&str>,
        status: u16,
        elapsed: std::time::Duration,
    ) {
        let route = self.route(route.unwrap_or("unmatched"));
        let status_class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.durations
            .get_or_create(&Durations {
                method,
                route: route.clone(),
                status_class,
            })
            .observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&Requests {
                method,
                route,
                status,
            })
            .inc();
    }

    /// Registers the HTTP families in `registry`.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "berth_http_requests",
            "HTTP requests by method, route and status",
            self.requests.clone(),
        );
        registry.register(
            "berth_http_request_duration_seconds",
            "Time to answer (to the first byte of a streamed answer), by method, route and \
             status class",
            self.durations.clone(),
        );
        registry.register(
            "berth_http_requests_in_flight",
            "Requests being answered",
            self.in_flight.clone(),
        );
        registry.register(
            "berth_http_connections_open",
            "HTTP connections open (at most --max-connections)",
            self.connections_open.clone(),
        );
        registry.register(
            "berth_http_connections_timed_out",
            "HTTP connections closed because a request's headers (header) or, on a kept-alive \
             connection, the next request (keepalive) did not arrive in time",
            self.timed_out.clone(),
        );
    }
}

/// The `method` label of a request: one of the methods an HTTP API is called with, or
/// `other`. HTTP lets a client send any token as a method, and each distinct label value
/// would be a new series kept for the life of the process.
pub(super) fn method_label(method: &Method) -> &'static str {
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

pub(super) fn router() -> Router<super::State> {
    Router::new().route("/metrics", get(render))
}

/// Prometheus metrics (OpenMetrics text): requests, leases, providers, webhooks, objects,
/// alarms, the process.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "OpenMetrics text format", content_type = "application/openmetrics-text")))]
pub(super) async fn render(State(state): State<super::State>) -> impl IntoResponse {
    // A registry per scrape: registering clones handles (the values are shared), and a scrape
    // is rare next to the requests it counts.
    let mut registry = Registry::default();
    state.http_metrics.register(&mut registry);
    state.tenant_metrics.families.register(&mut registry);
    collect::register(&mut registry, &state);
    let mut out = String::with_capacity(16 * 1024);
    if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        return super::ApiError::internal(format!("encoding metrics: {err}")).into_response();
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], out).into_response()
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
