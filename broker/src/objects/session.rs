//! How an object's events reach SQLite: queued writes, sent together.
//!
//! Every write sent costs a prepared statement's lookup, its binds and steps, and a batch of
//! events would pay them several times per event if each write went out on its own.
//! Instead, events *queue* their writes ([`Writes`]); the [`Session`] of the batch sends them
//! together:
//!
//! - when an event reads through [`Ctx::db`](super::Ctx::db), the writes of the events before
//!   it are sent first (opening the batch's transaction), so reads see them;
//! - at the end of the batch, what is still queued goes out and the transaction commits:
//!   `BEGIN`, each batched writer's rows (one step per row of its prepared row statement:
//!   `super::writer`), the key-value table's entries, the ad-hoc statements, `COMMIT`.
//!
//! A batch whose events only read sends nothing and commits nothing. A batch of events that
//! only write costs one step per row and one fsync, and prepares nothing new, however many
//! events it holds.
//! The fixed statements are prepared once per connection, each on its own ([`send`]).
//!
//! # Worked example
//!
//! Three requests wait in an inbox: A puts two rows, B reads a table, C puts a row.
//! A queues its rows. B calls `ctx.db()`: the session sends `BEGIN` and A's rows, and B reads.
//! C queues its row. The batch ends: C's row, then `COMMIT`. One fsync, three replies released
//! after it.
//!
//! # Stray writes
//!
//! A handler that writes through `ctx.db()` instead of queuing would escape its event's
//! atomicity. The connection's commit hook refuses every commit but the session's own (see
//! [`install_gate`]), so such a write fails outside a transaction. (`PRAGMA query_only` would
//! catch more, but toggling it expires every prepared statement of the connection.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Error;
use super::sqlite::Db;
use super::writer::Writer;

/// The writers a batch's rows are sent with.
#[derive(Clone, Copy)]
pub(crate) enum Writers<'a> {
    /// The object's own: each row through its writer's row statement (a live batch).
    Declared(&'a [Writer]),
    /// The statements a record names: each writer's rows as one JSON array (replay).
    Statements(&'a [&'a str]),
}

/// Installs the commit hook that lets only [`Session`] commits through, and returns the gate
/// the sessions of this connection open for their `COMMIT`.
pub(crate) fn install_gate(db: &mut Db) -> Arc<AtomicBool> {
    let gate = Arc::new(AtomicBool::new(false));
    db.set_commit_hook(Arc::clone(&gate));
    gate
}

/// Holds the commit gate open while it lives (closing it even if the send is cancelled).
pub(crate) struct Opened<'a>(&'a AtomicBool);

impl<'a> Opened<'a> {
    pub(crate) fn new(gate: &'a AtomicBool) -> Self {
        gate.store(true, Ordering::Release);
        Opened(gate)
    }
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A value bound to a queued statement.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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

impl<T: Bind + Clone> Bind for &T {
    fn into_value(self) -> Value {
        self.clone().into_value()
    }
}

impl Bind for Value {
    fn into_value(self) -> Value {
        self
    }
}

impl<T: Bind> Bind for Option<T> {
    fn into_value(self) -> Value {
        self.map_or(Value::Null, Bind::into_value)
    }
}

/// The most batched writers an object may declare.
pub const MAX_WRITERS: usize = 8;

/// An upsert of the runtime's key-value table, one entry per step (a batch writes a few: its
/// alarm, the journal position, an object's own keys).
const KV_UPSERT: &str = "INSERT INTO _berth_kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value";
/// A delete of the runtime's key-value table, one key per step.
const KV_DELETE: &str = "DELETE FROM _berth_kv WHERE key = ?1";

/// Writes queued and not yet sent.
///
/// Three kinds: rows for the object's batched writers ([`super::Object::writers`], one JSON
/// array per writer, sent with fixed, prepared-once statements), entries of the runtime's
/// key-value table (last write per key wins), and ad-hoc statements with their parameters.
///
/// In cluster mode the chunks a batch sends are also its logical record in the commit log
/// (`super::record`), replayed on another node with the same [`send`]: that is why it
/// serializes.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Writes {
    sql: String,
    values: Vec<Value>,
    statements: usize,
    /// Per writer: its rows as JSON texts, each followed by a comma.
    rows: [Vec<u8>; MAX_WRITERS],
    kv: Vec<(String, Option<String>)>,
}

/// A position in [`Writes`], to drop what an event queued if it fails.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Mark {
    sql: usize,
    values: usize,
    statements: usize,
    rows: [usize; MAX_WRITERS],
    kv: usize,
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

    /// Queues `row`, serialized as JSON, for batched writer `writer`.
    pub(crate) fn row(&mut self, writer: usize, row: &impl serde::Serialize) -> Result<(), Error> {
        let rows = self
            .rows
            .get_mut(writer)
            .ok_or_else(|| Error::Corrupt(format!("no batched writer {writer}")))?;
        let len = rows.len();
        if let Err(err) = serde_json::to_writer(&mut *rows, row) {
            rows.truncate(len);
            return Err(Error::corrupt(err));
        }
        rows.push(b',');
        Ok(())
    }

    /// Queues a key-value write (`None` deletes).
    pub(crate) fn kv(&mut self, key: String, value: Option<String>) {
        self.kv.push((key, value));
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            sql: self.sql.len(),
            values: self.values.len(),
            statements: self.statements,
            rows: std::array::from_fn(|i| self.rows[i].len()),
            kv: self.kv.len(),
        }
    }

    /// Drops what was queued after `mark`.
    pub(crate) fn truncate(&mut self, mark: Mark) {
        self.sql.truncate(mark.sql);
        self.values.truncate(mark.values);
        self.statements = mark.statements;
        for (rows, len) in self.rows.iter_mut().zip(mark.rows) {
            rows.truncate(len);
        }
        self.kv.truncate(mark.kv);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.statements == 0 && self.kv.is_empty() && self.rows.iter().all(Vec::is_empty)
    }

    /// Takes what was queued before `mark`, leaving the rest.
    fn take_before(&mut self, mark: Mark) -> Writes {
        let rest = Writes {
            sql: self.sql.split_off(mark.sql),
            values: self.values.split_off(mark.values),
            statements: self.statements - mark.statements,
            rows: std::array::from_fn(|i| self.rows[i].split_off(mark.rows[i])),
            kv: self.kv.split_off(mark.kv),
        };
        let mut earlier = std::mem::replace(self, rest);
        earlier.statements = mark.statements;
        earlier
    }
}

/// The storage side of one batch of events.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// The connection's commit gate (see [`install_gate`]).
    gate: Arc<AtomicBool>,
    /// Queued writes of the batch (finished events', then the running event's).
    pub(crate) pending: Writes,
    /// Where the running event's writes start.
    pub(crate) event_start: Mark,
    /// The batch's transaction is open (a flush happened).
    in_txn: bool,
    /// A flush failed: the batch must be rolled back whatever happens next.
    poisoned: Option<String>,
    /// Every chunk sent so far, in order, when the batch must be logged (cluster mode):
    /// `None` on the embedded path, which keeps nothing.
    record: Option<Vec<Writes>>,
}

impl Session {
    /// A session on the connection whose commit hook checks `gate`.
    pub(crate) fn new(gate: Arc<AtomicBool>) -> Self {
        Session {
            gate,
            ..Session::default()
        }
    }

    /// A session that also keeps every chunk it sends, for the commit log: see
    /// [`Session::prepare`] and [`Session::finish`].
    pub(crate) fn recording(gate: Arc<AtomicBool>) -> Self {
        Session {
            gate,
            record: Some(Vec::new()),
            ..Session::default()
        }
    }

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
    pub(crate) fn flush_before_read(
        &mut self,
        conn: &mut Db,
        writers: &[Writer],
    ) -> Result<(), Error> {
        if let Some(why) = &self.poisoned {
            return Err(Error::Corrupt(format!(
                "an earlier write of this batch failed: {why}"
            )));
        }
        let earlier = self.pending.take_before(self.event_start);
        self.event_start = Mark::default();
        if earlier.is_empty() {
            return Ok(());
        }
        let begin = !self.in_txn;
        self.in_txn = true;
        if let Err(err) = send(conn, Writers::Declared(writers), &earlier, begin, None) {
            self.poisoned = Some(err.to_string());
            return Err(err);
        }
        if let Some(record) = &mut self.record {
            record.push(earlier);
        }
        Ok(())
    }

    /// Ends the batch: sends what is queued and commits. `Ok(false)` when the batch wrote
    /// nothing (no transaction, no fsync). On error the transaction is rolled back.
    pub(crate) fn commit(&mut self, conn: &mut Db, writers: &[Writer]) -> Result<bool, Error> {
        if let Some(why) = self.poisoned.take() {
            self.rollback(conn);
            return Err(Error::Corrupt(format!(
                "a write of this batch failed: {why}"
            )));
        }
        let writes = std::mem::take(&mut self.pending);
        if writes.is_empty() && !self.in_txn {
            return Ok(false);
        }
        let begin = !self.in_txn;
        match send(
            conn,
            Writers::Declared(writers),
            &writes,
            begin,
            Some(&self.gate),
        ) {
            Ok(()) => {
                self.in_txn = false;
                Ok(true)
            }
            Err(err) => {
                self.rollback(conn);
                Err(err)
            }
        }
    }

    /// The first half of a logged commit: sends what is queued inside the batch's
    /// transaction, without committing, and returns the batch's logical writes — every chunk
    /// it sent, in order — or `None` when the batch wrote nothing (no transaction is open
    /// then). The caller appends them to the commit log, then calls [`Session::finish`] or,
    /// if the log refused them, [`Session::rollback`]. On error the transaction is rolled back.
    pub(crate) fn prepare(
        &mut self,
        conn: &mut Db,
        writers: &[Writer],
    ) -> Result<Option<Vec<Writes>>, Error> {
        if let Some(why) = self.poisoned.take() {
            self.rollback(conn);
            return Err(Error::Corrupt(format!(
                "a write of this batch failed: {why}"
            )));
        }
        let writes = std::mem::take(&mut self.pending);
        if !writes.is_empty() {
            let begin = !self.in_txn;
            self.in_txn = true;
            if let Err(err) = send(conn, Writers::Declared(writers), &writes, begin, None) {
                self.rollback(conn);
                return Err(err);
            }
            if let Some(record) = &mut self.record {
                record.push(writes);
            }
        }
        if !self.in_txn {
            return Ok(None);
        }
        Ok(Some(self.record.take().unwrap_or_default()))
    }

    /// The second half of a logged commit: writes the runtime's own bookkeeping (`kv`, e.g.
    /// the log position the batch reached) and commits the transaction [`Session::prepare`]
    /// left open. On error the transaction is rolled back.
    pub(crate) fn finish(
        &mut self,
        conn: &mut Db,
        writers: &[Writer],
        kv: Vec<(String, Option<String>)>,
    ) -> Result<(), Error> {
        let mut writes = Writes::default();
        for (key, value) in kv {
            writes.kv(key, value);
        }
        match send(
            conn,
            Writers::Declared(writers),
            &writes,
            !self.in_txn,
            Some(&self.gate),
        ) {
            Ok(()) => {
                self.in_txn = false;
                Ok(())
            }
            Err(err) => {
                self.rollback(conn);
                Err(err)
            }
        }
    }

    /// Rolls back whatever the batch sent and drops what it queued.
    pub(crate) fn rollback(&mut self, conn: &mut Db) {
        self.pending = Writes::default();
        self.event_start = Mark::default();
        self.poisoned = None;
        if let Some(record) = &mut self.record {
            record.clear();
        }
        // A statement list that failed midway may have left its BEGIN open even when
        // `in_txn` is false; outside a transaction ROLLBACK fails harmlessly.
        let _ = conn.execute_batch("ROLLBACK");
        self.in_txn = false;
    }
}

/// Sends `writes` (opening the transaction with `begin`, committing when given the gate to
/// open). Each fixed statement — `BEGIN`, every batched writer that has rows, the key-value
/// upsert and delete, `COMMIT` — runs as its own prepared statement, kept by the connection
/// across batches; ad-hoc statements, if any, run as one list prepared for this send only.
/// Replaying a logged chunk is the same call (`super::record`), with the statements the record
/// names: the object's own batches send their rows row by row (`super::writer`).
///
/// Why one statement at a time and not one cached list per combination of writers: a wake's
/// first batches come in several combinations (a grant, a runner ready, a release), and a
/// list per combination prepared every writer again in each: the commits' preparation was
/// 13.6 % of the server's CPU under W2 (BENCHMARKS.md, issue 19), 5.8 % since. Prepared one
/// by one, each writer is compiled once per connection.
pub(crate) fn send(
    conn: &mut Db,
    writers: Writers<'_>,
    writes: &Writes,
    begin: bool,
    commit: Option<&AtomicBool>,
) -> Result<(), Error> {
    let Writes {
        sql: adhoc,
        values,
        statements,
        rows,
        kv,
    } = writes;
    // The key-value table: last write per key wins.
    let last: std::collections::BTreeMap<&String, &Option<String>> =
        kv.iter().map(|(k, v)| (k, v)).collect();
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for (key, value) in last {
        match value {
            Some(value) => upserts.push((key, value)),
            None => deletes.push(key),
        }
    }
    if begin {
        execute(conn, "BEGIN", &[], true)?;
    }
    // Only the writers that have rows: each statement costs a step even with nothing to do.
    match writers {
        Writers::Declared(writers) => {
            for (writer, rows) in writers.iter().zip(rows.iter()) {
                if !rows.is_empty() {
                    writer.send_rows(conn, rows)?;
                }
            }
        }
        Writers::Statements(writers) => {
            for (writer, rows) in writers.iter().zip(rows.iter()) {
                if !rows.is_empty() {
                    execute(conn, writer, &[Value::Text(json_array(rows)?)], true)?;
                }
            }
        }
    }
    for (key, value) in upserts {
        let entry = [Value::Text(key.clone()), Value::Text(value.clone())];
        execute(conn, KV_UPSERT, &entry, true)?;
    }
    for key in deletes {
        execute(conn, KV_DELETE, &[Value::Text(key.clone())], true)?;
    }
    // Ad-hoc statements vary with what the batch wrote: caching every combination would
    // evict the steady statements.
    if *statements > 0 {
        execute(conn, adhoc, values, false)?;
    }
    if let Some(gate) = commit {
        let _opened = Opened::new(gate);
        execute(conn, "COMMIT", &[], true)?;
    }
    Ok(())
}

/// `[` + rows (each followed by a comma) + `]`, as text (a blob would be read as JSONB).
pub(crate) fn json_array(rows: &[u8]) -> Result<String, Error> {
    let rows = rows.strip_suffix(b",").unwrap_or(rows);
    let mut array = Vec::with_capacity(rows.len() + 2);
    array.push(b'[');
    array.extend_from_slice(rows);
    array.push(b']');
    String::from_utf8(array).map_err(Error::corrupt)
}

/// Runs a statement list with its parameters.
fn execute(conn: &mut Db, sql: &str, values: &[Value], persistent: bool) -> Result<(), Error> {
    conn.run(sql, values, persistent, &mut |_, _| Ok(()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks split queued writes exactly: statements, values, writer rows and key-value
    /// entries alike.
    #[test]
    fn marks_split_writes() {
        let mut writes = Writes::default();
        writes.push("INSERT INTO t VALUES (?)");
        writes.bind(Value::Integer(1));
        writes.row(0, &(1, "a")).unwrap();
        writes.kv("k".into(), Some("1".into()));
        let mark = writes.mark();
        writes.push("INSERT INTO t VALUES (?, ?)");
        writes.bind(Value::Integer(2));
        writes.bind(Value::Text("x".into()));
        writes.row(0, &(2, "b")).unwrap();
        writes.row(1, &[3]).unwrap();
        writes.kv("k".into(), None);
        let earlier = writes.take_before(mark);
        assert_eq!(earlier.statements, 1);
        assert_eq!(earlier.values, vec![Value::Integer(1)]);
        assert_eq!(json_array(&earlier.rows[0]).unwrap(), r#"[[1,"a"]]"#);
        assert_eq!(json_array(&earlier.rows[1]).unwrap(), "[]");
        assert_eq!(earlier.kv, vec![("k".to_owned(), Some("1".to_owned()))]);
        assert_eq!(writes.statements, 1);
        assert_eq!(writes.values.len(), 2);
        assert!(writes.sql.starts_with("INSERT INTO t VALUES (?, ?)"));
        assert_eq!(json_array(&writes.rows[0]).unwrap(), r#"[[2,"b"]]"#);
        assert_eq!(json_array(&writes.rows[1]).unwrap(), "[[3]]");
        let mark = writes.mark();
        writes.push("DELETE FROM t");
        writes.row(1, &[4]).unwrap();
        writes.kv("j".into(), None);
        writes.truncate(mark);
        assert_eq!(writes.statements, 1);
        assert_eq!(json_array(&writes.rows[1]).unwrap(), "[[3]]");
        assert_eq!(writes.kv, vec![("k".to_owned(), None)]);
        assert!(writes.row(MAX_WRITERS, &1).is_err());
    }

    /// Batches that write through different combinations of batched writers prepare each
    /// writer once per connection, not once per combination — what a woken tenant's first
    /// batches (a grant, a runner ready, a release) would otherwise pay again and again.
    #[test]
    fn each_writer_is_prepared_once_whatever_the_combination() {
        let mut db = Db::open_memory().expect("open");
        db.execute_batch(
            "CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE _berth_kv (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;",
        )
        .expect("schema");
        let writers = [
            Writer::new("a", &["id", "v"], &[false, false]),
            Writer::new("b", &["id", "v"], &[false, false]),
        ];
        let gate = install_gate(&mut db);
        let mut session = Session::new(gate);
        let combinations: [&[usize]; 4] = [&[0, 1], &[0], &[1], &[1, 0]];
        for (n, writers_used) in combinations.iter().enumerate() {
            session.begin_event();
            for &w in *writers_used {
                session
                    .pending
                    .row(w, &(n, format!("row {n}")))
                    .expect("row");
            }
            session.pending.kv(format!("k{n}"), Some("v".to_owned()));
            assert!(session.commit(&mut db, &writers).expect("commit"));
        }
        // BEGIN, the two writers, the key-value upsert and COMMIT: five, once each.
        assert_eq!(db.prepared_statements(), 5);
        let (a, b, kv): (i64, i64, i64) = db
            .query("SELECT (SELECT COUNT(*) FROM a), (SELECT COUNT(*) FROM b), (SELECT COUNT(*) FROM _berth_kv)")
            .persistent(false)
            .fetch_one()
            .expect("count");
        assert_eq!((a, b, kv), (3, 3, 4));
    }
}
