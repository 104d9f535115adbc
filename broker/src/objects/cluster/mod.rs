//! Cluster mode: many nodes share one PostgreSQL, and each object has one fenced owner
//! (DESIGN.md §10).
//!
//! PostgreSQL holds membership (`berth_nodes`), the objects with their owner, epoch, alarm and
//! log position (`berth_objects`), each object's commit log (`berth_log`) and its latest
//! snapshot (`berth_snapshots`). A node's SQLite files are a cache of that history.
//!
//! - **Membership** ([`membership`]): each node process joins as a new *incarnation* and
//!   renews a deadline on PostgreSQL's clock. It may act as an owner only while its own
//!   monotonic clock says the deadline it last renewed has not passed; a node that finds its
//!   membership lapsed (it was paused or cut off) drops every object and joins again.
//! - **Ownership** ([`claim`]): a node activates an object only after claiming it, which
//!   increments the object's epoch and is allowed when the object is unowned, already ours,
//!   or its owner's membership lapsed.
//! - **Commits** ([`log`]): every batch of an object is appended to its log in one
//!   PostgreSQL transaction that holds the object row's lock and checks that owner and epoch
//!   are still the committer's; batches of many objects that are ready together share one
//!   transaction. Replies leave after that commit; a fenced append drops the object and
//!   never answers success.
//! - **Moving** ([`restore`]): the new owner brings its local file to the claimed position
//!   (its own cache if it is a prefix of the log, else the latest snapshot) and replays the
//!   rest through the same writers; [`snapshot`]s trim the log.

pub mod alarms;
pub mod claim;
pub(crate) mod guard;
pub mod log;
pub mod membership;
pub mod restore;
pub mod snapshot;
pub mod status;
pub mod testing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

pub use claim::{Claim, Placement};
pub use membership::Membership;

use super::Error;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/cluster");

/// How a node joins its cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `postgres://…` of the shared database.
    pub url: String,
    /// This node's name, for people (`--node-id`).
    pub node_name: String,
    /// Where other nodes reach this one (`--advertise-url`).
    pub advertise_url: String,
    /// How long a membership lasts without renewal. Default 5 s.
    pub membership_ttl: Duration,
    /// How often membership is renewed. Default 1 s.
    pub heartbeat_every: Duration,
    /// An object stores a snapshot (and trims its log) after this many commits. Default 256.
    pub snapshot_every: i64,
    /// Connections to PostgreSQL. Default 8.
    pub max_connections: u32,
}

impl ClusterOptions {
    /// The defaults for a node called `node_name`, reachable at `advertise_url`.
    pub fn new(
        url: impl Into<String>,
        node_name: impl Into<String>,
        advertise_url: impl Into<String>,
    ) -> Self {
        ClusterOptions {
            url: url.into(),
            node_name: node_name.into(),
            advertise_url: advertise_url.into(),
            membership_ttl: Duration::from_secs(5),
            heartbeat_every: Duration::from_secs(1),
            snapshot_every: 256,
            max_connections: 8,
        }
    }
}

/// This node's handle on the cluster. Cheap to share (`Arc`).
pub struct Cluster {
    /// The cluster's identity (made by its first node).
    pub(crate) id: String,
    pub(crate) options: ClusterOptions,
    pub(crate) pool: PgPool,
    membership: membership::Current,
    appender: log::Appender,
    /// Writer statement sets by fingerprint, as read from or written to `berth_writer_sets`.
    writer_sets: Mutex<HashMap<String, Arc<Vec<String>>>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.options.node_name)
            .field("url", &self.options.advertise_url)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to PostgreSQL, applies the cluster schema's migrations (sqlx takes an
    /// advisory lock, so nodes starting together apply them once), joins as a new
    /// incarnation and starts renewing it.
    ///
    /// # Errors
    ///
    /// PostgreSQL cannot be reached, or the schema cannot be migrated.
    pub async fn join(options: ClusterOptions) -> Result<Arc<Cluster>, Error> {
        let connect: PgConnectOptions = options
            .url
            .parse()
            .map_err(|e| Error::Other(anyhow::anyhow!("--cluster: {e}")))?;
        // A node paused inside a transaction must not hold the row locks that fence its
        // objects: PostgreSQL ends such a transaction after 5 s, which also makes the paused
        // node's commit fail.
        let connect = connect
            .options([("idle_in_transaction_session_timeout", "5000")])
            .application_name("berth");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(connect)
            .await?;
        MIGRATOR.run(&pool).await?;
        // The cluster's identity, made by the first node: local files record it, so a file
        // of another cluster (a data directory reused after the database was replaced) is
        // never taken for a prefix of this one's history.
        sqlx::query(
            "INSERT INTO berth_keys (kind, key, value) VALUES ('cluster', 'id', $1) ON CONFLICT (kind, key) DO NOTHING",
        )
        .bind(uuid::Uuid::new_v4().simple().to_string())
        .execute(&pool)
        .await?;
        let (id,): (String,) =
            sqlx::query_as("SELECT value FROM berth_keys WHERE kind = 'cluster' AND key = 'id'")
                .fetch_one(&pool)
                .await?;
        let stop = CancellationToken::new();
        let membership = membership::Current::join(&pool, &options).await?;
        let appender = log::Appender::start(pool.clone(), stop.clone());
        let cluster = Arc::new(Cluster {
            id,
            options,
            pool,
            membership,
            appender,
            writer_sets: Mutex::new(HashMap::new()),
            stop,
        });
        tokio::spawn(membership::renew(Arc::clone(&cluster)));
        Ok(cluster)
    }

    /// The membership this node acts under now.
    pub fn membership(&self) -> Arc<Membership> {
        self.membership.get()
    }

    /// How this node joined.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// The PostgreSQL pool (for the directory and `berth cluster status`).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends a batch to its object's log (see [`log`]).
    pub(crate) async fn append(&self, append: log::Append) -> Result<i64, Error> {
        self.appender.append(append).await
    }

    /// Leaves the cluster: gives up every object this node owns (others may claim them at
    /// once instead of waiting for the membership to lapse) and removes its membership.
    /// Objects must be closed first.
    pub async fn leave(&self) {
        self.stop.cancel();
        let me = self.membership();
        me.lost.cancel();
        let released = sqlx::query("UPDATE berth_objects SET owner = NULL WHERE owner = $1")
            .bind(&me.incarnation)
            .execute(&self.pool)
            .await;
        let removed = sqlx::query("DELETE FROM berth_nodes WHERE incarnation = $1")
            .bind(&me.incarnation)
            .execute(&self.pool)
            .await;
        if let Err(err) = released.and(removed) {
            tracing::warn!(error = %err, "leaving the cluster; others claim this node's objects once its membership lapses");
        }
        self.pool.close().await;
    }

    /// Records the writer statements of an object type (once per set), so any node can
    /// replay records written with them. Returns their fingerprint.
    pub(crate) async fn register_writers(&self, writers: &[&str]) -> Result<String, Error> {
        let fingerprint = super::record::fingerprint(writers);
        if self.cached_writers(&fingerprint).is_some() {
            return Ok(fingerprint);
        }
        let statements: Vec<String> = writers.iter().map(|w| (*w).to_owned()).collect();
        sqlx::query(
            "INSERT INTO berth_writer_sets (fingerprint, statements) VALUES ($1, $2) ON CONFLICT (fingerprint) DO NOTHING",
        )
        .bind(&fingerprint)
        .bind(&statements)
        .execute(&self.pool)
        .await?;
        self.cache_writers(&fingerprint, statements);
        Ok(fingerprint)
    }

    /// The writer statements with `fingerprint`, from the cache or PostgreSQL.
    pub(crate) async fn writers(&self, fingerprint: &str) -> Result<Arc<Vec<String>>, Error> {
        if let Some(set) = self.cached_writers(fingerprint) {
            return Ok(set);
        }
        let row: Option<(Vec<String>,)> =
            sqlx::query_as("SELECT statements FROM berth_writer_sets WHERE fingerprint = $1")
                .bind(fingerprint)
                .fetch_optional(&self.pool)
                .await?;
        let (statements,) = row.ok_or_else(|| {
            Error::Corrupt(format!(
                "the log names writer set {fingerprint}, which is not stored"
            ))
        })?;
        Ok(self.cache_writers(fingerprint, statements))
    }

    fn cached_writers(&self, fingerprint: &str) -> Option<Arc<Vec<String>>> {
        self.writer_sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(fingerprint)
            .cloned()
    }

    fn cache_writers(&self, fingerprint: &str, statements: Vec<String>) -> Arc<Vec<String>> {
        let set = Arc::new(statements);
        self.writer_sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(fingerprint.to_owned(), Arc::clone(&set));
        set
    }
}
