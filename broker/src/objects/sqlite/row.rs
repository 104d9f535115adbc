//! Rows and how they decode: a column by index or by name ([`Row`]), a value as a Rust type
//! ([`Column`]), a whole row as a tuple or a struct ([`FromRow`]).

use std::collections::VecDeque;
use std::ffi::{CStr, c_int};
use std::marker::PhantomData;
use std::sync::Arc;

use libsqlite3_sys as ffi;
use serde::de::DeserializeOwned;

use super::SqliteError;
use crate::objects::session::Value;

/// One column's value of the current row, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'r> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'r str),
    Blob(&'r [u8]),
}

impl ValueRef<'_> {
    fn kind(&self) -> &'static str {
        match self {
            ValueRef::Null => "NULL",
            ValueRef::Integer(_) => "an integer",
            ValueRef::Real(_) => "a real",
            ValueRef::Text(_) => "text",
            ValueRef::Blob(_) => "a blob",
        }
    }
}

/// A row: either the one a statement is positioned on, or a copy kept after it moved on
/// ([`RowSets`]).
pub struct Row<'r> {
    inner: Inner<'r>,
}

enum Inner<'r> {
    Live(*mut ffi::sqlite3_stmt, PhantomData<&'r ()>),
    Kept(&'r KeptRow),
}

/// A row copied out of its statement, with its statement's column names.
struct KeptRow {
    names: Arc<[String]>,
    values: Vec<Value>,
}

impl<'r> Row<'r> {
    /// The row `stmt` is positioned on (valid until the statement steps again).
    pub(crate) fn new(stmt: *mut ffi::sqlite3_stmt) -> Self {
        Row {
            inner: Inner::Live(stmt, PhantomData),
        }
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        match &self.inner {
            // SAFETY: a statement positioned on a row.
            #[allow(unsafe_code)]
            Inner::Live(stmt, _) => {
                usize::try_from(unsafe { ffi::sqlite3_column_count(*stmt) }).unwrap_or(0)
            }
            Inner::Kept(row) => row.values.len(),
        }
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The name of column `index`.
    fn name(&self, index: usize) -> Option<&str> {
        match &self.inner {
            Inner::Live(stmt, _) => {
                let index = c_int::try_from(index).ok()?;
                // SAFETY: a valid statement and column index; the name lives as long as the
                // statement is prepared, which outlasts this borrow of the row.
                #[allow(unsafe_code)]
                unsafe {
                    let name = ffi::sqlite3_column_name(*stmt, index);
                    if name.is_null() {
                        None
                    } else {
                        CStr::from_ptr(name).to_str().ok()
                    }
                }
            }
            Inner::Kept(row) => row.names.get(index).map(String::as_str),
        }
    }

    /// The index of the column named `name`.
    ///
    /// # Errors
    ///
    /// No column has that name.
    pub fn index_of(&self, name: &str) -> Result<usize, SqliteError> {
        (0..self.len())
            .find(|&i| self.name(i) == Some(name))
            .ok_or_else(|| SqliteError::misuse(format!("no column `{name}` in the row")))
    }

    /// The value of column `index`, borrowed.
    ///
    /// # Errors
    ///
    /// No such column.
    pub fn value(&self, index: usize) -> Result<ValueRef<'_>, SqliteError> {
        if index >= self.len() {
            return Err(SqliteError::misuse(format!(
                "no column {index} in a row of {}",
                self.len()
            )));
        }
        match &self.inner {
            Inner::Live(stmt, _) => Ok(live_value(*stmt, index)),
            Inner::Kept(row) => Ok(match &row.values[index] {
                Value::Null => ValueRef::Null,
                Value::Integer(v) => ValueRef::Integer(*v),
                Value::Real(v) => ValueRef::Real(*v),
                Value::Text(v) => ValueRef::Text(v),
                Value::Blob(v) => ValueRef::Blob(v),
            }),
        }
    }

    /// Column `index` decoded as `T`.
    ///
    /// # Errors
    ///
    /// No such column, or its value does not decode as `T`.
    pub fn get<T: Column>(&self, index: usize) -> Result<T, SqliteError> {
        let value = self.value(index)?;
        T::decode(value).map_err(|why| {
            let name = self.name(index).unwrap_or("?");
            SqliteError::misuse(format!("column `{name}`: {why}"))
        })
    }

    /// The column named `name` decoded as `T`.
    ///
    /// # Errors
    ///
    /// No such column, or its value does not decode as `T`.
    pub fn get_named<T: Column>(&self, name: &str) -> Result<T, SqliteError> {
        self.get(self.index_of(name)?)
    }

    /// [`Row::get_named`], looking at column `hint` first: where a struct's column usually is
    /// (its `SELECT` lists the columns in declaration order), so decoding a row by name costs
    /// one name comparison per column instead of a search.
    ///
    /// # Errors
    ///
    /// As [`Row::get_named`].
    pub fn get_named_at<T: Column>(&self, hint: usize, name: &str) -> Result<T, SqliteError> {
        if self.name(hint) == Some(name) {
            return self.get(hint);
        }
        self.get_named(name)
    }

    /// A copy of the row that outlives its statement's next step.
    fn keep(&self, names: &Arc<[String]>) -> KeptRow {
        let values = (0..self.len())
            .map(|i| match self.value(i) {
                Ok(ValueRef::Integer(v)) => Value::Integer(v),
                Ok(ValueRef::Real(v)) => Value::Real(v),
                Ok(ValueRef::Text(v)) => Value::Text(v.to_owned()),
                Ok(ValueRef::Blob(v)) => Value::Blob(v.to_vec()),
                Ok(ValueRef::Null) | Err(_) => Value::Null,
            })
            .collect();
        KeptRow {
            names: Arc::clone(names),
            values,
        }
    }

    fn names(&self) -> Arc<[String]> {
        (0..self.len())
            .map(|i| self.name(i).unwrap_or_default().to_owned())
            .collect()
    }
}

/// Column `index` of the row `stmt` is positioned on.
fn live_value<'r>(stmt: *mut ffi::sqlite3_stmt, index: usize) -> ValueRef<'r> {
    let Ok(i) = c_int::try_from(index) else {
        return ValueRef::Null;
    };
    // SAFETY: a statement positioned on a row and a column index below its column count.
    // Text and blob pointers stay valid until the statement steps, resets or is finalized,
    // or the column is read as another type — none of which happens while the row is
    // borrowed (`Row` is only lent to callbacks and decoders between steps, and each column
    // is read with one accessor).
    #[allow(unsafe_code)]
    unsafe {
        match ffi::sqlite3_column_type(stmt, i) {
            ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_column_int64(stmt, i)),
            ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_column_double(stmt, i)),
            ffi::SQLITE_TEXT => {
                let ptr = ffi::sqlite3_column_text(stmt, i);
                let len = usize::try_from(ffi::sqlite3_column_bytes(stmt, i)).unwrap_or(0);
                if ptr.is_null() {
                    ValueRef::Text("")
                } else {
                    let bytes = std::slice::from_raw_parts(ptr, len);
                    // SQLite stores the text it was given; berth binds only `str`s, but a
                    // file written elsewhere may hold other bytes.
                    match std::str::from_utf8(bytes) {
                        Ok(text) => ValueRef::Text(text),
                        Err(_) => ValueRef::Blob(bytes),
                    }
                }
            }
            ffi::SQLITE_BLOB => {
                let ptr = ffi::sqlite3_column_blob(stmt, i);
                let len = usize::try_from(ffi::sqlite3_column_bytes(stmt, i)).unwrap_or(0);
                if ptr.is_null() {
                    ValueRef::Blob(&[])
                } else {
                    ValueRef::Blob(std::slice::from_raw_parts(ptr.cast::<u8>(), len))
                }
            }
            _ => ValueRef::Null,
        }
    }
}

/// A Rust type one column decodes as.
pub trait Column: Sized {
    /// Decodes `value`; the error says why not (the caller adds which column).
    fn decode(value: ValueRef<'_>) -> Result<Self, String>;
}

fn mismatch<T>(want: &str, value: ValueRef<'_>) -> Result<T, String> {
    Err(format!("expected {want}, found {}", value.kind()))
}

impl Column for i64 {
    fn decode(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Integer(v) => Ok(v),
            other => mismatch("an integer", other),
        }
    }
}

impl Column for i32 {
    fn decode(value: ValueRef<'_>) -> Result<Self, String> {
        let wide = i64::decode(value)?;
        i32::try_from(wide).map_err(|_| format!("{wide} does not fit a 32-bit integer"))
    }
}

impl Column for u32 {
    fn decode(value: ValueRef<'_>) -> Result<Self, String> {
        let wide = i64::decode(value)?;
        u32::try_from(wide).map_err(|_| format!("{wide} does not fit an unsigned 32-bit integer"))
    }
}

impl Column for bool {
    fn decode(value: ValueRef<'_>) -> Result<Self, String> {
        Ok(i64::decode(value)? != 0)
    }
}

impl Column for f64 {
    fn decode(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Real(v) => Ok(v),
            #[allow(clippy::cast_precision_loss)]
            ValueRef::Integer(v) => Ok(v as f64),
            other => mismatch("a number", other),
        }
    }
}

impl Column for String {
    fn decode(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Text(v) => Ok(v.to_owned()),
            other => mismatch("text", other),
        }
    }
}

impl Column for Vec<u8> {
    fn decode(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Blob(v) => Ok(v.to_vec()),
            ValueRef::Text(v) => Ok(v.as_bytes().to_vec()),
            other => mismatch("a blob", other),
        }
    }
}

impl<T: Column> Column for Option<T> {
    fn decode(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Null => Ok(None),
            other => T::decode(other).map(Some),
        }
    }
}

impl Column for Value {
    fn decode(value: ValueRef<'_>) -> Result<Self, String> {
        Ok(match value {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Integer(v),
            ValueRef::Real(v) => Value::Real(v),
            ValueRef::Text(v) => Value::Text(v.to_owned()),
            ValueRef::Blob(v) => Value::Blob(v.to_vec()),
        })
    }
}

/// A column holding JSON text, decoded with serde.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> Column for Json<T> {
    fn decode(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Text(text) => serde_json::from_str(text)
                .map(Json)
                .map_err(|err| format!("invalid JSON: {err}")),
            other => mismatch("JSON text", other),
        }
    }
}

/// A Rust type a whole row decodes as.
pub trait FromRow: Sized {
    /// Decodes `row`.
    ///
    /// # Errors
    ///
    /// A column is missing or does not decode.
    fn from_row(row: &Row<'_>) -> Result<Self, SqliteError>;
}

macro_rules! tuple_from_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Column),+> FromRow for ($($t,)+) {
            fn from_row(row: &Row<'_>) -> Result<Self, SqliteError> {
                Ok(($(row.get::<$t>($i)?,)+))
            }
        }
    };
}

tuple_from_row!(A 0);
tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);
tuple_from_row!(A 0, B 1, C 2, D 3);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

/// The rows of each statement of a list, kept after the list ran, taken in the list's order.
pub struct RowSets {
    sets: VecDeque<Vec<KeptRow>>,
}

impl std::fmt::Debug for RowSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Rows may hold secrets (sealed, but still): only their counts are shown.
        let counts: Vec<usize> = self.sets.iter().map(Vec::len).collect();
        f.debug_struct("RowSets").field("rows", &counts).finish()
    }
}

impl RowSets {
    /// Collects the rows of a list's statements as they are stepped.
    pub(crate) fn collector() -> Collector {
        Collector {
            sets: Vec::new(),
            names: Vec::new(),
        }
    }

    /// The rows of the next statement, decoded as `T`.
    ///
    /// # Errors
    ///
    /// Every statement's rows were taken already, or a row does not decode as `T`.
    pub fn rows<T: FromRow>(&mut self) -> Result<Vec<T>, SqliteError> {
        let rows = self.sets.pop_front().ok_or_else(|| {
            SqliteError::misuse("a read list returned fewer row sets than asked for")
        })?;
        rows.iter()
            .map(|row| {
                T::from_row(&Row {
                    inner: Inner::Kept(row),
                })
            })
            .collect()
    }

    /// The one row of the next statement (an aggregate, say), decoded as `T`.
    ///
    /// # Errors
    ///
    /// As [`RowSets::rows`], or the statement did not return exactly one row.
    pub fn one<T: FromRow>(&mut self) -> Result<T, SqliteError> {
        let mut rows = self.rows::<T>()?;
        match (rows.pop(), rows.is_empty()) {
            (Some(row), true) => Ok(row),
            _ => Err(SqliteError::misuse(
                "a read that returns one row returned another count",
            )),
        }
    }
}

/// Builds a [`RowSets`] while a list runs.
pub(crate) struct Collector {
    sets: Vec<Vec<KeptRow>>,
    names: Vec<Option<Arc<[String]>>>,
}

impl Collector {
    /// Keeps a copy of `row`, a row of statement `index`.
    pub(crate) fn push(&mut self, index: usize, row: &Row<'_>) {
        if self.sets.len() <= index {
            self.sets.resize_with(index + 1, Vec::new);
            self.names.resize_with(index + 1, || None);
        }
        let names = self.names[index].get_or_insert_with(|| row.names());
        self.sets[index].push(row.keep(names));
    }

    /// The row sets of a list of `statements` statements (those without rows included).
    pub(crate) fn finish(mut self, statements: usize) -> RowSets {
        if self.sets.len() < statements {
            self.sets.resize_with(statements, Vec::new);
        }
        RowSets {
            sets: self.sets.into(),
        }
    }
}
