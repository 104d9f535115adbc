//! Backups of a data directory (single node): a consistent copy of the directory database and
//! of every object's database, a manifest, a check of a backup, and restoring one.
//!
//! # How a file is copied
//!
//! Every database is copied with SQLite's `VACUUM INTO`, which writes a committed state of it.
//! The directory is copied on a read-only connection of the backup's own, beside the
//! server's (in WAL mode a reader never blocks the writer, nor is blocked by it). An object's
//! file has exactly one connection, its object's (`storage::Access::Sole`: no locks, no
//! shared WAL index, so a second connection would not see a consistent state), so its copy
//! is made through the runtime (`NsInner::copy_file`): a live object copies itself between two
//! batches on its own connection; a hibernated one is held closed for the copy (a wake waits
//! the few milliseconds it takes). No object is woken for a backup.
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

use super::{Error, ObjectId, Runtime, storage};

mod restore;

pub use restore::{Restored, Verified, integrity, replace_with, restore, verify};

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

/// How long one object may stay too busy to be copied before the backup fails.
const COPY_WITHIN: Duration = Duration::from_secs(60);

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
    vacuum_shared(&data_dir.join(DIRECTORY_FILE), &directory).await?;
    let mut files = vec![file_entry(
        &directory,
        Kind::Directory,
        DIRECTORY_FILE.to_owned(),
    )?];

    let objects = listed_objects(&directory).await?;
    let copies = futures::stream::iter(objects.into_iter().map(|(namespace, id, name)| {
        let to = to.to_owned();
        async move { copy_object(runtime, &to, namespace, id, name).await }
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

/// Copies one object's database through the runtime, if it has a file (an object registered
/// an instant before its first commit may not).
async fn copy_object(
    runtime: &Runtime,
    to: &Path,
    namespace: String,
    id: String,
    name: Option<String>,
) -> Result<Option<Entry>, Error> {
    let relative = object_path(&namespace, &id);
    let object = ObjectId::parse(&id).ok_or_else(|| bad(format!("object id {id}")))?;
    let target = to.join(&relative);
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let shared = runtime.shared();
    let copied = match shared.files(&namespace) {
        Some(files) => files.copy_file(object, &target, COPY_WITHIN).await?,
        // No namespace of that name is open in this runtime, so none of its objects can be
        // live or parked, and nothing here opens their files.
        None => {
            let source = runtime.options().data_dir.join(&relative);
            if !source.exists() {
                return Ok(None);
            }
            storage::vacuum_closed(&source, &target).await?;
            true
        }
    };
    if !copied {
        return Ok(None);
    }
    // VACUUM INTO does not sync what it wrote.
    std::fs::File::open(&target)?.sync_all()?;
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

/// A committed state of the shared database at `source` (the directory), written to `target`
/// (which must not exist) and synced, through a read-only connection of its own.
async fn vacuum_shared(source: &Path, target: &Path) -> Result<(), Error> {
    let options = SqliteConnectOptions::new()
        .filename(source)
        .read_only(true)
        .create_if_missing(false)
        // A writer never blocks a WAL reader; a reader waits only while another connection
        // recovers the WAL after a crash.
        .busy_timeout(Duration::from_secs(10))
        .pragma("cache_size", "-512");
    let mut conn = SqliteConnection::connect_with(&options).await?;
    storage::vacuum(&mut conn, target).await?;
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
