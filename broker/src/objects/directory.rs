//! The directory: the catalog database of a data directory.
//!
//! It records every object that was ever activated (namespace, id, name), each object's next
//! alarm (never later than the object's own, so hibernated objects are woken on time, also
//! after a restart), and a small key index for the layers above (token hashes → tenant,
//! tenant names).
//!
//! The directory is an actor like the objects: one task owns the one connection, writes
//! arrive through a bounded channel, and every batch of waiting writes commits in one
//! transaction (group commit). Reads never touch SQLite: a [`Mirror`] of the committed rows is
//! kept in memory and updated only after each commit, so a reader never sees a row a crash
//! could take back.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::storage::{self, Durability};
use super::{Error, ObjectId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/directory");

/// How many writes at most go into one directory transaction.
const MAX_BATCH: usize = 4096;

/// A handle on the directory. Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    ops: mpsc::Sender<(Op, Ack)>,
    mirror: Arc<Mutex<Mirror>>,
}

/// One object as the directory knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRow {
    /// The name the object is addressed by, if it was made with `id_from_name`.
    pub name: Option<String>,
    /// When the object was first activated (Unix ms).
    pub created_at: i64,
    /// The directory's alarm for the object: never later than the object's own.
    pub alarm_at: Option<i64>,
}

/// The committed contents of the directory, in memory.
#[derive(Default)]
struct Mirror {
    objects: HashMap<(&'static str, ObjectId), ObjectRow>,
    keys: BTreeMap<(String, String), String>,
}

enum Op {
    Object {
        namespace: &'static str,
        id: ObjectId,
        name: Option<String>,
        created_at: i64,
    },
    Alarm {
        namespace: &'static str,
        id: ObjectId,
        at: Option<i64>,
        created_at: i64,
    },
    Key {
        kind: String,
        key: String,
        value: Option<String>,
    },
    /// Commit what came before, close the database, stop the writer.
    Close,
}

type Ack = oneshot::Sender<Result<(), String>>;

impl Directory {
    /// Opens (creating if missing) the directory at `path`, applies its migrations, loads the
    /// mirror and starts the writer task.
    ///
    /// The writer stops on [`Directory::close`], after committing what it was given.
    pub async fn open(path: &Path, durability: Durability) -> Result<Directory, Error> {
        let mut conn = storage::open(path, durability).await?;
        storage::migrate(&mut conn, &MIGRATOR).await?;
        let mut mirror = Mirror::default();
        type Row = (String, String, Option<String>, i64, Option<i64>);
        let rows: Vec<Row> =
            sqlx::query_as("SELECT namespace, id, name, created_at, alarm_at FROM objects")
                .fetch_all(&mut conn)
                .await?;
        for (namespace, id, name, created_at, alarm_at) in rows {
            let id = ObjectId::parse(&id).ok_or_else(|| Error::corrupt("bad object id"))?;
            mirror.objects.insert(
                (intern(&namespace), id),
                ObjectRow {
                    name,
                    created_at,
                    alarm_at,
                },
            );
        }
        let keys: Vec<(String, String, String)> =
            sqlx::query_as("SELECT kind, key, value FROM keys")
                .fetch_all(&mut conn)
                .await?;
        for (kind, key, value) in keys {
            mirror.keys.insert((kind, key), value);
        }
        let mirror = Arc::new(Mutex::new(mirror));
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        tokio::spawn(writer(conn, rx, mirror.clone()));
        Ok(Directory { ops: tx, mirror })
    }

    fn mirror(&self) -> MutexGuard<'_, Mirror> {
        // A panic while holding this lock leaves plain maps behind, still consistent with
        // what was committed before it; keep serving them.
        self.mirror
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that an object exists; keeps the first name and creation time given.
    /// Returns once the row is committed.
    pub async fn register(
        &self,
        namespace: &'static str,
        id: ObjectId,
        name: Option<String>,
        created_at: i64,
    ) -> Result<(), Error> {
        self.send(Op::Object {
            namespace,
            id,
            name,
            created_at,
        })
        .await
    }

    /// Sets the directory's alarm for an object. Returns once it is committed.
    ///
    /// Callers keep the rule "never later than the object's own alarm": when an object's alarm
    /// moves earlier they await this *before* committing the object's transaction.
    pub async fn set_alarm(
        &self,
        namespace: &'static str,
        id: ObjectId,
        at: Option<i64>,
        now: i64,
    ) -> Result<(), Error> {
        self.send(Op::Alarm {
            namespace,
            id,
            at,
            created_at: now,
        })
        .await
    }

    /// Inserts or replaces a key of the index. Returns once it is committed.
    pub async fn put_key(&self, kind: &str, key: &str, value: String) -> Result<(), Error> {
        self.send(Op::Key {
            kind: kind.to_owned(),
            key: key.to_owned(),
            value: Some(value),
        })
        .await
    }

    /// Deletes a key of the index. Returns once it is committed.
    pub async fn delete_key(&self, kind: &str, key: &str) -> Result<(), Error> {
        self.send(Op::Key {
            kind: kind.to_owned(),
            key: key.to_owned(),
            value: None,
        })
        .await
    }

    /// Commits every write sent before, closes the database and stops the writer. Later
    /// writes fail; reads keep answering from memory.
    pub async fn close(&self) -> Result<(), Error> {
        self.send(Op::Close).await
    }

    async fn send(&self, op: Op) -> Result<(), Error> {
        let (ack, done) = oneshot::channel();
        let closed = || Error::Other(anyhow::anyhow!("directory closed"));
        self.ops.send((op, ack)).await.map_err(|_| closed())?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::Other(anyhow::anyhow!("directory: {message}"))),
            Err(_) => Err(closed()),
        }
    }

    /// The committed row of an object.
    pub fn object(&self, namespace: &'static str, id: ObjectId) -> Option<ObjectRow> {
        self.mirror().objects.get(&(namespace, id)).cloned()
    }

    /// How many objects the directory knows in `namespace`.
    pub fn object_count(&self, namespace: &str) -> usize {
        self.mirror()
            .objects
            .keys()
            .filter(|(ns, _)| *ns == namespace)
            .count()
    }

    /// Every pending alarm: (namespace, id, time).
    pub fn alarms(&self) -> Vec<(&'static str, ObjectId, i64)> {
        self.mirror()
            .objects
            .iter()
            .filter_map(|((ns, id), row)| row.alarm_at.map(|at| (*ns, *id, at)))
            .collect()
    }

    /// The committed value of a key.
    pub fn key(&self, kind: &str, key: &str) -> Option<String> {
        self.mirror()
            .keys
            .get(&(kind.to_owned(), key.to_owned()))
            .cloned()
    }

    /// Up to `limit` keys of `kind` after `after` (exclusive), in key order.
    pub fn keys(&self, kind: &str, after: Option<&str>, limit: usize) -> Vec<(String, String)> {
        use std::ops::Bound;
        let start = match after {
            Some(after) => Bound::Excluded((kind.to_owned(), after.to_owned())),
            None => Bound::Included((kind.to_owned(), String::new())),
        };
        self.mirror()
            .keys
            .range((start, Bound::Unbounded))
            .take_while(|((k, _), _)| k == kind)
            .take(limit)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect()
    }
}

/// Namespaces are a handful of static names; interning lets the mirror key on `&'static str`.
pub(crate) fn intern(namespace: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(found) = names.iter().find(|n| **n == namespace) {
        return found;
    }
    let leaked: &'static str = Box::leak(namespace.to_owned().into_boxed_str());
    names.push(leaked);
    leaked
}

/// The writer task: group-commits batches of ops, then updates the mirror and acknowledges.
async fn writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<(Op, Ack)>,
    mirror: Arc<Mutex<Mirror>>,
) {
    let mut batch = Vec::with_capacity(64);
    let mut close_ack = None;
    while close_ack.is_none() && rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Some(pos) = batch.iter().position(|(op, _)| matches!(op, Op::Close)) {
            // Writes queued behind the close are answered with an error by dropping them.
            batch.truncate(pos + 1);
            close_ack = batch.pop().map(|(_, ack)| ack);
        }
        let result = apply(&mut conn, &batch).await;
        match result {
            Ok(()) => {
                let mut mirror = mirror
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                for (op, _) in &batch {
                    mirror.apply(op);
                }
                drop(mirror);
                for (_, ack) in batch.drain(..) {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "directory write failed; nothing of the batch was stored");
                let message = err.to_string();
                for (_, ack) in batch.drain(..) {
                    let _ = ack.send(Err(message.clone()));
                }
            }
        }
    }
    rx.close();
    let closed = conn.close().await;
    if let Err(err) = &closed {
        tracing::warn!(error = %err, "closing the directory");
    }
    if let Some(ack) = close_ack {
        let _ = ack.send(closed.map_err(|err| err.to_string()));
    }
}

async fn apply(conn: &mut SqliteConnection, batch: &[(Op, Ack)]) -> Result<(), Error> {
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

impl Mirror {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Object {
                namespace,
                id,
                name,
                created_at,
            } => {
                let row = self
                    .objects
                    .entry((*namespace, *id))
                    .or_insert_with(|| ObjectRow {
                        name: None,
                        created_at: *created_at,
                        alarm_at: None,
                    });
                if row.name.is_none() {
                    row.name.clone_from(name);
                }
            }
            Op::Alarm {
                namespace,
                id,
                at,
                created_at,
            } => {
                let row = self
                    .objects
                    .entry((*namespace, *id))
                    .or_insert_with(|| ObjectRow {
                        name: None,
                        created_at: *created_at,
                        alarm_at: None,
                    });
                row.alarm_at = *at;
            }
            Op::Key { kind, key, value } => match value {
                Some(value) => {
                    self.keys.insert((kind.clone(), key.clone()), value.clone());
                }
                None => {
                    self.keys.remove(&(kind.clone(), key.clone()));
                }
            },
            Op::Close => {}
        }
    }
}
