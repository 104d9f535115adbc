//! Runners whose process exited: how a provider tells the broker at once, instead of the lease
//! staying `ready` (and charging) until its TTL.
//!
//! A provider that can see its runners end (`process`, whose runners are berth's own child
//! processes) reports each end as a [`RunnerExit`] through the [`Exits`] of its
//! [`Environment`](crate::Environment). The server routes each one to the tenant's object,
//! which ends the lease (`runner_exited`) unless it is ending already. A runner berth destroys
//! exits too; that report finds its lease ending and changes nothing.
//!
//! What is reported promptly is what berth itself sees: the exit of a child it started (with
//! its status) and, after a restart of berth, the end of a runner it adopted (watched by
//! polling, status unknown: berth is no longer its parent). A runner that ended while berth
//! was stopped is found by listing: a provider marks such a runner in
//! [`Runner::metadata`](crate::Runner::metadata) under [`EXIT_STATUS`], and the broker's
//! reconciliation ends its lease. [`Exits::first_look`] tells the broker when a tenant's
//! runners have not been listed since this server started.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

/// The metadata key under which a listing marks a runner whose process is gone; its value is
/// an [`ExitStatus`] as text (`code 1`, `signal 9`, `unknown`).
pub const EXIT_STATUS: &str = "exit_status";

/// How many reports wait for the server before a reaper waits in turn.
pub const CAPACITY: usize = 1024;

/// How a runner's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// berth saw it gone but was not its parent (it was started before berth restarted).
    Unknown,
}

impl ExitStatus {
    /// The status of a child berth waited on.
    pub fn of(status: std::process::ExitStatus) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt as _;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(signal)) => ExitStatus::Signal(signal),
            (None, None) => ExitStatus::Unknown,
        }
    }

    /// Reads the text [`Display`](std::fmt::Display) writes; anything else is `Unknown`.
    pub fn parse(text: &str) -> ExitStatus {
        let number = |rest: &str| rest.trim().parse::<i32>().ok();
        if let Some(code) = text.strip_prefix("code ").and_then(number) {
            ExitStatus::Code(code)
        } else if let Some(signal) = text.strip_prefix("signal ").and_then(number) {
            ExitStatus::Signal(signal)
        } else {
            ExitStatus::Unknown
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "code {code}"),
            ExitStatus::Signal(signal) => write!(f, "signal {signal}"),
            ExitStatus::Unknown => f.write_str("unknown"),
        }
    }
}

/// One runner's process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerExit {
    /// The tenant the runner belongs to.
    pub tenant: String,
    /// The lease the runner was made for.
    pub lease_id: String,
    pub status: ExitStatus,
    /// The last line the runner wrote to its stderr, without control characters and cut short
    /// (at most [`TAIL_CHARS`] characters): often why it exited. Written by the runner, so
    /// shown only to those who may read the lease.
    pub last_stderr_line: Option<String>,
}

/// The longest [`RunnerExit::last_stderr_line`], in characters.
pub const TAIL_CHARS: usize = 200;

/// Where providers report runner exits; cheap to clone. The server holds the receiving end.
#[derive(Clone, Debug)]
pub struct Exits {
    sender: mpsc::Sender<RunnerExit>,
    /// Runner directories whose exit someone in this server will report (a reaper waiting on
    /// its child, or a watcher polling an adopted runner), so each is reported once and a
    /// listing does not report it as gone before its reaper does (with the exit code).
    watched: Arc<Mutex<HashSet<PathBuf>>>,
    /// Tenants whose runners were listed since this server started.
    looked: Arc<Mutex<HashSet<String>>>,
}

impl Exits {
    /// A new hook and the receiver of its reports (bounded by [`CAPACITY`]).
    pub fn channel() -> (Exits, mpsc::Receiver<RunnerExit>) {
        let (sender, receiver) = mpsc::channel(CAPACITY);
        let exits = Exits {
            sender,
            watched: Arc::default(),
            looked: Arc::default(),
        };
        (exits, receiver)
    }

    /// Reports an exit. Waits while the server's queue is full rather than drop it; a server
    /// that stopped listening (it is shutting down) loses it, and the next start's listing
    /// finds the runner gone.
    pub async fn report(&self, exit: RunnerExit) {
        if self.sender.send(exit).await.is_err() {
            tracing::debug!("a runner exited while berth is stopping; the next start finds it");
        }
    }

    /// Claims the report of the runner in `dir`: `true` when nobody in this server watches it
    /// yet (the caller now does, until [`Exits::release`]).
    pub fn claim(&self, dir: &std::path::Path) -> bool {
        lock(&self.watched).insert(dir.to_path_buf())
    }

    /// The runner in `dir` is no longer watched (its exit was reported).
    pub fn release(&self, dir: &std::path::Path) {
        lock(&self.watched).remove(dir);
    }

    /// Whether someone in this server will report the exit of the runner in `dir`.
    pub fn is_watched(&self, dir: &std::path::Path) -> bool {
        lock(&self.watched).contains(dir)
    }

    /// How many runners someone in this server watches whose directory is still there: the
    /// `process` runners running now. (A destroyed runner's directory is gone at once; its
    /// watcher may take a moment to notice the end.)
    pub fn watching(&self) -> usize {
        let watched: Vec<PathBuf> = lock(&self.watched).iter().cloned().collect();
        watched.iter().filter(|dir| dir.exists()).count()
    }

    /// `true` the first time it is asked about `tenant` since this server started: its
    /// runners (some perhaps started by an earlier run of berth, and ended or not since) have
    /// not been listed yet, so nothing watches those that still run.
    pub fn first_look(&self, tenant: &str) -> bool {
        lock(&self.looked).insert(tenant.to_owned())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of a status reads back as the same status; anything else is unknown.
    #[test]
    fn status_text_round_trips() {
        for status in [
            ExitStatus::Code(0),
            ExitStatus::Code(1),
            ExitStatus::Signal(9),
            ExitStatus::Unknown,
        ] {
            assert_eq!(ExitStatus::parse(&status.to_string()), status);
        }
        assert_eq!(ExitStatus::parse("code x"), ExitStatus::Unknown);
    }

    /// A runner is claimed once until released; a tenant's first look is its only one.
    #[test]
    fn claims_and_first_looks() {
        let (exits, _receiver) = Exits::channel();
        let dir = std::path::Path::new("/runners/acme/lease_1");
        assert!(exits.claim(dir));
        assert!(!exits.claim(dir));
        assert!(exits.is_watched(dir));
        exits.release(dir);
        assert!(!exits.is_watched(dir));
        assert!(exits.first_look("acme"));
        assert!(!exits.first_look("acme"));
    }
}
