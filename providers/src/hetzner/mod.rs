//! The `hetzner` provider: runners are Hetzner Cloud servers.
//!
//! Every server berth makes is named `berth-<lease id>` (lowercase, other characters as `-`,
//! at most 63 characters: a valid RFC 1123 hostname) and carries the labels
//! `managed-by=berth`, `berth-tenant=<tenant>`, `berth-lease=<lease id>` and
//! `berth-installation=<installation id>` (plus the pool's labels, e.g. `berth-pool`). So:
//!
//! - `create` first looks for a server with the lease's labels and returns it if there is one.
//!   A name collision (`uniqueness_error`: a concurrent or retried create won) ends in a
//!   lookup by the exact name (`GET /servers?name=`), which also finds a server the label
//!   index does not show yet; a server of that name that is not this lease's is never used,
//!   and a lookup that fails or finds nothing is a transient error, so a create never reports
//!   failure for a server that exists. A lease never gets two servers.
//! - After the `POST`, `create` polls the create action (`GET /actions/{id}`) until `success`
//!   or `error`, for at most `action_timeout_ms`. An `error` deletes the failed server and
//!   fails the create at once with the action's message — transient, capacity or permanent
//!   by its code, as API errors are — instead of waiting for berth's ready timeout. An action
//!   still running at the deadline returns the runner: the server exists, and the runner's
//!   callback (or berth's ready timeout) decides. A later create of the same lease (the broker
//!   retrying after its own timeout) looks at the remembered action once more.
//! - `destroy` reads the server by id first and deletes it only if its labels name this
//!   tenant and lease and no other installation; otherwise (an id that is not this lease's
//!   server) it looks for the lease's server by its labels. When the broker never learnt the
//!   id, it goes by the labels at once. `404 not_found` is success.
//! - `list` pages through `label_selector=berth-tenant==<tenant>,managed-by==berth` and keeps
//!   the servers of this installation, or of none (see "Ownership" in the crate docs).
//! - `price` reads `GET /server_types?name=<type>` and turns the decimal price string into
//!   integer micros without floating point, rounding partial micros up.
//!
//! Servers boot and then call berth back, so runners are never ready at create
//! (`Runner::ready = false`). The address is the public IPv4; a server without one is
//! reached at `<prefix>::1`, the address Hetzner configures on a server from its IPv6 /64
//! (the API's `ipv6.ip` is the network, `2001:db8::/64`; the network itself stays in the
//! metadata as `ipv6`).
//!
//! # Label values
//!
//! berth allows tenant and pool names ending in `-`, which Hetzner refuses as label values
//! (a value must start and end alphanumeric). Rejecting them would leave such a tenant unable
//! to use Hetzner at all — its name is its identity and cannot change — so label values are
//! mapped ([`label_value`]): a valid value is used as it is (so servers of earlier builds keep
//! matching), any other becomes `<readable part>_<16 hex digits of SHA-256 of the value>`,
//! e.g. `acme-` → `acme_5a1f…`. Tenant names never contain `_`, so a mapped tenant never
//! equals another tenant's name. Label *keys* are berth's own and are checked, not mapped.
//!
//! # Rate limits
//!
//! Every request draws on the project's budget (`hetzner/budget.rs`), shared by every account
//! of this process with the same token and base URL: after a 429, or when the budget runs low, a
//! request waits for *one request's worth* of refill (derived from `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset`, or `Retry-After` when given), never for the
//! full reset. Creates and destroys go before listings and price lookups.
//!
//! # Errors and retries
//!
//! The API's `{"error": {"code", "message"}}` is mapped on its `code`: rate limits, conflicts,
//! locks, timeouts, maintenance and 5xx are transient; `resource_unavailable`,
//! `placement_error` and `resource_limit_exceeded` are capacity; other 4xx are permanent. The
//! message carries the code, the HTTP status and the `X-Correlation-Id`, never the token nor
//! the runner's secrets (an API message echoing `user_data` is redacted).
//! Within one call a transient failure is retried up to `max_retries` times, waiting as the
//! budget or the API asks (`Retry-After`) or 250 ms doubling, unless the wait would exceed
//! `max_retry_wait_ms`: then the error, with that wait as its `retry_after`, goes back to the
//! broker, which schedules the retry itself.
//!
//! # Config (kind `hetzner`; unknown fields rejected; since 0.1)
//!
//! | field | meaning | default |
//! |---|---|---|
//! | `base_url` | API base URL | `https://api.hetzner.cloud/v1` |
//! | `location` | location when the pool names no region (`fsn1`, `nbg1`, `hel1`, …) | Hetzner's choice |
//! | `image` | image when the pool names none (`ubuntu-24.04`) | none: the pool must name one |
//! | `ssh_keys` | SSH key ids (numbers) or names (strings) | `[]` |
//! | `user_data` | cloud-init template; `{{BERTH_LEASE_ID}}`, `{{BERTH_CALLBACK_URL}}`, `{{BERTH_RUNNER_TOKEN}}`, `{{BERTH_GITHUB_JITCONFIG}}` (empty unless the lease has a GitHub registration) are filled from the runner's environment | none |
//! | `firewall_ids` | firewalls to attach | `[]` |
//! | `request_timeout_ms` | timeout of one API request | 30000 |
//! | `price` | `gross` (incl. VAT) or `net` prices | `gross` |
//! | `max_retries` | in-call retries of transient failures | 3 |
//! | `max_retry_wait_ms` | longest in-call wait before a retry | 5000 |
//! | `action_timeout_ms` | longest wait for the create action to end (since 0.2); keep it below berth's `--provider-timeout` (2 min) | 90000 |
//!
//! Credentials: `{"token": "<API token>"}` (read-write token of the project).

mod api;
mod budget;
mod names;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;
use url::Url;

use crate::{
    Account, ConfigError, Environment, Error, Provider, Runner, RunnerRef, RunnerSpec, client, net,
    settings,
};
use api::{
    Action, ActionReply, ApiError, CreateReply, Failure, Server, ServerList, ServerReply,
    ServerTypes, classify,
};
use budget::{Admission, Budget, Priority};
use names::render_user_data;
pub use names::{
    decimal_to_micros, ipv6_host, label_value, server_name, valid_label_key, valid_label_value,
};

/// The public API.
pub const DEFAULT_BASE_URL: &str = "https://api.hetzner.cloud/v1";
/// Label every berth server carries.
pub const LABEL_MANAGED_BY: &str = "managed-by";
/// Label holding the tenant's name (as a [`label_value`]).
pub const LABEL_TENANT: &str = "berth-tenant";
/// Label holding the lease id.
pub const LABEL_LEASE: &str = "berth-lease";
/// Label holding the installation id (see "Ownership" in the crate docs). Since 0.2.
pub const LABEL_INSTALLATION: &str = "berth-installation";
/// The labels only berth sets.
const RESERVED_LABELS: [&str; 4] = [
    LABEL_MANAGED_BY,
    LABEL_TENANT,
    LABEL_LEASE,
    LABEL_INSTALLATION,
];
/// The largest page the API serves.
const PER_PAGE: u32 = 50;
/// A bound on pages followed by `list` (50 000 servers), so a misbehaving API cannot loop us.
const MAX_PAGES: u32 = 1000;
/// Hetzner's limit on `user_data`.
const MAX_USER_DATA: usize = 32 * 1024;
/// A bound on response bodies.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// The first in-call backoff when the API gives no hint; it doubles per retry.
const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// The first look at a create action; servers take seconds to create, so not at once.
const ACTION_POLL_FIRST: Duration = Duration::from_millis(500);
/// The longest pause between looks at a create action.
const ACTION_POLL_MAX: Duration = Duration::from_secs(5);
/// How many create actions an account remembers for leases whose create may be retried; past
/// it the memory is dropped (a retried create then trusts the server it finds).
const MAX_REMEMBERED_ACTIONS: usize = 4096;

/// The settings of one `hetzner` account (see the module docs for the table).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// API base URL. Default [`DEFAULT_BASE_URL`]. Since 0.1.
    pub base_url: String,
    /// Location used when the pool names no region. Default: Hetzner's choice. Since 0.1.
    pub location: Option<String>,
    /// Image used when the pool names none. Default none. Since 0.1.
    pub image: Option<String>,
    /// SSH keys, by id or name. Default empty. Since 0.1.
    pub ssh_keys: Vec<SshKey>,
    /// cloud-init template with `{{BERTH_…}}` placeholders. Default none. Since 0.1.
    pub user_data: Option<String>,
    /// Firewalls to attach. Default empty. Since 0.1.
    pub firewall_ids: Vec<u64>,
    /// Timeout of one API request in milliseconds. Default 30000. Since 0.1.
    pub request_timeout_ms: u64,
    /// Which price `price` reports. Default `gross`. Since 0.1.
    pub price: PriceKind,
    /// In-call retries of transient failures. Default 3. Since 0.1.
    pub max_retries: u32,
    /// Longest in-call wait before a retry, in milliseconds; a longer wait is left to the
    /// broker. Default 5000. Since 0.1.
    pub max_retry_wait_ms: u64,
    /// Longest wait for a create action to end, in milliseconds; keep it below berth's
    /// `--provider-timeout`, which bounds the whole create. Default 90000. Since 0.2.
    pub action_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base_url: DEFAULT_BASE_URL.to_string(),
            location: None,
            image: None,
            ssh_keys: Vec::new(),
            user_data: None,
            firewall_ids: Vec::new(),
            request_timeout_ms: 30_000,
            price: PriceKind::Gross,
            max_retries: 3,
            max_retry_wait_ms: 5_000,
            action_timeout_ms: 90_000,
        }
    }
}

/// An SSH key, by id or by name, as the API takes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SshKey {
    /// A key id.
    Id(u64),
    /// A key name.
    Name(String),
}

/// Which of Hetzner's prices to report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PriceKind {
    /// Including VAT.
    #[default]
    Gross,
    /// Excluding VAT.
    Net,
}

/// A `hetzner` account. Its `Debug` output redacts the token.
pub struct Hetzner {
    config: Config,
    /// `config.base_url`, parsed, without a trailing slash in its path.
    base: Url,
    /// `Bearer <token>`, marked sensitive so that reqwest never prints it.
    authorization: HeaderValue,
    /// The token itself, only to scrub it from any message that might echo it.
    token: String,
    /// Allow a `base_url` on a private address (`env.allow_private_network`).
    allow_private: bool,
    /// Whether requests go through the operator's proxy, whose name is all the client's
    /// resolver sees: the target is then checked before each request.
    proxied: bool,
    client: reqwest::Client,
    /// The project's rate-limit budget, shared with every account of this process that uses
    /// the same token at the same base URL.
    budget: Arc<Budget>,
    /// This installation's id as a label value; `None` when the environment has none.
    installation: Option<String>,
    /// Lease id → the create action of its server, for a create the broker may retry before
    /// the action ended (its own timeout, a lost answer). Entries go when the action ends.
    actions: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Hetzner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hetzner")
            .field("base", &self.base.as_str())
            .field("config", &self.config)
            .field("token", &"<redacted>")
            .field("installation", &self.installation)
            .finish_non_exhaustive()
    }
}

/// One API request as [`Hetzner::request`] sends it.
struct Call<'a> {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<&'a Value>,
    /// Whose turn it is when the budget is short.
    priority: Priority,
    /// Values never to show in a message (the runner's secrets, on a create).
    secrets: &'a [&'a str],
}

impl<'a> Call<'a> {
    fn new(method: Method, path: impl Into<String>, priority: Priority) -> Self {
        Call {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            priority,
            secrets: &[],
        }
    }

    fn what(&self) -> String {
        format!("hetzner {} {}", self.method, self.path)
    }
}

impl Hetzner {
    /// Builds a Hetzner provider. Performs no I/O.
    ///
    /// # Errors
    ///
    /// An unparseable or private `base_url` (unless `env.allow_private_network`), a zero
    /// timeout, or a token that is not printable ASCII. Messages never contain the token.
    pub fn new(config: Config, token: &str, env: &Environment) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError(format!("invalid `hetzner` config: {message}"));
        let mut base =
            Url::parse(&config.base_url).map_err(|e| invalid(format!("`base_url`: {e}")))?;
        net::check_static(&base, env.allow_private_network)
            .map_err(|e| invalid(format!("`base_url`: {e}")))?;
        let path = base.path().trim_end_matches('/').to_string();
        base.set_path(&path);
        if config.request_timeout_ms == 0 {
            return Err(invalid("`request_timeout_ms` must be positive".to_string()));
        }
        if let Some(template) = &config.user_data
            && template.len() > MAX_USER_DATA
        {
            return Err(invalid(format!(
                "`user_data` is larger than {MAX_USER_DATA} bytes"
            )));
        }
        if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(ConfigError(
                "`hetzner` credentials: `token` must be printable ASCII without spaces".to_string(),
            ));
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                ConfigError(
                    "`hetzner` credentials: `token` is not a valid header value".to_string(),
                )
            })?;
        authorization.set_sensitive(true);
        Ok(Hetzner {
            budget: Budget::shared(base.as_str(), token),
            installation: env
                .installation_id
                .as_deref()
                .filter(|id| !id.is_empty())
                .map(label_value),
            actions: Mutex::new(HashMap::new()),
            config,
            base,
            authorization,
            token: token.to_string(),
            allow_private: env.allow_private_network,
            proxied: env.outbound_proxy.is_some(),
            client: client::shared(env),
        })
    }

    pub(crate) fn from_account(account: &Account, env: &Environment) -> Result<Self, ConfigError> {
        let token = settings::one_secret("hetzner", &account.credentials, "token")?;
        Hetzner::new(settings::config("hetzner", &account.config)?, &token, env)
    }

    /// Removes the token and `secrets` from a message, in case an upstream error echoes them.
    fn scrub(&self, message: String, secrets: &[&str]) -> String {
        let message = if self.token.is_empty() {
            message
        } else {
            message.replace(&self.token, "<redacted>")
        };
        crate::redact(&message, secrets)
    }

    fn url(&self, path: &str) -> Url {
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
    async fn request<T: DeserializeOwned>(&self, call: &Call<'_>) -> Result<T, Failure> {
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
    async fn send(&self, call: &Call<'_>) -> Result<Vec<u8>, Failure> {
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

    /// Servers matching `query` (a label selector or a name), all pages.
    async fn servers(
        &self,
        query: (&'static str, String),
        priority: Priority,
        secrets: &[&str],
    ) -> Result<Vec<Server>, Error> {
        let mut servers = Vec::new();
        let mut page: u64 = 1;
        for _ in 0..MAX_PAGES {
            let mut call = Call::new(Method::GET, "servers", priority);
            call.query = vec![
                query.clone(),
                ("per_page", PER_PAGE.to_string()),
                ("page", page.to_string()),
            ];
            call.secrets = secrets;
            let reply: ServerList = self.request(&call).await.map_err(Failure::into_error)?;
            servers.extend(reply.servers);
            match reply
                .meta
                .and_then(|meta| meta.pagination)
                .and_then(|p| p.next_page)
            {
                None => return Ok(servers),
                Some(next) if next > page => page = next,
                Some(next) => {
                    return Err(Error::Permanent(format!(
                        "hetzner GET servers: pagination went from page {page} to {next}"
                    )));
                }
            }
        }
        Err(Error::Permanent(format!(
            "hetzner GET servers: more than {MAX_PAGES} pages"
        )))
    }

    /// The servers of a lease that are this installation's (or no installation's).
    async fn servers_of_lease(
        &self,
        tenant: &str,
        lease_id: &str,
        secrets: &[&str],
    ) -> Result<Vec<Server>, Error> {
        let selector = format!(
            "{LABEL_TENANT}=={},{LABEL_LEASE}=={lease_id},{LABEL_MANAGED_BY}==berth",
            label_value(tenant)
        );
        let servers = self
            .servers(("label_selector", selector), Priority::Mutation, secrets)
            .await?;
        Ok(servers
            .into_iter()
            .filter(|server| self.owns(server, tenant, Some(lease_id)))
            .collect())
    }

    /// Whether `server` is berth's for `tenant` (and `lease_id`, when given), made by this
    /// installation or by none (see "Ownership" in the crate docs).
    fn owns(&self, server: &Server, tenant: &str, lease_id: Option<&str>) -> bool {
        let label = |key: &str| server.labels.get(key).map(String::as_str);
        let installation_ok = match (label(LABEL_INSTALLATION), self.installation.as_deref()) {
            (None | Some(""), _) => true,
            (Some(theirs), Some(ours)) => theirs == ours,
            (Some(_), None) => false,
        };
        label(LABEL_MANAGED_BY) == Some("berth")
            && label(LABEL_TENANT) == Some(label_value(tenant).as_str())
            && lease_id.is_none_or(|lease_id| label(LABEL_LEASE) == Some(lease_id))
            && installation_ok
    }

    /// One server by id; `None` when it does not exist (any more).
    async fn server(&self, id: &str) -> Result<Option<Server>, Error> {
        let call = Call::new(Method::GET, format!("servers/{id}"), Priority::Mutation);
        match self.request::<ServerReply>(&call).await {
            Ok(reply) => Ok(Some(reply.server)),
            Err(Failure::Api(api)) if api.code == "not_found" => Ok(None),
            Err(failure) => Err(failure.into_error()),
        }
    }

    /// Deletes one server; gone already is success.
    async fn delete(&self, id: &str) -> Result<(), Error> {
        let call = Call::new(Method::DELETE, format!("servers/{id}"), Priority::Mutation);
        match self.request::<Value>(&call).await {
            Ok(_) => Ok(()),
            Err(Failure::Api(api)) if api.code == "not_found" => Ok(()),
            Err(failure) => Err(failure.into_error()),
        }
    }

    /// The current state of an action; `None` when the API no longer knows it.
    async fn action(&self, id: u64) -> Result<Option<Action>, Error> {
        let call = Call::new(Method::GET, format!("actions/{id}"), Priority::Mutation);
        match self.request::<ActionReply>(&call).await {
            Ok(reply) => Ok(Some(reply.action)),
            Err(Failure::Api(api)) if api.code == "not_found" => Ok(None),
            Err(failure) => Err(failure.into_error()),
        }
    }

    fn remember_action(&self, lease_id: &str, action_id: u64) {
        let mut actions = self.actions.lock().unwrap_or_else(PoisonError::into_inner);
        if actions.len() >= MAX_REMEMBERED_ACTIONS {
            actions.clear();
        }
        actions.insert(lease_id.to_string(), action_id);
    }

    fn forget_action(&self, lease_id: &str) {
        self.actions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(lease_id);
    }

    fn remembered_action(&self, lease_id: &str) -> Option<u64> {
        self.actions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(lease_id)
            .copied()
    }

    /// Waits for the create action of a new server to end, within `action_timeout_ms`. An
    /// `error` deletes the server and fails the create; a deadline that passes returns the
    /// runner (the server exists; its callback or the ready timeout decides).
    async fn settle(
        &self,
        spec: &RunnerSpec,
        server_id: u64,
        mut action: Action,
        runner: Runner,
    ) -> Result<Runner, Error> {
        self.remember_action(&spec.lease_id, action.id);
        let deadline = Instant::now() + Duration::from_millis(self.config.action_timeout_ms);
        let mut pause = ACTION_POLL_FIRST;
        // Bounded by the deadline: every pass sleeps (at least until the deadline) or returns.
        loop {
            match action.status.as_str() {
                "success" => {
                    self.forget_action(&spec.lease_id);
                    return Ok(runner);
                }
                "error" => return Err(self.failed_create(spec, server_id, &action).await),
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::info!(lease_id = %spec.lease_id, server_id, action_id = action.id, "hetzner create action still running at action_timeout_ms; the runner's callback decides");
                return Ok(runner);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(ACTION_POLL_MAX);
            match self.action(action.id).await {
                Ok(Some(next)) => action = next,
                // Actions are kept for a long time; one that vanished tells us nothing.
                Ok(None) => {
                    self.forget_action(&spec.lease_id);
                    return Ok(runner);
                }
                // Keep looking until the deadline: the server exists either way.
                Err(e) => {
                    tracing::debug!(lease_id = %spec.lease_id, action_id = action.id, error = %e, "reading a hetzner create action failed");
                }
            }
        }
    }

    /// The error of a create whose action ended in `error`, after deleting its server so
    /// that a retry starts afresh. If the delete fails too the error is transient: the
    /// retried create finds the server, looks at the remembered action and tries again.
    async fn failed_create(&self, spec: &RunnerSpec, server_id: u64, action: &Action) -> Error {
        let (code, message) = action
            .error
            .as_ref()
            .map(|e| (e.code.as_str(), e.message.as_str()))
            .unwrap_or(("unknown", ""));
        let code = if code.is_empty() { "unknown" } else { code };
        let text = format!(
            "hetzner create_server action {} of server {server_id} failed: {code}: {}",
            action.id,
            settings::truncate(message, 500)
        );
        let text = self.scrub(text, &spec.secrets());
        tracing::warn!(lease_id = %spec.lease_id, server_id, error = %text, "hetzner create action failed; deleting the server");
        match self.delete(&server_id.to_string()).await {
            Ok(()) => {
                self.forget_action(&spec.lease_id);
                classify(code, None).error(text, None)
            }
            Err(delete) => Error::Transient {
                message: format!("{text}; deleting the failed server failed too: {delete}"),
                retry_after: None,
            },
        }
    }

    /// Returns a server found for a lease, unless its remembered create action ended in
    /// `error` (then the create fails as it would have at once).
    async fn adopt(&self, server: Server, spec: &RunnerSpec) -> Result<Runner, Error> {
        let server_id = server.id;
        let runner = server.into_runner(&spec.tenant, &spec.lease_id);
        let Some(action_id) = self.remembered_action(&spec.lease_id) else {
            return Ok(runner);
        };
        // One look only: the broker's timeout already ran out once on this create.
        match self.action(action_id).await {
            Ok(Some(action)) if action.status == "error" => {
                Err(self.failed_create(spec, server_id, &action).await)
            }
            Ok(Some(action)) if action.status == "running" => Ok(runner),
            Ok(_) => {
                self.forget_action(&spec.lease_id);
                Ok(runner)
            }
            Err(_) => Ok(runner),
        }
    }

    /// After `uniqueness_error` on create: the name is taken, most likely by this lease's
    /// server from a concurrent or retried create. Look it up by its exact name (the label
    /// index may not show it yet); it is used only if its labels say it is this lease's.
    async fn after_name_conflict(
        &self,
        spec: &RunnerSpec,
        conflict: ApiError,
    ) -> Result<Runner, Error> {
        let name = server_name(&spec.lease_id);
        let secrets = spec.secrets();
        let conflict = conflict.into_error().to_string();
        let retry = |why: String| Error::Transient {
            message: format!("{conflict}; {why}; the create is retried"),
            retry_after: Some(Duration::from_secs(1)),
        };
        let servers = match self
            .servers(("name", name.clone()), Priority::Mutation, &secrets)
            .await
        {
            Ok(servers) => servers,
            Err(e) => return Err(retry(format!("looking up the server `{name}` failed: {e}"))),
        };
        match servers.into_iter().find(|server| server.name == name) {
            Some(server) if self.owns(&server, &spec.tenant, Some(&spec.lease_id)) => {
                self.adopt(server, spec).await
            }
            Some(server) => Err(Error::Permanent(format!(
                "a server named `{name}` (id {}) exists and is not this lease's: berth neither \
                 uses nor deletes it ({conflict})",
                server.id
            ))),
            None => Err(retry(format!("no server named `{name}` is visible yet"))),
        }
    }

    fn create_body(&self, spec: &RunnerSpec) -> Result<Value, Error> {
        let image = spec
            .image
            .as_ref()
            .or(self.config.image.as_ref())
            .ok_or_else(|| {
                Error::Permanent(
                    "no image: set the pool's image or the account's `image`".to_string(),
                )
            })?;
        let mut labels = BTreeMap::new();
        for (key, value) in &spec.labels {
            if !valid_label_key(key) {
                return Err(Error::Permanent(format!(
                    "label `{}` breaks Hetzner's label rules (name: up to 63 of [A-Za-z0-9._-], \
                     alphanumeric at both ends; optional DNS prefix)",
                    settings::printable(key),
                )));
            }
            if RESERVED_LABELS.contains(&key.as_str()) {
                return Err(Error::Permanent(format!(
                    "label `{key}` is reserved for berth"
                )));
            }
            labels.insert(key.clone(), label_value(value));
        }
        labels.insert(LABEL_MANAGED_BY.to_string(), "berth".to_string());
        labels.insert(LABEL_TENANT.to_string(), label_value(&spec.tenant));
        labels.insert(LABEL_LEASE.to_string(), spec.lease_id.clone());
        if let Some(installation) = &self.installation {
            labels.insert(LABEL_INSTALLATION.to_string(), installation.clone());
        }

        let mut body = json!({
            "name": server_name(&spec.lease_id),
            "server_type": spec.machine_type,
            "image": image,
            "labels": labels,
            "start_after_create": true,
        });
        let location = spec.region.as_ref().or(self.config.location.as_ref());
        if let Some(location) = location {
            body["location"] = json!(location);
        }
        if !self.config.ssh_keys.is_empty() {
            body["ssh_keys"] = json!(self.config.ssh_keys);
        }
        if !self.config.firewall_ids.is_empty() {
            let firewalls: Vec<Value> = self
                .config
                .firewall_ids
                .iter()
                .map(|id| json!({"firewall": id}))
                .collect();
            body["firewalls"] = json!(firewalls);
        }
        if let Some(template) = &self.config.user_data {
            let user_data = render_user_data(template, spec);
            if user_data.len() > MAX_USER_DATA {
                return Err(Error::Permanent(format!(
                    "user_data is larger than {MAX_USER_DATA} bytes once filled in"
                )));
            }
            body["user_data"] = json!(user_data);
        }
        Ok(body)
    }

    async fn create_server(&self, spec: &RunnerSpec, secrets: &[&str]) -> Result<Runner, Error> {
        if spec.tenant.is_empty() {
            return Err(Error::Permanent("the tenant is empty".to_string()));
        }
        if spec.lease_id.is_empty() || !valid_label_value(&spec.lease_id) {
            return Err(Error::Permanent(format!(
                "lease id `{}` cannot be a Hetzner label value (up to 63 of [A-Za-z0-9._-], \
                 alphanumeric at both ends)",
                settings::printable(&spec.lease_id)
            )));
        }
        let body = self.create_body(spec)?;
        if let Some(existing) = self
            .servers_of_lease(&spec.tenant, &spec.lease_id, secrets)
            .await?
            .into_iter()
            .next()
        {
            return self.adopt(existing, spec).await;
        }
        let mut call = Call::new(Method::POST, "servers", Priority::Mutation);
        call.body = Some(&body);
        call.secrets = secrets;
        match self.request::<CreateReply>(&call).await {
            Ok(reply) => {
                let server_id = reply.server.id;
                tracing::info!(lease_id = %spec.lease_id, server_id, "hetzner server created");
                let runner = reply.server.into_runner(&spec.tenant, &spec.lease_id);
                match reply.action {
                    Some(action) => self.settle(spec, server_id, action, runner).await,
                    None => Ok(runner),
                }
            }
            // A concurrent or retried create of this lease won the name: use its server.
            Err(Failure::Api(api)) if api.code == "uniqueness_error" => {
                self.after_name_conflict(spec, api).await
            }
            Err(failure) => Err(failure.into_error()),
        }
    }
}

#[async_trait]
impl Provider for Hetzner {
    fn kind(&self) -> &'static str {
        "hetzner"
    }

    /// A listing shows every server carrying this installation's label (label selectors
    /// are exact), so a runner it does not show is gone.
    fn lists_every_runner(&self) -> bool {
        true
    }

    async fn create(&self, spec: &RunnerSpec) -> Result<Runner, Error> {
        let secrets = spec.secrets();
        // Every message is scrubbed where it is made; this is the last line of defence.
        self.create_server(spec, &secrets)
            .await
            .map_err(|error| error.redacted(&secrets))
    }

    async fn destroy(&self, runner: &RunnerRef) -> Result<(), Error> {
        if let Some(id) = runner.id.as_deref().filter(|id| !id.is_empty()) {
            if !id.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(Error::Permanent(format!(
                    "`{}` is not a Hetzner server id",
                    settings::printable(id)
                )));
            }
            // Re-read just before deleting: only a server that says it is this lease's goes.
            match self.server(id).await? {
                None => return Ok(()),
                Some(server) if self.owns(&server, &runner.tenant, Some(&runner.lease_id)) => {
                    return self.delete(id).await;
                }
                Some(_) => {
                    tracing::warn!(server_id = id, lease_id = %runner.lease_id, "hetzner server is not this lease's (its labels name another tenant, lease or installation); not deleting it, looking for the lease's server by its labels");
                }
            }
        }
        // A lease id no server could carry has no server to delete.
        if runner.tenant.is_empty() || !valid_label_value(&runner.lease_id) {
            return Ok(());
        }
        for server in self
            .servers_of_lease(&runner.tenant, &runner.lease_id, &[])
            .await?
        {
            self.delete(&server.id.to_string()).await?;
        }
        Ok(())
    }

    async fn list(&self, tenant: &str) -> Result<Vec<Runner>, Error> {
        if tenant.is_empty() {
            return Ok(Vec::new());
        }
        let selector = format!(
            "{LABEL_TENANT}=={},{LABEL_MANAGED_BY}==berth",
            label_value(tenant)
        );
        let servers = self
            .servers(("label_selector", selector), Priority::Background, &[])
            .await?;
        let total = servers.len();
        let runners: Vec<Runner> = servers
            .into_iter()
            .filter(|server| self.owns(server, tenant, None))
            .map(|server| server.into_runner(tenant, ""))
            .collect();
        if runners.len() < total {
            tracing::debug!(
                tenant,
                skipped = total - runners.len(),
                "hetzner servers of another installation left out of the listing"
            );
        }
        Ok(runners)
    }

    async fn price(&self, machine_type: &str, region: Option<&str>) -> Result<Option<i64>, Error> {
        let mut call = Call::new(Method::GET, "server_types", Priority::Background);
        call.query = vec![("name", machine_type.to_string())];
        let reply: ServerTypes = self.request(&call).await.map_err(Failure::into_error)?;
        let Some(server_type) = reply
            .server_types
            .into_iter()
            .find(|t| t.name == machine_type)
        else {
            return Ok(None);
        };
        let wanted = region.or(self.config.location.as_deref());
        let entry = match wanted {
            Some(location) => server_type
                .prices
                .into_iter()
                .find(|price| price.location == location),
            None => server_type.prices.into_iter().next(),
        };
        let Some(entry) = entry else { return Ok(None) };
        let text = match self.config.price {
            PriceKind::Gross => entry.price_hourly.gross,
            PriceKind::Net => entry.price_hourly.net,
        };
        decimal_to_micros(&text).map(Some).ok_or_else(|| {
            Error::Permanent(format!(
                "hetzner price `{}` of `{machine_type}` is not a decimal",
                settings::printable(&text)
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request URLs join the base path and the route with exactly one slash, whether or not
    /// the configured base has a path or a trailing slash.
    #[test]
    fn request_urls() {
        let env = Environment {
            allow_private_network: true,
            ..Environment::new("/nonexistent", "/nonexistent-runners")
        };
        for (base, want) in [
            ("http://127.0.0.1:9", "http://127.0.0.1:9/servers"),
            ("http://127.0.0.1:9/", "http://127.0.0.1:9/servers"),
            ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1/servers"),
            ("http://127.0.0.1:9/v1/", "http://127.0.0.1:9/v1/servers"),
        ] {
            let config = Config {
                base_url: base.to_string(),
                ..Config::default()
            };
            let hetzner = Hetzner::new(config, "token", &env).expect("valid config");
            assert_eq!(hetzner.url("/servers").as_str(), want, "{base}");
        }
    }
}
