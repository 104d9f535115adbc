//! The shared durability barrier: one `syncfs(2)` for every object waiting at the same moment.
//!
//! With [`Durability::Group`](super::Durability::Group) object databases run in WAL mode with
//! `synchronous=OFF`: `COMMIT` writes the WAL (so the write survives a process crash at once, it is
//! in the page cache) but does not fsync it; only checkpoints sync, in the order that keeps every
//! file consistent (`sqlite/wal.rs`). What makes a commit survive power loss is this barrier: after
//! its commit, a batch waits in [`Barrier::sync`] before anything leaves the object (replies,
//! spawned provider calls and webhook deliveries, broadcast events: the output gate). One task
//! coalesces every waiter: it calls `syncfs` on the data directory's filesystem, which makes every
//! write done before the call durable, and releases all the waiters that arrived before it started.
//! Objects on one disk thus share one flush, where one file per object under `synchronous=FULL`
//! means no two tenants ever share an fsync.
//!
//! The same barrier, gathering its waiters for a few milliseconds before each sync
//! ([`Barrier::for_checkpoints`]), makes the syncs of background closes' checkpoints
//! (`closing.rs`) under every durability with ordered syncs.
//!
//! A failed `syncfs` means the kernel may have dropped dirty pages the waiters' replies
//! would vouch for, and a retry cannot tell (it reports success for pages already dropped).
//! Like PostgreSQL after a failed fsync, the process aborts: nothing unsynced was observed,
//! and the restart reads what the disk really holds.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::Error;
use super::metrics::Metrics;

/// The name of the failpoint that holds the output gate's barrier (not the checkpoints') while
/// the file [`HOLD_FILE`] exists in the data directory (tests only: see `crate::failpoint`).
pub const HOLD_FAILPOINT: &str = "durability.barrier.hold";
/// The file in the data directory that holds the barrier while [`HOLD_FAILPOINT`] is armed.
pub const HOLD_FILE: &str = "failpoint-hold-barrier";

/// How long the sync thread waits for a next waiter before it ends (a busy server keeps it,
/// an idle one or a finished test's runtime does not).
const LINGER: Duration = Duration::from_secs(1);

/// How long the checkpoints' barrier gathers waiters before each sync (`Barrier::for_checkpoints`).
///
/// Closes nothing waits for make their checkpoints' syncs here, and after a burst of traffic
/// thousands of them close within seconds. Synced at once, every few of them got a `syncfs`
/// of its own, back to back — each one a journal commit and a flush of the disk's cache,
/// ahead of the commit journal's own — and the grants beside them waited seconds
/// (BENCHMARKS.md). A close waits for nobody's reply; gathered for this long, one `syncfs`
/// covers every close that reached the same step, at most a few dozen per second.
pub(crate) const CHECKPOINT_GATHER: Duration = Duration::from_millis(25);

/// Coalesces durability requests of all objects into shared `syncfs` calls.
pub(crate) struct Barrier {
    /// An open handle on the data directory: `syncfs` syncs the filesystem it lies on.
    dir: std::fs::File,
    data_dir: PathBuf,
    state: Mutex<State>,
    /// Signalled when a waiter arrives while the sync thread lingers.
    arrived: Condvar,
    /// The latest generation whose sync completed.
    done: watch::Sender<u64>,
    kind: Kind,
    metrics: Arc<Metrics>,
}

/// What a barrier's syncs are for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The output gate of `--durability group`: a sync as soon as anyone waits.
    Gate,
    /// The checkpoints of background closes: waiters gathered for [`CHECKPOINT_GATHER`].
    Checkpoints,
}

impl Kind {
    /// How long the sync thread waits, once someone wants a sync, for more to join it.
    fn gather(self) -> Duration {
        match self {
            Kind::Gate => Duration::ZERO,
            Kind::Checkpoints => CHECKPOINT_GATHER,
        }
    }

    /// The counter of this kind's syncs.
    fn counter(self, metrics: &Metrics) -> &AtomicU64 {
        match self {
            Kind::Gate => &metrics.durability_syncs,
            Kind::Checkpoints => &metrics.checkpoint_syncs,
        }
    }
}

struct State {
    /// The generation the next sync will have; a waiter arriving now needs it.
    next: u64,
    /// Someone waits for `next`.
    wanted: bool,
    /// The sync task is running (it takes `next` when its current sync ends).
    running: bool,
}

impl Barrier {
    /// A barrier for the filesystem that holds `data_dir`.
    ///
    /// # Errors
    ///
    /// The directory cannot be opened.
    pub(crate) fn new(data_dir: &Path, metrics: Arc<Metrics>) -> Result<Arc<Barrier>, Error> {
        Barrier::open(data_dir, metrics, Kind::Gate)
    }

    /// A barrier for the checkpoints of closing object files (`closing.rs`) on the filesystem
    /// that holds `data_dir`: it gathers waiters for [`CHECKPOINT_GATHER`] before each sync.
    ///
    /// # Errors
    ///
    /// The directory cannot be opened.
    pub(crate) fn for_checkpoints(
        data_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Barrier>, Error> {
        Barrier::open(data_dir, metrics, Kind::Checkpoints)
    }

    fn open(data_dir: &Path, metrics: Arc<Metrics>, kind: Kind) -> Result<Arc<Barrier>, Error> {
        let dir = std::fs::File::open(data_dir)?;
        Ok(Arc::new(Barrier {
            dir,
            data_dir: data_dir.to_owned(),
            state: Mutex::new(State {
                next: 1,
                wanted: false,
                running: false,
            }),
            arrived: Condvar::new(),
            done: watch::Sender::new(0),
            kind,
            metrics,
        }))
    }

    /// Returns once every write this process made before the call is durable.
    pub(crate) async fn sync(self: &Arc<Self>) {
        let mut done = self.done.subscribe();
        let generation = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.wanted = true;
            if state.running {
                self.arrived.notify_one();
            } else {
                state.running = true;
                let barrier = Arc::clone(self);
                let started = std::thread::Builder::new()
                    .name("berth-durability".into())
                    .spawn(move || barrier.run());
                if let Err(err) = started {
                    // Without the syncing thread nothing could ever be acknowledged.
                    eprintln!("cannot start the durability thread: {err}");
                    std::process::abort();
                }
            }
            state.next
        };
        // The sender lives as long as `self`, so this only ends when the generation is done.
        let _ = done.wait_for(|&d| d >= generation).await;
    }

    /// The sync loop, on a thread of its own (a `syncfs` may block for milliseconds): one
    /// sync per generation while anyone waits; the thread ends after [`LINGER`] without one.
    fn run(&self) {
        loop {
            {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if !state.wanted {
                    state = self
                        .arrived
                        .wait_timeout_while(state, LINGER, |state| !state.wanted)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if !state.wanted {
                    state.running = false;
                    return;
                }
            }
            // Whoever arrives meanwhile waits for the same generation.
            let gather = self.kind.gather();
            if !gather.is_zero() {
                std::thread::sleep(gather);
            }
            let generation = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                state.wanted = false;
                let generation = state.next;
                state.next += 1;
                generation
            };
            // The failpoint holds the output gate's barrier, not the closes'.
            if self.kind == Kind::Gate {
                crate::failpoint::hold_while(HOLD_FAILPOINT, &self.data_dir.join(HOLD_FILE));
            }
            if let Err(err) = syncfs(&self.dir) {
                tracing::error!(error = %err, "syncfs failed: committed writes may be lost; aborting so that nothing unsynced is acknowledged");
                eprintln!("syncfs of the data directory failed: {err}; aborting");
                std::process::abort();
            }
            Metrics::add(self.kind.counter(&self.metrics), 1);
            self.done.send_replace(generation);
        }
    }
}

/// `syncfs(2)`: every write made to the filesystem holding `file` before the call is durable
/// when it returns.
pub(crate) fn syncfs(file: &std::fs::File) -> std::io::Result<()> {
    // SAFETY: `syncfs` takes an open descriptor, which the borrowed `file` keeps open.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
