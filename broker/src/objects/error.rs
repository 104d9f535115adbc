//! Errors of the object runtime.

/// A failure inside the runtime or inside an object's handler.
///
/// An `Err` from a handler rolls back that event's writes (and only those) and reloads the
/// object's in-memory state from its database. Expected outcomes (a cap is reached, a lease is
/// unknown) are not errors: objects return them as values in their replies.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed: disk full, read-only file system, I/O error, or a bad statement.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// SQLite failed, on a connection of berth's own (`sqlite`): as `Storage`.
    #[error("storage: {0}")]
    Sqlite(#[from] super::sqlite::SqliteError),
    /// An object's migrations could not be applied.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A file system operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Another process holds the data directory's lock (`berth.lock`). The message is the
    /// whole story, so it has no source to repeat it.
    #[error("data directory {dir} is in use by another berth process ({errno})")]
    InUse {
        dir: String,
        errno: nix::errno::Errno,
    },
    /// Stored data could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// A value could not be encoded for storage (a bug: berth's own types always encode).
    #[error("cannot encode a value: {0}")]
    Encode(String),
    /// Cluster mode: this node does not own the object (another live node does, at the URL
    /// when known), or no longer may act as its owner (its commit was fenced, or its
    /// membership lapsed). Nothing was done.
    #[error("{}", match .0 { Some(url) => format!("the object is owned by the node at {url}"), None => "this node does not own the object (now)".to_owned() })]
    Moved(Option<String>),
    /// Cluster mode: PostgreSQL failed. Whatever was being done was not reported done.
    #[error("cluster storage: {0}")]
    Cluster(String),
    /// Anything else an object's code reports.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Error {
    /// Stored data that does not decode.
    pub fn corrupt(err: impl std::fmt::Display) -> Self {
        Error::Corrupt(err.to_string())
    }

    /// A value that does not encode (as JSON) for storage.
    pub fn encode(err: impl std::fmt::Display) -> Self {
        Error::Encode(err.to_string())
    }

    /// A stored value outside its domain (`what` is e.g. "lease state").
    pub fn corrupt_value(what: &str, value: &str) -> Self {
        Error::Corrupt(format!("unknown {what} `{value}`"))
    }
}

/// Why a call to an object did not produce a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The object's inbox is full. Retrying after a short pause is safe: nothing was done.
    #[error("object overloaded; retry shortly")]
    Overloaded,
    /// The runtime is shutting down; nothing was done. Retry against the restarted server.
    #[error("shutting down")]
    ShuttingDown,
    /// The event's writes could not be committed (disk full, read-only, I/O error). Nothing
    /// from the event is stored; retrying once storage recovers is safe.
    #[error("storage unavailable: {0}")]
    Storage(String),
    /// The object's handler failed; its writes were rolled back.
    #[error("object failed: {0}")]
    Failed(String),
    /// Cluster mode: another node owns the object (forward to its URL when known), or this
    /// node just lost it. Nothing was reported done; retrying (there) is safe.
    #[error("object moved{}", .0.as_deref().map(|url| format!(" to {url}")).unwrap_or_default())]
    Moved(Option<String>),
}

impl CallError {
    /// Classifies a handler or commit error.
    ///
    /// SQLite errors of the storage itself (full, read-only, I/O, busy, out of memory, a
    /// damaged file) are `Storage`: retrying once storage recovers is right. Any other SQLite
    /// error (a bad statement, a violated constraint, a refused commit) is a bug in berth, not
    /// a state of the disk, and is `Failed`, so it is not reported as "disk full or read-only?".
    pub(crate) fn from_error(err: &Error) -> Self {
        match err {
            Error::Storage(sqlx::Error::Database(db)) if !is_storage_code(db.code().as_deref()) => {
                CallError::Failed(err.to_string())
            }
            Error::Sqlite(err) if !err.is_storage() => CallError::Failed(err.to_string()),
            Error::Storage(_)
            | Error::Sqlite(_)
            | Error::Io(_)
            | Error::Migrate(_)
            | Error::Cluster(_) => CallError::Storage(err.to_string()),
            Error::Moved(url) => CallError::Moved(url.clone()),
            Error::Corrupt(_) | Error::Encode(_) | Error::Other(_) | Error::InUse { .. } => {
                CallError::Failed(err.to_string())
            }
        }
    }
}

/// Whether a SQLite result code (extended or primary, as sqlx reports it) is a failure of the
/// storage rather than of the statement. Unknown codes count as storage.
fn is_storage_code(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<i32>().ok())
        .is_none_or(super::sqlite::is_storage_code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection as _;

    /// The classification of the error `sql` fails with on the database at `url`.
    async fn classify(url: &str, sql: &str) -> CallError {
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("open");
        let err = sqlx::query(sql)
            .execute(&mut conn)
            .await
            .expect_err("the statement fails");
        conn.close().await.expect("close");
        CallError::from_error(&Error::Storage(err))
    }

    /// A bad statement is a bug (`Failed`); a write to a read-only database is storage.
    #[tokio::test]
    async fn sqlite_errors_are_classified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.sqlite");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open");
        sqlx::query("CREATE TABLE t (x INTEGER NOT NULL)")
            .execute(&mut conn)
            .await
            .expect("create");
        conn.close().await.expect("close");
        assert!(matches!(
            classify(&url, "SELECT * FROM missing").await,
            CallError::Failed(_)
        ));
        let read_only = format!("sqlite://{}?mode=ro", path.display());
        assert!(matches!(
            classify(&read_only, "INSERT INTO t VALUES (1)").await,
            CallError::Storage(_)
        ));
        assert!(is_storage_code(None));
        assert!(is_storage_code(Some("13")));
        assert!(is_storage_code(Some("778"))); // SQLITE_IOERR_WRITE
        assert!(!is_storage_code(Some("531"))); // SQLITE_CONSTRAINT_COMMITHOOK
    }
}
