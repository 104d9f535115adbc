//! How a tenant command ends other than with its answer: a [`Rejection`] (expected — the
//! request was understood and refused; it reaches the caller as a value) or a runtime
//! [`Error`] (the event rolls back). Commands return `Result<T, Failure>` and use `?` on
//! either; the object turns that into the message's reply, `Result<T, Rejection>`.

use crate::objects::Error;
use crate::objects::sqlite::SqliteError;

/// An expected refusal: the request was understood and is refused. What the refusal itself
/// records (a budget announcement, a metric) still commits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The tenant does not exist (was never created).
    #[error("tenant not found")]
    NoTenant,
    /// A lease, pool, provider account or webhook that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but not acceptable (a TTL past `max_ttl_s`, an unknown
    /// pool, a bad provider config).
    #[error("{0}")]
    Invalid(String),
    /// The lease already ended.
    #[error("{0}")]
    LeaseEnded(String),
    /// The same idempotency key came with another body.
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyMismatch,
    /// The tenant's or pool's active cap is reached.
    #[error("{0}")]
    ConcurrencyCap(String),
    /// The reservation would pass a spend cap.
    #[error("{0}")]
    SpendCap(String),
    /// The queue is full.
    #[error("{0}")]
    QueueFull(String),
    /// A runner token that does not match the lease.
    #[error("invalid runner token")]
    BadRunnerToken,
    /// A limit above the tenant's quota, or one more token, endpoint, pool or account than
    /// the quota allows.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A lease's runner has no output berth can show (its provider keeps none, it has no
    /// runner yet, or its runner is gone).
    #[error("{0}")]
    NoLogs(String),
    /// Something only the operator (the admin token) may do: host-runner accounts and their
    /// pools' commands.
    #[error("{0}")]
    OperatorOnly(String),
    /// Changing a provider account's identity (kind, endpoint or project, root) while it
    /// has live runners, without `force`.
    #[error("{0}")]
    AccountInUse(String),
    /// A lease's runner asked for its GitHub JIT config before it has one.
    #[error("{0}")]
    NoJitConfig(String),
}

/// Why a command did not produce its answer.
#[derive(Debug)]
pub enum Failure {
    /// Refused, as expected; the caller gets the rejection.
    Rejected(Rejection),
    /// The runtime failed; the event rolls back.
    Failed(Error),
}

impl From<Rejection> for Failure {
    fn from(rejection: Rejection) -> Self {
        Failure::Rejected(rejection)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Failed(error)
    }
}

impl From<SqliteError> for Failure {
    fn from(error: SqliteError) -> Self {
        Failure::Failed(error.into())
    }
}

/// A command's result as the message's reply: a rejection is an answer, an error is not.
pub(super) fn reply<T>(result: Result<T, Failure>) -> Result<Result<T, Rejection>, Error> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(Failure::Rejected(rejection)) => Ok(Err(rejection)),
        Err(Failure::Failed(error)) => Err(error),
    }
}
