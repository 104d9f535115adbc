//! [`Db`]: one open SQLite connection and its prepared statement lists.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_int, c_void};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use libsqlite3_sys as ffi;

use super::SqliteError;
use super::row::{FromRow, Row, RowSets};
use super::stmt::{self, List};
use super::wal::{self, Syncs, Wal};
use crate::objects::session::{Bind, Value};

/// How many statement lists a connection keeps prepared (least recently used out first).
const CACHE_CAPACITY: usize = 64;

/// How a file is opened.
#[derive(Clone, Copy, Debug)]
pub struct OpenFlags {
    /// Create the file if it is missing (else opening a missing file fails).
    pub create: bool,
    /// Open read-only.
    pub read_only: bool,
    /// The VFS to open it with (`None`: SQLite's default).
    pub vfs: Option<&'static CStr>,
}

/// An open SQLite connection, used by one thread at a time.
///
/// Every method runs SQLite on the calling thread and returns when it is done: a statement
/// that waits for the disk (a `COMMIT` under `synchronous=FULL`, a `VACUUM INTO`) blocks the
/// caller that long, so async owners call those from tokio's blocking pool. Dropping a `Db`
/// closes it (see [`Db::close`] to see the close's error).
pub struct Db {
    raw: NonNull<ffi::sqlite3>,
    /// Prepared lists by their SQL text, with the tick of their last use.
    cache: HashMap<Box<str>, (List, u64)>,
    tick: u64,
    /// The commit hook's gate, when one is installed (its pointer is the hook's argument).
    gate: Option<Arc<AtomicBool>>,
    /// The WAL's size as the WAL hook reports it, when installed ([`Db::track_wal`]; its
    /// pointer is the hook's argument).
    wal: Option<Box<Wal>>,
}

// SAFETY: connections are opened `SQLITE_OPEN_NOMUTEX` on a thread-safe SQLite build
// (multi-thread mode): a connection and its statements may move between threads as long as
// one thread uses them at a time, which `&mut self` on every call guarantees.
#[allow(unsafe_code)]
unsafe impl Send for Db {}

/// The commit hook: a non-zero answer turns the commit into a rollback.
extern "C" fn commit_hook(gate: *mut c_void) -> c_int {
    // SAFETY: `gate` is the pointer of the `Arc<AtomicBool>` the connection holds in
    // `Db::gate` for as long as the hook is installed.
    #[allow(unsafe_code)]
    let open = unsafe { &*gate.cast::<AtomicBool>() }.load(Ordering::Acquire);
    c_int::from(!open)
}

impl Db {
    /// Opens the database file at `path`.
    ///
    /// # Errors
    ///
    /// The file cannot be opened (or created), or `path` holds a NUL byte.
    pub fn open(path: &Path, flags: OpenFlags) -> Result<Db, SqliteError> {
        use std::os::unix::ffi::OsStrExt as _;
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| SqliteError::misuse("a database path with a NUL byte"))?;
        let mut mode = if flags.read_only {
            ffi::SQLITE_OPEN_READONLY
        } else {
            ffi::SQLITE_OPEN_READWRITE
        };
        if flags.create && !flags.read_only {
            mode |= ffi::SQLITE_OPEN_CREATE;
        }
        Self::open_raw(&path, mode, flags.vfs)
    }

    /// A new private in-memory database (tests, scratch work).
    ///
    /// # Errors
    ///
    /// SQLite is out of memory.
    pub fn open_memory() -> Result<Db, SqliteError> {
        Self::open_raw(
            c":memory:",
            ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE,
            None,
        )
    }

    fn open_raw(path: &CStr, mode: c_int, vfs: Option<&CStr>) -> Result<Db, SqliteError> {
        crate::objects::storage::configure_sqlite();
        let mode = mode | ffi::SQLITE_OPEN_NOMUTEX | ffi::SQLITE_OPEN_EXRESCODE;
        let mut raw: *mut ffi::sqlite3 = std::ptr::null_mut();
        // SAFETY: `path` and `vfs` are NUL-terminated and outlive the call; `raw` is written
        // by it (also on failure, when it must still be closed).
        #[allow(unsafe_code)]
        let rc = unsafe {
            ffi::sqlite3_open_v2(
                path.as_ptr(),
                &mut raw,
                mode,
                vfs.map_or(std::ptr::null(), CStr::as_ptr),
            )
        };
        let Some(raw) = NonNull::new(raw) else {
            return Err(SqliteError {
                code: ffi::SQLITE_NOMEM,
                message: "out of memory opening a database".to_owned(),
            });
        };
        if rc != ffi::SQLITE_OK {
            let err = stmt::error(raw.as_ptr(), rc);
            // SAFETY: a handle sqlite3_open_v2 returned, closed once.
            #[allow(unsafe_code)]
            unsafe {
                ffi::sqlite3_close(raw.as_ptr());
            }
            return Err(err);
        }
        Ok(Db {
            raw,
            cache: HashMap::new(),
            tick: 0,
            gate: None,
            wal: None,
        })
    }

    pub(super) fn raw(&self) -> *mut ffi::sqlite3 {
        self.raw.as_ptr()
    }

    /// What the WAL hook last saw, when tracked ([`Db::track_wal`]).
    pub(super) fn wal(&self) -> Option<&Wal> {
        self.wal.as_deref()
    }

    /// Waits up to `ms` for a lock another connection holds before failing with `BUSY`.
    pub fn busy_timeout(&mut self, ms: i32) {
        // SAFETY: an open connection.
        #[allow(unsafe_code)]
        unsafe {
            ffi::sqlite3_busy_timeout(self.raw(), ms);
        }
    }

    /// A statement list to run on this connection with values bound by [`Query::bind`].
    pub fn query<'d>(&'d mut self, sql: &'d str) -> Query<'d> {
        Query {
            db: self,
            sql,
            values: Vec::new(),
            persistent: true,
        }
    }

    /// Runs `sql` (a statement list) with `values`, handing each row to `on_row` with its
    /// statement's index; returns the rows changed. `persistent`: keep the prepared list for
    /// the next run of the same text (see [`Query::persistent`]).
    ///
    /// # Errors
    ///
    /// A statement fails to prepare or to run, or `on_row` fails; the statements after it do
    /// not run.
    pub fn run(
        &mut self,
        sql: &str,
        values: &[Value],
        persistent: bool,
        on_row: &mut dyn FnMut(usize, &Row<'_>) -> Result<(), SqliteError>,
    ) -> Result<u64, SqliteError> {
        self.run_counted(sql, values, persistent, on_row)
            .map(|(changed, _)| changed)
    }

    /// [`Db::run`], also returning how many statements the list holds.
    fn run_counted(
        &mut self,
        sql: &str,
        values: &[Value],
        persistent: bool,
        on_row: &mut dyn FnMut(usize, &Row<'_>) -> Result<(), SqliteError>,
    ) -> Result<(u64, usize), SqliteError> {
        let raw = self.raw();
        if !persistent {
            let mut list = List::new(sql, false);
            let changed = list.run(raw, values, on_row)?;
            return Ok((changed, list.len()));
        }
        self.tick += 1;
        let tick = self.tick;
        if let Some((list, used)) = self.cache.get_mut(sql) {
            *used = tick;
            let changed = list.run(raw, values, on_row)?;
            return Ok((changed, list.len()));
        }
        let mut list = List::new(sql, true);
        let result = list.run(raw, values, on_row);
        let len = list.len();
        if self.cache.len() >= CACHE_CAPACITY {
            let oldest = self
                .cache
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(sql, _)| sql.clone());
            if let Some(oldest) = oldest {
                self.cache.remove(&oldest);
            }
        }
        // Kept even if it failed: a list that failed midway is prepared up to there.
        self.cache.insert(sql.into(), (list, tick));
        result.map(|changed| (changed, len))
    }

    /// Runs a list of statements without values, not cached (settings, migrations).
    ///
    /// # Errors
    ///
    /// A statement fails; the ones after it do not run.
    pub fn execute_batch(&mut self, sql: &str) -> Result<(), SqliteError> {
        self.run(sql, &[], false, &mut |_, _| Ok(()))?;
        Ok(())
    }

    /// Installs the commit hook: from now on a commit goes through only while `gate` is
    /// open (`true`); otherwise SQLite turns it into a rollback and the `COMMIT` fails with
    /// `SQLITE_CONSTRAINT_COMMITHOOK`.
    pub fn set_commit_hook(&mut self, gate: Arc<AtomicBool>) {
        let ptr = Arc::as_ptr(&gate).cast_mut().cast::<c_void>();
        // SAFETY: the hook's argument points into the Arc kept in `self.gate`, which is only
        // replaced or dropped after the hook is replaced or the connection closed.
        #[allow(unsafe_code)]
        unsafe {
            ffi::sqlite3_commit_hook(self.raw(), Some(commit_hook), ptr);
        }
        self.gate = Some(gate);
    }

    /// Installs the WAL hook (`wal.rs`): from now on the connection knows which of its commits
    /// may sync ([`Db::commit_may_sync`]), and SQLite no longer checkpoints on its own: the
    /// owner does ([`Db::checkpoint_due`], [`Db::checkpoint`]). For a connection that is its
    /// file's only one: the hook sees this connection's commits, no other's. With
    /// [`Syncs::Ordered`] (for a connection its opener set to `synchronous=OFF`) every
    /// checkpoint syncs in order, the close's included, and SQLite's own at close is off.
    ///
    /// # Errors
    ///
    /// SQLite refused to turn its checkpoint at close off.
    pub fn track_wal(&mut self, syncs: Syncs) -> Result<(), SqliteError> {
        if syncs == Syncs::Ordered {
            let mut set: c_int = 0;
            // SAFETY: an open connection; this option takes an int (1: on) and an int pointer
            // written during the call.
            #[allow(unsafe_code)]
            let rc = unsafe {
                ffi::sqlite3_db_config(
                    self.raw(),
                    ffi::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                    1 as c_int,
                    std::ptr::from_mut(&mut set),
                )
            };
            if rc != ffi::SQLITE_OK || set != 1 {
                return Err(SqliteError {
                    code: rc,
                    message: "turning off the checkpoint at close failed".to_owned(),
                });
            }
        }
        let state = Wal::new(syncs);
        // SAFETY: the hook's argument points into the box kept in `self.wal`, which is
        // replaced only after the hook points at its successor (below), and dropped only
        // after the connection is closed (`Drop` closes it first).
        #[allow(unsafe_code)]
        unsafe {
            ffi::sqlite3_wal_hook(self.raw(), Some(wal::hook), state.as_arg());
        }
        self.wal = Some(state);
        Ok(())
    }

    /// Whether the next commit may wait for the disk: under [`Syncs::Ordered`], only one that
    /// finds the WAL due for a checkpoint (the hook's may then run); otherwise (SQLite's syncs,
    /// or the WAL not tracked) any may.
    pub fn commit_may_sync(&self) -> bool {
        self.wal.as_ref().is_none_or(|wal| wal.commit_may_sync())
    }

    /// Whether the tracked WAL has grown to where SQLite would have checkpointed it.
    pub fn checkpoint_due(&self) -> bool {
        self.wal.as_ref().is_some_and(|wal| wal.checkpoint_due())
    }

    /// Copies the WAL back into the database (syncing both, unless `synchronous=OFF` without
    /// [`Syncs::Ordered`]). Without a tracked WAL, nothing to do.
    ///
    /// # Errors
    ///
    /// The checkpoint failed; it is due again after the next commit.
    pub fn checkpoint(&mut self) -> Result<(), SqliteError> {
        match &self.wal {
            Some(wal) => wal.checkpoint(self.raw()),
            None => Ok(()),
        }
    }

    /// Keeps the WAL file when the connection closes instead of deleting it
    /// (`SQLITE_FCNTL_PERSIST_WAL`).
    ///
    /// # Errors
    ///
    /// The file control failed (the database is not open, say).
    pub fn persist_wal(&mut self) -> Result<(), SqliteError> {
        let mut on: c_int = 1;
        // SAFETY: an open connection; the argument is a pointer to an int, read during the
        // call only.
        #[allow(unsafe_code)]
        let rc = unsafe {
            ffi::sqlite3_file_control(
                self.raw(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_PERSIST_WAL,
                std::ptr::from_mut(&mut on).cast(),
            )
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(SqliteError {
                code: rc,
                message: "SQLITE_FCNTL_PERSIST_WAL failed".to_owned(),
            })
        }
    }

    /// Whether no transaction is open.
    pub fn is_autocommit(&self) -> bool {
        // SAFETY: an open connection; only read.
        #[allow(unsafe_code)]
        unsafe {
            ffi::sqlite3_get_autocommit(self.raw()) != 0
        }
    }

    /// How many prepared statements the connection holds now (those kept by its cache, and
    /// any a running list still holds): what preparing costs shows up here. For tests.
    #[cfg(test)]
    pub(crate) fn prepared_statements(&self) -> usize {
        let mut count = 0;
        // SAFETY: an open connection; sqlite3_next_stmt only walks its list of statements,
        // and nothing prepares or finalizes one meanwhile (`&self`, one thread).
        #[allow(unsafe_code)]
        unsafe {
            let mut stmt = ffi::sqlite3_next_stmt(self.raw(), std::ptr::null_mut());
            while !stmt.is_null() {
                count += 1;
                stmt = ffi::sqlite3_next_stmt(self.raw(), stmt);
            }
        }
        count
    }

    /// Closes the connection: its statements are finalized first, and a WAL database is
    /// checkpointed when its last connection closes (by SQLite, or under [`Syncs::Ordered`]
    /// by an ordered checkpoint: SQLite's own is off).
    ///
    /// # Errors
    ///
    /// SQLite could not close it cleanly (a failed checkpoint, say); the handle is released
    /// all the same.
    pub fn close(mut self) -> Result<(), SqliteError> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<(), SqliteError> {
        self.cache.clear();
        // Under `Syncs::Ordered` the close's checkpoint is this one: SQLite's own would sync
        // nothing under `synchronous=OFF`. If it fails, the WAL stays for the next open.
        let checkpointed = match &self.wal {
            Some(wal) if wal.syncs() == Syncs::Ordered => wal.checkpoint(self.raw()),
            _ => Ok(()),
        };
        // SAFETY: every statement of the connection lived in the cache (or only for the call
        // that prepared it) and is finalized, so sqlite3_close can release the handle. The
        // handle is not used again: `close` consumes the `Db`, and `Drop` runs this only
        // when `close` did not.
        #[allow(unsafe_code)]
        let rc = unsafe { ffi::sqlite3_close(self.raw()) };
        self.raw = NonNull::dangling();
        if rc == ffi::SQLITE_OK {
            checkpointed
        } else {
            Err(SqliteError {
                code: rc,
                message: "closing the database failed".to_owned(),
            })
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if self.raw != NonNull::dangling()
            && let Err(err) = self.close_inner()
        {
            tracing::warn!(error = %err, "closing a SQLite database");
        }
    }
}

/// A statement list with its values, about to run on a [`Db`]; see [`Db::query`].
pub struct Query<'d> {
    db: &'d mut Db,
    sql: &'d str,
    values: Vec<Value>,
    persistent: bool,
}

impl Query<'_> {
    /// Binds the next value (see the module docs for how values reach parameters).
    #[must_use]
    pub fn bind(mut self, value: impl Bind) -> Self {
        self.values.push(value.into_value());
        self
    }

    /// Whether to keep the prepared list for the next run of the same text (the default):
    /// `false` for text that varies from run to run, which would only push the steady
    /// statements out of the cache.
    #[must_use]
    pub fn persistent(mut self, keep: bool) -> Self {
        self.persistent = keep;
        self
    }

    /// Runs the list; returns the rows its statements changed.
    ///
    /// # Errors
    ///
    /// As [`Db::run`].
    pub fn execute(self) -> Result<u64, SqliteError> {
        self.db
            .run(self.sql, &self.values, self.persistent, &mut |_, _| Ok(()))
    }

    /// Runs the list; returns every row, decoded as `T`.
    ///
    /// # Errors
    ///
    /// As [`Db::run`], or a row does not decode as `T`.
    pub fn fetch_all<T: FromRow>(self) -> Result<Vec<T>, SqliteError> {
        let mut rows = Vec::new();
        self.db
            .run(self.sql, &self.values, self.persistent, &mut |_, row| {
                rows.push(T::from_row(row)?);
                Ok(())
            })?;
        Ok(rows)
    }

    /// Runs the list; returns its first row, if any, decoded as `T`.
    ///
    /// # Errors
    ///
    /// As [`Query::fetch_all`].
    pub fn fetch_optional<T: FromRow>(self) -> Result<Option<T>, SqliteError> {
        let mut first = None;
        self.db
            .run(self.sql, &self.values, self.persistent, &mut |_, row| {
                if first.is_none() {
                    first = Some(T::from_row(row)?);
                }
                Ok(())
            })?;
        Ok(first)
    }

    /// Runs the list; returns its first row, decoded as `T`.
    ///
    /// # Errors
    ///
    /// As [`Query::fetch_all`], or it returned no row.
    pub fn fetch_one<T: FromRow>(self) -> Result<T, SqliteError> {
        self.fetch_optional()?
            .ok_or_else(|| SqliteError::misuse("a read that returns a row returned none"))
    }

    /// Runs the list; returns each statement's rows, to be taken in order ([`RowSets`]).
    ///
    /// # Errors
    ///
    /// As [`Db::run`].
    pub fn fetch_sets(self) -> Result<RowSets, SqliteError> {
        let mut sets = RowSets::collector();
        let (_, statements) =
            self.db
                .run_counted(self.sql, &self.values, self.persistent, &mut |i, row| {
                    sets.push(i, row);
                    Ok(())
                })?;
        Ok(sets.finish(statements))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Db {
        let mut db = Db::open_memory().expect("open");
        db.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT, data BLOB);
             INSERT INTO t (id, name) VALUES (1, 'one'), (2, 'two');",
        )
        .expect("schema");
        db
    }

    /// Plain `?` take values in order across a list; `?N` takes the N-th value wherever it
    /// appears, as sqlx binds them.
    #[test]
    fn parameters_bind_as_sqlx_binds_them() {
        let mut db = memory();
        let changed = db
            .query("INSERT INTO t (id, name) VALUES (?, ?); INSERT INTO t (id, name) VALUES (?, ?)")
            .bind(3)
            .bind("three")
            .bind(4)
            .bind("four")
            .execute()
            .expect("insert");
        assert_eq!(changed, 2);
        let mut sets = db
            .query("SELECT name FROM t WHERE id = ?1; SELECT id FROM t WHERE id > ?1 ORDER BY id")
            .bind(3)
            .fetch_sets()
            .expect("read");
        assert_eq!(sets.one::<(String,)>().expect("one").0, "three");
        assert_eq!(sets.rows::<(i64,)>().expect("rows"), vec![(4,)]);
        assert!(sets.rows::<(i64,)>().is_err(), "only two statements");
    }

    /// Rows decode by index and by name; NULL needs an `Option`; a wrong type is an error
    /// that names the column.
    #[test]
    fn rows_decode_by_index_and_name() {
        let mut db = memory();
        db.query("UPDATE t SET note = ?, data = ? WHERE id = 1")
            .bind("n")
            .bind(vec![1_u8, 2])
            .execute()
            .expect("update");
        struct Named {
            name: String,
            note: Option<String>,
            data: Option<Vec<u8>>,
        }
        impl FromRow for Named {
            fn from_row(row: &Row<'_>) -> Result<Self, SqliteError> {
                Ok(Named {
                    name: row.get_named("name")?,
                    note: row.get_named("note")?,
                    data: row.get_named("data")?,
                })
            }
        }
        let rows: Vec<Named> = db
            .query("SELECT data, note, name FROM t ORDER BY id")
            .fetch_all()
            .expect("rows");
        assert_eq!(rows[0].name, "one");
        assert_eq!(rows[0].note.as_deref(), Some("n"));
        assert_eq!(rows[0].data.as_deref(), Some(&[1_u8, 2][..]));
        assert_eq!(rows[1].note, None);
        let err = db
            .query("SELECT note FROM t WHERE id = 2")
            .fetch_one::<(String,)>()
            .expect_err("NULL is not a String");
        assert!(err.to_string().contains("`note`"), "{err}");
        let none: Option<(i64,)> = db
            .query("SELECT id FROM t WHERE id = 99")
            .fetch_optional()
            .expect("read");
        assert!(none.is_none());
    }

    /// A failing statement fails the list and leaves the connection usable; a bad statement
    /// is not a storage failure, a write to a read-only file is.
    #[test]
    fn failures_leave_the_connection_usable_and_are_classified() {
        let mut db = memory();
        let err = db
            .query("INSERT INTO t (id, name) VALUES (?, ?)")
            .bind(1)
            .bind("dup")
            .execute()
            .expect_err("duplicate key");
        assert!(!err.is_storage(), "{err}");
        let err = db
            .execute_batch("SELECT * FROM missing")
            .expect_err("no table");
        assert!(!err.is_storage());
        let (count,): (i64,) = db
            .query("SELECT COUNT(*) FROM t")
            .fetch_one()
            .expect("count");
        assert_eq!(count, 2);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.sqlite");
        let flags = OpenFlags {
            create: true,
            read_only: false,
            vfs: None,
        };
        let mut file = Db::open(&path, flags).expect("create");
        file.execute_batch("CREATE TABLE t (x INTEGER)")
            .expect("schema");
        file.close().expect("close");
        let mut read_only = Db::open(
            &path,
            OpenFlags {
                read_only: true,
                ..flags
            },
        )
        .expect("open read-only");
        let err = read_only
            .execute_batch("INSERT INTO t VALUES (1)")
            .expect_err("read-only");
        assert!(err.is_storage(), "{err}");
        let missing = Db::open(
            &dir.path().join("missing.sqlite"),
            OpenFlags {
                create: false,
                ..flags
            },
        );
        assert!(missing.is_err());
    }

    /// The commit hook lets a commit through only while the gate is open.
    #[test]
    fn the_commit_hook_gates_commits() {
        let mut db = memory();
        let gate = Arc::new(AtomicBool::new(false));
        db.set_commit_hook(Arc::clone(&gate));
        let err = db
            .execute_batch("INSERT INTO t (id, name) VALUES (5, 'five')")
            .expect_err("refused");
        assert_eq!(err.code, ffi::SQLITE_CONSTRAINT_COMMITHOOK, "{err}");
        gate.store(true, Ordering::Release);
        db.execute_batch("INSERT INTO t (id, name) VALUES (5, 'five')")
            .expect("let through");
        let (count,): (i64,) = db
            .query("SELECT COUNT(*) FROM t")
            .fetch_one()
            .expect("count");
        assert_eq!(count, 3);
        assert!(db.is_autocommit());
    }

    /// The cache keeps at most its capacity of lists, and a list evicted and run again
    /// prepares afresh.
    #[test]
    fn the_cache_is_bounded() {
        let mut db = memory();
        for i in 0..(CACHE_CAPACITY + 10) {
            let sql = format!("SELECT {i}");
            let (v,): (i64,) = db.query(&sql).fetch_one().expect("select");
            assert_eq!(v, i64::try_from(i).expect("small"));
        }
        assert_eq!(db.cache.len(), CACHE_CAPACITY);
        let (v,): (i64,) = db.query("SELECT 0").fetch_one().expect("again");
        assert_eq!(v, 0);
    }
}
