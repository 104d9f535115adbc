//! Checking a backup ([`verify`], [`integrity`]), restoring one into a new data directory
//! ([`restore`]), and replacing one object's database on a running server ([`replace_with`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use sqlx::Connection as _;

use super::super::closing::Queue;
use super::super::record::SEQ_KEY;
use super::super::storage::{self, Access, Durability};
use super::super::{Error, Namespace, Object, ObjectId};
use super::{
    DIRECTORY_FILE, Kind, Manifest, MasterKey, RESTORED_KEY_FINGERPRINT, RESTORED_KIND, bad,
    digest, make_private_dir, open_copy, read_manifest, sync_dir, write_private,
};

/// What [`verify`] found.
#[derive(Debug, Default, Serialize)]
pub struct Verified {
    pub files: usize,
    pub bytes: u64,
    /// Every problem, one sentence each; empty when the backup is sound.
    pub problems: Vec<String>,
}

/// Checks every file of the backup in `dir`: its path, size and SHA-256 against the
/// manifest, and `PRAGMA integrity_check` of every database.
///
/// # Errors
///
/// The manifest cannot be read (problems with files are in the answer).
pub async fn verify(dir: &Path) -> Result<(Manifest, Verified), Error> {
    let manifest = read_manifest(dir)?;
    let mut verified = Verified::default();
    for entry in &manifest.files {
        let relative = match entry.checked_path() {
            Ok(relative) => relative,
            Err(err) => {
                verified.problems.push(err.to_string());
                continue;
            }
        };
        let path = dir.join(&relative);
        match digest(&path) {
            Ok((size, sha256)) if size == entry.size && sha256 == entry.sha256 => {
                verified.files += 1;
                verified.bytes += size;
            }
            Ok(_) => {
                verified.problems.push(format!(
                    "{}: size or checksum differs from the manifest",
                    entry.path
                ));
                continue;
            }
            Err(err) => {
                verified.problems.push(format!("{}: {err}", entry.path));
                continue;
            }
        }
        if entry.kind != Kind::MasterKey {
            match integrity(&path).await {
                Ok(()) => {}
                Err(err) => verified.problems.push(format!("{}: {err}", entry.path)),
            }
        }
    }
    Ok((manifest, verified))
}

/// `PRAGMA integrity_check` of the database at `path`, opened as it lies.
///
/// # Errors
///
/// The database cannot be opened or is not sound (SQLite's first findings).
pub async fn integrity(path: &Path) -> Result<(), Error> {
    let mut conn = open_copy(path).await?;
    let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await?;
    conn.close().await?;
    if rows.len() == 1 && rows[0].0 == "ok" {
        Ok(())
    } else {
        let findings: Vec<String> = rows.into_iter().take(5).map(|(r,)| r).collect();
        Err(bad(format!("integrity_check: {}", findings.join("; "))))
    }
}

/// What [`restore`] did.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub files: usize,
    pub bytes: u64,
    pub master_key: MasterKey,
}

/// Restores the backup in `from` into `data_dir`, which must be empty or not exist: checks
/// the backup first ([`verify`]), copies every file, then lowers each object's alarm in the
/// directory to the object's own where it was later (see the module docs). Run it with berth
/// stopped: the data directory is new.
///
/// # Errors
///
/// The backup is not sound, `data_dir` is not empty, or a copy fails.
pub async fn restore(from: &Path, data_dir: &Path) -> Result<Restored, Error> {
    let (manifest, verified) = verify(from).await?;
    if !verified.problems.is_empty() {
        return Err(bad(format!(
            "the backup in {} is not sound: {}",
            from.display(),
            verified.problems.join("; ")
        )));
    }
    if data_dir.exists() {
        if std::fs::read_dir(data_dir)?.next().is_some() {
            return Err(bad(format!(
                "{} is not empty: restore into a new data directory",
                data_dir.display()
            )));
        }
    } else {
        make_private_dir(data_dir)?;
    }
    for entry in &manifest.files {
        let relative = entry.checked_path()?;
        let target = data_dir.join(&relative);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = std::fs::read(from.join(&relative))?;
        write_private(&target, &bytes)?;
    }
    let mut directory = super::super::storage::open(
        &data_dir.join(DIRECTORY_FILE),
        super::super::storage::Durability::Full,
        super::super::storage::Access::Shared,
    )
    .await?;
    for entry in manifest.files.iter().filter(|e| e.kind == Kind::Object) {
        let (Some(namespace), Some(id), Some(at)) = (&entry.namespace, &entry.id, entry.alarm_at)
        else {
            continue;
        };
        sqlx::query(
            "UPDATE objects SET alarm_at = ?3 \
             WHERE namespace = ?1 AND id = ?2 AND (alarm_at IS NULL OR alarm_at > ?3)",
        )
        .bind(namespace)
        .bind(id)
        .bind(at)
        .execute(&mut directory)
        .await?;
    }
    // The first start checks that it has the key the restored secrets are sealed under.
    sqlx::query(
        "INSERT INTO keys (kind, key, value) VALUES (?1, ?2, ?3) \
         ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
    )
    .bind(RESTORED_KIND)
    .bind(RESTORED_KEY_FINGERPRINT)
    .bind(&manifest.master_key.fingerprint)
    .execute(&mut directory)
    .await?;
    directory.close().await?;
    sync_dir(data_dir)?;
    Ok(Restored {
        files: verified.files,
        bytes: verified.bytes,
        master_key: manifest.master_key,
    })
}

/// Replaces the database of object `id` with the backup's copy at `file`, while the object is
/// closed and kept closed: a live object is asked to hibernate first (finishing its
/// background work), callers wait meanwhile, and the next message activates it on the new
/// state. The directory's alarm becomes the copy's (`alarm_at`).
///
/// # Errors
///
/// The object did not close within `within`, the runtime is shutting down, or the copy
/// failed (the object then keeps its old file if the failure came before the swap).
///
/// `before` runs once the object is closed, before the swap (to read the replaced file); an
/// error from it cancels the swap.
pub async fn replace_with<O, F, Fut>(
    namespace: &Namespace<O>,
    id: ObjectId,
    file: &Path,
    alarm_at: Option<i64>,
    within: Duration,
    before: F,
) -> Result<(), Error>
where
    O: Object,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let inner = &namespace.inner;
    let pin = inner
        .pin(id, within)
        .await
        .map_err(|err| bad(format!("the object did not close: {err}")))?;
    // A hibernated object's parked connection must not outlive its file.
    if let Some(parked) = inner
        .shared
        .warm
        .take(&inner.shared.object_path(O::NAMESPACE, id))
        .await
    {
        parked.close(&inner.shared.closer, Queue::Now).await;
    }
    if let Err(err) = before().await {
        inner.unpin(id, pin);
        return Err(err);
    }
    let result = swap(inner.shared.object_path(O::NAMESPACE, id), file);
    if result.is_ok() {
        let shared = &inner.shared;
        let now = shared.clock().now_ms();
        if let Err(err) = shared
            .directory
            .set_alarm(O::NAMESPACE, id, alarm_at, now)
            .await
        {
            inner.unpin(id, pin);
            return Err(err);
        }
        shared.scheduler.schedule(O::NAMESPACE, id, alarm_at);
    }
    inner.unpin(id, pin);
    result
}

/// Gives the copy at `staged` the log position (`berth.seq`) of the database at `path` it
/// replaces, when that is further. The commit journal may still hold records of the replaced
/// database up to its position; replay skips what a file's position covers, so none of them
/// is ever applied to the restored one, and its next commit follows them.
fn carry_position(path: &Path, staged: &Path) -> Result<(), Error> {
    if !path.exists() {
        return Ok(());
    }
    let mut old = storage::open_db(path, Durability::Full, Access::Sole, false)?;
    let replaced: Option<i64> = storage::kv_get(&mut old, SEQ_KEY)?;
    old.close()?;
    let Some(replaced) = replaced else {
        return Ok(());
    };
    let mut copy = storage::open_db(staged, Durability::Full, Access::Sole, false)?;
    let own: Option<i64> = storage::kv_get(&mut copy, SEQ_KEY)?;
    if own.is_none_or(|own| own < replaced) {
        storage::kv_put(&mut copy, SEQ_KEY, &replaced)?;
    }
    copy.close()?;
    // The copy's connection kept its (now empty) WAL file: it must not follow the copy.
    let mut wal = staged.as_os_str().to_owned();
    wal.push("-wal");
    match std::fs::remove_file(&wal) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
        _ => Ok(()),
    }
}

/// Puts `file` in place of the database at `path`: its WAL and shared-memory files go first
/// (an old WAL replayed onto another database would corrupt it), then the copy is renamed in.
fn swap(path: PathBuf, file: &Path) -> Result<(), Error> {
    let dir = path
        .parent()
        .ok_or_else(|| bad("an object path has a parent".to_owned()))?
        .to_owned();
    std::fs::create_dir_all(&dir)?;
    let staged = path.with_extension("sqlite.restoring");
    let _ = std::fs::remove_file(&staged);
    write_private(&staged, &std::fs::read(file)?)?;
    carry_position(&path, &staged)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.clone().into_os_string();
        side.push(suffix);
        match std::fs::remove_file(&side) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err.into()),
        }
    }
    std::fs::rename(&staged, &path)?;
    sync_dir(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::schema;

    fn object_file(path: &Path, position: Option<i64>) {
        let mut db = storage::open_db(path, Durability::Full, Access::Sole, true).expect("open");
        schema::bootstrap(&mut db).expect("bootstrap");
        if let Some(position) = position {
            storage::kv_put(&mut db, SEQ_KEY, &position).expect("position");
        }
        db.close().expect("close");
    }

    fn position(path: &Path) -> Option<i64> {
        let mut db = storage::open_db(path, Durability::Full, Access::Sole, false).expect("open");
        let position = storage::kv_get(&mut db, SEQ_KEY).expect("read");
        db.close().expect("close");
        position
    }

    /// A restored copy continues from the replaced file's journal position (so replay never
    /// applies the replaced file's records to it), keeps its own when that is further, and
    /// leaves no WAL file of its own behind.
    #[test]
    fn a_restored_copy_takes_the_replaced_files_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("o.sqlite");
        let copy = dir.path().join("o.sqlite.restoring");
        object_file(&old, Some(9));
        object_file(&copy, Some(4));
        carry_position(&old, &copy).expect("carry");
        assert_eq!(position(&copy), Some(9));
        let mut wal = copy.clone().into_os_string();
        wal.push("-wal");
        std::fs::remove_file(&wal).expect("the check's own WAL");
        carry_position(&old, &copy).expect("carry");
        assert!(!Path::new(&wal).exists(), "the copy's WAL is removed");

        let further = dir.path().join("f.sqlite.restoring");
        object_file(&further, Some(12));
        carry_position(&old, &further).expect("carry");
        assert_eq!(position(&further), Some(12));

        // A replaced file without a position (never journaled) changes nothing.
        let plain = dir.path().join("p.sqlite");
        let untouched = dir.path().join("p.sqlite.restoring");
        object_file(&plain, None);
        object_file(&untouched, None);
        carry_position(&plain, &untouched).expect("carry");
        assert_eq!(position(&untouched), None);
    }
}
