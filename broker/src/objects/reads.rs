//! Several reads in one round trip to the connection's thread.
//!
//! sqlx runs each SQLite connection on a thread of its own, and every statement is a round
//! trip between threads: the connection's thread is woken, runs it, and wakes the object's
//! task with the rows. Waking threads was the largest single cost of a cold wake (W2's
//! profile: `futex_wake` from sending a statement to a sleeping connection thread, 11 % of all
//! samples), and an object's load is a dozen small reads.
//!
//! [`read_sets`] sends a list of `;`-separated SELECTs as one query. SQLite runs them in order
//! on the connection's thread and the rows stream back, each statement's rows followed by its
//! end marker, so they are split apart again here ([`RowSets`]). Parameters are numbered
//! (`?N`) and shared by every statement of the list. The list is prepared once per connection
//! and cached like any other query.

use std::collections::VecDeque;

use futures::TryStreamExt as _;
use sqlx::sqlite::SqliteRow;
use sqlx::{Either, Executor as _, FromRow, SqliteConnection};

use super::Error;
use super::session::{self, Value};

/// The rows of each statement of a [`read_sets`] list, taken in the list's order.
pub struct RowSets {
    sets: VecDeque<Vec<SqliteRow>>,
}

impl std::fmt::Debug for RowSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Rows may hold secrets (sealed, but still): only their counts are shown.
        let counts: Vec<usize> = self.sets.iter().map(Vec::len).collect();
        f.debug_struct("RowSets").field("rows", &counts).finish()
    }
}

impl RowSets {
    /// The rows of the next statement, decoded as `T`.
    ///
    /// # Errors
    ///
    /// Every statement's rows were taken already, or a row does not decode as `T`.
    pub fn rows<T>(&mut self) -> Result<Vec<T>, Error>
    where
        T: for<'r> FromRow<'r, SqliteRow>,
    {
        let rows = self
            .sets
            .pop_front()
            .ok_or_else(|| Error::corrupt("a read list returned fewer row sets than asked for"))?;
        rows.iter()
            .map(|row| T::from_row(row).map_err(Error::from))
            .collect()
    }

    /// The one row of the next statement (an aggregate, say), decoded as `T`.
    ///
    /// # Errors
    ///
    /// As [`RowSets::rows`], or the statement did not return exactly one row.
    pub fn one<T>(&mut self) -> Result<T, Error>
    where
        T: for<'r> FromRow<'r, SqliteRow>,
    {
        let mut rows = self.rows::<T>()?;
        match (rows.pop(), rows.is_empty()) {
            (Some(row), true) => Ok(row),
            _ => Err(Error::corrupt(
                "a read that returns one row returned another count",
            )),
        }
    }
}

/// Runs `sql`, a list of `;`-separated statements that only read, with `values` bound to its
/// numbered parameters, in one round trip; returns each statement's rows.
///
/// # Errors
///
/// A statement fails (the rows of the statements before it are dropped).
pub async fn read_sets(
    conn: &mut SqliteConnection,
    sql: &str,
    values: &[Value],
) -> Result<RowSets, Error> {
    let mut sets = VecDeque::new();
    let mut current = Vec::new();
    // The executor's `fetch_many` (the query's is deprecated: only SQLite runs several
    // statements as one query, which is exactly what this relies on).
    let query = sqlx::query_with(sql, session::arguments(values)?);
    let mut results = conn.fetch_many(query);
    while let Some(item) = results.try_next().await? {
        match item {
            Either::Right(row) => current.push(row),
            // The end of one statement: its rows are complete.
            Either::Left(_) => sets.push_back(std::mem::take(&mut current)),
        }
    }
    Ok(RowSets { sets })
}

#[cfg(test)]
mod tests {
    use sqlx::Connection as _;

    use super::*;

    async fn memory() -> SqliteConnection {
        let mut conn = SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory database");
        sqlx::raw_sql(
            "CREATE TABLE a (x INTEGER NOT NULL); INSERT INTO a VALUES (1), (2), (3);
             CREATE TABLE b (name TEXT NOT NULL);",
        )
        .execute(&mut conn)
        .await
        .expect("schema");
        conn
    }

    #[tokio::test]
    async fn each_statement_gets_its_own_rows_in_order() {
        let mut conn = memory().await;
        let mut sets = read_sets(
            &mut conn,
            "SELECT x FROM a WHERE x >= ?1 ORDER BY x; SELECT name FROM b; SELECT COUNT(*), ?2 FROM a",
            &[Value::Integer(2), Value::Text("tag".into())],
        )
        .await
        .expect("reads");
        assert_eq!(sets.rows::<(i64,)>().expect("a"), vec![(2,), (3,)]);
        // An empty table still has its (empty) set: later sets do not shift.
        assert!(sets.rows::<(String,)>().expect("b").is_empty());
        assert_eq!(
            sets.one::<(i64, String)>().expect("count"),
            (3, "tag".to_owned())
        );
        assert!(sets.rows::<(i64,)>().is_err(), "no fourth statement");
    }

    #[tokio::test]
    async fn a_failing_statement_fails_the_list() {
        let mut conn = memory().await;
        let err = read_sets(&mut conn, "SELECT x FROM a; SELECT nope FROM b", &[])
            .await
            .expect_err("no such column");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[tokio::test]
    async fn one_refuses_another_count_of_rows() {
        let mut conn = memory().await;
        let mut sets = read_sets(&mut conn, "SELECT x FROM a", &[])
            .await
            .expect("reads");
        assert!(sets.one::<(i64,)>().is_err());
    }
}
