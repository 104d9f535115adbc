//! Moving an object: bringing this node's local SQLite file to the position a claim found.
//!
//! The local file is a cache. It holds the log position it reached (`berth.seq`), and only
//! ever holds batches PostgreSQL committed (a batch commits locally after its append), so it
//! is a prefix of the object's history: if the log still holds everything after it, replaying
//! that is enough. Otherwise (the file is missing, or older than the snapshot, or — after
//! PostgreSQL was restored from a backup — ahead of the log) it is replaced by the latest
//! snapshot first.

use std::path::Path;

use super::{Claim, Cluster};
use crate::objects::record::{self, Record, SEQ_KEY};
use crate::objects::schema;
use crate::objects::sqlite::Db;
use crate::objects::storage::{self, Durability};
use crate::objects::{Error, ObjectId};

/// The runtime's key for the cluster an object's local file belongs to, in `_berth_kv`.
const CLUSTER_KEY: &str = "berth.cluster";

/// How many log rows one query reads while replaying.
const REPLAY_PAGE: i64 = 256;

/// Opens the object's database at `path`, brought to `claim.seq`, with its migrations applied.
pub(crate) async fn restore(
    cluster: &Cluster,
    path: &Path,
    durability: Durability,
    namespace: &str,
    id: ObjectId,
    claim: &Claim,
    migrator: &sqlx::migrate::Migrator,
) -> Result<Db, Error> {
    let hex = id.to_hex();
    let mut conn = open(path, durability).await?;
    schema::bootstrap(&mut conn)?;
    let mut position: i64 = storage::kv_get(&mut conn, SEQ_KEY)?.unwrap_or(0);
    let of_cluster: Option<String> = storage::kv_get(&mut conn, CLUSTER_KEY)?;
    let foreign = of_cluster.as_ref().is_some_and(|of| *of != cluster.id);
    if foreign || position > claim.seq || position < claim.snapshot_seq {
        storage::close(conn).await?;
        remove_files(path).await?;
        let snapshot: Option<(i64, Vec<u8>)> = if claim.snapshot_seq > 0 {
            sqlx::query_as("SELECT seq, data FROM berth_snapshots WHERE namespace = $1 AND id = $2")
                .bind(namespace)
                .bind(&hex)
                .fetch_optional(&cluster.pool)
                .await?
        } else {
            None
        };
        position = match snapshot {
            Some((seq, data)) => {
                tokio::fs::write(path, data).await?;
                seq
            }
            None if claim.snapshot_seq > 0 => {
                return Err(Error::Corrupt(format!(
                    "object {hex}: the log starts after {} but no snapshot is stored",
                    claim.snapshot_seq
                )));
            }
            None => 0,
        };
        conn = open(path, durability).await?;
        schema::bootstrap(&mut conn)?;
    }
    if of_cluster.as_deref() != Some(cluster.id.as_str()) {
        storage::kv_put(&mut conn, CLUSTER_KEY, &cluster.id)?;
    }
    schema::prepare_object(&mut conn, migrator)?;
    while position < claim.seq {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, record FROM berth_log WHERE namespace = $1 AND id = $2 AND seq > $3 AND seq <= $4 ORDER BY seq LIMIT $5",
        )
        .bind(namespace)
        .bind(&hex)
        .bind(position)
        .bind(claim.seq)
        .bind(REPLAY_PAGE)
        .fetch_all(&cluster.pool)
        .await?;
        if rows.is_empty() {
            return Err(Error::Corrupt(format!(
                "object {hex}: the log ends at {position}, before the claimed {}",
                claim.seq
            )));
        }
        for (seq, bytes) in rows {
            if seq != position + 1 {
                return Err(Error::Corrupt(format!(
                    "object {hex}: the log skips from {position} to {seq}"
                )));
            }
            let record = Record::decode(&bytes)?;
            let writers = cluster.writers(&record.writers).await?;
            let writers: Vec<&str> = writers.iter().map(String::as_str).collect();
            record::apply(&mut conn, &writers, &record, seq)?;
            position = seq;
        }
    }
    Ok(conn)
}

/// Opens (creating if missing) the object file at `path`, on tokio's blocking pool.
async fn open(path: &Path, durability: Durability) -> Result<Db, Error> {
    let path = path.to_owned();
    storage::on_blocking_pool("opening an object file", move || {
        storage::open_db(&path, durability, storage::Access::Sole, true)
    })
    .await
}

/// Removes an object's database and its WAL and shared-memory files.
async fn remove_files(path: &Path) -> Result<(), Error> {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match tokio::fs::remove_file(&file).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}
