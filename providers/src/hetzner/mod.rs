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
mod call;
mod create;
mod names;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::{
    Account, ConfigError, Environment, Error, Provider, Runner, RunnerRef, RunnerSpec, client, net,
    settings,
};
use api::{Failure, Server, ServerList, ServerReply, ServerTypes};
use budget::{Budget, Priority};
use call::Call;
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
