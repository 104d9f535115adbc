//! Checkpoints that keep an object file whole when no commit syncs, and which commits of a
//! connection wait for the disk: the WAL's size, as a hook SQLite calls after every commit
//! reports it.
//!
//! Under `synchronous=NORMAL` SQLite syncs no commit but two: the one that starts the WAL
//! afresh (a woken object's first, its WAL emptied at its last close, or the first after a
//! checkpoint copied it all back) syncs the WAL's header, and the directory's once per open,
//! in the request's path; and a checkpoint syncs the WAL and then the database.
//!
//! Under [`Syncs::Ordered`] — berth's connection to an object file whenever a commit needs no
//! sync of SQLite's (`storage::Durability::object_syncs`) — the connection runs
//! `synchronous=OFF`, so no commit ever syncs, and every checkpoint is this module's
//! [`ordered_checkpoint`]: it syncs the WAL, copies it back, syncs the database, empties the
//! WAL file and syncs it again. That is every order the file's consistency needs after a power
//! loss:
//! - a checkpoint writes pages into the database only once the WAL frames they come from are
//!   on disk, and the WAL is emptied only once those pages are;
//! - a WAL that starts afresh starts in a file that is empty on disk, so whatever part of its
//!   header and frames a power loss keeps, recovery reads a prefix of its commits (every
//!   frame's checksum covers the frames before it and the header's salts) or an empty WAL.
//!   SQLite syncs the header of a restarted WAL because there the new frames overwrite old
//!   ones in place: a lost header left old frames that recovery would read back over a
//!   database that had moved past them (SQLite ticket ff5be73dee). Here no frame is ever
//!   overwritten: the file is emptied, and synced empty, before it is written again.
//!
//! What a commit under `OFF` leaves unsynced its owner makes durable: the commit journal, the
//! group barrier's `syncfs` or cluster mode's log (or nothing is promised, under `normal`). A
//! woken object's first commit then costs no `fsync` (BENCHMARKS: W2 on `log`).
//!
//! Knowing the WAL's size after each commit, the owner runs only the commits that may sync off
//! tokio's workers and every other commit right on its task: moving a task off a worker
//! (`block_in_place`) hands the worker's queue to another thread, per commit.
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

/// Who syncs a connection's WAL and database, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syncs {
    /// SQLite, as the connection's `synchronous` setting says.
    Sqlite,
    /// The connection runs `synchronous=OFF` (set by its opener) and its checkpoints are
    /// [`ordered_checkpoint`]s, including the one before it closes ([`super::Db::close`]); SQLite's
    /// own checkpoint at close is turned off, so a close whose checkpoint failed leaves the WAL
    /// for the next open to recover. Its commits are made durable by someone else.
    Ordered,
}

/// Failpoints between an ordered checkpoint's steps (`tests/durability.rs` kills the process
/// at each): after the copy, before the database is synced; after the WAL was emptied,
/// before that is synced.
pub const COPIED_FAILPOINT: &str = "objects.checkpoint.copied";
pub const EMPTIED_FAILPOINT: &str = "objects.checkpoint.emptied";

/// What the hook last saw of one connection's WAL. Boxed by its [`super::Db`], so the hook's
/// pointer to it stays put.
pub(super) struct Wal {
    /// Frames in the WAL after the last commit or checkpoint; `0` when the next commit starts it
    /// afresh; `-1` until the first commit (what the WAL holds at open is not known).
    frames: AtomicI64,
    syncs: Syncs,
}

impl Wal {
    pub(super) fn new(syncs: Syncs) -> Box<Wal> {
        Box::new(Wal {
            frames: AtomicI64::new(-1),
            syncs,
        })
    }

    pub(super) fn syncs(&self) -> Syncs {
        self.syncs
    }

    /// Whether the next commit may sync. Under [`Syncs::Sqlite`], as far as this knows, any
    /// may. Under [`Syncs::Ordered`] only the hook's own checkpoint syncs, at twice
    /// [`CHECKPOINT_FRAMES`], and the owner checkpoints at [`CHECKPOINT_FRAMES`]: so only a
    /// commit that finds the WAL past that may. What the WAL holds at open counts as nothing:
    /// the last close emptied it, unless a crash kept it, and then the hook's checkpoint may
    /// sync on the committing thread, once.
    pub(super) fn commit_may_sync(&self) -> bool {
        match self.syncs {
            Syncs::Sqlite => true,
            Syncs::Ordered => self.frames.load(Ordering::Relaxed) >= CHECKPOINT_FRAMES,
        }
    }

    /// Whether the WAL is long enough that SQLite would have checkpointed it.
    pub(super) fn checkpoint_due(&self) -> bool {
        self.frames.load(Ordering::Relaxed) >= CHECKPOINT_FRAMES
    }

    /// Copies the WAL back into the database (`PASSIVE`: this is the file's only connection, so
    /// nothing holds it back; under [`Syncs::Ordered`], an [`ordered_checkpoint`]) and notes what
    /// is left.
    pub(super) fn checkpoint(&self, db: *mut ffi::sqlite3) -> Result<(), SqliteError> {
        let left = checkpoint(db, c"main".as_ptr(), self.syncs)
            .map_err(|code| failed(code, "checkpointing the WAL"))?;
        self.frames.store(left, Ordering::Relaxed);
        Ok(())
    }

    /// The hook's argument for `sqlite3_wal_hook`.
    pub(super) fn as_arg(&self) -> *mut c_void {
        std::ptr::from_ref(self).cast_mut().cast()
    }
}

/// A checkpoint of database `name` synced by `syncs`: the frames left to copy (`0` when the
/// next commit starts the WAL afresh), or SQLite's error code.
fn checkpoint(db: *mut ffi::sqlite3, name: *const c_char, syncs: Syncs) -> Result<i64, c_int> {
    match syncs {
        Syncs::Sqlite => run(db, name, ffi::SQLITE_CHECKPOINT_PASSIVE),
        Syncs::Ordered => ordered_checkpoint(db, name),
    }
}

/// The checkpoint of a connection under `synchronous=OFF`, each step on disk before the next
/// starts (the module's comment says why these orders):
/// 1. the WAL synced;
/// 2. its frames copied into the database (`PASSIVE`, which syncs nothing under `OFF`);
/// 3. the database synced;
/// 4. the WAL emptied (`TRUNCATE`, which now has nothing left to copy) and
/// 5. synced empty.
///
/// An empty WAL file costs nothing. A step that fails stops it there: what is left is still
/// a WAL with every commit in it, or a database that holds them all.
pub(super) fn ordered_checkpoint(db: *mut ffi::sqlite3, name: *const c_char) -> Result<i64, c_int> {
    let Some(wal) = written(db, name)? else {
        return Ok(0);
    };
    wal.sync()?;
    let left = copy(db, name)?;
    if left > 0 {
        return Ok(left);
    }
    file(db, name, ffi::SQLITE_FCNTL_FILE_POINTER)?
        .ok_or(ffi::SQLITE_MISUSE)?
        .sync()?;
    empty(db, name)?;
    wal.sync()?;
    Ok(0)
}

/// The WAL of database `name`, when it holds anything (an empty WAL file needs no
/// checkpoint).
fn written(db: *mut ffi::sqlite3, name: *const c_char) -> Result<Option<File>, c_int> {
    let Some(wal) = file(db, name, ffi::SQLITE_FCNTL_JOURNAL_POINTER)? else {
        return Ok(None);
    };
    Ok((wal.size()? > 0).then_some(wal))
}

/// Step 2 of an ordered checkpoint, once the WAL is on disk: its frames copied into the
/// database. The frames left to copy (`0`: all copied).
fn copy(db: *mut ffi::sqlite3, name: *const c_char) -> Result<i64, c_int> {
    let left = run(db, name, ffi::SQLITE_CHECKPOINT_PASSIVE)?;
    if left == 0 {
        crate::failpoint::hit(COPIED_FAILPOINT);
    }
    Ok(left)
}

/// Step 4 of an ordered checkpoint, once the database is on disk: the WAL file emptied.
fn empty(db: *mut ffi::sqlite3, name: *const c_char) -> Result<(), c_int> {
    run(db, name, ffi::SQLITE_CHECKPOINT_TRUNCATE)?;
    crate::failpoint::hit(EMPTIED_FAILPOINT);
    Ok(())
}

/// An ordered checkpoint in steps, for an owner that makes the syncs between them itself:
/// `objects::closing` syncs every file closing at the same moment with one `syncfs`. Each
/// step is only correct once the sync before it has covered this connection's files (the
/// module's comment says why); the connection's next commit would start the order over.
impl super::Db {
    /// Whether the WAL holds frames an ordered checkpoint would sync and copy. Always `false`
    /// on a connection SQLite syncs ([`Syncs::Sqlite`], or a WAL not tracked): its close
    /// checkpoints as SQLite does.
    ///
    /// # Errors
    ///
    /// The WAL's size cannot be read.
    pub fn wal_written(&mut self) -> Result<bool, SqliteError> {
        if self.wal().is_none_or(|wal| wal.syncs != Syncs::Ordered) {
            return Ok(false);
        }
        written(self.raw(), c"main".as_ptr())
            .map(|wal| wal.is_some())
            .map_err(|code| failed(code, "reading the WAL's size"))
    }

    /// Step 2, once the WAL is on disk: copies it into the database. `false` if frames were
    /// left (nothing holds a sole connection's checkpoint back, so this does not happen).
    ///
    /// # Errors
    ///
    /// The copy failed; the WAL still holds every commit.
    pub fn copy_synced_wal(&mut self) -> Result<bool, SqliteError> {
        let left = copy(self.raw(), c"main".as_ptr())
            .map_err(|code| failed(code, "copying the WAL into the database"))?;
        self.note_wal(left);
        Ok(left == 0)
    }

    /// Step 4, once the database is on disk: empties the WAL file, which the caller syncs
    /// before anything writes it again.
    ///
    /// # Errors
    ///
    /// The truncation failed; the database already holds every commit.
    pub fn empty_copied_wal(&mut self) -> Result<(), SqliteError> {
        empty(self.raw(), c"main".as_ptr())
            .map_err(|code| failed(code, "emptying the copied WAL"))?;
        self.note_wal(0);
        Ok(())
    }

    fn note_wal(&self, frames: i64) {
        if let Some(wal) = self.wal() {
            wal.frames.store(frames, Ordering::Relaxed);
        }
    }
}

fn failed(code: c_int, what: &str) -> SqliteError {
    SqliteError {
        code,
        message: format!("{what} failed"),
    }
}

/// A checkpoint of database `name` in `mode`: the frames left to copy, or SQLite's error code.
fn run(db: *mut ffi::sqlite3, name: *const c_char, mode: c_int) -> Result<i64, c_int> {
    let (mut log, mut copied): (c_int, c_int) = (0, 0);
    // SAFETY: `db` is an open connection used by this thread only (the caller holds it), `name`
    // a NUL-terminated schema name; the two out-pointers are written during the call only.
    #[allow(unsafe_code)]
    let rc = unsafe { ffi::sqlite3_wal_checkpoint_v2(db, name, mode, &mut log, &mut copied) };
    if rc != ffi::SQLITE_OK {
        return Err(rc);
    }
    Ok(if copied >= log { 0 } else { i64::from(log) })
}

/// One of a connection's open files, as its VFS serves it.
struct File(*mut ffi::sqlite3_file);

/// The file of database `name` that file control `op` points at
/// (`SQLITE_FCNTL_FILE_POINTER`: the database; `SQLITE_FCNTL_JOURNAL_POINTER`: its WAL in WAL
/// mode), or `None` when it is not open.
fn file(db: *mut ffi::sqlite3, name: *const c_char, op: c_int) -> Result<Option<File>, c_int> {
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: an open connection used by this thread only; both file controls write one
    // `sqlite3_file*` through the argument during the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        ffi::sqlite3_file_control(db, name, op, std::ptr::from_mut(&mut file).cast::<c_void>())
    };
    if rc != ffi::SQLITE_OK {
        return Err(rc);
    }
    // SAFETY: a non-null pointer from the file control is the connection's own file object,
    // valid while the connection is open; its methods are null when the file is not open.
    #[allow(unsafe_code)]
    let open = !file.is_null() && unsafe { !(*file).pMethods.is_null() };
    Ok(open.then_some(File(file)))
}

impl File {
    /// The VFS's methods of this open file.
    fn methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: `File` is only made for an open file (`file`), whose method table is the
        // VFS's static one; the connection that owns the file outlives this borrow (a `File`
        // lives within one call on it).
        #[allow(unsafe_code)]
        unsafe {
            &*(*self.0).pMethods
        }
    }

    /// The file's size in bytes.
    fn size(&self) -> Result<i64, c_int> {
        let size_of = self.methods().xFileSize.ok_or(ffi::SQLITE_MISUSE)?;
        let mut size: ffi::sqlite3_int64 = 0;
        // SAFETY: the VFS's own method on its own open file; the out-pointer is written during
        // the call only.
        #[allow(unsafe_code)]
        let rc = unsafe { size_of(self.0, &mut size) };
        if rc == ffi::SQLITE_OK {
            Ok(size)
        } else {
            Err(rc)
        }
    }

    /// Syncs the file (`fsync`, as SQLite's own syncs under `NORMAL`).
    fn sync(&self) -> Result<(), c_int> {
        let sync = self.methods().xSync.ok_or(ffi::SQLITE_MISUSE)?;
        // SAFETY: the VFS's own method on its own open file.
        #[allow(unsafe_code)]
        let rc = unsafe { sync(self.0, ffi::SQLITE_SYNC_NORMAL) };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(rc)
        }
    }
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
        if let Ok(left) = checkpoint(db, name, wal.syncs) {
            frames = left;
        }
    }
    wal.frames.store(frames, Ordering::Relaxed);
    ffi::SQLITE_OK
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::CHECKPOINT_FRAMES;
    use crate::objects::sqlite::Db;
    use crate::objects::storage::{self, Access, Durability, OBJECT_PAGE_SIZE};

    /// berth's connection to an object file in `dir` under `log` (`Syncs::Ordered`).
    fn open(dir: &Path) -> Db {
        storage::open_db(
            &dir.join("object.sqlite"),
            Durability::Log,
            Access::Sole,
            true,
        )
        .expect("open")
    }

    /// [`open`], with an empty table `t` made.
    fn with_table(dir: &Path) -> Db {
        let mut db = open(dir);
        db.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
            .expect("create");
        db
    }

    fn wal_bytes(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("object.sqlite-wal")).map_or(0, |m| m.len())
    }

    /// A WAL holding `frames` frames, in bytes: its header, then a header and a page per frame.
    fn bytes_of(frames: i64) -> u64 {
        32 + u64::try_from(frames).expect("frames") * (24 + u64::from(OBJECT_PAGE_SIZE))
    }

    fn rows(db: &mut Db) -> i64 {
        let (count,): (i64,) = db
            .query("SELECT count(*) FROM t")
            .fetch_one()
            .expect("count");
        count
    }

    /// Under `Syncs::Ordered` no commit waits for the disk — not a woken object's first, not
    /// the first after a checkpoint — and a checkpoint leaves the WAL file empty.
    #[test]
    fn ordered_commits_never_sync_and_a_checkpoint_empties_the_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = open(dir.path());
        assert!(!db.commit_may_sync(), "not even the first commit");
        db.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .expect("create");
        db.execute_batch("INSERT INTO t (v) VALUES ('a')")
            .expect("insert");
        assert!(!db.commit_may_sync());
        assert!(wal_bytes(dir.path()) > 0);
        db.checkpoint().expect("checkpoint");
        assert_eq!(wal_bytes(dir.path()), 0, "the WAL file is emptied");
        assert!(
            !db.commit_may_sync(),
            "the WAL starts afresh without a sync"
        );
        db.execute_batch("INSERT INTO t (v) VALUES ('b')")
            .expect("insert");
        db.close().expect("close");

        let mut db = open(dir.path());
        assert!(!db.commit_may_sync(), "nor a woken object's first commit");
        assert_eq!(rows(&mut db), 2);
    }

    /// SQLite's own checkpoint at close is off under `Syncs::Ordered`, and the close runs the
    /// ordered one instead: after it the database file alone holds every commit and the WAL
    /// file is empty (so the next open recovers nothing, and starts the WAL in an empty file).
    #[test]
    fn an_ordered_close_leaves_every_commit_in_the_database_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = with_table(dir.path());
        for v in ["a", "b", "c"] {
            db.query("INSERT INTO t (v) VALUES (?1)")
                .bind(v)
                .execute()
                .expect("insert");
        }
        db.close().expect("close");
        assert_eq!(wal_bytes(dir.path()), 0);

        // The database file alone, without its WAL.
        let alone = tempfile::tempdir().expect("tempdir");
        std::fs::copy(
            dir.path().join("object.sqlite"),
            alone.path().join("object.sqlite"),
        )
        .expect("copy");
        let mut db = open(alone.path());
        assert_eq!(rows(&mut db), 3);
        db.close().expect("close");
    }

    /// What a power loss can leave of a WAL that started afresh after an ordered checkpoint:
    /// the database as the checkpoint synced it, and any part of what was written to the WAL
    /// since over what the WAL file held on disk — cut anywhere, without its header, or
    /// without its first frames. Every such file opens whole and holds a prefix of the
    /// commits: the WAL file was empty on disk before it was written again, so no old frame is
    /// ever read back over the newer database (what SQLite's sync of a restarted WAL's header
    /// prevents when it overwrites old frames in place). Without the emptying, the variants
    /// that lost the header and the first frames read old frames back.
    #[test]
    fn a_wal_cut_anywhere_after_an_ordered_checkpoint_recovers_a_prefix_of_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = with_table(dir.path());
        // Enough rows that the next commits rewrite interior pages too.
        for _ in 0..40 {
            db.execute_batch("INSERT INTO t (v) VALUES (randomblob(700))")
                .expect("insert");
        }
        db.checkpoint().expect("checkpoint");
        let synced = std::fs::read(dir.path().join("object.sqlite")).expect("read db");
        // What the WAL file holds on disk once the checkpoint returns.
        let left = std::fs::read(dir.path().join("object.sqlite-wal")).expect("read wal");
        let base = rows(&mut db);
        // Commits after the checkpoint: an insert, an update of every row, a delete.
        db.execute_batch("INSERT INTO t (v) VALUES (randomblob(700))")
            .expect("insert");
        db.execute_batch("UPDATE t SET v = randomblob(600)")
            .expect("update");
        db.execute_batch("DELETE FROM t WHERE id % 3 = 0")
            .expect("delete");
        let after = [base + 1, base + 1, base + 1 - (base + 1) / 3];
        let wal = std::fs::read(dir.path().join("object.sqlite-wal")).expect("read wal");
        assert_eq!(
            std::fs::read(dir.path().join("object.sqlite")).expect("read db"),
            synced,
            "no commit writes the database file"
        );
        drop(db);

        // The new writes that reached the disk, over what the file held: up to any frame's
        // end or into a frame, with or without the header they start with.
        let frame = 24 + usize::try_from(OBJECT_PAGE_SIZE).expect("page size");
        let mut cuts: Vec<usize> = (0..=(wal.len() - 32) / frame)
            .map(|n| 32 + n * frame)
            .collect();
        cuts.extend([16, 32 + frame / 2, wal.len() - 100]);
        let landed = |cut: usize, header: bool| {
            let mut file = left.clone();
            file.resize(file.len().max(cut), 0);
            let from = if header { 0 } else { 32.min(cut) };
            file[from..cut].copy_from_slice(&wal[from..cut]);
            file
        };
        let mut variants: Vec<Vec<u8>> = cuts
            .iter()
            .flat_map(|&cut| [landed(cut, true), landed(cut, false)])
            .collect();
        // Written back out of order: all but the header and the first frames. Had old frames
        // still been in the file, the old header would make its first ones valid again.
        for first in [1, 2, 5] {
            let mut file = left.clone();
            file.resize(file.len().max(wal.len()), 0);
            let from = 32 + first * frame;
            file[from..wal.len()].copy_from_slice(&wal[from..]);
            variants.push(file);
        }
        for (i, variant) in variants.into_iter().enumerate() {
            let at = tempfile::tempdir().expect("tempdir");
            std::fs::write(at.path().join("object.sqlite"), &synced).expect("db");
            std::fs::write(at.path().join("object.sqlite-wal"), &variant).expect("wal");
            let mut db = open(at.path());
            let (check,): (String,) = db
                .query("PRAGMA integrity_check")
                .fetch_one()
                .expect("integrity_check");
            assert_eq!(check, "ok", "variant {i} ({} bytes of WAL)", variant.len());
            let count = rows(&mut db);
            assert!(
                count == base || after.contains(&count),
                "variant {i}: {count} rows is no prefix of the commits"
            );
            db.close().expect("close");
        }
    }

    /// The hook replaces SQLite's automatic checkpoint: the owner is told when one is due and
    /// runs it; a connection whose owner does not is checkpointed by the hook at twice the size,
    /// so its WAL stays bounded either way.
    #[test]
    fn the_wal_is_checkpointed_by_its_owner_or_else_by_the_hook() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = with_table(dir.path());
        let insert = |db: &mut Db| {
            db.execute_batch("INSERT INTO t (v) VALUES (zeroblob(1500))")
                .expect("insert");
        };
        let mut commits = 0;
        while !db.checkpoint_due() {
            assert!(!db.commit_may_sync(), "below the owner's checkpoint");
            insert(&mut db);
            commits += 1;
            assert!(commits < 2 * CHECKPOINT_FRAMES, "never due");
        }
        assert!(wal_bytes(dir.path()) >= bytes_of(CHECKPOINT_FRAMES));
        assert!(
            db.commit_may_sync(),
            "past it, the hook's checkpoint may run"
        );
        db.checkpoint().expect("checkpoint");
        assert!(!db.checkpoint_due());
        assert_eq!(wal_bytes(dir.path()), 0);

        // An owner that never checkpoints: the WAL restarts at twice the size at most.
        let mut largest = 0;
        for _ in 0..3 * CHECKPOINT_FRAMES {
            insert(&mut db);
            largest = largest.max(wal_bytes(dir.path()));
        }
        assert!(
            largest <= bytes_of(2 * CHECKPOINT_FRAMES + 4),
            "the WAL grew to {largest} bytes"
        );
        assert_eq!(rows(&mut db), commits + 3 * CHECKPOINT_FRAMES);
    }
}
