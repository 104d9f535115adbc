//! The `http` provider: the operator's own endpoint makes the runners.
//!
//! berth POSTs JSON to four paths under the configured `url`, each request signed like
//! berth's webhooks (Standard Webhooks v1, see [`crate::signing`]). `providers/README.md`
//! specifies the protocol for implementers, with a worked signed request and an example
//! server:
//!
//! | request | body | success |
//! |---|---|---|
//! | `POST {url}/create` | [`RunnerSpec`] | 200/201 with a runner (at least `{"id": …}`) |
//! | `POST {url}/destroy` | [`RunnerRef`] | 200/204; 404 means already gone |
//! | `POST {url}/list` | `{"tenant": …}` | 200 `{"items": [runner…]}` |
//! | `POST {url}/price` | `{"machine_type": …, "region": …}` | 200 `{"hourly_price_micros": n \| null}` |
//!
//! Answers map to errors as: 429, 408 and 5xx (and timeouts, refused connections) are
//! transient, with `Retry-After` honoured; 503 or 507 with a body `{"code": "capacity"}` is
//! capacity; any other status is permanent, with the endpoint's `detail`, `message` or
//! `title` (or its text), cut at 500 characters. Redirects are not followed.
//!
//! Endpoints on loopback, private or link-local addresses are refused unless the operator
//! allows private networks: at build for IP literals, before each request by resolving the
//! host ([`net::check`]), and at connect time by the client's resolver (or, through the
//! operator's `--outbound-proxy`, by the check before each request: see [`net::route`]).
//!
//! # Config (kind `http`; unknown fields rejected; since 0.1)
//!
//! | field | meaning | default |
//! |---|---|---|
//! | `url` | base URL of the endpoint (required) | — |
//! | `timeout_ms` | timeout of one request | 30000 |
//!
//! Credentials: `{"secret": "whsec_…"}`, the signing secret shared with the endpoint (make
//! one with [`crate::signing::generate_secret`]).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use crate::signing::{self, Secret};
use crate::{
    Account, ConfigError, Environment, Error, Provider, Runner, RunnerRef, RunnerSpec, client, net,
    settings,
};

/// A bound on response bodies (a list of many runners fits easily).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How much of an endpoint's error text ends up in an error message.
const MAX_DETAIL: usize = 500;

/// The settings of one `http` account (see the module docs for the table).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of the endpoint; the operations are paths below it. Required. Since 0.1.
    pub url: String,
    /// Timeout of one request in milliseconds. Default 30000. Since 0.1.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// An `http` account. Its `Debug` output redacts the secret.
pub struct Http {
    base: Url,
    timeout: Duration,
    secret: Secret,
    /// The base64 part of the secret, only to scrub it from messages that echo it.
    secret_text: String,
    allow_private: bool,
    client: reqwest::Client,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("url", &self.base.as_str())
            .field("timeout", &self.timeout)
            .field("secret", &self.secret)
            .field("allow_private", &self.allow_private)
            .finish()
    }
}

/// A runner as an endpoint may return it: only `id` is required; the tenant and lease
/// default to the request's.
#[derive(Debug, Deserialize)]
struct WireRunner {
    id: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    ready: bool,
}

#[derive(Debug, Deserialize)]
struct WireList {
    items: Vec<WireRunner>,
}

#[derive(Debug, Deserialize)]
struct WirePrice {
    hourly_price_micros: Option<i64>,
}

/// What an endpoint said, when it did not say yes.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Http {
    /// Builds an http provider. Performs no I/O.
    ///
    /// # Errors
    ///
    /// An unparseable URL, one with credentials or a fragment, a private IP literal (unless
    /// `env.allow_private_network`), a zero timeout, or a secret that is not `whsec_` +
    /// base64. Messages never contain the secret.
    pub fn new(config: Config, secret: &str, env: &Environment) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError(format!("invalid `http` config: {message}"));
        let base = Url::parse(&config.url).map_err(|e| invalid(format!("`url`: {e}")))?;
        net::check_static(&base, env.allow_private_network)
            .map_err(|e| invalid(format!("`url`: {e}")))?;
        if !base.username().is_empty() || base.password().is_some() {
            return Err(invalid(
                "`url` must not hold credentials: the endpoint authenticates berth by the \
                 request signature"
                    .to_string(),
            ));
        }
        if base.fragment().is_some() {
            return Err(invalid("`url` must not have a fragment".to_string()));
        }
        if config.timeout_ms == 0 {
            return Err(invalid("`timeout_ms` must be positive".to_string()));
        }
        if !secret.starts_with(signing::SECRET_PREFIX) {
            return Err(ConfigError(
                "`http` credentials: `secret` must start with `whsec_`".to_string(),
            ));
        }
        let secret_text = secret
            .trim_start_matches(signing::SECRET_PREFIX)
            .to_string();
        let secret = Secret::parse(secret).map_err(|_| {
            ConfigError("`http` credentials: `secret` must be `whsec_` + base64".to_string())
        })?;
        Ok(Http {
            base,
            timeout: Duration::from_millis(config.timeout_ms),
            secret,
            secret_text,
            allow_private: env.allow_private_network,
            client: client::shared(env),
        })
    }

    pub(crate) fn from_account(account: &Account, env: &Environment) -> Result<Self, ConfigError> {
        let secret = settings::one_secret("http", &account.credentials, "secret")?;
        Http::new(settings::config("http", &account.config)?, &secret, env)
    }

    /// `{url}/{operation}`, keeping the base's path and query.
    fn endpoint(&self, operation: &str) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(operation);
        }
        url
    }

    /// Signs and sends one request. `Ok(Ok(body))` for a 2xx answer, `Ok(Err(answer))` for
    /// any other answer, `Err` when there was no answer.
    async fn post(
        &self,
        operation: &str,
        body: &impl Serialize,
    ) -> Result<Result<Vec<u8>, Answer>, Error> {
        let url = self.endpoint(operation);
        let what = format!("http provider {operation}");
        client::guard(&what, &url, self.allow_private).await?;
        let bytes = serde_json::to_vec(body).expect("BUG: request bodies always serialise");
        let id = signing::new_message_id();
        let timestamp = client::now_ms() / 1000;
        let signature = self.secret.sign(&id, timestamp, &bytes);
        let response = self
            .client
            .post(url)
            .timeout(self.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(signing::HEADER_ID, id)
            .header(signing::HEADER_TIMESTAMP, timestamp.to_string())
            .header(signing::HEADER_SIGNATURE, signature)
            .body(bytes)
            .send()
            .await
            .map_err(|e| client::transport_error(&what, &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = client::read_body(&what, response, MAX_BODY).await?;
        if status.is_success() {
            Ok(Ok(body))
        } else {
            Ok(Err(Answer {
                status,
                headers,
                body,
            }))
        }
    }

    /// Maps a non-2xx answer to an error, scrubbing the secret should the endpoint echo it.
    fn answer_error(&self, operation: &str, answer: &Answer) -> Error {
        let scrub = |message: String| message.replace(&self.secret_text, "<redacted>");
        match answer_error(operation, answer) {
            Error::Transient {
                message,
                retry_after,
            } => Error::Transient {
                message: scrub(message),
                retry_after,
            },
            Error::Permanent(message) => Error::Permanent(scrub(message)),
            Error::Capacity(message) => Error::Capacity(scrub(message)),
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(operation: &str, body: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(body).map_err(|e| {
            Error::Permanent(format!(
                "http provider {operation}: the endpoint's answer is not valid: {e}"
            ))
        })
    }
}

/// Maps a non-2xx answer to an error (see the module docs).
fn answer_error(operation: &str, answer: &Answer) -> Error {
    let parsed: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|value| value.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let detail = field("detail")
        .or_else(|| field("message"))
        .or_else(|| field("title"))
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).trim().to_string());
    let status = answer.status.as_u16();
    let message = if detail.is_empty() {
        format!("http provider {operation}: HTTP {status}")
    } else {
        format!(
            "http provider {operation}: HTTP {status}: {}",
            settings::truncate(&detail, MAX_DETAIL)
        )
    };
    let retry_after = client::retry_after(&answer.headers);
    let capacity = field("code").as_deref() == Some("capacity");
    match status {
        503 | 507 if capacity => Error::Capacity(message),
        408 | 429 | 500..=599 => Error::Transient {
            message,
            retry_after,
        },
        300..=399 => Error::Permanent(format!(
            "{message} (a redirect; berth does not follow redirects: configure the final URL)"
        )),
        _ => Error::Permanent(message),
    }
}

impl WireRunner {
    /// Checks the runner belongs to the request's tenant (and lease, when given).
    fn into_runner(
        self,
        operation: &str,
        tenant: &str,
        lease_id: Option<&str>,
    ) -> Result<Runner, Error> {
        let mismatch = |what: &str| {
            Error::Permanent(format!(
                "http provider {operation}: the endpoint returned a runner of another {what}"
            ))
        };
        if self.id.is_empty() {
            return Err(Error::Permanent(format!(
                "http provider {operation}: a runner has an empty `id`"
            )));
        }
        let runner_tenant = self.tenant.unwrap_or_else(|| tenant.to_string());
        if runner_tenant != tenant {
            return Err(mismatch("tenant"));
        }
        let runner_lease = match (self.lease_id, lease_id) {
            (Some(got), Some(wanted)) if got != wanted => return Err(mismatch("lease")),
            (Some(got), _) => got,
            (None, Some(wanted)) => wanted.to_string(),
            (None, None) => {
                return Err(Error::Permanent(format!(
                    "http provider {operation}: runner `{}` has no `lease_id`",
                    settings::printable(&self.id)
                )));
            }
        };
        Ok(Runner {
            id: self.id,
            tenant: runner_tenant,
            lease_id: runner_lease,
            address: self.address,
            metadata: self.metadata,
            ready: self.ready,
        })
    }
}

#[async_trait]
impl Provider for Http {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn create(&self, spec: &RunnerSpec) -> Result<Runner, Error> {
        match self.post("create", spec).await? {
            Ok(body) => Self::parse::<WireRunner>("create", &body)?.into_runner(
                "create",
                &spec.tenant,
                Some(&spec.lease_id),
            ),
            Err(answer) => Err(self.answer_error("create", &answer)),
        }
    }

    async fn destroy(&self, runner: &RunnerRef) -> Result<(), Error> {
        match self.post("destroy", runner).await? {
            Ok(_) => Ok(()),
            Err(answer) if answer.status == StatusCode::NOT_FOUND => Ok(()),
            Err(answer) => Err(self.answer_error("destroy", &answer)),
        }
    }

    async fn list(&self, tenant: &str) -> Result<Vec<Runner>, Error> {
        let body = match self.post("list", &json!({ "tenant": tenant })).await? {
            Ok(body) => body,
            Err(answer) => return Err(self.answer_error("list", &answer)),
        };
        let list: WireList = Self::parse("list", &body)?;
        let mut runners = Vec::with_capacity(list.items.len());
        for item in list.items {
            runners.push(item.into_runner("list", tenant, None)?);
        }
        Ok(runners)
    }

    async fn price(&self, machine_type: &str, region: Option<&str>) -> Result<Option<i64>, Error> {
        let request = json!({ "machine_type": machine_type, "region": region });
        let body = match self.post("price", &request).await? {
            Ok(body) => body,
            Err(answer) => return Err(self.answer_error("price", &answer)),
        };
        let price: WirePrice = Self::parse("price", &body)?;
        match price.hourly_price_micros {
            Some(micros) if micros < 0 => Err(Error::Permanent(
                "http provider price: the endpoint returned a negative price".into(),
            )),
            other => Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// The worked example of providers/README.md is a correctly signed request.
    #[test]
    fn readme_example_signature_is_correct() {
        let readme = include_str!("../README.md");
        let secret = "whsec_YmVydGgtc3RhbmRhcmQtd2ViaG9va3MtdGVzdC1rZXk=";
        let body = br#"{"tenant":"acme"}"#;
        let signature =
            signing::sign(secret, "msg_2Yb7cQ0rWn4tKx9LmP3sVd8eHf1", 1767225600, body).unwrap();
        assert!(readme.contains(secret));
        assert!(
            readme.contains(&format!("webhook-signature: {signature}")),
            "README lacks {signature}"
        );
    }

    /// Status mapping, including the capacity body and detail extraction.
    #[test]
    fn status_mapping() {
        assert!(
            matches!(answer_error("create", &answer(503, r#"{"code":"capacity","detail":"full"}"#)), Error::Capacity(m) if m.contains("full"))
        );
        assert!(matches!(
            answer_error("create", &answer(507, r#"{"code":"capacity"}"#)),
            Error::Capacity(_)
        ));
        assert!(matches!(
            answer_error("create", &answer(503, r#"{"code":"busy"}"#)),
            Error::Transient { .. }
        ));
        assert!(matches!(
            answer_error("create", &answer(507, "")),
            Error::Transient { .. }
        ));
        assert!(matches!(
            answer_error("create", &answer(429, "")),
            Error::Transient { .. }
        ));
        assert!(matches!(
            answer_error("create", &answer(408, "")),
            Error::Transient { .. }
        ));
        assert!(
            matches!(answer_error("create", &answer(400, r#"{"message":"no such type"}"#)), Error::Permanent(m) if m.ends_with("HTTP 400: no such type"))
        );
        assert!(
            matches!(answer_error("create", &answer(403, "plain words")), Error::Permanent(m) if m.ends_with("plain words"))
        );
        assert!(
            matches!(answer_error("create", &answer(302, "")), Error::Permanent(m) if m.contains("redirect"))
        );
    }
}
