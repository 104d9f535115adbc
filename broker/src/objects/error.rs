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
    /// An object's migrations could not be applied.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A file system operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// Anything else an object's code reports.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Error {
    /// Stored data that does not decode.
    pub fn corrupt(err: impl std::fmt::Display) -> Self {
        Error::Corrupt(err.to_string())
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
}

impl CallError {
    /// Classifies a handler or commit error.
    pub(crate) fn from_error(err: &Error) -> Self {
        match err {
            Error::Storage(_) | Error::Io(_) | Error::Migrate(_) => {
                CallError::Storage(err.to_string())
            }
            Error::Corrupt(_) | Error::Other(_) => CallError::Failed(err.to_string()),
        }
    }
}
