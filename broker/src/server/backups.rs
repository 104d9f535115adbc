//! Scheduled backups (`--backup-every`, `--backup-keep`): a backup into `--backup-dir` at
//! each period, named `scheduled-<UTC time>`, and the oldest scheduled ones beyond the count
//! to keep deleted. A failed backup is logged and tried again at the next period.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::admin::Backups;
use crate::objects::Runtime;

/// The name prefix of scheduled backups (the only ones pruned).
const PREFIX: &str = "scheduled-";

/// Runs until `stopping`.
pub(super) async fn schedule(
    backups: Arc<Backups>,
    runtime: Runtime,
    every: Duration,
    keep: usize,
    stopping: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stopping.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let name = format!(
            "{PREFIX}{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        );
        let result = match backups.resolve(&name) {
            Ok(path) => backups.run(&runtime, &path, false).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(backup) => {
                tracing::info!(path = %backup.path, objects = backup.objects, bytes = backup.bytes, "scheduled backup written");
                prune(&backups.dir, keep);
            }
            Err(err) => {
                tracing::error!(error = %err.detail, "scheduled backup failed; trying again next period");
            }
        }
    }
}

/// Deletes the oldest complete scheduled backups beyond `keep` (names sort by time).
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut scheduled: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
        .filter(|e| e.path().join(crate::objects::backup::MANIFEST).exists())
        .map(|e| e.path())
        .collect();
    scheduled.sort();
    let excess = scheduled.len().saturating_sub(keep.max(1));
    for old in scheduled.into_iter().take(excess) {
        if let Err(err) = std::fs::remove_dir_all(&old) {
            tracing::warn!(path = %old.display(), error = %err, "cannot delete an old scheduled backup");
        }
    }
}
