//! How an object's events reach SQLite: queued writes, sent in as few round trips as
//! possible.
//!
//! sqlx runs each SQLite connection on a worker thread of its own, so every statement costs a
//! round trip between threads (two wake-ups). A batch of events would pay several per event if
//! each write went out on its own. Instead, events *queue* their writes ([`Writes`]); the
//! [`Session`] of the batch sends them together:
//!
//! - when an event reads through [`Ctx::db`](super::Ctx::db), the writes of the events before
//!   it are sent first (opening the batch's transaction), so reads see them;
//! - at the end of the batch, what is still queued goes out in one statement list that also
//!   opens (if needed) and commits the transaction: `BEGIN; …; COMMIT`.
//!
//! A batch whose events only read sends nothing and commits nothing. A batch of events that
//! only write costs one round trip and one fsync, however many events it holds.
//!
//! # Worked example
//!
//! Three requests wait in an inbox: A writes two rows, B reads a table, C writes a row.
//! A queues its two statements. B calls `ctx.db()`: the session sends
//! `PRAGMA query_only = OFF; BEGIN; <A's two statements>; PRAGMA query_only = ON` and B reads.
//! C queues its statement. The batch ends: `PRAGMA query_only = OFF; <C's statement>; COMMIT;
//! PRAGMA query_only = ON`. Two round trips, one fsync, three replies released after it.
//!
//! Between flushes the connection is `query_only`: a handler that writes through `ctx.db()`
//! instead of queuing fails at once rather than escaping the event's atomicity.

use sqlx::SqliteConnection;

use super::Error;

/// A value bound to a queued statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Types that can be bound to a queued statement.
pub trait Bind {
    /// The value to bind.
    fn into_value(self) -> Value;
}

impl Bind for i64 {
    fn into_value(self) -> Value {
        Value::Integer(self)
    }
}

impl Bind for i32 {
    fn into_value(self) -> Value {
        Value::Integer(i64::from(self))
    }
}

impl Bind for bool {
    fn into_value(self) -> Value {
        Value::Integer(i64::from(self))
    }
}

impl Bind for f64 {
    fn into_value(self) -> Value {
        Value::Real(self)
    }
}

impl Bind for String {
    fn into_value(self) -> Value {
        Value::Text(self)
    }
}

impl Bind for &str {
    fn into_value(self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl Bind for Vec<u8> {
    fn into_value(self) -> Value {
        Value::Blob(self)
    }
}

impl<T: Bind> Bind for Option<T> {
    fn into_value(self) -> Value {
        self.map_or(Value::Null, Bind::into_value)
    }
}

/// Statements queued and not yet sent: their SQL joined, and their parameters in order.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    sql: String,
    values: Vec<Value>,
    statements: usize,
}

/// A position in [`Writes`], to drop what an event queued if it fails.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Mark {
    sql: usize,
    values: usize,
    statements: usize,
}

impl Writes {
    pub(crate) fn push(&mut self, sql: &str) {
        self.sql.push_str(sql);
        self.sql.push_str(";\n");
        self.statements += 1;
    }

    pub(crate) fn bind(&mut self, value: Value) {
        self.values.push(value);
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            sql: self.sql.len(),
            values: self.values.len(),
            statements: self.statements,
        }
    }

    /// Drops what was queued after `mark`.
    pub(crate) fn truncate(&mut self, mark: Mark) {
        self.sql.truncate(mark.sql);
        self.values.truncate(mark.values);
        self.statements = mark.statements;
    }

    fn is_empty(&self) -> bool {
        self.statements == 0
    }

    /// Takes what was queued before `mark`, leaving the rest (moved to the front).
    fn take_before(&mut self, mark: Mark) -> Writes {
        let rest = Writes {
            sql: self.sql.split_off(mark.sql),
            values: self.values.split_off(mark.values),
            statements: self.statements - mark.statements,
        };
        let mut earlier = std::mem::replace(self, rest);
        earlier.statements = mark.statements;
        earlier
    }
}

/// The storage side of one batch of events.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// Queued statements of the batch (finished events', then the running event's).
    pub(crate) pending: Writes,
    /// Where the running event's writes start.
    pub(crate) event_start: Mark,
    /// The batch's transaction is open (a flush happened).
    in_txn: bool,
    /// A flush failed: the batch must be rolled back whatever happens next.
    poisoned: Option<String>,
}

impl Session {
    /// Starts the next event of the batch.
    pub(crate) fn begin_event(&mut self) {
        self.event_start = self.pending.mark();
    }

    /// Drops the running event's queued writes (it failed).
    pub(crate) fn abort_event(&mut self) {
        self.pending.truncate(self.event_start);
    }

    /// Sends the writes of the events before the running one, so a read sees them. The
    /// running event's own writes stay queued (it may still fail).
    pub(crate) async fn flush_before_read(
        &mut self,
        conn: &mut SqliteConnection,
    ) -> Result<(), Error> {
        if let Some(why) = &self.poisoned {
            return Err(Error::Corrupt(format!(
                "an earlier write of this batch failed: {why}"
            )));
        }
        if self.event_start.statements == 0 {
            return Ok(());
        }
        let earlier = self.pending.take_before(self.event_start);
        self.event_start = Mark::default();
        let begin = if self.in_txn { "" } else { "BEGIN;\n" };
        let sql = format!(
            "PRAGMA query_only = OFF;\n{begin}{}PRAGMA query_only = ON;",
            earlier.sql
        );
        self.in_txn = true;
        if let Err(err) = execute(conn, &sql, earlier.values).await {
            self.poisoned = Some(err.to_string());
            return Err(err);
        }
        Ok(())
    }

    /// Ends the batch: sends what is queued and commits. `Ok(false)` when the batch wrote
    /// nothing (no transaction, no fsync). On error the transaction is rolled back.
    pub(crate) async fn commit(&mut self, conn: &mut SqliteConnection) -> Result<bool, Error> {
        if let Some(why) = self.poisoned.take() {
            self.rollback(conn).await;
            return Err(Error::Corrupt(format!(
                "a write of this batch failed: {why}"
            )));
        }
        if self.pending.is_empty() && !self.in_txn {
            return Ok(false);
        }
        let writes = std::mem::take(&mut self.pending);
        let begin = if self.in_txn { "" } else { "BEGIN;\n" };
        let sql = format!(
            "PRAGMA query_only = OFF;\n{begin}{}COMMIT;\nPRAGMA query_only = ON;",
            writes.sql
        );
        match execute(conn, &sql, writes.values).await {
            Ok(()) => {
                self.in_txn = false;
                Ok(true)
            }
            Err(err) => {
                self.rollback(conn).await;
                Err(err)
            }
        }
    }

    /// Rolls back whatever the batch sent and drops what it queued.
    pub(crate) async fn rollback(&mut self, conn: &mut SqliteConnection) {
        self.pending = Writes::default();
        self.event_start = Mark::default();
        self.poisoned = None;
        // Outside a transaction ROLLBACK fails harmlessly; query_only must be restored
        // either way.
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        let _ = sqlx::query("PRAGMA query_only = ON")
            .execute(&mut *conn)
            .await;
        self.in_txn = false;
    }
}

/// Runs a statement list with its parameters in one round trip.
async fn execute(conn: &mut SqliteConnection, sql: &str, values: Vec<Value>) -> Result<(), Error> {
    use sqlx::Arguments as _;
    let mut args = sqlx::sqlite::SqliteArguments::default();
    for value in values {
        let added = match value {
            Value::Null => args.add(None::<i64>),
            Value::Integer(v) => args.add(v),
            Value::Real(v) => args.add(v),
            Value::Text(v) => args.add(v),
            Value::Blob(v) => args.add(v),
        };
        added.map_err(Error::corrupt)?;
    }
    // Statement texts vary with what a batch wrote; caching every combination would evict
    // the object's steady statements from the cache.
    sqlx::query_with(sql, args)
        .persistent(false)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks split queued writes exactly, statements and values alike.
    #[test]
    fn marks_split_writes() {
        let mut writes = Writes::default();
        writes.push("INSERT INTO t VALUES (?)");
        writes.bind(Value::Integer(1));
        let mark = writes.mark();
        writes.push("INSERT INTO t VALUES (?, ?)");
        writes.bind(Value::Integer(2));
        writes.bind(Value::Text("x".into()));
        let earlier = writes.take_before(mark);
        assert_eq!(earlier.statements, 1);
        assert_eq!(earlier.values, vec![Value::Integer(1)]);
        assert_eq!(writes.statements, 1);
        assert_eq!(writes.values.len(), 2);
        assert!(writes.sql.starts_with("INSERT INTO t VALUES (?, ?)"));
        let mark = writes.mark();
        writes.push("DELETE FROM t");
        writes.truncate(mark);
        assert_eq!(writes.statements, 1);
    }
}
