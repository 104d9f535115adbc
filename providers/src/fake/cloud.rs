//! The in-memory cloud behind `fake` accounts: the process-global registry of clouds, each
//! cloud's runners, history and counters, and its optional mirror in a state directory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::{Fake, INSTALLATION_KEY};
use crate::{ConfigError, Error, Runner, RunnerRef, RunnerSpec};

/// The process-global registry of fake clouds. Only ever held for a map lookup.
static CLOUDS: LazyLock<Mutex<HashMap<String, Arc<FakeCloud>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The fake cloud called `name`, created empty on first use. Every `fake` account with this
/// `cloud` name in this process shares it.
pub fn cloud(name: &str) -> Arc<FakeCloud> {
    let mut clouds = CLOUDS.lock().unwrap_or_else(PoisonError::into_inner);
    clouds
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(FakeCloud::new(name)))
        .clone()
}

/// The fake cloud `name` of `tenant`: what a tenant's `fake` account with `"cloud": name`
/// uses. Tests inspect it to see what the broker created and destroyed.
pub fn cloud_of(tenant: &str, name: &str) -> Arc<FakeCloud> {
    cloud(&tenant_cloud(tenant, name))
}

/// The registry key of a tenant's cloud. Tenant names have no `/`, so keys never collide.
pub(super) fn tenant_cloud(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// Reads the runners a `state_dir` mirrors, without a [`FakeCloud`]: for tests that check
/// from outside a process (say, after killing a server) which runners are still alive.
///
/// # Errors
///
/// Reading the directory or a file failed; a missing directory is an empty list.
pub fn read_state_dir(dir: &Path) -> std::io::Result<Vec<Runner>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut runners = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "json") {
            let text = std::fs::read(&path)?;
            let runner: Runner = serde_json::from_slice(&text)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            runners.push(runner);
        }
    }
    runners.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(runners)
}

/// What happened to a runner, in the cloud's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `create` made it.
    Created,
    /// A test inserted it with [`FakeCloud::insert_orphan`].
    InsertedOrphan,
    /// `destroy` removed it.
    Destroyed,
}

/// One entry of a cloud's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in the cloud's history, from 0.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// The runner's id.
    pub runner_id: String,
    /// The runner's tenant.
    pub tenant: String,
    /// The runner's lease.
    pub lease_id: String,
}

/// How many events a cloud keeps; older ones are dropped (the counters stay exact), so that a
/// long benchmark does not grow memory without bound.
pub const HISTORY_CAP: usize = 100_000;

/// Counters of one cloud since it was made (or [`FakeCloud::reset`]). Runners loaded from a
/// `state_dir` were counted by the process that made them, not here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `create` calls, including failed and hanging ones.
    pub create_calls: u64,
    /// `destroy` calls, including failed ones.
    pub destroy_calls: u64,
    /// Runners made (by `create` or [`FakeCloud::insert_orphan`]); idempotent repeats are not
    /// counted.
    pub created_total: u64,
    /// Runners removed by `destroy`; a destroy of an unknown runner is not counted.
    pub destroyed_total: u64,
    /// Injected `create` failures.
    pub create_failures: u64,
    /// Injected `destroy` failures.
    pub destroy_failures: u64,
}

/// An in-memory cloud shared by every `fake` account that names it.
///
/// # Invariant
///
/// Within one process, `created_total == destroyed_total + live_count` for runners this
/// process made. So "every runner created was destroyed" is `live_count() == 0`.
pub struct FakeCloud {
    /// The name the cloud is registered under.
    name: String,
    /// `create` calls, counted outside the lock so that hanging calls count too.
    pub(super) create_calls: AtomicU64,
    /// `destroy` calls, counted outside the lock.
    pub(super) destroy_calls: AtomicU64,
    /// `list` calls (reconciliation rounds).
    pub(super) list_calls: AtomicU64,
    /// Everything else. Held only for short, non-async work (and the `state_dir` file write,
    /// when one is configured).
    state: Mutex<State>,
}

impl std::fmt::Debug for FakeCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCloud")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

struct State {
    /// Live runners by runner id.
    runners: HashMap<String, Runner>,
    /// (tenant, lease id) → runner id, for idempotent create and destroy by lease.
    by_lease: HashMap<(String, String), String>,
    /// Makes runner ids unique across processes sharing a state dir: ids are
    /// `fake-<epoch>-<n>`, with a random epoch per cloud instance. (A reused id would let a
    /// stale `destroy` by id remove another lease's runner.)
    epoch: u32,
    /// The number in the next runner id.
    next_id: u64,
    /// Draws injected failures.
    rng: StdRng,
    /// The seed `rng` was last seeded with, so that rebuilding an account with the same seed
    /// does not restart the sequence.
    seed: Option<u64>,
    /// Where runners are mirrored, if anywhere.
    state_dir: Option<PathBuf>,
    /// Whether `state_dir` has been read into `runners` yet (reading waits for the first call,
    /// because building a provider does no I/O).
    loaded: bool,
    counters: Counters,
    history: VecDeque<Event>,
    next_seq: u64,
}

impl State {
    fn record(&mut self, kind: EventKind, runner: &Runner) {
        if self.history.len() == HISTORY_CAP {
            self.history.pop_front();
        }
        self.history.push_back(Event {
            seq: self.next_seq,
            kind,
            runner_id: runner.id.clone(),
            tenant: runner.tenant.clone(),
            lease_id: runner.lease_id.clone(),
        });
        self.next_seq += 1;
    }

    fn next_runner_id(&self) -> String {
        format!("fake-{:08x}-{}", self.epoch, self.next_id)
    }

    /// Reads `state_dir` once. Runners already in memory win over files.
    fn ensure_loaded(&mut self) -> Result<(), Error> {
        if self.loaded {
            return Ok(());
        }
        let Some(dir) = self.state_dir.clone() else {
            self.loaded = true;
            return Ok(());
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::transient(format!("fake state_dir {}: {e}", dir.display())))?;
        let runners = read_state_dir(&dir)
            .map_err(|e| Error::transient(format!("fake state_dir {}: {e}", dir.display())))?;
        for runner in runners {
            if let Some(n) = runner
                .id
                .strip_prefix("fake-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                self.next_id = self.next_id.max(n + 1);
            }
            let key = (runner.tenant.clone(), runner.lease_id.clone());
            self.by_lease
                .entry(key)
                .or_insert_with(|| runner.id.clone());
            self.runners.entry(runner.id.clone()).or_insert(runner);
        }
        self.loaded = true;
        Ok(())
    }

    fn persist(&self, runner: &Runner) -> Result<(), Error> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        let io =
            |e: std::io::Error| Error::transient(format!("fake state_dir {}: {e}", dir.display()));
        let body = serde_json::to_vec(runner).expect("BUG: a Runner always serialises");
        let tmp = dir.join(format!("{}.json.tmp", runner.id));
        std::fs::write(&tmp, body).map_err(io)?;
        std::fs::rename(&tmp, dir.join(format!("{}.json", runner.id))).map_err(io)
    }

    fn unpersist(&self, runner_id: &str) -> Result<(), Error> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        match std::fs::remove_file(dir.join(format!("{runner_id}.json"))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::transient(format!(
                "fake state_dir {}: {e}",
                dir.display()
            ))),
        }
    }

    fn insert(&mut self, runner: Runner, kind: EventKind) -> Result<Runner, Error> {
        self.persist(&runner)?;
        self.next_id += 1;
        self.by_lease.insert(
            (runner.tenant.clone(), runner.lease_id.clone()),
            runner.id.clone(),
        );
        self.runners.insert(runner.id.clone(), runner.clone());
        self.counters.created_total += 1;
        self.record(kind, &runner);
        Ok(runner)
    }
}

impl FakeCloud {
    pub(super) fn new(name: &str) -> Self {
        FakeCloud {
            name: name.to_string(),
            create_calls: AtomicU64::new(0),
            destroy_calls: AtomicU64::new(0),
            list_calls: AtomicU64::new(0),
            state: Mutex::new(State {
                runners: HashMap::new(),
                by_lease: HashMap::new(),
                epoch: rand::random(),
                next_id: 1,
                rng: StdRng::from_os_rng(),
                seed: None,
                state_dir: None,
                loaded: true,
                counters: Counters::default(),
                history: VecDeque::new(),
                next_seq: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock can only come from a bug in this file; the state is
        // still usable for the tests that inspect it, so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies the cloud-wide parts of an account's config: the seed and the state dir.
    pub(super) fn configure(
        &self,
        seed: Option<u64>,
        state_dir: Option<&Path>,
    ) -> Result<(), ConfigError> {
        let mut state = self.lock();
        if let Some(dir) = state_dir {
            match &state.state_dir {
                None => {
                    state.state_dir = Some(dir.to_path_buf());
                    state.loaded = false;
                }
                Some(existing) if existing == dir => {}
                Some(_) => {
                    return Err(ConfigError(format!(
                        "invalid `fake` config: cloud `{}` already mirrors to another state_dir",
                        self.name
                    )));
                }
            }
        }
        if let Some(seed) = seed
            && state.seed != Some(seed)
        {
            state.rng = StdRng::seed_from_u64(seed);
            state.seed = Some(seed);
        }
        Ok(())
    }

    /// The cloud's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every live runner, sorted by id.
    pub fn live_runners(&self) -> Vec<Runner> {
        let mut state = self.lock();
        // A state dir that cannot be read leaves the in-memory view, which is what tests see.
        let _ = state.ensure_loaded();
        let mut runners: Vec<Runner> = state.runners.values().cloned().collect();
        runners.sort_by(|a, b| a.id.cmp(&b.id));
        runners
    }

    /// How many runners are live.
    pub fn live_count(&self) -> usize {
        let mut state = self.lock();
        let _ = state.ensure_loaded();
        state.runners.len()
    }

    /// The live runner of a lease, if any.
    pub fn runner_for(&self, tenant: &str, lease_id: &str) -> Option<Runner> {
        let mut state = self.lock();
        let _ = state.ensure_loaded();
        let id = state
            .by_lease
            .get(&(tenant.to_string(), lease_id.to_string()))?;
        state.runners.get(id).cloned()
    }

    /// Removes a lease's runner without berth asking, as someone deleting a server by hand
    /// (or a host failure) does; whether there was one. Not counted as destroyed.
    pub fn vanish(&self, tenant: &str, lease_id: &str) -> bool {
        let mut state = self.lock();
        let _ = state.ensure_loaded();
        let key = (tenant.to_string(), lease_id.to_string());
        let Some(id) = state.by_lease.remove(&key) else {
            return false;
        };
        let _ = state.unpersist(&id);
        state.runners.remove(&id).is_some()
    }

    /// Runners made, by `create` or [`FakeCloud::insert_orphan`].
    pub fn created_total(&self) -> u64 {
        self.lock().counters.created_total
    }

    /// Runners removed by `destroy`.
    pub fn destroyed_total(&self) -> u64 {
        self.lock().counters.destroyed_total
    }

    /// `create` calls, including failed, hanging and idempotent ones.
    pub fn create_calls(&self) -> u64 {
        self.create_calls.load(Ordering::Relaxed)
    }

    /// `destroy` calls, including failed ones and those of unknown runners.
    pub fn destroy_calls(&self) -> u64 {
        self.destroy_calls.load(Ordering::Relaxed)
    }

    /// `list` calls: how many times a broker looked for orphans here.
    pub fn list_calls(&self) -> u64 {
        self.list_calls.load(Ordering::Relaxed)
    }

    /// All counters at once, consistent with each other (except the call counts, which are
    /// taken just before).
    pub fn counters(&self) -> Counters {
        let create_calls = self.create_calls();
        let destroy_calls = self.destroy_calls();
        Counters {
            create_calls,
            destroy_calls,
            ..self.lock().counters
        }
    }

    /// The last [`HISTORY_CAP`] events, oldest first.
    pub fn history(&self) -> Vec<Event> {
        self.lock().history.iter().cloned().collect()
    }

    /// Makes a runner that no lease owns, as if berth crashed between the provider's create
    /// and its own commit; reconciliation should destroy it. Counted in `created_total`.
    ///
    /// # Errors
    ///
    /// Mirroring it to the state dir failed.
    pub fn insert_orphan(&self, tenant: &str, lease_id: &str) -> Result<Runner, Error> {
        let mut state = self.lock();
        state.ensure_loaded()?;
        let runner = Runner {
            id: state.next_runner_id(),
            tenant: tenant.to_string(),
            lease_id: lease_id.to_string(),
            address: None,
            metadata: BTreeMap::from([("cloud".to_string(), self.name.clone())]),
            ready: true,
        };
        let runner = Runner {
            address: Some(format!("fake://{}/{}", self.name, runner.id)),
            ..runner
        };
        state.insert(runner, EventKind::InsertedOrphan)
    }

    /// Forgets every runner, counter and event (not the seed or state dir), and empties the
    /// state dir. For tests that reuse a cloud name.
    pub fn reset(&self) {
        let mut state = self.lock();
        let ids: Vec<String> = state.runners.keys().cloned().collect();
        for id in ids {
            let _ = state.unpersist(&id);
        }
        state.runners.clear();
        state.by_lease.clear();
        state.counters = Counters::default();
        state.history.clear();
        self.create_calls.store(0, Ordering::Relaxed);
        self.destroy_calls.store(0, Ordering::Relaxed);
        self.list_calls.store(0, Ordering::Relaxed);
    }

    /// Creates (or finds) the runner of a lease under one lock. The bool says whether it is
    /// new.
    pub(super) fn create(
        &self,
        spec: &RunnerSpec,
        settings: &Fake,
    ) -> Result<(Runner, bool), Error> {
        let mut state = self.lock();
        state.ensure_loaded()?;
        let rate = settings.config.create_failure_rate;
        if rate > 0.0 && state.rng.random::<f64>() < rate {
            state.counters.create_failures += 1;
            return Err(settings.config.failure.error("create"));
        }
        let placed = match &spec.region {
            Some(region) => format!("{}@{region}", spec.machine_type),
            None => spec.machine_type.clone(),
        };
        if settings
            .config
            .sold_out
            .iter()
            .any(|sold| *sold == spec.machine_type || *sold == placed)
        {
            state.counters.create_failures += 1;
            return Err(Error::Capacity(format!(
                "resource_unavailable: {placed} is sold out"
            )));
        }
        let key = (spec.tenant.clone(), spec.lease_id.clone());
        if let Some(existing) = state
            .by_lease
            .get(&key)
            .and_then(|id| state.runners.get(id))
        {
            if !settings.owns(existing) {
                return Err(Error::Permanent(format!(
                    "lease `{}` already has a runner of another installation",
                    spec.lease_id
                )));
            }
            return Ok((existing.clone(), false));
        }
        let id = state.next_runner_id();
        let mut metadata = BTreeMap::from([
            ("cloud".to_string(), self.name.clone()),
            ("machine_type".to_string(), spec.machine_type.clone()),
            ("pool".to_string(), spec.pool.clone()),
        ]);
        if let Some(region) = &spec.region {
            metadata.insert("region".to_string(), region.clone());
        }
        if let Some(image) = &spec.image {
            metadata.insert("image".to_string(), image.clone());
        }
        if let Some(installation) = &settings.installation {
            metadata.insert(INSTALLATION_KEY.to_string(), installation.clone());
        }
        let runner = Runner {
            address: Some(format!("fake://{}/{id}", self.name)),
            id,
            tenant: spec.tenant.clone(),
            lease_id: spec.lease_id.clone(),
            metadata,
            ready: settings.config.ready,
        };
        Ok((state.insert(runner, EventKind::Created)?, true))
    }

    pub(super) fn destroy(&self, runner: &RunnerRef, settings: &Fake) -> Result<(), Error> {
        let mut state = self.lock();
        state.ensure_loaded()?;
        let rate = settings.config.destroy_failure_rate;
        if rate > 0.0 && state.rng.random::<f64>() < rate {
            state.counters.destroy_failures += 1;
            return Err(settings.config.failure.error("destroy"));
        }
        let id = match &runner.id {
            Some(id) => Some(id.clone()),
            None => state
                .by_lease
                .get(&(runner.tenant.clone(), runner.lease_id.clone()))
                .cloned(),
        };
        // Another tenant's (or installation's) runner with that id is, for this account,
        // already gone.
        let Some(found) = id
            .and_then(|id| state.runners.get(&id))
            .filter(|found| found.tenant == runner.tenant && settings.owns(found))
            .cloned()
        else {
            return Ok(());
        };
        state.unpersist(&found.id)?;
        state.runners.remove(&found.id);
        let key = (found.tenant.clone(), found.lease_id.clone());
        if state.by_lease.get(&key) == Some(&found.id) {
            state.by_lease.remove(&key);
        }
        state.counters.destroyed_total += 1;
        state.record(EventKind::Destroyed, &found);
        Ok(())
    }

    pub(super) fn list(&self, tenant: &str, settings: &Fake) -> Result<Vec<Runner>, Error> {
        let mut state = self.lock();
        state.ensure_loaded()?;
        let mut runners: Vec<Runner> = state
            .runners
            .values()
            .filter(|runner| runner.tenant == tenant && settings.owns(runner))
            .cloned()
            .collect();
        runners.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(runners)
    }
}
