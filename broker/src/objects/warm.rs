//! The warm tier of hibernation: connections of hibernated objects, kept open for a while.
//!
//! An object that hibernates leaves memory, but opening its database again is most of what a
//! wake costs: a new connection, the pragmas, the schema read and parsed again, every statement
//! prepared afresh. So a hibernating object (single node only) parks its
//! connection here instead of closing it, with its commit gate and its open-object permit
//! (a parked connection is still an open database: it counts against `max_live_objects` and
//! its files). The next activation of the same object takes it back and skips all of that
//! but the statements an object chooses not to keep (a tenant's load, run once per wake).
//!
//! Bounded twice: at most `warm_objects` parked connections (the oldest is closed when a new
//! one arrives), and none parked longer than `warm_idle` (a sweep closes them). An activation
//! that finds no free open-object permit closes the oldest parked connection before it asks a
//! live object to hibernate, and an object that hibernates while no permit is free (the cap
//! asked it to) closes instead of parking. Closing a parked connection is the close hibernation would have
//! done: SQLite checkpoints the WAL into the database.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use super::sqlite::Db;
use super::storage;

/// A hibernated object's open database.
pub(crate) struct Parked {
    pub(crate) conn: Db,
    /// The connection's commit gate (`session::install_gate`), installed once per connection.
    pub(crate) gate: Arc<AtomicBool>,
    /// The open-object permit the connection holds.
    pub(crate) permit: OwnedSemaphorePermit,
}

impl Parked {
    /// Closes the connection (checkpointing its WAL) and frees its permit.
    pub(crate) async fn close(self) {
        if let Err(err) = storage::close(self.conn).await {
            tracing::warn!(error = %err, "closing a parked object database");
        }
        drop(self.permit);
    }
}

struct Entry {
    parked: Parked,
    tick: u64,
    since: Instant,
}

/// The parked connections, by object file; oldest first in `order`.
pub(crate) struct Warm {
    cap: usize,
    idle: Duration,
    inner: std::sync::Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_path: HashMap<PathBuf, Entry>,
    order: BTreeMap<u64, PathBuf>,
    tick: u64,
}

impl Warm {
    /// A warm tier of at most `cap` connections, each kept at most `idle`.
    pub(crate) fn new(cap: usize, idle: Duration) -> Self {
        Warm {
            cap,
            idle,
            inner: std::sync::Mutex::default(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether hibernating objects park their connections at all.
    pub(crate) fn enabled(&self) -> bool {
        self.cap > 0 && !self.idle.is_zero()
    }

    /// Parks the connection of the object at `path`. Returns what must be closed now: the
    /// oldest parked connection when the tier is full.
    pub(crate) fn park(&self, path: PathBuf, parked: Parked) -> Option<Parked> {
        if !self.enabled() {
            return Some(parked);
        }
        let mut inner = self.inner();
        inner.tick += 1;
        let tick = inner.tick;
        inner.order.insert(tick, path.clone());
        let old = inner.by_path.insert(
            path,
            Entry {
                parked,
                tick,
                since: Instant::now(),
            },
        );
        if let Some(old) = old {
            // One instance per object: never two parked connections for one file.
            inner.order.remove(&old.tick);
            return Some(old.parked);
        }
        if inner.by_path.len() > self.cap {
            return inner.pop_oldest();
        }
        None
    }

    /// Takes back the parked connection of the object at `path`, if there is one.
    pub(crate) fn take(&self, path: &Path) -> Option<Parked> {
        let mut inner = self.inner();
        let entry = inner.by_path.remove(path)?;
        inner.order.remove(&entry.tick);
        Some(entry.parked)
    }

    /// The oldest parked connection, to close for an activation that needs its permit.
    pub(crate) fn take_oldest(&self) -> Option<Parked> {
        self.inner().pop_oldest()
    }

    /// Every connection parked longer than the tier's idle time.
    pub(crate) fn expired(&self) -> Vec<Parked> {
        let mut inner = self.inner();
        let mut out = Vec::new();
        while let Some((_, path)) = inner.order.first_key_value() {
            let expired = inner
                .by_path
                .get(path)
                .is_none_or(|entry| entry.since.elapsed() >= self.idle);
            if !expired {
                break;
            }
            match inner.pop_oldest() {
                Some(parked) => out.push(parked),
                None => break,
            }
        }
        out
    }

    /// Every parked connection (at shutdown).
    pub(crate) fn drain(&self) -> Vec<Parked> {
        let mut inner = self.inner();
        inner.order.clear();
        inner
            .by_path
            .drain()
            .map(|(_, entry)| entry.parked)
            .collect()
    }

    /// How many connections are parked.
    pub(crate) fn len(&self) -> usize {
        self.inner().by_path.len()
    }
}

impl Inner {
    fn pop_oldest(&mut self) -> Option<Parked> {
        let (_, path) = self.order.pop_first()?;
        self.by_path.remove(&path).map(|entry| entry.parked)
    }
}

/// How often the sweep looks for connections parked too long.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Closes parked connections once they are older than the tier's idle time, one at a time,
/// each taking a turn among the runtime's background closes (`closes`).
pub(crate) async fn sweep(
    warm: Arc<Warm>,
    metrics: Arc<super::Metrics>,
    closes: Arc<tokio::sync::Semaphore>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for parked in warm.expired() {
            let _turn = closes.acquire().await;
            parked.close().await;
            super::Metrics::add(&metrics.parked_closes, 1);
        }
    }
}
