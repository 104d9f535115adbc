//! Opening an object's SQLite file, and the small key-value helper beside raw SQL.
//!
//! Every object database is opened the same way: WAL journal, `synchronous=FULL` (a commit is
//! on disk before `COMMIT` returns, which is what lets the runtime's output gate promise that
//! an acknowledged write survives `kill -9`), foreign keys on, and the object type's embedded
//! migrations applied. The runtime's own rows (the alarm, the object's name) live in the
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

use super::sqlite::{Db, OpenFlags};
use super::{Error, reads, session};

/// How durable a commit is. Only benchmarks ever pick anything but [`Durability::Full`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsynced at every commit. The default, and what the
    /// output gate's promise rests on.
    #[default]
    Full,
    /// `synchronous=NORMAL`: commits survive a process crash but not a power loss. For
    /// benchmarks that show what the fsync costs.
    Normal,
    /// `synchronous=OFF`: for the same baselines only.
    Off,
    /// `synchronous=NORMAL`, and every batch's effects (replies, spawned work, events) wait
    /// for the runtime's shared durability barrier (`barrier.rs`): one `syncfs` makes the
    /// commits of every object waiting at that moment durable. An acknowledged write survives
    /// power loss as with `Full`, at one flush per group of objects instead of one per commit.
    Group,
}

impl Durability {
    /// The `synchronous` setting of an object database under this durability, as SQLite
    /// names it (for either connection type: sqlx's through [`Durability::synchronous`],
    /// berth's own in [`open_db`]).
    fn synchronous_name(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal | Durability::Group => "NORMAL",
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
            other => Err(format!(
                "unknown durability `{other}` (full, group, normal, off)"
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
        if rc != libsqlite3_sys::SQLITE_OK {
            tracing::debug!(
                code = rc,
                "SQLite was initialized already; memory statistics stay on"
            );
        }
    });
}

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

/// Writes the committed state of `conn`'s database to `target` (which must not exist) with
/// `VACUUM INTO`, on the connection itself. Call it between batches (no transaction open).
/// `gate` is the connection's commit gate: `VACUUM INTO` commits into its target, which the
/// gate would otherwise refuse. The copy is not synced.
pub(crate) async fn vacuum_into(
    conn: &mut SqliteConnection,
    gate: &AtomicBool,
    target: &Path,
) -> Result<(), Error> {
    let _open = session::Opened::new(gate);
    vacuum(conn, target).await
}

/// `VACUUM INTO target` on `conn` (a connection without a commit gate).
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
    let path = path.to_owned();
    let target = target
        .to_str()
        .ok_or_else(|| Error::Other(anyhow::anyhow!("{} is not UTF-8", target.display())))?
        .to_owned();
    tokio::task::spawn_blocking(move || {
        let mut db = open_db(&path, Durability::Full, Access::Sole, false)?;
        let copied = db.query("VACUUM INTO ?1").bind(target).execute();
        db.close()?;
        copied?;
        Ok(())
    })
    .await
    .map_err(|err| Error::Other(anyhow::anyhow!("copying an object file: {err}")))?
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
    let synchronous = durability.synchronous_name();
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
    Ok(db)
}

/// An object's database as its activation needs it, in as few round trips to the
/// connection's thread as the state of the file allows (three when it is current: the
/// connection, one for its settings, one read): opened as [`open`] does with
/// [`Access::Sole`], its commits gated (`session::install_gate`; the open's own writes, the
/// migrations, pass), brought to `migrator`'s schema, and its key-value table read
/// (`kv_all`).
pub(crate) async fn open_object(
    path: &Path,
    durability: Durability,
    migrator: &Migrator,
) -> Result<(SqliteConnection, Arc<AtomicBool>, HashMap<String, String>), Error> {
    let mut conn = connect(path, durability, Access::Sole).await?;
    let gate = {
        let mut handle = conn.lock_handle().await?;
        persist_wal(&mut handle)?;
        session::install_gate_locked(&mut handle)
    };
    let latest = latest_version(migrator);
    // The version and the table in one round trip; on a new file the table does not exist
    // yet, and that error only means the slow path.
    let current = reads::read_sets(
        &mut conn,
        "PRAGMA user_version;\nSELECT key, value FROM _berth_kv",
        &[],
    )
    .await;
    if let Ok(mut sets) = current {
        let (version,): (i64,) = sets.one()?;
        if version == latest && latest != 0 {
            let rows: Vec<(String, String)> = sets.rows()?;
            return Ok((conn, gate, rows.into_iter().collect()));
        }
    }
    {
        let _open = session::Opened::new(&gate);
        prepare_object(&mut conn, migrator).await?;
    }
    let kv = kv_all(&mut conn).await?;
    Ok((conn, gate, kv))
}

/// Keeps the WAL file when the connection closes (truncated to nothing after the close's
/// checkpoint, because `journal_size_limit` is set) instead of deleting it.
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

/// Applies `migrator` to `conn` unless the database already carries its latest version.
///
/// The fast path reads `PRAGMA user_version` (one statement) so reopening a hibernated object
/// stays cheap; the slow path runs sqlx's migrator, which records every migration in
/// `_sqlx_migrations` and never applies one twice, then stamps `user_version`.
pub(crate) async fn migrate(conn: &mut SqliteConnection, migrator: &Migrator) -> Result<(), Error> {
    if is_migrated(conn, migrator).await? {
        return Ok(());
    }
    apply_migrations(conn, migrator).await
}

/// The latest version `migrator` knows.
fn latest_version(migrator: &Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The database carries `migrator`'s latest version (`PRAGMA user_version`, one statement).
async fn is_migrated(conn: &mut SqliteConnection, migrator: &Migrator) -> Result<bool, Error> {
    let latest = latest_version(migrator);
    let (current,): (i64,) = sqlx::query_as("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    Ok(current == latest && latest != 0)
}

/// Runs sqlx's migrator (which never applies a migration twice) and stamps `user_version`.
async fn apply_migrations(conn: &mut SqliteConnection, migrator: &Migrator) -> Result<(), Error> {
    migrator.run_direct(&mut *conn).await?;
    // `user_version` is a 32-bit integer; migration versions are small sequence numbers.
    let stamp = i32::try_from(latest_version(migrator)).unwrap_or(0);
    sqlx::query(&format!("PRAGMA user_version = {stamp}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Brings an object database to its object type's schema: the runtime's table and the
/// migrations. One statement (`PRAGMA user_version`) when the database is current already,
/// which is every wake but the first after an upgrade: the runtime's table is created before
/// the version is ever stamped, so a current version implies it.
pub async fn prepare_object(conn: &mut SqliteConnection, migrator: &Migrator) -> Result<(), Error> {
    if is_migrated(conn, migrator).await? {
        return Ok(());
    }
    bootstrap(conn).await?;
    apply_migrations(conn, migrator).await
}

/// The size of a database's main file, in bytes (pages × page size).
pub(crate) async fn size(conn: &mut SqliteConnection) -> Result<u64, Error> {
    let (bytes,): (i64,) = sqlx::query_as(
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(u64::try_from(bytes).unwrap_or(0))
}

/// Creates the runtime's own table in an object database.
pub(crate) async fn bootstrap(conn: &mut SqliteConnection) -> Result<(), Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS _berth_kv (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID",
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Every row of `_berth_kv` (a handful per object): read once when an object loads, so the
/// load's key reads cost no round trip each.
pub(crate) async fn kv_all(conn: &mut SqliteConnection) -> Result<HashMap<String, String>, Error> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT key, value FROM _berth_kv")
        .fetch_all(&mut *conn)
        .await?;
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
pub(crate) async fn kv_get<T: DeserializeOwned>(
    conn: &mut SqliteConnection,
    key: &str,
) -> Result<Option<T>, Error> {
    let row: Option<(String,)> = sqlx::query_as("SELECT value FROM _berth_kv WHERE key = ?1")
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        None => Ok(None),
        Some((text,)) => Ok(Some(serde_json::from_str(&text).map_err(Error::corrupt)?)),
    }
}

/// Writes a JSON value to `_berth_kv`.
pub(crate) async fn kv_put<T: Serialize + ?Sized>(
    conn: &mut SqliteConnection,
    key: &str,
    value: &T,
) -> Result<(), Error> {
    let text = serde_json::to_string(value).map_err(Error::corrupt)?;
    sqlx::query("INSERT INTO _berth_kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(text)
        .execute(&mut *conn)
        .await?;
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
                assert_eq!(by_own, by_sqlx, "{name}: {SETTINGS:?}");
            }
        }
    }
}
