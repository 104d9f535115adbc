//! Request ids and the access log: the outermost layer of the router.
//!
//! Every request gets an id: the client's `X-Request-Id` when it is sane (1 to 128 visible
//! ASCII characters, so it cannot forge a log line or a header), else a new UUID. The id is
//!
//! - echoed in the answer's `X-Request-Id`;
//! - a field of the `request` span the handler runs in, so every log line the request causes
//!   carries it (text: `request{request_id=…}:`, JSON: under `span`), also those of the
//!   object event it caused (a call carries its caller's span into the object's inbox);
//! - in every problem+json answer (`request_id`), and in a 500's detail, so "it was logged"
//!   says what to search for ([`current`], read by `ApiError`);
//! - in the one access log line per request (target `berth::access`, level info): method,
//!   route template (never the raw path), status, duration, tenant and request id. Turn it
//!   off with `BERTH_LOG=info,berth::access=off`.
//!
//! The request metrics are observed here too ([`super::metrics::HttpMetrics::observe`]), so
//! an answer the panic handler made is counted like any other.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use super::metrics::{HttpMetrics, method_label};

/// The header a request id travels in, both ways.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a client.
pub const MAX_REQUEST_ID: usize = 128;

tokio::task_local! {
    /// The id of the request whose handler runs in this task.
    static CURRENT: Arc<str>;
}

/// The id of the request being answered in this task, if any (outside a request, for
/// example in an object's task, there is none).
pub fn current() -> Option<Arc<str>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Whether a client's request id can be used as it is: 1 to [`MAX_REQUEST_ID`] bytes, each
/// visible ASCII (no space, no control character), so it is a valid header value and one
/// token in a log line.
pub fn is_sane(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.iter().all(|b| b.is_ascii_graphic())
}

/// The tenant a request is about: the `{tenant}` segment of its route, read from its path.
fn tenant_of<'a>(route: Option<&str>, path: &'a str) -> Option<&'a str> {
    let route = route?;
    let index = route.split('/').position(|segment| segment == "{tenant}")?;
    path.split('/').nth(index)
}

/// The layer: assigns the id, runs the request inside its span and task-local, echoes the id,
/// observes the request metrics and writes the access log line.
pub(super) async fn layer(metrics: Arc<HttpMetrics>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id: Arc<str> = match req.headers().get(&REQUEST_ID) {
        Some(value) if is_sane(value.as_bytes()) => Arc::from(value.to_str().unwrap_or_default()),
        _ => Arc::from(uuid::Uuid::new_v4().simple().to_string()),
    };
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map(MatchedPath::as_str);
    let method = method_label(req.method());
    // The tenant is whatever the path says (the request may be refused for it): logged
    // escaped (`?`), never used as a metric label.
    let tenant = tenant_of(route, req.uri().path()).map(str::to_owned);
    let span = tracing::info_span!("request", request_id = %id);
    metrics.started();
    let mut response = CURRENT
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    metrics.finished();
    let elapsed = start.elapsed();
    let status = response.status();
    metrics.observe(method, route, status.as_u16(), elapsed);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    span.in_scope(|| {
        tracing::info!(
            target: "berth::access",
            method,
            route = route.unwrap_or("unmatched"),
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            tenant = tenant.as_deref().map(tracing::field::debug),
            request_id = %id,
            "request"
        );
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's id is taken only when it is 1–128 visible ASCII characters.
    #[test]
    fn sane_request_ids() {
        assert!(is_sane(b"abc-123_XYZ.:/"));
        assert!(is_sane(&[b'a'; 128]));
        assert!(!is_sane(b""));
        assert!(!is_sane(&[b'a'; 129]));
        assert!(!is_sane(b"has space"));
        assert!(!is_sane(b"line\nbreak"));
        assert!(!is_sane("é".as_bytes()));
    }

    /// The tenant is the path segment under the route's `{tenant}`.
    #[test]
    fn tenant_from_the_route() {
        assert_eq!(
            tenant_of(
                Some("/v1/tenants/{tenant}/leases"),
                "/v1/tenants/acme/leases"
            ),
            Some("acme")
        );
        assert_eq!(tenant_of(Some("/healthz"), "/healthz"), None);
        assert_eq!(tenant_of(None, "/v1/tenants/acme"), None);
    }
}
