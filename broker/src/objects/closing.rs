//! Closing an object's database: the checkpoint before the close, and for closes that
//! nothing waits for, their turns and their syncs shared with every file closing at the same
//! moment.
//!
//! Under ordered syncs (`normal`, `group`, `log`: `sqlite/wal.rs`) a close's checkpoint
//! syncs three times: the WAL before its frames are copied into the database, the database
//! before the WAL is emptied, and the emptied WAL before anything writes it again. Done by
//! each file alone that is four `fsync`s per close (the WAL's first also syncs its
//! directory). After a burst of traffic to many tenants, thousands of them hibernate within
//! the same seconds, and their syncs queue on the disk beside the commit journal's.
//!
//! So a close nothing waits for ([`Queue::Background`]: an idle object hibernating, a parked
//! connection pushed out of the warm tier) makes each of those syncs with the checkpoints'
//! barrier (`Barrier::for_checkpoints`): one `syncfs`, gathered for a few milliseconds,
//! covers every file that reached that step by then, and the order inside each file is kept.
//! Each step that works the CPU or the disk (the copy, the truncation, the close) takes a
//! turn among [`BACKGROUND_CLOSES`]; waiting for a sync holds none. A close something waits
//! for ([`Queue::Now`]: the live-object cap freeing a permit, shutdown, a backup) syncs its
//! own files at once, as `Db::close` does alone.
//!
//! A shared sync that fails aborts the process, as the output gate's does (`barrier.rs`): the
//! kernel may have dropped the pages the next step would build on, and a retry cannot tell.
//! The restart recovers each file from what the disk really holds.

use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::Error;
use super::barrier::Barrier;
use super::sqlite::{Db, SqliteError};
use super::storage;

/// How many steps of closes nothing waits for run at once.
///
/// A close checkpoints the WAL into the database and frees the connection's memory. After a
/// burst of traffic to many tenants, thousands of them reach their idle time within the same
/// seconds; closed all at once, they took the CPU and the disk from the requests and alarms
/// beside them. In a queue of this width they finish in the background instead: W4's grant
/// p99 beside such a storm halved (BENCHMARKS.md). The queue alone does not bring the alarms
/// back on time — the same work is only spread — which is why idle objects also put
/// hibernation off while alarms run late (`Instance::defer_hibernation`).
pub(crate) const BACKGROUND_CLOSES: usize = 2;

/// Whether a close queues behind other background closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Queue {
    /// Nothing waits for it: each step takes a turn among [`BACKGROUND_CLOSES`], and the
    /// checkpoint's syncs are shared.
    Background,
    /// Something waits for it, or the caller holds a turn for the whole close already: it
    /// closes at once, syncing its own files.
    Now,
}

/// Closes object databases for the runtime.
pub(crate) struct Closer {
    /// The checkpoints' shared syncs under ordered syncs; `None` when SQLite syncs object
    /// files itself (`full`, `off`).
    sync: Option<Arc<Barrier>>,
    turns: Semaphore,
}

impl Closer {
    pub(crate) fn new(sync: Option<Arc<Barrier>>) -> Closer {
        Closer {
            sync,
            turns: Semaphore::new(BACKGROUND_CLOSES),
        }
    }

    /// A turn among background closes, for a caller that holds it over a whole close (and
    /// closes with [`Queue::Now`]).
    pub(crate) async fn turn(&self) -> Option<SemaphorePermit<'_>> {
        self.turns.acquire().await.ok()
    }

    /// Checkpoints and closes `db`. A background close under ordered syncs runs its
    /// checkpoint's steps in turns, between shared syncs; any other closes as the connection
    /// would alone (`Db::close`).
    ///
    /// # Errors
    ///
    /// A step or the close failed. The connection is closed all the same; what a failed step
    /// left is whole (a WAL with every commit in it, or a database that holds them all), and
    /// the close retried the checkpoint with its own syncs or left the WAL for the next open.
    pub(crate) async fn close(&self, mut db: Db, queue: Queue) -> Result<(), Error> {
        let sync = match (&self.sync, queue) {
            (Some(sync), Queue::Background) => sync,
            (_, Queue::Now) => return storage::close(db).await,
            (None, Queue::Background) => return self.finish(db, Ok(())).await,
        };
        match db.wal_written() {
            Ok(true) => {}
            Ok(false) => return self.finish(db, Ok(())).await,
            Err(err) => return self.finish(db, Err(err)).await,
        }
        sync.sync().await;
        let (db, copied) = self.step(db, Db::copy_synced_wal).await?;
        match copied {
            Ok(true) => {}
            Ok(false) => return self.finish(db, Ok(())).await,
            Err(err) => return self.finish(db, Err(err)).await,
        }
        sync.sync().await;
        let (db, emptied) = self.step(db, Db::empty_copied_wal).await?;
        if emptied.is_ok() {
            sync.sync().await;
        }
        self.finish(db, emptied).await
    }

    /// Runs one step on `db` on tokio's blocking pool, in its turn.
    async fn step<T: Send + 'static>(
        &self,
        mut db: Db,
        work: fn(&mut Db) -> Result<T, SqliteError>,
    ) -> Result<(Db, Result<T, SqliteError>), Error> {
        let _turn = self.turn().await;
        storage::on_blocking_pool("checkpointing an object file", move || {
            let result = work(&mut db);
            Ok((db, result))
        })
        .await
    }

    /// Closes `db` in its turn after the steps (the checkpoint in the close finds an empty
    /// WAL, or retries what a failed step left with its own syncs), with the first error.
    async fn finish(&self, db: Db, steps: Result<(), SqliteError>) -> Result<(), Error> {
        let _turn = self.turn().await;
        let closed = storage::close(db).await;
        steps?;
        closed
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::{Closer, Queue};
    use crate::objects::barrier::Barrier;
    use crate::objects::metrics::Metrics;
    use crate::objects::sqlite::Db;
    use crate::objects::storage::{self, Access, Durability};

    fn open(path: &Path, durability: Durability) -> Db {
        storage::open_db(path, durability, Access::Sole, true).expect("open")
    }

    fn write(db: &mut Db, rows: u32) {
        db.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
            .expect("create");
        for _ in 0..rows {
            db.execute_batch("INSERT INTO t (v) VALUES (randomblob(3000))")
                .expect("insert");
        }
    }

    fn rows_of_file_alone(path: &Path, dir: &Path) -> i64 {
        // The database file copied without its WAL: what it holds by itself.
        let copy = dir.join("alone.sqlite");
        std::fs::copy(path, &copy).expect("copy");
        let mut db = open(&copy, Durability::Full);
        let (count,): (i64,) = db
            .query("SELECT count(*) FROM t")
            .fetch_one()
            .expect("count");
        count
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closes_share_the_barriers_syncs_and_leave_every_commit_in_the_database() {
        let dir = tempfile::tempdir().expect("dir");
        let metrics = Arc::new(Metrics::default());
        let barrier = Barrier::for_checkpoints(dir.path(), metrics.clone()).expect("barrier");
        let closer = Arc::new(Closer::new(Some(barrier)));
        let paths: Vec<_> = (0..8)
            .map(|i| dir.path().join(format!("o{i}.sqlite")))
            .collect();
        let mut dbs = Vec::new();
        for path in &paths {
            let mut db = open(path, Durability::Log);
            write(&mut db, 5);
            dbs.push(db);
        }
        let closes = dbs.into_iter().map(|db| {
            let closer = Arc::clone(&closer);
            tokio::spawn(async move { closer.close(db, Queue::Background).await })
        });
        for close in futures::future::join_all(closes).await {
            close.expect("task").expect("close");
        }
        let syncs = metrics.checkpoint_syncs.load(Ordering::Relaxed);
        assert!(
            (3..24).contains(&syncs),
            "eight closes at once share their syncs: {syncs}"
        );
        for path in &paths {
            let wal = path.with_extension("sqlite-wal");
            assert_eq!(
                std::fs::metadata(&wal).map_or(0, |m| m.len()),
                0,
                "{wal:?} emptied"
            );
            assert_eq!(
                rows_of_file_alone(path, dir.path()),
                5,
                "{path:?} holds every row"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_background_close_of_a_written_wal_uses_the_shared_syncs() {
        let dir = tempfile::tempdir().expect("dir");
        let metrics = Arc::new(Metrics::default());
        let barrier = Barrier::for_checkpoints(dir.path(), metrics.clone()).expect("barrier");
        let closer = Closer::new(Some(barrier));
        let syncs = || metrics.checkpoint_syncs.load(Ordering::Relaxed);
        let path = dir.path().join("o.sqlite");
        let mut db = open(&path, Durability::Log);
        write(&mut db, 3);
        closer.close(db, Queue::Background).await.expect("close");
        assert_eq!(
            syncs(),
            3,
            "one shared sync before each step and after the last"
        );
        assert_eq!(rows_of_file_alone(&path, dir.path()), 3);

        // Opened and closed without a commit: its WAL is empty, nothing to sync.
        let db = open(&path, Durability::Log);
        closer.close(db, Queue::Background).await.expect("close");
        assert_eq!(syncs(), 3);

        // A close something waits for syncs its own files at once.
        let mut db = open(&path, Durability::Log);
        write(&mut db, 2);
        closer.close(db, Queue::Now).await.expect("close");
        assert_eq!(syncs(), 3);
        assert_eq!(rows_of_file_alone(&path, dir.path()), 5);

        // SQLite's own syncs (`full`): the barrier is not asked.
        let mut db = open(&dir.path().join("full.sqlite"), Durability::Full);
        write(&mut db, 1);
        closer.close(db, Queue::Background).await.expect("close");
        assert_eq!(syncs(), 3);
    }
}
