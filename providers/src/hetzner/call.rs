//! One call to the Hetzner Cloud API: paced by the project's request budget, retried within
//! the call with backoff (or the API's own wait), its body bounded, every message scrubbed of
//! the token and the call's secrets.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use super::api::{ApiError, Failure};
use super::budget::{Admission, Priority};
use super::{BASE_BACKOFF, Hetzner, MAX_BODY};
use crate::{Error, client};

/// One API request as [`Hetzner::request`] sends it.
pub(super) struct Call<'a> {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) query: Vec<(&'static str, String)>,
    pub(super) body: Option<&'a Value>,
    /// Whose turn it is when the budget is short.
    pub(super) priority: Priority,
    /// Values never to show in a message (the runner's secrets, on a create).
    pub(super) secrets: &'a [&'a str],
}

impl<'a> Call<'a> {
    pub(super) fn new(method: Method, path: impl Into<String>, priority: Priority) -> Self {
        Call {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            priority,
            secrets: &[],
        }
    }

    pub(super) fn what(&self) -> String {
        format!("hetzner {} {}", self.method, self.path)
    }
}

impl Hetzner {
    /// Removes the token and `secrets` from a message, in case an upstream error echoes them.
    pub(super) fn scrub(&self, message: String, secrets: &[&str]) -> String {
        let message = if self.token.is_empty() {
            message
        } else {
            message.replace(&self.token, "<redacted>")
        };
        crate::redact(&message, secrets)
    }

    pub(super) fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        // A base without a path has path "/" (URLs of http(s) cannot have an empty one).
        let joined = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        url.set_path(&joined);
        url
    }

    /// One API request with in-call retries, paced by the project's budget. A `not_found` or
    /// `uniqueness_error` comes back as [`Failure::Api`] for the caller to interpret; other
    /// failures are already mapped. Every message is already scrubbed of the token and the
    /// call's secrets (see [`Hetzner::send`]).
    pub(super) async fn request<T: DeserializeOwned>(&self, call: &Call<'_>) -> Result<T, Failure> {
        let max_wait = Duration::from_millis(self.config.max_retry_wait_ms);
        let mut attempt = 0;
        // The last rate-limit answer, returned (with the budget's wait) if the retry it asked
        // for cannot happen within this call.
        let mut rate_limited_by: Option<Error> = None;
        // Bounded: every pass sends one request, and at most `max_retries + 1` are sent.
        loop {
            if let Err(wait) = self.wait_for_budget(call, max_wait).await {
                let error = match rate_limited_by {
                    Some(error) => error,
                    None => Error::transient(format!(
                        "{}: the Hetzner project's rate limit budget is spent",
                        call.what()
                    )),
                };
                return Err(Failure::Mapped(
                    error
                        .map_message(|message| {
                            format!(
                                "{message}; the next request is due in {} ms",
                                wait.as_millis()
                            )
                        })
                        .with_retry_after(wait),
                ));
            }
            let failure = match self.send(call).await {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes).map_err(|e| {
                        Failure::Mapped(Error::Permanent(format!(
                            "{}: unexpected response: {e}",
                            call.what()
                        )))
                    });
                }
                Err(failure) => failure,
            };
            let (error, rate_limited) = match failure {
                Failure::Api(api)
                    if matches!(api.code.as_str(), "not_found" | "uniqueness_error") =>
                {
                    return Err(Failure::Api(api));
                }
                Failure::Api(api) => {
                    let rate_limited = api.is_rate_limit();
                    (api.into_error(), rate_limited)
                }
                Failure::Mapped(error) => (error, false),
            };
            let Error::Transient { retry_after, .. } = &error else {
                return Err(Failure::Mapped(error));
            };
            if attempt >= self.config.max_retries {
                return Err(Failure::Mapped(error));
            }
            if rate_limited {
                // The budget learnt from the 429 and paces the retry at the top of the loop.
                tracing::debug!(method = %call.method, path = %call.path, attempt, %error, "hetzner rate limit; retrying when the budget allows");
                rate_limited_by = Some(error);
            } else {
                let wait = retry_after.unwrap_or(BASE_BACKOFF * 2u32.saturating_pow(attempt));
                if wait > max_wait {
                    return Err(Failure::Mapped(error));
                }
                tracing::debug!(method = %call.method, path = %call.path, attempt, wait_ms = wait.as_millis() as u64, %error, "retrying hetzner request");
                tokio::time::sleep(wait).await;
                rate_limited_by = None;
            }
            attempt += 1;
        }
    }

    /// Waits until the project's budget lets `call` go; a wait longer than `max_wait` is not
    /// waited but returned, for the broker to wait instead.
    async fn wait_for_budget(&self, call: &Call<'_>, max_wait: Duration) -> Result<(), Duration> {
        let mut waited = Duration::ZERO;
        // Bounded: every pass either returns or sleeps, and the sleeps of the passes that
        // loop add up to at most `max_wait` (each one is admitted only within what is left).
        loop {
            match self
                .budget
                .admit(call.priority, max_wait.saturating_sub(waited))
            {
                Admission::Now => return Ok(()),
                Admission::After(wait) => {
                    tokio::time::sleep(wait).await;
                    return Ok(());
                }
                Admission::Recheck(wait) => {
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
                Admission::TooLong(wait) => return Err(wait),
            }
        }
    }

    /// Sends one request; returns the body of a 2xx answer. Every answer's rate-limit
    /// headers go to the budget.
    pub(super) async fn send(&self, call: &Call<'_>) -> Result<Vec<u8>, Failure> {
        let what = call.what();
        let scrub_error = |error: Error| error.map_message(|m| self.scrub(m, call.secrets));
        let url = self.url(&call.path);
        if self.proxied {
            // The client's resolver sees only the proxy's name: judge the target here.
            client::guard(&what, &url, self.allow_private)
                .await
                .map_err(|e| Failure::Mapped(scrub_error(e)))?;
        }
        let mut request = self
            .client
            .request(call.method.clone(), url)
            .header(AUTHORIZATION, self.authorization.clone())
            .timeout(Duration::from_millis(self.config.request_timeout_ms));
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        if let Some(body) = call.body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Mapped(scrub_error(client::transport_error(&what, &e))))?;
        let status = response.status();
        let headers = response.headers().clone();
        let rate_limited = status.as_u16() == 429;
        let retry_after = client::retry_after(&headers);
        self.budget.observe(&headers, rate_limited, retry_after);
        let bytes = client::read_body(&what, response, MAX_BODY)
            .await
            .map_err(|e| Failure::Mapped(scrub_error(e)))?;
        if status.is_success() {
            return Ok(bytes);
        }
        let mut api = ApiError::from_response(&what, status.as_u16(), &headers, &bytes);
        api.message = self.scrub(api.message, call.secrets);
        if api.is_rate_limit() {
            // One request's worth, as the budget now knows it, unless the API said when.
            api.retry_after = Some(retry_after.unwrap_or_else(|| self.budget.wait_for_one()));
        }
        Err(Failure::Api(api))
    }
}
