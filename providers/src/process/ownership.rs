//! A runner directory's proof of ownership: its marker (made with the directory, atomically)
//! and its record (the process berth started there), and who made a directory judged by them.
//! See "Ownership" and "Crash safety" in the module docs of `process`.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{blocking, io_error, procfs};
use crate::{Error, RunnerSpec};

/// The record's file name inside a runner directory.
pub(super) const RECORD: &str = "runner.json";
/// The marker's file name inside a runner directory (see "Ownership" in the module docs).
pub(super) const MARKER: &str = ".berth-runner";

/// What the marker says: the directory was made by berth (the installation, when it says)
/// for this lease of this tenant.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Marker {
    tenant: String,
    lease_id: String,
    /// Absent in markers of builds before 0.2, and when berth runs without an installation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    installation_id: Option<String>,
}

/// Who made a runner directory, as far as its marker (or, before markers, its record) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    /// This installation (or a build before installation ids), for this tenant and lease.
    Us,
    /// Another berth installation, for this tenant and lease: not ours to touch.
    OtherInstallation,
    /// Not berth, or not for this tenant and lease.
    Stranger,
}

/// What `runner.json` holds. Never the runner's environment: it contains the runner token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    /// The leader's pid, which is also the process group id.
    pub(super) pid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot), to detect pid reuse.
    pub(super) start_time: u64,
    pub(super) lease_id: String,
    pub(super) tenant: String,
    #[serde(default)]
    pub(super) pool: String,
    pub(super) machine_type: String,
    /// RFC 3339 UTC.
    pub(super) created_at: String,
    /// The kernel's boot id when the runner started (`/proc/sys/kernel/random/boot_id`): pids
    /// and start times mean nothing after a reboot. Absent in records of builds before 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) boot_id: Option<String>,
    /// The installation that started the runner; absent in records of builds before 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) installation_id: Option<String>,
    /// The uid and gid the runner runs as, when not berth's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) gid: Option<u32>,
}

impl Record {
    pub(super) fn new(
        spec: &RunnerSpec,
        installation_id: Option<&str>,
        pid: i32,
        start_time: u64,
        ids: Option<(u32, u32)>,
    ) -> Self {
        Record {
            installation_id: installation_id.map(str::to_owned),
            boot_id: procfs::boot_id(),
            uid: ids.map(|(uid, _)| uid),
            gid: ids.map(|(_, gid)| gid),
            pid,
            start_time,
            lease_id: spec.lease_id.clone(),
            tenant: spec.tenant.clone(),
            pool: spec.pool.clone(),
            machine_type: spec.machine_type.clone(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

impl Record {
    /// Whether the record was written in this boot, so its pid and start time still name a
    /// process of this machine's life.
    pub(super) fn this_boot(&self) -> bool {
        self.boot_id.is_some() && self.boot_id == procfs::boot_id()
    }
}

pub(super) async fn remove_dir(dir: &Path) -> Result<(), Error> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("removing the runner directory", &e)),
    }
}

pub(super) fn read_record(dir: &Path) -> io::Result<Option<Record>> {
    match std::fs::read(dir.join(RECORD)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) async fn save_record(dir: &Path, record: &Record) -> Result<(), Error> {
    let (dir, record) = (dir.to_path_buf(), record.clone());
    blocking(move || write_record(&dir, &record))
        .await
        .map_err(|e| io_error("writing the runner record", &e))
}

/// Who made `dir`, judged for `tenant`'s lease `lease_id` by installation `installation`: its
/// marker names them, or (a directory made before markers) its record does. A marker or
/// record without an installation id is ours (see "Ownership" in the crate docs).
pub(super) fn owner(dir: &Path, tenant: &str, lease_id: &str, installation: Option<&str>) -> Owner {
    let judge = |t: &str, l: &str, made_by: Option<&str>| {
        if t != tenant || l != lease_id {
            return Owner::Stranger;
        }
        match made_by {
            None | Some("") => Owner::Us,
            Some(id) if Some(id) == installation => Owner::Us,
            Some(_) => Owner::OtherInstallation,
        }
    };
    if let Ok(bytes) = std::fs::read(dir.join(MARKER)) {
        return match serde_json::from_slice::<Marker>(&bytes) {
            Ok(marker) => judge(
                &marker.tenant,
                &marker.lease_id,
                marker.installation_id.as_deref(),
            ),
            Err(_) => Owner::Stranger,
        };
    }
    match read_record(dir) {
        Ok(Some(record)) => judge(
            &record.tenant,
            &record.lease_id,
            record.installation_id.as_deref(),
        ),
        _ => Owner::Stranger,
    }
}

/// Makes the runner directory `dir` with its marker inside, atomically: it is made under a
/// temporary name and renamed into place, so a directory at `dir` always has its marker.
pub(super) fn make_owned_dir(
    dir: &Path,
    tenant: &str,
    lease_id: &str,
    installation: Option<&str>,
) -> io::Result<()> {
    use std::io::Write as _;
    let parent = dir
        .parent()
        .ok_or_else(|| io::Error::other("a runner directory has no parent"))?;
    if !parent.exists() {
        std::fs::create_dir_all(parent)?;
        // Runners pass through their tenant's directory to their work directory.
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))?;
    }
    let tmp = parent.join(format!(".tmp-{lease_id}"));
    if tmp.exists() {
        if owner(&tmp, tenant, lease_id, installation) != Owner::Us {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and was not made by berth", tmp.display()),
            ));
        }
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
    let marker = Marker {
        tenant: tenant.to_owned(),
        lease_id: lease_id.to_owned(),
        installation_id: installation.map(str::to_owned),
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp.join(MARKER))?;
    file.write_all(&serde_json::to_vec(&marker).map_err(io::Error::other)?)?;
    file.sync_all()?;
    // The runner passes through (x), but cannot list or write its directory's files.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o711))?;
    std::fs::rename(&tmp, dir)?;
    std::fs::File::open(parent)?.sync_all()
}

/// Writes the record atomically: a reader sees no record or a whole one.
fn write_record(dir: &Path, record: &Record) -> io::Result<()> {
    use std::io::Write as _;
    let tmp = dir.join(format!("{RECORD}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(record).map_err(io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(RECORD))
}
