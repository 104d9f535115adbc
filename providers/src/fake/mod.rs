//! The `fake` provider: an in-memory cloud for tests and benchmarks.
//!
//! Runners live in a [`FakeCloud`], a process-global state found by name through [`cloud`],
//! so a test in another crate can build a broker with a `fake` account and then inspect what
//! the broker created and destroyed ("every runner created was destroyed").
//! Accounts of one tenant naming the same `cloud` share it ([`cloud_of`]); two tenants never
//! share a cloud. Give each test its own cloud name, because the tests of one crate run in
//! parallel in one process.
//!
//! The server refuses `fake` accounts unless started with `--enable-fake`, and only the
//! operator may configure one (it may write files, under the runners directory).
//!
//! A runner carries the installation id of the account that made it in its metadata
//! ([`INSTALLATION_KEY`]); `list` and `destroy` of an account pass over runners of another
//! installation, as every provider does (see "Ownership" in the crate docs).
//! [`FakeCloud::insert_orphan`] makes runners without one, as builds before installation ids
//! did.
//!
//! # Config (kind `fake`; every field optional, unknown fields rejected; since 0.1)
//!
//! | field | meaning | default |
//! |---|---|---|
//! | `cloud` | name of the shared [`FakeCloud`] | `"default"` |
//! | `boot_delay_ms` | a new runner takes this long to boot: `create` sleeps after making it | 0 |
//! | `create_delay_ms` | latency before `create` does anything | 0 |
//! | `destroy_delay_ms` | latency before `destroy` does anything | 0 |
//! | `create_failure_rate` | share of `create` calls that fail, 0.0–1.0 | 0.0 |
//! | `destroy_failure_rate` | share of `destroy` calls that fail, 0.0–1.0 | 0.0 |
//! | `failure` | how injected failures fail: `transient`, `permanent` or `capacity` | `transient` |
//! | `seed` | seed of the cloud's random generator: the same calls in the same order fail the same way | random |
//! | `hang` | `create` never returns (fault injection) | `false` |
//! | `ready` | runners are ready at once; `false` means they wait for berth's runner callback | `true` |
//! | `prices` | machine type → hourly price in micros | `{}` |
//! | `sold_out` | machine types (`type` or `type@region`) whose creates answer out of capacity | `[]` |
//! | `state_dir` | mirror every runner as one JSON file in this directory, so the cloud survives a restart of the process (under the server's runners directory) | none |
//!
//! Credentials: none (`{}` or `null`).
//!
//! # Performance
//!
//! With no delays the provider never sleeps, and each call takes the cloud's one
//! `std::sync::Mutex` once, briefly (no I/O under it unless `state_dir` is set), so it is not
//! the bottleneck of a broker benchmark (berth's benchmarks drive it at more than 10k
//! operations per second).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

mod cloud;

use cloud::tenant_cloud;
pub use cloud::{
    Counters, Event, EventKind, FakeCloud, HISTORY_CAP, cloud, cloud_of, read_state_dir,
};

use crate::{
    Account, ConfigError, Environment, Error, Provider, Runner, RunnerRef, RunnerSpec, settings,
};

/// The settings of one `fake` account (see the module docs for the table).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name of the shared [`FakeCloud`]. Default `"default"`. Since 0.1.
    pub cloud: String,
    /// Boot time of a new runner: `create` sleeps this long after making it. Default 0. Since 0.1.
    pub boot_delay_ms: u64,
    /// Latency added before `create` does anything. Default 0. Since 0.1.
    pub create_delay_ms: u64,
    /// Latency added before `destroy` does anything. Default 0. Since 0.1.
    pub destroy_delay_ms: u64,
    /// Share of `create` calls that fail, 0.0–1.0. Default 0.0. Since 0.1.
    pub create_failure_rate: f64,
    /// Share of `destroy` calls that fail, 0.0–1.0. Default 0.0. Since 0.1.
    pub destroy_failure_rate: f64,
    /// How injected failures fail. Default `transient`. Since 0.1.
    pub failure: FailureKind,
    /// Seed of the cloud's random generator, for deterministic failures. Default: random.
    /// Since 0.1.
    pub seed: Option<u64>,
    /// `create` never returns. Default `false`. Since 0.1.
    pub hang: bool,
    /// Runners are ready at once (`true`) or wait for berth's runner callback (`false`).
    /// Default `true`. Since 0.1.
    pub ready: bool,
    /// Machine type → hourly price in micros. Default empty. Since 0.1.
    pub prices: BTreeMap<String, i64>,
    /// Machine types (`type`, or `type@region`) whose creates fail with
    /// [`Error::Capacity`], as a sold-out cloud answers. Default empty. Since 0.3.
    pub sold_out: Vec<String>,
    /// Directory mirroring the cloud's runners, one JSON file each. Default none. Since 0.1.
    pub state_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cloud: "default".to_string(),
            boot_delay_ms: 0,
            create_delay_ms: 0,
            destroy_delay_ms: 0,
            create_failure_rate: 0.0,
            destroy_failure_rate: 0.0,
            failure: FailureKind::Transient,
            seed: None,
            hang: false,
            ready: true,
            prices: BTreeMap::new(),
            sold_out: Vec::new(),
            state_dir: None,
        }
    }
}

/// How an injected failure fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// [`Error::Transient`]: the broker retries.
    #[default]
    Transient,
    /// [`Error::Permanent`]: the lease fails.
    Permanent,
    /// [`Error::Capacity`]: the provider is out of machines.
    Capacity,
}

impl FailureKind {
    fn error(self, operation: &str) -> Error {
        match self {
            FailureKind::Transient => Error::transient(format!("injected {operation} failure")),
            FailureKind::Permanent => Error::Permanent(format!("injected {operation} failure")),
            FailureKind::Capacity => Error::Capacity(format!("injected {operation} failure")),
        }
    }
}

/// The metadata key of the installation id a runner carries.
pub const INSTALLATION_KEY: &str = "installation";

/// The installation id a runner carries, if any.
fn installation_of(runner: &Runner) -> Option<&str> {
    runner.metadata.get(INSTALLATION_KEY).map(String::as_str)
}

/// A `fake` account: its own delays and failure rates over a shared [`FakeCloud`].
#[derive(Debug)]
pub struct Fake {
    config: Config,
    cloud: Arc<FakeCloud>,
    /// The installation id its runners carry ([`Environment::installation_id`]).
    installation: Option<String>,
}

impl Fake {
    /// Builds a fake provider and attaches it to the cloud `config.cloud` (made if new).
    /// Performs no I/O: a `state_dir` is read on the first call.
    ///
    /// # Errors
    ///
    /// A failure rate outside 0.0–1.0, a negative price, or a cloud that already mirrors to
    /// another `state_dir`.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        for (name, rate) in [
            ("create_failure_rate", config.create_failure_rate),
            ("destroy_failure_rate", config.destroy_failure_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError(format!(
                    "invalid `fake` config: `{name}` must be between 0.0 and 1.0"
                )));
            }
        }
        if let Some((machine_type, _)) = config.prices.iter().find(|(_, price)| **price < 0) {
            return Err(ConfigError(format!(
                "invalid `fake` config: price of `{}` is negative",
                settings::printable(machine_type)
            )));
        }
        if config.cloud.is_empty() {
            return Err(ConfigError(
                "invalid `fake` config: `cloud` is empty".to_string(),
            ));
        }
        let cloud = cloud(&config.cloud);
        cloud.configure(config.seed, config.state_dir.as_deref())?;
        Ok(Fake {
            config,
            cloud,
            installation: None,
        })
    }

    /// Whether `runner` is this account's installation's (or no installation's).
    fn owns(&self, runner: &Runner) -> bool {
        match installation_of(runner) {
            None | Some("") => true,
            Some(id) => self.installation.as_deref() == Some(id),
        }
    }

    /// Builds the provider of a tenant's `fake` account. Its cloud is the tenant's own
    /// ([`cloud_of`]): accounts of two tenants never share runners, whatever they name their
    /// cloud. A `state_dir` must lie under the operator's runners directory.
    pub(crate) fn from_account(account: &Account, env: &Environment) -> Result<Self, ConfigError> {
        settings::no_credentials("fake", &account.credentials)?;
        let mut config: Config = settings::config("fake", &account.config)?;
        if let Some(dir) = &config.state_dir
            && !crate::lies_within(dir, &env.runners_dir)
        {
            return Err(ConfigError(format!(
                "invalid `fake` config: `state_dir` must lie under the runners directory {} (the server's --runners-dir)",
                env.runners_dir.display()
            )));
        }
        if config.cloud.is_empty() {
            return Err(ConfigError(
                "invalid `fake` config: `cloud` is empty".to_string(),
            ));
        }
        config.cloud = tenant_cloud(&account.tenant, &config.cloud);
        let mut fake = Fake::new(config)?;
        fake.installation = env.installation_id.clone().filter(|id| !id.is_empty());
        Ok(fake)
    }

    /// The cloud this account's runners live in.
    pub fn cloud(&self) -> &Arc<FakeCloud> {
        &self.cloud
    }
}

async fn delay(ms: u64) {
    // Zero means no sleep at all, not a yield through the timer: benchmarks depend on it.
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[async_trait]
impl Provider for Fake {
    fn kind(&self) -> &'static str {
        "fake"
    }

    /// The cloud is in memory: a runner a listing does not show is gone.
    fn lists_every_runner(&self) -> bool {
        true
    }

    async fn create(&self, spec: &RunnerSpec) -> Result<Runner, Error> {
        self.cloud.create_calls.fetch_add(1, Ordering::Relaxed);
        if spec.tenant.is_empty() || spec.lease_id.is_empty() {
            return Err(Error::Permanent(
                "tenant and lease id must not be empty".to_string(),
            ));
        }
        if self.config.hang {
            std::future::pending::<()>().await;
        }
        delay(self.config.create_delay_ms).await;
        let (runner, new) = self.cloud.create(spec, self)?;
        if new {
            delay(self.config.boot_delay_ms).await;
        }
        Ok(runner)
    }

    async fn destroy(&self, runner: &RunnerRef) -> Result<(), Error> {
        self.cloud.destroy_calls.fetch_add(1, Ordering::Relaxed);
        delay(self.config.destroy_delay_ms).await;
        self.cloud.destroy(runner, self)
    }

    async fn list(&self, tenant: &str) -> Result<Vec<Runner>, Error> {
        self.cloud.list_calls.fetch_add(1, Ordering::Relaxed);
        self.cloud.list(tenant, self)
    }

    async fn price(&self, machine_type: &str, _region: Option<&str>) -> Result<Option<i64>, Error> {
        Ok(self.config.prices.get(machine_type).copied())
    }
}
