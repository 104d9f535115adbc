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
//!
//! Two stores behind one API: `sqlite` (`<data>/directory.sqlite`, one node) and `postgres`
//! (cluster mode: shared by every node, the mirror kept current by notifications).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::schema;
use super::storage::{self, Durability};
use super::{Error, ObjectId};

mod postgres;
mod sqlite;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/directory");

/// How many writes at most go into one directory transaction.
const MAX_BATCH: usize = 4096;

/// A handle on the directory. Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    ops: mpsc::Sender<(Op, Ack)>,
    mirror: Arc<Mutex<Mirror>>,
    /// Cluster mode: the shared directory, for [`Directory::refresh_key`].
    cluster: Option<sqlx::PgPool>,
}

/// Where the directory's rows are stored.
enum Store {
    /// One node: `<data>/directory.sqlite`.
    Sqlite(SqliteConnection),
    /// Cluster mode: PostgreSQL.
    Postgres(sqlx::PgPool),
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
pub(super) struct Mirror {
    pub(super) objects: HashMap<(&'static str, ObjectId), ObjectRow>,
    pub(super) keys: BTreeMap<(String, String), String>,
}

pub(super) enum Op {
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

pub(super) type Ack = oneshot::Sender<Result<(), String>>;

impl Directory {
    /// Opens (creating if missing) the directory at `path`, applies its migrations, loads the
    /// mirror and starts the writer task.
    ///
    /// The writer stops on [`Directory::close`], after committing what it was given.
    pub async fn open(path: &Path, durability: Durability) -> Result<Directory, Error> {
        let mut conn = storage::open(path, durability, storage::Access::Shared).await?;
        schema::migrate(&mut conn, &MIGRATOR).await?;
        let mirror = sqlite::load(&mut conn).await?;
        Ok(Directory::start(Store::Sqlite(conn), mirror))
    }

    /// Cluster mode: the directory is in PostgreSQL (`berth_keys`, `berth_objects`), shared by
    /// every node. Keys are mirrored here as on one node; another node's changes arrive by
    /// notification (`berth_keys` channel) within milliseconds, a miss can be re-read at once
    /// with [`Directory::refresh_key`], and the whole mirror is re-read every 30 s in case a
    /// notification was lost. Objects and alarms are not mirrored: in cluster mode they live
    /// with each object's ownership row (`objects::cluster`).
    pub async fn open_cluster(pool: sqlx::PgPool) -> Result<Directory, Error> {
        let mirror = Mirror {
            keys: postgres::load_keys(&pool).await?,
            ..Mirror::default()
        };
        let directory = Directory::start(Store::Postgres(pool.clone()), mirror);
        tokio::spawn(postgres::follow(pool, Arc::downgrade(&directory.mirror)));
        Ok(directory)
    }

    fn start(store: Store, mirror: Mirror) -> Directory {
        let mirror = Arc::new(Mutex::new(mirror));
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        let cluster = match &store {
            Store::Postgres(pool) => Some(pool.clone()),
            Store::Sqlite(_) => None,
        };
        tokio::spawn(writer(store, rx, mirror.clone()));
        Directory {
            ops: tx,
            mirror,
            cluster,
        }
    }

    /// The value of a key, set to `value` first if it has none: of nodes racing to set it,
    /// exactly one value wins and every one of them gets it back. Returns once committed.
    pub async fn key_or_insert(
        &self,
        kind: &str,
        key: &str,
        value: String,
    ) -> Result<String, Error> {
        match &self.cluster {
            None => {
                if let Some(existing) = self.key(kind, key) {
                    return Ok(existing);
                }
                self.put_key(kind, key, value.clone()).await?;
                Ok(value)
            }
            Some(pool) => {
                let stored = postgres::insert_key_if_absent(pool, kind, key, &value).await?;
                self.mirror().set_key(kind, key, Some(stored.clone()));
                Ok(stored)
            }
        }
    }

    /// Re-reads one key from the shared directory into the mirror (cluster mode: a key
    /// another node wrote a moment ago may not have been notified yet). A no-op on one node,
    /// where the mirror is always complete.
    pub async fn refresh_key(&self, kind: &str, key: &str) -> Result<(), Error> {
        let Some(pool) = &self.cluster else {
            return Ok(());
        };
        let value = postgres::read_key(pool, kind, key).await?;
        self.mirror().set_key(kind, key, value);
        Ok(())
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
async fn writer(mut store: Store, mut rx: mpsc::Receiver<(Op, Ack)>, mirror: Arc<Mutex<Mirror>>) {
    let mut batch = Vec::with_capacity(64);
    let mut close_ack = None;
    while close_ack.is_none() && rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Some(pos) = batch.iter().position(|(op, _)| matches!(op, Op::Close)) {
            // Writes queued behind the close are answered with an error by dropping them.
            batch.truncate(pos + 1);
            close_ack = batch.pop().map(|(_, ack)| ack);
        }
        let result = match &mut store {
            Store::Sqlite(conn) => sqlite::apply(conn, &batch).await,
            Store::Postgres(pool) => postgres::apply(pool, &batch).await,
        };
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
    let closed = match store {
        Store::Sqlite(conn) => conn.close().await,
        // The pool belongs to the cluster handle, which closes it when the node leaves.
        Store::Postgres(_) => Ok(()),
    };
    if let Err(err) = &closed {
        tracing::warn!(error = %err, "closing the directory");
    }
    if let Some(ack) = close_ack {
        let _ = ack.send(closed.map_err(|err| err.to_string()));
    }
}

impl Mirror {
    /// Sets (or with `None` removes) one key.
    pub(super) fn set_key(&mut self, kind: &str, key: &str, value: Option<String>) {
        let entry = (kind.to_owned(), key.to_owned());
        match value {
            Some(value) => {
                self.keys.insert(entry, value);
            }
            None => {
                self.keys.remove(&entry);
            }
        }
    }

    /// The row of an object, made (unnamed, without an alarm) if this is its first write.
    fn row(&mut self, namespace: &'static str, id: ObjectId, created_at: i64) -> &mut ObjectRow {
        self.objects
            .entry((namespace, id))
            .or_insert_with(|| ObjectRow {
                name: None,
                created_at,
                alarm_at: None,
            })
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Object {
                namespace,
                id,
                name,
                created_at,
            } => {
                let row = self.row(namespace, *id, *created_at);
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
                self.row(namespace, *id, *created_at).alarm_at = *at;
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
