//! The operator's backup and restore routes (`/v1/admin/…`, admin token only).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::bounds::NAME;
use super::rules::{Rule, Text};

/// `POST /v1/admin/backups` (admin token): where the server writes a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// A new directory inside the server's `--backup-dir`: a relative path (`nightly-1`) or
    /// an absolute one within it. Default: `berth-<UTC time>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Put the master key in the backup (`master.key`, mode 0600). Default `false`: the
    /// backup names the key it needs by fingerprint.
    #[serde(default)]
    pub include_master_key: bool,
}

/// A backup the server wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Backup {
    /// The backup's directory on the server's machine (absolute).
    pub path: String,
    pub started_at: String,
    pub finished_at: String,
    /// Object databases copied (one per tenant that was ever used).
    pub objects: u64,
    /// Files copied, the manifest not counted.
    pub files: u64,
    pub bytes: u64,
    /// The master key's fingerprint (never the key).
    pub master_key_fingerprint: String,
    pub master_key_included: bool,
}

/// `POST /v1/admin/restores` (admin token): replace one tenant's state with a backup's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRestoreRequest {
    /// The backup: a directory inside the server's `--backup-dir` (relative, or absolute
    /// within it).
    pub from: String,
    /// The tenant whose state is replaced; it must exist here and in the backup.
    pub tenant: String,
}

/// What a tenant's restore did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantRestored {
    pub tenant: String,
    /// When the backup began: the tenant's state is as of then (or a little later).
    pub backup_started_at: String,
    /// Runners the replaced state owned that the restored state has no open lease for:
    /// being destroyed.
    pub runners_destroying: u64,
    /// Leases whose runners could not be destroyed (their provider account is not in the
    /// restored state): remove them at the provider by hand.
    pub runners_left: Vec<String>,
}

/// A backup's directory: a path, relative to `--backup-dir` or absolute within it (which the
/// server checks against its own setting).
static BACKUP_PATH: Rule = Rule::Text(Text::length(1, 4096));

crate::wire::rules!(BackupRequest { to: BACKUP_PATH });
crate::wire::rules!(TenantRestoreRequest {
    from: BACKUP_PATH,
    tenant: NAME
});
