//! Backups of a data directory (single node): a consistent copy of the directory database and
//! of every object's database, a manifest, a check of a backup, and restoring one.
//!
//! # How a file is copied
//!
//! Every database is copied with SQLite's `VACUUM INTO` on a connection of the backup's own,
//! opened read-only beside the object's. In WAL mode a reader sees the last committed state
//! and never blocks the writer (nor is blocked by it), so each copy is a committed state of
//! its file, whether the object is live and writing, hibernated, or waking up meanwhile: no
//! object is woken, paused or asked anything. This is the one exception to "only the
//! object's task opens its SQLite file", and it only reads: a read-only connection cannot
//! checkpoint, truncate or delete the object's WAL.
//!
//! # What is consistent with what
//!
//! The directory is copied first; the objects copied are the ones its copy lists, each a
//! little later. So names and token hashes are those of the moment the backup started, and
//! each object's state is at least as new. The one rule that spans files — the directory's
//! alarm of an object is never later than the object's own — may not hold between copies
//! taken at different moments, so a restore re-derives it from each object's stored alarm
//! ([`restore`]). Anything acknowledged before the backup started is in it.
//!
//! # Layout of a backup
//!
//! ```text
//! <dir>/manifest.json                       written last: a backup without it is incomplete
//! <dir>/directory.sqlite
//! <dir>/objects/<namespace>/<2 hex>/<id>.sqlite
//! <dir>/master.key                          only when asked for (--include-master-key)
//! ```
//!
//! Paths in a manifest are never trusted: each is rebuilt from the entry's kind, namespace
//! and id, which must have their exact shapes ([`Entry::checked_path`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection as _, SqliteConnection};

use super::{Error, Namespace, Object, ObjectId, Runtime};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The manifest format this berth writes and reads.
pub const FORMAT: u32 = 1;
/// The directory database's file name, in a data directory and in a backup.
pub const DIRECTORY_FILE: &str = "directory.sqlite";
/// The master key's file name in a backup (the same as in a data directory).
pub const MASTER_KEY_FILE: &str = "master.key";
/// Directory key kind of what a restore leaves for the first start.
pub const RESTORED_KIND: &str = "restored";
/// Under [`RESTORED_KIND`]: the fingerprint of the master key the restored data needs.
pub const RESTORED_KEY_FINGERPRINT: &str = "master_key_fingerprint";
/// Files copied at once.
const PARALLEL_COPIES: usize = 4;

/// What a backup holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The berth that wrote it.
    pub berth_version: String,
    /// When the copy began (RFC 3339): everything acknowledged before is in it.
    pub started_at: String,
    /// When the last file was copied.
    pub finished_at: String,
    /// The master key the backup's secrets are sealed under.
    pub master_key: MasterKey,
    /// Every file but the manifest.
    pub files: Vec<Entry>,
}

/// Which master key a backup needs, and whether it holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MasterKey {
    /// A fingerprint of the key (never the key): `secrets::Keys::fingerprint`.
    pub fingerprint: String,
    /// Whether `master.key` is in the backup.
    pub included: bool,
}

/// What a file of a backup is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Directory,
    Object,
    MasterKey,
}

/// One file of a backup.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the backup (and to a data directory).
    pub path: String,
    pub kind: Kind,
    /// Objects: their namespace (`tenant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Objects: their id, 64 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Objects: the name they are addressed by (a tenant's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Objects: the alarm stored in the copy (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm_at: Option<i64>,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

impl Entry {
    /// The entry's path, rebuilt from its kind, namespace and id; an error unless it is the
    /// path the entry names. No `..`, no absolute path, no other file can come out of it.
    ///
    /// # Errors
    ///
    /// A namespace or id of the wrong shape, or a path that is not the rebuilt one.
    pub fn checked_path(&self) -> Result<PathBuf, Error> {
        let expected = match self.kind {
            Kind::Directory => PathBuf::from(DIRECTORY_FILE),
            Kind::MasterKey => PathBuf::from(MASTER_KEY_FILE),
            Kind::Object => {
                let namespace = self.namespace.as_deref().unwrap_or_default();
                let id = self.id.as_deref().unwrap_or_default();
                if !valid_namespace(namespace) || !valid_id(id) {
                    return Err(bad(format!(
                        "manifest entry `{}`: not an object of this berth",
                        printable(&self.path)
                    )));
                }
                object_path(namespace, id)
            }
        };
        if Path::new(&self.path) != expected {
            return Err(bad(format!(
                "manifest entry `{}`: unexpected path",
                printable(&self.path)
            )));
        }
        Ok(expected)
    }
}

/// A namespace as the runtime names them: 1–32 lowercase letters, digits or `_`.
fn valid_namespace(namespace: &str) -> bool {
    (1..=32).contains(&namespace.len())
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// An object id: 64 lowercase hex digits.
fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `objects/<namespace>/<2 hex>/<id>.sqlite`, as the runtime lays them out.
fn object_path(namespace: &str, id: &str) -> PathBuf {
    Path::new("objects")
        .join(namespace)
        .join(&id[..2])
        .join(format!("{id}.sqlite"))
}

/// Text from a manifest, safe to put in a message.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(120).collect()
}

fn bad(message: String) -> Error {
    Error::Other(anyhow::anyhow!(message))
}

/// What a backup needs from the server besides the runtime.
pub struct Secrets {
    /// The master key's fingerprint.
    pub fingerprint: String,
    /// The master key as written in its file or variable, when the backup is to include it.
    pub master_key: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Copies the data directory of `runtime` into `to`, which must not exist (its parent must),
/// and writes the manifest last.
///
/// # Errors
///
/// Cluster mode (PostgreSQL is the truth there), `to` exists or cannot be made, or a copy
/// failed (what was copied stays, without a manifest).
pub async fn backup(runtime: &Runtime, to: &Path, secrets: Secrets) -> Result<Manifest, Error> {
    if runtime.shared().cluster().is_some() {
        return Err(bad(
            "cluster mode: PostgreSQL holds the state; back it up with pg_dump \
             (berth backup copies a single node's SQLite files)"
                .to_owned(),
        ));
    }
    let data_dir = runtime.options().data_dir.clone();
    let started_at = chrono::Utc::now();
    make_private_dir(to)?;
    let directory = to.join(DIRECTORY_FILE);
    vacuum_into(&data_dir.join(DIRECTORY_FILE), &directory).await?;
    let mut files = vec![file_entry(
        &directory,
        Kind::Directory,
        DIRECTORY_FILE.to_owned(),
    )?];

    let objects = listed_objects(&directory).await?;
    let copies = futures::stream::iter(objects.into_iter().map(|(namespace, id, name)| {
        let data_dir = data_dir.clone();
        let to = to.to_owned();
        async move { copy_object(&data_dir, &to, namespace, id, name).await }
    }))
    .buffer_unordered(PARALLEL_COPIES)
    .collect::<Vec<_>>()
    .await;
    for copy in copies {
        if let Some(entry) = copy? {
            files.push(entry);
        }
    }
    let included = secrets.master_key.is_some();
    if let Some(key) = secrets.master_key {
        let path = to.join(MASTER_KEY_FILE);
        write_private(&path, format!("{}\n", key.trim()).as_bytes())?;
        files.push(file_entry(
            &path,
            Kind::MasterKey,
            MASTER_KEY_FILE.to_owned(),
        )?);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        format: FORMAT,
        berth_version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        master_key: MasterKey {
            fingerprint: secrets.fingerprint,
            included,
        },
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Other(e.into()))?;
    let tmp = to.join(format!("{MANIFEST}.tmp"));
    write_private(&tmp, &text)?;
    std::fs::rename(&tmp, to.join(MANIFEST))?;
    sync_dir(to)?;
    Ok(manifest)
}

/// The objects the directory copy lists: `(namespace, id, name)`.
async fn listed_objects(directory: &Path) -> Result<Vec<(String, String, Option<String>)>, Error> {
    let mut conn = open_copy(directory).await?;
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT namespace, id, name FROM objects ORDER BY namespace, id")
            .fetch_all(&mut conn)
            .await?;
    conn.close().await?;
    Ok(rows
        .into_iter()
        .filter(|(namespace, id, _)| valid_namespace(namespace) && valid_id(id))
        .collect())
}

/// Copies one object's database, if it has a file (an object registered an instant before
/// its first commit may not).
async fn copy_object(
    data_dir: &Path,
    to: &Path,
    namespace: String,
    id: String,
    name: Option<String>,
) -> Result<Option<Entry>, Error> {
    let relative = object_path(&namespace, &id);
    let source = data_dir.join(&relative);
    if !source.exists() {
        return Ok(None);
    }
    let target = to.join(&relative);
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    vacuum_into(&source, &target).await?;
    let mut conn = open_copy(&target).await?;
    let alarm: Option<(String,)> =
        sqlx::query_as("SELECT value FROM _berth_kv WHERE key = 'berth.alarm'")
            .fetch_optional(&mut conn)
            .await
            .unwrap_or(None);
    conn.close().await?;
    let mut entry = file_entry(&target, Kind::Object, relative.display().to_string())?;
    entry.namespace = Some(namespace);
    entry.id = Some(id);
    entry.name = name;
    entry.alarm_at = alarm.and_then(|(v,)| serde_json::from_str::<Option<i64>>(&v).ok().flatten());
    Ok(Some(entry))
}

/// A committed state of the database at `source`, written to `target` (which must not
/// exist), through a read-only connection of its own.
async fn vacuum_into(source: &Path, target: &Path) -> Result<(), Error> {
    let options = SqliteConnectOptions::new()
        .filename(source)
        .read_only(true)
        .create_if_missing(false)
        // A writer never blocks a WAL reader; a reader waits only while another connection
        // recovers the WAL after a crash.
        .busy_timeout(Duration::from_secs(10))
        .pragma("cache_size", "-512");
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let target_text = target
        .to_str()
        .ok_or_else(|| bad(format!("{} is not UTF-8", target.display())))?;
    sqlx::query("VACUUM INTO ?1")
        .bind(target_text)
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    // VACUUM INTO does not sync what it wrote.
    std::fs::File::open(target)?.sync_all()?;
    Ok(())
}

/// A copy opened as it lies: read-only and immutable (no lock, no WAL or shared-memory file
/// made beside it).
async fn open_copy(path: &Path) -> Result<SqliteConnection, Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .immutable(true)
        .create_if_missing(false);
    Ok(SqliteConnection::connect_with(&options).await?)
}

fn file_entry(path: &Path, kind: Kind, relative: String) -> Result<Entry, Error> {
    let (size, sha256) = digest(path)?;
    Ok(Entry {
        path: relative,
        kind,
        namespace: None,
        id: None,
        name: None,
        alarm_at: None,
        size,
        sha256,
    })
}

/// Size and SHA-256 of a file.
///
/// # Errors
///
/// The file cannot be read.
pub fn digest(path: &Path) -> Result<(u64, String), Error> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)?;
    Ok((size, hex::encode(hasher.finalize())))
}

fn make_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|err| {
            bad(format!(
                "{}: {err} (give a directory that does not exist yet)",
                dir.display()
            ))
        })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Reads a backup's manifest.
///
/// # Errors
///
/// No manifest (an incomplete backup, or not a backup), or one this berth cannot read.
pub fn read_manifest(dir: &Path) -> Result<Manifest, Error> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|err| {
        bad(format!(
            "{}: {err} (not a backup, or an incomplete one: the manifest is written last)",
            path.display()
        ))
    })?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|err| bad(format!("{}: not a berth manifest: {err}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(bad(format!(
            "{}: manifest format {} (this berth reads {FORMAT})",
            path.display(),
            manifest.format
        )));
    }
    Ok(manifest)
}

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
    let mut directory = super::storage::open(
        &data_dir.join(DIRECTORY_FILE),
        super::storage::Durability::Full,
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

    fn entry(path: &str, kind: Kind, namespace: Option<&str>, id: Option<&str>) -> Entry {
        Entry {
            path: path.to_owned(),
            kind,
            namespace: namespace.map(str::to_owned),
            id: id.map(str::to_owned),
            name: None,
            alarm_at: None,
            size: 0,
            sha256: String::new(),
        }
    }

    /// A manifest cannot name a file outside the backup or the data directory.
    #[test]
    fn manifest_paths_are_rebuilt_not_trusted() {
        let id = "ab".repeat(32);
        let good = format!("objects/tenant/ab/{id}.sqlite");
        assert!(
            entry(&good, Kind::Object, Some("tenant"), Some(&id))
                .checked_path()
                .is_ok()
        );
        assert!(
            entry("directory.sqlite", Kind::Directory, None, None)
                .checked_path()
                .is_ok()
        );
        for (path, namespace, id) in [
            ("../../etc/passwd", "tenant", id.as_str()),
            ("/etc/passwd", "tenant", id.as_str()),
            ("objects/../../x.sqlite", "..", id.as_str()),
            ("objects/tenant/ab/x.sqlite", "tenant", "x"),
            (good.as_str(), "Tenant", id.as_str()),
            (good.as_str(), "tenant/../..", id.as_str()),
        ] {
            assert!(
                entry(path, Kind::Object, Some(namespace), Some(id))
                    .checked_path()
                    .is_err(),
                "{path} {namespace} {id}"
            );
        }
        assert!(
            entry("../directory.sqlite", Kind::Directory, None, None)
                .checked_path()
                .is_err()
        );
        assert!(
            entry("sub/master.key", Kind::MasterKey, None, None)
                .checked_path()
                .is_err()
        );
    }
}
