//! Declaring a table once: [`table!`](crate::tenant::row::table) turns one struct declaration
//! into the struct (read as a [`FromRow`](crate::objects::sqlite::FromRow) by column name), its column list for `SELECT`s, and its batched
//! writer (`objects::Writer`: its statements `INSERT OR REPLACE … VALUES (?1, …)` and
//! `… SELECT v ->> 0, v ->> 1, … FROM json_each(?)`) together with the row serialization that writer reads — all
//! from the same field list, in the same order, so a column's position cannot drift between
//! reading, writing and the statement.
//!
//! A field may name its column when the two differ (`kind = "type": EventKind`). A field
//! marked `[json]` is stored as JSON text (serialized with serde, read with
//! [`Json`](crate::objects::sqlite::Json), taken by the writer as the JSON text it is); every
//! other field is a scalar (decoded as `->>` decodes it) of a type that is a [`Column`] (and
//! decodes as a `sqlite::Column`). Fields under `transient` live only in memory: never read,
//! never written (they start as their `Default`).
//!
//! Rows that are rare or hold BLOBs (which JSON cannot carry) are written one at a time with
//! [`insert`] instead of a batched writer: the same declaration gives that statement and its
//! parameters.
//!
//! ```text
//! table! {
//!     /// A pool.
//!     #[derive(Clone, Debug)]
//!     pub struct Pool in "pools" {
//!         pub name: String,
//!         pub command: Vec<String> [json],
//!     }
//! }
//! ```

use serde::ser::{Serialize, SerializeTuple, Serializer};

use crate::objects::session::Value;
use crate::objects::{Ctx, Error, Object, Writer, sqlite};

/// What [`table!`] implements: how a row of the table is written.
pub trait Table {
    /// The table's name.
    const TABLE: &'static str;
    /// The stored columns, in declaration order.
    const COLUMNS: &'static [&'static str];
    /// Whether each column (same order) holds JSON text.
    const JSON: &'static [bool];
    /// Serializes the stored columns as the elements of `tuple`, in declaration order.
    fn serialize_columns<T: SerializeTuple>(&self, tuple: &mut T) -> Result<(), T::Error>;
    /// The stored columns as statement parameters, in declaration order.
    fn values(&self) -> Result<Vec<Value>, serde_json::Error>;
}

/// A scalar column's value as a statement parameter.
pub trait Column {
    fn value(&self) -> Value;
}

impl Column for String {
    fn value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl Column for i64 {
    fn value(&self) -> Value {
        Value::Integer(*self)
    }
}

impl Column for bool {
    fn value(&self) -> Value {
        Value::Integer(i64::from(*self))
    }
}

impl Column for Vec<u8> {
    fn value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl<T: Column> Column for Option<T> {
    fn value(&self) -> Value {
        self.as_ref().map_or(Value::Null, Column::value)
    }
}

/// Queues the insert (or replacement) of one row in the event: for rows written rarely, or
/// holding BLOBs. Hot rows go through a batched writer ([`AsRow`]).
///
/// # Errors
///
/// A JSON column does not serialize; nothing is queued.
pub fn insert<O: Object, T: Table>(ctx: &mut Ctx<'_, O>, row: &T) -> Result<(), Error> {
    let values = row.values().map_err(Error::encode)?;
    let sql = format!(
        "INSERT OR REPLACE INTO {} ({}) VALUES ({})",
        T::TABLE,
        T::COLUMNS.join(", "),
        vec!["?"; values.len()].join(", ")
    );
    let mut statement = ctx.write(&sql);
    for value in values {
        statement = statement.bind(value);
    }
    Ok(())
}

/// A row as its batched writer reads it: one JSON array, the columns in declaration order.
pub struct AsRow<'a, T>(pub &'a T);

impl<T: Table> Serialize for AsRow<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(T::COLUMNS.len())?;
        self.0.serialize_columns(&mut tuple)?;
        tuple.end()
    }
}

/// `a, b, c`: the stored columns, for a `SELECT`.
pub fn select_list<T: Table>() -> String {
    T::COLUMNS.join(", ")
}

/// The batched writer of a table: its rows replace the rows of their keys (see
/// `objects::writer`).
pub fn writer<T: Table>() -> Writer {
    Writer::new(T::TABLE, T::COLUMNS, T::JSON)
}

/// Declares a table's row struct once; see the module docs.
macro_rules! table {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident in $table:literal {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident $(= $column:literal)? : $ty:ty $([$json:ident])? ),* $(,)?
        }
        $( transient {
            $( $(#[$tmeta:meta])* $tvis:vis $tfield:ident : $tty:ty ),* $(,)?
        } )?
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: $ty, )*
            $( $( $(#[$tmeta])* $tvis $tfield: $tty, )* )?
        }

        impl $crate::objects::sqlite::FromRow for $name {
            fn from_row(
                row: &$crate::objects::sqlite::Row<'_>,
            ) -> Result<Self, $crate::objects::sqlite::SqliteError> {
                // Fields are evaluated in order: the n-th field looks at column n first.
                let mut at = 0_usize;
                let mut next = || {
                    at += 1;
                    at - 1
                };
                Ok($name {
                    $( $field: $crate::tenant::row::table!(
                        @get row, next(), $ty,
                        $crate::tenant::row::table!(@column $field $($column)?) $(, $json)?
                    ), )*
                    $( $( $tfield: Default::default(), )* )?
                })
            }
        }

        impl $crate::tenant::row::Table for $name {
            const TABLE: &'static str = $table;
            const COLUMNS: &'static [&'static str] =
                &[$($crate::tenant::row::table!(@column $field $($column)?)),*];
            const JSON: &'static [bool] = &[$($crate::tenant::row::table!(@json $($json)?)),*];
            fn serialize_columns<T: serde::ser::SerializeTuple>(
                &self,
                tuple: &mut T,
            ) -> Result<(), T::Error> {
                $( tuple.serialize_element(&self.$field)?; )*
                Ok(())
            }
            fn values(&self) -> Result<Vec<$crate::objects::session::Value>, serde_json::Error> {
                Ok(vec![$( $crate::tenant::row::table!(@value self.$field $(, $json)?) ),*])
            }
        }
    };
    (@column $field:ident $column:literal) => { $column };
    (@column $field:ident) => { stringify!($field) };
    (@get $row:ident, $at:expr, $ty:ty, $name:expr, json) => {
        $row.get_named_at::<$crate::objects::sqlite::Json<$ty>>($at, $name)?.0
    };
    (@get $row:ident, $at:expr, $ty:ty, $name:expr) => { $row.get_named_at::<$ty>($at, $name)? };
    (@json json) => { true };
    (@json) => { false };
    (@value $value:expr, json) => {
        $crate::objects::session::Value::Text(serde_json::to_string(&$value)?)
    };
    (@value $value:expr) => { $crate::tenant::row::Column::value(&$value) };
}
pub(crate) use table;

/// Enums stored as their names (the names the API uses): decoded from SQLite text with their
/// `parse`, written by the batched writers through their serde names (the same text).
macro_rules! stored_as_name {
    ($($ty:ty => $what:literal),* $(,)?) => {$(
        impl Column for $ty {
            fn value(&self) -> Value {
                Value::Text(self.as_str().to_owned())
            }
        }
        impl sqlite::Column for $ty {
            fn decode(value: sqlite::ValueRef<'_>) -> Result<Self, String> {
                let sqlite::ValueRef::Text(name) = value else {
                    return Err(format!("expected a {} as text", $what));
                };
                <$ty>::parse(name).ok_or_else(|| format!("unknown {} `{name}`", $what))
            }
        }
    )*};
}

stored_as_name!(
    crate::wire::LeaseState => "lease state",
    crate::wire::EndReason => "end reason",
    crate::wire::PriceSource => "price source",
    crate::wire::LedgerKind => "ledger kind",
    crate::wire::EventKind => "event type",
    crate::wire::DeliveryStatus => "delivery status",
);

#[cfg(test)]
mod tests {
    use super::*;

    table! {
        /// A row of a test table.
        #[derive(Debug, Default)]
        pub struct Sample in "samples" {
            pub id: String,
            pub tags: Vec<String> [json],
            pub size: i64,
        }
        transient {
            pub seen: bool,
        }
    }

    /// Columns, the writer's positions and the serialized row follow the declaration.
    #[test]
    fn one_declaration_drives_columns_writer_and_row() {
        assert_eq!(Sample::COLUMNS, ["id", "tags", "size"]);
        assert_eq!(select_list::<Sample>(), "id, tags, size");
        let writer = writer::<Sample>();
        let statement = writer.statement();
        assert!(statement.contains("INSERT OR REPLACE INTO samples (id, tags, size)"));
        assert!(statement.contains("SELECT v ->> 0, v -> 1, v ->> 2 FROM r"));
        let row = Sample {
            id: "a".into(),
            tags: vec!["x".into()],
            size: 3,
            seen: true,
        };
        assert!(row.seen, "transient fields stay in memory only");
        assert_eq!(
            serde_json::to_string(&AsRow(&row)).expect("serializes"),
            r#"["a",["x"],3]"#
        );
        assert_eq!(
            row.values().expect("values"),
            [
                Value::Text("a".into()),
                Value::Text(r#"["x"]"#.into()),
                Value::Integer(3)
            ]
        );
    }

    /// A row decodes by column name whatever order the `SELECT` lists its columns in; the
    /// declared order is only where each name is looked for first.
    #[test]
    fn rows_decode_by_name_in_any_column_order() {
        use crate::objects::sqlite::Db;
        let mut db = Db::open_memory().expect("memory");
        db.execute_batch(
            "CREATE TABLE samples (id TEXT, tags TEXT, size INTEGER);
             INSERT INTO samples VALUES ('a', '[\"x\"]', 3);",
        )
        .expect("table");
        for sql in [
            format!("SELECT {} FROM samples", select_list::<Sample>()),
            "SELECT size, id, tags FROM samples".to_owned(),
        ] {
            let row: Sample = db.query(&sql).fetch_one().expect("decodes");
            assert_eq!(
                (row.id.as_str(), row.tags.as_slice(), row.size),
                ("a", &["x".to_owned()][..], 3),
                "{sql}"
            );
            assert!(!row.seen, "transient fields start as their default");
        }
    }
}
