//! What the `hetzner` and `http` providers share about talking HTTP: the client, bounded
//! body reads and retry hints.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

use crate::Error;
use crate::net::PublicResolver;

/// One client per network policy for the whole process, so connections are pooled across
/// accounts. Redirects are never followed: a redirect could lead to a private address or
/// carry credentials to another host.
fn make_client(allow_private: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10));
    let builder = if allow_private {
        builder
    } else {
        builder.dns_resolver(std::sync::Arc::new(PublicResolver))
    };
    builder
        .build()
        .expect("BUG: a rustls client with static settings always builds")
}

static PUBLIC_ONLY: LazyLock<reqwest::Client> = LazyLock::new(|| make_client(false));
static ANY_NETWORK: LazyLock<reqwest::Client> = LazyLock::new(|| make_client(true));

/// The shared client for a network policy.
pub(crate) fn shared(allow_private: bool) -> reqwest::Client {
    if allow_private {
        ANY_NETWORK.clone()
    } else {
        PUBLIC_ONLY.clone()
    }
}

/// Turns a transport failure (no HTTP status) into an error. Always transient: the request
/// may not have reached the server, or its answer was lost.
pub(crate) fn transport_error(what: &str, e: &reqwest::Error) -> Error {
    let cause = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "request failed".to_string()
    };
    // The source chain says why (refused, DNS, TLS); reqwest's Display adds the URL, which
    // is config, never a credential.
    let mut detail = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    let message = if detail.is_empty() {
        format!("{what}: {cause}")
    } else {
        format!("{what}: {cause}: {detail}")
    };
    Error::transient(message)
}

/// Reads a response body, refusing more than `limit` bytes (a misbehaving endpoint must not
/// exhaust berth's memory).
pub(crate) async fn read_body(
    what: &str,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(what, &e))?
    {
        if body.len() + chunk.len() > limit {
            return Err(Error::transient(format!(
                "{what}: response larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Seconds since the Unix epoch, with millisecond precision.
pub(crate) fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The `Retry-After` header: delay seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait_ms = at.timestamp_millis().saturating_sub(now_ms()).max(0);
    Some(Duration::from_millis(wait_ms.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    use super::*;

    /// `Retry-After` as seconds, as a past date, and garbage.
    #[test]
    fn retry_after_forms() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}
