//! A SQLite connection of berth's own, over `libsqlite3-sys`, called on the caller's thread:
//! every object's database runs on it.
//!
//! sqlx runs every SQLite connection on a thread of its own and hands each statement list to
//! it and its rows back (two thread wake-ups per round trip), and starts that thread with the
//! connection. For a database opened now and then by a short-lived owner — an object's file,
//! thousands of them — that model was most of the cost: W2's profiles put a sixth of all
//! samples in waking threads, and more in each new thread's start and malloc arena
//! (BENCHMARKS.md, issue 19). [`Db`] is the other model: the connection is a plain value,
//! `Send` but used by one thread at a time (`&mut`), and every call runs SQLite right there.
//! Whoever owns a `Db` decides which thread that is: work that may block on the disk for long
//! (a commit's `fsync`, a `VACUUM INTO`, opening a file) belongs on tokio's blocking pool.
//!
//! What it offers is what berth's object code used of sqlx, no more: statement lists with
//! positional values ([`Value`]), each statement's rows decoded by index or by column name
//! ([`FromRow`], [`Column`]), a cache of prepared lists per connection, the commit hook and
//! the WAL hook. The directory (one connection, shared with backups) and cluster mode's
//! PostgreSQL stay on sqlx.
//!
//! The object runtime runs an object's reads and the writes of a batch right on its task
//! (pages come from the connection's cache or the kernel's), and what may wait for the disk
//! — opening a file, a commit that syncs (every one under `synchronous=FULL`; under ordered
//! checkpoints only one that may run the WAL hook's checkpoint, which the hook tells apart,
//! `wal.rs`), a checkpoint, a `VACUUM INTO`, the close — on tokio's blocking pool
//! ([`blocking`], or `spawn_blocking` for an owned `Db`).
//!
//! # Parameters
//!
//! As sqlx binds them, so a statement list means the same on either: across a list, plain `?`
//! parameters take the values in order, statement after statement; a numbered `?N` takes the
//! N-th value wherever it appears (so `?1` repeated in several statements of a list is one
//! value shared by all). A value list shorter than a statement's parameters leaves the rest
//! `NULL`, as SQLite does.

mod conn;
mod row;
mod stmt;
mod wal;

pub use conn::{Db, OpenFlags};
pub use row::{Column, FromRow, Json, Row, RowSets, ValueRef};
pub use wal::Syncs;

use std::ffi::c_int;

/// Runs `f`, which may wait for the disk, without holding up the other tasks of the tokio
/// worker it is called on: on a multi-threaded runtime through `block_in_place` (the worker's
/// other tasks move to another thread meanwhile); on a current-thread runtime (tests), or
/// outside any runtime, right here.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A failure reported by SQLite: its (extended) result code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct SqliteError {
    /// The extended result code (`SQLITE_IOERR_WRITE`, not only `SQLITE_IOERR`).
    pub code: c_int,
    /// SQLite's message for it.
    pub message: String,
}

impl SqliteError {
    /// An error of berth's own making, reported like one of SQLite's (`SQLITE_MISUSE`).
    pub(crate) fn misuse(message: impl Into<String>) -> Self {
        SqliteError {
            code: libsqlite3_sys::SQLITE_MISUSE,
            message: message.into(),
        }
    }

    /// Whether the failure is the storage's (full, read-only, I/O, busy, out of memory, a
    /// damaged file) rather than the statement's (a bad statement, a violated constraint, a
    /// refused commit, a value that does not decode).
    pub fn is_storage(&self) -> bool {
        is_storage_code(self.code)
    }
}

/// Whether a SQLite result code (extended or primary) is a failure of the storage rather than
/// of the statement: BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL,
/// NOTADB.
pub(crate) fn is_storage_code(code: c_int) -> bool {
    matches!(code & 0xff, 5 | 6 | 7 | 8 | 10 | 11 | 13 | 14 | 15 | 26)
}
