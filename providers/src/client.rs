//! What the `hetzner` and `http` providers share about talking HTTP: the client, bounded
//! body reads and retry hints.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use url::Url;

use crate::{Environment, Error, net};

/// One client per network policy (private addresses allowed or not, which proxy) for the
/// whole process, so connections are pooled across accounts. Redirects are never followed: a
/// redirect could lead to a private address or carry credentials to another host. Proxies
/// named by the environment are ignored ([`net::route`]).
fn make_client(allow_private: bool, proxy: Option<&Url>) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10));
    net::route(builder, allow_private, proxy)
        .build()
        .expect("BUG: a rustls client with static settings always builds")
}

/// A network policy: private addresses allowed, and the operator's proxy.
type Policy = (bool, Option<Url>);

/// The clients made so far, by policy. A process has one proxy setting, so this holds at
/// most two clients (tests may make a few more).
static CLIENTS: Mutex<Vec<(Policy, reqwest::Client)>> = Mutex::new(Vec::new());

/// The shared client for the network policy of `env`.
pub(crate) fn shared(env: &Environment) -> reqwest::Client {
    let key = (env.allow_private_network, env.outbound_proxy.clone());
    let mut clients = CLIENTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, client)) = clients.iter().find(|(k, _)| *k == key) {
        return client.clone();
    }
    let client = make_client(key.0, key.1.as_ref());
    clients.push((key, client.clone()));
    client
}

/// Refuses a request to `url` that the private-address guard forbids, before it is sent:
/// resolving the host here is what keeps the guard working through a proxy (see
/// [`net::route`]). A private address is a permanent error, a name that does not resolve a
/// transient one.
pub(crate) async fn guard(what: &str, url: &Url, allow_private: bool) -> Result<(), Error> {
    net::check(url, allow_private)
        .await
        .map_err(|refusal| match refusal {
            net::Refusal::Refused(message) => Error::Permanent(format!("{what}: {message}")),
            net::Refusal::Unresolved(message) => Error::transient(format!("{what}: {message}")),
        })
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
