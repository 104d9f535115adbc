//! The runtime: one per data directory. It owns the directory, the alarm scheduler, the
//! shutdown token and the task tracker that every object task runs on.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::barrier::Barrier;
use super::closing::{Closer, Queue};
use super::cluster::Cluster;
use super::directory::Directory;
use super::journal::{self, Journal};
use super::namespace::{NsInner, ObjectFiles};
use super::scheduler::Scheduler;
use super::sqlite::Syncs;
use super::storage::Durability;
use super::warm::Warm;
use super::{Clock, Error, Metrics, Namespace, Object, ObjectId, SystemClock};

/// How the runtime is set up.
#[derive(Clone)]
pub struct Options {
    /// The data directory: `directory.sqlite` and `objects/` live here.
    pub data_dir: PathBuf,
    /// An object with no event for this long (and no background work in flight) closes its
    /// database and leaves memory. Default 30 s.
    pub object_idle: Duration,
    /// At most this many object databases are open at once (across namespaces). An
    /// activation beyond it waits while the least recently used objects are asked to
    /// hibernate; objects with background work in flight finish it first. Default 10,000.
    pub max_live_objects: usize,
    /// Messages an object's inbox holds before callers get "overloaded". Default 4,096.
    pub inbox_capacity: usize,
    /// How many waiting events at most run in one transaction (group commit). `1` turns group
    /// commit off. Default 512.
    pub max_batch: usize,
    /// At most this many hibernated objects keep their database open (the warm tier,
    /// `warm.rs`): a wake then skips opening it. Single node only. `0` (the default here;
    /// `berth serve` sets its own) turns it off.
    pub warm_objects: usize,
    /// A hibernated object's database is closed after this long in the warm tier. Default 60 s.
    pub warm_idle: Duration,
    /// How commits are made durable: `Full` (the default: an fsync per commit), `Log` (the
    /// shared commit journal) or `Group` (the shared barrier); `Normal` and `Off` are for
    /// benchmarks only.
    pub durability: Durability,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// Cluster mode (DESIGN.md §10): objects are claimed in, committed to and moved through
    /// this PostgreSQL-backed cluster; the local files are a cache. `None`: the embedded
    /// default, where each object's SQLite file is the truth.
    pub cluster: Option<Arc<Cluster>>,
}

impl Options {
    /// The defaults, for the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Options {
            data_dir: data_dir.into(),
            object_idle: Duration::from_secs(30),
            max_live_objects: 10_000,
            inbox_capacity: 4_096,
            max_batch: 512,
            warm_objects: 0,
            warm_idle: Duration::from_secs(60),
            durability: Durability::Full,
            clock: Arc::new(SystemClock),
            cluster: None,
        }
    }
}

/// What every namespace and object task of a runtime shares.
pub(crate) struct Shared {
    pub(crate) options: Options,
    pub(crate) directory: Directory,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) metrics: Arc<Metrics>,
    /// One permit per open object database: bounds memory and open files. An activation
    /// waits for a permit and asks idle objects to hibernate meanwhile.
    pub(crate) open_permits: Arc<Semaphore>,
    /// The shared durability barrier every batch's effects wait for (`Durability::Group`,
    /// single node only: in cluster mode PostgreSQL's commit is the gate).
    pub(crate) barrier: Option<Arc<Barrier>>,
    /// The shared commit journal every batch is appended to (`Durability::Log`, single node
    /// only), whose sync its effects wait for.
    pub(crate) journal: Option<Arc<Journal>>,
    /// Connections of hibernated objects kept open for a while (never in cluster mode).
    pub(crate) warm: Arc<Warm>,
    /// Closes object databases: their checkpoints' shared syncs, and the turns of closes
    /// nothing waits for (`closing.rs`).
    pub(crate) closer: Arc<Closer>,
    /// Held until shutdown: a second process on the same data directory would break "one
    /// live instance per object".
    lock: std::sync::Mutex<Option<Flock<File>>>,
    /// Each open namespace, by name, as something that can read its objects' files (backup).
    files: std::sync::Mutex<HashMap<&'static str, Weak<dyn ObjectFiles>>>,
}

impl Shared {
    pub(crate) fn clock(&self) -> &dyn Clock {
        &*self.options.clock
    }

    /// The open namespace called `namespace`, as a reader of its objects' files; `None` if
    /// no namespace of that name is open (so none of its objects can be).
    pub(crate) fn files(&self, namespace: &str) -> Option<Arc<dyn ObjectFiles>> {
        self.files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(namespace)
            .and_then(Weak::upgrade)
    }

    /// The cluster this runtime is a node of, if any.
    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.options.cluster.as_ref()
    }

    /// How object files are synced: in cluster mode they are a cache of what PostgreSQL
    /// committed, so a lost tail is replayed from the log and `normal` (no fsync per commit,
    /// never a corrupt file: `Durability::object_syncs`) is enough.
    pub(crate) fn object_durability(&self) -> Durability {
        match self.options.cluster {
            Some(_) => Durability::Normal,
            None => self.options.durability,
        }
    }

    /// `<data>/objects/<namespace>/<2-hex>/<id>.sqlite`
    pub(crate) fn object_path(&self, namespace: &str, id: ObjectId) -> PathBuf {
        object_path(&self.options.data_dir, namespace, id)
    }
}

/// `<data>/objects/<namespace>/<2-hex>/<id>.sqlite`: where the object `id` of `namespace`
/// keeps its database.
pub(crate) fn object_path(data_dir: &Path, namespace: &str, id: ObjectId) -> PathBuf {
    let hex = id.to_hex();
    data_dir
        .join("objects")
        .join(namespace)
        .join(&hex[..2])
        .join(format!("{hex}.sqlite"))
}

/// A running object runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

impl Runtime {
    /// Opens the data directory (creating it if missing), takes its lock, opens the directory
    /// database and starts the alarm scheduler with every alarm it holds.
    ///
    /// # Errors
    ///
    /// The directory cannot be created or locked (another berth uses it), or its database
    /// cannot be opened.
    pub async fn open(options: Options) -> Result<Runtime, Error> {
        tokio::fs::create_dir_all(&options.data_dir).await?;
        let lock = lock_data_dir(&options.data_dir)?;
        if options.cluster.is_some() && options.data_dir.join("directory.sqlite").exists() {
            // Its objects' files hold state the cluster's log has never seen: serving them
            // as a node's cache would lose it the first time a tenant moves.
            return Err(Error::Other(anyhow::anyhow!(
                "{} holds a single-node berth's data; cluster mode starts from an empty data                  directory (moving single-node data into a cluster is not supported yet)",
                options.data_dir.display()
            )));
        }
        // Whatever this data directory last ran with, commits a power loss took from object
        // files are put back from the journal before anything reads them.
        let replayed = match options.cluster {
            None => {
                let data_dir = options.data_dir.clone();
                super::storage::on_blocking_pool("replaying the commit journal", move || {
                    journal::replay::replay(&data_dir)
                })
                .await?
            }
            Some(_) => journal::replay::Replayed::default(),
        };
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let directory = match &options.cluster {
            None => {
                // The directory's alarm must be durable before the object's (never later), and
                // its writes wait for no barrier or journal: under `Group` and `Log` it stays
                // `synchronous=FULL`.
                let durability = match options.durability {
                    Durability::Group | Durability::Log => Durability::Full,
                    other => other,
                };
                Directory::open(&options.data_dir.join("directory.sqlite"), durability).await?
            }
            Some(cluster) => Directory::open_cluster(cluster.pool().clone()).await?,
        };
        let scheduler = Scheduler::new(options.clock.clone());
        match &options.cluster {
            None => {
                for (namespace, id, at) in directory.alarms() {
                    scheduler.schedule(namespace, id, Some(at));
                }
            }
            Some(cluster) => {
                tracker.spawn(super::cluster::alarms::poll(
                    Arc::clone(cluster),
                    scheduler.clone(),
                    options.clock.clone(),
                    cancel.clone(),
                ));
            }
        }
        tracker.spawn(scheduler.clone().run(cancel.clone()));
        let metrics = Arc::new(Metrics::default());
        tracker.spawn(release_memory(metrics.clone(), cancel.clone()));
        let open_permits = Arc::new(Semaphore::new(options.max_live_objects.max(1)));
        let barrier = match (&options.cluster, options.durability) {
            (None, Durability::Group) => Some(Barrier::new(&options.data_dir, metrics.clone())?),
            _ => None,
        };
        if let Some(barrier) = &barrier {
            // A killed process may have left commits in the page cache that no barrier made
            // durable: make them so before anything is read and answered from them.
            barrier.sync().await;
        }
        let journal = match (&options.cluster, options.durability) {
            (None, Durability::Log) => Some(Journal::start(
                &options.data_dir,
                replayed.last_segment,
                metrics.clone(),
            )?),
            _ => None,
        };
        let checkpoint_syncs = match options.durability.object_syncs() {
            Syncs::Ordered => Some(Barrier::for_checkpoints(
                &options.data_dir,
                metrics.clone(),
            )?),
            Syncs::Sqlite => None,
        };
        let closer = Arc::new(Closer::new(checkpoint_syncs));
        let warm = Arc::new(match options.cluster {
            None => Warm::new(options.warm_objects, options.warm_idle),
            Some(_) => Warm::new(0, Duration::ZERO),
        });
        if warm.enabled() {
            tracker.spawn(super::warm::sweep(
                warm.clone(),
                metrics.clone(),
                closer.clone(),
                cancel.clone(),
            ));
        }
        let shared = Arc::new(Shared {
            barrier,
            journal,
            warm,
            closer,
            open_permits,
            options,
            directory,
            scheduler,
            cancel,
            tracker,
            metrics,
            lock: std::sync::Mutex::new(Some(lock)),
            files: std::sync::Mutex::default(),
        });
        Ok(Runtime { shared })
    }

    /// Opens the namespace of object type `O`, whose instances all share `env`.
    ///
    /// Alarms of `O` that were waiting for the namespace (due while the process was down) are
    /// delivered now.
    pub fn namespace<O: Object>(&self, env: Arc<O::Env>) -> Namespace<O> {
        let inner = Arc::new(NsInner::new(self.shared.clone(), env));
        self.shared.scheduler.register(O::NAMESPACE, inner.clone());
        let files: Arc<dyn ObjectFiles> = inner.clone();
        self.shared
            .files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(O::NAMESPACE, Arc::downgrade(&files));
        Namespace { inner }
    }

    /// What the runtime's parts share (for `backup`).
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The directory of this data directory.
    pub fn directory(&self) -> &Directory {
        &self.shared.directory
    }

    /// The runtime's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.options.clock
    }

    /// The runtime's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The runtime's options.
    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    /// How many object databases are open right now (never more than `max_live_objects`).
    pub fn open_objects(&self) -> usize {
        // Parked connections of hibernated objects hold permits too.
        let cap = self.shared.options.max_live_objects.max(1);
        cap - self.shared.open_permits.available_permits()
    }

    /// How many hibernated objects keep their database open (the warm tier).
    pub fn warm_objects(&self) -> usize {
        self.shared.warm.len()
    }

    /// How many objects have a pending alarm in the scheduler.
    pub fn pending_alarms(&self) -> usize {
        self.shared.scheduler.pending()
    }

    /// A token that is cancelled when the runtime shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.cancel.clone()
    }

    /// Stops the runtime: every object finishes the event it is handling, commits, and closes
    /// its database; queued requests are answered with `ShuttingDown`; background work is
    /// cancelled (objects redo it from their stored intent when they next open). Waits up to
    /// `deadline` for the tasks to end, then returns anyway.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        let finished = tokio::time::timeout(deadline, self.shared.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                ?deadline,
                "object tasks still running after the shutdown deadline"
            );
        }
        // Hibernated objects' parked connections: closed (and checkpointed) like the rest.
        for evicted in self.shared.warm.drain() {
            evicted.close(&self.shared.closer, Queue::Now).await;
        }
        // Every object closed: nothing is left for the journal to replay.
        if finished && let Some(journal) = self.shared.journal.clone() {
            let retired = tokio::task::spawn_blocking(move || journal.retire()).await;
            if let Ok(Err(err)) = retired {
                tracing::warn!(error = %err, "retiring the commit journal; the next start replays it");
            }
        }
        // Every object is closed: hand this node's objects to the rest of the cluster now
        // rather than when its membership lapses.
        if let Some(cluster) = self.shared.cluster() {
            cluster.leave().await;
        }
        // Objects write their final alarms to the directory as they close, so it goes last.
        if let Err(err) = self.shared.directory.close().await {
            tracing::warn!(error = %err, "closing the directory");
        }
        // Every file is closed: another runtime may take the data directory now.
        drop(
            self.shared
                .lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
    }
}

/// Takes an exclusive advisory lock on `<data>/berth.lock`.
fn lock_data_dir(data_dir: &Path) -> Result<Flock<File>, Error> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("berth.lock"))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| Error::InUse {
        dir: data_dir.display().to_string(),
        errno,
    })
}

/// How often freed memory may be handed back to the system.
const RELEASE_MEMORY_EVERY: Duration = Duration::from_secs(10);

/// While objects keep waking, freed memory is handed back at most once per this many passes
/// (five minutes).
const BUSY_RELEASE_EVERY_PASSES: u32 = 30;

/// A pass with at most one unit of work (a wake, an event) per this many closes is quiet enough.
const CLOSES_PER_WORK: u64 = 4;

/// Hands memory freed by hibernated objects back to the system.
///
/// An object's connection allocates its page cache, schema and prepared statements from
/// glibc's arenas (those of tokio's worker and blocking-pool threads it ran on); when the
/// object hibernates they are freed but stay resident, in heaps fragmented by the objects
/// still open. Measured while each connection had a thread of its own: 145 MiB resident for
/// 2.5 MiB in use after 2,000 tenants hibernated, 36 MiB after a trim. When to trim:
/// [`ReleasePolicy`].
async fn release_memory(metrics: Arc<Metrics>, cancel: CancellationToken) {
    let mut policy = ReleasePolicy::default();
    let mut tick = tokio::time::interval(RELEASE_MEMORY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let closed = metrics.hibernations.load(Ordering::Relaxed)
            + metrics.parked_closes.load(Ordering::Relaxed);
        // Wakes and the events objects handle: the work the heap's free pages would serve.
        let work =
            metrics.activations.load(Ordering::Relaxed) + metrics.events.load(Ordering::Relaxed);
        if policy.pass(closed, work) {
            // It walks every arena: keep it off the async workers.
            let _ = tokio::task::spawn_blocking(trim_heap).await;
            Metrics::add(&metrics.heap_trims, 1);
        }
    }
}

/// When a pass of [`release_memory`] trims the heap.
///
/// Only after objects closed, and only in a pass that did little else: a trim returns every
/// free page of every arena, holding each arena's lock while it walks it, so under load it
/// both stalls the allocations of the work running and hands back pages the next wakes
/// fault in again. So a pass trims when its work (wakes plus events handled) was at most one per [`CLOSES_PER_WORK`]
/// closes — a burst's objects hibernating while a few alarms run; no work at all once closes
/// have stopped — and a server that is never that quiet still trims once every
/// [`BUSY_RELEASE_EVERY_PASSES`] passes with closes in them.
#[derive(Debug, Default)]
struct ReleasePolicy {
    closed: u64,
    work: u64,
    /// Passes with closes since the last trim.
    waiting: u32,
}

impl ReleasePolicy {
    /// Takes the counters of objects closed (hibernated or parked connections closed) and of
    /// work done (wakes plus events) so far; returns whether to trim now.
    fn pass(&mut self, closed: u64, work: u64) -> bool {
        let closes = closed.saturating_sub(self.closed);
        let done = work.saturating_sub(self.work);
        self.closed = closed;
        self.work = work;
        if closes > 0 {
            self.waiting = self.waiting.saturating_add(1);
        }
        let quiet = done.saturating_mul(CLOSES_PER_WORK) <= closes;
        let trim = self.waiting > 0 && (quiet || self.waiting >= BUSY_RELEASE_EVERY_PASSES);
        if trim {
            self.waiting = 0;
        }
        trim
    }
}

/// Returns the free pages of every jemalloc arena to the system: jemalloc is the process's
/// malloc (`tikv-jemalloc-sys` links it unprefixed, so it replaces the C library's), and
/// `arena.<MALLCTL_ARENAS_ALL>.purge` is its counterpart of glibc's `malloc_trim(0)`.
#[allow(unsafe_code)]
fn trim_heap() {
    // `MALLCTL_ARENAS_ALL` (4096): every arena.
    const PURGE_ALL: &std::ffi::CStr = c"arena.4096.purge";
    // SAFETY: `arena.<i>.purge` reads and writes nothing, so every pointer is null and the
    // length zero, as jemalloc requires of it; the name is a NUL-terminated string that
    // outlives the call. jemalloc locks each arena itself: any thread may call it at any time.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        tracing::debug!(rc, "jemalloc refused to purge its arenas");
    }
}

#[cfg(test)]
mod tests {
    use super::{BUSY_RELEASE_EVERY_PASSES, ReleasePolicy};

    #[test]
    fn the_heap_is_trimmed_in_a_pass_of_closes_with_little_work() {
        let mut policy = ReleasePolicy::default();
        // Nothing closed: nothing to hand back.
        assert!(!policy.pass(0, 0));
        assert!(!policy.pass(0, 5));
        // Objects close while as much work runs: the freed memory is about to be reused.
        assert!(!policy.pass(3, 9));
        assert!(!policy.pass(7, 14));
        // The work stops: the next pass trims, whether or not more objects closed in it.
        assert!(policy.pass(7, 14));
        assert!(!policy.pass(7, 14), "once per batch of closes");
        assert!(policy.pass(9, 14), "closes with no work trim at once");
        // A burst hibernating while a few alarms run: quiet enough, so trimmed.
        assert!(
            policy.pass(109, 30),
            "100 closes against 16 wakes and events"
        );
        assert!(
            !policy.pass(149, 30 + 11),
            "40 closes against 11 is a server at work"
        );
    }

    #[test]
    fn a_server_that_never_goes_quiet_still_trims_now_and_then() {
        let mut policy = ReleasePolicy::default();
        let mut trims = Vec::new();
        for pass in 1..=u64::from(BUSY_RELEASE_EVERY_PASSES) * 2 {
            if policy.pass(pass, pass) {
                trims.push(pass);
            }
        }
        let every = u64::from(BUSY_RELEASE_EVERY_PASSES);
        assert_eq!(trims, vec![every, 2 * every]);
    }
}
