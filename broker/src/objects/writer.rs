//! Batched writers: the hot rows of an object, declared once as a table and its columns.
//!
//! [`Ctx::put`](super::Ctx::put) queues a row as one JSON array, its columns in the writer's
//! order. That JSON is what a batch's record holds (`record`), and a writer has two
//! statements that read it:
//!
//! - its **statement**, which takes all of a batch's rows as one JSON array (`json_each`) and
//!   which records name by fingerprint: replay (the commit journal's, the cluster log's) runs
//!   the statements a record was written for, whichever build wrote it;
//! - its **row statement**, `INSERT OR REPLACE … VALUES (?1, …)`, which the object's own
//!   batches run once per row, binding each column decoded from the row's JSON here.
//!
//! Both write the same values (`rows_and_array_write_the_same_values` holds them to it). The
//! row statement is what a live batch uses because it is much cheaper: SQLite parses and
//! plans a short `VALUES` list in a fraction of the time it takes for the `json_each` query
//! (32 `->>` paths for a lease), and the decoding costs no SQL function calls. A woken tenant
//! prepares its writers afresh; measured under W2, the row statements took ~13 % of the
//! server's CPU per pair off (BENCHMARKS.md).
//!
//! A column is a scalar (decoded as `->>` decodes it: a string as text, a number as an
//! integer or, past `i64` or with a fraction, a real, `true`/`false` as 1/0, `null` as NULL,
//! an array or object as its JSON text) or, marked JSON, the element's JSON text as it is
//! (as `->` returns it).

use serde_json::value::RawValue;

use super::Error;
use super::session::{self, Value};
use super::sqlite::Db;

/// One batched writer of an object (see [`super::Object::writers`] and the module docs).
#[derive(Debug)]
pub struct Writer {
    statement: String,
    row: String,
    json: Box<[bool]>,
}

impl Writer {
    /// The writer of `table`'s `columns`, in the order a row's JSON array holds them;
    /// `json[i]` marks column `i` as JSON text. Every row replaces the row of its key.
    ///
    /// # Panics
    ///
    /// `columns` and `json` differ in length (a declaration bug).
    pub fn new(table: &str, columns: &[&str], json: &[bool]) -> Writer {
        assert_eq!(columns.len(), json.len(), "one JSON flag per column");
        let extract: Vec<String> = json
            .iter()
            .enumerate()
            .map(|(i, json)| {
                if *json {
                    format!("v -> {i}")
                } else {
                    format!("v ->> {i}")
                }
            })
            .collect();
        let params: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let columns = columns.join(", ");
        Writer {
            // `ORDER BY key` keeps the array's order, so the last write of a row in a batch
            // wins; the rows are materialized first (read straight from `json_each`, every
            // `->>` would render the row as text again).
            statement: format!(
                "WITH r(v) AS MATERIALIZED (SELECT value FROM json_each(?) ORDER BY key)
         INSERT OR REPLACE INTO {table} ({columns}) SELECT {} FROM r",
                extract.join(", ")
            ),
            row: format!(
                "INSERT OR REPLACE INTO {table} ({columns}) VALUES ({})",
                params.join(", ")
            ),
            json: json.into(),
        }
    }

    /// The statement that takes a whole JSON array of rows: what records name and replay runs.
    pub fn statement(&self) -> &str {
        &self.statement
    }

    /// Writes `rows` (JSON arrays, each followed by a comma, as `session::Writes` queues
    /// them) with the row statement, one step per row, in order.
    pub(crate) fn send_rows(&self, conn: &mut Db, rows: &[u8]) -> Result<(), Error> {
        let array = session::json_array(rows)?;
        let rows: Vec<Vec<&RawValue>> = serde_json::from_str(&array).map_err(Error::corrupt)?;
        let mut values = Vec::with_capacity(self.json.len());
        for row in rows {
            if row.len() != self.json.len() {
                return Err(Error::Corrupt(format!(
                    "a row of {} columns for a writer of {}",
                    row.len(),
                    self.json.len()
                )));
            }
            values.clear();
            for (element, json) in row.into_iter().zip(self.json.iter()) {
                values.push(if *json {
                    Value::Text(element.get().to_owned())
                } else {
                    scalar(element)?
                });
            }
            conn.run(&self.row, &values, true, &mut |_, _| Ok(()))?;
        }
        Ok(())
    }
}

/// A JSON element as `->>` returns it.
fn scalar(element: &RawValue) -> Result<Value, Error> {
    let value: serde_json::Value = serde_json::from_str(element.get()).map_err(Error::corrupt)?;
    Ok(match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Integer(i64::from(b)),
        serde_json::Value::String(s) => Value::Text(s),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            Value::Text(element.get().to_owned())
        }
    })
}

/// The statements of `writers`, in order (what records name them by).
pub(crate) fn statements(writers: &[Writer]) -> Vec<&str> {
    writers.iter().map(Writer::statement).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::session::Writes;

    /// Every kind of element, through both statements into two identical tables: the same
    /// values of the same types, row for row, including the last write of a key winning.
    #[test]
    fn rows_and_array_write_the_same_values() -> Result<(), Error> {
        let mut db = Db::open_memory()?;
        for table in ["a", "b"] {
            db.execute_batch(&format!(
                "CREATE TABLE {table} (k TEXT PRIMARY KEY, s, i, r, n, t, j, arr, obj) \
                 WITHOUT ROWID"
            ))?;
        }
        let columns = ["k", "s", "i", "r", "n", "t", "j", "arr", "obj"];
        let json = [false, false, false, false, false, false, true, false, true];
        let rows = [
            r#"["k1","plain",1,1.5,null,true,{"x":[1,"y"]},[1,2],{"a":"\u00e9\"q"}]"#,
            r#"["k2","é \"quoted\" \n ☃",-9223372036854775808,1e300,null,false,"a string",[],{}]"#,
            r#"["k3","",18446744073709551615,-0.0,null,false,null,["x"],{"n":null}]"#,
            r#"["k4","\u0001",0,0.1,null,true,12.5,[[]],{"b":false}]"#,
            r#"["k1","replaced",2,2.5,null,false,[],[3],{"a":1}]"#,
        ];
        let mut queued = Vec::new();
        for row in rows {
            queued.extend_from_slice(row.as_bytes());
            queued.push(b',');
        }
        Writer::new("a", &columns, &json).send_rows(&mut db, &queued)?;
        let array = Writer::new("b", &columns, &json);
        let mut writes = Writes::default();
        for row in rows {
            let row: serde_json::Value = serde_json::from_str(row).map_err(Error::corrupt)?;
            writes.row(0, &row)?;
        }
        crate::objects::session::send(
            &mut db,
            crate::objects::session::Writers::Statements(&[array.statement()]),
            &writes,
            false,
            None,
        )?;
        let dump = |db: &mut Db, table: &str| -> Result<Vec<String>, Error> {
            let select: Vec<String> = columns
                .iter()
                .map(|c| format!("typeof({c}) || ':' || quote({c})"))
                .collect();
            let rows: Vec<(String,)> = db
                .query(&format!(
                    "SELECT {} FROM {table} ORDER BY k",
                    select.join(" || ' ' || ")
                ))
                .fetch_all()?;
            Ok(rows.into_iter().map(|(row,)| row).collect())
        };
        let (a, b) = (dump(&mut db, "a")?, dump(&mut db, "b")?);
        assert_eq!(a.len(), 4, "{a:?}");
        assert!(
            a[0].contains("text:'replaced'"),
            "the last write of k1 wins: {a:?}"
        );
        assert_eq!(a, b);
        Ok(())
    }

    /// A row that does not match the writer's columns is refused, not half written.
    #[test]
    fn a_row_of_the_wrong_width_is_refused() -> Result<(), Error> {
        let mut db = Db::open_memory()?;
        db.execute_batch("CREATE TABLE a (k TEXT PRIMARY KEY, v)")?;
        let writer = Writer::new("a", &["k", "v"], &[false, false]);
        assert!(writer.send_rows(&mut db, br#"["k","v","extra"],"#).is_err());
        assert!(writer.send_rows(&mut db, br#"not json,"#).is_err());
        let (count,): (i64,) = db.query("SELECT count(*) FROM a").fetch_one()?;
        assert_eq!(count, 0);
        Ok(())
    }
}
