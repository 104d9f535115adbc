//! Prepared statements and statement lists: the only code that touches `sqlite3_stmt`.

use std::ffi::{CStr, c_char, c_int};
use std::ptr::NonNull;

use libsqlite3_sys as ffi;

use super::SqliteError;
use super::row::Row;
use crate::objects::session::Value;

/// One prepared statement, finalized on drop.
///
/// Only a [`Db`](super::Db) makes one, and every statement is dropped before its connection
/// closes (the connection owns them: see `conn.rs`).
pub(crate) struct Stmt {
    raw: NonNull<ffi::sqlite3_stmt>,
}

// SAFETY: a statement is used only through `&mut` of the connection that owns it, one thread
// at a time, and SQLite is built thread-safe (connections are opened `NOMUTEX`: multi-thread
// mode, which allows a connection and its statements on any thread, one at a time).
#[allow(unsafe_code)]
unsafe impl Send for Stmt {}

impl Drop for Stmt {
    fn drop(&mut self) {
        // SAFETY: `raw` came from sqlite3_prepare_v3 and is finalized exactly once, here.
        #[allow(unsafe_code)]
        unsafe {
            ffi::sqlite3_finalize(self.raw.as_ptr());
        }
    }
}

/// A statement list, prepared one statement at a time as it first runs: a statement may
/// depend on what the one before it did (`CREATE TABLE t …; INSERT INTO t …`), so it is
/// prepared only once the one before it has run, as sqlx and `sqlite3_exec` do. Empty
/// statements and comments are skipped, as SQLite skips them.
pub(crate) struct List {
    sql: Box<str>,
    /// The statements prepared so far, each with the offset in `sql` where the next begins.
    stmts: Vec<(Stmt, usize)>,
    /// Every statement of `sql` is prepared.
    complete: bool,
    persistent: bool,
}

/// The error SQLite holds for `db` after a call returned `code`.
pub(crate) fn error(db: *mut ffi::sqlite3, code: c_int) -> SqliteError {
    // SAFETY: `db` is an open connection; the message is copied before any other call on it.
    #[allow(unsafe_code)]
    let (code, message) = unsafe {
        let extended = ffi::sqlite3_extended_errcode(db);
        let text = ffi::sqlite3_errmsg(db);
        let message = if text.is_null() {
            String::new()
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        };
        // The extended code when it refines the primary one returned.
        let code = if extended & 0xff == code & 0xff {
            extended
        } else {
            code
        };
        (code, message)
    };
    SqliteError { code, message }
}

impl List {
    /// The list `sql`, nothing prepared yet. `persistent` hints SQLite that the list will be
    /// kept and reused (it then allocates from the heap, not the lookaside).
    pub(crate) fn new(sql: &str, persistent: bool) -> List {
        List {
            sql: sql.into(),
            stmts: Vec::new(),
            complete: false,
            persistent,
        }
    }

    /// The number of statements, once the list has run to its end.
    pub(crate) fn len(&self) -> usize {
        self.stmts.len()
    }

    /// Statement `index`, prepared now if it is the next one; `None` past the last.
    fn statement(
        &mut self,
        db: *mut ffi::sqlite3,
        index: usize,
    ) -> Result<Option<&mut Stmt>, SqliteError> {
        while self.stmts.len() <= index && !self.complete {
            let offset = self.stmts.last().map_or(0, |(_, end)| *end);
            match prepare_next(db, &self.sql, offset, self.persistent)? {
                Some((stmt, end)) => self.stmts.push((stmt, end)),
                None => self.complete = true,
            }
        }
        Ok(self.stmts.get_mut(index).map(|(stmt, _)| stmt))
    }

    /// Binds `values` (see the module docs for how), steps every statement to its end in
    /// order, and hands each row to `on_row` with its statement's index. Returns the rows
    /// the list changed (`sqlite3_changes` summed over its statements that write).
    ///
    /// Every statement is reset and its bindings cleared afterwards, also on error, so a
    /// cached list holds no values and no read transaction between uses.
    pub(crate) fn run(
        &mut self,
        db: *mut ffi::sqlite3,
        values: &[Value],
        on_row: &mut dyn FnMut(usize, &Row<'_>) -> Result<(), SqliteError>,
    ) -> Result<u64, SqliteError> {
        let mut used = 0usize;
        let mut changed = 0u64;
        for index in 0.. {
            let Some(stmt) = self.statement(db, index)? else {
                break;
            };
            let result = stmt
                .bind_all(db, values, &mut used)
                .and_then(|()| stmt.step_all(db, index, on_row));
            if result.is_ok() && !stmt.read_only() {
                // SAFETY: `db` is open; sqlite3_changes64 only reads the connection.
                #[allow(unsafe_code)]
                let n = unsafe { ffi::sqlite3_changes64(db) };
                changed += u64::try_from(n).unwrap_or(0);
            }
            stmt.reset();
            result?;
        }
        Ok(changed)
    }
}

/// Prepares the first statement of `sql` at or after `offset`: the statement and the offset
/// where the rest begins, or `None` when only whitespace and comments are left.
fn prepare_next(
    db: *mut ffi::sqlite3,
    sql: &str,
    mut offset: usize,
    persistent: bool,
) -> Result<Option<(Stmt, usize)>, SqliteError> {
    let flags = if persistent {
        ffi::SQLITE_PREPARE_PERSISTENT
    } else {
        0
    };
    let bytes = sql.as_bytes();
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let len = c_int::try_from(rest.len())
            .map_err(|_| SqliteError::misuse("a statement list longer than 2 GiB"))?;
        let mut raw: *mut ffi::sqlite3_stmt = std::ptr::null_mut();
        let mut tail: *const c_char = std::ptr::null();
        // SAFETY: `rest` is valid for `len` bytes (no NUL needed when the length is given);
        // `raw` and `tail` are written by the call; `tail` points into `rest`.
        #[allow(unsafe_code)]
        let (rc, used) = unsafe {
            let start = rest.as_ptr().cast::<c_char>();
            let rc = ffi::sqlite3_prepare_v3(
                db,
                start,
                len,
                flags as std::ffi::c_uint,
                &mut raw,
                &mut tail,
            );
            let used = if tail.is_null() {
                rest.len()
            } else {
                usize::try_from(tail.offset_from(start)).unwrap_or(rest.len())
            };
            (rc, used)
        };
        let stmt = NonNull::new(raw).map(|raw| Stmt { raw });
        if rc != ffi::SQLITE_OK {
            drop(stmt);
            return Err(error(db, rc));
        }
        if used == 0 {
            break;
        }
        offset += used;
        if let Some(stmt) = stmt {
            return Ok(Some((stmt, offset)));
        }
    }
    Ok(None)
}

impl Stmt {
    fn raw(&self) -> *mut ffi::sqlite3_stmt {
        self.raw.as_ptr()
    }

    fn read_only(&self) -> bool {
        // SAFETY: a valid statement.
        #[allow(unsafe_code)]
        unsafe {
            ffi::sqlite3_stmt_readonly(self.raw()) != 0
        }
    }

    /// Binds this statement's parameters from `values`; `used` counts the values plain `?`
    /// parameters of earlier statements took.
    fn bind_all(
        &mut self,
        db: *mut ffi::sqlite3,
        values: &[Value],
        used: &mut usize,
    ) -> Result<(), SqliteError> {
        // SAFETY: a valid statement; parameter names are NUL-terminated strings owned by it.
        #[allow(unsafe_code)]
        let count = unsafe { ffi::sqlite3_bind_parameter_count(self.raw()) };
        for param in 1..=count {
            // SAFETY: as above; the name is read before the next call on the statement.
            #[allow(unsafe_code)]
            let numbered = unsafe {
                let name = ffi::sqlite3_bind_parameter_name(self.raw(), param);
                if name.is_null() {
                    None
                } else {
                    let name = CStr::from_ptr(name).to_bytes();
                    match name.strip_prefix(b"?") {
                        Some(digits) => std::str::from_utf8(digits)
                            .ok()
                            .and_then(|d| d.parse::<usize>().ok()),
                        None => {
                            return Err(SqliteError::misuse(
                                "named parameters (:name, @name, $name) are not supported",
                            ));
                        }
                    }
                }
            };
            let index = match numbered {
                Some(n) => n,
                None => {
                    *used += 1;
                    *used
                }
            };
            let Some(value) = index.checked_sub(1).and_then(|i| values.get(i)) else {
                // Fewer values than parameters: the rest stay NULL, as SQLite leaves them.
                continue;
            };
            self.bind(db, param, value)?;
        }
        Ok(())
    }

    fn bind(
        &mut self,
        db: *mut ffi::sqlite3,
        param: c_int,
        value: &Value,
    ) -> Result<(), SqliteError> {
        let too_long = || SqliteError::misuse("a bound value longer than 2 GiB");
        // SAFETY: a valid statement and parameter index; text and blobs are copied by SQLite
        // (SQLITE_TRANSIENT) before the call returns.
        #[allow(unsafe_code)]
        let rc = unsafe {
            match value {
                Value::Null => ffi::sqlite3_bind_null(self.raw(), param),
                Value::Integer(v) => ffi::sqlite3_bind_int64(self.raw(), param, *v),
                Value::Real(v) => ffi::sqlite3_bind_double(self.raw(), param, *v),
                Value::Text(v) => ffi::sqlite3_bind_text(
                    self.raw(),
                    param,
                    v.as_ptr().cast(),
                    c_int::try_from(v.len()).map_err(|_| too_long())?,
                    ffi::SQLITE_TRANSIENT(),
                ),
                Value::Blob(v) => ffi::sqlite3_bind_blob(
                    self.raw(),
                    param,
                    v.as_ptr().cast(),
                    c_int::try_from(v.len()).map_err(|_| too_long())?,
                    ffi::SQLITE_TRANSIENT(),
                ),
            }
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(error(db, rc))
        }
    }

    fn step_all(
        &mut self,
        db: *mut ffi::sqlite3,
        index: usize,
        on_row: &mut dyn FnMut(usize, &Row<'_>) -> Result<(), SqliteError>,
    ) -> Result<(), SqliteError> {
        loop {
            // SAFETY: a valid, bound statement.
            #[allow(unsafe_code)]
            let rc = unsafe { ffi::sqlite3_step(self.raw()) };
            match rc {
                ffi::SQLITE_ROW => on_row(index, &Row::new(self.raw()))?,
                ffi::SQLITE_DONE => return Ok(()),
                rc => return Err(error(db, rc)),
            }
        }
    }

    fn reset(&mut self) {
        // SAFETY: a valid statement. The reset's return code repeats the step's error, which
        // was reported already.
        #[allow(unsafe_code)]
        unsafe {
            ffi::sqlite3_reset(self.raw());
            ffi::sqlite3_clear_bindings(self.raw());
        }
    }
}
