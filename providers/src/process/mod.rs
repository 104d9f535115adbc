//! The `process` provider: runners are local process groups (Linux).
//!
//! This is berth's embedded default: one machine shares its cores among CI jobs. A runner is
//! the pool's `command` (an argv, e.g. a CI agent) started in a fresh work directory, in its
//! own process group, with `BERTH_LEASE_ID`, `BERTH_CALLBACK_URL` and `BERTH_RUNNER_TOKEN` in
//! its environment.
//!
//! # Layout
//!
//! ```text
//! <root>/<tenant>/<lease_id>/   mode 0711: the runner may pass through, not list or write
//!     .berth-runner  the marker: tenant, lease id and installation id (proof that berth —
//!                    and which berth — made the directory)
//!     work/          the runner's cwd, fresh for every runner (0700)
//!     stdout.log     the runner's stdout (0600, written through the descriptor berth opened)
//!     stderr.log     the runner's stderr
//!     runner.json    the record: pid, process start time, lease, tenant, installation,
//!                    machine type, created_at
//! ```
//!
//! The runner id is the lease id; its address is the absolute path of `work/`. The root is
//! the operator's runners directory (`--runners-dir`) or a directory under it; it never lies
//! in the data directory, so a runner cannot reach berth's files by walking up from `work/`.
//!
//! # Ownership
//!
//! berth removes only directories it made. A runner directory is made under a temporary name
//! with its marker inside, then renamed into place, so a directory at a lease's name either
//! carries the marker or was not made by berth (for directories made before markers existed,
//! a record naming the same tenant and lease counts). `list` shows only marked directories,
//! so reconciliation never sees a directory it merely found, and `destroy` stops its
//! processes but leaves an unmarked directory where it is.
//!
//! Two berths may share a runners directory (and a tenant name): the marker and the record
//! carry the installation id ([`Environment::installation_id`]), and a directory marked by
//! another installation is neither listed, nor signalled, nor removed, nor used by `create`.
//! A marker without an installation id (builds before 0.2) is listed and destroyable; see
//! "Ownership" in the crate docs for why that is safe.
//!
//! Runners of builds before 0.2 lived in `<data_dir>/runners` when their account named no
//! root; `list` and `destroy` still look there, `create` never does.
//!
//! # Crash safety
//!
//! The directory is made before the process starts and removed only after it is gone, and the
//! record is written atomically (temp file + rename) right after the spawn. So after a crash
//! of berth at any moment, `list` still finds every runner (a directory without a record is
//! listed with status `unrecorded`), and `destroy` still finds its processes:
//!
//! - with a record, by its process group (the group id is the leader's pid; the recorded start
//!   time, field 22 of `/proc/<pid>/stat`, tells a reused pid from ours);
//! - always also by scanning `/proc/*/environ` for `BERTH_LEASE_ID=<lease_id>` and
//!   `BERTH_RUNNER_DIR=<runner dir>` (the provider sets both on every runner) among processes
//!   of berth's own uid, which catches a runner without a record and descendants that left
//!   the group (`setsid`). A process can hide from that scan only by exec'ing with a scrubbed
//!   environment after leaving the group.
//!
//! A `create` that finds a directory without a record adopts the runner the scan finds (it
//! writes the missing record) rather than starting a second one.
//!
//! # Destroy
//!
//! SIGTERM to the group (and to every process the scan found), then up to `grace_ms` for all
//! of them to exit (zombies count as exited), then SIGKILL, then the directory is removed.
//! The provider keeps the `Child` of every runner it started and waits on it in a background
//! task, so its own runners never stay zombies; that task also reports the exit to the broker,
//! which ends the lease (`exit.rs`). `spawn.rs` starts a runner, `stop.rs` stops its processes,
//! `ownership.rs` holds the marker and the record. `logs.rs` reads `stdout.log` and `stderr.log` for
//! `berth lease logs`, refusing a log the runner replaced.
//! Descendants that outlive the leader are re-parented to
//! init, which reaps them; in a container whose init does not reap (run berth under `tini` or
//! `docker run --init`) they stay zombies, which hold no resources but a pid.
//!
//! # Config (kind `process`; every field optional, unknown fields rejected; since 0.1)
//!
//! | field | meaning | default |
//! |---|---|---|
//! | `root` | where runner directories live | `<data_dir>/runners` |
//! | `grace_ms` | time between SIGTERM and SIGKILL on destroy | 10000 |
//! | `ready` | `start`: ready once the process started; `callback`: the runner calls back | `start` |
//! | `prices` | machine type → hourly price in micros | `{}` |
//!
//! Credentials: none (`{}` or `null`).

mod exit;
mod identity;
mod logs;
mod ownership;
mod procfs;
mod spawn;
mod stop;

pub use identity::Identity;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use ownership::{Owner, Record, make_owned_dir, owner, read_record, remove_dir, save_record};
use procfs::{find_leader, proc_stat};

use crate::{
    Account, ConfigError, Environment, Error, Provider, Runner, RunnerRef, RunnerSpec, settings,
};

/// The settings of one `process` account (see the module docs for the table).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where runner directories live. Default `<data_dir>/runners`. Since 0.1.
    pub root: Option<PathBuf>,
    /// Milliseconds between SIGTERM and SIGKILL on destroy. Default 10000. Since 0.1.
    pub grace_ms: u64,
    /// When a runner counts as ready. Default `start`. Since 0.1.
    pub ready: ReadyMode,
    /// Machine type → hourly price in micros. Default empty. Since 0.1.
    pub prices: BTreeMap<String, i64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: None,
            grace_ms: 10_000,
            ready: ReadyMode::Start,
            prices: BTreeMap::new(),
        }
    }
}

/// When a `process` runner counts as ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyMode {
    /// As soon as the process started (`Runner::ready = true`).
    #[default]
    Start,
    /// When the runner calls berth back (`Runner::ready = false`).
    Callback,
}

/// The longest grace a config may ask for: a destroy must end in bounded time.
const MAX_GRACE: Duration = Duration::from_secs(3600);
/// How long to wait for processes to vanish after SIGKILL before reporting a failure (a
/// process in uninterruptible sleep dies only when its I/O returns).
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often to look whether the processes of a runner are gone.
const POLL: Duration = Duration::from_millis(20);
/// The environment variable that marks every process of a runner with its lease.
const LEASE_VAR: &str = "BERTH_LEASE_ID";
/// The environment variable that holds the runner's directory. Together with [`LEASE_VAR`] it
/// tells our runner from one of another berth instance (another root) on the same machine.
const DIR_VAR: &str = "BERTH_RUNNER_DIR";
/// A `process` account.
pub struct Process {
    /// Absolute root of the runner directories.
    root: PathBuf,
    /// Where builds before 0.2 put this account's runners (`<data_dir>/runners`, for accounts
    /// without a root); looked at by `list` and `destroy` only.
    legacy_root: Option<PathBuf>,
    /// Whom runners run as; `None`: as berth.
    identity: Option<Identity>,
    /// This installation's id, written into every marker and record.
    installation: Option<String>,
    grace: Duration,
    ready: ReadyMode,
    prices: BTreeMap<String, i64>,
    /// Where runner exits are reported (`exit.rs`); `None`: nobody listens.
    exits: Option<crate::exits::Exits>,
    /// One lock per lease being created or destroyed, so that the two never interleave for one
    /// lease while different leases proceed concurrently. Entries are removed when unused.
    leases: Arc<LeaseLocks>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("root", &self.root)
            .field("grace", &self.grace)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

/// (tenant, lease id) → the lock of that lease.
type LeaseLocks = Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

/// Holds one lease's lock; removes the map entry when nobody else wants it.
struct LeaseGuard {
    leases: Arc<LeaseLocks>,
    key: (String, String),
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        // Waiters clone the Arc under the map lock, so the count is exact here: the map and
        // our guard hold one each when nobody waits.
        let unused = leases
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) <= 2);
        self.guard.take();
        if unused {
            leases.remove(&self.key);
        }
    }
}

impl Process {
    /// Builds a process provider. Performs no I/O besides making `root` absolute.
    ///
    /// # Errors
    ///
    /// A root outside the runners directory, a grace above an hour or a negative price.
    pub fn new(config: Config, env: &Environment) -> Result<Self, ConfigError> {
        let grace = Duration::from_millis(config.grace_ms);
        if grace > MAX_GRACE {
            return Err(ConfigError(
                "invalid `process` config: `grace_ms` is above one hour".into(),
            ));
        }
        if let Some((machine_type, _)) = config.prices.iter().find(|(_, price)| **price < 0) {
            return Err(ConfigError(format!(
                "invalid `process` config: price of `{}` is negative",
                settings::printable(machine_type)
            )));
        }
        if let Some(root) = &config.root
            && !crate::lies_within(root, &env.runners_dir)
        {
            return Err(ConfigError(format!(
                "invalid `process` config: `root` must lie under the runners directory {} (the server's --runners-dir)",
                env.runners_dir.display()
            )));
        }
        let legacy_root = config
            .root
            .is_none()
            .then(|| env.data_dir.join("runners"))
            .map(|root| std::path::absolute(&root).unwrap_or(root));
        let root = config.root.unwrap_or_else(|| env.runners_dir.clone());
        // Runners get absolute paths (their address), whatever berth's cwd is later.
        let root = std::path::absolute(&root).unwrap_or(root);
        Ok(Process {
            root,
            legacy_root,
            identity: env.runner_identity.clone(),
            installation: env.installation_id.clone().filter(|id| !id.is_empty()),
            exits: env.runner_exits.clone(),
            grace,
            ready: config.ready,
            prices: config.prices,
            leases: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    pub(crate) fn from_account(account: &Account, env: &Environment) -> Result<Self, ConfigError> {
        settings::no_credentials("process", &account.credentials)?;
        Process::new(settings::config("process", &account.config)?, env)
    }

    /// The absolute root of the runner directories.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a lease's runner.
    pub fn runner_dir(&self, tenant: &str, lease_id: &str) -> PathBuf {
        self.root.join(tenant).join(lease_id)
    }

    /// Where a lease's runner lives: under the root, or under the legacy root for a runner an
    /// earlier build started there.
    fn locate(&self, tenant: &str, lease_id: &str) -> PathBuf {
        let dir = self.runner_dir(tenant, lease_id);
        match &self.legacy_root {
            Some(legacy) if !dir.exists() => {
                let old = legacy.join(tenant).join(lease_id);
                if old.exists() { old } else { dir }
            }
            _ => dir,
        }
    }

    async fn lock_lease(&self, tenant: &str, lease_id: &str) -> LeaseGuard {
        let key = (tenant.to_string(), lease_id.to_string());
        let lock = {
            let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
            leases.entry(key.clone()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        LeaseGuard {
            leases: self.leases.clone(),
            key,
            guard: Some(guard),
        }
    }

    fn runner(&self, dir: &Path, tenant: &str, lease_id: &str, record: Option<&Record>) -> Runner {
        let mut metadata = BTreeMap::new();
        metadata.insert("dir".to_string(), dir.display().to_string());
        match record {
            Some(record) => {
                let status = match proc_stat(record.pid) {
                    Some(stat)
                        if record.this_boot()
                            && stat.start_time == record.start_time
                            && stat.state != 'Z' =>
                    {
                        "running"
                    }
                    _ => "exited",
                };
                let who = exit::Subject {
                    dir: dir.to_path_buf(),
                    tenant: tenant.to_owned(),
                    lease_id: lease_id.to_owned(),
                };
                exit::observe(
                    self.exits.as_ref(),
                    who,
                    record,
                    status == "running",
                    &mut metadata,
                );
                metadata.insert("pid".to_string(), record.pid.to_string());
                metadata.insert("status".to_string(), status.to_string());
                metadata.insert("machine_type".to_string(), record.machine_type.clone());
                metadata.insert("created_at".to_string(), record.created_at.clone());
                if !record.pool.is_empty() {
                    metadata.insert("pool".to_string(), record.pool.clone());
                }
            }
            None => {
                metadata.insert("status".to_string(), "unrecorded".to_string());
            }
        }
        Runner {
            id: lease_id.to_string(),
            tenant: tenant.to_string(),
            lease_id: lease_id.to_string(),
            address: Some(dir.join("work").display().to_string()),
            metadata,
            ready: self.ready == ReadyMode::Start,
        }
    }

    /// The uids of range runners in use: every process's, and every record's under the roots
    /// (a runner whose process exited still owns its work directory until it is destroyed).
    async fn uids_taken(&self) -> BTreeSet<u32> {
        let roots: Vec<PathBuf> = std::iter::once(self.root.clone())
            .chain(self.legacy_root.clone())
            .collect();
        blocking(move || {
            let mut taken = procfs::uids_in_use();
            for root in roots {
                for tenant in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                    for runner in std::fs::read_dir(tenant.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                    {
                        if let Ok(Some(record)) = read_record(&runner.path()) {
                            taken.extend(record.uid);
                        }
                    }
                }
            }
            Ok(taken)
        })
        .await
        .unwrap_or_default()
    }
}

#[async_trait]
impl Provider for Process {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn create(&self, spec: &RunnerSpec) -> Result<Runner, Error> {
        check_name("tenant", &spec.tenant)?;
        check_name("lease id", &spec.lease_id)?;
        if spec.command.is_empty() || spec.command[0].is_empty() {
            return Err(Error::Permanent(
                "the pool has no command for a process runner".into(),
            ));
        }
        if let Some(name) = spec
            .env
            .keys()
            .find(|name| name.is_empty() || name.contains(['=', '\0']))
        {
            return Err(Error::Permanent(format!(
                "invalid environment variable name `{}`",
                settings::printable(name)
            )));
        }

        let _lease = self.lock_lease(&spec.tenant, &spec.lease_id).await;
        let dir = self.runner_dir(&spec.tenant, &spec.lease_id);
        let (dir_for_check, tenant, lease, installation) = (
            dir.clone(),
            spec.tenant.clone(),
            spec.lease_id.clone(),
            self.installation.clone(),
        );
        let owner = blocking(move || {
            Ok(dir_for_check
                .exists()
                .then(|| owner(&dir_for_check, &tenant, &lease, installation.as_deref())))
        })
        .await
        .unwrap_or(Some(Owner::Stranger));
        match owner {
            None | Some(Owner::Us) => {}
            Some(Owner::OtherInstallation) => {
                return Err(Error::Permanent(format!(
                    "{} was made by another berth installation; berth neither uses nor removes it",
                    dir.display()
                )));
            }
            Some(Owner::Stranger) => {
                return Err(Error::Permanent(format!(
                    "{} exists and was not made by berth; berth neither uses nor removes it",
                    dir.display()
                )));
            }
        }
        let dir_for_read = dir.clone();
        let existing = blocking(move || read_record(&dir_for_read)).await;
        match existing {
            Ok(Some(record)) => {
                return Ok(self.runner(&dir, &spec.tenant, &spec.lease_id, Some(&record)));
            }
            Ok(None) => {}
            Err(e) => return Err(io_error("reading the runner record", &e)),
        }

        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            // berth died between making the directory and writing the record. If the runner
            // started, adopt it; otherwise start afresh.
            let (lease, dir_for_scan) = (spec.lease_id.clone(), dir.clone());
            let adopted = blocking(move || Ok(find_leader(&lease, &dir_for_scan)))
                .await
                .unwrap_or_default();
            if let Some((pid, stat)) = adopted {
                let ids = procfs::ids_of(pid);
                let record = Record::new(
                    spec,
                    self.installation.as_deref(),
                    pid,
                    stat.start_time,
                    ids,
                );
                save_record(&dir, &record).await?;
                tracing::info!(lease_id = %spec.lease_id, pid, "adopted a runner that had no record");
                return Ok(self.runner(&dir, &spec.tenant, &spec.lease_id, Some(&record)));
            }
            // Kill stragglers (a leader-less remainder) before the directory goes.
            self.terminate(&dir, &spec.lease_id, None).await?;
            remove_dir(&dir).await?;
        }

        let (dir_for_make, tenant, lease, installation) = (
            dir.clone(),
            spec.tenant.clone(),
            spec.lease_id.clone(),
            self.installation.clone(),
        );
        blocking(move || make_owned_dir(&dir_for_make, &tenant, &lease, installation.as_deref()))
            .await
            .map_err(|e| io_error("making the runner directory", &e))?;
        match self.start(spec, &dir).await {
            Ok(record) => Ok(self.runner(&dir, &spec.tenant, &spec.lease_id, Some(&record))),
            Err(e) => {
                // Nothing runs (start kills what it spawned on failure): leave no directory.
                if let Err(cleanup) = remove_dir(&dir).await {
                    tracing::warn!(error = %cleanup, "removing a failed runner's directory");
                }
                Err(e)
            }
        }
    }

    async fn destroy(&self, runner: &RunnerRef) -> Result<(), Error> {
        // A name that could never have been created has nothing to destroy.
        if check_name("tenant", &runner.tenant).is_err()
            || check_name("lease id", &runner.lease_id).is_err()
        {
            return Ok(());
        }
        let _lease = self.lock_lease(&runner.tenant, &runner.lease_id).await;
        let dir = self.locate(&runner.tenant, &runner.lease_id);
        let (dir_for_check, tenant, lease, installation) = (
            dir.clone(),
            runner.tenant.clone(),
            runner.lease_id.clone(),
            self.installation.clone(),
        );
        let owner = blocking(move || {
            Ok(owner(
                &dir_for_check,
                &tenant,
                &lease,
                installation.as_deref(),
            ))
        })
        .await
        .unwrap_or(Owner::Stranger);
        if owner == Owner::OtherInstallation {
            // Its processes carry the same lease id and directory: the environ scan would
            // find them too. Another berth's runner is not ours to stop.
            tracing::warn!(dir = %dir.display(), "a runner directory of another berth installation; leaving it alone");
            return Ok(());
        }
        let ours = owner == Owner::Us;
        // Only a record in a directory berth made names a process group to signal; the
        // environ scan finds what berth started in any case.
        let dir_for_read = dir.clone();
        let record = match blocking(move || read_record(&dir_for_read)).await {
            Ok(record) if ours => record,
            Ok(_) => None,
            // An unreadable record must not stop the destroy: the environ scan still works.
            Err(e) => {
                tracing::warn!(lease_id = %runner.lease_id, error = %e, "unreadable runner record");
                None
            }
        };
        self.terminate(&dir, &runner.lease_id, record.as_ref())
            .await?;
        if ours {
            remove_dir(&dir).await
        } else {
            if dir.exists() {
                tracing::warn!(dir = %dir.display(), "not removing a directory berth did not make");
            }
            Ok(())
        }
    }

    async fn list(&self, tenant: &str) -> Result<Vec<Runner>, Error> {
        check_name("tenant", tenant)?;
        let tenant_dirs: Vec<PathBuf> = std::iter::once(&self.root)
            .chain(&self.legacy_root)
            .map(|root| root.join(tenant))
            .collect();
        let tenant_name = tenant.to_owned();
        let installation = self.installation.clone();
        let found = blocking(move || {
            let mut found = Vec::new();
            for tenant_dir in tenant_dirs {
                let entries = match std::fs::read_dir(&tenant_dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let Ok(lease_id) = entry.file_name().into_string() else {
                        continue;
                    };
                    if !entry.file_type()?.is_dir()
                        || check_name("lease id", &lease_id).is_err()
                    {
                        continue;
                    }
                    match owner(&entry.path(), &tenant_name, &lease_id, installation.as_deref()) {
                        Owner::Us => {}
                        Owner::OtherInstallation => {
                            tracing::debug!(dir = %entry.path().display(), "a runner of another berth installation; not listing it");
                            continue;
                        }
                        Owner::Stranger => {
                            tracing::warn!(dir = %entry.path().display(), "a directory berth did not make is in the runners root; leaving it alone");
                            continue;
                        }
                    }
                    // An unreadable record still lists the runner: reconciliation must see it.
                    let record = read_record(&entry.path()).unwrap_or(None);
                    found.push((entry.path(), lease_id, record));
                }
            }
            Ok(found)
        })
        .await
        .map_err(|e| io_error("listing runner directories", &e))?;
        let mut runners: Vec<Runner> = found
            .iter()
            .map(|(dir, lease_id, record)| self.runner(dir, tenant, lease_id, record.as_ref()))
            .collect();
        runners.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(runners)
    }

    async fn price(&self, machine_type: &str, _region: Option<&str>) -> Result<Option<i64>, Error> {
        Ok(self.prices.get(machine_type).copied())
    }

    async fn logs(
        &self,
        runner: &RunnerRef,
        stream: crate::logs::Stream,
        offset: u64,
        max: usize,
    ) -> Result<crate::logs::Logs, Error> {
        if check_name("tenant", &runner.tenant).is_err()
            || check_name("lease id", &runner.lease_id).is_err()
        {
            return Ok(crate::logs::Logs::Unavailable("no such runner".into()));
        }
        let dir = self.locate(&runner.tenant, &runner.lease_id);
        blocking(move || logs::read(&dir, stream, offset, max))
            .await
            .map_err(|e| io_error("reading a runner log", &e))
    }
}

/// A tenant or lease id is used as a path component: it must not be able to escape the root.
fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(Error::Permanent(format!(
            "{what} `{}` cannot name a runner directory: use 1–128 of [A-Za-z0-9_.-], not starting with `.`",
            settings::printable(name)
        )))
    }
}

fn io_error(doing: &str, e: &io::Error) -> Error {
    Error::transient(format!("{doing}: {e}"))
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names that could escape the root are refused.
    #[test]
    fn path_names_are_checked() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(check_name("lease id", bad).is_err(), "{bad:?}");
        }
        for good in ["acme", "lease_01JD0Z", "a.b-c_d", "0"] {
            assert!(check_name("lease id", good).is_ok(), "{good:?}");
        }
    }
}
