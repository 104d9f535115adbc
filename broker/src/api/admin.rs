//! The operator's routes for backups (admin token only; a tenant token gets 403):
//! `POST /v1/admin/backups` writes a backup of the data directory on the server's machine,
//! `POST /v1/admin/restores` replaces one tenant's state with a backup's, online. The copying
//! is `objects::backup`'s; this module authorizes, confines paths to `--backup-dir`, and runs
//! one backup or restore at a time.
//!
//! A request names backups inside `--backup-dir` only (a relative path, or an absolute one
//! within it; never `..`), so the admin token cannot make the server write or read anywhere
//! else on its machine.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

use super::Principal;
use super::error::ApiError;
use super::extract::Body;
use crate::objects::backup::{self, Kind};
use crate::tenant;
use crate::wire::{Backup, BackupRequest, Problem, TenantRestoreRequest, TenantRestored};

/// How long an online restore waits for the tenant's object to close.
const CLOSE_WITHIN: Duration = Duration::from_secs(60);

/// Where backups go and what they need: set up once by the server.
pub struct Backups {
    /// `--backup-dir`, absolute.
    pub dir: PathBuf,
    /// The data directory, absolute (a backup never goes inside it).
    pub data_dir: PathBuf,
    /// The master key's fingerprint.
    pub fingerprint: String,
    /// `--master-key`/`BERTH_MASTER_KEY` when given (else the key is in the data directory).
    pub master_key: Option<String>,
    /// One backup or restore at a time.
    pub running: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Backups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backups")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Backups {
    /// `requested` inside the backup directory, or a refusal. Relative paths are relative to
    /// it; no component may be `..`; the result is never the data directory or inside it.
    ///
    /// # Errors
    ///
    /// 422 `invalid_request` saying why.
    pub fn resolve(&self, requested: &str) -> Result<PathBuf, ApiError> {
        let requested = Path::new(requested);
        let relative = if requested.is_absolute() {
            requested.strip_prefix(&self.dir).map_err(|_| {
                ApiError::invalid(format!(
                    "a backup lies inside the server's --backup-dir ({}); give a path relative to it",
                    self.dir.display()
                ))
            })?
        } else {
            requested
        };
        let mut path = self.dir.clone();
        let mut parts = 0;
        for component in relative.components() {
            match component {
                Component::Normal(part) => {
                    path.push(part);
                    parts += 1;
                }
                Component::CurDir => {}
                _ => {
                    return Err(ApiError::invalid(
                        "a backup path may not contain `..` or a root",
                    ));
                }
            }
        }
        if parts == 0 || path.starts_with(&self.data_dir) {
            return Err(ApiError::invalid(
                "name a new directory inside the server's --backup-dir",
            ));
        }
        Ok(path)
    }

    /// The master key as written in its file or variable.
    fn master_key_text(&self) -> Result<String, ApiError> {
        match &self.master_key {
            Some(key) => Ok(key.clone()),
            None => crate::secrets::read_secret_file(
                &self.data_dir.join(crate::secrets::MASTER_KEY_FILE),
            )
            .map_err(ApiError::internal),
        }
    }

    /// Writes a backup to `path` (absolute, inside the backup directory).
    ///
    /// # Errors
    ///
    /// As `objects::backup::backup`.
    pub async fn run(
        &self,
        runtime: &crate::objects::Runtime,
        path: &Path,
        include_master_key: bool,
    ) -> Result<Backup, ApiError> {
        let _one = self.running.lock().await;
        std::fs::create_dir_all(&self.dir)
            .map_err(|err| ApiError::internal(format!("creating {}: {err}", self.dir.display())))?;
        let secrets = backup::Secrets {
            fingerprint: self.fingerprint.clone(),
            master_key: if include_master_key {
                Some(self.master_key_text()?)
            } else {
                None
            },
        };
        let manifest = backup::backup(runtime, path, secrets)
            .await
            .map_err(|err| ApiError::new(StatusCode::CONFLICT, "backup_failed", err.to_string()))?;
        Ok(summary(path, &manifest))
    }
}

/// The wire view of a backup's manifest.
fn summary(path: &Path, manifest: &backup::Manifest) -> Backup {
    Backup {
        path: path.display().to_string(),
        started_at: manifest.started_at.clone(),
        finished_at: manifest.finished_at.clone(),
        objects: manifest
            .files
            .iter()
            .filter(|f| f.kind == Kind::Object)
            .count() as u64,
        files: manifest.files.len() as u64,
        bytes: manifest.files.iter().map(|f| f.size).sum(),
        master_key_fingerprint: manifest.master_key.fingerprint.clone(),
        master_key_included: manifest.master_key.included,
    }
}

pub(super) fn router() -> Router<super::State> {
    Router::new()
        .route("/v1/admin/backups", post(create_backup))
        .route("/v1/admin/restores", post(restore_tenant))
}

/// Writes a consistent backup of the data directory (every tenant's database and the
/// directory, with a manifest) into a new directory inside the server's `--backup-dir`.
/// Admin only. Refused in cluster mode (back up PostgreSQL with pg_dump).
#[utoipa::path(post, path = "/v1/admin/backups", tag = "operations", request_body = BackupRequest,
    responses((status = 201, body = Backup), (status = 409, description = "the backup failed (the directory exists, cluster mode)", body = Problem),
              (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn create_backup(
    State(state): State<super::State>,
    principal: Principal,
    Body(body): Body<BackupRequest>,
) -> Result<(StatusCode, Json<Backup>), ApiError> {
    principal.require_admin()?;
    refuse_in_cluster(&state)?;
    let name = body
        .to
        .unwrap_or_else(|| format!("berth-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")));
    let path = state.backups.resolve(&name)?;
    let backup = state
        .backups
        .run(&state.runtime, &path, body.include_master_key)
        .await?;
    tracing::info!(path = %backup.path, objects = backup.objects, bytes = backup.bytes, "backup written");
    Ok((StatusCode::CREATED, Json(backup)))
}

/// Replaces one tenant's state with the backup's, while the server runs: the tenant's
/// object is closed (requests to it wait), its database swapped for the backup's copy, and
/// on reopening it destroys the runners the replaced state owned that the restored one has
/// no open lease for, then reconciles its runners with the provider. Admin only.
#[utoipa::path(post, path = "/v1/admin/restores", tag = "operations", request_body = TenantRestoreRequest,
    responses((status = 200, body = TenantRestored), (status = 404, description = "no such tenant here or in the backup", body = Problem),
              (status = 409, description = "the backup is not sound, or the tenant did not close in time", body = Problem),
              (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub(super) async fn restore_tenant(
    State(state): State<super::State>,
    principal: Principal,
    Body(body): Body<TenantRestoreRequest>,
) -> Result<Json<TenantRestored>, ApiError> {
    principal.require_admin()?;
    refuse_in_cluster(&state)?;
    let name = body.tenant;
    if !state.tenant_exists(&name) {
        return Err(ApiError::not_found(format!(
            "tenant `{}` not found",
            tenant::printable(&name)
        )));
    }
    let dir = state.backups.resolve(&body.from)?;
    let _one = state.backups.running.lock().await;
    let manifest = backup::read_manifest(&dir).map_err(conflict)?;
    let id = state.tenants.id_from_name(&name);
    let hex = id.to_hex();
    let entry = manifest
        .files
        .iter()
        .find(|e| {
            e.kind == Kind::Object
                && e.namespace.as_deref()
                    == Some(<tenant::TenantBroker as crate::objects::Object>::NAMESPACE)
                && e.id.as_deref() == Some(hex.as_str())
        })
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "tenant `{}` is not in this backup",
                tenant::printable(&name)
            ))
        })?;
    let file = dir.join(entry.checked_path().map_err(conflict)?);
    check_file(&file, entry).await?;
    let current = state
        .runtime
        .options()
        .data_dir
        .join(entry.checked_path().map_err(conflict)?);
    // What the replaced state owns is read while the object is closed: `replace` keeps it
    // closed from the swap on; reading it first, under the same pin, is what `swap_tenant`
    // does.
    let runners = swap_tenant(&state, id, &current, &file, entry.alarm_at).await?;
    let reply = state.ask(&name, tenant::Restored { runners }).await?;
    tracing::warn!(tenant = %name, backup = %dir.display(), destroying = reply.destroying,
        left = reply.without_account.len(), "tenant state restored from a backup");
    Ok(Json(TenantRestored {
        tenant: name,
        backup_started_at: manifest.started_at,
        runners_destroying: reply.destroying as u64,
        runners_left: reply.without_account,
    }))
}

/// Closes the tenant's object, reads the runners its current file owns, swaps in the
/// backup's copy, and lets the object open again.
async fn swap_tenant(
    state: &super::State,
    id: crate::objects::ObjectId,
    current: &Path,
    file: &Path,
    alarm_at: Option<i64>,
) -> Result<Vec<tenant::OwnedRunner>, ApiError> {
    let runners = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = runners.clone();
    let current = current.to_owned();
    backup::replace_with(
        &state.tenants,
        id,
        file,
        alarm_at,
        CLOSE_WITHIN,
        move || async move {
            let owned = tenant::owned_runners(&current).await?;
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = owned;
            Ok(())
        },
    )
    .await
    .map_err(conflict)?;
    let owned = std::mem::take(&mut *runners.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(owned)
}

/// Size, checksum and integrity of one file of a backup.
async fn check_file(file: &Path, entry: &backup::Entry) -> Result<(), ApiError> {
    let (size, sha256) = backup::digest(file).map_err(conflict)?;
    if size != entry.size || sha256 != entry.sha256 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "backup_unsound",
            format!("{}: size or checksum differs from the manifest", entry.path),
        ));
    }
    backup::integrity(file).await.map_err(conflict)
}

fn conflict(err: crate::objects::Error) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "backup_failed", err.to_string())
}

fn refuse_in_cluster(state: &super::State) -> Result<(), ApiError> {
    if state.forwarder.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cluster_mode",
            "cluster mode: PostgreSQL holds berth's state; back it up with pg_dump (berth \
             backup copies a single node's SQLite files)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backups() -> Backups {
        Backups {
            dir: PathBuf::from("/srv/berth-backups"),
            data_dir: PathBuf::from("/srv/berth-data"),
            fingerprint: String::new(),
            master_key: None,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Backups are named inside --backup-dir only.
    #[test]
    fn backup_paths_stay_inside_the_backup_dir() {
        let b = backups();
        assert_eq!(
            b.resolve("nightly").ok(),
            Some(PathBuf::from("/srv/berth-backups/nightly"))
        );
        assert_eq!(
            b.resolve("/srv/berth-backups/a/b").ok(),
            Some(PathBuf::from("/srv/berth-backups/a/b"))
        );
        for bad in [
            "../x",
            "a/../../x",
            "/etc",
            "/srv/berth-backups",
            "",
            ".",
            "/srv/berth-backups/../x",
        ] {
            assert!(b.resolve(bad).is_err(), "{bad}");
        }
    }
}
