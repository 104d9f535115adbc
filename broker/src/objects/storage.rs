//! Opening an object's SQLite file, and the small key-value helper beside raw SQL.
//!
//! Every object database is opened the same way: WAL journal, `synchronous=FULL` (a commit is
//! on disk before `COMMIT` returns, which is what lets the runtime's output gate promise that
//! an acknowledged write survives `kill -9`), foreign keys on, and the object type's embedded
//! migrations applied (`schema.rs`). The runtime's own rows (the alarm, the object's name) live in the
//! `_berth_kv` table, which the runtime creates itself so that object migrations never have
//! to know about it.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::migrate::Migrator;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sqlx::sqlite::{
    LockedSqliteHandle, SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode,
    SqliteSynchronous,
};
use sqlx::{Connection, SqliteConnection};

use super::sqlite::{Db, OpenFlags, Syncs};
use super::{Error, schema, session};

/// How durable a commit is. Only benchmarks ever pick anything but [`Durability::Full`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsynced at every commit. The default, and what the
    /// output gate's promise rests on.
    #[default]
    Full,
    /// `synchronous=NORMAL`: commits survive a process crash but not a power loss. For
    /// benchmarks that show what the fsync costs. (On an object file berth's own connection
    /// keeps NORMAL's promise — never a corrupt file — with `synchronous=OFF` and ordered
    /// checkpoints, as under `Group` and `Log`: see [`Durability::object_syncs`].)
    Normal,
    /// `synchronous=OFF`: for the same baselines only.
    Off,
    /// No sync per commit (`synchronous=OFF` with ordered checkpoints:
    /// [`Durability::object_syncs`]), and every batch's effects (replies, spawned work,
    /// events) wait for the runtime's shared durability barrier (`barrier.rs`): one `syncfs`
    /// makes the commits of every object waiting at that moment durable. An acknowledged write
    /// survives power loss as with `Full`, at one flush per group of objects instead of one
    /// per commit.
    Group,
    /// No sync per commit (as under `Group`), and every batch is also appended to the
    /// runtime's shared commit journal (`journal/`), whose one `fdatasync` covers every object
    /// ready at that moment; a batch's effects wait for it. An acknowledged write survives
    /// power loss as with `Full`: replay applies what an object file lost. A new object file,
    /// and a migration, are synced before their first record (`open_object`).
    Log,
}

impl Durability {
    /// Who syncs an object file opened by berth's own connection as [`Access::Sole`] under
    /// this durability. Under `Normal`, `Group` and `Log` no commit needs a sync of SQLite's
    /// (the barrier, the journal or cluster mode's log make commits durable, or nothing is
    /// promised), so the connection runs `synchronous=OFF` and syncs only its checkpoints, in
    /// order ([`Syncs::Ordered`], `sqlite/wal.rs`): a woken object's first commit then no
    /// longer syncs the new WAL's header and its directory.
    pub(crate) fn object_syncs(self) -> Syncs {
        match self {
            Durability::Normal | Durability::Group | Durability::Log => Syncs::Ordered,
            Durability::Full | Durability::Off => Syncs::Sqlite,
        }
    }

    /// The `synchronous` setting of berth's own connection under this durability when `syncs`
    /// syncs it: `OFF` for [`Syncs::Ordered`] (its checkpoints sync themselves).
    fn synchronous_under(self, syncs: Syncs) -> &'static str {
        match syncs {
            Syncs::Ordered => "OFF",
            Syncs::Sqlite => self.synchronous_name(),
        }
    }

    /// The `synchronous` setting of a database under this durability, as SQLite names it
    /// (for either connection type: sqlx's through [`Durability::synchronous`], berth's own
    /// through [`Durability::synchronous_under`]).
    fn synchronous_name(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal | Durability::Group | Durability::Log => "NORMAL",
            Durability::Off => "OFF",
        }
    }

    /// [`Durability::synchronous_name`] as sqlx's setting.
    fn synchronous(self) -> SqliteSynchronous {
        SqliteSynchronous::from_str(self.synchronous_name()).unwrap_or(SqliteSynchronous::Full)
    }
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            "off" => Ok(Durability::Off),
            "group" => Ok(Durability::Group),
            "log" => Ok(Durability::Log),
            other => Err(format!(
                "unknown durability `{other}` (full, group, log, normal, off)"
            )),
        }
    }
}

/// Process-wide SQLite settings, applied once before the first connection opens.
///
/// Memory statistics off: with them on (SQLite's default) every allocation inside SQLite takes
/// one global mutex, and with an object's connection per thread that mutex is the most
/// contended lock in the process (W2's cold wakes spent 7.6 % of their samples waking mutex
/// waiters, mostly under SQLite's allocator). berth never reads SQLite's memory statistics.
///
/// A smaller lookaside ([`LOOKASIDE`]): SQLite gives every connection a private pool of small
/// allocation slots, 120 KB by default, touched as a statement is prepared and kept until the
/// connection closes; with thousands of object connections open at once that pool was ~9 %
/// of each one's resident memory.
///
/// Called first thing by `berth`'s `main` (before any thread exists: `sqlite3_config` is not
/// thread-safe) and by [`open`] for other users of the crate. It only works before SQLite
/// initializes; if something opened a connection first, SQLite keeps its defaults and a
/// debug line says so.
pub fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int argument; sqlite3_config is called
        // once, before this process opens any connection through `open` (a connection opened
        // elsewhere first makes it return SQLITE_MISUSE, which changes nothing).
        #[allow(unsafe_code)]
        let rc = unsafe {
            libsqlite3_sys::sqlite3_config(
                libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS,
                std::ffi::c_int::from(0_u8),
            )
        };
        // SAFETY: SQLITE_CONFIG_LOOKASIDE takes two int arguments (slot size, slot count);
        // called before any connection opens, as above.
        #[allow(unsafe_code)]
        let lookaside = unsafe {
            libsqlite3_sys::sqlite3_config(
                libsqlite3_sys::SQLITE_CONFIG_LOOKASIDE,
                LOOKASIDE.0,
                LOOKASIDE.1,
            )
        };
        if rc != libsqlite3_sys::SQLITE_OK || lookaside != libsqlite3_sys::SQLITE_OK {
            tracing::debug!(
                memstatus = rc,
                lookaside,
                "SQLite was initialized already; it keeps its default settings"
            );
        }
    });
}

/// Each connection's lookaside: slots of 1,200 bytes (SQLite's default size), 24 of them
/// (default 100). A wake's statements use up to ~80 slots at once while they are prepared;
/// allocations beyond the pool go to malloc. Measured under W2 (64 clients, 10,000 tenants,
/// ~3,500 open at once): 469 KiB resident per open object against 516 with the default, and
/// 360 KiB with the tenant's load statements not kept either (`tenant::broker`'s load);
/// pairs/s not lower.
const LOOKASIDE: (std::ffi::c_int, std::ffi::c_int) = (1200, 24);

/// The page size of an object file created by this build (see [`options`]).
pub(crate) const OBJECT_PAGE_SIZE: u32 = 2048;

/// Who opens a database file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Other connections may open the file too (the directory: a backup reads it while the
    /// server writes it). SQLite's default: POSIX locks and a shared-memory WAL index.
    Shared,
    /// The file's one connection, for as long as it is open: an object's database. The
    /// runtime opens an object file only for the object's own activation (one registry slot,
    /// one parked connection at most) and `berth.lock` keeps other processes out of the data
    /// directory, so SQLite is told so: the `unix-none` VFS (no POSIX locks, so an open no
    /// longer walks SQLite's process-wide list of open files under its global mutex — linear
    /// in the thousands of object files open at once) and exclusive locking mode (the WAL
    /// index lives on the connection's heap: no `-shm` file is created, mapped and deleted
    /// per wake). Durability is unchanged: the same WAL, the same fsyncs. Anything else that
    /// reads an object file goes through its object or holds it closed (`NsInner::copy_file`).
    Sole,
}

/// Opens (creating if missing) the SQLite file at `path` with berth's settings.
///
/// # Errors
///
/// The file cannot be created or opened, or a pragma fails.
pub async fn open(
    path: &Path,
    durability: Durability,
    access: Access,
) -> Result<SqliteConnection, Error> {
    let mut conn = connect(path, durability, access).await?;
    persist_wal(&mut conn.lock_handle().await?)?;
    Ok(conn)
}

/// berth's settings for the file at `path` (created if missing).
fn options(path: &Path, durability: Durability, access: Access) -> SqliteConnectOptions {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(durability.synchronous())
        .foreign_keys(true)
        // Only this connection ever writes the file, so waiting on a lock means something is
        // badly wrong; fail fast instead of hanging an object.
        .busy_timeout(Duration::from_secs(5))
        .pragma("temp_store", "memory")
        // A small page cache per object: thousands of objects may be open at once.
        .pragma("cache_size", "-512")
        // Bounds the WAL between checkpoints, and truncates it at close (see `persist_wal`).
        .pragma("journal_size_limit", "4194304")
        .statement_cache_capacity(64);
    match access {
        Access::Shared => options,
        // sqlx sets the locking mode before the journal mode, as SQLite needs for a heap WAL
        // index.
        Access::Sole => options
            // 2 KiB pages for files created from now on (an existing file keeps the size it
            // was made with). A tenant touched now and then costs what its wake reads and
            // writes, page by page: the schema's and tables' root pages into the page cache,
            // every changed page into the WAL, and most of an object's tables hold a few
            // rows. W2 (10,000 tenants) ran 13-43 % faster than with 4 KiB; one busy tenant
            // (W1) pays ~10 % for smaller pages. 1 KiB was faster still for W2 but halved
            // a busy tenant: an event row (~1.2 KB) no longer fits a page (BENCHMARKS.md).
            .page_size(OBJECT_PAGE_SIZE)
            .vfs("unix-none")
            .locking_mode(SqliteLockingMode::Exclusive),
    }
}

/// A new connection to the file at `path` (created if missing) with berth's settings.
async fn connect(
    path: &Path,
    durability: Durability,
    access: Access,
) -> Result<SqliteConnection, Error> {
    configure_sqlite();
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    Ok(SqliteConnection::connect_with(&options(path, durability, access)).await?)
}

/// Writes the committed state of `db`'s database to `target` (which must not exist) with
/// `VACUUM INTO`, on the connection itself. Call it between batches (no transaction open),
/// off tokio's workers (it reads and writes the whole file). `gate` is the connection's commit
/// gate: `VACUUM INTO` commits into its target, which the gate would otherwise refuse. The
/// copy is not synced.
pub(crate) fn vacuum_into(db: &mut Db, gate: &AtomicBool, target: &Path) -> Result<(), Error> {
    let _open = session::Opened::new(gate);
    vacuum_db(db, target)
}

/// `VACUUM INTO target` on `db`.
fn vacuum_db(db: &mut Db, target: &Path) -> Result<(), Error> {
    let target = target
        .to_str()
        .ok_or_else(|| Error::Other(anyhow::anyhow!("{} is not UTF-8", target.display())))?;
    db.query("VACUUM INTO ?1")
        .bind(target)
        .persistent(false)
        .execute()?;
    Ok(())
}

/// `VACUUM INTO target` on `conn` (a connection without a commit gate: the directory's).
pub(crate) async fn vacuum(conn: &mut SqliteConnection, target: &Path) -> Result<(), Error> {
    let target = target
        .to_str()
        .ok_or_else(|| Error::Other(anyhow::anyhow!("{} is not UTF-8", target.display())))?;
    sqlx::query("VACUUM INTO ?1")
        .bind(target)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// [`vacuum_into`] for the database of a closed object at `path`, on a connection of its own
/// (the caller holds the object closed: see [`Access::Sole`]). Opened as the object opens it,
/// so a WAL left by a crash is recovered the same way (and checkpointed at close, the WAL
/// file kept, as the object's next close would). Runs on tokio's blocking pool: a copy reads
/// and writes the whole file.
pub(crate) async fn vacuum_closed(path: &Path, target: &Path) -> Result<(), Error> {
    let (path, target) = (path.to_owned(), target.to_owned());
    on_blocking_pool("copying an object file", move || {
        let mut db = open_db(&path, Durability::Full, Access::Sole, false)?;
        let copied = vacuum_db(&mut db, &target);
        db.close()?;
        copied
    })
    .await
}

/// Closes an object's connection on tokio's blocking pool: its close checkpoints the WAL into
/// the database (writing and syncing both files).
///
/// # Errors
///
/// SQLite could not close it cleanly (the connection is released all the same).
pub(crate) async fn close(db: Db) -> Result<(), Error> {
    on_blocking_pool("closing an object file", move || Ok(db.close()?)).await
}

/// Runs `work` — SQLite on a connection it owns, which may wait for the disk (opening a
/// file, a checkpoint, a copy) — on tokio's blocking pool. `what` names the work if the
/// pool's task fails (a panic, or the runtime shutting down).
pub(crate) async fn on_blocking_pool<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Other(anyhow::anyhow!("{what}: {err}")))?
}

/// Opens the SQLite file at `path` with berth's settings (those of [`options`]) as a [`Db`]
/// of berth's own, on the calling thread: SQLite reads the file's header and, with
/// `create`, creates it. Call it from tokio's blocking pool.
///
/// # Errors
///
/// The file is missing (without `create`) or cannot be opened, or a setting fails.
pub fn open_db(
    path: &Path,
    durability: Durability,
    access: Access,
    create: bool,
) -> Result<Db, Error> {
    if create && let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let vfs = match access {
        Access::Shared => None,
        Access::Sole => Some(c"unix-none"),
    };
    let mut db = Db::open(
        path,
        OpenFlags {
            create,
            read_only: false,
            vfs,
        },
    )?;
    // Only this connection ever writes the file: as in `options`.
    db.busy_timeout(5_000);
    let syncs = match access {
        Access::Shared => Syncs::Sqlite,
        Access::Sole => durability.object_syncs(),
    };
    let synchronous = durability.synchronous_under(syncs);
    // The order matters: the page size before anything creates the file's first page, the
    // locking mode before the journal mode (a heap WAL index needs exclusive locking first).
    let sole = match access {
        Access::Shared => String::new(),
        Access::Sole => {
            format!("PRAGMA page_size = {OBJECT_PAGE_SIZE}; PRAGMA locking_mode = EXCLUSIVE;")
        }
    };
    db.execute_batch(&format!(
        "{sole} PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
         PRAGMA synchronous = {synchronous}; PRAGMA temp_store = memory; \
         PRAGMA cache_size = -512; PRAGMA journal_size_limit = 4194304;"
    ))?;
    db.persist_wal()?;
    if let Access::Sole = access {
        // The file's only connection: its WAL hook sees every commit (`sqlite/wal.rs`).
        db.track_wal(syncs)?;
    }
    Ok(db)
}

/// An object's open database: the connection, its commit gate, and its key-value table.
pub(crate) type OpenObject = (Db, Arc<AtomicBool>, HashMap<String, String>);

/// An object's database as its activation needs it, on the calling thread (call it from
/// tokio's blocking pool: it opens, and may create, the file): opened as [`open_db`] does with
/// [`Access::Sole`], its commits gated (`session::install_gate`; the open's own writes, the
/// migrations, pass), brought to `migrator`'s schema, and its key-value table read
/// ([`kv_all`]) — in one statement list with the schema version when the file is current.
pub(crate) fn open_object(
    path: &Path,
    durability: Durability,
    migrator: &Migrator,
) -> Result<OpenObject, Error> {
    // Under the journal a new file's name and its schema must be durable before its first
    // record is (replay applies records to the file; it does not create one).
    let created = durability == Durability::Log && !path.exists();
    let mut db = open_db(path, durability, Access::Sole, true)?;
    let gate = session::install_gate(&mut db);
    let latest = schema::latest_version(migrator);
    // The version and the table in one list; on a new file the table does not exist yet, and
    // that error only means the slow path.
    let current = db
        .query("PRAGMA user_version;\nSELECT key, value FROM _berth_kv")
        .fetch_sets();
    if let Ok(mut sets) = current {
        let (version,): (i64,) = sets.one()?;
        if version == latest && latest != 0 {
            let rows: Vec<(String, String)> = sets.rows()?;
            return Ok((db, gate, rows.into_iter().collect()));
        }
    }
    {
        let _open = session::Opened::new(&gate);
        if durability == Durability::Log {
            db.execute_batch("PRAGMA synchronous = FULL")?;
        }
        schema::prepare_object(&mut db, migrator)?;
        if durability == Durability::Log {
            // Back to `open_db`'s setting.
            let synchronous = durability.synchronous_under(durability.object_syncs());
            db.execute_batch(&format!("PRAGMA synchronous = {synchronous}"))?;
        }
    }
    if created {
        sync_parents(path)?;
    }
    let kv = kv_all(&mut db)?;
    Ok((db, gate, kv))
}

/// Makes a new object file's directory entries durable: its directory's, and those of the
/// directories above it up to the data directory, which its creation may have made
/// (`<data>/objects/<namespace>/<xx>/`).
fn sync_parents(path: &Path) -> Result<(), Error> {
    for dir in path.ancestors().skip(1).take(4) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Keeps the WAL file when the connection closes (truncated to nothing after the close's
/// checkpoint, because `journal_size_limit` is set) instead of deleting it (as
/// [`Db::persist_wal`] does on berth's own connection).
///
/// An object hibernates and wakes many times; without this, every wake creates the WAL file
/// anew and every hibernation deletes it, and on ext4 allocating an inode next to thousands of
/// recently deleted ones is the largest single cost of a wake.
fn persist_wal(handle: &mut LockedSqliteHandle<'_>) -> Result<(), Error> {
    let db = handle.as_raw_handle().as_ptr();
    let mut on: std::ffi::c_int = 1;
    // SAFETY: `db` is the open connection this locked handle guards for the whole call; the
    // argument of SQLITE_FCNTL_PERSIST_WAL is a pointer to an int, read (and, for -1, written)
    // during the call only.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libsqlite3_sys::sqlite3_file_control(
            db,
            c"main".as_ptr(),
            libsqlite3_sys::SQLITE_FCNTL_PERSIST_WAL,
            std::ptr::from_mut(&mut on).cast(),
        )
    };
    if rc != libsqlite3_sys::SQLITE_OK {
        return Err(Error::Other(anyhow::anyhow!(
            "SQLITE_FCNTL_PERSIST_WAL failed with code {rc}"
        )));
    }
    Ok(())
}

/// The size of a database's main file, in bytes (pages × page size).
pub(crate) fn size(db: &mut Db) -> Result<u64, Error> {
    let (bytes,): (i64,) = db
        .query("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
        .fetch_one()?;
    Ok(u64::try_from(bytes).unwrap_or(0))
}

/// Every row of `_berth_kv` (a handful per object): read once when an object loads, so the
/// load's key reads cost nothing each.
pub(crate) fn kv_all(db: &mut Db) -> Result<HashMap<String, String>, Error> {
    let rows: Vec<(String, String)> = db.query("SELECT key, value FROM _berth_kv").fetch_all()?;
    Ok(rows.into_iter().collect())
}

/// Decodes the JSON value stored under `key` in a [`kv_all`] snapshot.
pub(crate) fn kv_value<T: DeserializeOwned>(
    kv: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, Error> {
    kv.get(key)
        .map(|text| serde_json::from_str(text).map_err(Error::corrupt))
        .transpose()
}

/// Reads a JSON value from `_berth_kv`.
pub(crate) fn kv_get<T: DeserializeOwned>(db: &mut Db, key: &str) -> Result<Option<T>, Error> {
    let row: Option<(String,)> = db
        .query("SELECT value FROM _berth_kv WHERE key = ?1")
        .bind(key)
        .fetch_optional()?;
    match row {
        None => Ok(None),
        Some((text,)) => Ok(Some(serde_json::from_str(&text).map_err(Error::corrupt)?)),
    }
}

/// Writes a JSON value to `_berth_kv`.
pub(crate) fn kv_put<T: Serialize + ?Sized>(
    db: &mut Db,
    key: &str,
    value: &T,
) -> Result<(), Error> {
    let text = serde_json::to_string(value).map_err(Error::corrupt)?;
    db.query("INSERT INTO _berth_kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(text)
        .execute()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::session::Value;
    use sqlx::Row as _;

    /// The settings berth gives an object file and its connection.
    const SETTINGS: [&str; 9] = [
        "journal_mode",
        "synchronous",
        "foreign_keys",
        "temp_store",
        "cache_size",
        "journal_size_limit",
        "locking_mode",
        "page_size",
        "busy_timeout",
    ];

    /// `open_db` (berth's own connection) and `open` (sqlx's) give a new file and its
    /// connection the same settings, for every durability and kind of access: the two lists
    /// of settings cannot drift apart.
    #[tokio::test]
    async fn both_connection_types_open_files_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        for durability in [Durability::Full, Durability::Normal, Durability::Off] {
            for access in [Access::Sole, Access::Shared] {
                let name = format!("{durability:?}-{access:?}");
                let mut conn = open(&dir.path().join(format!("{name}-sqlx")), durability, access)
                    .await
                    .expect("open with sqlx");
                let mut by_sqlx = Vec::new();
                for setting in SETTINGS {
                    let row = sqlx::query(&format!("PRAGMA {setting}"))
                        .fetch_one(&mut conn)
                        .await
                        .expect("read a setting");
                    by_sqlx.push(match row.try_get::<i64, _>(0) {
                        Ok(number) => Value::Integer(number),
                        Err(_) => Value::Text(row.try_get(0).expect("text")),
                    });
                }
                conn.close().await.expect("close");
                let mut db = open_db(
                    &dir.path().join(format!("{name}-own")),
                    durability,
                    access,
                    true,
                )
                .expect("open with berth's own connection");
                let mut by_own = Vec::new();
                for setting in SETTINGS {
                    let (value,): (Value,) = db
                        .query(&format!("PRAGMA {setting}"))
                        .fetch_one()
                        .expect("read a setting");
                    by_own.push(value);
                }
                db.close().expect("close");
                if matches!(access, Access::Sole) && durability.object_syncs() == Syncs::Ordered {
                    // berth's own connection syncs its checkpoints itself under `OFF`; sqlx's
                    // cannot, so there the setting stays `NORMAL`.
                    let at = SETTINGS.iter().position(|s| *s == "synchronous");
                    let at = at.expect("synchronous is read");
                    assert_eq!(by_own[at], Value::Integer(0), "{name}: synchronous=OFF");
                    by_own[at] = by_sqlx[at].clone();
                }
                assert_eq!(by_own, by_sqlx, "{name}: {SETTINGS:?}");
            }
        }
    }
}
