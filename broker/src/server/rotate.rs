//! `berth rotate-master-key`: seal every tenant's secrets under a new master key.
//!
//! The rotation runs with the server stopped (it takes the data directory's lock, as `serve`
//! does) and can be repeated until it completes:
//!
//! 1. With the key in `<data>/master.key`: the current key is kept as
//!    `<data>/master.key.previous`, then a new key replaces `master.key`; both writes are
//!    atomic. If `master.key.previous` already exists, an earlier rotation was cut short and
//!    this one resumes it with the keys as they are. With the key in `BERTH_MASTER_KEY`, the
//!    operator sets the new key there and the old one in `BERTH_PREVIOUS_MASTER_KEY` first.
//! 2. Every tenant object is opened: its activation re-seals under the new key what opens
//!    only under the old one (`tenant::object::reseal`), in one transaction per tenant.
//! 3. Once every tenant committed, `master.key.previous` is removed.
//!
//! Runner tokens are derived from the master key: a lease granted before the rotation keeps a
//! token only the previous key accepts, so its runner's callbacks fail once the previous key
//! is gone (its lease still ends by release, TTL or idle timeout). The report counts such
//! leases; rotate when few or none run.

use std::sync::Arc;

use anyhow::Context as _;

use super::{Host, host, installation_id, runtime_options, tenant_env};
use crate::Config;
use crate::api::TENANT_KIND;
use crate::objects::{self, Runtime};
use crate::secrets::{self, Keys, MASTER_KEY_FILE, PREVIOUS_MASTER_KEY_FILE};
use crate::tenant::{self, Filter, ListLeases, TenantBroker};
use crate::wire::LeaseState;

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Tenants whose secrets are now sealed under the new key.
    pub tenants: usize,
    /// Leases granted before the rotation and still active: their runners hold tokens of the
    /// previous key.
    pub active_leases: usize,
    /// Whether this run resumed a rotation that an earlier run started.
    pub resumed: bool,
    /// Whether the previous key is now forgotten (key files); with `BERTH_MASTER_KEY` the
    /// operator unsets `BERTH_PREVIOUS_MASTER_KEY`.
    pub forgot_previous: bool,
}

/// Rotates the master key of the data directory in `config` (see the module docs).
///
/// # Errors
///
/// berth is serving on the data directory, there is no master key to rotate, the keys are
/// given in the environment without the previous one, or a tenant cannot be opened (the
/// rotation is then resumed by running it again).
pub async fn rotate_master_key(config: &Config) -> anyhow::Result<Rotation> {
    let runtime = Runtime::open(runtime_options(config, Arc::new(objects::SystemClock)))
        .await
        .context("opening the data directory (is berth serving on it? stop it first)")?;
    let data_dir = &config.data_dir;
    let previous_file = data_dir.join(PREVIOUS_MASTER_KEY_FILE);
    let mut resumed = previous_file.exists();
    match &config.master_key {
        None => {
            let current_file = data_dir.join(MASTER_KEY_FILE);
            if !resumed {
                let old = secrets::read_secret_file(&current_file)
                    .context("reading the master key to rotate")?;
                secrets::decode_master_key(&old).context("the master key file is malformed")?;
                secrets::replace_secret_file(&previous_file, &old)?;
                secrets::replace_secret_file(&current_file, &secrets::new_master_key())?;
            }
        }
        Some(_) => {
            if std::env::var("BERTH_PREVIOUS_MASTER_KEY").is_err() {
                anyhow::bail!(
                    "the master key comes from BERTH_MASTER_KEY: put the key in use in \
                     BERTH_PREVIOUS_MASTER_KEY and a new one (64 hex digits) in \
                     BERTH_MASTER_KEY, then run this again"
                );
            }
            resumed = false;
        }
    }
    let keys = Keys::load_or_create(data_dir, config.master_key.as_deref())?;
    anyhow::ensure!(keys.rotating(), "BUG: a rotation without a previous key");

    let env = tenant_env(
        config,
        keys,
        Host {
            runners_dir: config.runners_dir(),
            runner_identity: host::runner_identity(config)?,
            // Tenants opened here may reconcile: they must know their runners as `serve` does.
            installation_id: installation_id(&runtime).await?,
            // A rotation ends leases for no runner's exit: `serve` sees those.
            runner_exits: None,
        },
        config
            .public_url
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1".into()),
        Arc::new(tenant::Metrics::default()),
    );
    let tenants = runtime.namespace::<TenantBroker>(Arc::new(env));
    let mut report = Rotation {
        tenants: 0,
        active_leases: 0,
        resumed,
        forgot_previous: false,
    };
    let mut after: Option<String> = None;
    loop {
        let page = runtime.directory().keys(TENANT_KIND, after.as_deref(), 500);
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (name, _) in page {
            // Opening the object re-seals its secrets; listing its active leases commits
            // nothing, so the activation's transaction is what made it durable.
            let filter = Filter {
                states: LeaseState::ALL
                    .into_iter()
                    .filter(|state| state.is_active())
                    .collect(),
                pool: None,
                label: None,
                before: None,
                limit: 1_000,
            };
            let page = tenants
                .get_by_name(&name)
                .ask(ListLeases { filter })
                .await
                .map_err(|err| anyhow::anyhow!("tenant `{name}`: {err}"))?
                .map_err(|rejection| anyhow::anyhow!("tenant `{name}`: {rejection}"))?;
            report.active_leases += page.items.len();
            report.tenants += 1;
        }
    }
    runtime.shutdown(config.shutdown_grace).await;
    if config.master_key.is_none() {
        std::fs::remove_file(&previous_file)
            .with_context(|| format!("removing {}", previous_file.display()))?;
        report.forgot_previous = true;
    }
    Ok(report)
}
