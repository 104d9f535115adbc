//! `GET /v1/tenants/{t}/leases/{id}/logs`: what a lease's runner wrote (`berth lease logs`).
//!
//! The tenant's object confirms the lease is the tenant's and hands out its runner and the
//! provider client that made it (`tenant::LeaseRunner`); the provider reads its own files or
//! endpoints (`Provider::logs`), so nothing from the request but the lease id (and stream,
//! offset, limit) ever reaches it, and the lease id only after the object found the lease.
//! The read is I/O, so it runs here, outside the object. Providers that keep no output answer
//! 409 `no_logs`, as does a lease with no runner (yet, or any more).

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use providers::logs::{Logs, Stream};
use serde::Deserialize;

use super::Principal;
use super::error::ApiError;
use super::extract::{Params, PathParams};
use crate::tenant;
use crate::wire::bounds::{LOG_LIMIT, LOG_OFFSET, LOG_STREAM};
use crate::wire::{LeaseLogs, Problem, Scope};

/// The most bytes one answer carries (and the default).
pub const MAX_LOG_BYTES: usize = 1024 * 1024;
/// How long reading a log may take before the answer is 503.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

pub(super) fn router() -> Router<super::State> {
    Router::new().route("/v1/tenants/{tenant}/leases/{id}/logs", get(logs))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    /// `stdout` (default) or `stderr`.
    stream: Option<String>,
    /// Start at this byte of the stream (default 0).
    offset: Option<u64>,
    /// At most this many bytes (1–1048576, default 1048576).
    limit: Option<usize>,
}

crate::wire::rules!(LogsQuery {
    stream: LOG_STREAM,
    offset: LOG_OFFSET,
    limit: LOG_LIMIT,
});

/// Up to 1 MiB of one output stream of a lease's runner, from a byte offset; `next_offset`
/// continues it. 409 `no_logs` when the runner's provider keeps no output, or the lease has no
/// runner (queued) or no longer has one (ended: its runner is gone with its output).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/leases/{id}/logs", tag = "leases",
    params(("tenant" = String, Path), ("id" = String, Path),
        ("stream" = Option<String>, Query, description = "stdout (default) or stderr"),
        ("offset" = Option<u64>, Query, description = "start at this byte (default 0)"),
        ("limit" = Option<usize>, Query, description = "at most this many bytes, 1–1048576 (default 1048576)")),
    responses((status = 200, body = LeaseLogs), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, description = "no_logs", body = Problem),
        (status = 503, description = "the provider did not answer", body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn logs(
    State(state): State<super::State>,
    principal: Principal,
    PathParams((tenant, id)): PathParams<(String, String)>,
    Params(query): Params<LogsQuery>,
) -> Result<Json<LeaseLogs>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesRead)?;
    let stream = match query.stream.as_deref() {
        None | Some("stdout") => Stream::Stdout,
        Some("stderr") => Stream::Stderr,
        Some(_) => return Err(ApiError::bad_request("`stream` takes `stdout` or `stderr`")),
    };
    let limit = match query.limit {
        None => MAX_LOG_BYTES,
        Some(limit @ 1..=MAX_LOG_BYTES) => limit,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "`limit` must be between 1 and {MAX_LOG_BYTES}"
            )));
        }
    };
    let offset = query.offset.unwrap_or(0);
    let handle = state
        .ask(&tenant, tenant::LeaseRunner { id: id.clone() })
        .await?;
    let read = tokio::time::timeout(
        READ_TIMEOUT,
        handle.client.logs(&handle.runner, stream, offset, limit),
    )
    .await;
    let unavailable = |why: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_unavailable",
            format!(
                "reading the runner's {} failed ({why}); retry",
                stream.as_str()
            ),
        )
        .retry_after(5)
    };
    let chunk = match read {
        Err(_) => return Err(unavailable("no answer in time".into())),
        Ok(Err(err)) => return Err(unavailable(err.to_string())),
        Ok(Ok(Logs::Chunk(chunk))) => chunk,
        Ok(Ok(Logs::Unsupported)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "no_logs",
                format!(
                    "lease {id} runs on provider account `{}` (kind `{}`), which keeps no output berth can show",
                    handle.account, handle.kind
                ),
            ));
        }
        Ok(Ok(Logs::Unavailable(why))) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "no_logs",
                format!("no logs of lease {id}: {why}"),
            ));
        }
    };
    let bytes = whole_characters(&chunk.bytes, chunk.offset, chunk.size);
    let next_offset = chunk.offset.saturating_add(bytes.len() as u64);
    Ok(Json(LeaseLogs {
        lease_id: id,
        stream: stream.as_str().to_owned(),
        offset: chunk.offset,
        next_offset,
        size: chunk.size,
        text: String::from_utf8_lossy(bytes).into_owned(),
    }))
}

/// `bytes` without a character cut in two at its end, when more of the stream follows (the
/// answer's bound cut it): the next answer starts with the whole character. At the stream's
/// end the bytes are taken as they are, so a reader always reaches the end.
fn whole_characters(bytes: &[u8], offset: u64, size: u64) -> &[u8] {
    let reaches_end = offset.saturating_add(bytes.len() as u64) >= size;
    if reaches_end {
        return bytes;
    }
    match std::str::from_utf8(bytes) {
        Err(err) if err.error_len().is_none() && err.valid_up_to() > 0 => {
            &bytes[..err.valid_up_to()]
        }
        _ => bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A character cut by the bound waits for the next answer; at the end, nothing waits.
    #[test]
    fn characters_are_not_cut_before_the_end() {
        let text = "aé".as_bytes(); // a, then two bytes
        assert_eq!(whole_characters(&text[..2], 0, 3), b"a");
        assert_eq!(whole_characters(&text[..2], 0, 2), &text[..2]);
        assert_eq!(whole_characters(text, 0, 10), text);
        // Bytes that are not UTF-8 in the middle are passed on (read as U+FFFD).
        assert_eq!(whole_characters(b"\xffa", 0, 10), b"\xffa");
    }
}
