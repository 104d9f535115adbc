//! `berth cluster status`: what PostgreSQL says about the cluster — its nodes, whether they
//! are alive, what each owns, and how much log and snapshot data there is.

use serde::Serialize;
use sqlx::PgPool;

use crate::objects::Error;

/// The cluster as PostgreSQL holds it.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Every node incarnation that has not left (dead ones too, until others notice).
    pub nodes: Vec<NodeStatus>,
    /// Objects known to the cluster.
    pub objects: i64,
    /// Objects no live node owns right now (hibernated on a node that left, or never claimed).
    pub unowned_objects: i64,
    /// Rows and bytes of commit log not yet covered by a snapshot.
    pub log_rows: i64,
    pub log_bytes: i64,
    /// Stored snapshots and their bytes.
    pub snapshots: i64,
    pub snapshot_bytes: i64,
}

/// One node incarnation.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub url: String,
    pub incarnation: String,
    /// RFC 3339.
    pub started_at: String,
    /// Its membership's deadline (RFC 3339); past it, others take its objects over.
    pub deadline: String,
    pub alive: bool,
    /// Objects it owns.
    pub objects: i64,
    /// Log rows of the objects it owns.
    pub log_rows: i64,
}

/// Reads the status of the cluster whose database is `url`.
///
/// # Errors
///
/// PostgreSQL cannot be reached, or holds no berth cluster.
pub async fn status(url: &str) -> Result<Status, Error> {
    let pool = PgPool::connect(url).await?;
    let result = read(&pool).await;
    pool.close().await;
    result
}

async fn read(pool: &PgPool) -> Result<Status, Error> {
    type Node = (String, String, String, String, String, bool, i64, i64);
    let nodes: Vec<Node> = sqlx::query_as(
        "SELECT n.name, n.url, n.incarnation, \
                to_char(n.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                to_char(n.deadline AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                n.deadline > now(), \
                (SELECT count(*) FROM berth_objects o WHERE o.owner = n.incarnation), \
                (SELECT count(*) FROM berth_log l JOIN berth_objects o USING (namespace, id) WHERE o.owner = n.incarnation) \
         FROM berth_nodes n ORDER BY n.name, n.started_at",
    )
    .fetch_all(pool)
    .await?;
    let (objects, unowned): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE o.owner IS NULL OR NOT EXISTS \
           (SELECT 1 FROM berth_nodes n WHERE n.incarnation = o.owner AND n.deadline > now())) \
         FROM berth_objects o",
    )
    .fetch_one(pool)
    .await?;
    let (log_rows, log_bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(octet_length(record)), 0)::bigint FROM berth_log",
    )
    .fetch_one(pool)
    .await?;
    let (snapshots, snapshot_bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(octet_length(data)), 0)::bigint FROM berth_snapshots",
    )
    .fetch_one(pool)
    .await?;
    Ok(Status {
        nodes: nodes
            .into_iter()
            .map(
                |(name, url, incarnation, started_at, deadline, alive, objects, log_rows)| {
                    NodeStatus {
                        name,
                        url,
                        incarnation,
                        started_at,
                        deadline,
                        alive,
                        objects,
                        log_rows,
                    }
                },
            )
            .collect(),
        objects,
        unowned_objects: unowned,
        log_rows,
        log_bytes,
        snapshots,
        snapshot_bytes,
    })
}
