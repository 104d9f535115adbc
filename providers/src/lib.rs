//! Where berth's runners come from.
//!
//! A [`Provider`] creates, destroys and lists the runners of one provider account of one
//! tenant. The broker never holds a provider call inside a durable object: it records intent,
//! commits, and runs the call in the background (see `broker::tenant`). That is why every
//! operation here must be safe to repeat:
//!
//! - [`Provider::create`] is idempotent by lease id: calling it twice for one lease returns the
//!   same runner and never starts a second one;
//! - [`Provider::destroy`] is idempotent: a runner that is already gone is a success, and a
//!   runner whose provider id is unknown (the broker crashed between the provider's create and
//!   its own commit) is found by its lease id;
//! - [`Provider::list`] returns everything *this installation* of berth made for a tenant, so
//!   reconciliation can destroy runners that no live lease owns.
//!
//! # Ownership: the installation id
//!
//! Two berths may share a provider account: staging and production in one Hetzner project, an
//! old and a new host during a move, two servers with one runners directory. Both may have a
//! tenant called `acme`, so the tenant alone does not prove that a runner is ours. Every data
//! directory therefore has an **installation id**, made once and kept in its directory
//! database (`berth serve` logs it at start), handed to providers in
//! [`Environment::installation_id`]. Every runner berth creates carries it (a Hetzner label, a
//! field of the `http` create body, the `process` marker and record, a `fake` runner's
//! metadata), and:
//!
//! - `list(tenant)` returns only runners of `tenant` that carry this installation's id, or
//!   carry none at all (see below); never a runner carrying another installation's id;
//! - `destroy` by lease finds only such runners, and a provider that can read a runner's
//!   labels before deleting it (`hetzner`) deletes nothing that carries another
//!   installation's id, tenant or lease.
//!
//! **Runners without an installation id** (made by builds before installation ids existed,
//! or by a tool whose [`Environment`] has none) are still listed and destroyable. That is safe
//! because of how the broker uses a listing: it destroys a listed runner only when the
//! runner's lease id is one of its own leases *that has ended* (`broker::tenant`,
//! reconciliation), and lease ids are unique per installation (creation time in ms, a
//! counter and 32 random bits). Another installation's unlabelled runner has a lease id this
//! berth never wrote, so it is reported and left alone; our own unlabelled runner of an ended
//! lease is destroyed, so runners made before an upgrade do not leak. What is never safe —
//! destroying a runner merely because it is listed — the broker does not do.
//!
//! With `installation_id: None` a provider behaves as builds before installation ids: it
//! stamps nothing on what it creates, and sees only runners without an id.
//! Implementations, in the order they are usually met:
//!
//! - [`fake`]: in memory (optionally mirrored to a state directory), with configurable boot
//!   delay and failure rates; for tests and benchmarks;
//! - [`process`]: runners are local process groups; the embedded default;
//! - [`hetzner`]: servers in Hetzner Cloud;
//! - [`http`]: the operator's own endpoint, JSON over HTTP, signed like berth's webhooks.
//!
//! [`build`] turns a provider account (kind, non-secret config, decrypted credentials) into a
//! `Arc<dyn Provider>`; it performs no I/O, so the API also uses it to validate an account
//! before storing it.
//!
//! Two helpers live here too because the providers need them first and the broker shares
//! them:
//!
//! - [`signing`]: Standard Webhooks v1 signatures (the `http` provider signs its requests with
//!   it; berth's outbound webhooks sign their deliveries with it);
//! - [`net`]: refusing URLs that point into private networks (SSRF guard).
//!
//! [`exits`] is how a provider reports a runner whose process ended (the server routes each
//! report to the tenant's object); [`logs`] is what [`Provider::logs`] answers.
//!
//! # Configuration
//!
//! Every kind rejects unknown fields in its config and credentials, and its error messages
//! name fields, never the values of credentials. A `null` config or credentials is the same
//! as an empty object.

pub mod exits;
pub mod logs;
pub mod net;
pub mod signing;

pub mod fake;
pub mod github;
pub mod hetzner;
pub mod http;
pub mod process;

mod client;
mod settings;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What the broker asks a provider to create for one lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerSpec {
    /// The tenant's name. Every runner carries it as a label (`berth-tenant`).
    pub tenant: String,
    /// The lease id (`lease_…`). Every runner carries it as its name or label (`berth-lease`),
    /// and `create` is idempotent by it.
    pub lease_id: String,
    /// The pool the lease was requested from.
    pub pool: String,
    /// Provider-specific machine type (`cpx22`, `small`, …).
    pub machine_type: String,
    /// Image to boot, where the provider has images.
    pub image: Option<String>,
    /// Region or location, where the provider has them.
    pub region: Option<String>,
    /// The argv a `process` runner runs. Other providers may ignore it.
    pub command: Vec<String>,
    /// Labels from the pool, to be attached to the runner where the provider has labels.
    pub labels: BTreeMap<String, String>,
    /// Environment handed to the runner: `BERTH_LEASE_ID`, `BERTH_CALLBACK_URL`,
    /// `BERTH_RUNNER_TOKEN`. It holds a secret (the runner token): never log it.
    pub env: BTreeMap<String, String>,
}

/// Variables of [`RunnerSpec::env`] that are not secret; every other value is treated as one.
const PUBLIC_VARS: [&str; 4] = [
    "BERTH_LEASE_ID",
    "BERTH_TENANT",
    "BERTH_POOL",
    "BERTH_CALLBACK_URL",
];

impl RunnerSpec {
    /// The values of the runner's environment that must never appear in an error or a log:
    /// every variable but the lease id, tenant, pool and callback URL (the runner token, a
    /// GitHub just-in-time config, whatever a later build adds).
    pub fn secrets(&self) -> Vec<&str> {
        self.env
            .iter()
            .filter(|(name, value)| !PUBLIC_VARS.contains(&name.as_str()) && !value.is_empty())
            .map(|(_, value)| value.as_str())
            .collect()
    }
}

/// Replaces every occurrence of each secret in `text` with `<redacted>`, also in the forms a
/// JSON encoder may have escaped it to (an endpoint that echoes a request body echoes JSON).
pub(crate) fn redact(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        text = text.replace(secret, "<redacted>");
        let escaped = serde_json::to_string(secret).unwrap_or_default();
        let escaped = escaped.trim_matches('"');
        if escaped != *secret && !escaped.is_empty() {
            text = text.replace(escaped, "<redacted>");
        }
        // `/` may come back escaped as `\/` (PHP, some JSON encoders): base64 has slashes.
        let slashed = secret.replace('/', "\\/");
        if slashed != *secret {
            text = text.replace(&slashed, "<redacted>");
        }
    }
    text
}

/// A runner as a provider knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    /// The provider's own id for the runner (a server id, a directory name, …).
    pub id: String,
    /// The tenant label the runner carries.
    pub tenant: String,
    /// The lease label the runner carries.
    pub lease_id: String,
    /// How to reach the runner (an IP address, a host name, a work directory), if known.
    pub address: Option<String>,
    /// Provider-specific facts worth showing (status, location, pid, …). No secrets.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// `true` when the provider itself knows the runner is ready for work; `false` when the
    /// runner will say so through berth's runner callback.
    pub ready: bool,
}

/// Names a runner to destroy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRef {
    /// The tenant the runner belongs to.
    pub tenant: String,
    /// The lease the runner was created for.
    pub lease_id: String,
    /// The provider's id, when the broker recorded it. `None` when the broker crashed between
    /// the provider's create and its own commit: the provider then finds the runner by
    /// `lease_id` (and destroys nothing if there is none).
    pub id: Option<String>,
}

/// How a provider call failed, and so whether the broker should try again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A retry may help: a timeout, a 5xx, a rate limit, a lost connection.
    #[error("transient provider error: {message}")]
    Transient {
        /// What went wrong, for people. Never contains credentials.
        message: String,
        /// How long the provider asked us to wait (e.g. from a rate-limit header).
        retry_after: Option<std::time::Duration>,
    },
    /// A retry will not help until someone changes something: bad credentials, invalid
    /// input, an unknown machine type.
    #[error("provider error: {0}")]
    Permanent(String),
    /// The provider has no capacity for this machine type right now.
    #[error("provider out of capacity: {0}")]
    Capacity(String),
}

impl Error {
    /// A transient error with no retry hint.
    pub fn transient(message: impl Into<String>) -> Self {
        Error::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    /// Whether trying the same call again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    /// The same error with every secret of `secrets` replaced by `<redacted>` in its message.
    pub(crate) fn redacted(self, secrets: &[&str]) -> Error {
        self.map_message(|message| redact(&message, secrets))
    }

    /// The same error, transient, with `retry_after` set to `wait` (a capacity or permanent
    /// error is returned as it is: no wait makes it succeed).
    pub(crate) fn with_retry_after(self, wait: std::time::Duration) -> Error {
        match self {
            Error::Transient { message, .. } => Error::Transient {
                message,
                retry_after: Some(wait),
            },
            other => other,
        }
    }

    /// The same error with its message passed through `f`.
    pub(crate) fn map_message(self, f: impl FnOnce(String) -> String) -> Error {
        match self {
            Error::Transient {
                message,
                retry_after,
            } => Error::Transient {
                message: f(message),
                retry_after,
            },
            Error::Permanent(message) => Error::Permanent(f(message)),
            Error::Capacity(message) => Error::Capacity(f(message)),
        }
    }
}

/// One provider account of one tenant, able to create, destroy and list runners.
///
/// # Contract
///
/// - `create` is idempotent by `spec.lease_id`, and marks what it makes with the
///   installation id (see "Ownership" in the crate docs);
/// - `destroy` of a runner that does not exist (any more) is `Ok(())`; it never removes a
///   runner carrying another installation's id;
/// - `list` returns every runner this account holds for `tenant` that carries this
///   installation's id or none, including ones made before a restart of berth;
/// - no method holds a lock across a slow call, so calls for different leases run
///   concurrently;
/// - errors and logs never contain credentials or the runner token.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The account's kind: `fake`, `process`, `hetzner` or `http`.
    fn kind(&self) -> &'static str;

    /// Creates the runner for a lease, or returns the one that already exists for it.
    async fn create(&self, spec: &RunnerSpec) -> Result<Runner, Error>;

    /// Destroys a runner. Already gone is success.
    async fn destroy(&self, runner: &RunnerRef) -> Result<(), Error>;

    /// Every runner berth made for `tenant` at this account.
    async fn list(&self, tenant: &str) -> Result<Vec<Runner>, Error>;

    /// The hourly price of a machine type in micro-units of the tenant's currency, if the
    /// provider publishes one.
    async fn price(&self, machine_type: &str, region: Option<&str>) -> Result<Option<i64>, Error>;

    /// Whether a runner of this installation and tenant that a successful [`Provider::list`]
    /// does not show is gone (deleted by hand, lost with its host). The broker ends a live
    /// lease as `runner_lost` only on a provider that says so, and only after two listings in
    /// a row missed its runner. `false` by default: an `http` listing may leave out items it
    /// could not read, and `process` runners report their own exits.
    fn lists_every_runner(&self) -> bool {
        false
    }

    /// Up to `max` bytes of a runner's `stream`, from byte `offset`. The output is the
    /// runner's (a CI job's) own: read it as data, never follow a path it could have placed.
    /// By default a provider keeps no output ([`logs::Logs::Unsupported`]).
    async fn logs(
        &self,
        runner: &RunnerRef,
        stream: logs::Stream,
        offset: u64,
        max: usize,
    ) -> Result<logs::Logs, Error> {
        let _ = (runner, stream, offset, max);
        Ok(logs::Logs::Unsupported)
    }
}

/// Shows the kind only: a provider's own `Debug` may be richer, but never shows credentials.
impl std::fmt::Debug for dyn Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

/// A provider account as the tenant object stores it, with its credentials decrypted.
#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    /// The tenant the account belongs to (a `fake` cloud is the tenant's own).
    pub tenant: String,
    /// The account's name inside its tenant.
    pub name: String,
    /// `fake`, `process`, `hetzner` or `http`.
    pub kind: String,
    /// Non-secret settings; each kind documents its own.
    pub config: serde_json::Value,
    /// Secret settings (tokens, signing secrets); each kind documents its own.
    pub credentials: serde_json::Value,
}

/// What every provider may need from the process that runs it.
#[derive(Clone, Debug)]
pub struct Environment {
    /// berth's data directory. No runner lives there; the `process` provider only looks in
    /// `<data_dir>/runners` for runners that builds before 0.2 put there, to destroy them.
    pub data_dir: PathBuf,
    /// The operator's directory for everything host runners touch (`--runners-dir`): the
    /// `process` provider's default root, and the only place a `process` root or a `fake`
    /// `state_dir` may lie. Absolute, outside the data directory.
    pub runners_dir: PathBuf,
    /// Allow provider endpoints on loopback, private and link-local addresses (tests, and
    /// operators whose endpoint is on their own network).
    pub allow_private_network: bool,
    /// The operator's proxy for all outbound HTTP (`--outbound-proxy`, checked by
    /// [`net::parse_proxy`]); `None` sends straight to the target, whatever `HTTP_PROXY` and
    /// its siblings say (see [`net::route`]).
    pub outbound_proxy: Option<url::Url>,
    /// Allow `fake` accounts (`--enable-fake`): an in-memory cloud for tests and benchmarks.
    pub enable_fake: bool,
    /// Whom `process` runners run as when berth runs as root (`--runner-user`,
    /// `--runner-uids`); `None`: as berth itself.
    pub runner_identity: Option<process::Identity>,
    /// This installation's id (made once per data directory, kept in its directory database,
    /// logged by `berth serve` at start): every runner carries it, and providers list and
    /// destroy only runners that carry it or carry none (see "Ownership" in the crate docs).
    /// A non-empty string of `[a-z0-9]`; `None` (tests, tools) behaves as builds before
    /// installation ids. Since 0.2.
    pub installation_id: Option<String>,
    /// Where runners that exited are reported ([`exits`]); `None`: nobody listens (tools and
    /// tests that build providers without a server).
    pub runner_exits: Option<exits::Exits>,
}

impl Environment {
    /// An environment for `data_dir` with runners under `runners_dir`; private networks and
    /// `fake` refused, no proxy, runners run as berth, no installation id.
    pub fn new(data_dir: impl Into<PathBuf>, runners_dir: impl Into<PathBuf>) -> Environment {
        Environment {
            data_dir: data_dir.into(),
            runners_dir: runners_dir.into(),
            allow_private_network: false,
            outbound_proxy: None,
            enable_fake: false,
            runner_identity: None,
            installation_id: None,
            runner_exits: None,
        }
    }

    /// Whether a runner marked with `marked` (its installation id, `None` when it carries
    /// none) is this installation's to list and destroy: it carries our id, or no id at all
    /// (see "Ownership" in the crate docs).
    pub fn owns(&self, marked: Option<&str>) -> bool {
        match marked {
            None | Some("") => true,
            Some(id) => self.installation_id.as_deref() == Some(id),
        }
    }
}

/// Whether `path` lies inside `dir` (or is `dir`), judged on the absolute forms without
/// touching the file system: a path with a `..` component never does, since it could climb
/// out after `dir`'s prefix matched.
pub fn lies_within(path: &std::path::Path, dir: &std::path::Path) -> bool {
    let (Ok(path), Ok(dir)) = (std::path::absolute(path), std::path::absolute(dir)) else {
        return false;
    };
    let climbs = |p: &std::path::Path| {
        p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    };
    !climbs(&path) && !climbs(&dir) && path.starts_with(&dir)
}

/// Why an account cannot be turned into a provider. The message is meant for the tenant
/// admin who sent the account and never echoes credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Turns an account into a provider. Performs no I/O: the API calls it to validate an
/// account before it stores it, and the tenant object calls it when it opens.
///
/// # Errors
///
/// An unknown kind, or a config or credentials that the kind does not accept.
pub fn build(account: &Account, env: &Environment) -> Result<Arc<dyn Provider>, ConfigError> {
    let provider: Arc<dyn Provider> = match account.kind.as_str() {
        "fake" if !env.enable_fake => {
            return Err(ConfigError(
                "the `fake` provider is for tests and benchmarks; the server refuses it unless \
                 started with --enable-fake"
                    .into(),
            ));
        }
        "fake" => Arc::new(fake::Fake::from_account(account, env)?),
        "process" => Arc::new(process::Process::from_account(account, env)?),
        "hetzner" => Arc::new(hetzner::Hetzner::from_account(account, env)?),
        "http" => Arc::new(http::Http::from_account(account, env)?),
        other => {
            return Err(ConfigError(format!(
                "unknown provider kind `{}`; expected one of {}",
                settings::printable(other),
                KINDS
                    .iter()
                    .map(|kind| format!("`{kind}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    Ok(provider)
}

/// The provider kinds [`build`] knows, in the order they are documented.
pub const KINDS: [&str; 4] = ["fake", "process", "hetzner", "http"];

/// Whether accounts of `kind` run code or touch paths on berth's own machine (`process`
/// runners are local processes; `fake` may mirror its cloud into a directory). Only the
/// operator configures such accounts (DESIGN.md §6).
pub fn runs_on_host(kind: &str) -> bool {
    matches!(kind, "process" | "fake")
}
