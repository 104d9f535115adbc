//! Seeing a runner's process end, and telling the broker ([`crate::exits`]).
//!
//! - A runner berth started is its child: [`reap`] waits on it (which also keeps it from
//!   staying a zombie) and reports its exit status with the last line of its stderr.
//! - A runner an earlier run of berth started is no child of this one: when a listing (or a
//!   create that finds it) sees it running, [`observe`] starts a watcher that polls its pid
//!   and reports its end with an unknown status.
//! - A runner that ended while no berth ran is marked [`EXIT_STATUS`] `unknown` in its
//!   listing, so reconciliation ends its lease.
//!
//! The exit status is not written to the runner directory: the report reaches the object
//! within milliseconds, and a file appearing there while a destroy removes the directory
//! would make the removal fail. A berth that stops between the exit and the report loses only
//! the code; the next start lists the runner as exited.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::exits::{EXIT_STATUS, ExitStatus, Exits, RunnerExit};

use super::ownership::Record;
use super::{blocking, logs, procfs};

/// How often a watcher looks whether an adopted runner still runs.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// Who a runner is, for its report.
pub(super) struct Subject {
    pub dir: PathBuf,
    pub tenant: String,
    pub lease_id: String,
}

/// Waits on the child berth just started and reports its end. The runner is claimed before
/// this returns, so a listing made meanwhile leaves the report to the reaper (with the code).
pub(super) fn reap(mut child: tokio::process::Child, pid: i32, who: Subject, exits: Option<Exits>) {
    if let Some(exits) = &exits {
        exits.claim(&who.dir);
    }
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(status) => {
                tracing::debug!(pid, %status, "runner process exited");
                ExitStatus::of(status)
            }
            Err(e) => {
                tracing::warn!(pid, error = %e, "waiting on a runner process failed");
                ExitStatus::Unknown
            }
        };
        if let Some(exits) = exits {
            report(&exits, who, status).await;
        }
    });
}

/// Called for every runner a listing or a create shows: starts watching one that runs and that
/// nobody in this server watches; marks one whose process is known to be gone, and whose exit
/// nobody here will report, with [`EXIT_STATUS`] `unknown`.
///
/// A record without a boot id (from a build before 0.2) proves nothing about its pid, so such
/// a runner is neither watched nor marked.
pub(super) fn observe(
    exits: Option<&Exits>,
    who: Subject,
    record: &Record,
    running: bool,
    metadata: &mut BTreeMap<String, String>,
) {
    if record.boot_id.is_none() {
        return;
    }
    if !running {
        if !exits.is_some_and(|exits| exits.is_watched(&who.dir)) {
            metadata.insert(EXIT_STATUS.to_owned(), ExitStatus::Unknown.to_string());
        }
        return;
    }
    let Some(exits) = exits else {
        return;
    };
    if !exits.claim(&who.dir) {
        return;
    }
    let (exits, pid, start_time) = (exits.clone(), record.pid, record.start_time);
    tracing::info!(lease_id = %who.lease_id, pid, "watching a runner started before this berth");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(WATCH_POLL).await;
            let alive = procfs::proc_stat(pid)
                .is_some_and(|stat| stat.start_time == start_time && stat.state != 'Z');
            if !alive {
                break;
            }
        }
        report(&exits, who, ExitStatus::Unknown).await;
    });
}

/// Reports one exit, then lets a listing speak of the runner again.
async fn report(exits: &Exits, who: Subject, status: ExitStatus) {
    let dir = who.dir.clone();
    let last_stderr_line = blocking(move || Ok(logs::last_stderr_line(&dir)))
        .await
        .ok()
        .flatten();
    exits
        .report(RunnerExit {
            tenant: who.tenant,
            lease_id: who.lease_id,
            status,
            last_stderr_line,
        })
        .await;
    exits.release(&who.dir);
}
