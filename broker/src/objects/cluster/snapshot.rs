//! Snapshots: an object's whole SQLite file in PostgreSQL, so its log can be trimmed and a
//! move replays a bounded tail.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::Cluster;
use crate::objects::sqlite::{self, Db};
use crate::objects::{Error, ObjectId, storage};

/// Stores a snapshot of the object's database, which holds the log up to `seq`, and deletes
/// the log rows it covers — only while `owner` and `epoch` still own the object. Call it
/// between batches (no transaction open). `gate` is the connection's commit gate: `VACUUM
/// INTO` commits into its target, which the gate would otherwise refuse.
///
/// Returns whether the snapshot was stored (`false`: the object was claimed by someone else,
/// or a newer snapshot exists).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store(
    cluster: &Cluster,
    conn: &mut Db,
    gate: &AtomicBool,
    path: &Path,
    namespace: &str,
    id: ObjectId,
    owner: &str,
    epoch: i64,
    seq: i64,
) -> Result<bool, Error> {
    let target = path.with_extension("snapshot");
    let _ = tokio::fs::remove_file(&target).await;
    sqlite::blocking(|| storage::vacuum_into(conn, gate, &target))?;
    let data = tokio::fs::read(&target).await;
    let _ = tokio::fs::remove_file(&target).await;
    let data = data?;
    let hex = id.to_hex();
    let mut tx = cluster.pool.begin().await?;
    let ours: Option<(i32,)> = sqlx::query_as(
        "UPDATE berth_objects SET snapshot_seq = $3 WHERE namespace = $1 AND id = $2 AND owner = $4 AND epoch = $5 AND snapshot_seq < $3 RETURNING 1",
    )
    .bind(namespace)
    .bind(&hex)
    .bind(seq)
    .bind(owner)
    .bind(epoch)
    .fetch_optional(&mut *tx)
    .await?;
    if ours.is_none() {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO berth_snapshots (namespace, id, seq, data) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (namespace, id) DO UPDATE SET seq = excluded.seq, data = excluded.data",
    )
    .bind(namespace)
    .bind(&hex)
    .bind(seq)
    .bind(data)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM berth_log WHERE namespace = $1 AND id = $2 AND seq <= $3")
        .bind(namespace)
        .bind(&hex)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}
