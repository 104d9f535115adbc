//! The directory on one node: `<data>/directory.sqlite`.

use std::collections::{BTreeMap, HashMap};

use sqlx::{Connection, SqliteConnection};

use super::{Ack, Mirror, ObjectRow, Op, intern};
use crate::objects::{Error, ObjectId};

/// Reads the whole directory into memory.
pub(super) async fn load(conn: &mut SqliteConnection) -> Result<Mirror, Error> {
    let mut objects = HashMap::new();
    type Row = (String, String, Option<String>, i64, Option<i64>);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT namespace, id, name, created_at, alarm_at FROM objects")
            .fetch_all(&mut *conn)
            .await?;
    for (namespace, id, name, created_at, alarm_at) in rows {
        let id = ObjectId::parse(&id).ok_or_else(|| Error::corrupt("bad object id"))?;
        objects.insert(
            (intern(&namespace), id),
            ObjectRow {
                name,
                created_at,
                alarm_at,
            },
        );
    }
    let rows: Vec<(String, String, String)> = sqlx::query_as("SELECT kind, key, value FROM keys")
        .fetch_all(&mut *conn)
        .await?;
    let keys: BTreeMap<(String, String), String> = rows
        .into_iter()
        .map(|(kind, key, value)| ((kind, key), value))
        .collect();
    Ok(Mirror { objects, keys })
}

/// Writes a batch of ops in one transaction.
pub(super) async fn apply(conn: &mut SqliteConnection, batch: &[(Op, Ack)]) -> Result<(), Error> {
    let mut tx = conn.begin().await?;
    for (op, _) in batch {
        match op {
            Op::Object {
                namespace,
                id,
                name,
                created_at,
            } => {
                sqlx::query(
                    "INSERT INTO objects (namespace, id, name, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (namespace, id) DO UPDATE SET name = coalesce(objects.name, excluded.name)",
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
                    "INSERT INTO objects (namespace, id, created_at, alarm_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (namespace, id) DO UPDATE SET alarm_at = excluded.alarm_at",
                )
                .bind(*namespace)
                .bind(id.to_hex())
                .bind(created_at)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            Op::Key {
                kind,
                key,
                value: Some(value),
            } => {
                sqlx::query(
                    "INSERT INTO keys (kind, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
                )
                .bind(kind)
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            }
            Op::Key {
                kind,
                key,
                value: None,
            } => {
                sqlx::query("DELETE FROM keys WHERE kind = ?1 AND key = ?2")
                    .bind(kind)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
            Op::Close => {}
        }
    }
    tx.commit().await?;
    Ok(())
}
