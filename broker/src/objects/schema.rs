//! Bringing a database to its schema: the directory's through sqlx's migrator, an object's
//! through berth's own runner, which reads and writes sqlx's bookkeeping (`_sqlx_migrations`)
//! exactly as sqlx does, so files migrated by either open with the other. A current file
//! costs one statement (`PRAGMA user_version`, stamped with the latest version after every
//! run).

use std::collections::HashMap;

use sqlx::SqliteConnection;
use sqlx::migrate::Migrator;

use super::Error;
use super::sqlite::Db;

/// Applies `migrator` to `conn` (the directory's) unless the database already carries its
/// latest version.
///
/// The fast path reads `PRAGMA user_version` (one statement); the slow path runs sqlx's
/// migrator, which records every migration in `_sqlx_migrations` and never applies one twice,
/// then stamps `user_version`.
pub(crate) async fn migrate(conn: &mut SqliteConnection, migrator: &Migrator) -> Result<(), Error> {
    let latest = latest_version(migrator);
    let (current,): (i64,) = sqlx::query_as("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    if current == latest && latest != 0 {
        return Ok(());
    }
    migrator.run_direct(&mut *conn).await?;
    sqlx::query(&stamp_version(migrator))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The latest version `migrator` knows.
pub(crate) fn latest_version(migrator: &Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The statement that stamps `migrator`'s latest version as the file's `user_version`.
fn stamp_version(migrator: &Migrator) -> String {
    // `user_version` is a 32-bit integer; migration versions are small sequence numbers.
    let stamp = i32::try_from(latest_version(migrator)).unwrap_or(0);
    format!("PRAGMA user_version = {stamp}")
}

/// sqlx's table of applied migrations, as its migrator creates it.
const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
)";

/// Applies the migrations of `migrator` that `db` lacks, as sqlx's migrator does and recorded
/// where it records them (`_sqlx_migrations`), so a file migrated by an earlier build (which
/// ran sqlx's migrator) reads the same: each migration in a transaction of its own, in version
/// order. A migration recorded as failed, an applied one whose checksum differs from this
/// build's (a shipped migration was edited), or an applied one this build does not know
/// (unless the migrator ignores those) stops it with sqlx's error for the case. Then stamps
/// `user_version`.
fn apply_migrations(db: &mut Db, migrator: &Migrator) -> Result<(), Error> {
    use sqlx::migrate::MigrateError;
    db.execute_batch(MIGRATIONS_TABLE)?;
    let dirty: Option<(i64,)> = db
        .query(
            "SELECT version FROM _sqlx_migrations WHERE success = false ORDER BY version LIMIT 1",
        )
        .persistent(false)
        .fetch_optional()?;
    if let Some((version,)) = dirty {
        return Err(MigrateError::Dirty(version).into());
    }
    let applied: HashMap<i64, Vec<u8>> = db
        .query("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")
        .persistent(false)
        .fetch_all::<(i64, Vec<u8>)>()?
        .into_iter()
        .collect();
    if !migrator.ignore_missing
        && let Some(version) = applied
            .keys()
            .find(|version| !migrator.iter().any(|m| m.version == **version))
    {
        return Err(MigrateError::VersionMissing(*version).into());
    }
    for migration in migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        match applied.get(&migration.version) {
            Some(checksum) if checksum.as_slice() != &*migration.checksum => {
                return Err(MigrateError::VersionMismatch(migration.version).into());
            }
            Some(_) => continue,
            None => {}
        }
        let started = std::time::Instant::now();
        let applied = db
            .execute_batch("BEGIN")
            .and_then(|()| db.execute_batch(&migration.sql))
            .and_then(|()| {
                db.query(
                    "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                     VALUES (?1, ?2, TRUE, ?3, -1)",
                )
                .bind(migration.version)
                .bind(&*migration.description)
                .bind(migration.checksum.to_vec())
                .persistent(false)
                .execute()
            })
            .and_then(|_| db.execute_batch("COMMIT"));
        if let Err(err) = applied {
            let _ = db.execute_batch("ROLLBACK");
            return Err(err.into());
        }
        let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
        db.query("UPDATE _sqlx_migrations SET execution_time = ?1 WHERE version = ?2")
            .bind(nanos)
            .bind(migration.version)
            .persistent(false)
            .execute()?;
    }
    db.execute_batch(&stamp_version(migrator))?;
    Ok(())
}

/// Brings an object database to its object type's schema: the runtime's table and the
/// migrations. One statement (`PRAGMA user_version`) when the database is current already,
/// which is every wake but the first after an upgrade: the runtime's table is created before
/// the version is ever stamped, so a current version implies it.
pub fn prepare_object(db: &mut Db, migrator: &Migrator) -> Result<(), Error> {
    let latest = latest_version(migrator);
    let (current,): (i64,) = db.query("PRAGMA user_version").fetch_one()?;
    if current == latest && latest != 0 {
        return Ok(());
    }
    bootstrap(db)?;
    apply_migrations(db, migrator)
}

/// Creates the runtime's own table in an object database.
pub(crate) fn bootstrap(db: &mut Db) -> Result<(), Error> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS _berth_kv (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::session;
    use crate::objects::storage::{Access, Durability, open, open_db, open_object};
    use sqlx::Connection as _;

    static TEST_MIGRATOR: Migrator = sqlx::migrate!("tests/support/migrations");

    /// The rows of `_sqlx_migrations` that matter: version, checksum, success.
    fn applied(db: &mut Db) -> Vec<(i64, Vec<u8>, bool)> {
        db.query("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all()
            .expect("applied migrations")
    }

    /// Object files migrated by sqlx's migrator (every build before this one) and by berth's
    /// own runner read the same to both: neither applies a migration the other applied, and
    /// each accepts the other's bookkeeping.
    #[tokio::test]
    async fn own_migrations_and_sqlx_migrations_agree() {
        let dir = tempfile::tempdir().expect("tempdir");
        // An earlier build's file: sqlx's migrator, then the version stamp reset so the next
        // open takes the slow path and checks every recorded migration.
        let old = dir.path().join("old.sqlite");
        let mut conn = open(&old, Durability::Full, Access::Sole)
            .await
            .expect("open with sqlx");
        TEST_MIGRATOR
            .run_direct(&mut conn)
            .await
            .expect("sqlx migrates");
        sqlx::query("PRAGMA user_version = 0")
            .execute(&mut conn)
            .await
            .expect("reset the stamp");
        conn.close().await.expect("close");
        let (mut db, _, _) = open_object(&old, Durability::Full, &TEST_MIGRATOR)
            .expect("own runner accepts sqlx's rows");
        let (runs,): (i64,) = db
            .query("SELECT count(*) FROM migration_runs")
            .fetch_one()
            .expect("runs");
        assert_eq!(runs, 1, "no migration applied twice");
        let by_sqlx = applied(&mut db);
        assert_eq!(by_sqlx.len(), 2);
        db.close().expect("close");

        // A file of this build, then sqlx's migrator over it: nothing left to apply, and the
        // recorded rows are those sqlx would write.
        let new = dir.path().join("new.sqlite");
        let (mut db, _, _) =
            open_object(&new, Durability::Full, &TEST_MIGRATOR).expect("own runner migrates");
        assert_eq!(applied(&mut db), by_sqlx, "the same bookkeeping as sqlx's");
        db.close().expect("close");
        let mut conn = open(&new, Durability::Full, Access::Sole)
            .await
            .expect("open with sqlx");
        TEST_MIGRATOR
            .run_direct(&mut conn)
            .await
            .expect("sqlx accepts the own runner's rows");
        let (runs,): (i64,) = sqlx::query_as("SELECT count(*) FROM migration_runs")
            .fetch_one(&mut conn)
            .await
            .expect("runs");
        assert_eq!(runs, 1, "no migration applied twice");
        conn.close().await.expect("close");
    }

    /// A file whose recorded migration differs from this build's (a shipped migration was
    /// edited), or holds one this build does not know, or a failed one, does not open, and
    /// the refusal changes nothing in it.
    #[test]
    fn edited_unknown_or_failed_migrations_refuse_to_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            (
                "UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 2",
                "mismatch",
            ),
            (
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'future', TRUE, x'00', 0)",
                "missing",
            ),
            (
                "UPDATE _sqlx_migrations SET success = FALSE WHERE version = 2",
                "dirty",
            ),
        ];
        for (n, (tamper, what)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("{n}.sqlite"));
            let (mut db, gate, _) =
                open_object(&path, Durability::Full, &TEST_MIGRATOR).expect("migrates");
            {
                let _open = session::Opened::new(&gate);
                db.execute_batch(tamper).expect("tamper");
                db.execute_batch("PRAGMA user_version = 0")
                    .expect("reset the stamp");
            }
            let before = applied(&mut db);
            db.close().expect("close");
            let err = open_object(&path, Durability::Full, &TEST_MIGRATOR)
                .err()
                .unwrap_or_else(|| panic!("{what}: opened"));
            assert!(matches!(err, Error::Migrate(_)), "{what}: {err}");
            let mut db = open_db(&path, Durability::Full, Access::Sole, false).expect("reopen");
            assert_eq!(
                applied(&mut db),
                before,
                "{what}: the refusal changed nothing"
            );
            db.close().expect("close");
        }
    }
}
