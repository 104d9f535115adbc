//! The directory in cluster mode: PostgreSQL's `berth_keys` (and `berth_objects`), shared by
//! every node, with each node's mirror kept current by notifications.

use std::collections::BTreeMap;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

use super::{Ack, Mirror, Op};
use crate::objects::Error;

/// The notification channel a key change is announced on; the payload is `kind`, a unit
/// separator, and `key`.
const CHANNEL: &str = "berth_keys";
/// A unit separator: never part of a kind or a key.
const SEP: char = '\u{1f}';
/// The whole mirror is re-read this often, in case a notification was lost.
const FULL_RELOAD: Duration = Duration::from_secs(30);

/// Every key of the directory.
pub(super) async fn load_keys(pool: &PgPool) -> Result<BTreeMap<(String, String), String>, Error> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT kind, key, value FROM berth_keys")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, key, value)| ((kind, key), value))
        .collect())
}

/// One key's committed value.
pub(super) async fn read_key(
    pool: &PgPool,
    kind: &str,
    key: &str,
) -> Result<Option<String>, Error> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT value FROM berth_keys WHERE kind = $1 AND key = $2")
            .bind(kind)
            .bind(key)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(value,)| value))
}

/// Inserts a key unless it exists (announcing it), and returns the value it holds.
pub(super) async fn insert_key_if_absent(
    pool: &PgPool,
    kind: &str,
    key: &str,
    value: &str,
) -> Result<String, Error> {
    let mut tx = pool.begin().await?;
    let inserted: Option<(String,)> = sqlx::query_as(
        "INSERT INTO berth_keys (kind, key, value) VALUES ($1, $2, $3) ON CONFLICT (kind, key) DO NOTHING RETURNING value",
    )
    .bind(kind)
    .bind(key)
    .bind(value)
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_some() {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("{kind}{SEP}{key}"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    read_key(pool, kind, key)
        .await?
        .ok_or_else(|| Error::Cluster(format!("directory key {kind}/{key} vanished")))
}

/// Writes a batch of ops in one transaction, announcing each key change to the other nodes
/// (PostgreSQL delivers the notifications when the transaction commits).
pub(super) async fn apply(pool: &PgPool, batch: &[(Op, Ack)]) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    for (op, _) in batch {
        match op {
            Op::Object {
                namespace,
                id,
                name,
                created_at,
            } => {
                sqlx::query(
                    "INSERT INTO berth_objects (namespace, id, name, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (namespace, id) DO UPDATE SET name = coalesce(berth_objects.name, excluded.name)",
                )
                .bind(*namespace)
                .bind(id.to_hex())
                .bind(name)
                .bind(created_at)
                .execute(&mut *tx)
                .await?;
            }
            Op::Alarm {
                namespace,
                id,
                at,
                created_at,
            } => {
                sqlx::query(
                    "INSERT INTO berth_objects (namespace, id, created_at, alarm_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (namespace, id) DO UPDATE SET alarm_at = excluded.alarm_at",
                )
                .bind(*namespace)
                .bind(id.to_hex())
                .bind(created_at)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            Op::Key { kind, key, value } => {
                match value {
                    Some(value) => {
                        sqlx::query(
                            "INSERT INTO berth_keys (kind, key, value) VALUES ($1, $2, $3) \
                             ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
                        )
                        .bind(kind)
                        .bind(key)
                        .bind(value)
                        .execute(&mut *tx)
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM berth_keys WHERE kind = $1 AND key = $2")
                            .bind(kind)
                            .bind(key)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(format!("{kind}{SEP}{key}"))
                    .execute(&mut *tx)
                    .await?;
            }
            Op::Close => {}
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Keeps a node's mirror current: applies the key changes other nodes announce, and re-reads
/// everything after the listening connection was lost (notifications sent meanwhile are
/// gone) and every [`FULL_RELOAD`]. Ends when the directory is dropped.
pub(super) async fn follow(pool: PgPool, mirror: Weak<Mutex<Mirror>>) {
    let mut listener = None;
    let mut reload = tokio::time::interval(FULL_RELOAD);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reload.reset();
    loop {
        if mirror.strong_count() == 0 || pool.is_closed() {
            return;
        }
        let Some(active) = listener.as_mut() else {
            match PgListener::connect_with(&pool).await {
                Ok(mut fresh) => match fresh.listen(CHANNEL).await {
                    Ok(()) => {
                        listener = Some(fresh);
                        // Changes made while nobody listened: read everything once.
                        reload_all(&pool, &mirror).await;
                    }
                    Err(err) => tracing::debug!(error = %err, "listening for directory changes"),
                },
                Err(err) => {
                    tracing::debug!(error = %err, "connecting to listen for directory changes")
                }
            }
            if listener.is_none() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            continue;
        };
        tokio::select! {
            _ = reload.tick() => reload_all(&pool, &mirror).await,
            notification = active.try_recv() => match notification {
                Ok(Some(notification)) => {
                    if let Some((kind, key)) = notification.payload().split_once(SEP) {
                        match read_key(&pool, kind, key).await {
                            Ok(value) => {
                                let Some(mirror) = mirror.upgrade() else { return };
                                mirror.lock().unwrap_or_else(std::sync::PoisonError::into_inner).set_key(kind, key, value);
                            }
                            Err(err) => tracing::debug!(error = %err, "reading a changed directory key"),
                        }
                    }
                }
                // The connection was lost; `try_recv` reconnects next time, so what was
                // announced meanwhile must be read whole.
                Ok(None) => reload_all(&pool, &mirror).await,
                Err(err) => {
                    tracing::debug!(error = %err, "directory notifications");
                    listener = None;
                }
            },
        }
    }
}

async fn reload_all(pool: &PgPool, mirror: &Weak<Mutex<Mirror>>) {
    match load_keys(pool).await {
        Ok(keys) => {
            if let Some(mirror) = mirror.upgrade() {
                mirror
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .keys = keys;
            }
        }
        Err(err) => tracing::debug!(error = %err, "reloading the directory"),
    }
}
