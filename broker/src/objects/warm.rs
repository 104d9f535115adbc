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
//!
//! A connection taken out of the tier to be closed ([`Evicted`]) still has the file open
//! until its close ends, and object files are opened without file locks (`unix-none`,
//! exclusive locking mode: one connection per file is the runtime's own rule). So until that
//! close ends, the object's next activation waits for it ([`Warm::take`]): a second
//! connection opened beside one that is checkpointing and truncating the WAL reads pages that
//! are not there (`SQLITE_IOERR_SHORT_READ`) or loses commits.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, watch};

use super::closing::{Closer, Queue};
use super::sqlite::Db;

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
    pub(crate) async fn close(self, closer: &Closer, queue: Queue) {
        if let Err(err) = closer.close(self.conn, queue).await {
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
    /// Files whose evicted connection is still open: the eviction's tick, and a signal that
    /// turns `true` when it has closed.
    closing: HashMap<PathBuf, (u64, watch::Receiver<bool>)>,
}

/// A parked connection taken out of the tier to be closed (the tier was full, the connection
/// idle too long, a permit needed, or the runtime stopping). Until it is closed — by
/// [`Evicted::close`], or by being dropped, which closes the connection too — an activation
/// of its object waits in [`Warm::take`].
pub(crate) struct Evicted {
    parked: Option<Parked>,
    warm: Arc<Warm>,
    path: PathBuf,
    tick: u64,
    closed: watch::Sender<bool>,
}

impl Evicted {
    /// Closes the connection (checkpointing its WAL) and frees its permit; then its object
    /// may open the file again.
    pub(crate) async fn close(mut self, closer: &Closer, queue: Queue) {
        if let Some(parked) = self.parked.take() {
            parked.close(closer, queue).await;
        }
    }
}

impl Drop for Evicted {
    fn drop(&mut self) {
        // Closed first (a `Db` closes itself when dropped), announced after.
        drop(self.parked.take());
        let mut inner = self.warm.inner();
        if inner
            .closing
            .get(&self.path)
            .is_some_and(|(tick, _)| *tick == self.tick)
        {
            inner.closing.remove(&self.path);
        }
        drop(inner);
        let _ = self.closed.send(true);
    }
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
    /// oldest parked connection when the tier is full (or, with the tier off, `parked` itself).
    pub(crate) fn park(self: &Arc<Self>, path: PathBuf, parked: Parked) -> Option<Evicted> {
        let mut inner = self.inner();
        if !self.enabled() {
            return Some(self.evicted(&mut inner, path, parked));
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.order.insert(tick, path.clone());
        let entry = Entry {
            parked,
            tick,
            since: Instant::now(),
        };
        if let Some(old) = inner.by_path.insert(path.clone(), entry) {
            // One instance per object: never two parked connections for one file.
            inner.order.remove(&old.tick);
            return Some(self.evicted(&mut inner, path, old.parked));
        }
        if inner.by_path.len() > self.cap {
            return self.evict_oldest(&mut inner);
        }
        None
    }

    /// Takes back the parked connection of the object at `path`, if there is one. If a
    /// connection of the object is being closed ([`Evicted`]), waits until it is closed
    /// first: only then may the caller open the file.
    ///
    /// The caller is the object's only user at that moment (its activation, or a caller
    /// holding it pinned), so nothing parks another connection of it meanwhile.
    pub(crate) async fn take(&self, path: &Path) -> Option<Parked> {
        loop {
            let mut closed = {
                let mut inner = self.inner();
                match inner.closing.get(path) {
                    Some((_, closed)) => closed.clone(),
                    None => {
                        let entry = inner.by_path.remove(path)?;
                        inner.order.remove(&entry.tick);
                        return Some(entry.parked);
                    }
                }
            };
            // Closed, or its sender dropped: the eviction has left `closing` either way.
            let _ = closed.wait_for(|closed| *closed).await;
        }
    }

    /// The oldest parked connection, to close for an activation that needs its permit.
    pub(crate) fn take_oldest(self: &Arc<Self>) -> Option<Evicted> {
        let mut inner = self.inner();
        self.evict_oldest(&mut inner)
    }

    /// The oldest parked connection, if it has been parked longer than the tier's idle time.
    pub(crate) fn expired_oldest(self: &Arc<Self>) -> Option<Evicted> {
        let mut inner = self.inner();
        let (_, path) = inner.order.first_key_value()?;
        let expired = inner
            .by_path
            .get(path)
            .is_none_or(|entry| entry.since.elapsed() >= self.idle);
        if !expired {
            return None;
        }
        self.evict_oldest(&mut inner)
    }

    /// Every parked connection (at shutdown).
    pub(crate) fn drain(self: &Arc<Self>) -> Vec<Evicted> {
        let mut inner = self.inner();
        let mut out = Vec::new();
        while let Some(evicted) = self.evict_oldest(&mut inner) {
            out.push(evicted);
        }
        out
    }

    /// How many connections are parked.
    pub(crate) fn len(&self) -> usize {
        self.inner().by_path.len()
    }

    fn evict_oldest(self: &Arc<Self>, inner: &mut Inner) -> Option<Evicted> {
        let (_, path) = inner.order.pop_first()?;
        let entry = inner.by_path.remove(&path)?;
        Some(self.evicted(inner, path, entry.parked))
    }

    /// `parked`, out of the tier: its file counts as open until it is closed.
    fn evicted(self: &Arc<Self>, inner: &mut Inner, path: PathBuf, parked: Parked) -> Evicted {
        inner.tick += 1;
        let tick = inner.tick;
        let (closed, waiting) = watch::channel(false);
        inner.closing.insert(path.clone(), (tick, waiting));
        Evicted {
            parked: Some(parked),
            warm: Arc::clone(self),
            path,
            tick,
            closed,
        }
    }
}

/// How often the sweep looks for connections parked too long.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Closes parked connections once they are older than the tier's idle time, one at a time,
/// each holding a turn among the runtime's background closes for its whole close.
pub(crate) async fn sweep(
    warm: Arc<Warm>,
    metrics: Arc<super::Metrics>,
    closer: Arc<Closer>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        // One at a time, each taken out only once its turn has come: until then it stays
        // parked, and its object's wake takes it back instead of waiting for its close.
        loop {
            let _turn = closer.turn().await;
            let Some(evicted) = warm.expired_oldest() else {
                break;
            };
            evicted.close(&closer, Queue::Now).await;
            super::Metrics::add(&metrics.parked_closes, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::{Parked, Warm};
    use crate::objects::closing::{Closer, Queue};
    use crate::objects::session;
    use crate::objects::storage::{self, Access, Durability};

    fn parked(dir: &Path, name: &str, permits: &Arc<Semaphore>) -> (PathBuf, Parked) {
        let path = dir.join(name);
        let mut conn = storage::open_db(&path, Durability::Full, Access::Sole, true).expect("open");
        let gate = session::install_gate(&mut conn);
        let permit = Arc::clone(permits).try_acquire_owned().expect("permit");
        (path, Parked { conn, gate, permit })
    }

    /// A connection evicted from the tier still has its file open until it is closed, and
    /// object files are opened without file locks: until then, the object's activation
    /// (`take`) must wait, and open the file only after it — whether the eviction is closed
    /// or dropped (a close task that failed).
    #[tokio::test]
    async fn an_activation_waits_until_its_evicted_connection_is_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let permits = Arc::new(Semaphore::new(8));
        let warm = Arc::new(Warm::new(1, Duration::from_secs(600)));
        let (a, parked_a) = parked(dir.path(), "a.sqlite", &permits);
        let (b, parked_b) = parked(dir.path(), "b.sqlite", &permits);
        assert!(warm.park(a.clone(), parked_a).is_none());
        let evicted = warm
            .park(b.clone(), parked_b)
            .expect("a tier of one: a's connection is evicted");
        assert_eq!(warm.len(), 1);

        let mut take_a = std::pin::pin!(warm.take(&a));
        assert!(
            futures::poll!(&mut take_a).is_pending(),
            "a's evicted connection is still open: its activation waits"
        );
        evicted.close(&Closer::new(None), Queue::Now).await;
        assert!(
            take_a.await.is_none(),
            "closed: the activation opens the file itself"
        );
        assert_eq!(permits.available_permits(), 7, "the evicted permit is free");
        assert!(
            warm.take(&b).await.is_some(),
            "b's connection is taken back"
        );

        // Dropped instead of closed: the connection closes with it, and the wait ends.
        let (a, parked_a) = parked(dir.path(), "a.sqlite", &permits);
        assert!(warm.park(a.clone(), parked_a).is_none());
        let evicted = warm.take_oldest().expect("a's connection");
        let mut take_a = std::pin::pin!(warm.take(&a));
        assert!(futures::poll!(&mut take_a).is_pending());
        drop(evicted);
        assert!(take_a.await.is_none());
        assert_eq!(permits.available_permits(), 8, "every permit is free");
    }
}
