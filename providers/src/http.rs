//! The `http` provider: the operator's own endpoint makes the runners.
//!
//! berth POSTs JSON to four paths under the configured `url`, each request signed with
//! berth's request signature (`berth-signature: v2,…` over the method, the path and the body;
//! see "Request signatures" in [`crate::signing`]). `providers/README.md` specifies the
//! protocol for implementers, with a worked signed request and an example server:
//!
//! | request | body | success |
//! |---|---|---|
//! | `POST {url}/create` | [`RunnerSpec`] + `installation_id` | 200/201 with a runner (at least `{"id": …}`) |
//! | `POST {url}/destroy` | [`RunnerRef`] + `installation_id` | 200/204; 404 means already gone |
//! | `POST {url}/list` | `{"tenant": …, "installation_id": …}` | 200 `{"items": [runner…]}` |
//! | `POST {url}/price` | `{"machine_type": …, "region": …}` | 200 `{"hourly_price_micros": n \| null}` |
//!
//! Answers map to errors as: 429, 408 and 5xx (and timeouts, refused connections) are
//! transient, with `Retry-After` honoured; 503 or 507 with a body `{"code": "capacity"}` is
//! capacity; any other status is permanent, with the endpoint's `detail`, `message` or
//! `title` (or its text), cut at 500 characters. Whatever the endpoint sends back, the
//! runner's secrets (`BERTH_RUNNER_TOKEN`, …) and the signing secret are replaced by
//! `<redacted>` before the text reaches an error or a log: an endpoint that echoes the
//! request body leaks nothing. Redirects are not followed.
//!
//! # Listings
//!
//! Reconciliation destroys what `list` returns when its lease ended, so a listing is read
//! strictly, one item at a time: an item without `tenant`, of another tenant, or carrying
//! another `installation_id` is left out, and so is a malformed item (no `id`, no
//! `lease_id`, wrong types) — one bad item never hides the good ones nor fails the listing.
//! Every listing that left items out says so in one warning with the counts, and the counts
//! add up in [`Http::skipped`]. Items without `installation_id` (endpoints written before it
//! existed) are kept: see "Ownership" in the crate docs for why that is safe.
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
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// This installation's id, sent with every create, destroy and list.
    installation_id: Option<String>,
    /// List items left out since the account was built, by reason.
    skipped: SkipCounters,
}

/// List items an `http` account left out of its listings, by reason (see "Listings" in the
/// module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Items without a `tenant`.
    pub no_tenant: u64,
    /// Items of another tenant than the one asked for.
    pub other_tenant: u64,
    /// Items carrying another installation's id.
    pub other_installation: u64,
    /// Items that are not a runner (no `id` or `lease_id`, wrong types, an empty `id`).
    pub malformed: u64,
}

impl Skipped {
    fn total(&self) -> u64 {
        self.no_tenant + self.other_tenant + self.other_installation + self.malformed
    }
}

#[derive(Debug, Default)]
struct SkipCounters {
    no_tenant: AtomicU64,
    other_tenant: AtomicU64,
    other_installation: AtomicU64,
    malformed: AtomicU64,
}

impl SkipCounters {
    fn add(&self, skipped: &Skipped) {
        self.no_tenant
            .fetch_add(skipped.no_tenant, Ordering::Relaxed);
        self.other_tenant
            .fetch_add(skipped.other_tenant, Ordering::Relaxed);
        self.other_installation
            .fetch_add(skipped.other_installation, Ordering::Relaxed);
        self.malformed
            .fetch_add(skipped.malformed, Ordering::Relaxed);
    }

    fn get(&self) -> Skipped {
        Skipped {
            no_tenant: self.no_tenant.load(Ordering::Relaxed),
            other_tenant: self.other_tenant.load(Ordering::Relaxed),
            other_installation: self.other_installation.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
        }
    }
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

/// A runner as an endpoint may return it: only `id` is required; on create the tenant and
/// lease default to the request's (a list item needs both).
#[derive(Debug, Deserialize)]
struct WireRunner {
    id: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    installation_id: Option<String>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    ready: bool,
}

/// A listing, its items still unread: each is parsed on its own, so one bad item is skipped
/// rather than failing the listing.
#[derive(Debug, Deserialize)]
struct WireList {
    items: Vec<Value>,
}

/// The body of `create`: the spec, and who asks.
#[derive(Serialize)]
struct CreateBody<'a> {
    #[serde(flatten)]
    spec: &'a RunnerSpec,
    installation_id: Option<&'a str>,
}

/// The body of `list`.
#[derive(Serialize)]
struct ListBody<'a> {
    tenant: &'a str,
    installation_id: Option<&'a str>,
}

/// The body of `destroy`: the runner, and who asks.
#[derive(Serialize)]
struct DestroyBody<'a> {
    #[serde(flatten)]
    runner: &'a RunnerRef,
    installation_id: Option<&'a str>,
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
            installation_id: env.installation_id.clone().filter(|id| !id.is_empty()),
            skipped: SkipCounters::default(),
        })
    }

    /// List items this account left out of its listings so far, by reason.
    pub fn skipped(&self) -> Skipped {
        self.skipped.get()
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
        // The request target as the endpoint sees it on the request line (origin form).
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let signature = self
            .secret
            .sign_request(&id, timestamp, "POST", &target, &bytes);
        let response = self
            .client
            .post(url)
            .timeout(self.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(signing::HEADER_ID, id)
            .header(signing::HEADER_TIMESTAMP, timestamp.to_string())
            .header(signing::HEADER_REQUEST_SIGNATURE, signature)
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

    /// Maps a non-2xx answer to an error, scrubbing the signing secret and `secrets` (the
    /// runner's, on a create) should the endpoint echo them.
    fn answer_error(&self, operation: &str, answer: &Answer, secrets: &[&str]) -> Error {
        answer_error(operation, answer).map_message(|message| {
            let mut secrets = secrets.to_vec();
            secrets.push(&self.secret_text);
            crate::redact(&message, &secrets)
        })
    }

    async fn create_runner(&self, spec: &RunnerSpec, secrets: &[&str]) -> Result<Runner, Error> {
        let body = CreateBody {
            spec,
            installation_id: self.installation_id.as_deref(),
        };
        match self.post("create", &body).await? {
            Ok(body) => {
                let runner = Self::parse::<WireRunner>("create", &body)?;
                if !self.owns(runner.installation_id.as_deref()) {
                    return Err(Error::Permanent(
                        "http provider create: the endpoint returned a runner of another \
                         installation"
                            .to_string(),
                    ));
                }
                runner.into_runner("create", &spec.tenant, Some(&spec.lease_id))
            }
            Err(answer) => Err(self.answer_error("create", &answer, secrets)),
        }
    }

    /// Whether a runner marked with `installation_id` is this installation's (see
    /// "Ownership" in the crate docs).
    fn owns(&self, installation_id: Option<&str>) -> bool {
        match installation_id {
            None | Some("") => true,
            Some(id) => self.installation_id.as_deref() == Some(id),
        }
    }

    /// Reads a listing item by item, keeping what is `tenant`'s and this installation's and
    /// counting what is left out (see "Listings" in the module docs).
    fn read_listing(&self, tenant: &str, items: Vec<Value>) -> (Vec<Runner>, Skipped) {
        let mut runners = Vec::with_capacity(items.len());
        let mut skipped = Skipped::default();
        for item in items {
            let Ok(item) = serde_json::from_value::<WireRunner>(item) else {
                skipped.malformed += 1;
                continue;
            };
            match item.tenant.as_deref() {
                None | Some("") => {
                    skipped.no_tenant += 1;
                    continue;
                }
                Some(theirs) if theirs != tenant => {
                    skipped.other_tenant += 1;
                    continue;
                }
                Some(_) => {}
            }
            if !self.owns(item.installation_id.as_deref()) {
                skipped.other_installation += 1;
                continue;
            }
            match item.into_runner("list", tenant, None) {
                Ok(runner) => runners.push(runner),
                Err(_) => skipped.malformed += 1,
            }
        }
        (runners, skipped)
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
        let runner_lease = match (self.lease_id.filter(|got| !got.is_empty()), lease_id) {
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
        let secrets = spec.secrets();
        // Transport errors never carry a body, but nothing about the runner's secrets is left
        // to chance: every message of a create is scrubbed.
        self.create_runner(spec, &secrets)
            .await
            .map_err(|error| error.redacted(&secrets))
    }

    async fn destroy(&self, runner: &RunnerRef) -> Result<(), Error> {
        let body = DestroyBody {
            runner,
            installation_id: self.installation_id.as_deref(),
        };
        match self.post("destroy", &body).await? {
            Ok(_) => Ok(()),
            Err(answer) if answer.status == StatusCode::NOT_FOUND => Ok(()),
            Err(answer) => Err(self.answer_error("destroy", &answer, &[])),
        }
    }

    async fn list(&self, tenant: &str) -> Result<Vec<Runner>, Error> {
        let request = ListBody {
            tenant,
            installation_id: self.installation_id.as_deref(),
        };
        let body = match self.post("list", &request).await? {
            Ok(body) => body,
            Err(answer) => return Err(self.answer_error("list", &answer, &[])),
        };
        let list: WireList = Self::parse("list", &body)?;
        let (runners, skipped) = self.read_listing(tenant, list.items);
        if skipped.total() > 0 {
            self.skipped.add(&skipped);
            tracing::warn!(
                tenant,
                kept = runners.len(),
                no_tenant = skipped.no_tenant,
                other_tenant = skipped.other_tenant,
                other_installation = skipped.other_installation,
                malformed = skipped.malformed,
                "http provider list: items left out of the listing (reconciliation never \
                 touches them; fix the endpoint to list only this tenant's runners)"
            );
        }
        Ok(runners)
    }

    async fn price(&self, machine_type: &str, region: Option<&str>) -> Result<Option<i64>, Error> {
        let request = json!({ "machine_type": machine_type, "region": region });
        let body = match self.post("price", &request).await? {
            Ok(body) => body,
            Err(answer) => return Err(self.answer_error("price", &answer, &[])),
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

    /// The worked example of providers/README.md is a correctly signed request, and the
    /// body it shows is what `list` sends.
    #[test]
    fn readme_example_signature_is_correct() {
        let readme = include_str!("../README.md");
        let secret = "whsec_YmVydGgtc3RhbmRhcmQtd2ViaG9va3MtdGVzdC1rZXk=";
        let installation = "7c1e9f0a4b2d4e6f8a0b1c2d3e4f5a6b";
        let body = serde_json::to_vec(&ListBody {
            tenant: "acme",
            installation_id: Some(installation),
        })
        .unwrap();
        let signature = Secret::parse(secret).unwrap().sign_request(
            "msg_2Yb7cQ0rWn4tKx9LmP3sVd8eHf1",
            1767225600,
            "POST",
            "/berth/list",
            &body,
        );
        assert!(readme.contains(secret));
        assert!(
            readme.contains(std::str::from_utf8(&body).unwrap()),
            "README lacks the body {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            readme.contains(&format!("berth-signature: {signature}")),
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
