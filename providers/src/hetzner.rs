//! The `hetzner` provider: runners are Hetzner Cloud servers.
//!
//! Every server berth makes carries the labels `managed-by=berth`, `berth-tenant=<tenant>` and
//! `berth-lease=<lease id>` (plus the pool's labels), and is named `berth-<lease id>` (lowercase,
//! other characters as `-`, at most 63 characters: a valid RFC 1123 hostname). So:
//!
//! - `create` first looks for a server with the lease's labels and returns it if there is one;
//!   a name collision (`uniqueness_error`, a concurrent or retried create) also ends in that
//!   lookup. A lease never gets two servers.
//! - `destroy` deletes by server id, or, when the broker never learnt the id, by the lease's
//!   labels. `404 not_found` is success.
//! - `list` pages through `label_selector=berth-tenant==<tenant>,managed-by==berth`.
//! - `price` reads `GET /server_types?name=<type>` and turns the decimal price string into
//!   integer micros without floating point, rounding partial micros up.
//!
//! Servers boot and then call berth back, so runners are never ready at create
//! (`Runner::ready = false`); the address is the public IPv4 (or the IPv6 /64 network when
//! the server has no IPv4).
//!
//! # Errors and retries
//!
//! The API's `{"error": {"code", "message"}}` is mapped on its `code`: rate limits, conflicts,
//! locks, timeouts, maintenance and 5xx are transient; `resource_unavailable`,
//! `placement_error` and `resource_limit_exceeded` are capacity; other 4xx are permanent. The
//! message carries the code, the HTTP status and the `X-Correlation-Id`, never the token.
//! Within one call a transient failure is retried up to `max_retries` times, waiting as the
//! API asks (`RateLimit-Reset`, `Retry-After`) or 250 ms doubling, unless the wait would
//! exceed `max_retry_wait_ms`: then the error (with its `retry_after`) goes back to the
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
//! | `user_data` | cloud-init template; `{{BERTH_LEASE_ID}}`, `{{BERTH_CALLBACK_URL}}`, `{{BERTH_RUNNER_TOKEN}}` are filled from the runner's environment | none |
//! | `firewall_ids` | firewalls to attach | `[]` |
//! | `request_timeout_ms` | timeout of one API request | 30000 |
//! | `price` | `gross` (incl. VAT) or `net` prices | `gross` |
//! | `max_retries` | in-call retries of transient failures | 3 |
//! | `max_retry_wait_ms` | longest in-call wait before a retry | 5000 |
//!
//! Credentials: `{"token": "<API token>"}` (read-write token of the project).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use crate::{
    Account, ConfigError, Environment, Error, Provider, Runner, RunnerRef, RunnerSpec, client, net,
    settings,
};

/// The public API.
pub const DEFAULT_BASE_URL: &str = "https://api.hetzner.cloud/v1";
/// Label every berth server carries.
pub const LABEL_MANAGED_BY: &str = "managed-by";
/// Label holding the tenant's name.
pub const LABEL_TENANT: &str = "berth-tenant";
/// Label holding the lease id.
pub const LABEL_LEASE: &str = "berth-lease";
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
/// The wait after a 429 without usable rate-limit headers ("back off at least 1 s").
const RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(1);

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
}

impl std::fmt::Debug for Hetzner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hetzner")
            .field("base", &self.base.as_str())
            .field("config", &self.config)
            .field("token", &"<redacted>")
            .finish()
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

    /// Removes the token from a message, in case an upstream error ever echoes it.
    fn scrub(&self, message: String) -> String {
        if self.token.is_empty() {
            message
        } else {
            message.replace(&self.token, "<redacted>")
        }
    }

    fn scrub_error(&self, error: Error) -> Error {
        match error {
            Error::Transient {
                message,
                retry_after,
            } => Error::Transient {
                message: self.scrub(message),
                retry_after,
            },
            Error::Permanent(message) => Error::Permanent(self.scrub(message)),
            Error::Capacity(message) => Error::Capacity(self.scrub(message)),
        }
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

    /// One API request with in-call retries. A `not_found` or `uniqueness_error` comes back as
    /// [`Failure::Api`] for the caller to interpret; other failures are already mapped. Every
    /// message is already scrubbed of the token (see [`Hetzner::send`]).
    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T, Failure> {
        let mut attempt = 0;
        loop {
            let failure = match self.send(method.clone(), path, query, body).await {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes).map_err(|e| {
                        Failure::Mapped(Error::Permanent(format!(
                            "hetzner {method} {path}: unexpected response: {e}"
                        )))
                    });
                }
                Err(failure) => failure,
            };
            let error = match failure {
                Failure::Api(api)
                    if matches!(api.code.as_str(), "not_found" | "uniqueness_error") =>
                {
                    return Err(Failure::Api(api));
                }
                Failure::Api(api) => api.into_error(),
                Failure::Mapped(error) => error,
            };
            let Error::Transient { retry_after, .. } = &error else {
                return Err(Failure::Mapped(error));
            };
            let wait = retry_after.unwrap_or(BASE_BACKOFF * 2u32.saturating_pow(attempt));
            if attempt >= self.config.max_retries
                || wait > Duration::from_millis(self.config.max_retry_wait_ms)
            {
                return Err(Failure::Mapped(error));
            }
            tracing::debug!(%method, path, attempt, wait_ms = wait.as_millis() as u64, %error, "retrying hetzner request");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Sends one request; returns the body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Vec<u8>, Failure> {
        let what = format!("hetzner {method} {path}");
        let url = self.url(path);
        if self.proxied {
            // The client's resolver sees only the proxy's name: judge the target here.
            client::guard(&what, &url, self.allow_private)
                .await
                .map_err(|e| Failure::Mapped(self.scrub_error(e)))?;
        }
        let mut request = self
            .client
            .request(method, url)
            .header(AUTHORIZATION, self.authorization.clone())
            .timeout(Duration::from_millis(self.config.request_timeout_ms));
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Mapped(self.scrub_error(client::transport_error(&what, &e))))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = client::read_body(&what, response, MAX_BODY)
            .await
            .map_err(|e| Failure::Mapped(self.scrub_error(e)))?;
        if status.is_success() {
            return Ok(bytes);
        }
        let mut api = ApiError::from_response(&what, status.as_u16(), &headers, &bytes);
        api.message = self.scrub(api.message);
        Err(Failure::Api(api))
    }

    /// Servers carrying every label of `selector`, all pages.
    async fn servers(&self, selector: &str) -> Result<Vec<Server>, Error> {
        let mut servers = Vec::new();
        let mut page: u64 = 1;
        for _ in 0..MAX_PAGES {
            let query = [
                ("label_selector", selector.to_string()),
                ("per_page", PER_PAGE.to_string()),
                ("page", page.to_string()),
            ];
            let reply: ServerList = self
                .request(Method::GET, "servers", &query, None)
                .await
                .map_err(Failure::into_error)?;
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

    async fn servers_of_lease(&self, tenant: &str, lease_id: &str) -> Result<Vec<Server>, Error> {
        self.servers(&format!(
            "{LABEL_TENANT}=={tenant},{LABEL_LEASE}=={lease_id},{LABEL_MANAGED_BY}==berth"
        ))
        .await
    }

    /// Deletes one server; gone already is success.
    async fn delete(&self, id: &str) -> Result<(), Error> {
        match self
            .request::<Value>(Method::DELETE, &format!("servers/{id}"), &[], None)
            .await
        {
            Ok(_) => Ok(()),
            Err(Failure::Api(api)) if api.code == "not_found" => Ok(()),
            Err(failure) => Err(failure.into_error()),
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
            if !valid_label_key(key) || !valid_label_value(value) {
                return Err(Error::Permanent(format!(
                    "label `{}={}` breaks Hetzner's label rules (name and value: up to 63 of \
                     [A-Za-z0-9._-], alphanumeric at both ends; optional DNS prefix)",
                    settings::printable(key),
                    settings::printable(value)
                )));
            }
            if [LABEL_MANAGED_BY, LABEL_TENANT, LABEL_LEASE].contains(&key.as_str()) {
                return Err(Error::Permanent(format!(
                    "label `{key}` is reserved for berth"
                )));
            }
            labels.insert(key.clone(), value.clone());
        }
        labels.insert(LABEL_MANAGED_BY.to_string(), "berth".to_string());
        labels.insert(LABEL_TENANT.to_string(), spec.tenant.clone());
        labels.insert(LABEL_LEASE.to_string(), spec.lease_id.clone());

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
}

/// The API's error answer, plus what we need to map and report it.
#[derive(Debug)]
struct ApiError {
    /// `"{method} {path}"`, for messages.
    what: String,
    status: u16,
    code: String,
    message: String,
    correlation_id: Option<String>,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn from_response(what: &str, status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            code: String,
            #[serde(default)]
            message: String,
        }
        let (code, message) = match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) => (envelope.error.code, envelope.error.message),
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                (String::new(), settings::truncate(text.trim(), 300))
            }
        };
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let correlation_id = header("x-correlation-id").map(|id| settings::truncate(id, 100));
        let retry_after = if status == 429 || code == "rate_limit_exceeded" {
            // RateLimit-Reset is the Unix second at which the budget is full again.
            let reset =
                header("ratelimit-reset").and_then(|reset| reset.trim().parse::<i64>().ok());
            let from_reset = reset.map(|reset| {
                let wait_ms = reset
                    .saturating_mul(1000)
                    .saturating_sub(client::now_ms())
                    .max(0);
                Duration::from_millis(wait_ms.unsigned_abs())
            });
            Some(
                from_reset
                    .or_else(|| client::retry_after(headers))
                    .unwrap_or(RATE_LIMIT_BACKOFF),
            )
        } else {
            client::retry_after(headers)
        };
        ApiError {
            what: what.to_string(),
            status,
            code,
            message: settings::truncate(&message, 500),
            correlation_id,
            retry_after,
        }
    }

    /// Maps the answer on its code (the stable part), then on its status.
    fn into_error(self) -> Error {
        let code = if self.code.is_empty() {
            "unknown"
        } else {
            self.code.as_str()
        };
        let mut message = format!(
            "{}: {code}: {} (HTTP {}",
            self.what, self.message, self.status
        );
        if let Some(id) = &self.correlation_id {
            message.push_str(&format!(", correlation id {id}"));
        }
        message.push(')');
        match code {
            "rate_limit_exceeded"
            | "conflict"
            | "locked"
            | "timeout"
            | "server_error"
            | "service_error"
            | "unavailable"
            | "maintenance"
            | "bad_gateway" => Error::Transient {
                message,
                retry_after: self.retry_after,
            },
            "resource_unavailable" | "placement_error" | "resource_limit_exceeded" => {
                Error::Capacity(message)
            }
            _ if self.status == 429 || self.status >= 500 => Error::Transient {
                message,
                retry_after: self.retry_after,
            },
            _ => Error::Permanent(message),
        }
    }
}

/// Why a request failed: an API error answer still to interpret, or an error already mapped.
#[derive(Debug)]
enum Failure {
    Api(ApiError),
    Mapped(Error),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Api(api) => api.into_error(),
            Failure::Mapped(error) => error,
        }
    }
}

/// A server as far as berth reads it. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct Server {
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    public_net: Option<PublicNet>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    server_type: Option<Named>,
    #[serde(default)]
    location: Option<Named>,
}

#[derive(Debug, Default, Deserialize)]
struct PublicNet {
    #[serde(default)]
    ipv4: Option<Address>,
    #[serde(default)]
    ipv6: Option<Address>,
}

#[derive(Debug, Deserialize)]
struct Address {
    ip: String,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ServerList {
    servers: Vec<Server>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    #[serde(default)]
    pagination: Option<Pagination>,
}

#[derive(Debug, Deserialize)]
struct Pagination {
    #[serde(default)]
    next_page: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CreateReply {
    server: Server,
}

#[derive(Debug, Deserialize)]
struct ServerTypes {
    server_types: Vec<ServerType>,
}

#[derive(Debug, Deserialize)]
struct ServerType {
    name: String,
    #[serde(default)]
    prices: Vec<LocationPrice>,
}

#[derive(Debug, Deserialize)]
struct LocationPrice {
    location: String,
    price_hourly: PricePair,
}

#[derive(Debug, Deserialize)]
struct PricePair {
    net: String,
    gross: String,
}

impl Server {
    fn into_runner(self, tenant: &str, lease_id: &str) -> Runner {
        let public_net = self.public_net.unwrap_or_default();
        let ipv4 = public_net.ipv4.map(|address| address.ip);
        let ipv6 = public_net.ipv6.map(|address| address.ip);
        let mut metadata = BTreeMap::from([
            ("name".to_string(), self.name),
            ("status".to_string(), self.status),
        ]);
        for (key, value) in [
            ("server_type", self.server_type.map(|named| named.name)),
            ("location", self.location.map(|named| named.name)),
            ("created", self.created),
            ("ipv6", ipv6.clone()),
        ] {
            if let Some(value) = value {
                metadata.insert(key.to_string(), value);
            }
        }
        Runner {
            id: self.id.to_string(),
            tenant: self
                .labels
                .get(LABEL_TENANT)
                .cloned()
                .unwrap_or_else(|| tenant.to_string()),
            lease_id: self
                .labels
                .get(LABEL_LEASE)
                .cloned()
                .unwrap_or_else(|| lease_id.to_string()),
            address: ipv4.or(ipv6),
            metadata,
            ready: false,
        }
    }
}

#[async_trait]
impl Provider for Hetzner {
    fn kind(&self) -> &'static str {
        "hetzner"
    }

    async fn create(&self, spec: &RunnerSpec) -> Result<Runner, Error> {
        for (what, value) in [("tenant", &spec.tenant), ("lease id", &spec.lease_id)] {
            if value.is_empty() || !valid_label_value(value) {
                return Err(Error::Permanent(format!(
                    "{what} `{}` cannot be a Hetzner label value (up to 63 of [A-Za-z0-9._-], \
                     alphanumeric at both ends)",
                    settings::printable(value)
                )));
            }
        }
        let body = self.create_body(spec)?;
        if let Some(existing) = self
            .servers_of_lease(&spec.tenant, &spec.lease_id)
            .await?
            .into_iter()
            .next()
        {
            return Ok(existing.into_runner(&spec.tenant, &spec.lease_id));
        }
        match self
            .request::<CreateReply>(Method::POST, "servers", &[], Some(&body))
            .await
        {
            Ok(reply) => {
                tracing::info!(lease_id = %spec.lease_id, server_id = reply.server.id, "hetzner server created");
                Ok(reply.server.into_runner(&spec.tenant, &spec.lease_id))
            }
            // A concurrent or retried create of this lease won the name: use its server.
            Err(Failure::Api(api)) if api.code == "uniqueness_error" => {
                match self
                    .servers_of_lease(&spec.tenant, &spec.lease_id)
                    .await?
                    .into_iter()
                    .next()
                {
                    Some(existing) => Ok(existing.into_runner(&spec.tenant, &spec.lease_id)),
                    None => Err(Failure::Api(api).into_error()),
                }
            }
            Err(failure) => Err(failure.into_error()),
        }
    }

    async fn destroy(&self, runner: &RunnerRef) -> Result<(), Error> {
        if let Some(id) = runner.id.as_deref().filter(|id| !id.is_empty()) {
            if !id.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(Error::Permanent(format!(
                    "`{}` is not a Hetzner server id",
                    settings::printable(id)
                )));
            }
            return self.delete(id).await;
        }
        // Nothing can carry labels that break the rules, so there is nothing to delete.
        if !valid_label_value(&runner.tenant) || !valid_label_value(&runner.lease_id) {
            return Ok(());
        }
        for server in self
            .servers_of_lease(&runner.tenant, &runner.lease_id)
            .await?
        {
            self.delete(&server.id.to_string()).await?;
        }
        Ok(())
    }

    async fn list(&self, tenant: &str) -> Result<Vec<Runner>, Error> {
        if tenant.is_empty() || !valid_label_value(tenant) {
            return Ok(Vec::new());
        }
        let servers = self
            .servers(&format!(
                "{LABEL_TENANT}=={tenant},{LABEL_MANAGED_BY}==berth"
            ))
            .await?;
        Ok(servers
            .into_iter()
            .map(|server| server.into_runner(tenant, ""))
            .collect())
    }

    async fn price(&self, machine_type: &str, region: Option<&str>) -> Result<Option<i64>, Error> {
        let query = [("name", machine_type.to_string())];
        let reply: ServerTypes = self
            .request(Method::GET, "server_types", &query, None)
            .await
            .map_err(Failure::into_error)?;
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

/// `berth-<lease id>` as an RFC 1123 hostname: lowercase `[a-z0-9-]`, at most 63 characters,
/// alphanumeric at both ends.
pub fn server_name(lease_id: &str) -> String {
    let mut name = String::from("berth-");
    name.extend(lease_id.chars().map(|c| {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() { c } else { '-' }
    }));
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

fn render_user_data(template: &str, spec: &RunnerSpec) -> String {
    let var = |name: &str| spec.env.get(name).map(String::as_str).unwrap_or_default();
    let lease_id = spec.env.get("BERTH_LEASE_ID").unwrap_or(&spec.lease_id);
    template
        .replace("{{BERTH_LEASE_ID}}", lease_id)
        .replace("{{BERTH_CALLBACK_URL}}", var("BERTH_CALLBACK_URL"))
        .replace("{{BERTH_RUNNER_TOKEN}}", var("BERTH_RUNNER_TOKEN"))
}

/// `[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?`: a label name, or a non-empty value.
fn valid_label_part(text: &str, max: usize) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A label value: empty, or a valid label part.
pub fn valid_label_value(value: &str) -> bool {
    value.is_empty() || valid_label_part(value, 63)
}

/// A label key: an optional DNS prefix (≤ 253 characters, not the reserved `hetzner.cloud`)
/// and `/`, then a name.
pub fn valid_label_key(key: &str) -> bool {
    match key.rsplit_once('/') {
        None => valid_label_part(key, 63),
        Some((prefix, name)) => {
            valid_label_part(name, 63)
                && valid_label_part(prefix, 253)
                && !prefix.contains('_')
                && prefix != "hetzner.cloud"
                && !prefix.ends_with(".hetzner.cloud")
        }
    }
}

/// Parses a non-negative decimal string (`"0.0071400000000000"`) into integer micro-units,
/// rounding any partial micro up. No floating point is involved. `None` if it is not such a
/// decimal or does not fit an `i64`.
pub fn decimal_to_micros(text: &str) -> Option<i64> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return None;
    }
    let mut micros: i64 = 0;
    for digit in whole.bytes() {
        micros = micros
            .checked_mul(10)?
            .checked_add(i64::from(digit - b'0'))?;
    }
    micros = micros.checked_mul(1_000_000)?;
    let mut scale = 100_000;
    for digit in fraction.bytes().take(6) {
        micros = micros.checked_add(i64::from(digit - b'0') * scale)?;
        scale /= 10;
    }
    if fraction.bytes().skip(6).any(|digit| digit != b'0') {
        micros = micros.checked_add(1)?;
    }
    Some(micros)
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

    /// Decimal strings become exact micros; partial micros round up; garbage is refused.
    #[test]
    fn decimal_prices() {
        assert_eq!(decimal_to_micros("0.0071400000000000"), Some(7_140));
        assert_eq!(decimal_to_micros("0.0060000000"), Some(6_000));
        assert_eq!(decimal_to_micros("4.5101000000000000"), Some(4_510_100));
        assert_eq!(decimal_to_micros("0.00000001"), Some(1));
        assert_eq!(decimal_to_micros("0.0000011"), Some(2));
        assert_eq!(decimal_to_micros("0.000001"), Some(1));
        assert_eq!(decimal_to_micros("12"), Some(12_000_000));
        assert_eq!(decimal_to_micros(".5"), Some(500_000));
        assert_eq!(decimal_to_micros("0"), Some(0));
        for bad in [
            "",
            ".",
            "-1.0",
            "1e-3",
            "1.2.3",
            "abc",
            "1,5",
            "99999999999999999999",
        ] {
            assert_eq!(decimal_to_micros(bad), None, "{bad:?}");
        }
    }

    /// Server names are valid hostnames for any lease id.
    #[test]
    fn server_names() {
        assert_eq!(server_name("lease_01JD0ZABC"), "berth-lease-01jd0zabc");
        let long = server_name(&"x".repeat(100));
        assert_eq!(long.len(), 63);
        assert_eq!(
            server_name(&format!("{}_", "y".repeat(56))),
            format!("berth-{}", "y".repeat(56))
        );
        let odd = server_name("Lease.é/1");
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{odd}"
        );
    }

    /// Label keys and values follow the documented rules.
    #[test]
    fn label_rules() {
        for good in [
            "env",
            "berth-lease",
            "a",
            "k8s.io/role",
            "example.com/x_y",
            "A9",
        ] {
            assert!(valid_label_key(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "has space",
            "hetzner.cloud/x",
            "a/b/",
            "/x",
            "ex_ample.com/x",
            &"k".repeat(64),
        ] {
            assert!(!valid_label_key(bad), "{bad}");
        }
        for good in ["", "acme", "lease_01", "v1.2-3"] {
            assert!(valid_label_value(good), "{good}");
        }
        for bad in ["a/b", "a:b", "a=b", "a,b", " a", "_a", &"v".repeat(64)] {
            assert!(!valid_label_value(bad), "{bad}");
        }
    }
}
