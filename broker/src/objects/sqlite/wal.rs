//! Which commits of a connection wait for the disk under `synchronous=NORMAL`: the WAL's size,
//! as a hook SQLite calls after every commit reports it.
//!
//! Under `NORMAL` a commit writes the WAL and syncs nothing, with two exceptions: the commit
//! that starts the WAL afresh (an empty WAL — a woken object's first commit, the WAL emptied by
//! its last close's checkpoint — or one a checkpoint has copied back whole) writes and syncs the
//! WAL's header, and a checkpoint syncs the WAL and then the database. Knowing the WAL's size
//! after each commit, the owner runs only those off tokio's workers and every other commit right
//! on its task: moving a task off a worker (`block_in_place`) hands the worker's queue to another
//! thread, per commit.
//!
//! The hook is the one SQLite's automatic checkpoint uses, so installing it turns that off: the
//! owner checkpoints ([`Wal::checkpoint`]) once [`Wal::checkpoint_due`] says so, as SQLite would
//! have after the commit. A connection whose owner forgets (a migration's or a replay's commits)
//! is checkpointed by the hook itself, on the committing thread as SQLite's own hook does, once
//! the WAL holds twice that.

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicI64, Ordering};

use libsqlite3_sys as ffi;

use super::SqliteError;

/// Frames the WAL holds when a checkpoint is due: SQLite's own automatic checkpoint's default
/// (`SQLITE_DEFAULT_WAL_AUTOCHECKPOINT`).
pub(super) const CHECKPOINT_FRAMES: i64 = 1000;

/// What the hook last saw of one connection's WAL. Boxed by its [`super::Db`], so the hook's
/// pointer to it stays put.
pub(super) struct Wal {
    /// Frames in the WAL after the last commit or checkpoint; `0` when the next commit starts it
    /// afresh; `-1` until the first commit (what the WAL holds at open is not known).
    frames: AtomicI64,
}

impl Wal {
    pub(super) fn new() -> Box<Wal> {
        Box::new(Wal {
            frames: AtomicI64::new(-1),
        })
    }

    /// Whether the next commit may sync: it starts the WAL afresh, or nothing is known yet.
    pub(super) fn commit_may_sync(&self) -> bool {
        self.frames.load(Ordering::Relaxed) <= 0
    }

    /// Whether the WAL is long enough that SQLite would have checkpointed it.
    pub(super) fn checkpoint_due(&self) -> bool {
        self.frames.load(Ordering::Relaxed) >= CHECKPOINT_FRAMES
    }

    /// Copies the WAL back into the database (`PASSIVE`: this is the file's only connection, so
    /// nothing holds it back) and notes what is left.
    pub(super) fn checkpoint(&self, db: *mut ffi::sqlite3) -> Result<(), SqliteError> {
        let left = checkpoint(db, c"main".as_ptr()).map_err(|code| SqliteError {
            code,
            message: "checkpointing the WAL failed".to_owned(),
        })?;
        self.frames.store(left, Ordering::Relaxed);
        Ok(())
    }

    /// The hook's argument for `sqlite3_wal_hook`.
    pub(super) fn as_arg(&self) -> *mut c_void {
        std::ptr::from_ref(self).cast_mut().cast()
    }
}

/// A `PASSIVE` checkpoint of database `name`: the frames left to copy (`0` when the next commit
/// starts the WAL afresh), or SQLite's error code.
fn checkpoint(db: *mut ffi::sqlite3, name: *const c_char) -> Result<i64, c_int> {
    let (mut log, mut copied): (c_int, c_int) = (0, 0);
    // SAFETY: `db` is an open connection used by this thread only (the caller holds it), `name`
    // a NUL-terminated schema name; the two out-pointers are written during the call only.
    #[allow(unsafe_code)]
    let rc = unsafe {
        ffi::sqlite3_wal_checkpoint_v2(
            db,
            name,
            ffi::SQLITE_CHECKPOINT_PASSIVE,
            &mut log,
            &mut copied,
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(rc);
    }
    Ok(if copied >= log { 0 } else { i64::from(log) })
}

/// The WAL hook: SQLite calls it after each commit with the frames the WAL now holds.
pub(super) extern "C" fn hook(
    wal: *mut c_void,
    db: *mut ffi::sqlite3,
    name: *const c_char,
    frames: c_int,
) -> c_int {
    // SAFETY: `wal` is the boxed `Wal` the connection keeps for as long as the hook is
    // installed (`Db::track_wal`); the connection is closed before the box is dropped.
    #[allow(unsafe_code)]
    let wal = unsafe { &*wal.cast::<Wal>() };
    let mut frames = i64::from(frames);
    if frames >= 2 * CHECKPOINT_FRAMES {
        // As SQLite's own hook would: a failed checkpoint is retried after the next commit.
        if let Ok(left) = checkpoint(db, name) {
            frames = left;
        }
    }
    wal.frames.store(frames, Ordering::Relaxed);
    ffi::SQLITE_OK
}

#[cfg(test)]
mod tests {
    use super::CHECKPOINT_FRAMES;
    use crate::objects::sqlite::Db;
    use crate::objects::storage::{self, Access, Durability, OBJECT_PAGE_SIZE};

    fn open(dir: &tempfile::TempDir) -> Db {
        storage::open_db(
            &dir.path().join("object.sqlite"),
            Durability::Log,
            Access::Sole,
            true,
        )
        .expect("open")
    }

    fn wal_bytes(dir: &tempfile::TempDir) -> u64 {
        std::fs::metadata(dir.path().join("object.sqlite-wal")).map_or(0, |m| m.len())
    }

    /// A WAL holding `frames` frames, in bytes: its header, then a header and a page per frame.
    fn bytes_of(frames: i64) -> u64 {
        32 + u64::try_from(frames).expect("frames") * (24 + u64::from(OBJECT_PAGE_SIZE))
    }

    /// Only a commit that starts the WAL afresh may sync: the first after the open (nothing
    /// known of the WAL), and the first after a checkpoint copied the whole WAL back.
    #[test]
    fn only_a_commit_that_starts_the_wal_afresh_may_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(&dir);
        assert!(
            db.commit_may_sync(),
            "nothing is known before the first commit"
        );
        db.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .expect("create");
        assert!(!db.commit_may_sync(), "the WAL holds the first commit");
        db.execute_batch("INSERT INTO t (v) VALUES ('a')")
            .expect("insert");
        assert!(!db.commit_may_sync());
        assert!(!db.checkpoint_due());
        db.checkpoint().expect("checkpoint");
        assert!(
            db.commit_may_sync(),
            "the next commit restarts the WAL and syncs its header"
        );
        db.execute_batch("INSERT INTO t (v) VALUES ('b')")
            .expect("insert");
        assert!(!db.commit_may_sync());
        db.close().expect("close");

        let mut db = open(&dir);
        assert!(db.commit_may_sync(), "a new connection knows nothing yet");
        let (count,): (i64,) = db
            .query("SELECT count(*) FROM t")
            .fetch_one()
            .expect("count");
        assert_eq!(count, 2);
    }

    /// The hook replaces SQLite's automatic checkpoint: the owner is told when one is due and
    /// runs it; a connection whose owner does not is checkpointed by the hook at twice the size,
    /// so its WAL stays bounded either way.
    #[test]
    fn the_wal_is_checkpointed_by_its_owner_or_else_by_the_hook() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(&dir);
        db.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
            .expect("create");
        let insert = |db: &mut Db| {
            db.execute_batch("INSERT INTO t (v) VALUES (zeroblob(1500))")
                .expect("insert");
        };
        let mut commits = 0;
        while !db.checkpoint_due() {
            insert(&mut db);
            commits += 1;
            assert!(commits < 2 * CHECKPOINT_FRAMES, "never due");
        }
        assert!(wal_bytes(&dir) >= bytes_of(CHECKPOINT_FRAMES));
        db.checkpoint().expect("checkpoint");
        assert!(!db.checkpoint_due());
        assert!(db.commit_may_sync());

        // An owner that never checkpoints: the WAL restarts at twice the size at most.
        let mut largest = 0;
        for _ in 0..3 * CHECKPOINT_FRAMES {
            insert(&mut db);
            largest = largest.max(wal_bytes(&dir));
        }
        assert!(
            largest <= bytes_of(2 * CHECKPOINT_FRAMES + 4),
            "the WAL grew to {largest} bytes"
        );
        let (count,): (i64,) = db
            .query("SELECT count(*) FROM t")
            .fetch_one()
            .expect("count");
        assert_eq!(count, commits + 3 * CHECKPOINT_FRAMES);
    }
}
